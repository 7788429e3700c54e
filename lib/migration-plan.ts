/**
 * One tenant's migration step on knex's own migrator, with the fast path that makes a run over
 * thousands of tenants cheap when there is nothing to apply.
 *
 * The migration files are listed once per run (not once per tenant). Before starting knex's
 * migrator on a tenant, its migration table is read with one `select name` query: when every file
 * is already recorded, the tenant is `current` and the migrator is never started (knex's migrator
 * would otherwise check two tables, take and free its lock and list again, about ten round trips,
 * and would *create* its tables on a fresh database even for a status).
 */
import knexFactory, { type Knex } from 'knex';
import { MigrationsUnreadableError } from './operation-errors';

type MigratorConfig = Knex.MigratorConfigWithLifecycleHooks;

/** @internal The migration files of a run, listed once, and the config to hand to knex's migrator. */
export interface MigrationPlan {
  /** Every migration name, in order; `undefined` when knex's source could not be reached (no fast path). */
  readonly names: readonly string[] | undefined;
  readonly tableName: string;
  readonly schemaName: string | undefined;
  /** The migrator config, with `onActive` told the name of each migration as it starts. */
  configFor(onActive: (name: string | undefined) => void): MigratorConfig;
}

/** @internal What one tenant's step did. */
export interface MigrationStepOutcome {
  status: 'applied' | 'rolled-back' | 'current' | 'pending';
  /** Applied, rolled back, or (for a status) pending migrations. */
  migrations: string[];
  /** Status only: the migrations recorded as applied. */
  completed?: string[];
}

interface MergedConfig {
  migrationSource?: Knex.MigrationSource<unknown>;
  loadExtensions?: readonly string[];
}

// These keys make knex replace a given migrationSource by a fresh directory source.
const FS_KEYS = ['directory', 'sortDirsSeparately', 'loadExtensions'] as const;

/**
 * @internal Lists the migration files once with knex's own loader (the same directory, extension and
 * sorting rules as `knex migrate:latest`), behind a source that every tenant of the run shares.
 * @throws {MigrationsUnreadableError} when the files cannot be listed.
 */
export async function loadMigrationPlan(config: MigratorConfig): Promise<MigrationPlan> {
  // A knex with the base client opens no connection: it is only used for knex's config merging.
  const probe = knexFactory({ client: knexFactory.Client, migrations: config } as Knex.Config);
  let merged: MergedConfig | undefined;
  try {
    // Migrator#config is not in knex's types; fall back to running without the fast path if it moves.
    merged = (probe.migrate as unknown as { config?: MergedConfig }).config;
  } finally {
    await probe.destroy();
  }
  const tableName = config.tableName ?? 'knex_migrations';
  const schemaName = config.schemaName ?? undefined;
  const source = merged?.migrationSource;
  if (source === undefined) {
    return { names: undefined, tableName, schemaName, configFor: () => config };
  }
  const listing = Promise.resolve(source.getMigrations(merged?.loadExtensions ?? []));
  let names: string[];
  try {
    names = (await listing).map((migration) => source.getMigrationName(migration));
  } catch (error) {
    throw new MigrationsUnreadableError({ cause: error });
  }
  const shared: Knex.MigrationSource<unknown> = {
    getMigrations: () => listing,
    getMigrationName: (migration) => source.getMigrationName(migration),
    getMigration: (migration) => source.getMigration(migration),
  };
  const base: MigratorConfig = { ...config, migrationSource: shared };
  for (const key of FS_KEYS) delete base[key];
  return {
    names,
    tableName,
    schemaName,
    configFor: (onActive) => ({
      ...base,
      async beforeEach(knex, migrations) {
        onActive(migrations[0] === undefined ? undefined : source.getMigrationName(migrations[0]));
        await config.beforeEach?.(knex, migrations);
      },
      async afterEach(knex, migrations) {
        onActive(undefined);
        await config.afterEach?.(knex, migrations);
      },
    }),
  };
}

/**
 * @internal The names recorded in the tenant's migration table, or `undefined` when the table does
 * not exist yet (a fresh database). Other errors (database gone, server down) are thrown.
 */
export async function readCompleted(knex: Knex, plan: MigrationPlan): Promise<string[] | undefined> {
  const table = plan.schemaName === undefined ? knex(plan.tableName) : knex(plan.tableName).withSchema(plan.schemaName);
  try {
    const rows: { name: string }[] = await table.select('name').orderBy('id');
    return rows.map((row) => row.name);
  } catch (error) {
    if (isMissingTable(error)) return undefined;
    throw error;
  }
}

function isMissingTable(error: unknown): boolean {
  const { errno, code, message } = (error ?? {}) as { errno?: unknown; code?: unknown; message?: unknown };
  return (
    errno === 1146 || // MySQL/MariaDB ER_NO_SUCH_TABLE
    code === '42P01' || // PostgreSQL undefined_table
    errno === 208 || // SQL Server invalid object name
    (typeof message === 'string' && /no such table/i.test(message)) // SQLite
  );
}

/**
 * @internal Runs one tenant's step: `latest`, `rollback` (the last batch, or `all`) or `status`.
 * `onActive` is told which migration is running, so that a failure can name it.
 */
export async function runMigrationStep(
  knex: Knex,
  plan: MigrationPlan,
  operation: 'latest' | 'rollback' | 'status',
  options: { all?: boolean | undefined; onActive: (name: string | undefined) => void },
): Promise<MigrationStepOutcome> {
  const { names } = plan;
  if (names === undefined) return runWithoutFastPath(knex, plan, operation, options);
  const completed = operation === 'latest' ? await readCompleted(knex, plan).catch(() => undefined) : await readCompleted(knex, plan);
  const done = new Set(completed);
  if (operation === 'status') {
    return { status: names.every((n) => done.has(n)) ? 'current' : 'pending', migrations: names.filter((n) => !done.has(n)), completed: completed ?? [] };
  }
  if (operation === 'latest') {
    // Current only when the table holds exactly the files: anything else (a missing file, an
    // unreadable table) goes to knex's migrator, which applies or reports it in its own words.
    if (completed !== undefined && done.size === names.length && names.every((n) => done.has(n))) return { status: 'current', migrations: [] };
    const [, log] = (await knex.migrate.latest(plan.configFor(options.onActive))) as [number, string[]];
    return { status: log.length > 0 ? 'applied' : 'current', migrations: log };
  }
  if (completed === undefined || completed.length === 0) return { status: 'current', migrations: [] };
  const [, log] = (await knex.migrate.rollback(plan.configFor(options.onActive), options.all === true)) as [number, string[]];
  return { status: log.length > 0 ? 'rolled-back' : 'current', migrations: log };
}

async function runWithoutFastPath(
  knex: Knex,
  plan: MigrationPlan,
  operation: 'latest' | 'rollback' | 'status',
  options: { all?: boolean | undefined; onActive: (name: string | undefined) => void },
): Promise<MigrationStepOutcome> {
  const config = plan.configFor(options.onActive);
  if (operation === 'status') {
    const [completed, pending] = (await knex.migrate.list(config)) as [{ name: string }[], unknown[]];
    const names = pending.map((p) => String((p as { file?: unknown }).file ?? (p as { name?: unknown }).name ?? p));
    return { status: names.length > 0 ? 'pending' : 'current', migrations: names, completed: completed.map((c) => c.name) };
  }
  const [, log] = (operation === 'latest' ? await knex.migrate.latest(config) : await knex.migrate.rollback(config, options.all === true)) as [number, string[]];
  const changed = operation === 'latest' ? 'applied' : 'rolled-back';
  return { status: log.length > 0 ? changed : 'current', migrations: log };
}
