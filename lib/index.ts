export { createTenancy, Tenancy } from './tenancy';
export type { TenancyOptions, TenancyCommonOptions, TenancyStats } from './tenancy';
export type { CommonConnectionOptions, PoolPerTenantOptions, SharedPoolOptions } from './connections';
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
export type { AffinityPoolStats as SharedServerStats } from './affinity-pool';
export {
  TenantError,
  TenantContextMissingError,
  InvalidTenantIdError,
  UnknownTenantError,
  TenantUnavailableError,
  TenantMismatchError,
  TenancyDestroyedError,
  TransactionOutcomeUnknownError,
  TransactionAbortedError,
} from './errors';
export type { TenantErrorOptions } from './errors';
// --- operations exports ---
export type { TenantMigrations } from './tenant-migrations';
export type { MigrateOptions, MigrationReport, MigrationStatus, RollbackOptions, TenantMigrationResult } from './tenant-migrations';
export type { CreateTenantOptions, CreateTenantResult, DropTenantOptions, DropTenantResult } from './tenant-lifecycle';
export type { ForEachTenantOptions, ForEachTenantReport, TenantJobResult } from './for-each-tenant';
export { DEFAULT_CONCURRENCY } from './tenant-runner';
export type { TenantProgress, TenantResult, TenantRunOptions, TenantsReport } from './tenant-runner';
export {
  MigrationsUnreadableError,
  TenantAlreadyExistsError,
  TenantDropNotConfirmedError,
  TenantLifecycleError,
  TenantMigrationError,
} from './operation-errors';
export type { TenantLifecycleStep } from './operation-errors';
// --- end operations exports ---
// --- propagation and jobs exports ---
export { bindTenant } from './propagation';
export { withTenant, tenantJob } from './jobs';
export type { TenantJobData, TenantJobLike, TenantJobOptions } from './jobs';
export { createTenantQueue, createTenantWorker } from './bullmq';
export type { TenantWorkerOptions } from './bullmq';
export { createTenantFlowProducer } from './bullmq-flow';
// --- end propagation and jobs exports ---
