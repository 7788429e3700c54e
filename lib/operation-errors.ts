/**
 * Errors of the operations on every tenant: migrations, tenant creation and drop. All are
 * `TenantError`s with a stable `code`; the underlying error is in `cause`.
 */
import { TenantError, type TenantErrorOptions } from './errors';

/** The first line of an underlying error's message, short enough for a report line. */
function causeSummary(cause: unknown): string {
  const message = cause instanceof Error ? cause.message : String(cause);
  const line = message.split('\n', 1)[0] ?? '';
  return line.length > 300 ? `${line.slice(0, 300)}...` : line;
}

/** A tenant's migration (or rollback) failed. The other tenants of the run are not affected. */
const CONFIGURATION = Symbol.for('objection-tenancy.configurationError');

/**
 * @internal A `TypeError` for a setting the library cannot work with (a client with no built-in
 * create/drop, a config with no database name): thrown as it is by createTenant/dropTenant, where a
 * `TypeError` from the app's own code (`fetch failed` in a `knexConfig` that asks a config service)
 * is a failure of the step, wrapped in a `TenantLifecycleError`.
 */
export function configurationError(message: string): TypeError {
  const error = new TypeError(message);
  Object.defineProperty(error, CONFIGURATION, { value: true });
  return error;
}

/** @internal See configurationError. */
export function isConfigurationError(error: unknown): boolean {
  return error instanceof TypeError && (error as unknown as Record<symbol, unknown>)[CONFIGURATION] === true;
}

export class TenantMigrationError extends TenantError {
  /** The migration file that was running when it failed, when known. */
  readonly migration?: string;
  /**
   * Migrations recorded in the tenant's migration table whose files are gone (renamed, squashed or
   * deleted). Knex refuses to migrate such a tenant; `status` reports it failed rather than current.
   */
  readonly missing?: readonly string[];

  constructor(tenantId: string, options: TenantErrorOptions & { migration?: string | undefined; missing?: readonly string[] | undefined } = {}) {
    const locked = (options.cause as { name?: unknown } | undefined)?.name === 'MigrationLocked';
    const where = options.migration === undefined ? '' : ` in ${options.migration}`;
    const fix =
      options.missing !== undefined
        ? 'Restore the missing files under their recorded names, or, if they are gone for good (a squash), delete ' +
          "their rows from the tenant's migration table."
        : locked
          ? 'Another migration run holds the lock of this tenant; if none is running, free it with ' +
            "knex's forceFreeMigrationsLock() on the tenant's database."
          : "Fix the migration or the tenant's database and run the migrations again.";
    super('TENANT_MIGRATION_FAILED', `Migrating tenant "${tenantId}" failed${where}: ${causeSummary(options.cause)}. ${fix}`, {
      ...options,
      tenantId,
    });
    if (options.migration !== undefined) this.migration = options.migration;
    if (options.missing !== undefined) this.missing = options.missing;
  }
}

/**
 * The migration files could not be listed, or one could not be loaded (a wrong `migrations.directory`,
 * a syntax error, a file without `up` and `down`). Thrown before any tenant is touched.
 */
export class MigrationsUnreadableError extends TenantError {
  /** The file that could not be loaded, when the listing itself worked. */
  readonly migration?: string;

  constructor(options: TenantErrorOptions & { migration?: string | undefined } = {}) {
    const what = options.migration === undefined ? 'The migration files could not be listed' : `The migration file ${options.migration} could not be loaded`;
    super(
      'TENANT_MIGRATIONS_UNREADABLE',
      `${what}: ${causeSummary(options.cause)}. No tenant was touched. Check options.migrations ` +
        '(a relative directory is resolved from the current working directory) and the file.',
      options,
    );
    if (options.migration !== undefined) this.migration = options.migration;
  }
}

/** `createTenant()` found the tenant already registered, or its database already there. HTTP 409. */
export class TenantAlreadyExistsError extends TenantError {
  /**
   * `dropping`: a `dropTenant()` of this id is still running (create it again once it is done).
   * `creating`: another `createTenant()` of this id is running in this tenancy.
   */
  constructor(tenantId: string, options: TenantErrorOptions & { dropping?: boolean; creating?: boolean } = {}) {
    const { dropping, creating, ...rest } = options;
    super(
      'TENANT_EXISTS',
      dropping === true
        ? `Tenant "${tenantId}" is being dropped. Create it again once dropTenant() has finished.`
        : creating === true
          ? `Tenant "${tenantId}" is being created by another createTenant() call.`
          : `Tenant "${tenantId}" already exists (registered, or its database is already there). Pick another id, or drop it first.`,
      { statusCode: 409, ...rest, tenantId },
    );
  }
}

/** `dropTenant()` was called without `{ confirm: tenantId }`. Nothing was touched. */
export class TenantDropNotConfirmedError extends TenantError {
  constructor(tenantId: string) {
    super(
      'TENANT_DROP_NOT_CONFIRMED',
      `Dropping tenant "${tenantId}" deletes its database: pass { confirm: '${tenantId}' } to dropTenant() ` +
        '(or --confirm with the tenant id on the command line).',
      { statusCode: 400, tenantId },
    );
  }
}

/** The step of `createTenant()` / `dropTenant()` that failed. */
export type TenantLifecycleStep = 'create-database' | 'migrate' | 'seed' | 'register' | 'drop-database' | 'unregister';

/**
 * A step of `createTenant()` or `dropTenant()` failed. A failed creation has been undone (the database
 * it created is dropped again), so it can simply be retried.
 */
export class TenantLifecycleError extends TenantError {
  /** Which step failed. */
  readonly step: TenantLifecycleStep;

  /**
   * `kept`: a creation whose database may not have been made by this call (an app `createDatabase`
   * hook, and the library could not check before it ran) is not dropped again on failure.
   */
  constructor(tenantId: string, step: TenantLifecycleStep, options: TenantErrorOptions & { kept?: boolean } = {}) {
    const creating = !step.startsWith('drop') && step !== 'unregister';
    const undone =
      creating && step !== 'create-database'
        ? options.kept === true
          ? ' Its database was left in place (whether this call created it could not be checked first): drop it yourself if it is new.'
          : ' Its database was dropped again; retry when fixed.'
        : '';
    super(
      creating ? 'TENANT_CREATE_FAILED' : 'TENANT_DROP_FAILED',
      `${creating ? 'Creating' : 'Dropping'} tenant "${tenantId}" failed at step ${step}: ${causeSummary(options.cause)}.${undone}`,
      { ...options, tenantId },
    );
    this.step = step;
  }
}
