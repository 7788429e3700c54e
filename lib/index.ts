export { createTenancy, Tenancy } from './tenancy';
export type { TenancyOptions, TenancyStats } from './tenancy';
export { runWithTenant, setDefaultTenancy, defaultTenancy } from './default-tenancy';
export { currentTenantId, tryCurrentTenantId } from './scope';
export type { TenantScope } from './scope';
export { TenantModel, tenantAware, instanceTenantId } from './model';
export { onCommit, onRollback } from './transaction';
export type { HookErrorHandler } from './transaction';
export { headerResolver } from './middleware';
export type { TenantMiddleware, TenantMiddlewareOptions, TenantResolver } from './middleware';
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
