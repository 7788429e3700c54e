/**
 * Runs one piece of work per tenant with bounded concurrency: a failure does not stop the others,
 * an aborted signal starts no new tenant (the running ones finish), and every tenant gets a result.
 */
import { performance } from 'node:perf_hooks';
import { errorMessage } from './cli-output';

/** What every per-tenant result of an operation has. */
export interface TenantResult {
  readonly tenantId: string;
  /** `failed` and `skipped` mean the same for every operation; the others depend on it. */
  readonly status: string;
  /** Wall time spent on this tenant, in milliseconds (0 when skipped). */
  readonly durationMs: number;
}

/** Progress of a run, handed to `onResult` after each tenant. */
export interface TenantProgress {
  /** Tenants finished (or skipped) so far, this one included. */
  readonly done: number;
  readonly total: number;
}

/** Options shared by every operation that runs over many tenants. */
export interface TenantRunOptions<R extends TenantResult> {
  /** The tenants to run on. Default: `options.listTenants()` of the tenancy. */
  tenants?: readonly string[] | undefined;
  /** How many tenants run at once. Default 4. */
  concurrency?: number | undefined;
  /**
   * When aborted, no new tenant starts; the running ones finish (a migration is never cut half-way)
   * and the rest are reported `skipped`.
   */
  signal?: AbortSignal | undefined;
  /**
   * Called after each tenant, for progress output. It may be async: the next tenant does not wait for
   * it, the report does (so its writes are done when the run resolves). What it throws or rejects
   * with is reported as a process warning.
   */
  onResult?: ((result: R, progress: TenantProgress) => void) | undefined;
}

/** The report of an operation over many tenants. */
export interface TenantsReport<R extends TenantResult> {
  /** `true` when no tenant failed and the run was not aborted. */
  readonly ok: boolean;
  /** `true` when the signal aborted the run before every tenant had started. */
  readonly aborted: boolean;
  /** Tenants per status, e.g. `{ applied: 998, current: 1, failed: 1 }`. */
  readonly counts: Readonly<Record<string, number>>;
  /** One result per tenant, in the order the tenants were given. */
  readonly tenants: readonly R[];
  readonly durationMs: number;
}

/** Default number of tenants run at once. */
export const DEFAULT_CONCURRENCY = 4;

/** @internal Checks `concurrency` and returns it or the default. */
export function checkConcurrency(value: number | undefined, where: string): number {
  if (value === undefined) return DEFAULT_CONCURRENCY;
  if (!Number.isInteger(value) || value < 1) throw new TypeError(`${where}: options.concurrency must be an integer >= 1`);
  return value;
}

/**
 * @internal Runs `work` for each tenant, at most `concurrency` at a time, and returns the results in
 * input order. `work` must not reject: it reports its own failure in its result.
 */
export async function runPerTenant<R extends TenantResult>(
  tenantIds: readonly string[],
  work: (tenantId: string) => Promise<R>,
  skipped: (tenantId: string) => R,
  options: { concurrency: number; signal?: AbortSignal | undefined; onResult?: TenantRunOptions<R>['onResult'] },
): Promise<{ results: R[]; aborted: boolean; durationMs: number }> {
  const started = performance.now();
  const results: R[] = new Array<R>(tenantIds.length);
  let next = 0;
  let done = 0;
  let aborted = false;
  const pending: Promise<void>[] = [];
  const worker = async (): Promise<void> => {
    while (next < tenantIds.length) {
      const index = next++;
      const tenantId = tenantIds[index]!;
      let result: R;
      if (options.signal?.aborted === true) {
        aborted = true;
        result = skipped(tenantId);
      } else {
        result = await work(tenantId);
      }
      results[index] = result;
      done++;
      // A broken progress printer must not end the run while other tenants are mid-migration: a
      // rejection left unhandled would exit the process, cutting the running tenants' migrations.
      try {
        const returned: unknown = options.onResult?.(result, { done, total: tenantIds.length });
        if (typeof (returned as { then?: unknown } | null | undefined)?.then === 'function') pending.push(Promise.resolve(returned as PromiseLike<unknown>).then(() => undefined, warnOnResult));
      } catch (error) {
        warnOnResult(error);
      }
    }
  };
  const workers = Math.min(options.concurrency, tenantIds.length);
  await Promise.all(Array.from({ length: workers }, worker));
  await Promise.all(pending);
  return { results, aborted, durationMs: performance.now() - started };
}

function warnOnResult(error: unknown): void {
  process.emitWarning(`objection-tenancy: onResult threw: ${(error as Error)?.message ?? String(error)}`);
}

/** @internal Builds the report of a run. */
export function buildReport<R extends TenantResult>(run: { results: R[]; aborted: boolean; durationMs: number }): TenantsReport<R> {
  const counts: Record<string, number> = {};
  for (const result of run.results) counts[result.status] = (counts[result.status] ?? 0) + 1;
  return {
    ok: counts.failed === undefined && !run.aborted,
    aborted: run.aborted,
    counts,
    tenants: run.results,
    durationMs: Math.round(run.durationMs),
  };
}

/** @internal The tenants to run on: the given ones (deduplicated), else `listTenants()`. */
export async function resolveTenantIds(
  tenants: readonly string[] | undefined,
  listTenants: (() => unknown) | undefined,
  where: string,
): Promise<string[]> {
  let ids: readonly string[];
  if (tenants !== undefined) {
    if (!Array.isArray(tenants)) throw new TypeError(`${where}: options.tenants must be an array of tenant ids`);
    ids = tenants;
  } else if (listTenants !== undefined) {
    let listed: unknown;
    try {
      listed = await listTenants();
    } catch (error) {
      // A catalog that cannot be reached (fetch's `TypeError: fetch failed`) is the operation's
      // failure, to retry, not a misuse of the API (the CLI answers a TypeError with exit 2).
      throw new Error(`${where}: options.listTenants() of the tenancy failed: ${errorMessage(error)}`, { cause: error });
    }
    // An array, or another iterable of ids (a Set), as the CLI's own listTenants() may return; a
    // string would be spread into its characters.
    if (Array.isArray(listed)) ids = listed as readonly string[];
    else if (listed != null && typeof listed !== 'string' && typeof (listed as Iterable<string>)[Symbol.iterator] === 'function') ids = [...(listed as Iterable<string>)];
    else throw new TypeError(`${where}: options.listTenants() of the tenancy must return an array (or another iterable) of tenant ids`);
  } else {
    throw new TypeError(`${where}: pass options.tenants, or give the tenancy options.listTenants()`);
  }
  return [...new Set(ids)];
}

/** @internal Milliseconds since `started`, rounded. */
export function since(started: number): number {
  return Math.round(performance.now() - started);
}
