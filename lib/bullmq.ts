/**
 * BullMQ integration: a queue whose `add`, `addBulk` and `upsertJobScheduler` stamp the current tenant
 * into each payload (`withTenant()`), and a worker whose processor runs each job in its tenant
 * (`tenantJob()`). bullmq is an optional peer dependency: it is `require`d when one of these functions
 * is first called, never when this package is loaded.
 */
import type { BulkJobOptions, JobsOptions, Processor, Queue, QueueOptions, Worker, WorkerOptions } from 'bullmq';
import { TenantError } from './errors';
import { isJobRejection, tenantJob, withTenant, type TenantJobData, type TenantJobOptions } from './jobs';
import { runInScopeSync } from './scope';

type BullMQ = typeof import('bullmq');
type AnyQueue = Queue<any, any, string>;

/** Options of `createTenantWorker()`: BullMQ's `WorkerOptions` plus `tenancy` and `central` of `tenantJob()`. */
export type TenantWorkerOptions = WorkerOptions & TenantJobOptions;

// Refusals about the payload itself: retrying cannot fix them, so the job fails at once.
const PERMANENT_REJECTIONS = new Set(['TENANT_CONTEXT_MISSING', 'TENANT_ID_INVALID']);

let loaded: { bullmq: BullMQ; TenantQueue: new (name: string, opts: QueueOptions) => AnyQueue } | undefined;

function load(caller: string): NonNullable<typeof loaded> {
  if (loaded !== undefined) return loaded;
  let bullmq: BullMQ;
  try {
    bullmq = require('bullmq') as BullMQ;
  } catch (error) {
    if ((error as { code?: unknown }).code !== 'MODULE_NOT_FOUND') throw error;
    throw new TenantError('BULLMQ_MISSING', `${caller} needs the bullmq package, an optional peer dependency: npm install bullmq`, { cause: error });
  }

  class TenantQueue extends bullmq.Queue<any, any, string> {
    override async add(name: string, data: unknown, opts?: JobsOptions): ReturnType<AnyQueue['add']> {
      return super.add(name, withTenant((data ?? {}) as object), opts);
    }

    override async addBulk(jobs: { name: string; data: unknown; opts?: BulkJobOptions }[]): ReturnType<AnyQueue['addBulk']> {
      return super.addBulk(jobs.map((job) => ({ ...job, data: withTenant((job.data ?? {}) as object) })));
    }

    override async upsertJobScheduler(
      ...[id, repeat, template]: Parameters<AnyQueue['upsertJobScheduler']>
    ): ReturnType<AnyQueue['upsertJobScheduler']> {
      return super.upsertJobScheduler(id, repeat, { ...template, data: withTenant((template?.data ?? {}) as object) });
    }
  }
  loaded = { bullmq, TenantQueue };
  return loaded;
}

/**
 * Creates a BullMQ `Queue` whose `add()`, `addBulk()` and `upsertJobScheduler()` stamp the current
 * tenant into each job payload with `withTenant()`: enqueue inside a request or `runWithTenant()` and
 * the job carries its tenant. Outside any scope, give the payload a `tenantId` or mark it `central: true`.
 * @param name The queue name.
 * @param opts BullMQ's `QueueOptions` (`connection`, `defaultJobOptions`...).
 * @returns A `Queue` (a subclass of BullMQ's). The call rejects with `TenantContextMissingError` or
 * `TenantMismatchError` when `withTenant()` refuses a payload.
 * @throws {TenantError} `BULLMQ_MISSING` when the bullmq package is not installed.
 * @example
 * const emails = createTenantQueue<{ to: string }>('emails', { connection: { host: '127.0.0.1', port: 6379 } });
 * app.post('/invite', async (req, res) => {
 *   await emails.add('invite', { to: req.body.email }); // stamped with the request's tenant
 *   res.sendStatus(202);
 * });
 */
export function createTenantQueue<DataType extends object = Record<string, unknown>, ResultType = unknown, NameType extends string = string>(
  name: string,
  opts: QueueOptions,
): Queue<DataType & TenantJobData, ResultType, NameType> {
  const { TenantQueue } = load('createTenantQueue()');
  // Created with no scope: the queue's connection callbacks must not hold a request's tenant.
  return runInScopeSync(undefined, () => new TenantQueue(name, opts)) as unknown as Queue<DataType & TenantJobData, ResultType, NameType>;
}

/**
 * Creates a BullMQ `Worker` whose processor runs every job in the tenant scope its payload names,
 * through `tenantJob()`. A job with no tenant (unless central) or with an invalid tenant id fails at
 * once, without retries: it is thrown as BullMQ's `UnrecoverableError`, whose `code` and `cause` are
 * the `TenantContextMissingError` / `InvalidTenantIdError`. Other errors follow the job's `attempts`.
 * @param name The queue name.
 * @param processor The job processor, `async (job, token?, signal?) => result`; sandboxed processor files are not supported.
 * @param opts BullMQ's `WorkerOptions` (`connection`, `concurrency`...) plus `tenancy` (default: the
 * default tenancy) and `central` (run jobs that carry no tenant with no scope instead of failing them).
 * @returns The `Worker`, created outside any tenant scope.
 * @throws {TypeError} when `processor` is not a function.
 * @throws {TenantError} `BULLMQ_MISSING` when the bullmq package is not installed.
 * @example
 * const worker = createTenantWorker<{ to: string }>('emails', async (job) => {
 *   const user = await User.query().findOne({ email: job.data.to }); // in job.data.tenantId's database
 *   await sendInvite(user);
 * }, { connection: { host: '127.0.0.1', port: 6379 }, concurrency: 8 });
 */
export function createTenantWorker<DataType extends object = Record<string, unknown>, ResultType = unknown, NameType extends string = string>(
  name: string,
  processor: Processor<DataType & TenantJobData, ResultType, NameType>,
  opts: TenantWorkerOptions,
): Worker<DataType & TenantJobData, ResultType, NameType> {
  if (typeof processor !== 'function') {
    throw new TypeError('createTenantWorker(name, processor, opts): processor must be a function (job) => result; sandboxed processor files are not supported');
  }
  const { tenancy, central, ...workerOptions } = opts;
  const { bullmq } = load('createTenantWorker()');
  const run = tenantJob(processor, { tenancy, central });
  const guarded: Processor<DataType & TenantJobData, ResultType, NameType> = async (job, token, signal) => {
    try {
      return await run(job, token, signal);
    } catch (error) {
      if (isJobRejection(error) && PERMANENT_REJECTIONS.has(error.code)) {
        throw Object.assign(new bullmq.UnrecoverableError(error.message), { code: error.code, cause: error });
      }
      throw error;
    }
  };
  // Created with no scope: the worker's fetch loop, and so every processor call, inherits the context
  // the worker was created in; a worker made inside a request would otherwise lend central jobs its tenant.
  return runInScopeSync(undefined, () => new bullmq.Worker<DataType & TenantJobData, ResultType, NameType>(name, guarded, workerOptions));
}
