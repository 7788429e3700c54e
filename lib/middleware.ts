import type { IncomingMessage, ServerResponse } from 'node:http';
import { TenantContextMissingError } from './errors';
import { fromHeader, type TenantResolver } from './resolvers';
import { runInScopeSync, type TenantScope } from './scope';


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
  enter(tenantId: unknown): Promise<{ scope: TenantScope; release: () => void }>;
}

const fromDefaultHeader = fromHeader('x-tenant-id');

/** @internal Builds the middleware of `tenancy.middleware()`. */
export function createMiddleware(opener: ScopeOpener, options: TenantMiddlewareOptions): TenantMiddleware {
  const resolve = options.resolve ?? fromDefaultHeader;
  const optional = options.optional === true;
  return (req, res, next) => {
    const proceed = (tenantId: unknown): Promise<void> | void => {
      if (tenantId === undefined || tenantId === null || tenantId === '') {
        if (optional) return runInScopeSync(undefined, next);
        return next(new TenantContextMissingError('This request names no tenant: send the x-tenant-id header (or what the resolver reads).', { statusCode: 400 }));
      }
      return opener.enter(tenantId).then(({ scope, release }) => {
        // 'close' also fires for aborted requests; release() is idempotent.
        res.once('finish', release);
        res.once('close', release);
        runInScopeSync(scope, next);
      }, next);
    };
    let resolved: unknown;
    try {
      resolved = resolve(req);
    } catch (error) {
      next(error);
      return;
    }
    if (resolved !== null && typeof (resolved as PromiseLike<unknown>)?.then === 'function') {
      (resolved as PromiseLike<unknown>).then(proceed, next);
    } else {
      void proceed(resolved);
    }
  };
}
