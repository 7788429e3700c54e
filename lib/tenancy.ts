import type { Knex } from 'knex';
import {
  TenantContextMissingError,
  TenancyDestroyedError,
  TenantError,
  TenantUnavailableError,
  UnknownTenantError,
} from './errors';
import { createMiddleware, type TenantMiddleware, type TenantMiddlewareOptions } from './middleware';
import type { ConnectionBudget } from './connection-budget';
import { bounded, CONNECTION_DEFAULTS, createConnections } from './connections';
import { checkTenancyOptions, type TenancyOptions, type TenancyStats } from './tenancy-options';
import type { TenantConnections, TenantLease } from './pool-cache';
import { bindTenant, type AnyGenerator } from './propagation';
import { CATALOG_DEFAULTS, CatalogCache } from './catalog-cache';
import { createErrorHandler, type ErrorHandlerOptions, type TenantErrorHandler } from './http-errors';
import { currentScope, globalState, liveConnection, liveScope, markConnection, openTransactionOf, runInScope, whenSettled, type ScopeOwner, type TenantScope } from './scope';
import { validateTenantId, type TenantIdValidator } from './tenant-id';
import { defaultHookError, runTransaction } from './transaction';
import { forEachTenant, type ForEachTenantOptions, type ForEachTenantReport, type JobScope } from './for-each-tenant';
import type { OperationsHost } from './operation-knex';
import {
  checkDrainTimeoutMs,
  createTenant,
  dropTenant,
  type CreateTenantOptions,
  type CreateTenantResult,
  type DropTenantOptions,
  type DropTenantResult,
} from './tenant-lifecycle';
import { TenantMigrations } from './tenant-migrations';

/** Counts `id` in `counts` until the returned function is called (once; later calls do nothing). */
function countWhile(counts: Map<string, number>, id: string): () => void {
  counts.set(id, (counts.get(id) ?? 0) + 1);
  let done = false;
  return () => {
    if (done) return;
    done = true;
    const left = counts.get(id)! - 1;
    if (left > 0) counts.set(id, left);
    else counts.delete(id);
  };
}

/** A scope opened for a tenant, and the function that gives its connection lease back. */
export interface EnteredScope {
  scope: TenantScope;
  release: () => void;
}

/** The longest delay Node's timers keep (about 24.8 days); a longer one fires at once. */

/** Runs `fn` in the entered scope and gives its lease back once its result settles (one promise, no `finally`). */
function runReleasing<T>({ scope, release }: EnteredScope, fn: () => T | PromiseLike<T>): Promise<Awaited<T>> {
  return whenSettled(runInScope(scope, fn), release);
}

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
  readonly #budget: ConnectionBudget | undefined;
  #destroyed = false;

  constructor(options: TenancyOptions) {
    this.#options = options;
    this.#validator = options.tenantIdPattern;
    if (options.tenantExists !== undefined) {
      const lookupTimeoutMs = options.acquireTimeoutMs ?? CONNECTION_DEFAULTS.acquireTimeoutMs;
      this.#catalog = new CatalogCache(bounded(options.tenantExists, lookupTimeoutMs, 'tenantExists()'), {
        ttlMs: options.catalogTtlMs ?? CATALOG_DEFAULTS.ttlMs,
        negativeTtlMs: options.negativeCacheTtlMs ?? CATALOG_DEFAULTS.negativeTtlMs,
        negativeMax: options.negativeCacheSize ?? CATALOG_DEFAULTS.negativeMax,
      });
    }
    ({ connections: this.#connections, budget: this.#budget } = createConnections(options));
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
  runWithTenant<T>(tenantId: string, fn: () => T | PromiseLike<T>): Promise<Awaited<T>> {
    let entered: EnteredScope | Promise<EnteredScope>;
    let outer: TenantScope | undefined;
    try {
      const current = currentScope();
      if (current !== undefined) {
        if (current.owner === this && current.tenantId === tenantId) return runInScope(current, fn);
        // Inside a transaction (of another tenant, or further out): back in a tenant whose transaction
        // is open out there (A, then B, then A again), the queries join it, as in a nested scope of the
        // same tenant (and a bindTenant function). On their own connection they would commit apart
        // from it, or wait for the connection it holds (SQLite's one) until the acquire timeout.
        outer = current.trx !== undefined ? current : current.outer;
        const open = outer === undefined ? undefined : openTransactionOf(outer, this, tenantId);
        // With the chain it was reached through: from there, back in another tenant whose
        // transaction is open further out (A, B, A, then B again) joins that one too.
        if (open !== undefined) return runInScope(open.outer === outer ? open : { ...open, outer }, fn);
      }
      entered = this.enterNow(tenantId);
    } catch (error) {
      return Promise.reject(error);
    }
    if (outer !== undefined) {
      const within = outer;
      const chained = (later: EnteredScope): EnteredScope => ({ scope: { ...later.scope, outer: within }, release: later.release });
      entered = entered instanceof Promise ? entered.then(chained) : chained(entered);
    }
    return entered instanceof Promise ? entered.then((later) => runReleasing(later, fn)) : runReleasing(entered, fn);
  }

  /**
   * @internal Validates the id and leases the tenant's connection. The caller runs code in `scope`
   * and must call `release()` when that code is done (the middleware does so when the response ends).
   */
  async enter(tenantId: unknown): Promise<EnteredScope> {
    return this.enterNow(tenantId);
  }

  /**
   * @internal `enter()` without a promise when the tenant is known and its connection cached (the
   * common case of a request), else a promise. Throws `InvalidTenantIdError` and, after destroy(),
   * `TenancyDestroyedError` synchronously.
   */
  enterNow(tenantId: unknown): EnteredScope | Promise<EnteredScope> {
    if (this.#destroyed) throw new TenancyDestroyedError();
    const id = validateTenantId(tenantId, this.#validator);
    if (this.#dropping.size > 0 && this.#dropping.has(id)) return Promise.reject(new UnknownTenantError(id));
    const known = this.#catalog === undefined ? true : this.#catalog.exists(id);
    if (known === true) {
      const lease = this.#connections.tryLease(id);
      if (lease !== undefined) return this.#entered(id, lease);
    }
    return this.#enterSlowly(id, known);
  }

  async #enterSlowly(id: string, known: boolean | Promise<boolean>): Promise<EnteredScope> {
    if (typeof known !== 'boolean') {
      try {
        known = await known;
      } catch (error) {
        throw new TenantUnavailableError(id, { cause: error, reason: 'the tenant catalog lookup failed' });
      }
      if (!known) this.#unknownNow(id);
    }
    if (!known) throw new UnknownTenantError(id);
    // A dropTenant() that began while this request waited (for the catalog, or for its connection:
    // the drop's forget() made that opening stale, and it opened the tenant again) refuses it too.
    // Let in, it was served while the drop ran and did not wait for it, and lost its database mid-way.
    if (this.#dropping.has(id)) throw new UnknownTenantError(id);
    let lease: TenantLease;
    try {
      lease = await this.#connections.lease(id);
    } catch (error) {
      // The catalog said yes, the database is missing: remembered as unknown, not opened again per request.
      if (error instanceof UnknownTenantError) this.#catalog?.refute(id);
      throw error;
    }
    if (this.#dropping.has(id)) {
      lease.release();
      void this.#connections.evict(id, { gone: true }).catch(() => undefined);
      throw new UnknownTenantError(id);
    }
    return this.#entered(id, lease);
  }

  /**
   * The catalog now says no for a tenant it said yes to (dropped, by this process or another): a
   * pool still cached for it is closed once its scopes are done, rather than serving the old
   * database again when a later answer says yes (an SQLite file dropped and created again).
   * Requests call it on a fresh answer only: no pool is opened while a "no" is cached.
   */
  #unknownNow(id: string): void {
    void this.#connections.evict(id, { gone: true }).catch(() => undefined);
  }

  #entered(id: string, lease: TenantLease): EnteredScope {
    let scope = this.#scopes.get(lease.knex);
    if (scope === undefined) {
      const key = Object.freeze({ owner: this, tenantId: id });
      scope = Object.freeze({ owner: this, tenantId: id, knex: lease.knex, key });
      this.#scopes.set(lease.knex, scope);
      markConnection(lease.knex, key);
    }
    return { scope, release: lease.release };
  }


  /**
   * The current tenant's knex for raw queries: the open transaction inside `transaction()`, else the
   * tenant's knex.
   * @throws {TenantContextMissingError} outside a scope of this tenancy.
   */
  knex(): Knex {
    return liveConnection(this.#ownScope());
  }

  /**
   * Runs `fn` in a transaction of the current tenant. Inside it, tenant model queries, `tenancy.knex()`
   * and `Model.knex()` use the transaction without passing it. A throw rolls back and rethrows; a nested
   * call is a savepoint.
   * @throws {TenantContextMissingError} outside a scope of this tenancy.
   */
  transaction<T>(fn: (trx: Knex.Transaction) => T | PromiseLike<T>): Promise<Awaited<T>> {
    let scope: TenantScope;
    try {
      scope = liveScope(this.#ownScope());
    } catch (error) {
      return Promise.reject(error);
    }
    return runTransaction(scope, fn, this.#options.onHookError);
  }

  /** @internal A failed onCommit callback run outside a transaction, in a scope of this tenancy. */
  reportHookError(error: unknown, tenantId: string): void {
    (this.#options.onHookError ?? defaultHookError)(error, tenantId);
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

  /**
   * Closes the pool of one tenant once its in-flight work is done (after a move or a drop). Inside
   * that tenant's own scope it cannot wait for that scope: the pool closes once the scope ends, and
   * the promise settles at once.
   */
  evict(tenantId: string): Promise<void> {
    return this.#evicting(tenantId, { gone: true });
  }

  /**
   * Forgets what is known of a tenant: its cached catalog answer and its pool (closed once its
   * in-flight work is done; inside its own scope, see `evict`). The next request asks `tenantExists`
   * and `knexConfig` again: use it after creating, dropping or moving a tenant.
   */
  forget(tenantId: string): Promise<void> {
    this.#catalog?.forget(tenantId);
    return this.#evicting(tenantId, { gone: true });
  }

  #evicting(tenantId: string, options: { gone?: boolean }): Promise<void> {
    const closed = this.#connections.evict(tenantId, options);
    if (!this.#inOwnScope(tenantId)) return closed;
    // Awaited, it would wait for the caller's own lease, given back only once the caller is done.
    closed.catch(() => undefined);
    return Promise.resolve();
  }

  /** Whether the current scope is `tenantId`'s, of this tenancy. */
  #inOwnScope(tenantId: string): boolean {
    const scope = currentScope();
    return scope !== undefined && scope.owner === this && scope.tenantId === tenantId;
  }

  /** Pool counters: `pools` open, `leases` in flight, `created`, `evictions`, `failures`. */
  stats(): TenancyStats {
    const stats: TenancyStats = { strategy: this.#options.strategy ?? 'pool-per-tenant', ...this.#connections.stats() };
    if (this.#catalog !== undefined) stats.catalog = this.#catalog.stats();
    if (this.#budget !== undefined) stats.budget = this.#budget.stats();
    return stats;
  }

  /**
   * Closes every tenant pool and refuses new scopes. Call at shutdown. Scopes in flight, and
   * connections still in use (a transaction left open, a statement that outlived its scope), get
   * `drainTimeoutMs` (10 000) to finish; then their connections are closed (the server rolls back
   * what they left open).
   * @throws {TypeError} for a `drainTimeoutMs` that is not a number of milliseconds (0 or more).
   */
  async destroy(options: { drainTimeoutMs?: number } = {}): Promise<void> {
    // A timer longer than 2^31 - 1 ms fires at once in Node: such a drain would close everything now.
    const drainTimeoutMs = checkDrainTimeoutMs('tenancy.destroy()', options.drainTimeoutMs);
    this.#destroyed = true;
    if (globalState.defaultOwner === this) {
      globalState.defaultOwner = undefined;
      globalState.defaultDestroyed = true;
    }
    await this.#connections.destroy(drainTimeoutMs);
  }

  #operations: OperationsHost | undefined;
  /** Tenants being dropped (dropTenant calls in progress, by id): new scopes are refused. */
  readonly #dropping = new Map<string, number>();
  /** Tenants being created (createTenant calls in progress, by id): a dropTenant of them is refused. */
  readonly #creating = new Map<string, number>();
  #migrations: TenantMigrations | undefined;

  /**
   * Knex migrations on every tenant: `latest`, `rollback` and `status`, each with bounded concurrency,
   * a report per tenant, and an abort signal that lets running tenants finish. Needs `options.migrations`.
   * @example
   * const report = await tenancy.migrate.latest({ concurrency: 8 });
   * if (!report.ok) process.exitCode = 1;
   */
  get migrate(): TenantMigrations {
    return (this.#migrations ??= new TenantMigrations(this.#operationsHost()));
  }

  /**
   * Creates a tenant: validates the id, creates its database, applies the migrations, runs the seeds
   * and calls `registerTenant`. If a step after the database creation fails, the database is dropped
   * again and the error rethrown, so the call can be retried.
   * @throws {InvalidTenantIdError} for an invalid id (nothing is touched).
   * @throws {TenantAlreadyExistsError} when `tenantExists` says yes or the database already exists.
   * @throws {TenantLifecycleError} when a step fails (`step` names it, `cause` has the error).
   * @example
   * await tenancy.createTenant('acme');
   */
  createTenant(tenantId: string, options: CreateTenantOptions = {}): Promise<CreateTenantResult> {
    return createTenant(this.#operationsHost(), tenantId, options);
  }

  /**
   * Drops a tenant: closes its pool (after its in-flight scopes), drops its database and calls
   * `unregisterTenant`. Needs `{ confirm: tenantId }`.
   * @throws {TenantDropNotConfirmedError} without the confirmation (nothing is touched).
   * @throws {TenantError} `TENANT_DROP_IN_OWN_SCOPE` inside the tenant's own scope (nothing is touched).
   * @throws {TenantLifecycleError} when dropping the database or unregistering fails.
   * @example
   * await tenancy.dropTenant('acme', { confirm: 'acme' });
   */
  dropTenant(tenantId: string, options: DropTenantOptions): Promise<DropTenantResult> {
    if (this.#inOwnScope(tenantId)) {
      // It waits for the tenant's scopes, the caller's included, which waits for it (and the server's
      // DROP DATABASE for the caller's open transaction, with an implicit transaction).
      return Promise.reject(
        new TenantError(
          'TENANT_DROP_IN_OWN_SCOPE',
          `dropTenant("${tenantId}") was called inside that tenant's own scope, where it would wait for itself. ` +
            'Call it from code outside the scope: an admin route without tenancy.middleware(), a central job, or a script.',
          { statusCode: 500, tenantId },
        ),
      );
    }
    return dropTenant(this.#operationsHost(), tenantId, options);
  }

  /**
   * Runs `fn(tenantId)` inside each tenant's scope (default: every tenant of `options.listTenants`),
   * `concurrency` at a time (default 4). A tenant that throws is reported and the others go on; pools
   * the run had to open are closed when their tenant is done.
   * Rejects (it does not throw) with a `TypeError` when `fn` is not a function or no tenants are given or listable.
   * @example
   * const report = await tenancy.forEachTenant(() => Invoice.query().where('due', '<', new Date()).patch({ late: true }));
   */
  forEachTenant<T>(fn: (tenantId: string) => T | PromiseLike<T>, options: ForEachTenantOptions<Awaited<T>> = {}): Promise<ForEachTenantReport<Awaited<T>>> {
    return forEachTenant(this.#operationsHost(), (id) => this.#enterForJob(id), fn, options);
  }

  /** @internal Validates `id` with this tenancy's pattern (the CLI's `--tenants`, before any tenant is touched). */
  checkTenantId(id: unknown): string {
    return validateTenantId(id, this.#validator);
  }

  #operationsHost(): OperationsHost {
    return (this.#operations ??= {
      options: this.#options,
      validate: (id) => validateTenantId(id, this.#validator),
      // forEachTenant closes the pools it opened to make room, not because the tenant went away.
      evict: (id) => this.#evicting(id, {}),
      forget: (id) => this.forget(id),
      refuseScopes: (id) => countWhile(this.#dropping, id),
      dropping: (id) => this.#dropping.has(id),
      markCreating: (id) => countWhile(this.#creating, id),
      creating: (id) => this.#creating.has(id),
      checkedOut: (id) => this.#connections.checkedOut(id),
      closeCheckedOut: (id) => this.#connections.closeCheckedOut(id),
    });
  }

  /** Enters a tenant's scope for a job and tells whether that opened its pool (so the job closes it after). */
  async #enterForJob(tenantId: string): Promise<JobScope> {
    const id = validateTenantId(tenantId, this.#validator);
    if (this.#dropping.has(id)) throw new UnknownTenantError(id);
    if (this.#catalog !== undefined) {
      let known: boolean;
      try {
        known = await this.#catalog.exists(id);
      } catch (error) {
        throw new TenantUnavailableError(id, { cause: error, reason: 'the tenant catalog lookup failed' });
      }
      if (!known) {
        this.#unknownNow(id);
        throw new UnknownTenantError(id);
      }
    }
    // Every pool that ever served a scope has its knex in #scopes: a knex not there was opened just now.
    const probe = await this.#connections.lease(id);
    try {
      const opened = !this.#scopes.has(probe.knex);
      const { scope, release } = await this.enter(id);
      return { scope, release, opened };
    } finally {
      probe.release();
    }
  }

  /**
   * Binds `fn` to the tenant scope that is current now, for callbacks that a library calls later from
   * its own context (EventEmitter listeners, stream handlers). Same as the free `bindTenant(fn)`.
   * Bound outside any scope, `fn` always runs with no scope (tenant queries in it fail closed).
   * @throws {TypeError} when `fn` is not a function.
   * @example
   * emitter.on('done', tenancy.bind(() => Audit.query().insert({ message: 'done' })));
   */
  bind<A extends unknown[], G extends AnyGenerator, This = unknown>(fn: (this: This, ...args: A) => G): (this: This, ...args: A) => G;
  bind<A extends unknown[], R, This = unknown>(fn: (this: This, ...args: A) => R): (this: This, ...args: A) => R | Promise<Awaited<R>>;
  bind<A extends unknown[], R, This = unknown>(fn: (this: This, ...args: A) => R): (this: This, ...args: A) => R | Promise<Awaited<R>> {
    return bindTenant(fn);
  }

  /** Whether the database behind a scope was dropped (MySQL: its connection names a schema that is gone). */
  async #isGone(scope: TenantScope): Promise<boolean> {
    const client = String(scope.knex.client.config.client ?? '');
    if (!/mysql|maria/.test(client)) return false;
    try {
      const [rows] = await scope.knex.raw('select count(*) as n from information_schema.schemata where schema_name = database()');
      return Number((rows as { n: number }[])[0]?.n) === 0;
    } catch (error) {
      // A shared-pool connection that must switch to the database first fails to, or a new
      // connection of the tenant's pool cannot open it: it is gone.
      if (error instanceof UnknownTenantError) return true;
      const native = (error as { nativeError?: { errno?: unknown }; errno?: unknown });
      if ((native.nativeError?.errno ?? native.errno) === 1049) return true;
      throw error;
    }
  }

  #ownScope(): TenantScope {
    const scope = currentScope();
    if (scope === undefined || scope.owner !== this) throw new TenantContextMissingError();
    return scope;
  }
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
  checkTenancyOptions(options);
  const tenancy = new Tenancy(options);
  if (globalState.defaultOwner === undefined) {
    globalState.defaultOwner = tenancy;
    globalState.defaultDestroyed = false;
  }
  return tenancy;
}

export type { TenancyOptions, TenancyCommonOptions, TenancyStats } from './tenancy-options';
