import type { Knex } from 'knex';
import knexFactory from 'knex';
import {
  TenantContextMissingError,
  TenantError,
  TenantUnavailableError,
  UnknownTenantError,
} from './errors';
import { createMiddleware, type TenantMiddleware, type TenantMiddlewareOptions } from './middleware';
import { PoolCache, type PoolCacheStats, type TenantConnections } from './pool-cache';
import { bindTenant } from './propagation';
import { CATALOG_DEFAULTS, CatalogCache } from './catalog-cache';
import { createErrorHandler, type ErrorHandlerOptions, type TenantErrorHandler } from './http-errors';
import { currentScope, globalState, runInScope, type ScopeOwner, type TenantScope } from './scope';
import { validateTenantId, type TenantIdValidator } from './tenant-id';
import { runTransaction, warnOutsideTransaction, type HookErrorHandler } from './transaction';

/** Options of `createTenancy()`. */
export interface TenancyOptions {
  /** The knex config of a tenant's database (or a promise of it). Called when its pool is opened. */
  knexConfig(tenantId: string): Knex.Config | Promise<Knex.Config>;
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
  /** Cap on cached tenant pools; the least recently used is evicted beyond it. Default 50. */
  maxPools?: number;
  /** A tenant pool unused for this long is closed. Default 60 000 ms; 0 disables idle eviction. */
  idleTimeoutMs?: number;
  /** Tenant id check: a pattern or a predicate. Default `DEFAULT_TENANT_ID_PATTERN`. */
  tenantIdPattern?: TenantIdValidator;
  /** Run `select 1` when a pool is opened, so a dropped database or dead server fails fast. Default true. */
  verifyConnection?: boolean;
  /** Builds a knex from a config. Default: knex's own factory. */
  createKnex?(config: Knex.Config): Knex;
  /**
   * Warn (once per call site) when a query runs on the tenant's bare knex while a transaction is open
   * in the same scope. Default: on unless `NODE_ENV` is `production`.
   */
  warnOutsideTransaction?: boolean;
  /** Receives errors of onCommit/onRollback callbacks. Default: a process warning. */
  onHookError?: HookErrorHandler;
  // --- operations options (migrations, create/drop, forEachTenant) ---
  // --- end operations options ---
}

/** What `tenancy.stats()` returns. */
export interface TenancyStats extends PoolCacheStats {
  strategy: 'pool-per-tenant';
  /** Cached catalog answers and catalog calls made (absent without `tenantExists`). */
  catalog?: { known: number; unknown: number; lookups: number };
}

const DEFAULTS = Object.freeze({ maxPools: 50, idleTimeoutMs: 60_000, verifyConnection: true });

// mysql2 error numbers that mean "this database does not exist" (a dropped tenant).
const UNKNOWN_DATABASE_ERRNOS = new Set([1049]);

/**
 * A set of tenant databases: opens their pools, runs code in their scope, and closes them.
 * Create it with `createTenancy()`.
 */
export class Tenancy implements ScopeOwner {
  readonly #options: TenancyOptions;
  readonly #connections: TenantConnections;
  readonly #scopes = new WeakMap<Knex, TenantScope>();
  readonly #validator: TenantIdValidator | undefined;
  readonly #catalog: CatalogCache | undefined;

  constructor(options: TenancyOptions) {
    this.#options = options;
    this.#validator = options.tenantIdPattern;
    if (options.tenantExists !== undefined) {
      this.#catalog = new CatalogCache(options.tenantExists, {
        ttlMs: options.catalogTtlMs ?? CATALOG_DEFAULTS.ttlMs,
        negativeTtlMs: options.negativeCacheTtlMs ?? CATALOG_DEFAULTS.negativeTtlMs,
        negativeMax: options.negativeCacheSize ?? CATALOG_DEFAULTS.negativeMax,
      });
    }
    this.#connections = new PoolCache({
      open: (id) => this.#open(id),
      maxPools: options.maxPools ?? DEFAULTS.maxPools,
      idleTimeoutMs: options.idleTimeoutMs ?? DEFAULTS.idleTimeoutMs,
    });
  }

  /**
   * Runs `fn` in the scope of tenant `tenantId` and returns its result. A thenable result (a query
   * builder) is awaited inside the scope. Scopes nest; the outer one is back when `fn` returns or throws.
   * @throws {InvalidTenantIdError} for an id that fails validation (before any lookup).
   * @throws {UnknownTenantError} when `tenantExists` says no or the database does not exist.
   * @throws {TenantUnavailableError} when the tenant's database cannot be reached.
   * @example
   * const count = await tenancy.runWithTenant('acme', () => Person.query().resultSize());
   */
  async runWithTenant<T>(tenantId: string, fn: () => T | PromiseLike<T>): Promise<Awaited<T>> {
    const current = currentScope();
    if (current !== undefined && current.owner === this && current.tenantId === tenantId) {
      return runInScope(current, fn);
    }
    const { scope, release } = await this.enter(tenantId);
    try {
      return await runInScope(scope, fn);
    } finally {
      release();
    }
  }

  /**
   * @internal Validates the id and leases the tenant's connection. The caller runs code in `scope`
   * and must call `release()` when that code is done (the middleware does so when the response ends).
   */
  async enter(tenantId: unknown): Promise<{ scope: TenantScope; release: () => void }> {
    const id = validateTenantId(tenantId, this.#validator);
    if (this.#catalog !== undefined) {
      let known = this.#catalog.exists(id);
      if (typeof known !== 'boolean') {
        try {
          known = await known;
        } catch (error) {
          throw new TenantUnavailableError(id, { cause: error, reason: 'the tenant catalog lookup failed' });
        }
      }
      if (!known) throw new UnknownTenantError(id);
    }
    const lease = await this.#connections.lease(id);
    let scope = this.#scopes.get(lease.knex);
    if (scope === undefined) {
      scope = Object.freeze({ owner: this, tenantId: id, knex: lease.knex });
      this.#scopes.set(lease.knex, scope);
    }
    return { scope, release: lease.release };
  }

  /**
   * The current tenant's knex for raw queries: the open transaction inside `transaction()`, else the
   * tenant's knex.
   * @throws {TenantContextMissingError} outside a scope of this tenancy.
   */
  knex(): Knex {
    const scope = this.#ownScope();
    return scope.trx ?? scope.knex;
  }

  /**
   * Runs `fn` in a transaction of the current tenant. Inside it, tenant model queries, `tenancy.knex()`
   * and `Model.knex()` use the transaction without passing it. A throw rolls back and rethrows; a nested
   * call is a savepoint.
   * @throws {TenantContextMissingError} outside a scope of this tenancy.
   */
  transaction<T>(fn: (trx: Knex.Transaction) => T | Promise<T>): Promise<T> {
    let scope: TenantScope;
    try {
      scope = this.#ownScope();
    } catch (error) {
      return Promise.reject(error);
    }
    return runTransaction(scope, fn, this.#options.onHookError);
  }

  /**
   * Express 4/5 middleware: resolves the tenant (default: header `x-tenant-id`) and runs the rest of
   * the request in its scope. Errors go to `next(err)`.
   */
  middleware(options: TenantMiddlewareOptions = {}): TenantMiddleware {
    return createMiddleware(this, options);
  }

  /**
   * Express error handler answering JSON `{ error: { code, message } }`: missing or invalid tenant
   * 400, unknown tenant (or a database dropped under it) 404, unreachable database 503 with
   * `Retry-After`. Never a stack trace or a driver message. Other errors go to `next(err)` unless
   * `options.all`. Mount it after your routes.
   */
  errorHandler(options: ErrorHandlerOptions = {}): TenantErrorHandler {
    return createErrorHandler(options, { forget: (id) => this.forget(id), isGone: (scope) => this.#isGone(scope) });
  }

  /** Closes the pool of one tenant once its in-flight work is done (after a move or a drop). */
  evict(tenantId: string): Promise<void> {
    return this.#connections.evict(tenantId);
  }

  /**
   * Forgets what is known of a tenant: its cached catalog answer and its pool (closed once its
   * in-flight work is done). The next request asks `tenantExists` and `knexConfig` again: use it
   * after creating, dropping or moving a tenant.
   */
  forget(tenantId: string): Promise<void> {
    this.#catalog?.forget(tenantId);
    return this.#connections.evict(tenantId);
  }

  /** Pool counters: `pools` open, `leases` in flight, `created`, `evictions`, `failures`. */
  stats(): TenancyStats {
    const stats: TenancyStats = { strategy: 'pool-per-tenant', ...this.#connections.stats() };
    if (this.#catalog !== undefined) stats.catalog = this.#catalog.stats();
    return stats;
  }

  /** Closes every tenant pool (waiting for in-flight scopes to finish). Call at shutdown. */
  async destroy(): Promise<void> {
    if (globalState.defaultOwner === this) globalState.defaultOwner = undefined;
    await this.#connections.destroy();
  }

  // --- operations methods (migrations, create/drop, forEachTenant) ---
  // --- end operations methods ---

  // --- propagation methods (bind) ---
  /**
   * Binds `fn` to the tenant scope that is current now, for callbacks that a library calls later from
   * its own context (EventEmitter listeners, stream handlers). Same as the free `bindTenant(fn)`.
   * Bound outside any scope, `fn` always runs with no scope (tenant queries in it fail closed).
   * @throws {TypeError} when `fn` is not a function.
   * @example
   * emitter.on('done', tenancy.bind(() => Audit.query().insert({ message: 'done' })));
   */
  bind<A extends unknown[], R, This = unknown>(fn: (this: This, ...args: A) => R): (this: This, ...args: A) => R {
    return bindTenant(fn);
  }
  // --- end propagation methods ---

  /** Whether the database behind a scope was dropped (MySQL: its connection names a schema that is gone). */
  async #isGone(scope: TenantScope): Promise<boolean> {
    const client = String(scope.knex.client.config.client ?? '');
    if (!/mysql|maria/.test(client)) return false;
    const [rows] = await scope.knex.raw('select count(*) as n from information_schema.schemata where schema_name = database()');
    return Number((rows as { n: number }[])[0]?.n) === 0;
  }

  #ownScope(): TenantScope {
    const scope = currentScope();
    if (scope === undefined || scope.owner !== this) throw new TenantContextMissingError();
    return scope;
  }

  async #open(tenantId: string): Promise<Knex> {
    const { knexConfig } = this.#options;
    let knex: Knex;
    try {
      const config = withPoolDefaults(await knexConfig(tenantId));
      knex = (this.#options.createKnex ?? knexFactory)(config);
    } catch (error) {
      throw error instanceof TenantError ? error : new TenantUnavailableError(tenantId, { cause: error, reason: 'its knex config could not be built' });
    }
    if (this.#options.verifyConnection ?? DEFAULTS.verifyConnection) {
      try {
        await knex.raw('select 1');
      } catch (error) {
        await knex.destroy().catch(() => undefined);
        throw classifyOpenError(tenantId, error);
      }
    }
    if (this.#options.warnOutsideTransaction ?? process.env.NODE_ENV !== 'production') {
      knex.on('query', warnOutsideTransaction(knex));
    }
    return knex;
  }
}

/** Tenant pools start empty and shrink back when idle: thousands of tenants must not hold `min` connections each. */
function withPoolDefaults(config: Knex.Config): Knex.Config {
  return { ...config, pool: { min: 0, idleTimeoutMillis: 30_000, ...config.pool } };
}

function classifyOpenError(tenantId: string, error: unknown): TenantError {
  const errno = (error as { errno?: unknown }).errno;
  if (typeof errno === 'number' && UNKNOWN_DATABASE_ERRNOS.has(errno)) {
    return new UnknownTenantError(tenantId, { cause: error });
  }
  const code = (error as { code?: unknown }).code;
  return new TenantUnavailableError(tenantId, {
    cause: error,
    reason: typeof code === 'string' ? code : 'the connection check failed',
  });
}

/**
 * Creates a tenancy. The first one created becomes the default used by the free `runWithTenant()`.
 * @throws {TypeError} naming the option when an option is invalid.
 * @example
 * const tenancy = createTenancy({
 *   knexConfig: (id) => ({ client: 'mysql2', connection: { host: '127.0.0.1', user: 'app', database: `tenant_${id}` } }),
 *   tenantExists: async (id) => Boolean(await catalog('tenants').where({ id }).first()),
 * });
 * app.use(tenancy.middleware());
 */
export function createTenancy(options: TenancyOptions): Tenancy {
  checkOptions(options);
  const tenancy = new Tenancy(options);
  globalState.defaultOwner ??= tenancy;
  return tenancy;
}

function checkOptions(options: TenancyOptions): void {
  if (options === null || typeof options !== 'object') throw new TypeError('createTenancy(options): options must be an object');
  if (typeof options.knexConfig !== 'function') throw new TypeError('createTenancy: options.knexConfig must be a function (tenantId) => knex config');
  if (options.tenantExists !== undefined && typeof options.tenantExists !== 'function') {
    throw new TypeError('createTenancy: options.tenantExists must be a function (tenantId) => boolean');
  }
  for (const name of ['maxPools', 'idleTimeoutMs', 'catalogTtlMs', 'negativeCacheTtlMs', 'negativeCacheSize'] as const) {
    const value = options[name];
    const min = name === 'maxPools' ? 1 : 0;
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
