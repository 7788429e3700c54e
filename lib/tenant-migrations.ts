/**
 * `tenancy.migrate`: knex migrations on every tenant, with bounded concurrency, a report per tenant,
 * a cheap "already current" check, and no migration cut half-way by an abort.
 */
import { performance } from 'node:perf_hooks';
import type { Knex } from 'knex';
import { tenantKnexConfig } from './connections';
import { TenantError, UnknownTenantError } from './errors';
import { loadMigrationPlan, runMigrationStep, type MigrationPlan } from './migration-plan';
import { checkTenantExists, isUnknownDatabase, openOperationKnex, type OperationsHost } from './operation-knex';
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
  /** `latest`: the migrations applied; `rollback`: rolled back; `status`: pending. */
  readonly migrations: readonly string[];
  /** `status` only: the migrations already applied. */
  readonly completed?: readonly string[];
  /** Why it failed: `TenantMigrationError` (with `migration` and `cause`), `UnknownTenantError`, ... */
  readonly error?: TenantError;
  /** Knex's warnings for this tenant (for example "migration failed with error: ..."). */
  readonly warnings: readonly string[];
  readonly durationMs: number;
}

/** Options of `tenancy.migrate.latest()` and `.status()`. */
export type MigrateOptions = TenantRunOptions<TenantMigrationResult>;

/** Options of `tenancy.migrate.rollback()`. */
export interface RollbackOptions extends MigrateOptions {
  /** Roll back every applied migration instead of the last batch. Default false. */
  all?: boolean | undefined;
}

/** The report of `tenancy.migrate.latest()`, `.rollback()` or `.status()`. */
export interface MigrationReport extends TenantsReport<TenantMigrationResult> {
  readonly operation: 'latest' | 'rollback' | 'status';
}

type Operation = MigrationReport['operation'];

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

  /** Rolls back the last batch (or, with `all`, every migration) on each tenant. Same throws as `latest`. */
  rollback(options: RollbackOptions = {}): Promise<MigrationReport> {
    return this.#run('rollback', options, options.all === true);
  }

  /**
   * Reports, per tenant, the migrations applied and pending, without writing anything (unlike knex's
   * `migrate.list()`, it does not create the migration tables). Same throws as `latest`.
   */
  status(options: MigrateOptions = {}): Promise<MigrationReport> {
    return this.#run('status', options);
  }

  async #run(operation: Operation, options: MigrateOptions, all = false): Promise<MigrationReport> {
    const where = `tenancy.migrate.${operation}()`;
    const concurrency = checkConcurrency(options.concurrency, where);
    const plan = await migrationPlanOf(this.#host, where);
    const tenantIds = await resolveTenantIds(options.tenants, this.#host.options.listTenants, where);
    const run = await runPerTenant(
      tenantIds,
      (tenantId) => migrateTenant(this.#host, plan, operation, tenantId, all),
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
  all = false,
): Promise<TenantMigrationResult> {
  const started = performance.now();
  const warnings: string[] = [];
  let active: string | undefined;
  let knex: Knex | undefined;
  try {
    const id = host.validate(tenantId);
    await checkTenantExists(host, id);
    knex = openOperationKnex(host, await tenantKnexConfig(host.options, id), warnings);
    const outcome = await runMigrationStep(knex, plan, operation, { all, onActive: (name) => (active = name) });
    return { tenantId, ...outcome, warnings, durationMs: since(started) };
  } catch (error) {
    return { tenantId, status: 'failed', migrations: [], error: toMigrationError(tenantId, error, active), warnings, durationMs: since(started) };
  } finally {
    await knex?.destroy().catch(() => undefined);
  }
}

/** @internal Wraps a driver or migration error; typed tenant errors pass through. */
export function toMigrationError(tenantId: string, error: unknown, migration: string | undefined): TenantError {
  if (error instanceof TenantError) return error;
  if (isUnknownDatabase(error)) return new UnknownTenantError(tenantId, { cause: error });
  return new TenantMigrationError(tenantId, { cause: error, migration });
}
