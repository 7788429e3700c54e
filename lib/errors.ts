/**
 * Typed errors. Every error this library throws is a `TenantError` with a stable `code`; errors a
 * request caused also carry the HTTP `statusCode` to answer with. Messages say what happened and how
 * to fix it, and never contain a connection string or a password.
 */

/** Options shared by every `TenantError` constructor. */
export interface TenantErrorOptions {
  /** The tenant the error is about, when known (only ever a validated id). */
  tenantId?: string;
  /** HTTP status to answer with when a request caused the error. */
  statusCode?: number;
  /** The underlying error. */
  cause?: unknown;
}

/**
 * The message a TenantError was made with. knex prefixes the message of an error thrown while a
 * statement runs with that statement's SQL (database names included); the HTTP answer uses this one.
 */
const OWN_MESSAGE = Symbol.for('objection-tenancy.ownMessage');

/** @internal A tenant error's own message, before knex prefixed its SQL (see OWN_MESSAGE). */
export function ownMessage(error: { message: string }): string {
  const own = (error as unknown as Record<symbol, unknown>)[OWN_MESSAGE];
  return typeof own === 'string' ? own : error.message;
}

/** Base class of every error thrown by objection-tenancy. Check `code`, not the class, across package copies. */
export class TenantError extends Error {
  /** Stable machine-readable code, e.g. `TENANT_UNKNOWN`. */
  readonly code: string;
  /** HTTP status for errors a request caused. */
  readonly statusCode?: number;
  /** The tenant concerned, when known. */
  readonly tenantId?: string;

  constructor(code: string, message: string, options: TenantErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    Object.defineProperty(this, OWN_MESSAGE, { value: message });
    this.name = new.target.name;
    this.code = code;
    if (options.statusCode !== undefined) this.statusCode = options.statusCode;
    if (options.tenantId !== undefined) this.tenantId = options.tenantId;
  }
}

/**
 * A tenant query, `tenancy.knex()` or `currentTenantId()` ran with no tenant scope. There is no global
 * fallback connection: the library fails closed. `statusCode` is 400 when a request carried no tenant id.
 */
export class TenantContextMissingError extends TenantError {
  constructor(message?: string, options: TenantErrorOptions = {}) {
    super(
      'TENANT_CONTEXT_MISSING',
      message ??
        'No tenant scope is active. Run this code inside tenancy.middleware(), runWithTenant(id, fn), ' +
          'or pass a knex explicitly with Model.query(knex) / Model.bindKnex(knex).',
      options,
    );
  }
}

/** The tenant id is not a valid tenant id (bad characters, too long, repeated header...). HTTP 400. */
export class InvalidTenantIdError extends TenantError {
  constructor(reason: string, options: TenantErrorOptions = {}) {
    super('TENANT_ID_INVALID', `Invalid tenant id: ${reason}.`, { statusCode: 400, ...options });
  }
}

/** The tenant id is valid but no such tenant exists (the catalog said so, or its database is gone). HTTP 404. */
export class UnknownTenantError extends TenantError {
  constructor(tenantId: string, options: TenantErrorOptions = {}) {
    super('TENANT_UNKNOWN', `Unknown tenant "${tenantId}".`, { statusCode: 404, tenantId, ...options });
  }
}

/** The tenant's database could not be reached, or its pool could not be opened. HTTP 503, retry later. */
export class TenantUnavailableError extends TenantError {
  /** Seconds after which a retry makes sense; sent as `Retry-After` by the error handler. */
  readonly retryAfter: number;

  constructor(tenantId: string, options: TenantErrorOptions & { retryAfter?: number; reason?: string } = {}) {
    super(
      'TENANT_UNAVAILABLE',
      `The database of tenant "${tenantId}" is unavailable${options.reason ? `: ${options.reason}` : ''}. Retry later.`,
      { statusCode: 503, tenantId, ...options },
    );
    this.retryAfter = options.retryAfter ?? 1;
  }
}

/** A model instance loaded in one tenant was used inside another tenant's scope. */
export class TenantMismatchError extends TenantError {
  constructor(instanceTenant: string, scopeTenant: string) {
    super(
      'TENANT_MISMATCH',
      `A model instance of tenant "${instanceTenant}" was used inside the scope of tenant "${scopeTenant}". ` +
        'Load the instance again inside this scope, or run the call inside runWithTenant of its own tenant.',
      { statusCode: 500, tenantId: scopeTenant },
    );
  }
}

/**
 * @internal Whether a driver error says a tenant's database cannot be there: 1049 unknown database,
 * 1102 a name the server refuses (too long once the app's prefix is added).
 */
export function isNoSuchDatabase(error: unknown): boolean {
  const errno = (error as { errno?: unknown } | null | undefined)?.errno;
  return errno === 1049 || errno === 1102;
}

/**
 * The connection was lost after the transaction's `COMMIT` was sent and before the server answered:
 * the server may have committed it or not, and nothing on this side can tell. Neither its `onCommit`
 * nor its `onRollback` callbacks ran. Check whether its work is there before doing it again. HTTP 500,
 * not 503: a client that retries on 503 could apply the work twice. The driver's error is `cause`.
 */
export class TransactionOutcomeUnknownError extends TenantError {
  constructor(tenantId: string, options: TenantErrorOptions = {}) {
    super(
      'TENANT_TRANSACTION_OUTCOME_UNKNOWN',
      `The connection of tenant "${tenantId}" was lost while its transaction committed: it may have been committed or not. ` +
        'Check whether its work is there before doing it again.',
      { statusCode: 500, tenantId, ...options },
    );
  }
}

/**
 * The database rolled a tenant's transaction back under it while it went on (a deadlock; a lock wait
 * timeout with `innodb_rollback_on_timeout`): the transaction's later statements, its savepoints'
 * releases and its `COMMIT` are refused with this error, not run in autocommit, and it ends rolled
 * back. HTTP 503: the whole transaction may be tried again.
 */
export class TransactionAbortedError extends TenantError {
  /** Seconds after which a retry makes sense; sent as `Retry-After` by the error handler. */
  readonly retryAfter = 1;

  constructor(tenantId: string, options: TenantErrorOptions = {}) {
    super(
      'TENANT_TRANSACTION_ABORTED',
      `The database rolled back the transaction of tenant "${tenantId}" (see cause); its statements are refused until it ends. ` +
        'Run the whole transaction again.',
      { statusCode: 503, tenantId, ...options },
    );
  }
}

// Driver and pool errors that mean "the database server cannot be reached right now".
const UNREACHABLE_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENOTFOUND',
  'EPIPE',
  'PROTOCOL_CONNECTION_LOST',
  'PROTOCOL_SEQUENCE_TIMEOUT',
  'ER_CON_COUNT_ERROR',
  'ER_TOO_MANY_USER_CONNECTIONS',
  'ER_USER_LIMIT_REACHED',
  'ER_SERVER_SHUTDOWN',
  'ER_CONNECTION_KILLED',
  'ER_QUERY_INTERRUPTED',
]);
// 1040 too many connections, 1203 the user's max_user_connections, 1226 an account's
// MAX_USER_CONNECTIONS, 1053 server shutdown, 1317 statement stopped (an operator's `KILL QUERY`),
// 1927 connection killed (MariaDB: `KILL`, a shutdown), 2002/2003 cannot connect, 2006 gone away, 2013 lost.
const UNREACHABLE_ERRNOS = new Set([1040, 1203, 1226, 1053, 1317, 1927, 2002, 2003, 2006, 2013]);

/** @internal The driver's error: objection wraps it in a DBError (db-errors) with `nativeError`. */
export function driverError(error: unknown): { code?: unknown; errno?: unknown; name?: unknown; fatal?: unknown } {
  const wrapped = (error as { nativeError?: unknown } | null)?.nativeError;
  return (wrapped !== null && typeof wrapped === 'object' ? wrapped : error ?? {}) as { code?: unknown; errno?: unknown; name?: unknown; fatal?: unknown };
}

/**
 * @internal Whether a driver or pool error says the database server cannot be reached right now
 * (refused, lost or killed connections, a full server, knex's acquire timeout; an SQLite file locked
 * by another connection past its busy timeout): answered 503.
 */
export function isUnreachable(error: object): boolean {
  const { code, errno, name, fatal: fatalFlag } = driverError(error);
  // mysql2 marks errors that closed the connection `fatal`; some of them ("Can't add new command when
  // connection is in closed state", from knex's ROLLBACK after the connection died) carry no code.
  const fatal = fatalFlag === true;
  // A socket code alone is any client's (an HTTP client's ECONNRESET): only the driver's, marked
  // fatal or wrapped by objection, says the tenant database is out of reach.
  const driverCode = typeof code === 'string' && UNREACHABLE_CODES.has(code) && (fatal || (error as { nativeError?: unknown }).nativeError !== undefined);
  return driverCode || (typeof errno === 'number' && UNREACHABLE_ERRNOS.has(errno)) || name === 'KnexTimeoutError' || (fatal && errno === undefined) || sqliteClosed(error) || (typeof code === 'string' && code.startsWith('SQLITE_BUSY'));
}

/**
 * better-sqlite3's answer to a statement on a connection closed under it (a pool closed after its
 * drain time, by `destroy()` or `dropTenant`): the SQLite form of a lost connection.
 */
function sqliteClosed(error: object): boolean {
  return error instanceof TypeError && error.message.endsWith('The database connection is not open');
}

// Errors that end the connection: mysql2 marks them `fatal`; 2013 lost during a statement, 2006 gone
// away, 1927 killed, 1053 server shutdown (answers to a COMMIT the server may have carried out).
const LOST_CONNECTION_ERRNOS = new Set([1053, 1927, 2006, 2013]);
// Node's answers to a write that never left (the server had already closed the connection).
const NOT_SENT_CODES = new Set(['EPIPE', 'ERR_STREAM_DESTROYED', 'ERR_STREAM_WRITE_AFTER_END']);
const NOT_SENT_MESSAGES = ["Can't add new command when connection is in closed state", "Can't write in closed state"];

/**
 * @internal Whether a failed COMMIT may have committed: the connection died, and not before the COMMIT
 * was sent (mysql2 refused to send it on a closed connection, or Node's write of it failed: the server
 * had rolled back when its connection ended).
 */
export function commitMayHaveApplied(error: unknown): boolean {
  if (error === null || typeof error !== 'object') return false;
  const { fatal, errno, code, message } = error as { fatal?: unknown; errno?: unknown; code?: unknown; message?: unknown };
  if (typeof code === 'string' && NOT_SENT_CODES.has(code)) return false;
  if (typeof message === 'string' && NOT_SENT_MESSAGES.some((notSent) => message.endsWith(notSent))) return false;
  return fatal === true || (typeof errno === 'number' && LOST_CONNECTION_ERRNOS.has(errno));
}

/** The tenancy was destroyed (shutdown) and cannot open new scopes. */
export class TenancyDestroyedError extends TenantError {
  constructor() {
    super('TENANCY_DESTROYED', 'This tenancy was destroyed; create a new one with createTenancy().', {
      statusCode: 503,
    });
  }
}
