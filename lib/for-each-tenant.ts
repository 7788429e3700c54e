/**
 * `tenancy.forEachTenant(fn)`: a fan-out job that runs `fn(tenantId)` inside each tenant's scope,
 * with bounded concurrency and a report per tenant.
 *
 * Unlike migrations, the job runs in real tenant scopes (tenant models and `tenancy.knex()` work in
 * `fn`), so it uses the tenancy's pool cache: a tenant whose pool was already cached keeps it, and a
 * pool the job had to open is evicted when its tenant is done, so a run over 1,000 tenants leaves
 * the cache as it found it (at most `concurrency` serving pools are pushed out on the way).
 */
import { performance } from 'node:perf_hooks';
import type { OperationsHost } from './operation-knex';
import { runInScope, type TenantScope } from './scope';
import {
  buildReport,
  checkConcurrency,
  resolveTenantIds,
  runPerTenant,
  since,
  type TenantRunOptions,
  type TenantsReport,
} from './tenant-runner';

/** One tenant's line of a `forEachTenant` report. */
export interface TenantJobResult<T> {
  readonly tenantId: string;
  /** `ok`: `fn` returned; `failed`: it threw (or the scope could not be opened); `skipped`: aborted first. */
  readonly status: 'ok' | 'failed' | 'skipped';
  /** What `fn` returned (awaited), when `ok`. */
  readonly result?: T;
  /** What `fn` threw, or the error that kept the scope from opening (`UnknownTenantError`...). */
  readonly error?: unknown;
  readonly durationMs: number;
}

/** Options of `tenancy.forEachTenant()`. */
export type ForEachTenantOptions<T> = TenantRunOptions<TenantJobResult<T>>;

/** The report of `tenancy.forEachTenant()`. */
export type ForEachTenantReport<T> = TenantsReport<TenantJobResult<T>>;

/** @internal A scope entered for a job, and whether entering it opened the tenant's pool. */
export interface JobScope {
  readonly scope: TenantScope;
  release(): void;
  readonly opened: boolean;
}

/** @internal See `Tenancy#forEachTenant`. */
export async function forEachTenant<T>(
  host: OperationsHost,
  enter: (tenantId: string) => Promise<JobScope>,
  fn: (tenantId: string) => T | PromiseLike<T>,
  options: ForEachTenantOptions<Awaited<T>> = {},
): Promise<ForEachTenantReport<Awaited<T>>> {
  const where = 'tenancy.forEachTenant()';
  if (typeof fn !== 'function') throw new TypeError(`${where}: fn must be a function (tenantId) => result`);
  const concurrency = checkConcurrency(options.concurrency, where);
  const tenantIds = await resolveTenantIds(options.tenants, host.options.listTenants, where);
  const run = await runPerTenant<TenantJobResult<Awaited<T>>>(
    tenantIds,
    async (tenantId) => {
      const started = performance.now();
      let entered: JobScope | undefined;
      try {
        entered = await enter(tenantId);
        const result = await runInScope(entered.scope, () => fn(tenantId));
        return { tenantId, status: 'ok', result, durationMs: since(started) };
      } catch (error) {
        return { tenantId, status: 'failed', error, durationMs: since(started) };
      } finally {
        entered?.release();
        // Not waited for: live requests of the tenant may hold that pool (a transaction left open, a
        // long stream), and the run would stall on them; evicted, it closes once they are done.
        if (entered?.opened === true) void host.evict(tenantId).catch(() => undefined);
      }
    },
    (tenantId) => ({ tenantId, status: 'skipped', durationMs: 0 }),
    { concurrency, signal: options.signal, onResult: options.onResult },
  );
  return buildReport(run);
}
