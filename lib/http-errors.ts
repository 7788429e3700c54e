import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import { commitMayHaveApplied, driverError, isUnreachable, ownMessage, TenantError } from './errors';
import { requestScope } from './middleware';
import { currentScope, type TenantScope } from './scope';

/** How an error is answered over HTTP. */
export interface HttpErrorAnswer {
  status: number;
  code: string;
  message: string;
  /** Seconds, sent as `Retry-After`. */
  retryAfter?: number;
  /** The tenant whose database is gone (the handler forgets it). */
  goneTenant?: string;
}

// 1049 unknown database, 1046 no database selected (the database was dropped under an open connection).
const GONE_ERRNOS = new Set([1049, 1046]);
// 1205 lock wait timeout, 1213 deadlock.
const LOCK_CONFLICT_ERRNOS = new Set([1205, 1213]);
const OUTCOME_UNKNOWN_MESSAGE = 'The connection to the database was lost while the work was committed: it may or may not have been saved. Check before retrying.';
const GONE: Readonly<HttpErrorAnswer> = Object.freeze({ status: 404, code: 'TENANT_UNKNOWN', message: 'Unknown tenant: its database does not exist.' });

/**
 * Maps an error to its HTTP answer: tenant errors by their `statusCode`, an unreachable database to
 * 503, a dropped tenant database to 404. Returns `undefined` for anything else. Messages are the
 * library's own, never the driver's (which may name hosts and users).
 */
export function toHttpError(error: unknown): HttpErrorAnswer | undefined {
  return httpErrorIn(error, currentScope());
}

/** `toHttpError` for an error raised in `scope` (a request's, which a nested scope may hide from the handler). */
function httpErrorIn(error: unknown, scope: TenantScope | undefined): HttpErrorAnswer | undefined {
  if (error instanceof TenantError || isTenantErrorLike(error)) {
    const e = error as TenantError & { retryAfter?: number };
    const status = e.statusCode ?? 500;
    const answer: HttpErrorAnswer = { status, code: e.code, message: status >= 500 ? serverSideMessage(e, scope) : clientSideMessage(e, scope) };
    if (typeof e.retryAfter === 'number') answer.retryAfter = e.retryAfter;
    // Unknown inside its own scope: the tenant was served until now, so its database went away
    // (a shared connection could not switch to it). Outside a scope it is a catalog answer, already cached.
    if (e.code === 'TENANT_UNKNOWN' && e.tenantId !== undefined && scope?.tenantId === e.tenantId) answer.goneTenant = e.tenantId;
    return answer;
  }
  if (error === null || typeof error !== 'object') return undefined;
  const { errno } = driverError(error);
  const tenantId = scope?.tenantId;
  // Outside any tenant scope no tenant's database can be the one missing: a central knex's error
  // (a health check on an `optional` route, say) is the app's, not a 404 "unknown tenant".
  if (typeof errno === 'number' && GONE_ERRNOS.has(errno)) {
    if (tenantId === undefined) return undefined;
    return { ...GONE, goneTenant: tenantId };
  }
  // A COMMIT lost on the way back, from a transaction form that does not type it (`knex.transaction()`,
  // objection's `transaction(knex, fn)`): knex prefixes the statement to the driver's message.
  if (typeof (error as { message?: unknown }).message === 'string' && (error as Error).message.startsWith('COMMIT; - ') && commitMayHaveApplied(error)) {
    return { status: 500, code: 'TENANT_TRANSACTION_OUTCOME_UNKNOWN', message: OUTCOME_UNKNOWN_MESSAGE };
  }
  // A lock conflict: the statement (a deadlock: its whole transaction) was rolled back; trying again
  // works once the other transaction is done. As SQLite's busy file, 503 with Retry-After.
  if (typeof errno === 'number' && LOCK_CONFLICT_ERRNOS.has(errno)) {
    return { status: 503, code: 'TENANT_LOCK_CONFLICT', message: 'The work conflicted with other work on the same rows and was rolled back. Retry.', retryAfter: 1 };
  }
  if (isUnreachable(error)) {
    return { status: 503, code: 'TENANT_UNAVAILABLE', message: 'The tenant database is unavailable. Retry later.', retryAfter: 1 };
  }
  return undefined;
}

/**
 * A 5xx answer says what happened, not why: the reasons (which name databases, servers and
 * settings) stay on the error, for the server's logs. It names the tenant only when that is the
 * scope's own (or there is none): a nested `runWithTenant` of another tenant that is down is not
 * the caller's to know about.
 */
function serverSideMessage(e: { code: string; tenantId?: string; statusCode?: number }, scope: TenantScope | undefined): string {
  if (e.code === 'TENANT_UNAVAILABLE') {
    const named = e.tenantId !== undefined && (scope === undefined || scope.tenantId === e.tenantId);
    return named ? `The database of tenant "${e.tenantId}" is unavailable. Retry later.` : 'The tenant database is unavailable. Retry later.';
  }
  if (e.code === 'TENANT_TRANSACTION_OUTCOME_UNKNOWN') return OUTCOME_UNKNOWN_MESSAGE;
  return e.statusCode === 503 ? 'Service unavailable. Retry later.' : 'Internal error.';
}

/**
 * A 4xx answer's message: the error's own, unless it names a tenant other than the scope's (a nested
 * `runWithTenant` of an id the app computed), which is not the caller's to read.
 */
function clientSideMessage(e: TenantError, scope: TenantScope | undefined): string {
  if (scope === undefined || e.tenantId === undefined || e.tenantId === scope.tenantId) return ownMessage(e);
  return `A tenant other than the request's was refused (${e.code}).`;
}

// A TenantError from a second copy of the package fails instanceof; its shape does not.
function isTenantErrorLike(error: unknown): boolean {
  if (error === null || typeof error !== 'object') return false;
  const { code, name } = error as { code?: unknown; name?: unknown };
  return typeof code === 'string' && /^TENAN/.test(code) && typeof name === 'string' && /Tenan/.test(name);
}

/** Options of `tenancy.errorHandler()`. */
export interface ErrorHandlerOptions {
  /** Also answer every other error, with 500 `INTERNAL`. Default false: they go to `next(err)`. */
  all?: boolean;
  /** Called with every error the handler answers with a 5xx, for logging. */
  onServerError?(error: unknown, req: IncomingMessage): void;
}

/** An Express error-handling middleware (four arguments). */
export type TenantErrorHandler = (error: unknown, req: IncomingMessage, res: ServerResponse, next: (error?: unknown) => void) => void;

/** What the handler needs from its tenancy. */
export interface ErrorHandlerHooks {
  /** Closes the pool and drops the cached catalog answer of a tenant whose database is gone. */
  forget(tenantId: string): unknown;
  /** Whether the database behind `scope` is gone (a missing table may mean a dropped database). */
  isGone(scope: TenantScope): Promise<boolean>;
}

// 1146: no such table. After `DROP DATABASE`, connections that had it selected still name it, so
// queries fail this way rather than with 1049; the handler asks the server which one it is.
const MISSING_TABLE_ERRNO = 1146;

/**
 * A client's error by the convention Express and its body parsers follow (a 4xx `status`, as
 * `express.json()`'s 400 for a body that is not JSON, or the router's 400 for a path parameter that
 * is not valid percent-encoding): answered with that status, as Express's own final handler does,
 * not as a 500 reported to onServerError. Its message only with `expose: true` (http-errors' mark
 * of a message meant for the client); else the status's name.
 */
function clientError(error: unknown): HttpErrorAnswer | undefined {
  const { status, statusCode, expose, message } = (error ?? {}) as { status?: unknown; statusCode?: unknown; expose?: unknown; message?: unknown };
  const code = typeof status === 'number' ? status : statusCode;
  if (typeof code !== 'number' || !Number.isInteger(code) || code < 400 || code > 499) return undefined;
  const shown = expose === true && typeof message === 'string' ? message : `${STATUS_CODES[code] ?? 'Bad Request'}.`;
  return { status: code, code: 'CLIENT_ERROR', message: shown };
}

/** @internal Builds the handler of `tenancy.errorHandler()`. */
export function createErrorHandler(options: ErrorHandlerOptions, hooks: ErrorHandlerHooks): TenantErrorHandler {
  const answerWith = (answer: HttpErrorAnswer | undefined, error: unknown, req: IncomingMessage, res: ServerResponse, next: (error?: unknown) => void) => {
    if (answer === undefined) {
      if (options.all !== true) return next(error);
      answer = clientError(error) ?? { status: 500, code: 'INTERNAL', message: 'Internal error.' };
    }
    if (answer.goneTenant !== undefined) void Promise.resolve(hooks.forget(answer.goneTenant)).catch(() => undefined);
    if (answer.status >= 500) options.onServerError?.(error, req);
    // The route (or a handler after this one) may still be at work: the lease stays until the
    // response ends, or the hang-up grace (Express's final handler cuts the connection next).
    if (res.headersSent) return next(error);
    res.statusCode = answer.status;
    res.setHeader('content-type', 'application/json; charset=utf-8');
    if (answer.retryAfter !== undefined) res.setHeader('retry-after', String(answer.retryAfter));
    res.end(JSON.stringify({ error: { code: answer.code, message: answer.message } }));
  };
  return (error, req, res, next) => {
    // The request's own scope: `next(error)` may be called from inside a nested scope of another tenant.
    const scope = requestScope(req) ?? currentScope();
    const answer = httpErrorIn(error, scope);
    const errno = driverError(error).errno;
    // A missing table, an unknown database or no database selected, from the driver: the tenant's
    // database may be gone, or the error may not be the tenant's at all (a central knex with no
    // database, a nested scope of another tenant). The server says which, for the scope's tenant.
    const confirm = scope !== undefined && !(error instanceof TenantError) && (errno === MISSING_TABLE_ERRNO || GONE_ERRNOS.has(errno as number));
    if (confirm) {
      hooks.isGone(scope).then(
        (gone) => answerWith(gone ? { ...GONE, goneTenant: scope.tenantId } : undefined, error, req, res, next),
        () => answerWith(undefined, error, req, res, next),
      );
      return;
    }
    answerWith(answer, error, req, res, next);
  };
}
