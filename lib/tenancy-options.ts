import type { Knex } from 'knex';
import type { AffinityPoolStats } from './affinity-pool';
import type { ConnectionOptions } from './connections';
import type { PoolCacheStats } from './pool-cache';
import type { TenantIdValidator } from './tenant-id';
import { opensOnNoDatabase } from './shared-connections';
import type { HookErrorHandler } from './transaction';

/** Options of `createTenancy()` that do not depend on the strategy. */
export interface TenancyCommonOptions {
  /**
   * Whether a tenant exists (a catalog lookup). Asked before a pool is opened; a tenant it rejects
   * never gets a pool and the request gets `UnknownTenantError` (404). Strongly advised for SQLite,
   * where opening a missing file would create it.
   */
  tenantExists?(tenantId: string): boolean | Promise<boolean>;
  /** How long a positive `tenantExists` answer is cached. Default 60 000 ms. */
  catalogTtlMs?: number;
  /** How long a negative `tenantExists` answer is cached. Default 30 000 ms. */
  negativeCacheTtlMs?: number;
  /** At most this many negative answers are cached (LRU). Default 10 000. */
  negativeCacheSize?: number;
  /** Tenant id check: a pattern or a predicate. Default `DEFAULT_TENANT_ID_PATTERN`. */
  tenantIdPattern?: TenantIdValidator;
  /** Receives errors of onCommit/onRollback callbacks. Default: a process warning. */
  onHookError?: HookErrorHandler;
  /**
   * Knex migrator config (`directory`, `loadExtensions`, `tableName`...) used by `tenancy.migrate.*`
   * and `createTenant()`: the same migration files run in every tenant's database.
   */
  migrations?: Knex.MigratorConfigWithLifecycleHooks;
  /** Knex seed config run by `createTenant()` after the migrations. */
  seeds?: Knex.SeederConfig;
  /**
   * Every tenant id (from your catalog): the tenants of `migrate.*` and `forEachTenant()` when none
   * are given. An array or another iterable (a `Set`). When it fails, the operation fails with an
   * `Error` whose `cause` is its error (the CLI exits 1, to retry).
   */
  listTenants?(): Iterable<string> | Promise<Iterable<string>>;
  /**
   * Creates a tenant's empty database, for `createTenant()`. Default: built in for mysql2/mysql
   * (`CREATE DATABASE` of `config.connection.database`) and better-sqlite3/sqlite3 (creates the file).
   */
  createDatabase?(tenantId: string, config: Knex.Config): void | Promise<void>;
  /** Drops a tenant's database, for `dropTenant()`. Default: built in for the same clients as `createDatabase`. */
  dropDatabase?(tenantId: string, config: Knex.Config): void | Promise<void>;
  /** Records a new tenant in your catalog: the last step of `createTenant()`. */
  registerTenant?(tenantId: string): void | Promise<void>;
  /** Removes a tenant from your catalog: the last step of `dropTenant()`. */
  unregisterTenant?(tenantId: string): void | Promise<void>;
}

/**
 * Options of `createTenancy()`: a union keyed on `strategy`. `knexConfig` is required without
 * `strategy: 'shared'`, `servers` and `locate` with it, and each strategy's own options are typed
 * `never` in the other (and refused at run time).
 */
export type TenancyOptions = ConnectionOptions & TenancyCommonOptions;

const SHARED_ONLY = ['servers', 'locate', 'maxConnectionsPerTenant', 'inlineSwitch', 'maxSwitchedConnections', 'resetSession', 'qualifyTables', 'maxTenants'] as const;
const POOL_PER_TENANT_ONLY = ['knexConfig', 'maxPools', 'maxConnections'] as const;

/** What `tenancy.stats()` returns. */
export interface TenancyStats extends PoolCacheStats {
  strategy: 'pool-per-tenant' | 'shared';
  /**
   * 'pool-per-tenant' with `maxConnections`: the budget's size, units used, peak, waiting openers,
   * timeouts, and openings given up because their pool no longer needed them when a unit freed up.
   */
  budget?: { max: number; used: number; peak: number; waiting: number; timeouts: number; unneeded: number };
  /** 'shared': cached tenant handles. */
  tenants?: number;
  /** 'shared': per server, connections open and in use, waiting acquires, switches, affinity hits... */
  servers?: Record<string, AffinityPoolStats>;
  /** Cached catalog answers and catalog calls made (absent without `tenantExists`). */
  catalog?: { known: number; unknown: number; lookups: number };
}

/** @internal Validates `createTenancy()` options, throwing a `TypeError` that names the option. */
export function checkTenancyOptions(options: TenancyOptions): void {
  if (options === null || typeof options !== 'object') throw new TypeError('createTenancy(options): options must be an object');
  // Read as a record: the union's `never` keys are what a caller typed around, or JavaScript.
  const given = options as unknown as Record<string, unknown>;
  if (options.strategy === 'shared') {
    if (options.servers === null || typeof options.servers !== 'object' || Object.keys(options.servers).length === 0) {
      throw new TypeError("createTenancy: options.servers must map server keys to knex configs when strategy is 'shared'");
    }
    if (typeof options.locate !== 'function') throw new TypeError("createTenancy: options.locate must be a function (tenantId) => { server, database } when strategy is 'shared'");
    const misplaced = POOL_PER_TENANT_ONLY.find((name) => given[name] !== undefined);
    if (misplaced !== undefined) {
      throw new TypeError(`createTenancy: options.${misplaced} applies to strategy 'pool-per-tenant' only (the shared strategy's connections are its servers' pool.max)`);
    }
    for (const name of ['inlineSwitch', 'resetSession', 'qualifyTables'] as const) {
      if (options[name] !== undefined && typeof options[name] !== 'boolean') throw new TypeError(`createTenancy: options.${name} must be a boolean`);
    }
    if (options.qualifyTables === true) {
      for (const [key, config] of Object.entries(options.servers)) {
        if (!opensOnNoDatabase(config.connection)) {
          throw new TypeError(`createTenancy: options.qualifyTables needs servers.${key}.connection as an object without database (its connections must start on none)`);
        }
      }
    }
  } else if (options.strategy !== undefined && options.strategy !== 'pool-per-tenant') {
    throw new TypeError("createTenancy: options.strategy must be 'pool-per-tenant' or 'shared'");
  } else {
    // `false` of a shared flag is its default, harmless here (a config shared by both strategies).
    const misplaced = SHARED_ONLY.find((name) => given[name] !== undefined && given[name] !== false);
    if (misplaced !== undefined) {
      throw new TypeError(`createTenancy: options.${misplaced} applies to strategy 'shared' only (a pool per tenant never switches databases)`);
    }
    if (typeof options.knexConfig !== 'function') {
      throw new TypeError('createTenancy: options.knexConfig must be a function (tenantId) => knex config');
    }
  }
  if (options.overflow !== undefined && options.overflow !== 'wait' && options.overflow !== 'reject') {
    throw new TypeError("createTenancy: options.overflow must be 'wait' or 'reject'");
  }
  if (options.tenantExists !== undefined && typeof options.tenantExists !== 'function') {
    throw new TypeError('createTenancy: options.tenantExists must be a function (tenantId) => boolean');
  }
  const cap = options.maxSwitchedConnections;
  if (cap !== undefined && cap !== 'auto' && cap !== Infinity && (!Number.isInteger(cap) || cap < 1)) {
    throw new TypeError("createTenancy: options.maxSwitchedConnections must be 'auto', an integer >= 1 or Infinity");
  }
  const positive = new Set(['maxPools', 'maxTenants', 'maxConnections', 'maxConnectionsPerTenant', 'acquireTimeoutMs']);
  for (const name of ['maxPools', 'maxTenants', 'maxConnections', 'maxConnectionsPerTenant', 'acquireTimeoutMs', 'idleTimeoutMs', 'catalogTtlMs', 'negativeCacheTtlMs', 'negativeCacheSize'] as const) {
    const value = options[name];
    const min = positive.has(name) ? 1 : 0;
    if (value !== undefined && (!Number.isInteger(value) || value < min)) {
      throw new TypeError(`createTenancy: options.${name} must be an integer >= ${min}`);
    }
  }
  const pattern = options.tenantIdPattern;
  if (pattern !== undefined && !(pattern instanceof RegExp) && typeof pattern !== 'function') {
    throw new TypeError('createTenancy: options.tenantIdPattern must be a RegExp or a function');
  }
  if (options.createKnex !== undefined && typeof options.createKnex !== 'function') {
    throw new TypeError('createTenancy: options.createKnex must be a function');
  }
}
