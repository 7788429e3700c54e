export { createTenancy, Tenancy } from './tenancy';
export type { TenancyOptions, TenancyStats } from './tenancy';
export { runWithTenant, setDefaultTenancy, defaultTenancy } from './default-tenancy';
export { currentTenantId, tryCurrentTenantId } from './scope';
export type { TenantScope } from './scope';
export { TenantModel, tenantAware, centralModel, instanceTenantId } from './model';
export { onCommit, onRollback } from './transaction';
export type { HookErrorHandler } from './transaction';
export type { TenantMiddleware, TenantMiddlewareOptions } from './middleware';
export { fromHeader, fromSubdomain, fromPath, fromQuery, fromRequest, firstOf } from './resolvers';
export type { TenantResolver, SubdomainOptions } from './resolvers';
export { toHttpError } from './http-errors';
export type { ErrorHandlerOptions, HttpErrorAnswer, TenantErrorHandler } from './http-errors';
export { DEFAULT_TENANT_ID_PATTERN, validateTenantId } from './tenant-id';
export type { TenantIdValidator } from './tenant-id';
export type { PoolCacheStats } from './pool-cache';
export {
  TenantError,
  TenantContextMissingError,
  InvalidTenantIdError,
  UnknownTenantError,
  TenantUnavailableError,
  TenantMismatchError,
  TenancyDestroyedError,
} from './errors';
export type { TenantErrorOptions } from './errors';
// --- operations exports ---
// --- end operations exports ---
// --- propagation and jobs exports ---
// --- end propagation and jobs exports ---
