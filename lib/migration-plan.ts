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

/** @internal The migration files of a run, listed and loaded once, and the config to hand to knex's migrator. */
export interface MigrationPlan {
  /** Every migration name, in order; `undefined` when knex's source could not be reached (no fast path). */
  readonly names: readonly string[] | undefined;
  /** `options.migrations` as given: knex merges it over the tenant config's own `migrations`. */
  readonly config: MigratorConfig;
  /**
   * The migrator config, with `onActive` told the name of each migration as it starts. With `only`,
   * the source lists only those migrations (and knex's list check is off: the step did it).
   */
  configFor(onActive: (name: string | undefined) => void, only?: ReadonlySet<string>): MigratorConfig;
}

/** @internal What one tenant's step did. */
export interface MigrationStepOutcome {
  status: 'applied' | 'rolled-back' | 'current' | 'pending';
  /** Applied, rolled back, or (for a status) pending migrations. */
  migrations: string[];
  /** Status only: the migrations recorded as applied. */
  completed?: string[];
}

/** @internal Options of one tenant's step. */
export interface MigrationStepOptions {
  /** Rollback: every applied migration instead of the last batch. */
  all?: boolean | undefined;
  /** Rollback: every applied migration that comes after this one in file order (it stays applied). */
  to?: string | undefined;
  onActive: (name: string | undefined) => void;
}

/**
 * @internal The tenant's migration table records migrations whose files are gone (renamed, squashed or
 * deleted). Knex refuses to migrate such a tenant ("The migration directory is corrupt"), so it is
 * reported before knex's migrator starts, the same way by `status`, `latest` and `rollback`.
 */
export class MissingMigrationFilesError extends Error {
  constructor(readonly missing: readonly string[]) {
    super(`The migration directory is corrupt, the following files are missing: ${missing.join(', ')}`);
    this.name = 'MissingMigrationFilesError';
  }
}

/**
 * @internal Knex's migrator failed. `changed` is what it applied (or rolled back) and recorded before
 * the failure, read back from the table: on MySQL, or without a wrapping transaction, earlier
 * migrations of the batch stay. `undefined` when the table could not be read back.
 */
export class MigrationStepError extends Error {
  constructor(
    override readonly cause: unknown,
    readonly changed: readonly string[] | undefined,
  ) {
    super((cause as Error)?.message ?? String(cause), { cause });
    this.name = 'MigrationStepError';
  }
}

interface MergedConfig {
  migrationSource?: Knex.MigrationSource<unknown>;
  loadExtensions?: readonly string[];
}

// These keys make knex replace a given migrationSource by a fresh directory source.
const FS_KEYS = ['directory', 'sortDirsSeparately', 'loadExtensions'] as const;

/**
 * @internal Lists and loads the migration files once with knex's own loader (the same directory,
 * extension and sorting rules as `knex migrate:latest`), behind a source that every tenant of the run
 * shares. Every file is loaded here, not only when a tenant runs it: a file that cannot be loaded (a
 * syntax error, a missing `up` or `down`) stops the run before any tenant is touched, instead of
 * failing every tenant one by one (and `createTenant` creating a database only to drop it).
 * @throws {MigrationsUnreadableError} when the files cannot be listed or a file cannot be loaded.
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
  const source = merged?.migrationSource;
  if (source === undefined) {
    return { names: undefined, config, configFor: () => config };
  }
  let migrations: unknown[];
  try {
    // As knex passes it (its file source falls back to its default list when none is given): a
    // `loadExtensions: undefined` in the config (an unset env variable) listed no file at all.
    migrations = await source.getMigrations(merged?.loadExtensions as readonly string[]);
  } catch (error) {
    throw new MigrationsUnreadableError({ cause: error });
  }
  const names = migrations.map((migration) => source.getMigrationName(migration));
  // By migration, not by name: two directories may each hold a file of the same name (knex runs both).
  const contents = new Map<unknown, unknown>();
  for (const [i, migration] of migrations.entries()) {
    const name = names[i]!;
    let content: { up?: unknown; down?: unknown } | undefined;
    try {
      content = (await source.getMigration(migration)) as typeof content;
    } catch (error) {
      throw new MigrationsUnreadableError({ cause: error, migration: name });
    }
    // Knex's own rule for a migration it runs, checked for every file at once.
    if (typeof content?.up !== 'function' || typeof content?.down !== 'function') {
      throw new MigrationsUnreadableError({ cause: new Error('it must export both an up and a down function'), migration: name });
    }
    contents.set(migration, content);
  }
  const nameOf = (migration: unknown) => source.getMigrationName(migration);
  const sourceOf = (only: ReadonlySet<string> | undefined): Knex.MigrationSource<unknown> => ({
    getMigrations: async () => (only === undefined ? migrations : migrations.filter((m) => only.has(nameOf(m)))),
    getMigrationName: nameOf,
    getMigration: async (migration) => (contents.get(migration) as Knex.Migration | undefined) ?? source.getMigration(migration),
  });
  const base: MigratorConfig = { ...config };
  for (const key of FS_KEYS) delete base[key];
  return {
    names,
    config,
    configFor: (onActive, only) => ({
      ...base,
      migrationSource: sourceOf(only),
      ...(only === undefined ? {} : { disableMigrationsListValidation: true }),
      async beforeEach(knex, batch) {
        onActive(batch[0] === undefined ? undefined : nameOf(batch[0]));
        await config.beforeEach?.(knex, batch);
      },
      async afterEach(knex, batch) {
        onActive(undefined);
        await config.afterEach?.(knex, batch);
      },
    }),
  };
}

/** @internal The migration table knex's migrator uses on this tenant, and whether it checks for missing files. */
interface EffectiveTable {
  readonly tableName: string;
  readonly schemaName: string | undefined;
  readonly validate: boolean;
}

const MYSQL_CLIENTS = new Set(['mysql', 'mysql2']);

/**
 * @internal `options.migrations` over the tenant config's own `migrations` (a knexfile's
 * `migrations.tableName`), over knex's defaults: knex's Migrator merges them this way
 * (`Object.assign`), so the fast path reads the table the migrator will write.
 */
export function effectiveTable(knex: Knex, plan: MigrationPlan): EffectiveTable {
  const own = (knex.client as { config?: Knex.Config }).config?.migrations;
  const merged: Knex.MigratorConfig = { tableName: 'knex_migrations', schemaName: undefined, ...own, ...plan.config };
  if (merged.schemaName != null && MYSQL_CLIENTS.has(String((knex.client as { config?: Knex.Config }).config?.client))) {
    // On MySQL a schema is a database: every tenant would read and write one migration table there,
    // and every tenant after the first would count as migrated with none of its tables.
    throw new TypeError(
      `migrations.schemaName "${merged.schemaName}" would put one migration table for every tenant in that database (on MySQL a schema is a database): leave it unset, so that each tenant's table is in its own database`,
    );
  }
  return {
    tableName: merged.tableName ?? 'knex_migrations',
    schemaName: merged.schemaName ?? undefined,
    validate: merged.disableMigrationsListValidation !== true,
  };
}

/**
 * @internal The names recorded in the tenant's migration table, or `undefined` when the table does
 * not exist yet (a fresh database). Other errors (database gone, server down) are thrown.
 */
export async function readCompleted(knex: Knex, plan: MigrationPlan): Promise<string[] | undefined> {
  const { tableName, schemaName } = effectiveTable(knex, plan);
  const table = schemaName === undefined ? knex(tableName) : knex(tableName).withSchema(schemaName);
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
 * @internal Runs one tenant's step: `latest`, `rollback` (the last batch, `all`, or every migration
 * after `to`) or `status`. `onActive` is told which migration is running, so that a failure can name it.
 * @throws {MissingMigrationFilesError} when the table records migrations whose files are gone.
 * @throws {MigrationStepError} when knex's migrator failed, with what it changed before failing.
 */
export async function runMigrationStep(
  knex: Knex,
  plan: MigrationPlan,
  operation: 'latest' | 'rollback' | 'status',
  options: MigrationStepOptions,
): Promise<MigrationStepOutcome> {
  const { names } = plan;
  // Refuses a migration table the tenants would share, before anything reads or writes it.
  effectiveTable(knex, plan);
  // `null`: unknown (unreadable for a reason knex's migrator will report in its own words).
  const completed = operation === 'latest' ? await readCompleted(knex, plan).catch(() => null) : await readCompleted(knex, plan);
  if (names === undefined) return runWithoutFastPath(knex, plan, operation, completed, options);
  const done = new Set(completed);
  if (completed != null && effectiveTable(knex, plan).validate) {
    const files = new Set(names);
    const missing = completed.filter((name) => !files.has(name));
    if (missing.length > 0) throw new MissingMigrationFilesError(missing);
  }
  if (operation === 'status') {
    const pending = names.filter((n) => !done.has(n));
    return { status: pending.length === 0 ? 'current' : 'pending', migrations: pending, completed: completed ?? [] };
  }
  if (operation === 'latest') {
    if (completed != null && names.every((n) => done.has(n))) return { status: 'current', migrations: [] };
    const [, log] = await migrator(knex, plan, completed, 'up', () => knex.migrate.latest(plan.configFor(options.onActive)));
    return { status: log.length > 0 ? 'applied' : 'current', migrations: log };
  }
  if (completed == null || completed.length === 0) return { status: 'current', migrations: [] };
  let only: Set<string> | undefined;
  if (options.to !== undefined) {
    only = new Set(names.slice(names.indexOf(options.to) + 1));
    if (!completed.some((n) => only!.has(n))) return { status: 'current', migrations: [] };
  }
  // With `to`, knex's rollback of "all" sees only the migrations after it: it undoes those, newest first.
  const all = options.all === true || only !== undefined;
  const [, log] = await migrator(knex, plan, completed, 'down', () => knex.migrate.rollback(plan.configFor(options.onActive, only), all));
  return { status: log.length > 0 ? 'rolled-back' : 'current', migrations: log };
}

/**
 * Runs knex's migrator; on failure, reads the table back to tell what it recorded before failing
 * (`before` is the table before the run, `null` when unknown).
 */
async function migrator(knex: Knex, plan: MigrationPlan, before: string[] | null | undefined, direction: 'up' | 'down', run: () => Promise<unknown>): Promise<[number, string[]]> {
  try {
    return (await run()) as [number, string[]];
  } catch (error) {
    // knex's lock was taken by another run: this one ran nothing. Read again, the table would count
    // what the other run recorded meanwhile as this run's.
    if ((error as { name?: unknown } | null)?.name === 'MigrationLocked') throw new MigrationStepError(error, []);
    const after = before === null ? null : await readCompleted(knex, plan).catch(() => null);
    let changed: string[] | undefined;
    if (after !== null && before !== null) {
      const [from, to] = direction === 'up' ? [new Set(before), after ?? []] : [new Set(after), before ?? []];
      changed = to.filter((name) => !from.has(name));
    }
    throw new MigrationStepError(error, changed);
  }
}

async function runWithoutFastPath(
  knex: Knex,
  plan: MigrationPlan,
  operation: 'latest' | 'rollback' | 'status',
  completed: string[] | null | undefined,
  options: MigrationStepOptions,
): Promise<MigrationStepOutcome> {
  const config = plan.configFor(options.onActive);
  if (operation === 'status') {
    const [done, pending] = (await knex.migrate.list(config)) as [{ name: string }[], unknown[]];
    const names = pending.map((p) => String((p as { file?: unknown }).file ?? (p as { name?: unknown }).name ?? p));
    return { status: names.length > 0 ? 'pending' : 'current', migrations: names, completed: done.map((c) => c.name) };
  }
  if (operation === 'rollback' && options.to !== undefined) throw new TypeError('rollback({ to }) needs the migration names, which this knex does not expose');
  const [, log] =
    operation === 'latest'
      ? await migrator(knex, plan, completed, 'up', () => knex.migrate.latest(config))
      : await migrator(knex, plan, completed, 'down', () => knex.migrate.rollback(config, options.all === true));
  const changed = operation === 'latest' ? 'applied' : 'rolled-back';
  return { status: log.length > 0 ? changed : 'current', migrations: log };
}
