/**
 * `tenancy.createTenant()` and `tenancy.dropTenant()`: a tenant's database from nothing to migrated,
 * seeded and registered, and back to nothing.
 */
import { performance } from 'node:perf_hooks';
import path from 'node:path';
import knexFactory, { type Knex } from 'knex';
import { CONNECTION_DEFAULTS, tenantKnexConfig } from './connections';
import { TenantError } from './errors';
import { runMigrationStep } from './migration-plan';
import { openOperationKnex, type OperationsHost } from './operation-knex';
import {
  isConfigurationError,
  TenantAlreadyExistsError,
  TenantDropNotConfirmedError,
  TenantLifecycleError,
  type TenantLifecycleStep,
} from './operation-errors';
import { builtInDatabaseHooks, createdByOpening, databaseExists, sqliteHasNoTables, type TenantDatabaseHooks } from './tenant-databases';
import { refuseSideFileName, resolvedSqliteConfig } from './sqlite-files';
import { migrationPlanOf, reachable, toMigrationError } from './tenant-migrations';
import { since } from './tenant-runner';

/** Options of `tenancy.createTenant()`. */
export interface CreateTenantOptions {
  /** Run the seeds of `options.seeds` after the migrations. Default true (when seeds are configured). */
  seed?: boolean;
}

/** What `tenancy.createTenant()` did. */
export interface CreateTenantResult {
  readonly tenantId: string;
  /** The migrations applied (none when the tenancy has no `options.migrations`). */
  readonly migrations: readonly string[];
  /** The seed files run. */
  readonly seeds: readonly string[];
  readonly durationMs: number;
}

/** Options of `tenancy.dropTenant()`. */
export interface DropTenantOptions {
  /** Must equal the tenant id: dropping deletes the tenant's database. */
  confirm: string;
  /**
   * How long the tenant's scopes in flight, and connections it still has checked out (a transaction
   * left open), get to finish before those connections are closed (the server rolls back what they
   * left open); also how long the built-in MySQL drop waits for a lock on the database held
   * elsewhere. Default 10 000 ms.
   */
  drainTimeoutMs?: number;
}

/** What `tenancy.dropTenant()` did. */
export interface DropTenantResult {
  readonly tenantId: string;
  readonly durationMs: number;
}

function hooksOf(host: OperationsHost, config: Knex.Config): TenantDatabaseHooks {
  const { createDatabase, dropDatabase } = host.options;
  const builtIn = (): TenantDatabaseHooks => builtInDatabaseHooks(config, host.options.createKnex ?? knexFactory, host.options.acquireTimeoutMs ?? CONNECTION_DEFAULTS.acquireTimeoutMs);
  return {
    create: async (id, cfg) => (createDatabase === undefined ? builtIn().create(id, cfg) : createDatabase(id, cfg)),
    drop: async (id, cfg, lockWaitSeconds) => (dropDatabase === undefined ? builtIn().drop(id, cfg, lockWaitSeconds) : dropDatabase(id, cfg)),
  };
}

async function step<T>(tenantId: string, name: TenantLifecycleStep, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    // Typed errors and the library's own configuration errors are thrown as they are; any other
    // error (a TypeError too: `fetch failed` in a knexConfig) is this step's failure.
    if (error instanceof TenantError || isConfigurationError(error)) throw error;
    throw new TenantLifecycleError(tenantId, name, { cause: error });
  }
}

/** @internal See `Tenancy#createTenant`. */
export async function createTenant(host: OperationsHost, tenantId: unknown, options: CreateTenantOptions = {}): Promise<CreateTenantResult> {
  const started = performance.now();
  const id = host.validate(tenantId);
  // The drop's last steps (unregister, a second built-in drop for SQLite) would undo this creation:
  // the database or file deleted, or left unregistered.
  if (host.dropping(id)) throw new TenantAlreadyExistsError(id, { dropping: true });
  // Another createTenant() of this id in this tenancy: both would pass the existence checks before
  // either creates the database (an app hook with IF NOT EXISTS succeeds twice), and the loser's undo
  // would drop the winner's database under its registered tenant.
  if (host.creating(id)) throw new TenantAlreadyExistsError(id, { creating: true });
  // And a drop begun meanwhile would delete what this creates (see dropTenant).
  const created = host.markCreating(id);
  try {
    return await createNow(host, id, options, started);
  } finally {
    created();
  }
}

async function createNow(host: OperationsHost, id: string, options: CreateTenantOptions, started: number): Promise<CreateTenantResult> {
  const { tenantExists, registerTenant, migrations: migrationsConfig, seeds: seedsConfig } = host.options;
  // The catalog's failure is a 503 to retry, as when serving the tenant.
  if (tenantExists !== undefined && (await reachable(id, 'the tenant catalog lookup failed', async () => tenantExists(id)))) throw new TenantAlreadyExistsError(id);
  // The plan first: unreadable migration files must fail before a database exists.
  const plan = migrationsConfig === undefined ? undefined : await migrationPlanOf(host, 'tenancy.createTenant()');
  const config = await step(id, 'create-database', async () => tenantKnexConfig(host.options, id));
  const hooks = hooksOf(host, config);
  refuseSideFileName(await step(id, 'create-database', () => resolvedSqliteConfig(config)));
  // An app's createDatabase may succeed on a database that is there (`CREATE DATABASE IF NOT EXISTS`):
  // a later failure's undo would then drop a database this call did not create, with its data. Where
  // the library can ask (MySQL, SQLite), one that exists is refused first, as the built-in hook does.
  // Asked as the tenant's config connects: a hook that creates that user too makes the question fail
  // (access denied) before it runs. Then nothing says the hook created the database: a later failure
  // leaves it in place (fail closed), and says so.
  let undoDrops = true;
  if (host.options.createDatabase !== undefined) {
    const exists = await databaseExists(config, host.options.createKnex ?? knexFactory, host.options.acquireTimeoutMs ?? CONNECTION_DEFAULTS.acquireTimeoutMs).catch(() => null);
    if (exists === true) throw new TenantAlreadyExistsError(id);
    if (exists === null) undoDrops = false;
  }
  await step(id, 'create-database', () => hooks.create(id, config));

  let current: TenantLifecycleStep = 'migrate';
  const warnings: string[] = [];
  const knex = openOperationKnex(host, config, warnings);
  try {
    let active: string | undefined;
    let migrations: string[] = [];
    if (plan !== undefined) {
      try {
        migrations = (await runMigrationStep(knex, plan, 'latest', { onActive: (name) => (active = name) })).migrations;
      } catch (error) {
        throw toMigrationError(id, error, active);
      }
    }
    let seeds: string[] = [];
    if (seedsConfig !== undefined && options.seed !== false) {
      current = 'seed';
      const [log] = await knex.seed.run(seedsConfig);
      seeds = log.map((file) => path.basename(file));
    }
    await knex.destroy();
    current = 'register';
    await registerTenant?.(id);
    // A request that came before the tenant existed left a negative catalog answer.
    await host.forget(id);
    return { tenantId: id, migrations, seeds, durationMs: since(started) };
  } catch (error) {
    // Undo: a half-made tenant (created, not migrated or not registered) is worse than none.
    await knex.destroy().catch(() => undefined);
    if (undoDrops) await hooks.drop(id, config).catch(() => undefined);
    // A request served while the tenant was half made (a catalog that reads the database itself)
    // left a pool or handle on it, and a catalog answer: both go, as in dropTenant, and SQLite's
    // built-in drop runs again in case that pool created the file anew.
    await host.forget(id).catch(() => undefined);
    if (undoDrops && host.options.dropDatabase === undefined && createdByOpening(config)) await dropIfEmpty(host, id, config, hooks).catch(() => undefined);
    throw new TenantLifecycleError(id, current, { cause: error, kept: !undoDrops });
  }
}

/**
 * Closes the tenant's serving connections before its database is dropped: its scopes in flight get
 * `ms` to finish, and so do connections it still has checked out once they are done (a transaction
 * left open outlives its scope, and would hold the drop, or the pool's close, for good). Then those
 * connections are closed under it. Scopes still in flight `ms` after that fail the drop.
 */
async function closeTenant(host: OperationsHost, id: string, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  const forgotten = host.forget(id);
  const closed = await settlesWithin(forgotten, ms);
  while (closed && host.checkedOut(id) > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  if (closed && host.checkedOut(id) === 0) return;
  host.closeCheckedOut(id);
  if (!(await settlesWithin(forgotten, ms))) {
    throw new TenantLifecycleError(id, 'drop-database', { cause: new Error(`scopes of the tenant were still in flight ${2 * ms} ms after the drop began; nothing was dropped`) });
  }
}

/** Whether `promise` settles within `ms`. */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([promise.then(() => true as const, () => true as const), late]);
  } finally {
    clearTimeout(timer);
  }
}

const MAX_TIMER_MS = 2 ** 31 - 1;

/** @internal A drain time in milliseconds (default 10 000), or a TypeError naming `where`. */
export function checkDrainTimeoutMs(where: string, value: unknown): number {
  if (value === undefined) return 10_000;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > MAX_TIMER_MS) {
    throw new TypeError(`${where}: drainTimeoutMs must be a number of milliseconds from 0 to ${MAX_TIMER_MS}, got ${String(value)}`);
  }
  return value;
}

/** SQLite's drop once more, of a file a request's opening created: only when it holds no table (sqliteHasNoTables). */
async function dropIfEmpty(host: OperationsHost, id: string, config: Knex.Config, hooks: TenantDatabaseHooks): Promise<void> {
  if (await sqliteHasNoTables(config, host.options.createKnex ?? knexFactory)) await hooks.drop(id, config);
}

/** @internal See `Tenancy#dropTenant`. */
export async function dropTenant(host: OperationsHost, tenantId: unknown, options: DropTenantOptions): Promise<DropTenantResult> {
  const started = performance.now();
  const id = host.validate(tenantId);
  if (options?.confirm !== id) throw new TenantDropNotConfirmedError(id);
  // A createTenant() of the id running here: dropped under it, its database would be gone and the
  // tenant registered after (or its undo would drop it again). Retry once it is done.
  if (host.creating(id)) {
    throw new TenantLifecycleError(id, 'drop-database', { cause: new Error(`a createTenant() of tenant "${id}" is still running in this tenancy; nothing was dropped`) });
  }
  // From here until it is unregistered, new requests of the tenant get a 404: the catalog still says
  // yes, and one that opened the tenant would lose its database under it (an untyped "table doesn't
  // exist" or "Unknown database").
  const drainTimeoutMs = checkDrainTimeoutMs('tenancy.dropTenant()', options.drainTimeoutMs);
  const reopen = host.refuseScopes(id);
  try {
    // Close the serving pool first: its scopes finish, then no connection holds the database.
    await closeTenant(host, id, drainTimeoutMs);
    const config = await step(id, 'drop-database', async () => tenantKnexConfig(host.options, id));
    const hooks = hooksOf(host, config);
    await step(id, 'drop-database', () => hooks.drop(id, config, drainTimeoutMs / 1000));
    await step(id, 'unregister', async () => host.options.unregisterTenant?.(id));
    // A request that raced the drop may have reopened a pool (and cached a catalog answer).
    await host.forget(id);
    // Such a request (the catalog still said yes) made an SQLite driver create an empty file, which
    // kept the id from being created again. The built-in drop is idempotent: once more, now that no
    // pool of the tenant is open. (A server database is not created by opening it; an app's
    // dropDatabase hook is called once.)
    // Only an empty file: once unregistered, another process may have created the tenant again (with
    // its tables) by now, and this drop deleted it under its registered tenant.
    if (host.options.dropDatabase === undefined && createdByOpening(config)) await step(id, 'drop-database', () => dropIfEmpty(host, id, config, hooks));
  } finally {
    reopen();
  }
  return { tenantId: id, durationMs: since(started) };
}
