/**
 * Background jobs that keep their tenant: the tenant id travels in the job payload, stamped at enqueue
 * time by `withTenant()`, and the worker restores it with `tenantJob()`, which runs the handler inside
 * `runWithTenant(job.data.tenantId, ...)`. Queue-agnostic: any job shaped `{ data }` works (BullMQ,
 * bee-queue, pg-boss...); `./bullmq` builds on it.
 */
import { defaultTenancy } from './default-tenancy';
import { TenantContextMissingError, TenantError, TenantMismatchError } from './errors';
import { runInScopeSync, tryCurrentTenantId } from './scope';
import type { Tenancy } from './tenancy';

/**
 * The keys this library reads in a job payload. Both are reserved: build payloads from named fields
 * and never spread untrusted input (a request body) into the top level of a payload.
 */
export interface TenantJobData {
  /** The tenant the job runs in; stamped by `withTenant()` at enqueue time. */
  tenantId?: string;
  /** `true` for a job that belongs to no tenant: it runs with no tenant scope. */
  central?: boolean;
}

/** What `tenantJob()` needs from a job: its payload. A BullMQ `Job` fits. */
export interface TenantJobLike {
  readonly data: unknown;
  readonly id?: string | undefined;
  readonly name?: string;
}

/** Options of `tenantJob()` (and of `createTenantWorker()`). */
export interface TenantJobOptions {
  /** The tenancy whose scope the job runs in. Default: the default tenancy, looked up when the job runs. */
  tenancy?: Tenancy;
  /**
   * When `true`, every job of this handler that carries no `tenantId` runs with no tenant scope, as if
   * it were marked `central: true`. Default `false`: such a job is rejected.
   */
  central?: boolean;
}

const rejections = new WeakSet<object>();

/**
 * @internal Whether `error` is `tenantJob()` refusing a job before its handler ran (no tenant, an
 * invalid or unknown tenant id...), as opposed to an error thrown by the handler.
 */
export function isJobRejection(error: unknown): error is TenantError {
  return typeof error === 'object' && error !== null && rejections.has(error);
}

/**
 * Adds the current tenant id to a job payload, at enqueue time.
 *
 * - a payload that already has a `tenantId` keeps it, so a retry or re-enqueue stays in the job's
 *   original tenant; inside a scope it must be the current tenant's;
 * - a payload marked `central: true` is returned without a tenant (it runs with no scope);
 * - otherwise the current tenant id is added under `tenantId`.
 *
 * The payload is copied, never mutated; one with a `toJSON()` method (a class instance) is copied from
 * what `toJSON()` returns, as the queue will store it.
 * @param data The job payload (a plain object, or an object whose `toJSON()` returns one; `undefined` counts as `{}`).
 * @returns A copy of `data` with `tenantId` set (or unchanged if central).
 * @throws {TenantContextMissingError} outside any tenant scope, for a payload with no `tenantId` that is not central.
 * @throws {TenantMismatchError} inside a scope, for a payload that names another tenant.
 * @throws {TypeError} for a payload that is not an object, or is both central and of a tenant.
 * @example
 * app.post('/reports', async (req, res) => {
 *   await reportQueue.add('build', withTenant({ month: req.body.month })); // { month, tenantId: 'acme' }
 *   res.sendStatus(202);
 * });
 */
export function withTenant<T extends object>(data: T): T & TenantJobData {
  // Read as the queue will store it (JSON.stringify): a class payload's toJSON() decides its fields,
  // tenantId included; a spread would keep its own fields instead.
  const toJSON = (data as { toJSON?: unknown } | null | undefined)?.toJSON;
  const payload = (typeof toJSON === 'function' ? toJSON.call(data, '') : (data ?? {})) as T & TenantJobData;
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) {
    throw new TypeError('withTenant(data): the job payload (or what its toJSON() returns) must be a plain object, so that it can carry tenantId');
  }
  const current = tryCurrentTenantId();
  // Each read once: what is checked is what is stored (a getter or a Proxy may answer otherwise later).
  const { tenantId, central } = payload;
  if (tenantId != null) {
    if (central === true) {
      throw new TypeError('withTenant(data): a payload cannot be both central: true and of a tenant; drop one of central and tenantId');
    }
    if (current !== undefined && tenantId !== current) throw payloadMismatch(current);
    return stored({ ...payload, tenantId });
  }
  if (central === true) {
    const copy: T & TenantJobData = { ...payload, central };
    if (tenantId === undefined) delete copy.tenantId;
    else copy.tenantId = tenantId;
    return stored(copy);
  }
  if (current === undefined) {
    throw new TenantContextMissingError(
      'withTenant(data): no tenant scope is active, so the job cannot be given a tenant. Enqueue it inside ' +
        'tenancy.middleware() or runWithTenant(id, fn), put a tenantId in the payload, or mark a job that ' +
        'belongs to no tenant with central: true.',
    );
  }
  return stored({ ...payload, tenantId: current });
}

/**
 * The copy as the queue stores it: with no `toJSON` of its own. What `toJSON()` returned may carry
 * one (copied by the spread), and `JSON.stringify` would store what that returns instead of the
 * fields checked here: another tenant's id.
 */
/** @internal */
export function stored<T extends object>(copy: T): T {
  if (Object.prototype.hasOwnProperty.call(copy, 'toJSON')) delete (copy as { toJSON?: unknown }).toJSON;
  return copy;
}

/**
 * Wraps a job processor so that each job runs in the scope of the tenant its payload names
 * (`job.data.tenantId`), and nothing of it is left for the next job on the same worker.
 *
 * - the id is validated like any other (`InvalidTenantIdError`), then the tenant is looked up
 *   (`UnknownTenantError`, `TenantUnavailableError`), before the handler runs;
 * - a job with no `tenantId` runs with no tenant scope if it is central (`job.data.central === true`
 *   or `options.central`), and is rejected with `TenantContextMissingError` otherwise;
 * - a `tenantId` always wins over `central`.
 * @param handler The processor, `(job, ...rest) => result`; extra arguments (BullMQ's token and abort
 * signal) are passed through.
 * @param options `tenancy` (default: the default tenancy) and `central`.
 * @returns A processor with the same arguments, returning a promise of the handler's result.
 * @throws {TypeError} when `handler` is not a function.
 * @example
 * const worker = new Worker('reports', tenantJob(async (job) => {
 *   await Report.query().insert({ month: job.data.month }); // in job.data.tenantId's database
 * }), { connection });
 */
export function tenantJob<J extends TenantJobLike, A extends unknown[], R>(
  handler: (job: J, ...rest: A) => R | PromiseLike<R>,
  options: TenantJobOptions = {},
): (job: J, ...rest: A) => Promise<Awaited<R>> {
  if (typeof handler !== 'function') throw new TypeError('tenantJob(handler): handler must be a function (job) => result');
  if (options.central !== undefined && typeof options.central !== 'boolean') {
    throw new TypeError('tenantJob: options.central must be a boolean');
  }
  return async (job: J, ...rest: A): Promise<Awaited<R>> => {
    const data = (job?.data ?? {}) as TenantJobData;
    const tenantId: unknown = typeof data === 'object' ? data.tenantId : undefined;
    if (tenantId == null) {
      if (options.central === true || data.central === true) {
        // Explicitly no scope: the worker may have been created inside one.
        return runInScopeSync(undefined, async (): Promise<Awaited<R>> => await handler(job, ...rest));
      }
      throw reject(
        new TenantContextMissingError(
          `Job ${jobLabel(job)} carries no tenantId in its data, so it cannot run in a tenant scope. Enqueue it ` +
            'with withTenant(data) or a createTenantQueue() queue, or declare it central (data.central = true, ' +
            'or tenantJob(handler, { central: true })).',
        ),
      );
    }
    let started = false;
    try {
      return await (options.tenancy ?? defaultTenancy()).runWithTenant(tenantId as string, () => {
        started = true;
        return handler(job, ...rest);
      });
    } catch (error) {
      // Errors before the handler started are about the payload's tenant, not the job's work.
      if (!started && error instanceof TenantError) reject(error);
      throw error;
    }
  };
}

function reject<E extends TenantError>(error: E): E {
  rejections.add(error);
  return error;
}

function jobLabel(job: TenantJobLike): string {
  const id = job?.id === undefined ? '' : ` ${String(job.id)}`;
  const name = typeof job?.name === 'string' ? ` (${job.name})` : '';
  return `${id}${name}`.trim() || '(unnamed)';
}

function payloadMismatch(current: string): TenantMismatchError {
  const error = new TenantMismatchError('(payload)', current);
  // The payload's id is not echoed: it may be untrusted input.
  error.message =
    `withTenant(data): the payload names another tenant than the current scope's ("${current}"). ` +
    'Enqueue a job of another tenant inside runWithTenant(thatTenant, fn), or outside any tenant scope.';
  return error;
}
