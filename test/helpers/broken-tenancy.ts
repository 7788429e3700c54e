/**
 * A deliberately broken tenancy for negative controls: the current tenant is one global variable set
 * by a middleware, the pattern that leaks under concurrency. Isolation tests run against it and must
 * report leaks; if they do not, the test could not have caught a real one.
 */
import type { Knex } from 'knex';
import { Model } from 'objection';

let current: string | undefined;
const knexes = new Map<string, Knex>();

export function registerBrokenKnex(tenantId: string, knex: Knex): void {
  knexes.set(tenantId, knex);
}

export function brokenMiddleware(req: { headers: Record<string, unknown> }, _res: unknown, next: () => void): void {
  current = String(req.headers['x-tenant-id']);
  next();
}

export class BrokenPerson extends Model {
  static override tableName = 'persons';
  declare id: number;
  declare name: string;

  static override knex(...args: unknown[]): Knex {
    if (args.length > 0) throw new Error('not supported');
    return knexes.get(current!)!;
  }
}
