/**
 * Background jobs keep their tenant, on SQLite files and MariaDB. `withTenant` and `tenantJob` on
 * their own, then a real Redis with real BullMQ workers: jobs enqueued inside HTTP requests of three
 * tenants, retries and re-enqueues, concurrent jobs of different tenants on one worker with random
 * awaits (and its negative control: a global "current tenant" variable crosses), jobs with no tenant,
 * invalid or unknown tenants, central jobs. Every check looks at the rows the job wrote, not only at
 * `currentTenantId()`.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, afterEach, before, describe, it } from 'node:test';
import express from 'express';
import type { Knex } from 'knex';
import { Queue, type Job, type Worker } from 'bullmq';
import {
  createTenancy,
  createTenantFlowProducer,
  createTenantQueue,
  createTenantWorker,
  currentTenantId,
  InvalidTenantIdError,
  setDefaultTenancy,
  TenantContextMissingError,
  tenantJob,
  TenantMismatchError,
  tryCurrentTenantId,
  UnknownTenantError,
  withTenant,
  type Tenancy,
  type TenantJobData,
  type TenantWorkerOptions,
} from '../lib/index';
import { BrokenPerson, brokenMiddleware, registerBrokenKnex } from './helpers/broken-tenancy';
import { backends, createSeededTenant } from './helpers/databases';
import { Person } from './helpers/fixtures';
import { jsonErrors, listen, load, randomPause } from './helpers/http';
import { redisConnection, skipRedis, uniqueQueueName } from './helpers/redis';

const TENANTS = ['ja', 'jb', 'jc'] as const;
const connection = redisConnection();

type Data = TenantJobData & { expect?: string; name?: string; i?: number; step?: number };

interface Outcome {
  state: 'completed' | 'failed';
  job: Job<Data>;
  result?: unknown;
  error?: Error & { code?: string; cause?: unknown };
}

/** Final outcomes of a worker's jobs by id: completed, or failed with no retry left. */
function outcomes(worker: Worker<Data>): { wait(ids: (string | undefined)[], timeoutMs?: number): Promise<Map<string, Outcome>> } {
  const done = new Map<string, Outcome>();
  const listeners = new Set<() => void>();
  const settle = (id: string | undefined, outcome: Outcome) => {
    if (id === undefined) return;
    done.set(id, outcome);
    for (const l of listeners) l();
  };
  worker.on('completed', (job, result) => settle(job.id, { state: 'completed', job, result }));
  worker.on('failed', (job, error) => {
    if (job?.finishedOn) settle(job.id, { state: 'failed', job, error });
  });
  return {
    wait: (ids, timeoutMs = 30_000) =>
      new Promise((resolve, reject) => {
        const check = () => {
          if (ids.every((id) => id !== undefined && done.has(id))) {
            listeners.delete(check);
            clearTimeout(timer);
            resolve(new Map(ids.map((id) => [id!, done.get(id!)!])));
          }
        };
        const timer = setTimeout(() => {
          listeners.delete(check);
          reject(new Error(`only ${ids.filter((id) => done.has(id!)).length}/${ids.length} jobs finished in ${timeoutMs} ms`));
        }, timeoutMs);
        listeners.add(check);
        check();
      }),
  };
}

describe('bullmq is an optional peer', () => {
  it('is not loaded with the package; without it, createTenantQueue/createTenantWorker/createTenantFlowProducer throw BULLMQ_MISSING', () => {
    // A child process in which resolving bullmq fails, as in an app that did not install it.
    const script = `
      const Module = require('node:module');
      const resolve = Module._resolveFilename;
      Module._resolveFilename = function (request, ...rest) {
        if (request === 'bullmq' || request.startsWith('bullmq/')) throw Object.assign(new Error('Cannot find module bullmq'), { code: 'MODULE_NOT_FOUND' });
        return resolve.call(this, request, ...rest);
      };
      const lib = require(process.argv[1]);
      const out = { loaded: Object.keys(require.cache).some((k) => k.includes('node_modules/bullmq')), stamped: lib.withTenant({ tenantId: 'a' }) };
      for (const make of [() => lib.createTenantQueue('q', { connection: {} }), () => lib.createTenantWorker('q', async () => 1, { connection: {} }), () => lib.createTenantFlowProducer({ connection: {} })]) {
        try { make(); } catch (e) { out[e.message.split('(')[0]] = [e.name, e.code]; }
      }
      console.log(JSON.stringify(out));`;
    const result = spawnSync(process.execPath, ['--import', 'tsx', '-e', script, path.resolve(__dirname, '../lib/index.ts')], { encoding: 'utf8' });
    assert.equal(result.status, 0, result.stderr);
    assert.deepEqual(JSON.parse(result.stdout), {
      loaded: false,
      stamped: { tenantId: 'a' },
      createTenantQueue: ['TenantError', 'BULLMQ_MISSING'],
      createTenantWorker: ['TenantError', 'BULLMQ_MISSING'],
      createTenantFlowProducer: ['TenantError', 'BULLMQ_MISSING'],
    });
  });
});

for (const backend of backends('jobs')) {
  describe(`jobs on ${backend.name}`, { skip: backend.skip }, () => {
    let tenancy: Tenancy;
    const direct = new Map<string, Knex>();
    /** Person names of tenant `t` containing `marker`, with the tenant their insert hook ran in. */
    const rows = async (t: string, marker: string) =>
      (await direct.get(t)!('persons').where('name', 'like', `%${marker}%`).orderBy('id').select('name', 'note')) as { name: string; note: string }[];

    before(async () => {
      for (const t of TENANTS) {
        const knex = await createSeededTenant(backend, t);
        direct.set(t, knex);
        registerBrokenKnex(t, knex);
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

    describe('withTenant', () => {
      it('stamps the current tenant into a copy of the payload', async () => {
        const payload = { month: '2026-01', nested: { a: 1 } };
        const stamped = await tenancy.runWithTenant('ja', () => withTenant(payload));
        assert.deepEqual(stamped, { month: '2026-01', nested: { a: 1 }, tenantId: 'ja' });
        assert.deepEqual(payload, { month: '2026-01', nested: { a: 1 } }, 'the input is not mutated');
        assert.deepEqual(await tenancy.runWithTenant('jb', () => withTenant(undefined as unknown as object)), { tenantId: 'jb' });
      });

      it('keeps a tenantId already in the payload: outside any scope, and inside the same tenant’s scope', async () => {
        assert.deepEqual(withTenant({ tenantId: 'jc', x: 1 }), { tenantId: 'jc', x: 1 });
        assert.deepEqual(await tenancy.runWithTenant('jc', () => withTenant({ tenantId: 'jc' })), { tenantId: 'jc' });
      });

      it('refuses a payload naming another tenant than the current scope’s, without echoing it', async () => {
        await tenancy.runWithTenant('ja', async () => {
          assert.throws(
            () => withTenant({ tenantId: 'jb' }),
            (e: unknown) => e instanceof TenantMismatchError && e.code === 'TENANT_MISMATCH' && /"ja"/.test(e.message) && !e.message.includes('jb'),
          );
        });
      });

      it('stores the tenantId it checked: a payload whose tenantId getter answers another tenant after the checks is stamped with the checked one', async () => {
        let reads = 0;
        const payload = {
          month: 1,
          get tenantId() {
            return ++reads <= 2 ? 'ja' : 'jb';
          },
        };
        const stamped = await tenancy.runWithTenant('ja', () => withTenant(payload));
        assert.equal(JSON.parse(JSON.stringify(stamped)).tenantId, 'ja');
      });

      it('fails closed outside any scope, names the fixes; central payloads carry no tenant', async () => {
        assert.throws(() => withTenant({ x: 1 }), (e: unknown) => e instanceof TenantContextMissingError && /runWithTenant.*tenantId.*central: true/s.test(e.message));
        assert.deepEqual(withTenant({ central: true, x: 1 }), { central: true, x: 1 });
        assert.deepEqual(await tenancy.runWithTenant('ja', () => withTenant({ central: true })), { central: true }, 'central wins over the scope');
        assert.throws(() => withTenant({ central: true, tenantId: 'ja' }), TypeError);
        assert.throws(() => withTenant([1, 2] as unknown as object), TypeError);
        assert.throws(() => withTenant('text' as unknown as object), TypeError);
      });

      it('serializes a class payload as BullMQ will, through its toJSON(), before stamping it', async () => {
        class Invoice {
          constructor(readonly id: number) {}
          get total() {
            return 10;
          }
          toJSON() {
            return { invoiceId: this.id, total: this.total };
          }
        }
        const stamped = await tenancy.runWithTenant('ja', () => withTenant(new Invoice(42)));
        assert.deepEqual(stamped, { invoiceId: 42, total: 10, tenantId: 'ja' });
        // The tenantId a toJSON() returns is the one checked: it is the one BullMQ stores.
        const named = { toJSON: () => ({ tenantId: 'jb' }) };
        await tenancy.runWithTenant('ja', async () => assert.throws(() => withTenant(named), TenantMismatchError));
        assert.throws(() => withTenant({ toJSON: () => 'text' }), TypeError);
        // What toJSON() returns may have a toJSON of its own, which JSON.stringify would call on the
        // copy: the copy has none, so what was checked is what the queue stores.
        const nested = { toJSON: () => ({ report: 'x', toJSON: () => ({ report: 'x', tenantId: 'jb' }) }) };
        // Given directly, the inner one is the payload's own toJSON(): read, and refused.
        await tenancy.runWithTenant('ja', async () => assert.throws(() => withTenant(nested.toJSON()), TenantMismatchError));
        for (const payload of [nested, { central: true, toJSON: () => ({ central: true, toJSON: () => ({ tenantId: 'jb' }) }) }]) {
          const copy = await tenancy.runWithTenant('ja', () => withTenant(payload));
          assert.equal(Object.prototype.hasOwnProperty.call(copy, 'toJSON'), false);
          assert.notEqual((JSON.parse(JSON.stringify(copy)) as Data).tenantId, 'jb', JSON.stringify(copy));
        }
        assert.deepEqual(JSON.parse(JSON.stringify(await tenancy.runWithTenant('ja', () => withTenant(nested)))), { report: 'x', tenantId: 'ja' });
      });
    });

    describe('tenantJob', () => {
      const job = (data: unknown, extra: Partial<{ id: string; name: string }> = {}) => ({ data: data as Data, ...extra });

      it('runs the handler in the payload’s tenant, passes extra arguments through, and leaves no tenant behind', async () => {
        const handler = tenantJob(async (j: { data: Data }, token?: string) => {
          await randomPause();
          const names = (await Person.query().orderBy('id')).map((p) => p.name);
          return `${currentTenantId()}|${token}|${names.join(',')}|${j.data.tenantId}`;
        });
        assert.equal(await handler(job({ tenantId: 'jb' }), 'tok'), 'jb|tok|jb-ada,jb-bob|jb');
        assert.equal(tryCurrentTenantId(), undefined);
        // Called inside another tenant's scope, the payload's tenant still wins; the caller's is back after.
        await tenancy.runWithTenant('ja', async () => {
          assert.equal(await handler(job({ tenantId: 'jc' })), 'jc|undefined|jc-ada,jc-bob|jc');
          assert.equal(currentTenantId(), 'ja');
        });
      });

      it('rejects a job with no tenant with TenantContextMissingError before the handler runs', async () => {
        let ran = 0;
        const handler = tenantJob(async () => ran++);
        for (const data of [{}, undefined, null, { tenantId: null }, 'text']) {
          await assert.rejects(handler(job(data, { id: '42', name: 'report' })), (e: unknown) => e instanceof TenantContextMissingError && /Job 42 \(report\)/.test(e.message));
        }
        assert.equal(ran, 0);
      });

      it('runs central jobs with no scope, even when called inside a tenant scope: tenant queries fail closed', async () => {
        const handler = tenantJob(async () => [tryCurrentTenantId(), await Person.query().then(() => 'queried', (e) => e.constructor.name)]);
        const lenient = tenantJob(async () => tryCurrentTenantId(), { central: true });
        await tenancy.runWithTenant('ja', async () => {
          assert.deepEqual(await handler(job({ central: true })), [undefined, 'TenantContextMissingError']);
          assert.equal(await lenient(job({})), undefined);
          assert.equal(await lenient(job({ tenantId: 'jb' })), 'jb', 'a tenantId wins over options.central');
          assert.equal(currentTenantId(), 'ja');
        });
      });

      it('validates the payload’s tenant id like any other, and looks the tenant up', async () => {
        let ran = 0;
        const handler = tenantJob(async () => ran++, { tenancy });
        for (const tenantId of ['../etc/passwd', 'a b', 'x'.repeat(64), 7, ['ja', 'jb'], '']) {
          await assert.rejects(handler(job({ tenantId })), InvalidTenantIdError);
        }
        await assert.rejects(handler(job({ tenantId: 'nobody' })), UnknownTenantError);
        assert.equal(ran, 0);
      });

      it('a handler that throws rejects with its own error, and the next job starts clean', async () => {
        const handler = tenantJob(async (j: { data: Data }) => {
          if (j.data.expect === 'boom') throw new Error(`boom in ${currentTenantId()}`);
          return tryCurrentTenantId();
        });
        await assert.rejects(handler(job({ tenantId: 'ja', expect: 'boom' })), /boom in ja/);
        assert.equal(await tenantJob(async () => tryCurrentTenantId(), { central: true })(job({})), undefined);
        assert.throws(() => tenantJob('nope' as never), TypeError);
        assert.throws(() => tenantJob(async () => 1, { central: 'yes' as never }), TypeError);
      });
    });

    describe('with BullMQ on a real Redis', { skip: skipRedis }, () => {
      const cleanups: (() => Promise<void>)[] = [];
      const queueFor = (label: string) => {
        const name = uniqueQueueName(`${backend.name}-${label}`);
        const queue = createTenantQueue<Data>(name, { connection });
        cleanups.push(async () => {
          await queue.obliterate({ force: true });
          await queue.close();
        });
        return { name, queue };
      };
      const workerFor = (name: string, processor: (job: Job<Data>) => Promise<unknown>, opts: Partial<TenantWorkerOptions> = {}) => {
        const worker = createTenantWorker<Data>(name, processor, { connection, tenancy, ...opts });
        cleanups.unshift(() => worker.close());
        return { worker, outcomes: outcomes(worker) };
      };
      afterEach(async () => {
        for (const cleanup of cleanups.splice(0)) await cleanup();
      });

      it('jobs enqueued inside HTTP requests of three tenants run in their own tenant and write to its database', async () => {
        const { name, queue } = queueFor('http');
        const { outcomes: done } = workerFor(
          name,
          async (job) => {
            await randomPause();
            const inserted = await Person.query().insert({ name: job.data.name! });
            await randomPause();
            return { ran: currentTenantId(), note: inserted.note };
          },
          { concurrency: 6 },
        );
        const app = express();
        app.use(express.json());
        app.use(tenancy.middleware());
        app.post('/jobs', async (req, res, next) => {
          try {
            await randomPause();
            const job = await queue.add('write', { name: req.body.name, expect: req.body.expect });
            res.status(202).json({ id: job.id });
          } catch (error) {
            next(error);
          }
        });
        app.use(jsonErrors);
        const server = await listen(app);
        const ids: string[] = [];
        const PER_TENANT = 12;
        try {
          await load(PER_TENANT * TENANTS.length, 9, async (i) => {
            const t = TENANTS[i % TENANTS.length]!;
            const response = await fetch(`${server.url}/jobs`, {
              method: 'POST',
              headers: { 'x-tenant-id': t, 'content-type': 'application/json' },
              body: JSON.stringify({ name: `${t}-http-${i}`, expect: t }),
            });
            assert.equal(response.status, 202);
            ids.push(((await response.json()) as { id: string }).id);
          });
        } finally {
          await server.close();
        }
        const results = await done.wait(ids);
        for (const outcome of results.values()) {
          assert.equal(outcome.state, 'completed', outcome.error?.message);
          assert.equal(outcome.job.data.tenantId, outcome.job.data.expect, 'stamped with the request’s tenant');
          assert.deepEqual(outcome.result, { ran: outcome.job.data.expect, note: `inserted-in:${outcome.job.data.expect}` });
        }
        for (const t of TENANTS) {
          const written = await rows(t, '-http-');
          assert.equal(written.length, PER_TENANT, `${t} holds its ${PER_TENANT} rows`);
          assert.ok(written.every((r) => r.name.startsWith(`${t}-`) && r.note === `inserted-in:${t}`), JSON.stringify(written));
        }
      });

      it("deduplication ids from the queue's or a flow's defaultJobOptions are each tenant's too: one tenant's job neither replaces nor swallows another's", async () => {
        const name = uniqueQueueName(`${backend.name}-dedup-defaults`);
        // Not in BullMQ's DefaultJobOptions type, but merged by it at run time (JavaScript apps, casts).
        const defaults = { deduplication: { id: 'digest', ttl: 60_000 }, delay: 60_000 };
        const flowDefaults = { deduplication: { id: 'flow-digest' }, delay: 60_000 };
        const queue = createTenantQueue<Data>(name, { connection, defaultJobOptions: defaults });
        const flows = createTenantFlowProducer({ connection });
        const plain = new Queue(name, { connection });
        cleanups.push(async () => {
          await queue.obliterate({ force: true });
          await queue.close();
          await flows.close();
          await plain.close();
        });
        // One tenant through add(), the other through addBulk(): the same default id in each.
        await tenancy.runWithTenant('ja', () => queue.add('digest', { name: 'ja-digest' }));
        await tenancy.runWithTenant('jb', () => queue.addBulk([{ name: 'digest', data: { name: 'jb-digest' } }]));
        for (const t of ['ja', 'jb'] as const) {
          await tenancy.runWithTenant(t, () =>
            flows.add({ name: 'root', queueName: name, data: { name: `${t}-flow` } }, { queuesOptions: { [name]: { defaultJobOptions: flowDefaults } } }),
          );
        }
        const stored = await plain.getJobs(['delayed', 'waiting', 'waiting-children', 'prioritized']);
        const byTenant = (t: string) => stored.filter((job) => (job.data as Data).tenantId === t).map((job) => [(job.data as Data).name, job.opts.deduplication?.id]).sort();
        const seen = JSON.stringify(stored.map((job) => [job.id, job.data, job.opts.deduplication]));
        assert.deepEqual(byTenant('ja'), [['ja-digest', 'ja~digest'], ['ja-flow', 'ja~flow-digest']], seen);
        assert.deepEqual(byTenant('jb'), [['jb-digest', 'jb~digest'], ['jb-flow', 'jb~flow-digest']], seen);
      });

      it('a job that fails once and is retried runs in the same tenant both times; a re-enqueue from the job keeps it', async () => {
        const { name, queue } = queueFor('retry');
        const attempts: string[] = [];
        const { outcomes: done } = workerFor(name, async (job) => {
          const t = currentTenantId();
          const label = job.data.step === 2 ? 'followup' : `attempt${job.attemptsMade + 1}`;
          await Person.query().insert({ name: `${job.data.expect}-retry-${label}` });
          attempts.push(`${job.data.expect}:${label}:${t}`);
          if (job.data.step === 2) return t;
          if (job.attemptsMade === 0) throw new Error('first attempt fails');
          await randomPause();
          // Re-enqueue the same payload (it carries tenantId): inside the job's scope, the tenant is kept.
          const followup = await queue.add('followup', { ...job.data, step: 2 });
          return followup.id;
        });
        const jobs = await Promise.all(
          TENANTS.map((t) => tenancy.runWithTenant(t, () => queue.add('flaky', { expect: t }, { attempts: 2 }))),
        );
        const first = await done.wait(jobs.map((j) => j.id));
        const followups = await done.wait([...first.values()].map((o) => o.result as string));
        for (const outcome of [...first.values(), ...followups.values()]) {
          assert.equal(outcome.state, 'completed', outcome.error?.message);
          assert.equal(outcome.job.data.tenantId, outcome.job.data.expect);
        }
        for (const o of first.values()) assert.equal(o.job.attemptsMade, 2);
        assert.deepEqual(
          attempts.sort(),
          TENANTS.flatMap((t) => [`${t}:attempt1:${t}`, `${t}:attempt2:${t}`, `${t}:followup:${t}`]).sort(),
        );
        for (const t of TENANTS) {
          assert.deepEqual(
            (await rows(t, '-retry-')).map((r) => `${r.name}/${r.note}`).sort(),
            [`${t}-retry-attempt1/inserted-in:${t}`, `${t}-retry-attempt2/inserted-in:${t}`, `${t}-retry-followup/inserted-in:${t}`],
          );
        }
      });

      const JOBS = 60;
      const CONCURRENCY = 8;

      it(`${JOBS} interleaved jobs of three tenants on one worker with concurrency ${CONCURRENCY} never see each other’s tenant`, async () => {
        const { name, queue } = queueFor('conc');
        let inFlight = 0;
        let maxInFlight = 0;
        const crossings: string[] = [];
        const afterJob: (string | undefined)[] = [];
        const { worker, outcomes: done } = workerFor(
          name,
          async (job) => {
            maxInFlight = Math.max(maxInFlight, ++inFlight);
            try {
              const expect = job.data.expect!;
              const seen = [tryCurrentTenantId()];
              for (let k = 0; k < 3; k++) {
                await randomPause(4);
                seen.push(tryCurrentTenantId());
              }
              await Person.query().insert({ name: `${expect}-conc-${job.data.i}` });
              await randomPause(4);
              const visible = await Person.query().where('name', 'like', '%-conc-%');
              seen.push(tryCurrentTenantId());
              if (seen.some((s) => s !== expect)) crossings.push(`job ${job.data.i} of ${expect} saw ${seen.join(',')}`);
              if (visible.some((p) => !p.name.startsWith(`${expect}-`))) crossings.push(`job ${job.data.i} of ${expect} read another tenant’s rows`);
            } finally {
              inFlight--;
            }
          },
          { concurrency: CONCURRENCY },
        );
        worker.on('completed', () => afterJob.push(tryCurrentTenantId()));
        const ids: (string | undefined)[] = [];
        for (let i = 0; i < JOBS; i++) {
          const t = TENANTS[i % TENANTS.length]!;
          ids.push((await tenancy.runWithTenant(t, () => queue.add('conc', { expect: t, i }))).id);
        }
        const results = await done.wait(ids);
        assert.deepEqual([...results.values()].filter((o) => o.state !== 'completed').map((o) => o.error?.message), []);
        assert.deepEqual(crossings, []);
        assert.ok(maxInFlight > 1, `jobs ran concurrently (max in flight ${maxInFlight})`);
        assert.deepEqual(new Set(afterJob), new Set([undefined]), 'the worker’s own events see no tenant after a job');
        for (const t of TENANTS) {
          const written = await rows(t, '-conc-');
          assert.equal(written.length, JOBS / TENANTS.length);
          assert.ok(written.every((r) => r.name.startsWith(`${t}-`) && r.note === `inserted-in:${t}`), JSON.stringify(written));
        }
      });

      it('negative control: the same load with a global "current tenant" variable crosses tenants on the worker', async () => {
        const { name, queue } = queueFor('broken');
        let globalTenant: string | undefined;
        const crossings: string[] = [];
        const { outcomes: done } = workerFor(
          name,
          async (job) => {
            const expect = job.data.expect!;
            globalTenant = expect;
            brokenMiddleware({ headers: { 'x-tenant-id': expect } }, undefined, () => undefined);
            for (let k = 0; k < 3; k++) {
              await randomPause(4);
              if (globalTenant !== expect) crossings.push(`job ${job.data.i} of ${expect} saw ${globalTenant}`);
            }
            await BrokenPerson.query().insert({ name: `${expect}-broken-${job.data.i}` });
          },
          { concurrency: CONCURRENCY },
        );
        const ids: (string | undefined)[] = [];
        for (let i = 0; i < JOBS; i++) {
          const t = TENANTS[i % TENANTS.length]!;
          ids.push((await tenancy.runWithTenant(t, () => queue.add('broken', { expect: t, i }))).id);
        }
        await done.wait(ids);
        let misplaced = 0;
        for (const t of TENANTS) misplaced += (await rows(t, '-broken-')).filter((r) => !r.name.startsWith(`${t}-`)).length;
        assert.ok(crossings.length > 0, 'the global variable must be seen crossing');
        assert.ok(misplaced > 0, `rows must land in another tenant's database (crossings: ${crossings.length})`);
      });

      it('a job with no tenant fails at once, without retries, unless it is central', async () => {
        const { name, queue } = queueFor('central');
        const plain = new Queue(name, { connection });
        cleanups.push(() => plain.close());
        const ran: string[] = [];
        const { outcomes: done } = workerFor(name, async (job) => {
          const query = await Person.query().then(() => 'queried', (e: Error) => e.constructor.name);
          ran.push(`${job.name}:${tryCurrentTenantId()}:${query}`);
        });
        const missing = await plain.add('missing', { x: 1 }, { attempts: 3 });
        const invalid = await plain.add('invalid', { tenantId: '../etc' }, { attempts: 3 });
        const unknown = await plain.add('unknown', { tenantId: 'nobody' }, { attempts: 2 });
        const central = await queue.add('central', { central: true });
        const tenant = await tenancy.runWithTenant('jb', () => queue.add('tenant', {}));
        await assert.rejects(queue.add('outside', { name: 'x' }), TenantContextMissingError);
        const results = await done.wait([missing.id, invalid.id, unknown.id, central.id, tenant.id]);

        const failedWith = (job: Job, code: string, cause: new (...a: never[]) => Error, attemptsMade: number) => {
          const o = results.get(job.id!)!;
          assert.equal(o.state, 'failed', job.name);
          assert.equal(o.error!.code, code);
          assert.ok(o.error!.cause instanceof cause || o.error instanceof cause, `${job.name}: ${o.error!.name}`);
          assert.equal(o.job.attemptsMade, attemptsMade, `${job.name} attempts`);
        };
        failedWith(missing, 'TENANT_CONTEXT_MISSING', TenantContextMissingError, 1);
        assert.equal(results.get(missing.id!)!.error!.name, 'UnrecoverableError');
        assert.match(results.get(missing.id!)!.job.failedReason, /carries no tenantId/);
        failedWith(invalid, 'TENANT_ID_INVALID', InvalidTenantIdError, 1);
        failedWith(unknown, 'TENANT_UNKNOWN', UnknownTenantError, 2); // an unknown tenant follows the retry policy
        assert.equal(results.get(central.id!)!.state, 'completed');
        assert.equal(results.get(tenant.id!)!.state, 'completed');
        assert.deepEqual(ran.sort(), ['central:undefined:TenantContextMissingError', 'tenant:jb:queried']);
      });

      it('a worker with central: true, created inside a tenant scope, runs tenant-less jobs with no scope, after a tenant job', async () => {
        const { name, queue } = queueFor('lenient');
        const plain = new Queue(name, { connection });
        cleanups.push(() => plain.close());
        const ran: string[] = [];
        const created = await tenancy.runWithTenant('jc', async () =>
          workerFor(
            name,
            async (job) => {
              await randomPause();
              ran.push(`${job.name}:${tryCurrentTenantId()}`);
            },
            { central: true, concurrency: 1 },
          ),
        );
        const first = await tenancy.runWithTenant('ja', () => queue.add('tenant-first', {}));
        const second = await plain.add('no-tenant-next', {});
        await created.outcomes.wait([first.id, second.id]);
        assert.deepEqual(ran, ['tenant-first:ja', 'no-tenant-next:undefined']);
      });

      it('addBulk stamps each job; upsertJobScheduler stamps its template; explicit tenantIds are kept outside a scope', async () => {
        const { name, queue } = queueFor('bulk');
        const ran: string[] = [];
        const { outcomes: done } = workerFor(name, async (job) => void ran.push(`${job.data.expect}:${currentTenantId()}`));
        const inScope = await tenancy.runWithTenant('jb', () => queue.addBulk([{ name: 'b', data: { expect: 'jb' } }, { name: 'b', data: { expect: 'jb' } }]));
        const explicit = await queue.addBulk(TENANTS.map((t) => ({ name: 'b', data: { tenantId: t, expect: t } })));
        await assert.rejects(queue.addBulk([{ name: 'b', data: { tenantId: 'ja' } }, { name: 'b', data: {} }]), TenantContextMissingError);
        await done.wait([...inScope, ...explicit].map((j) => j.id));
        assert.deepEqual(ran.sort(), ['ja:ja', 'jb:jb', 'jb:jb', 'jb:jb', 'jc:jc']);

        const scheduled = await tenancy.runWithTenant('jc', () => queue.upsertJobScheduler('nightly', { every: 3_600_000 }, { data: { expect: 'jc' } }));
        assert.equal(scheduled.data.tenantId, 'jc');
        // The job BullMQ's scheduler made (with its own Job class) stays its tenant's: it ran in jb before.
        await assert.rejects(scheduled.updateData({ ...scheduled.data, tenantId: 'jb' }), TenantMismatchError);
        await scheduled.updateData({ ...scheduled.data, expect: 'jc, updated' });
        assert.equal((await queue.getJob(scheduled.id!))?.data.tenantId, 'jc');
        await assert.rejects(queue.upsertJobScheduler('orphan', { every: 3_600_000 }), TenantContextMissingError);
        assert.equal(await tenancy.runWithTenant('jc', () => queue.removeJobScheduler('nightly')), true);
      });

      it('a custom jobId is per tenant: the same id in two tenants makes two jobs, each run in its own tenant', async () => {
        const { name, queue } = queueFor('ids');
        const { outcomes: done } = workerFor(name, async (job) => {
          await Person.query().insert({ name: `${job.data.expect}-ids-${job.data.i}` });
          return currentTenantId();
        });
        const add = (t: string, i: number) => tenancy.runWithTenant(t, () => queue.add('send', { expect: t, i }, { jobId: 'invoice-42' }));
        const ja = await add('ja', 1);
        await done.wait([ja.id]); // completed jobs are kept, so BullMQ still holds the id
        const jb = await add('jb', 2);
        const again = await add('ja', 3); // within a tenant, an id still names one job, as in BullMQ
        // Outside any scope, the payload's tenantId names the namespace.
        const jc = await queue.add('send', { tenantId: 'jc', expect: 'jc', i: 4 }, { jobId: 'invoice-42' });
        assert.deepEqual([ja.id, jb.id, again.id, jc.id], ['ja~invoice-42', 'jb~invoice-42', 'ja~invoice-42', 'jc~invoice-42']);
        const results = await done.wait([ja.id, jb.id, jc.id]);
        assert.deepEqual([...results.values()].map((o) => [o.state, o.result, o.job.data.i]), [['completed', 'ja', 1], ['completed', 'jb', 2], ['completed', 'jc', 4]]);
        for (const [t, i] of [['ja', 1], ['jb', 2], ['jc', 4]] as const) {
          assert.deepEqual((await rows(t, '-ids-')).map((r) => `${r.name}/${r.note}`), [`${t}-ids-${i}/inserted-in:${t}`]);
        }
        // A re-enqueue with the job's own id keeps it; a tenant id that could overlap another's namespace is refused.
        assert.equal((await tenancy.runWithTenant('jb', () => queue.add('send', { expect: 'jb', i: 5 }, { jobId: jb.id! }))).id, 'jb~invoice-42');
        await assert.rejects(queue.add('send', { tenantId: 'ja~x' }, { jobId: 'y' }), InvalidTenantIdError);
        await assert.rejects(tenancy.runWithTenant('ja', () => queue.add('send', {}, { jobId: '42' })), /Custom Id cannot be integers/);
        // An empty jobId is no id, as in BullMQ: two jobs, not one shared 'ja~'.
        const blank = (i: number) => tenancy.runWithTenant('ja', () => queue.add('send', { expect: 'ja', i }, { jobId: '' }));
        const [b1, b2] = [await blank(8), await blank(9)];
        assert.notEqual(b1.id, b2.id);
        assert.ok(!b1.id!.includes('~') && !b2.id!.includes('~'), `${b1.id} ${b2.id}`);
        await done.wait([b1.id, b2.id]);

        // Deduplication ids too: jb's job is not dropped as a duplicate of ja's.
        const dedup = (t: string, i: number) =>
          tenancy.runWithTenant(t, () => queue.add('dedup', { expect: t, i }, { deduplication: { id: 'inv-7' }, delay: 600_000 }));
        const [da, db] = [await dedup('ja', 6), await dedup('jb', 7)];
        assert.notEqual(da.id, db.id);
        assert.equal(await tenancy.runWithTenant('jb', () => queue.getDeduplicationJobId('inv-7')), db.id);
      });

      it("a job cannot be moved to another tenant, nor take another tenant's ids or parent: updateData, central ids, opts.parent", async () => {
        const { name, queue } = queueFor('moves');
        const delayed = { delay: 600_000 };
        // updateData from the queue's job and from inside a processor: the job stays its tenant's.
        const job = await tenancy.runWithTenant('ja', () => queue.add('upd', { expect: 'ja' }, delayed));
        // Before stop 22 this was accepted, and the job then ran in jb's database.
        await assert.rejects(job.updateData({ expect: 'ja', tenantId: 'jb' }), TenantMismatchError);
        await assert.rejects(job.updateData({ central: true }), TenantMismatchError);
        await job.updateData({ expect: 'ja', i: 1 });
        assert.deepEqual((await queue.getJob(job.id!))!.data, { expect: 'ja', i: 1, tenantId: 'ja' });
        // job.data edited in place and given back: the job keeps the tenant it was made with.
        const edited = (await queue.getJob(job.id!))!;
        Object.assign(edited.data, { tenantId: 'jb' });
        await assert.rejects(edited.updateData(edited.data), TenantMismatchError);
        delete (edited.data as { tenantId?: string }).tenantId;
        Object.assign(edited.data, { central: true });
        await assert.rejects(edited.updateData(edited.data), TenantMismatchError);
        assert.equal((await queue.getJob(job.id!))!.data.tenantId, 'ja');
        // A toJSON() whose result has a toJSON of its own (JSON.stringify calls it too): what is stored
        // is what was checked. Before: { step: 2, tenantId: 'jb' } was stored, and the job ran in jb.
        const nested = (inner: object) => ({ toJSON: () => ({ expect: 'ja', step: 2, toJSON: () => inner }) });
        await job.updateData(nested({ expect: 'ja', step: 2, tenantId: 'jb' }) as never);
        assert.deepEqual((await queue.getJob(job.id!))!.data, { expect: 'ja', step: 2, tenantId: 'ja' });
        const central = await queue.add('c', { central: true }, delayed);
        await assert.rejects(central.updateData({ tenantId: 'jb' }), TenantMismatchError);
        await central.updateData({ toJSON: () => ({ step: 2, toJSON: () => ({ tenantId: 'jb' }) }) } as never);
        assert.deepEqual((await queue.getJob(central.id!))!.data, { step: 2, central: true });
        // A getter read once for the check and again for the copy stored: it named jb the second
        // time, and the job became jb's. Now read once: what is stored is what was checked.
        let reads = 0;
        await central.updateData({
          step: 3,
          get tenantId() {
            return reads++ === 0 ? undefined : 'jb';
          },
        } as never);
        assert.equal(reads, 1);
        assert.deepEqual((await queue.getJob(central.id!))!.data, { step: 3, central: true });
        const moved: string[] = [];
        const { outcomes: done } = workerFor(name, async (running) => {
          await running.updateData({ ...running.data, tenantId: 'jb' }).catch((e: Error) => moved.push(e.name));
          return currentTenantId();
        });
        const ran = await tenancy.runWithTenant('ja', () => queue.add('run', { expect: 'ja' }));
        assert.equal((await done.wait([ran.id])).get(ran.id!)?.result, 'ja');
        assert.deepEqual(moved, ['TenantMismatchError']);
        assert.equal((await queue.getJob(ran.id!))!.data.tenantId, 'ja');

        // Central ids cannot squat a tenant's namespace (jb's job would never run).
        await tenancy.runWithTenant('ja', async () => {
          await assert.rejects(queue.add('squat', { central: true }, { jobId: 'jb~invoice-7', ...delayed }), TypeError);
          await assert.rejects(queue.add('squat', { central: true }, { deduplication: { id: 'jb~nightly' }, ...delayed }), TypeError);
          await assert.rejects(queue.upsertJobScheduler('jb~nightly', { every: 3_600_000 }, { data: { central: true } }), TypeError);
        });
        await assert.rejects(queue.add('squat', { central: true }, { jobId: 'jb~invoice-7', ...delayed }), TypeError);
        // Ids that are not strings would skip the namespace (a number's dedup key is every tenant's).
        await tenancy.runWithTenant('ja', async () => {
          await assert.rejects(queue.add('num', { expect: 'ja' }, { deduplication: { id: 42 as never }, ...delayed }), /deduplication.id must be a string/);
          await assert.rejects(queue.add('arr', { expect: 'ja' }, { deduplication: { id: ['jb~nightly'] as never, ttl: 60_000 }, ...delayed }), TypeError);
          await assert.rejects(queue.add('num', { expect: 'ja' }, { jobId: 42 as never, ...delayed }), /jobId must be a string/);
          await assert.rejects(queue.add('num', { expect: 'ja' }, { debounce: { id: 7 as never }, ...delayed } as never), TypeError);
        });
        const nightly = await tenancy.runWithTenant('jb', () => queue.add('nightly', { expect: 'jb' }, { deduplication: { id: 'nightly', ttl: 60_000 }, ...delayed }));
        assert.equal(nightly.id, await tenancy.runWithTenant('jb', () => queue.getDeduplicationJobId('nightly')), "jb's dedup key was not taken by ja's refused array id");

        // A parent must be the job's own tenant's.
        const parentOfJb = await tenancy.runWithTenant('jb', () => queue.add('parent', { expect: 'jb' }, { jobId: 'inv-42', ...delayed }));
        const parent = { id: parentOfJb.id!, queue: queue.qualifiedName };
        await tenancy.runWithTenant('ja', async () => {
          await assert.rejects(queue.add('child', { expect: 'ja' }, { parent, ...delayed }), { code: 'JOB_NOT_FOUND' });
          await assert.rejects(queue.add('child', { expect: 'ja' }, { parent: { id: 'inv-42', queue: queue.qualifiedName }, ...delayed }), { code: 'JOB_NOT_FOUND' });
          await assert.rejects(queue.add('child', { central: true }, { parent, ...delayed }), TypeError);
        });
        const child = await tenancy.runWithTenant('jb', () => queue.add('child', { expect: 'jb' }, { parent: { id: 'inv-42', queue: queue.qualifiedName }, ...delayed }));
        assert.equal(child.parentKey, `${queue.qualifiedName}:jb~inv-42`);
      });

      it('reads and writes by id inside a tenant scope reach only that tenant’s jobs; outside any scope, every job', async () => {
        const { queue } = queueFor('by-id');
        const delayed = { delay: 600_000 };
        const mine = await tenancy.runWithTenant('ja', () => queue.add('mine', { expect: 'ja' }, { jobId: 'report', ...delayed }));
        const counter = await tenancy.runWithTenant('jb', () => queue.add('theirs', { expect: 'jb' }, delayed)); // a guessable id
        const named = await tenancy.runWithTenant('jb', () => queue.add('theirs', { expect: 'jb' }, { jobId: 'report', ...delayed }));
        const central = await queue.add('central', { central: true }, delayed);
        await tenancy.runWithTenant('jb', () => queue.addJobLog(counter.id!, 'jb only'));
        await tenancy.runWithTenant('ja', async () => {
          for (const id of ['report', mine.id!]) assert.equal((await queue.getJob(id))?.data.expect, 'ja', id);
          for (const id of [counter.id!, named.id!, central.id!]) {
            assert.equal(await queue.getJob(id), undefined, id);
            assert.equal(await queue.getJobState(id), 'unknown', id);
            assert.deepEqual(await queue.getJobLogs(id), { logs: [], count: 0 }, id);
            assert.equal(await queue.remove(id), 0, id);
            await assert.rejects(queue.updateJobProgress(id, 50), { code: 'JOB_NOT_FOUND' });
            await assert.rejects(queue.addJobLog(id, 'from ja'), { code: 'JOB_NOT_FOUND' });
          }
          assert.equal(await queue.getJobState('report'), 'delayed');
        });
        await tenancy.runWithTenant('jb', async () => {
          assert.equal((await queue.getJob('report'))?.id, named.id);
          assert.deepEqual(await queue.getJobLogs(counter.id!), { logs: ['jb only'], count: 1 });
          assert.equal(await queue.remove('report'), 1);
        });
        for (const job of [mine, counter, central]) {
          const stored = await queue.getJob(job.id!);
          assert.deepEqual([stored?.data, stored?.progress], [job.data, 0], 'untouched, and found outside any scope');
        }
      });

      it("queue-wide methods in a tenant scope: job lists and schedulers are filtered to the tenant, counts and bulk changes are refused", async () => {
        const { queue } = queueFor('queue-wide');
        const delayed = { delay: 600_000 };
        await tenancy.runWithTenant('ja', () => queue.add('a', { expect: 'ja' }, delayed));
        await tenancy.runWithTenant('jb', () => queue.add('b', { expect: 'jb' }, delayed));
        await queue.add('central', { central: true }, delayed);
        await tenancy.runWithTenant('jb', () => queue.upsertJobScheduler('nightly', { every: 3_600_000 }, { data: { expect: 'jb' } }));
        await tenancy.runWithTenant('ja', async () => {
          assert.deepEqual((await queue.getJobs(['delayed'])).map((j) => j.data.expect), ['ja']);
          assert.deepEqual((await queue.getDelayed()).map((j) => j.data.expect), ['ja'], 'getDelayed() goes through getJobs()');
          assert.deepEqual(await queue.getJobSchedulers(), []);
          for (const call of [() => queue.getJobCounts(), () => queue.count(), () => queue.drain(), () => queue.obliterate({ force: true }), () => queue.clean(0, 100, 'delayed'), () => queue.pause(), () => queue.getQueueEvents(), () => queue.getWorkers()]) {
            await assert.rejects(call(), { code: 'QUEUE_WIDE_IN_TENANT_SCOPE' });
          }
        });
        // Nothing was changed, and outside any scope every tenant's jobs are there.
        assert.deepEqual((await queue.getJobs(['delayed'])).map((j) => j.data.expect ?? 'central').sort(), ['central', 'ja', 'jb']);
        assert.equal((await queue.getJobCounts('delayed')).delayed, 3);
        assert.equal((await queue.getJobSchedulers()).length, 1);
        assert.equal(await queue.isPaused(), false);
      });

      it('job schedulers are per tenant: the same id in two tenants makes two schedulers, read and removed each in its tenant', async () => {
        const { queue } = queueFor('schedulers');
        const every = { every: 3_600_000 };
        const ja = await tenancy.runWithTenant('ja', () => queue.upsertJobScheduler('nightly', every, { data: { expect: 'ja' } }));
        const jb = await tenancy.runWithTenant('jb', () => queue.upsertJobScheduler('nightly', every, { data: { expect: 'jb' } }));
        assert.deepEqual([ja.name, ja.data.tenantId, jb.name, jb.data.tenantId], ['nightly', 'ja', 'nightly', 'jb'], 'named after the caller’s id');
        assert.deepEqual((await queue.getJobSchedulers()).map((s) => s.key).sort(), ['ja~nightly', 'jb~nightly']);
        for (const t of ['ja', 'jb']) {
          const seen = await tenancy.runWithTenant(t, () => queue.getJobScheduler('nightly'));
          assert.equal(seen?.template?.data?.tenantId, t);
        }
        assert.equal(await tenancy.runWithTenant('jc', () => queue.getJobScheduler('nightly')), undefined);
        assert.equal(await tenancy.runWithTenant('jc', () => queue.getJobScheduler('ja~nightly')), undefined);
        assert.equal(await tenancy.runWithTenant('ja', () => queue.removeJobScheduler('nightly')), true);
        assert.deepEqual((await queue.getJobSchedulers()).map((s) => s.key), ['jb~nightly'], 'jb’s is still there');
        // Central schedulers keep the id they are given.
        await queue.upsertJobScheduler('fan-out', every, { data: { central: true } });
        assert.ok(await queue.getJobScheduler('fan-out'));
      });

      it('addJob() stamps and namespaces like add()', async () => {
        const { name, queue } = queueFor('add-job');
        const ran: string[] = [];
        const { outcomes: done } = workerFor(name, async (job) => void ran.push(`${job.id}:${currentTenantId()}`));
        const addJob = (queue as unknown as { addJob: (typeof queue)['add'] }).addJob.bind(queue);
        const job = await tenancy.runWithTenant('jb', () => addJob('direct', { expect: 'jb' }, { jobId: 'direct' }));
        assert.deepEqual([job.id, job.data.tenantId], ['jb~direct', 'jb']);
        await assert.rejects(addJob('direct', {}), TenantContextMissingError);
        assert.equal((await done.wait([job.id])).get(job.id!)!.state, 'completed');
        assert.deepEqual(ran, ['jb~direct:jb']);
      });

      it('a worker run() inside a tenant scope still runs its loop, its listeners and its backoff strategy with no tenant', async () => {
        const { name, queue } = queueFor('run');
        const seen: string[] = [];
        const see = (what: string) => () => void seen.push(`${what}:${tryCurrentTenantId()}`);
        const { worker, outcomes: done } = workerFor(
          name,
          async (job) => {
            if (job.attemptsMade === 0) throw new Error('first attempt fails');
            await job.updateProgress(100); // emitted from the job's scope
          },
          { autorun: false, settings: { backoffStrategy: () => (see('backoff')(), 1) } },
        );
        for (const event of ['active', 'completed', 'failed', 'progress'] as const) worker.on(event, see(event));
        queue.on('waiting', see('waiting'));
        await tenancy.runWithTenant('ja', () => void worker.run());
        const jobs = [
          await tenancy.runWithTenant('jb', () => queue.add('run', { expect: 'jb' }, { attempts: 2, backoff: { type: 'custom' } })),
          await queue.add('run', { central: true }, { attempts: 2, backoff: { type: 'custom' } }),
        ];
        const results = await done.wait(jobs.map((j) => j.id));
        assert.deepEqual([...results.values()].map((o) => o.state), ['completed', 'completed']);
        assert.ok(seen.length >= 10, seen.join());
        assert.deepEqual(new Set(seen.map((s) => s.split(':')[1])), new Set(['undefined']), seen.join());
      });

      it('resume() inside a tenant scope restarts the stalled-job checker with no tenant', async () => {
        const { name, queue } = queueFor('resume');
        // A tracer is the one callback the stalled-job checker loop makes: it sees the loop's context.
        const spans: string[] = [];
        const span = { setAttributes() {}, setSpanOnContext: (c: unknown) => c, addEvent() {}, recordException() {}, end() {} };
        const telemetry = {
          tracer: { startSpan: (spanName: string) => (spans.push(`${spanName.split(' ')[0]}:${tryCurrentTenantId()}`), span) },
          contextManager: { active: () => ({}), with: (_c: unknown, fn: () => unknown) => fn(), getMetadata: () => '', fromMetadata: (c: unknown) => c },
        } as unknown as TenantWorkerOptions['telemetry'];
        let release: (() => void) | undefined;
        const { worker, outcomes: done } = workerFor(name, () => new Promise<void>((resolve) => (release = resolve)), { telemetry, stalledInterval: 20 });
        const job = await tenancy.runWithTenant('jb', () => queue.add('hold', {}));
        while (release === undefined) await sleep(5);
        await worker.pause(true); // the job is still active: the main loop keeps running, the checker stops
        spans.length = 0;
        await tenancy.runWithTenant('ja', () => worker.resume());
        await sleep(150);
        release();
        assert.equal((await done.wait([job.id])).get(job.id!)!.state, 'completed');
        const checker = spans.filter((s) => /stalled/i.test(s));
        assert.ok(checker.length > 1, spans.join());
        assert.deepEqual(new Set(checker.map((s) => s.split(':')[1])), new Set(['undefined']), checker.join());
      });
    });
  });
}
