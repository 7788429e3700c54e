/**
 * BullMQ flows keep their tenant, on SQLite files and MariaDB, with a real Redis: every node of a flow
 * added in a tenant's scope (root and children, across queues) runs in that tenant's database; custom
 * ids are per tenant; `getFlow()` in one tenant does not reach another's flow; nodes of another tenant,
 * and parents outside the flow, are refused; a parent reads its children's results; central flows keep
 * their ids. Every check of where a job ran looks at the rows it wrote.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it } from 'node:test';
import type { Knex } from 'knex';
import { Queue, type Job, type JobNode, type Worker } from 'bullmq';
import {
  createTenancy,
  createTenantFlowProducer,
  createTenantWorker,
  currentTenantId,
  InvalidTenantIdError,
  setDefaultTenancy,
  TenantContextMissingError,
  TenantMismatchError,
  tryCurrentTenantId,
  type Tenancy,
  type TenantJobData,
} from '../lib/index';
import { backends, createSeededTenant } from './helpers/databases';
import { Person } from './helpers/fixtures';
import { randomPause } from './helpers/http';
import { redisConnection, skipRedis, uniqueQueueName } from './helpers/redis';

const TENANTS = ['fa', 'fb'] as const;
const connection = redisConnection();

type Data = TenantJobData & { label?: string };

/** Every job of a flow tree, root first. */
function jobsOf(node: JobNode | undefined): Job[] {
  if (node == null) return [];
  return [node.job, ...(node.children ?? []).flatMap(jobsOf)];
}

/** Final outcomes of the jobs of several workers (several queues), by `<queue>:<id>`. */
function settled(workers: Worker[]) {
  const done = new Map<string, { result: unknown; job: Job }>();
  const failed = new Map<string, Error>();
  const listeners = new Set<() => void>();
  const key = (job: Job) => `${job.queueName}:${job.id}`;
  for (const worker of workers) {
    worker.on('completed', (job, result) => {
      done.set(key(job), { result, job });
      for (const l of listeners) l();
    });
    worker.on('failed', (job, error) => {
      if (job?.finishedOn == null) return;
      failed.set(key(job), error);
      for (const l of listeners) l();
    });
  }
  return {
    /** Resolves when every job is completed; rejects at the first final failure, or after `timeoutMs`. */
    wait: (jobs: Job[], timeoutMs = 20_000) =>
      new Promise<Map<string, { result: unknown; job: Job }>>((resolve, reject) => {
        const keys = jobs.map(key);
        const stop = (fn: () => void) => {
          listeners.delete(check);
          clearTimeout(timer);
          fn();
        };
        const check = () => {
          const failure = keys.find((k) => failed.has(k));
          if (failure !== undefined) return stop(() => reject(new Error(`job ${failure} failed: ${failed.get(failure)!.message}`)));
          if (keys.every((k) => done.has(k))) stop(() => resolve(new Map(keys.map((k) => [k, done.get(k)!]))));
        };
        const timer = setTimeout(() => stop(() => reject(new Error(`only ${keys.filter((k) => done.has(k)).length}/${keys.length} jobs completed in ${timeoutMs} ms`))), timeoutMs);
        listeners.add(check);
        check();
      }),
  };
}

for (const backend of backends('flow')) {
  describe(`flows on ${backend.name}`, { skip: backend.skip }, () => {
    let tenancy: Tenancy;
    const direct = new Map<string, Knex>();
    /** `name/note` of tenant `t`'s persons whose name contains `marker`; the note names the tenant the insert ran in. */
    const rows = async (t: string, marker: string) =>
      ((await direct.get(t)!('persons').where('name', 'like', `%${marker}%`).orderBy('name').select('name', 'note')) as { name: string; note: string }[]).map(
        (r) => `${r.name}/${r.note}`,
      );

    before(async () => {
      for (const t of TENANTS) {
        const knex = await createSeededTenant(backend, t);
        direct.set(t, knex);
      }
      tenancy = createTenancy({ knexConfig: backend.knexConfig, tenantExists: backend.databaseExists });
      setDefaultTenancy(tenancy);
    });
    after(async () => {
      await tenancy.destroy();
      for (const knex of direct.values()) await knex.destroy();
      for (const t of TENANTS) await backend.dropDatabase(t);
      await backend.close();
    });

    describe('with BullMQ on a real Redis', { skip: skipRedis }, () => {
      const cleanups: (() => Promise<void>)[] = [];
      /** Fresh queue names, a tenant flow producer, and plain queues (to inspect and obliterate them). */
      const setUp = (label: string, queues = 2) => {
        const names = Array.from({ length: queues }, (_, i) => uniqueQueueName(`flow-${backend.name}-${label}-${i}`));
        const producer = createTenantFlowProducer({ connection });
        const plain = names.map((name) => new Queue(name, { connection }));
        cleanups.push(async () => {
          // Twice: removing a child in one queue moves its parent, already removed from another, back to "wait".
          for (const queue of [...plain, ...plain]) await queue.obliterate({ force: true });
          for (const queue of plain) await queue.close();
          await producer.close();
        });
        return { names, producer, plain };
      };
      const workersFor = (names: string[], processor: (job: Job<Data>) => Promise<unknown>) => {
        const workers = names.map((name) => createTenantWorker<Data>(name, processor, { connection, tenancy, concurrency: 4 }));
        cleanups.unshift(async () => {
          for (const worker of workers) await worker.close();
        });
        return settled(workers as Worker[]);
      };
      afterEach(async () => {
        for (const cleanup of cleanups.splice(0)) await cleanup();
      });

      /** A parent in queue `p` with two children in queue `c`, one of them a parent of a leaf in `p`. */
      const tree = (p: string, c: string, label: string, ids: { root?: string; child?: string } = {}) => ({
        name: 'merge',
        queueName: p,
        data: { label },
        ...(ids.root ? { opts: { jobId: ids.root } } : {}),
        children: [
          { name: 'extract', queueName: c, data: { label }, ...(ids.child ? { opts: { jobId: ids.child } } : {}) },
          { name: 'transform', queueName: c, data: { label }, children: [{ name: 'load', queueName: p, data: { label } }] },
        ],
      });

      /** Writes a row named after the job in the current tenant's database; returns the tenant it ran in. */
      const writeRow = async (job: Job<Data>) => {
        await randomPause();
        await Person.query().insert({ name: `${job.data.label}-${job.name}` });
        return currentTenantId();
      };

      it("every node of a flow added in a tenant's scope, across two queues, runs in that tenant's database", async () => {
        const { names, producer } = setUp('isolation');
        const done = workersFor(names, writeRow);
        // Both tenants at once, interleaved: each flow's rows must land in its own database only.
        const [fa, fb] = await Promise.all(TENANTS.map((t) => tenancy.runWithTenant(t, () => producer.add(tree(names[0]!, names[1]!, `${t}-iso`)))));
        const jobs = [...jobsOf(fa), ...jobsOf(fb)];
        assert.equal(jobs.length, 8);
        const results = await done.wait(jobs);
        for (const t of TENANTS) {
          assert.deepEqual(await rows(t, '-iso-'), ['extract', 'load', 'merge', 'transform'].map((n) => `${t}-iso-${n}/inserted-in:${t}`), `${t}'s database holds its own flow's rows, and only those`);
        }
        for (const [t, flow] of [['fa', fa], ['fb', fb]] as const) {
          for (const job of jobsOf(flow)) {
            assert.equal(job.data.tenantId, t, `${job.name} is stamped`);
            assert.ok(job.id!.startsWith(`${t}~`), `${job.name}'s id ${job.id} is in ${t}'s namespace`);
            assert.equal(results.get(`${job.queueName}:${job.id}`)!.result, t, `${job.name} ran in ${t}`);
          }
        }
      });

      it('the same custom jobId in two tenants makes two flows, each run in its own tenant', async () => {
        const { names, producer } = setUp('ids');
        const done = workersFor(names, writeRow);
        const add = (t: string) => tenancy.runWithTenant(t, () => producer.add(tree(names[0]!, names[1]!, `${t}-ids`, { root: 'report-7', child: 'part-1' })));
        const fa = await add('fa');
        const fb = await add('fb');
        assert.deepEqual([fa.job.id, fa.children![0]!.job.id, fb.job.id, fb.children![0]!.job.id], ['fa~report-7', 'fa~part-1', 'fb~report-7', 'fb~part-1']);
        await done.wait([...jobsOf(fa), ...jobsOf(fb)]);
        for (const t of TENANTS) {
          assert.deepEqual(await rows(t, '-ids-'), ['extract', 'load', 'merge', 'transform'].map((n) => `${t}-ids-${n}/inserted-in:${t}`));
        }
        // Outside any scope, a payload's explicit tenantId names the namespace of its node.
        const explicit = await producer.add({ name: 'solo', queueName: names[0]!, data: { tenantId: 'fa', label: 'fa-ids-explicit' }, opts: { jobId: 'solo' } });
        assert.equal(explicit.job.id, 'fa~solo');
        await done.wait([explicit.job]);
        await assert.rejects(producer.add({ name: 'solo', queueName: names[0]!, data: { tenantId: 'fa~x' }, opts: { jobId: 'y' } }), InvalidTenantIdError);
      });

      it("getFlow() in a tenant's scope reaches its own flows only; another tenant's is missing", async () => {
        const { names, producer } = setUp('get-flow');
        const [p, c] = names as [string, string];
        const fa = await tenancy.runWithTenant('fa', () => producer.add(tree(p, c, 'fa-get', { root: 'shared' })));
        const unnamed = await tenancy.runWithTenant('fa', () => producer.add(tree(p, c, 'fa-get')));
        const central = await producer.add({ name: 'central', queueName: p, data: { central: true }, opts: { jobId: 'central-root' } });
        // A tree of fb whose child is fa's, made with BullMQ's own FlowProducer (the tenant one refuses it).
        const { FlowProducer: PlainFlowProducer } = await import('bullmq');
        const plainProducer = new PlainFlowProducer({ connection });
        cleanups.unshift(() => plainProducer.close());
        await plainProducer.add({ name: 'mixed', queueName: p, data: { tenantId: 'fb' }, opts: { jobId: 'fb~mixed' }, children: [{ name: 'theirs', queueName: c, data: { tenantId: 'fa' } }] });
        await plainProducer.add({ name: 'planted', queueName: p, data: { tenantId: 'fa' }, opts: { jobId: 'fb~planted' } });

        const get = (t: string | undefined, id: string) => {
          const read = () => producer.getFlow({ id, queueName: p });
          return t === undefined ? read() : tenancy.runWithTenant(t, read);
        };
        const found = await get('fa', 'shared');
        assert.deepEqual(jobsOf(found).map((j) => j.id).sort(), jobsOf(fa).map((j) => j.id).sort(), 'the whole tree, by the id fa gave');
        assert.equal((await get('fa', 'fa~shared'))?.job.id, 'fa~shared', 'and by job.id');
        assert.equal((await get('fa', unnamed.job.id!))?.children?.length, 2, "a node with no jobId is found by its job.id (fa~<uuid>)");
        for (const id of ['shared', 'fa~shared', unnamed.job.id!, 'central-root', 'mixed', 'planted']) {
          assert.equal(await get('fb', id), undefined, `fb does not reach ${id}`);
        }
        assert.equal(await get('fa', 'central-root'), undefined);
        // Outside any scope, BullMQ's: every flow by its full id.
        assert.equal((await get(undefined, 'fa~shared'))?.job.data.tenantId, 'fa');
        assert.equal((await get(undefined, 'central-root'))?.job.id, central.job.id);
        assert.deepEqual(jobsOf(await get(undefined, 'fb~mixed')).map((j) => j.data.tenantId), ['fb', 'fa']);
      });

      it('a node of another tenant, a child of another tenant, a central child in a scope, and an opts.parent are refused, adding nothing', async () => {
        const { names, producer, plain } = setUp('refused');
        const [p, c] = names as [string, string];
        const leaf = (data: object, opts?: object) => ({ name: 'leaf', queueName: c, data, ...(opts ? { opts } : {}) });
        await tenancy.runWithTenant('fa', async () => {
          await assert.rejects(producer.add({ name: 'root', queueName: p, data: { tenantId: 'fb' } }), TenantMismatchError);
          await assert.rejects(producer.add({ name: 'root', queueName: p, data: {}, children: [leaf({ tenantId: 'fb' })] }), TenantMismatchError);
          await assert.rejects(
            producer.add({ name: 'root', queueName: p, data: {}, children: [{ name: 'mid', queueName: c, data: {}, children: [leaf({ tenantId: 'fb' })] }] }),
            TenantMismatchError,
            'at any depth',
          );
          await assert.rejects(producer.add({ name: 'root', queueName: p, data: {}, children: [leaf({ central: true })] }), TypeError);
          await assert.rejects(producer.add({ name: 'root', queueName: p, data: {}, opts: { parent: { id: 'fa~existing', queue: `bull:${c}` } } }), TypeError);
          await assert.rejects(producer.add({ name: 'root', queueName: p, data: { central: true }, opts: { parent: { id: 'existing', queue: `bull:${c}` } } }), TypeError);
          await assert.rejects(producer.addBulk([{ name: 'ok', queueName: p, data: {} }, { name: 'bad', queueName: p, data: { tenantId: 'fb' } }]), TenantMismatchError);
        });
        // Outside any scope: every node needs a tenant (or central), and children are of their parent's tenant.
        await assert.rejects(producer.add({ name: 'root', queueName: p, data: { tenantId: 'fa' }, children: [leaf({})] }), TenantContextMissingError);
        await assert.rejects(producer.add({ name: 'root', queueName: p, data: { tenantId: 'fa' }, children: [leaf({ tenantId: 'fb' })] }), TenantMismatchError);
        await assert.rejects(producer.add({ name: 'root', queueName: p, data: { central: true }, children: [leaf({ tenantId: 'fb' })] }), TenantMismatchError);
        await assert.rejects(producer.add({ name: 'root', queueName: p, data: { tenantId: 'fa' }, opts: { parent: { id: 'fa~existing', queue: `bull:${c}` } } }), TypeError);
        for (const queue of plain) assert.deepEqual(await queue.getJobCounts('waiting', 'waiting-children', 'delayed'), { waiting: 0, 'waiting-children': 0, delayed: 0 }, queue.name);
      });

      it("a parent's getChildrenValues() holds its children's results, in its tenant", async () => {
        const { names, producer } = setUp('values');
        const done = workersFor(names, async (job) => {
          const children = await job.getChildrenValues<{ tenant: string; name: string }>();
          return { tenant: currentTenantId(), name: job.name, children };
        });
        const flow = await tenancy.runWithTenant('fb', () => producer.add(tree(names[0]!, names[1]!, 'fb-values')));
        const results = await done.wait(jobsOf(flow));
        const result = (node: JobNode) => results.get(`${node.job.queueName}:${node.job.id}`)!.result;
        const keyOf = (node: JobNode) => `bull:${node.job.queueName}:${node.job.id}`;
        const [extract, transform] = flow.children!;
        const load = transform!.children![0]!;
        assert.deepEqual(result(load), { tenant: 'fb', name: 'load', children: {} });
        assert.deepEqual(result(transform!), { tenant: 'fb', name: 'transform', children: { [keyOf(load)]: result(load) } });
        assert.deepEqual(result(flow), {
          tenant: 'fb',
          name: 'merge',
          children: { [keyOf(extract!)]: result(extract!), [keyOf(transform!)]: result(transform!) },
        });
      });

      it('a central flow added outside any scope keeps its ids and runs with no tenant', async () => {
        const { names, producer } = setUp('central');
        const done = workersFor(names, async () => tryCurrentTenantId() ?? 'none');
        const [p, c] = names as [string, string];
        const flow = await producer.add({
          name: 'fan-in',
          queueName: p,
          data: { central: true },
          opts: { jobId: 'nightly-merge' },
          children: [{ name: 'part', queueName: c, data: { central: true }, opts: { jobId: 'part-a' } }, { name: 'part', queueName: c, data: { central: true } }],
        });
        assert.deepEqual(jobsOf(flow).slice(0, 2).map((j) => j.id), ['nightly-merge', 'part-a']);
        assert.ok(!jobsOf(flow)[2]!.id!.includes('~'), 'BullMQ’s own id for an unnamed central node');
        const results = await done.wait(jobsOf(flow));
        assert.deepEqual([...results.values()].map((r) => r.result), ['none', 'none', 'none']);
        // A central id cannot squat a tenant's namespace.
        await assert.rejects(producer.add({ name: 'squat', queueName: p, data: { central: true }, opts: { jobId: 'fa~report-7' } }), TypeError);
        await assert.rejects(
          producer.add({ name: 'squat', queueName: p, data: { central: true }, children: [{ name: 'c', queueName: c, data: { central: true }, opts: { jobId: 'fb~x' } }] }),
          TypeError,
        );
      });

      it('its listeners run with no tenant, whoever emits', async () => {
        const producer = await tenancy.runWithTenant('fa', () => createTenantFlowProducer({ connection }));
        cleanups.push(() => producer.close());
        const seen: (string | undefined)[] = [];
        producer.on('error', () => void seen.push(tryCurrentTenantId()));
        await tenancy.runWithTenant('fb', async () => producer.emit('error', new Error('test')));
        assert.deepEqual(seen, [undefined]);
        await producer.waitUntilReady();
      });
    });
  });
}
