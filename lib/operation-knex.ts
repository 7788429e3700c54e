/**
 * The short-lived knex an operation (migration, status, create, drop) uses for one tenant, and what
 * those operations need from their `Tenancy`.
 *
 * Operations do not borrow the serving pools of the tenancy's cache: a run over 1,000 tenants would
 * push every hot tenant out of the LRU (`maxPools`), their pools carry request-time listeners, and a
 * migration only needs one connection for a few seconds. Each tenant gets its own knex built from
 * `knexConfig(id)` (under the 'shared' strategy: its server's config with the tenant's database),
 * pool `min: 0`, destroyed as soon as the tenant is done.
 */
import knexFactory, { type Knex } from 'knex';
import { UnknownTenantError } from './errors';
import { CONNECTION_DEFAULTS } from './connections';
import { boundedConnect } from './connection-settings';
import type { TenancyOptions } from './tenancy';

/** @internal What the operations need from their `Tenancy`. */
export interface OperationsHost {
  readonly options: TenancyOptions;
  /** Validates an untrusted tenant id with the tenancy's pattern. */
  validate(tenantId: unknown): string;
  /** Closes the tenant's serving pool once its scopes are done. */
  evict(tenantId: string): Promise<void>;
  /** Like `evict`, and also drops the tenant's cached catalog answer. */
  forget(tenantId: string): Promise<void>;
  /**
   * Refuses new scopes of the tenant with `UnknownTenantError` (its database is being dropped) until
   * the returned function is called; scopes already open go on.
   */
  refuseScopes(tenantId: string): () => void;
  /** Whether a `dropTenant()` of the tenant is running (its scopes are refused). */
  dropping(tenantId: string): boolean;
  /** Marks a `createTenant()` of the tenant as running until the returned function is called. */
  markCreating(tenantId: string): () => void;
  /** Whether a `createTenant()` of the tenant is running. */
  creating(tenantId: string): boolean;
  /** Serving connections of the tenant checked out right now. */
  checkedOut(tenantId: string): number;
  /** Closes the tenant's serving connections checked out right now (the server rolls back what they left open). */
  closeCheckedOut(tenantId: string): void;
}


/**
 * @internal Opens a dedicated knex on one tenant's database. Knex's warnings (a failed migration, a
 * migration that returns no promise) are collected into `warnings` instead of the console, so they
 * end up in the tenant's report and do not tear a progress bar; a `log.warn` of the config still gets them.
 */
export function openOperationKnex(host: OperationsHost, config: Knex.Config, warnings: string[]): Knex {
  const log = config.log;
  const ms = host.options.acquireTimeoutMs ?? CONNECTION_DEFAULTS.acquireTimeoutMs;
  return (host.options.createKnex ?? knexFactory)({
    // Opening its connection waits at most acquireTimeoutMs, as serving does (knex's default is 60 s).
    acquireConnectionTimeout: ms,
    ...boundedConnect(config, ms),
    pool: { ...config.pool, min: 0 },
    log: {
      ...log,
      warn(message: unknown) {
        warnings.push(String(message));
        log?.warn?.(message);
      },
    },
  });
}

/**
 * @internal Refuses a tenant `tenantExists` rejects before anything is opened (opening a missing
 * SQLite file would create it).
 */
export async function checkTenantExists(host: OperationsHost, tenantId: string): Promise<void> {
  const { tenantExists } = host.options;
  if (tenantExists !== undefined && !(await tenantExists(tenantId))) throw new UnknownTenantError(tenantId);
}

