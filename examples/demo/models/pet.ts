import { TenantModel } from '../../../lib/index'; // in your app: from 'objection-tenancy'

/** A row of the tenant's `pets` table; `owner_id` references `persons.id`. */
export class Pet extends TenantModel {
  static override tableName = 'pets';

  declare id: number;
  declare owner_id: number;
  declare name: string;
  declare species: string;
}
