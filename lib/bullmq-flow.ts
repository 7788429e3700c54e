/**
 * BullMQ flows that keep their tenant: a `FlowProducer` that stamps every node of a flow (root and
 * children, in any queue) with the current tenant and keeps its ids in the tenant's namespace, as
 * `createTenantQueue()` does for single jobs, and whose `getFlow()` reaches only the tenant's flows.
 * bullmq is an optional peer dependency: it is `require`d when `createTenantFlowProducer()` is first
 * called, never when this package is loaded.
 */
import { randomUUID } from 'node:crypto';
import type { FlowJob, FlowOpts, FlowProducer, FlowProducerOptions, JobNode, JobsOptions, NodeOpts } from 'bullmq';
import { TenantMismatchError } from './errors';
import { inTenant, load, madeByBullMQ, stampJob, withDefaultIds } from './bullmq';
import type { TenantJobData } from './jobs';
import { runInScopeSync, tryCurrentTenantId } from './scope';

/** A flow node as BullMQ takes it, whatever its place in the tree. */
type FlowNode = { name: string; queueName: string; data?: unknown; prefix?: string; opts?: JobsOptions; children?: FlowNode[] };

/**
 * `node` and its children, each stamped by `withTenant()` with ids in its tenant's namespace. A
 * tenant node with no `jobId` is given `<tenantId>~<uuid>` (BullMQ would give it a bare uuid), so
 * that `job.id` is the id `getFlow()` finds inside the tenant's scope.
 * @param parent The stamped payload of the node's parent in the tree; `undefined` for a root.
 */
function stampNode(node: FlowNode, parent: TenantJobData | undefined, queues?: FlowOpts['queuesOptions']): FlowNode {
  if (typeof node !== 'object' || node === null) throw new TypeError('A flow node must be an object { name, queueName, data?, opts?, children? }');
  const scope = tryCurrentTenantId();
  // An empty jobId is no id to BullMQ's flows (`jobId || uuid`); namespaced, it would be one id for the whole tenant.
  const given = node.opts?.jobId === '' ? { ...node.opts, jobId: undefined } : node.opts;
  const [data, stamped] = stampJob(node.data, withDefaultIds(given, queues?.[node.queueName]?.defaultJobOptions));
  const tenantId = data.tenantId;
  if (node.opts?.parent != null && (tenantId != null || scope !== undefined)) {
    throw new TypeError(
      "A tenant flow cannot hang under an existing job (opts.parent): its tenant cannot be checked in another queue. Put the parent in the flow, as the root of the tree, or add the flow from central code as a central one.",
    );
  }
  if (parent !== undefined) {
    if (tenantId != null && parent.tenantId !== tenantId) throw mixedTenants(parent.tenantId, tenantId);
    if (tenantId == null && scope !== undefined) {
      throw new TypeError('A central job added inside a tenant scope cannot be a child in a flow: add the flow from central code');
    }
  }
  let opts = stamped;
  if (tenantId != null && opts?.jobId == null) opts = { ...opts, jobId: inTenant(tenantId, randomUUID()) };
  const children = node.children?.map((child) => stampNode(child, data, queues));
  return { ...node, data, ...(opts === undefined ? {} : { opts }), ...(children === undefined ? {} : { children }) };
}

/** A child of another tenant's (or a central) parent: the parent would wait on it and read its result. */
function mixedTenants(parent: string | undefined, child: string): TenantMismatchError {
  const error = new TenantMismatchError(child, parent ?? 'central');
  // The payloads' ids are not echoed: they may be untrusted input.
  error.message =
    "A flow's child job must be of its parent's tenant: a parent waits on its children and reads their results. " +
    'Add each tenant its own flow, inside runWithTenant(tenantId, fn).';
  return error;
}

/** Whether every job of a flow tree (as `getFlow()` read it) is `tenantId`'s, by its payload. */
function ownedBy(node: JobNode | undefined, tenantId: string): boolean {
  if (node == null) return true; // a child removed since: missing, not another tenant's
  return (node.job?.data as TenantJobData | undefined)?.tenantId === tenantId && (node.children ?? []).every((child) => ownedBy(child, tenantId));
}

let TenantFlowProducer: (new (opts: FlowProducerOptions) => FlowProducer) | undefined;

function flowProducerClass(): NonNullable<typeof TenantFlowProducer> {
  if (TenantFlowProducer !== undefined) return TenantFlowProducer;
  const { bullmq, TenantJob } = load('createTenantFlowProducer()');

  TenantFlowProducer = class extends bullmq.FlowProducer {
    /** The jobs it makes and reads keep their tenant through `updateData()` too. */
    protected override get Job(): typeof bullmq.Job {
      return TenantJob;
    }

    override async add(flow: FlowJob, opts?: FlowOpts): Promise<JobNode> {
      return super.add(stampNode(flow as FlowNode, undefined, opts?.queuesOptions) as FlowJob, opts);
    }

    override async addBulk(flows: FlowJob[]): Promise<JobNode[]> {
      if (!Array.isArray(flows)) throw new TypeError('flowProducer.addBulk(flows): flows must be an array of flows');
      return super.addBulk(flows.map((flow) => stampNode(flow as FlowNode, undefined) as FlowJob));
    }

    /**
     * Inside a tenant scope, the flow whose root is this tenant's job `id` (namespaced like
     * `queue.getJob()`'s), or `undefined` (as for a missing job) when any job of the tree read is
     * another tenant's or central. Outside any scope, BullMQ's.
     */
    override async getFlow(opts: NodeOpts): Promise<JobNode> {
      const tenantId = tryCurrentTenantId();
      if (tenantId === undefined) return super.getFlow(opts);
      const id = madeByBullMQ(String(opts.id)) ? opts.id : inTenant(tenantId, opts.id);
      const tree = await super.getFlow({ ...opts, id });
      return (ownedBy(tree, tenantId) ? tree : undefined) as JobNode;
    }

    /** Listeners run with no tenant, whoever emits. */
    override emit(event: any, ...args: any[]): boolean {
      return runInScopeSync(undefined, () => super.emit(event, ...args));
    }
  } as unknown as new (opts: FlowProducerOptions) => FlowProducer;
  return TenantFlowProducer;
}

/**
 * Creates a BullMQ `FlowProducer` whose `add()` and `addBulk()` stamp every node of a flow, root and
 * children in any queue, with the current tenant through `withTenant()`, and put each node's custom
 * `jobId` and `deduplication.id` in its tenant's namespace (`<tenantId>~<id>`), as `createTenantQueue()`
 * does; a tenant node with no `jobId` gets `<tenantId>~<uuid>`. Every child is of its parent's tenant,
 * and a tenant node cannot name an `opts.parent`. Inside a tenant scope, `getFlow()` reaches only that
 * tenant's flows. Process the jobs with `createTenantWorker()`: each runs in its tenant.
 * @param opts BullMQ's `FlowProducerOptions` (`connection`, `prefix`...).
 * @returns A `FlowProducer` (a subclass of BullMQ's), created outside any tenant scope. `add()` and
 * `addBulk()` reject, adding nothing, with `TenantContextMissingError` or `TenantMismatchError` when
 * `withTenant()` refuses a node's payload, with `TenantMismatchError` for a child of another tenant's
 * parent, with `TypeError` for a tenant node with an `opts.parent` (or, inside a tenant scope, a central
 * node that is a child or has a parent), and with `InvalidTenantIdError` when an id would be namespaced
 * with a tenant id containing `~`.
 * @throws {TenantError} `BULLMQ_MISSING` when the bullmq package is not installed.
 * @example
 * const flows = createTenantFlowProducer({ connection: { host: '127.0.0.1', port: 6379 } });
 * app.post('/reports', async (req, res) => {
 *   const { job } = await flows.add({ // every node stamped with the request's tenant
 *     name: 'merge', queueName: 'reports', data: { month: req.body.month },
 *     children: [{ name: 'sales', queueName: 'extracts' }, { name: 'costs', queueName: 'extracts' }],
 *   });
 *   res.status(202).json({ flow: job.id });
 * });
 */
export function createTenantFlowProducer(opts: FlowProducerOptions): FlowProducer {
  const Producer = flowProducerClass();
  // Created with no scope: its connection callbacks must not hold a request's tenant.
  return runInScopeSync(undefined, () => new Producer(opts));
}
