import { Model, type RelationMappings } from 'objection';
import { TenantModel } from '../../../lib/index'; // in your app: from 'objection-tenancy'
import { Pet } from './pet';

/** A row of the tenant's `persons` table. `Person.query()` runs on the current request's tenant. */
export class Person extends TenantModel {
  static override tableName = 'persons';

  // `declare`, not `name!: string`: esbuild/tsx would emit own fields set to undefined that hide
  // the values objection assigns.
  declare id: number;
  declare name: string;
  declare pets?: Pet[];

  static override get relationMappings(): RelationMappings {
    return {
      pets: { relation: Model.HasManyRelation, modelClass: Pet, join: { from: 'persons.id', to: 'pets.owner_id' } },
    };
  }
}
