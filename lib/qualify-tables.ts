import type { Knex } from 'knex';

/**
 * `qualifyTables` (shared strategy): a tenant handle carries its database under this key, and
 * TenantModel queries and `knex('table')` builders run through such a handle name it (the knex
 * builder's `withSchema`; model.ts, shared-connections.ts), so that a connection with no current
 * database can serve them without a `USE` (see affinity-pool.ts and inline-switch.ts for why that
 * fails closed).
 */
const TENANT_DATABASE = Symbol.for('objection-tenancy.tenantDatabase');

/** Marks a tenant handle: its model queries name `database`. */
export function markQualified(handle: Knex, database: string): void {
  (handle as unknown as Record<symbol, string>)[TENANT_DATABASE] = database;
}

/** A table name written `db.table`: it keeps its own database, it is never qualified. */
export function namesItsDatabase(name: unknown): boolean {
  return typeof name === 'string' && name.includes('.');
}

/** The database a model query through `knex` should name, if its handle is marked. */
export function qualifiedDatabase(knex: unknown): string | undefined {
  if (knex === null || knex === undefined) return undefined;
  return (knex as Record<symbol, string | undefined>)[TENANT_DATABASE];
}
