/**
 * BullMQ integration: a queue that stamps the current tenant into each payload (`withTenant()`) and
 * keeps each tenant's job, scheduler and deduplication ids in the tenant's own namespace, and a worker
 * whose processor runs each job in its tenant (`tenantJob()`). bullmq is an optional peer dependency:
 * it is `require`d when one of these functions is first called, never when this package is loaded.
 */
import type { BulkJobOptions, Job, JobsOptions, Processor, Queue, QueueOptions, Worker, WorkerOptions } from 'bullmq';
import { InvalidTenantIdError, TenantError, TenantMismatchError } from './errors';
import { isJobRejection, stored, tenantJob, withTenant, type TenantJobData, type TenantJobOptions } from './jobs';
import { runInScopeSync, tryCurrentTenantId } from './scope';

type BullMQ = typeof import('bullmq');
type AnyQueue = Queue<any, any, string>;

/** Options of `createTenantWorker()`: BullMQ's `WorkerOptions` plus `tenancy` and `central` of `tenantJob()`. */
export type TenantWorkerOptions = WorkerOptions & TenantJobOptions;

// Refusals about the payload itself: retrying cannot fix them, so the job fails at once.
const PERMANENT_REJECTIONS = new Set(['TENANT_CONTEXT_MISSING', 'TENANT_ID_INVALID']);

/**
 * Between a tenant id and an id of its own: `ja~invoice-42`. Not in the default tenant id pattern, and
 * not `:`, which BullMQ refuses in custom job ids.
 */
const SEPARATOR = '~';

/**
 * @internal `id` in `tenantId`'s namespace. An id already in it is kept, so a `job.id` handed back (a
 * re-enqueue, a `getJob()` from a status page) names the same job.
 * @throws {InvalidTenantIdError} for a tenant id that is not a string or contains the separator: its
 * namespace could overlap another tenant's (`a~b` + `c` = `a` + `b~c`).
 */
export function inTenant(tenantId: unknown, id: string): string {
  if (typeof tenantId !== 'string' || tenantId.includes(SEPARATOR)) {
    throw new InvalidTenantIdError(`job, scheduler and deduplication ids of a tenant are "<tenantId>${SEPARATOR}<id>", so its id must be a string without "${SEPARATOR}"`);
  }
  const prefix = tenantId + SEPARATOR;
  return String(id).startsWith(prefix) ? String(id) : prefix + String(id);
}

/** `id` as the current scope's tenant knows it: namespaced inside a scope, as given outside any. */
function scoped(id: string): string {
  const tenantId = tryCurrentTenantId();
  return tenantId === undefined ? id : inTenant(tenantId, id);
}

/** @internal BullMQ's own job ids: its counter (custom ids cannot be integers) and a scheduler's `repeat:<id>:<ms>`. */
export function madeByBullMQ(id: string): boolean {
  return `${parseInt(id, 10)}` === id || String(id).startsWith('repeat:');
}

/**
 * @internal A job's payload, stamped, and its options with its custom and deduplication ids in its tenant's
 * namespace: the same `jobId` in two tenants makes two jobs (BullMQ would otherwise hand the second
 * tenant the first one's job and never run its own). A central job's ids are used as given; an
 * integer `jobId` is left for BullMQ to refuse, as it always does.
 */
export function stampJob<O extends JobsOptions | BulkJobOptions>(data: unknown, opts: O | undefined): [TenantJobData, O | undefined] {
  const stamped = withTenant((data ?? {}) as object);
  const tenantId = stamped.tenantId;
  if (opts == null) return [stamped, opts];
  if (tenantId == null) {
    for (const id of [opts.jobId, opts.deduplication?.id, (opts as { debounce?: { id?: unknown } }).debounce?.id]) centralId(id);
    return [stamped, opts];
  }
  checkIds(opts);
  let own: O = opts;
  // An empty jobId is BullMQ's "none" (it uses its counter): namespaced, it would be one id for all of them.
  if (typeof opts.jobId === 'string' && opts.jobId !== '' && `${parseInt(opts.jobId, 10)}` !== opts.jobId) {
    own = { ...own, jobId: inTenant(tenantId, opts.jobId) };
  }
  for (const key of ['deduplication', 'debounce'] as const) {
    const option = (opts as unknown as Record<string, { id?: string } | undefined>)[key];
    if (typeof option?.id === 'string') own = { ...own, [key]: { ...option, id: inTenant(tenantId, option.id) } };
  }
  // A parent named by the id its tenant gave it (checked to be this tenant's by the queue, see add()).
  const parent = opts.parent;
  if (parent != null && typeof parent.id === 'string' && !madeByBullMQ(parent.id)) own = { ...own, parent: { ...parent, id: inTenant(tenantId, parent.id) } };
  return [stamped, own];
}

/**
 * @internal `opts` with the deduplication (or debounce) options that the queue's, or a flow's
 * queue's, `defaultJobOptions` would give it: BullMQ merges those in after the library stamped the
 * job, so their id would be one key for every tenant (one tenant's job replaced or dropped by
 * another's). Merged first, they are stamped into the job's tenant like its own.
 */
export function withDefaultIds<O extends JobsOptions | BulkJobOptions>(opts: O | undefined, defaults: JobsOptions | undefined): O | undefined {
  if (defaults == null) return opts;
  let own = opts;
  for (const key of ['deduplication', 'debounce'] as const) {
    const value = (defaults as Record<string, unknown>)[key];
    // A key given, even as undefined, wins over the default in BullMQ's merge: left as it is.
    if (value != null && !(own != null && key in own)) own = { ...own, [key]: value } as O;
  }
  return own;
}

/**
 * A tenant job's custom job, deduplication or debounce id must be a string: another value would skip the tenant's
 * namespace (a number's `de:42` is every tenant's key: the second tenant's job is dropped as a
 * duplicate of the first's) or fail inside Redis after a partial write.
 */
function checkIds(opts: JobsOptions | BulkJobOptions): void {
  const ids: [string, unknown][] = [
    ['jobId', opts.jobId],
    ['deduplication.id', opts.deduplication?.id],
    ['debounce.id', (opts as { debounce?: { id?: unknown } }).debounce?.id],
  ];
  for (const [name, id] of ids) {
    if (id != null && typeof id !== 'string') throw new TypeError(`opts.${name} must be a string (it is kept per tenant as "<tenantId>${SEPARATOR}<id>"), got ${Array.isArray(id) ? 'an array' : typeof id}`);
  }
}

/**
 * A central job's or scheduler's own id: never in a tenant's namespace (`b~invoice-7`), where it
 * would take that tenant's job, deduplication or scheduler id, and the tenant's own would never run.
 */
function centralId(id: unknown): void {
  if (typeof id === 'string' && id.includes(SEPARATOR)) {
    throw new TypeError(`A central job's ids cannot contain "${SEPARATOR}": "<tenantId>${SEPARATOR}<id>" is a tenant's namespace`);
  }
}

/**
 * The data a job may be given by `job.updateData()`: still its own tenant's (or still central). A
 * job moved to another tenant would run in that tenant's database with this tenant's payload.
 */
function sameTenantData(current: unknown, next: unknown): object {
  const toJSON = (next as { toJSON?: unknown } | null | undefined)?.toJSON;
  const given = typeof toJSON === 'function' ? toJSON.call(next, '') : (next ?? {});
  if (typeof given !== 'object' || given === null || Array.isArray(given)) throw new TypeError('job.updateData(data): the payload must be a plain object, so that it keeps its tenantId');
  // What is stored is what was checked. Read once, into plain data: a getter (or a Proxy) read again
  // for the copy stored could name another tenant. And no `toJSON` of its own (what the payload's
  // `toJSON()` returned may carry one): JSON.stringify would store what that returns.
  const json = stored({ ...given }) as TenantJobData & { central?: unknown };
  const { tenantId, central } = (current ?? {}) as TenantJobData & { central?: unknown };
  if (tenantId != null) {
    if ((json.tenantId != null && json.tenantId !== tenantId) || json.central === true) throw movedJob(tenantId, json.tenantId == null ? 'central' : String(json.tenantId));
    return { ...json, tenantId };
  }
  if (central === true) {
    if (json.tenantId != null) throw movedJob('central', String(json.tenantId));
    return { ...json, central: true };
  }
  return json;
}

function movedJob(from: string, to: string): TenantMismatchError {
  const error = new TenantMismatchError(to, from);
  error.message = `job.updateData() cannot move a job of ${from === 'central' ? 'no tenant (central)' : `tenant "${from}"`} to ${to === 'central' ? 'no tenant' : 'another tenant'}: it would run there with this payload. Enqueue a new job in that tenant instead.`;
  return error;
}

/**
 * Queue-wide methods that would read or change every tenant's jobs (counts, ranges, metrics, workers,
 * pausing, draining, cleaning, retrying...): refused inside a tenant scope, where a tenant-facing
 * handler would otherwise list, count or wipe other tenants' work. Job lists (`getJobs()` and the
 * `getWaiting()`... built on it) and `getJobSchedulers()` are filtered to the tenant instead.
 */
const QUEUE_WIDE = [
  'clean', 'count', 'drain', 'exportPrometheusMetrics', 'getActiveCount', 'getCompletedCount', 'getCountsPerPriority',
  'getDelayedCount', 'getDependencies', 'getFailedCount', 'getJobCountByTypes', 'getJobCounts', 'getJobSchedulersCount',
  'getMetrics', 'getPrioritizedCount', 'getQueueEvents', 'getRanges', 'getWaitingChildrenCount', 'getWaitingCount', 'getWorkers',
  'getWorkersCount', 'obliterate', 'pause', 'promoteJobs', 'rateLimit', 'removeGlobalConcurrency', 'removeGlobalRateLimit',
  'removeOrphanedJobs', 'removeRateLimitKey', 'resume', 'retryJobs', 'setGlobalConcurrency', 'setGlobalRateLimit', 'trimEvents',
] as const;

/** Refuses `name` inside a tenant scope (see QUEUE_WIDE). */
function refusedInTenantScope(proto: object, base: object): void {
  for (const name of QUEUE_WIDE) {
    const method = (base as Record<string, unknown>)[name];
    if (typeof method !== 'function') continue;
    Object.defineProperty(proto, name, {
      configurable: true,
      writable: true,
      value: function queueWide(this: unknown, ...args: unknown[]): unknown {
        const tenantId = tryCurrentTenantId();
        if (tenantId === undefined) return method.apply(this, args);
        return Promise.reject(
          new TenantError('QUEUE_WIDE_IN_TENANT_SCOPE', `queue.${name}() reaches every tenant's jobs and is refused inside the scope of tenant "${tenantId}". Call it from central code, outside any tenant scope.`, { tenantId }),
        );
      },
    });
  }
}

/** Whether a job (or a scheduler's template) belongs to `tenantId`, by its payload. */
function ofTenant(data: unknown, tenantId: string): boolean {
  return (data as TenantJobData | undefined)?.tenantId === tenantId;
}

/** Another tenant's job, refused as BullMQ refuses a missing one; the id, untrusted, is not echoed. */
function jobNotFound(): never {
  throw new TenantError('JOB_NOT_FOUND', 'No job of the current tenant has this id.', { statusCode: 404 });
}

let loaded:
  | { bullmq: BullMQ; TenantJob: typeof Job; TenantQueue: new (name: string, opts: QueueOptions) => AnyQueue; TenantWorker: typeof Worker }
  | undefined;

/** @internal bullmq, `require`d on first use, and the classes built on it; `caller` names the function in BULLMQ_MISSING. */
export function load(caller: string): NonNullable<typeof loaded> {
  if (loaded !== undefined) return loaded;
  let bullmq: BullMQ;
  try {
    bullmq = require('bullmq') as BullMQ;
  } catch (error) {
    if ((error as { code?: unknown }).code !== 'MODULE_NOT_FOUND') throw error;
    throw new TenantError('BULLMQ_MISSING', `${caller} needs the bullmq package, an optional peer dependency: npm install bullmq`, { cause: error });
  }

  /** A job whose `updateData()` keeps it in its tenant (see sameTenantData). */
  class TenantJob extends bullmq.Job<any, any, string> {
    /** The tenant (or central) the job was made or read with: `job.data` can be edited in place. */
    readonly #owner: TenantJobData & { central?: unknown };

    constructor(...args: ConstructorParameters<typeof bullmq.Job>) {
      super(...args);
      const { tenantId, central } = (args[2] ?? {}) as TenantJobData & { central?: unknown };
      this.#owner = { tenantId, central };
    }

    override async updateData(data: unknown): Promise<void> {
      return super.updateData(sameTenantData(this.#owner, data));
    }
  }

  class TenantQueue extends bullmq.Queue<any, any, string> {
    override get Job(): typeof bullmq.Job {
      return TenantJob as unknown as typeof bullmq.Job;
    }

    /**
     * A job's parent must be its own tenant's: another tenant's job would wait on this child (and
     * fail on it), or read its result. Checked on the parent's payload, in this queue; a parent in
     * another queue cannot be checked here and is refused. Inside a tenant scope a central job may
     * not name a parent either.
     */
    async #checkParent(data: TenantJobData, opts: JobsOptions | undefined): Promise<void> {
      const parent = opts?.parent;
      if (parent == null) return;
      const tenantId = data.tenantId ?? tryCurrentTenantId();
      if (tenantId == null) return;
      if (parent.queue !== this.qualifiedName) {
        throw new TypeError(`A tenant job's parent must be in the same queue (${this.qualifiedName}) so that its tenant can be checked; use createTenantFlowProducer() for flows across queues`);
      }
      if (data.tenantId == null) throw new TypeError('A central job enqueued inside a tenant scope cannot name a parent: enqueue it from central code');
      const owner = await bullmq.Queue.prototype.getJob.call(this, parent.id);
      if ((owner?.data as TenantJobData | undefined)?.tenantId !== tenantId) jobNotFound();
    }

    // add() goes through addJob() from bullmq 5.30 on, not before: both stamp (stamping twice is a no-op).
    override async add(name: string, data: unknown, opts?: JobsOptions): ReturnType<AnyQueue['add']> {
      const [stamped, own] = stampJob(data, withDefaultIds(opts, this.jobsOpts));
      await this.#checkParent(stamped, own);
      return super.add(name, stamped, own);
    }

    protected override async addJob(name: string, data: unknown, opts?: JobsOptions): ReturnType<AnyQueue['add']> {
      const [stamped, own] = stampJob(data, withDefaultIds(opts, this.jobsOpts));
      await this.#checkParent(stamped, own);
      return super.addJob(name, stamped, own);
    }

    override async addBulk(jobs: { name: string; data: unknown; opts?: BulkJobOptions }[]): ReturnType<AnyQueue['addBulk']> {
      const stamped = jobs.map((job) => {
        const [data, opts] = stampJob(job.data, withDefaultIds(job.opts, this.jobsOpts));
        return { ...job, data, opts };
      });
      for (const job of stamped) await this.#checkParent(job.data, job.opts);
      return super.addBulk(stamped);
    }

    override async upsertJobScheduler(
      ...[id, repeat, template]: Parameters<AnyQueue['upsertJobScheduler']>
    ): ReturnType<AnyQueue['upsertJobScheduler']> {
      const data = withTenant((template?.data ?? {}) as object);
      if (data.tenantId == null) centralId(id);
      // BullMQ names the jobs after the scheduler id unless told otherwise: after the caller's id, then.
      const own = data.tenantId == null ? id : inTenant(data.tenantId, id);
      // The jobs it makes: their deduplication ids (the template's or the queue's default) in the tenant's namespace.
      const [, opts] = stampJob(data, withDefaultIds(template?.opts, this.jobsOpts));
      const job = await super.upsertJobScheduler(own, repeat, { ...template, name: template?.name ?? id, data, ...(opts === undefined ? {} : { opts }) });
      // BullMQ's scheduler makes this job with its own Job class: kept in its tenant as TenantJob is.
      if (job != null && !(job instanceof TenantJob)) {
        const owner = { tenantId: data.tenantId, central: (data as { central?: unknown }).central };
        const updateData = job.updateData;
        job.updateData = async (next: unknown) => updateData.call(job, sameTenantData(owner, next) as never);
      }
      return job;
    }

    // By id inside a tenant scope: that tenant's jobs and schedulers only; outside any scope, as BullMQ.

    // Queue-wide lists inside a tenant scope: that tenant's entries only. A page (start, end) is a
    // window over every tenant's jobs, filtered afterwards: it may hold fewer, or none.
    override async getJobs(...args: Parameters<AnyQueue['getJobs']>): ReturnType<AnyQueue['getJobs']> {
      const tenantId = tryCurrentTenantId();
      const jobs = await super.getJobs(...args);
      return tenantId === undefined ? jobs : jobs.filter((job) => job != null && ofTenant(job.data, tenantId));
    }

    override async getJobSchedulers(...args: Parameters<AnyQueue['getJobSchedulers']>): ReturnType<AnyQueue['getJobSchedulers']> {
      const tenantId = tryCurrentTenantId();
      const schedulers = await super.getJobSchedulers(...args);
      return tenantId === undefined ? schedulers : schedulers.filter((scheduler) => ofTenant(scheduler.template?.data, tenantId));
    }

    override async getJob(id: string): ReturnType<AnyQueue['getJob']> {
      const tenantId = tryCurrentTenantId();
      if (tenantId === undefined) return super.getJob(id);
      const job = await super.getJob(madeByBullMQ(id) ? id : inTenant(tenantId, id));
      // The payload decides: counter ids are guessable, and central code may use any id.
      return (job?.data as TenantJobData | undefined)?.tenantId === tenantId ? job : undefined;
    }

    /** The id BullMQ knows job `id` by, or `undefined` for another tenant's job inside a scope. */
    private async own(id: string): Promise<string | undefined> {
      return tryCurrentTenantId() === undefined ? id : (await this.getJob(id))?.id;
    }

    override async getJobState(id: string): ReturnType<AnyQueue['getJobState']> {
      const own = await this.own(id);
      return own === undefined ? 'unknown' : super.getJobState(own);
    }

    override async getJobLogs(id: string, start?: number, end?: number, asc?: boolean): ReturnType<AnyQueue['getJobLogs']> {
      const own = await this.own(id);
      return own === undefined ? { logs: [], count: 0 } : super.getJobLogs(own, start, end, asc);
    }

    override async remove(id: string, opts?: { removeChildren?: boolean }): Promise<number> {
      const own = await this.own(id);
      return own === undefined ? 0 : super.remove(own, opts);
    }

    override async updateJobProgress(...[id, progress]: Parameters<AnyQueue['updateJobProgress']>): Promise<void> {
      return super.updateJobProgress((await this.own(id)) ?? jobNotFound(), progress);
    }

    override async addJobLog(id: string, row: string, keepLogs?: number): Promise<number> {
      return super.addJobLog((await this.own(id)) ?? jobNotFound(), row, keepLogs);
    }

    override async getJobScheduler(id: string): ReturnType<AnyQueue['getJobScheduler']> {
      const tenantId = tryCurrentTenantId();
      const scheduler = await super.getJobScheduler(scoped(id));
      const owner = (scheduler?.template?.data as TenantJobData | undefined)?.tenantId;
      return tenantId === undefined || owner === tenantId ? scheduler : undefined;
    }

    override async removeJobScheduler(id: string): Promise<boolean> {
      return super.removeJobScheduler(scoped(id));
    }

    override async getDeduplicationJobId(id: string): Promise<string | null> {
      return super.getDeduplicationJobId(scoped(id));
    }

    override async getDebounceJobId(id: string): Promise<string | null> {
      return super.getDebounceJobId(scoped(id));
    }

    override async removeDeduplicationKey(id: string): Promise<number> {
      return super.removeDeduplicationKey(scoped(id));
    }

    override async removeDebounceKey(id: string): Promise<number> {
      return super.removeDebounceKey(scoped(id));
    }

    /** Listeners run with no tenant, whoever emits ('waiting' is emitted by add(), in its caller's scope). */
    override emit(event: any, ...args: any[]): boolean {
      return runInScopeSync(undefined, () => super.emit(event, ...args));
    }
  }

  refusedInTenantScope(TenantQueue.prototype, bullmq.Queue.prototype);

  class TenantWorker extends bullmq.Worker<any, any, string> {
    /** The jobs it hands its processor keep their tenant through `updateData()` too. */
    override get Job(): typeof bullmq.Job {
      return TenantJob as unknown as typeof bullmq.Job;
    }

    /**
     * The fetch loop, and so every event and callback of it (listeners, backoff strategies), runs in the
     * context run() was called in: called inside a request (`autorun: false`), it would run every
     * tenant's events in that request's tenant.
     */
    override run(): Promise<void> {
      return runInScopeSync(undefined, () => super.run());
    }

    /** The stalled-job checker loop, restarted by resume() in its caller's context. */
    override startStalledCheckTimer(): Promise<void> {
      return runInScopeSync(undefined, () => super.startStalledCheckTimer());
    }

    /** Listeners run with no tenant, whoever emits (a job's updateProgress() emits from its tenant's scope). */
    override emit(event: any, ...args: any[]): boolean {
      return runInScopeSync(undefined, () => super.emit(event, ...args));
    }
  }
  loaded = { bullmq, TenantJob: TenantJob as unknown as typeof Job, TenantQueue, TenantWorker: TenantWorker as unknown as typeof Worker };
  return loaded;
}

/**
 * Creates a BullMQ `Queue` whose `add()`, `addBulk()`, `addJob()` and `upsertJobScheduler()` stamp the
 * current tenant into each job payload with `withTenant()`: enqueue inside a request or `runWithTenant()`
 * and the job carries its tenant. Outside any scope, give the payload a `tenantId` or mark it `central: true`.
 * A tenant job's custom `jobId` and `deduplication.id`, and a tenant scheduler's id, become
 * `<tenantId>~<id>`, so that tenants never share one; inside a tenant scope, the by-id methods
 * (`getJob()`, `remove()`, `getJobScheduler()`...) reach only that tenant's jobs and schedulers.
 * @param name The queue name.
 * @param opts BullMQ's `QueueOptions` (`connection`, `defaultJobOptions`...).
 * @returns A `Queue` (a subclass of BullMQ's). The call rejects with `TenantContextMissingError` or
 * `TenantMismatchError` when `withTenant()` refuses a payload, and with `InvalidTenantIdError` when an
 * id would be namespaced with a tenant id containing `~`.
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
 * @returns The `Worker`, created outside any tenant scope; its loop runs with no tenant scope even when
 * `run()` (with `autorun: false`) or `resume()` is called inside one, and its listeners run with none.
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
  const { bullmq, TenantWorker } = load('createTenantWorker()');
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
  return runInScopeSync(undefined, () => new TenantWorker<DataType & TenantJobData, ResultType, NameType>(name, guarded, workerOptions));
}
