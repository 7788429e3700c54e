import type { IncomingMessage, ServerResponse } from 'node:http';
import type { EventEmitter } from 'node:events';
import { InvalidTenantIdError, TenantContextMissingError, TenantError } from './errors';
import { fromHeader, type TenantResolver } from './resolvers';
import { currentScope, runInScopeSync, type TenantScope } from './scope';

/** Options of `tenancy.middleware()`. */
export interface TenantMiddlewareOptions {
  /** How to find the tenant id. Default: header `x-tenant-id`. May return a promise. */
  resolve?: TenantResolver;
  /**
   * When true, a request that names no tenant goes on without a scope (health checks, sign-up);
   * tenant models there still fail closed. Default false: such a request gets a 400 error.
   */
  optional?: boolean;
}

/** An Express 4/5 (or Connect) middleware. */
export type TenantMiddleware = (req: IncomingMessage, res: ServerResponse, next: (error?: unknown) => void) => void;

/** What the middleware needs from a tenancy. */
export interface ScopeOpener {
  /** A scope at once when the tenant is cached (no promise on the hot path), else a promise of one. */
  enterNow(tenantId: unknown): Entered | Promise<Entered>;
}

type Entered = { scope: TenantScope; release: () => void };

const fromDefaultHeader = fromHeader('x-tenant-id');

/**
 * The scope a middleware opened for each request. A second middleware on the same request (a global
 * one and a route's `fromPath('tenant')`) must not switch it to another tenant after the app's
 * authorization checked the first; kept by request rather than read from the async context, which a
 * callback-based middleware in between may have lost. One map per process, even when the package is
 * loaded twice, like the scope storage.
 */
const REQUEST_SCOPES = Symbol.for('objection-tenancy.requestScopes.v1');
const holder = globalThis as unknown as Record<symbol, WeakMap<object, TenantScope> | undefined>;
const requestScopes: WeakMap<object, TenantScope> = (holder[REQUEST_SCOPES] ??= new WeakMap());

/** @internal The scope a tenant middleware opened for `req`, if any. */
export function requestScope(req: object): TenantScope | undefined {
  return requestScopes.get(req);
}

// The scope a request's events are emitted in (see emitInScope), on its req and res.
// Shared by every copy of the package, so that two copies keep one wrapper.
const EMIT_SCOPE = Symbol.for('objection-tenancy.emitScope.v1');
type ScopedEmitter = EventEmitter & { [EMIT_SCOPE]?: TenantScope | undefined };

/**
 * The request's own events (`res.on('finish')`, `req.on('data')`...) are emitted in its scope, or
 * with none for a request with no tenant. An event runs its listeners in the context of whoever
 * emits it: on a connection with pipelined requests, the socket work of the request before (Node
 * flushes a queued response from the previous one's `finish`), so an audit row written on `finish`
 * went to the previous request's tenant. Checked per event; a rebinding costs an AsyncLocalStorage
 * run. One wrapper per emitter: a later call only changes the scope it emits in.
 */
function emitInScope(req: IncomingMessage, res: ServerResponse, scope: TenantScope | undefined): void {
  for (const emitter of [req, res] as ScopedEmitter[]) {
    if (EMIT_SCOPE in emitter) {
      // The scope the route runs in: a tenant's replaces none, and a second tenancy's middleware
      // (the same id) the first's, as the route then runs in it; none never replaces a tenant's.
      if (scope !== undefined || emitter[EMIT_SCOPE] === undefined) emitter[EMIT_SCOPE] = scope;
      continue;
    }
    emitter[EMIT_SCOPE] = scope;
    const emit = emitter.emit;
    emitter.emit = function (this: ScopedEmitter, ...args: Parameters<EventEmitter['emit']>): boolean {
      const target = this[EMIT_SCOPE];
      return currentScope() === target ? emit.apply(this, args) : runInScopeSync(target, () => emit.apply(this, args));
    };
  }
}

const SERVERS_KEY = Symbol.for('objection-tenancy.serversSeen.v1');
const SERVERS_SEEN: WeakSet<object> = ((globalThis as unknown as Record<symbol, WeakSet<object> | undefined>)[SERVERS_KEY] ??= new WeakSet());

/**
 * Requests this middleware never sees (a route mounted before it, a 404 of the framework) on a
 * server it serves: their events run with no scope too, not in a pipelined previous request's.
 * Installed once per server, from the first request it sees there; a tenant middleware that sees
 * the request later rebinds its events to its scope.
 */
function unscopedEventsOn(req: IncomingMessage): void {
  const server = (req.socket as { server?: EventEmitter } | null | undefined)?.server;
  if (server === undefined || server === null || typeof server.prependListener !== 'function' || SERVERS_SEEN.has(server)) return;
  SERVERS_SEEN.add(server);
  server.prependListener('request', (request: IncomingMessage, response: ServerResponse) => {
    if (!(EMIT_SCOPE in (request as ScopedEmitter))) emitInScope(request, response, undefined);
  });
}

function resolverFailed(thrown: unknown): TenantError {
  return new TenantError('TENANT_RESOLVER_FAILED', 'The tenant resolver failed with a value that is not an Error; the request is refused. Make the resolver throw an Error, or return undefined for "no tenant".', {
    statusCode: 500,
    cause: thrown,
  });
}

/** How long a route whose client hung up may keep its tenant's connection before the lease ends anyway. */
const HANG_UP_GRACE_MS = 30_000;

/**
 * Keeps the lease for as long as the route may use the tenant's connection: until the response is
 * sent. When the client hangs up first, the route is usually still running its queries, so the lease
 * is held until the route ends the response (or a grace period), or an eviction would destroy the
 * pool under it.
 */
function holdLease(res: ServerResponse, release: () => void, hungUp: boolean): void {
  // The hang-up grace, once the client went first (see afterHangUp).
  let grace: NodeJS.Timeout | undefined;
  const done = () => {
    clearTimeout(grace);
    release();
  };
  // The route destroyed the response itself (`res.destroy()`; a `pipeline()` into it whose source
  // failed; a route that stops once its client went): it is done with it, as with `res.end()`. Node's
  // own close on a hang-up does not call it. Given back at once: a pipelined response waiting behind
  // another closes only when that one ends.
  let destroyedByRoute = false;
  const destroy = res.destroy;
  res.destroy = function (this: ServerResponse, ...args: unknown[]) {
    destroyedByRoute = true;
    res.destroy = destroy;
    const result = (destroy as (...a: unknown[]) => ServerResponse).apply(this, args);
    done();
    return result;
  } as ServerResponse['destroy'];
  const afterHangUp = () => {
    // Sent, or ended by the route and never to be sent (a queued response whose client went): done.
    if (res.writableFinished || res.writableEnded || destroyedByRoute) return release();
    grace = setTimeout(release, HANG_UP_GRACE_MS);
    grace.unref();
    const end = res.end;
    res.end = function (this: ServerResponse, ...args: unknown[]) {
      res.end = end;
      const result = (end as (...a: unknown[]) => ServerResponse).apply(this, args);
      done();
      return result;
    } as ServerResponse['end'];
  };
  // A pipelined request's response waits, with no socket, for the responses before it: when the client
  // hangs up then, that response emits neither 'finish' nor 'close', ever; only the connection says so.
  const socket = res.req?.socket;
  // The client may have hung up before this middleware ran (an async middleware before it) or while
  // the tenant was looked up: 'close' came then, and comes no more.
  if (hungUp || res.destroyed || res.socket?.destroyed === true || socket?.destroyed === true) return afterHangUp();
  // 'close' follows 'finish' on every response (Node >= 16), and comes alone when the client hung up.
  // The connection's listener goes with the response: a keep-alive connection serves many.
  const closed = () => {
    res.off('close', closed);
    if (socket !== undefined) socketCloses.get(socket)?.delete(closed);
    afterHangUp();
  };
  res.once('close', closed);
  if (socket !== undefined) onSocketClose(socket, closed);
}

/**
 * One 'close' listener per connection for the responses waiting on it, rather than one each: more
 * than ten pipelined requests on one connection made Node warn of a listener leak.
 */
const socketCloses = new WeakMap<EventEmitter, Set<() => void>>();

function onSocketClose(socket: EventEmitter, listener: () => void): void {
  let listeners = socketCloses.get(socket);
  if (listeners === undefined) {
    const waiting = new Set<() => void>();
    listeners = waiting;
    socketCloses.set(socket, waiting);
    socket.once('close', () => {
      socketCloses.delete(socket);
      for (const each of waiting) each();
    });
  }
  listeners.add(listener);
}

/** @internal Builds the middleware of `tenancy.middleware()`. */
export function createMiddleware(opener: ScopeOpener, options: TenantMiddlewareOptions): TenantMiddleware {
  const resolve = options.resolve ?? fromDefaultHeader;
  const optional = options.optional === true;
  return (req, res, next) => {
    unscopedEventsOn(req);
    // Until a scope is opened for it, the request's events run with none (it may be refused, or
    // optional and tenant-less), never in a pipelined previous request's.
    if (!requestScopes.has(req)) emitInScope(req, res, undefined);
    const proceed = (tenantId: unknown): Promise<void> | void => {
      if (tenantId === undefined || tenantId === null || tenantId === '') {
        if (optional) return runInScopeSync(undefined, next);
        return next(new TenantContextMissingError('This request names no tenant: send the x-tenant-id header (or what the resolver reads).', { statusCode: 400 }));
      }
      const opened = requestScopes.get(req);
      if (opened !== undefined) {
        if (tenantId !== opened.tenantId) {
          // The id is not echoed: it is untrusted input.
          return next(
            new InvalidTenantIdError(
              'the request names another tenant than the one an earlier tenancy.middleware() opened its scope for; ' +
                'name one tenant per request (the same id in the header and the path, say), or mount one tenancy middleware',
            ),
          );
        }
        // The same tenant again: its scope (restored if the context was lost), no second lease.
        if ((opened.owner as unknown) === opener) {
          const current = currentScope();
          return current !== undefined && current.tenantId === opened.tenantId && (current.owner as unknown) === opener ? next() : runInScopeSync(opened, next);
        }
      }
      let entered: Entered | Promise<Entered>;
      try {
        entered = opener.enterNow(tenantId);
      } catch (error) {
        return next(error);
      }
      if (!(entered instanceof Promise)) {
        requestScopes.set(req, entered.scope);
        holdLease(res, entered.release, false);
        emitInScope(req, res, entered.scope);
        return runInScopeSync(entered.scope, next);
      }
      // Watch for a hang-up from now on: 'close' may fire while the tenant is still being looked up.
      let hungUp = false;
      const onClose = () => (hungUp = true);
      res.once('close', onClose);
      return entered.then(({ scope, release }) => {
        res.off('close', onClose);
        requestScopes.set(req, scope);
        holdLease(res, release, hungUp);
        emitInScope(req, res, scope);
        runInScopeSync(scope, next);
      }, next);
    };
    // What a resolver throws goes to the error handler as an Error: `next(undefined)` (a rejection
    // with no reason) would run the route with no tenant, and `next('route')` would skip to the next one.
    const failed = (error: unknown) => next(error instanceof Error ? error : resolverFailed(error));
    let resolved: unknown;
    try {
      resolved = resolve(req);
    } catch (error) {
      failed(error);
      return;
    }
    if (resolved !== null && typeof (resolved as PromiseLike<unknown>)?.then === 'function') {
      (resolved as PromiseLike<unknown>).then(proceed, failed);
    } else {
      void proceed(resolved);
    }
  };
}
