/**
 * `tenancy.migrate`: knex migrations on every tenant, with bounded concurrency, a report per tenant,
 * a cheap "already current" check, and no migration cut half-way by an abort.
 */
import { performance } from 'node:perf_hooks';
import type { Knex } from 'knex';
import { tenantKnexConfig } from './connections';
import { checkTenantFile, resolvedSqliteConfig } from './sqlite-files';
import { isNoSuchDatabase, TenantError, TenantUnavailableError, UnknownTenantError } from './errors';
import { toHttpError } from './http-errors';
import { loadMigrationPlan, MigrationStepError, MissingMigrationFilesError, runMigrationStep, type MigrationPlan } from './migration-plan';
import { checkTenantExists, openOperationKnex, type OperationsHost } from './operation-knex';
import { TenantMigrationError } from './operation-errors';
import {
  buildReport,
  checkConcurrency,
  resolveTenantIds,
  runPerTenant,
  since,
  type TenantRunOptions,
  type TenantsReport,
} from './tenant-runner';

/**
 * What happened to one tenant: `applied` (migrations ran), `rolled-back`, `current` (nothing to do),
 * `pending` (status: migrations to apply), `failed`, or `skipped` (the run was aborted first).
 */
export type MigrationStatus = 'applied' | 'rolled-back' | 'current' | 'pending' | 'failed' | 'skipped';

/** One tenant's line of a migration report. */
export interface TenantMigrationResult {
  readonly tenantId: string;
  readonly status: MigrationStatus;
  /**
   * `latest`: the migrations applied; `rollback`: rolled back; `status`: pending. A failed `latest` or
   * `rollback` lists those it applied or rolled back (and recorded) before the failure: on MySQL, or
   * without a wrapping transaction, they stay.
   */
  readonly migrations: readonly string[];
  /** `status` only: the migrations already applied. */
  readonly completed?: readonly string[];
  /**
   * Why it failed: `TenantMigrationError` (with `migration` or `missing`, and `cause`),
   * `UnknownTenantError`, `TenantUnavailableError` (catalog, config or server out of reach), ...
   */
  readonly error?: TenantError;
  /** Knex's warnings for this tenant (for example "migration failed with error: ..."). */
  readonly warnings: readonly string[];
  readonly durationMs: number;
}

/** Options of `tenancy.migrate.latest()` and `.status()`. */
export type MigrateOptions = TenantRunOptions<TenantMigrationResult>;

/**
 * Options of `tenancy.migrate.rollback()`. Without `all` or `to`, each tenant rolls back its own last
 * batch, which is not the same on every tenant: a tenant created after the last deploy, or one that
 * failed it, has every migration in its last batch, and loses its whole schema.
 */
export interface RollbackOptions extends MigrateOptions {
  /** Roll back every applied migration instead of the last batch. Default false. */
  all?: boolean | undefined;
  /**
   * Roll back, on every tenant, each applied migration that comes after this one in file order (it
   * stays applied), whatever the tenant's batches: the same target everywhere.
   */
  to?: string | undefined;
}

/** The report of `tenancy.migrate.latest()`, `.rollback()` or `.status()`. */
export interface MigrationReport extends TenantsReport<TenantMigrationResult> {
  readonly operation: 'latest' | 'rollback' | 'status';
}

type Operation = MigrationReport['operation'];
type RollbackStep = { all?: boolean; to?: string | undefined };

/**
 * Knex migrations on every tenant (`tenancy.migrate`). Each tenant runs on its own short-lived
 * connection, at most `concurrency` tenants at a time; a failing tenant is reported and the others
 * go on. Uses `options.migrations` of the tenancy (a knex migrator config).
 */
export class TenantMigrations {
  readonly #host: OperationsHost;

  /** @internal Built by `tenancy.migrate`. */
  constructor(host: OperationsHost) {
    this.#host = host;
  }

  /**
   * Applies every pending migration on each tenant.
   * @throws {TypeError} when the tenancy has no `options.migrations`, or no tenants are given or listable.
   * @throws {MigrationsUnreadableError} when the migration files cannot be listed.
   * @example
   * const report = await tenancy.migrate.latest({ concurrency: 8 });
   * for (const t of report.tenants) if (t.status === 'failed') console.error(t.tenantId, t.error?.message);
   */
  latest(options: MigrateOptions = {}): Promise<MigrationReport> {
    return this.#run('latest', options);
  }

  /**
   * Rolls back each tenant's own last batch, every migration (`all`), or every migration after `to`.
   * Same throws as `latest`, and a `TypeError` for a `to` that is not a migration file (or with `all`).
   */
  rollback(options: RollbackOptions = {}): Promise<MigrationReport> {
    return this.#run('rollback', options, { all: options.all === true, to: options.to });
  }

  /**
   * Reports, per tenant, the migrations applied and pending, without writing anything (unlike knex's
   * `migrate.list()`, it does not create the migration tables). Same throws as `latest`.
   */
  status(options: MigrateOptions = {}): Promise<MigrationReport> {
    return this.#run('status', options);
  }

  async #run(operation: Operation, options: MigrateOptions, step: RollbackStep = {}): Promise<MigrationReport> {
    const where = `tenancy.migrate.${operation}()`;
    const concurrency = checkConcurrency(options.concurrency, where);
    const plan = await migrationPlanOf(this.#host, where);
    if (step.to !== undefined) {
      if (step.all === true) throw new TypeError(`${where}: give options.all or options.to, not both`);
      if (!plan.names?.includes(step.to)) throw new TypeError(`${where}: options.to must name a migration file; "${String(step.to)}" is not one`);
    }
    const tenantIds = await resolveTenantIds(options.tenants, this.#host.options.listTenants, where);
    const run = await runPerTenant(
      tenantIds,
      (tenantId) => migrateTenant(this.#host, plan, operation, tenantId, step),
      (tenantId): TenantMigrationResult => ({ tenantId, status: 'skipped', migrations: [], warnings: [], durationMs: 0 }),
      { concurrency, signal: options.signal, onResult: options.onResult },
    );
    return { operation, ...buildReport(run) };
  }
}

/** @internal The plan of a run from the tenancy's `options.migrations`. */
export function migrationPlanOf(host: OperationsHost, where: string): Promise<MigrationPlan> {
  const config = host.options.migrations;
  if (config === null || typeof config !== 'object') {
    return Promise.reject(new TypeError(`${where}: give the tenancy options.migrations, a knex migrator config such as { directory: './migrations' }`));
  }
  // The plan is listed once, from options.migrations: knex's default directory (./migrations, often the
  // central database's own) would otherwise be applied to every tenant, even when the tenants' knex
  // configs name another directory.
  if (config.directory == null && config.migrationSource == null) {
    return Promise.reject(new TypeError(`${where}: options.migrations must name its directory (or a migrationSource); knex's default ./migrations is not assumed for tenants`));
  }
  return loadMigrationPlan(config);
}

/**
 * @internal One tenant: validate, check the catalog, open a dedicated knex, run the step, close.
 * Never rejects: a failure is the tenant's result.
 */
export async function migrateTenant(
  host: OperationsHost,
  plan: MigrationPlan,
  operation: Operation,
  tenantId: string,
  step: RollbackStep = {},
): Promise<TenantMigrationResult> {
  const started = performance.now();
  const warnings: string[] = [];
  let active: string | undefined;
  let knex: Knex | undefined;
  try {
    const id = host.validate(tenantId);
    // The catalog, the config and the server are the tenant's reachability, as when serving it:
    // their failures are TenantUnavailableError (retry later), not a migration to fix.
    await reachable(id, 'the tenant catalog lookup failed', () => checkTenantExists(host, id));
    const given = await reachable(id, 'its knex config could not be built', () => tenantKnexConfig(host.options, id));
    const config = await reachable(id, 'its knex config could not be built', () => resolvedSqliteConfig(given));
    // A missing SQLite file is an unknown tenant, as when serving it: opening it would create an
    // empty database (status would write, latest would bring back a dropped tenant).
    checkTenantFile(config, id);
    knex = await reachable(id, 'its knex could not be built', async () => openOperationKnex(host, config, warnings));
    const outcome = await runMigrationStep(knex, plan, operation, { ...step, onActive: (name) => (active = name) });
    return { tenantId, ...outcome, warnings, durationMs: since(started) };
  } catch (error) {
    const changed = error instanceof MigrationStepError ? error.changed : [];
    if (changed === undefined) warnings.push(`the ${operation === 'latest' ? 'applied' : 'rolled back'} migrations are unknown: the migration table could not be read after the failure`);
    const migrations = changed === undefined ? [] : [...changed];
    return { tenantId, status: 'failed', migrations, error: toMigrationError(tenantId, error, active), warnings, durationMs: since(started) };
  } finally {
    await knex?.destroy().catch(() => undefined);
  }
}

/** @internal `fn`'s result; its failure, unless typed, is the tenant's reachability: a 503 to retry. */
export async function reachable<T>(tenantId: string, reason: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    throw error instanceof TenantError ? error : new TenantUnavailableError(tenantId, { cause: error, reason });
  }
}

/**
 * @internal Wraps a driver or migration error; typed tenant errors pass through. A server that could
 * not be reached before any migration ran is `TenantUnavailableError`, as on the serving path.
 */
export function toMigrationError(tenantId: string, error: unknown, migration: string | undefined): TenantError {
  const cause = error instanceof MigrationStepError ? error.cause : error;
  if (cause instanceof TenantError) return cause;
  if (cause instanceof MissingMigrationFilesError) return new TenantMigrationError(tenantId, { cause, missing: cause.missing });
  if (isNoSuchDatabase(cause)) return new UnknownTenantError(tenantId, { cause });
  if (migration === undefined && toHttpError(cause)?.code === 'TENANT_UNAVAILABLE') {
    return new TenantUnavailableError(tenantId, { cause, reason: 'its database server could not be reached' });
  }
  return new TenantMigrationError(tenantId, { cause, migration });
}
