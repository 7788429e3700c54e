/**
 * The model every benchmark reads, twice: `Person` on objection's `Model` (the recipes pass or bind a
 * knex) and `TPerson` on `TenantModel` (ours: the scope's connection). Table `persons (id, name)`.
 */
import { Model } from 'objection';
import { TenantModel } from './library';

export class Person extends Model {
  static override tableName = 'persons';
  declare id: number;
  declare name: string;
}

export class TPerson extends TenantModel {
  static override tableName = 'persons';
  declare id: number;
  declare name: string;
}
