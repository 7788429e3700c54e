import { TenancyDestroyedError, TenantError } from './errors';
import { globalState } from './scope';
import type { Tenancy } from './tenancy';

/**
 * Makes `tenancy` the one used by the free `runWithTenant()`. By default the first tenancy created is.
 */
export function setDefaultTenancy(tenancy: Tenancy): void {
  globalState.defaultOwner = tenancy;
  globalState.defaultDestroyed = false;
}

/**
 * The default tenancy: the one set with `setDefaultTenancy()`, else the first created.
 * @throws {TenancyDestroyedError} when the default tenancy was destroyed (shutdown) and none was created since.
 * @throws {TenantError} `TENANCY_MISSING` when no tenancy exists yet.
 */
export function defaultTenancy(): Tenancy {
  const tenancy = globalState.defaultOwner as Tenancy | undefined;
  if (tenancy === undefined) {
    if (globalState.defaultDestroyed === true) throw new TenancyDestroyedError();
    throw new TenantError('TENANCY_MISSING', 'No tenancy exists yet: call createTenancy(options) before runWithTenant().');
  }
  return tenancy;
}

/**
 * Runs `fn` in tenant `tenantId`'s scope of the default tenancy and returns its result: the entry
 * point for background jobs, scripts and tests.
 * @example
 * await runWithTenant('acme', async () => {
 *   await Person.query().insert({ name: 'Ada' });
 * });
 */
export function runWithTenant<T>(tenantId: string, fn: () => T | PromiseLike<T>): Promise<Awaited<T>> {
  try {
    return defaultTenancy().runWithTenant(tenantId, fn);
  } catch (error) {
    return Promise.reject(error);
  }
}
