/**
 * `tenancy.forEachTenant()`: `fn` runs in each tenant's scope (models and `tenancy.knex()` work),
 * bounded concurrency, a per-tenant report, failures and unknown tenants reported, abort, and the
 * pools it opened closed again while already cached ones stay. Runs on SQLite files and MariaDB, and
 * MariaDB under the shared strategy (where a tenant holds a handle on its server's pool, not a pool).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import knexFactory from 'knex';
import { bindTenant, createTenancy, currentTenantId, TenantModel, UnknownTenantError, type Tenancy } from '../lib/index';
import { allStrategies } from './helpers/databases';

class Item extends TenantModel {
  static override tableName = 'items';
  declare id: number;
  declare label: string;
}

const TENANTS = ['f1', 'f2', 'f3', 'f4', 'f5', 'f6'];

for (const backend of allStrategies('ops')) {
  describe(`forEachTenant on ${backend.name}`, { skip: backend.skip }, () => {
    let tenancy: Tenancy;
    const catalog = new Set(TENANTS);
    /** Tenants holding a pool (pool per tenant) or a handle on their server's pool (shared). */
    /** Tenants with a cached pool or handle (a pool the job evicted may still be closing: not counted). */
    const cached = () => {
      const stats = tenancy.stats();
      return stats.strategy === 'shared' ? stats.tenants : stats.pools - stats.draining;
    };

    before(async () => {
      for (const id of TENANTS) {
        await backend.createDatabase(id);
        const knex = knexFactory(backend.knexConfig(id));
        await knex.schema.createTable('items', (t) => {
          t.increments('id');
          t.string('label');
        });
        await knex('items').insert([{ label: `${id}-a` }, { label: `${id}-b` }]);
        await knex.destroy();
      }
      tenancy = createTenancy({ ...backend.connectionOptions(), tenantExists: (id) => catalog.has(id), listTenants: () => TENANTS });
    });
    after(async () => {
      await tenancy.destroy();
      for (const id of TENANTS) await backend.dropDatabase(id);
      await backend.close();
    });

    it('runs fn in each tenant scope, at most `concurrency` at once, and reports each tenant', async () => {
      let inFlight = 0;
      let maxInFlight = 0;
      const report = await tenancy.forEachTenant(
        async (tenantId) => {
          inFlight++;
          maxInFlight = Math.max(maxInFlight, inFlight);
          try {
            assert.equal(currentTenantId(), tenantId);
            await new Promise((resolve) => setTimeout(resolve, 30));
            if (tenantId === 'f4') throw new Error('job failed in f4');
            await Item.query().insert({ label: `${tenantId}-job` });
            const raw = await tenancy.knex()('items').count({ n: '*' });
            return { labels: (await Item.query().orderBy('id')).map((i) => i.label), count: Number(raw[0]!.n) };
          } finally {
            inFlight--;
          }
        },
        { concurrency: 2 },
      );
      assert.equal(maxInFlight, 2);
      assert.equal(report.ok, false);
      assert.deepEqual(report.counts, { ok: 5, failed: 1 });
      const f1 = report.tenants[0]!;
      assert.equal(f1.status, 'ok');
      assert.deepEqual(f1.result, { labels: ['f1-a', 'f1-b', 'f1-job'], count: 3 }, 'every query ran on its own tenant');
      assert.ok(f1.durationMs >= 25);
      const f4 = report.tenants[3]!;
      assert.equal(f4.status, 'failed');
      assert.match((f4.error as Error).message, /job failed in f4/);
      assert.equal(f4.result, undefined);
    });

    it('closes the pools it opened and keeps the ones that were already cached', async () => {
      await tenancy.destroy();
      tenancy = createTenancy({ ...backend.connectionOptions(), tenantExists: (id) => catalog.has(id), listTenants: () => TENANTS });
      await tenancy.runWithTenant('f2', () => Item.query().first()); // a hot tenant
      assert.equal(cached(), 1);
      const report = await tenancy.forEachTenant(() => Item.query().resultSize(), { concurrency: 3 });
      assert.ok(report.ok);
      assert.deepEqual(report.tenants.map((t) => t.result), [3, 3, 3, 2, 3, 3]);
      const stats = tenancy.stats();
      assert.equal(cached(), 1, 'only the hot tenant keeps its pool');
      assert.equal(stats.created, 6);
      assert.equal(stats.evictions, 5);
      assert.equal(stats.leases, 0);
      const again = await tenancy.runWithTenant('f2', () => tenancy.knex());
      assert.ok(again, 'the hot pool still serves');
      assert.equal(tenancy.stats().created, 6, 'without being reopened');
    });

    it('reports unknown tenants as failed, without a pool, and stops starting tenants when aborted', async () => {
      const unknown = await tenancy.forEachTenant(() => 1, { tenants: ['f1', 'nope'] });
      assert.deepEqual(unknown.tenants.map((t) => t.status), ['ok', 'failed']);
      assert.ok(unknown.tenants[1]!.error instanceof UnknownTenantError);
      assert.equal(cached(), 1);

      const controller = new AbortController();
      const ran: string[] = [];
      const aborted = await tenancy.forEachTenant(
        async (id) => {
          ran.push(id);
          if (id === 'f1') controller.abort();
          await new Promise((resolve) => setTimeout(resolve, 20));
          return id;
        },
        { concurrency: 2, signal: controller.signal },
      );
      assert.deepEqual(ran.sort(), ['f1', 'f2'], 'the running tenants finished, none started after the abort');
      assert.deepEqual(aborted.counts, { ok: 2, skipped: 4 });
      assert.equal(aborted.aborted, true);
      assert.equal(aborted.ok, false);
    });

    it("does not wait for a pool it opened that live requests still use (a transaction left open): the run goes on", async () => {
      await tenancy.destroy();
      tenancy = createTenancy({ ...backend.connectionOptions(), tenantExists: (id) => catalog.has(id), listTenants: () => TENANTS });
      // A request of its own (not the job's scope): bound outside any scope, it enters f1 afresh.
      const request = bindTenant((work: () => Promise<unknown>) => work());
      let commit: (() => void) | undefined;
      let live: Promise<unknown> | undefined;
      const run = tenancy.forEachTenant(
        async (id) => {
          const count = await Item.query().resultSize();
          if (id === 'f1') {
            // A request of f1 arrives while the job runs on f1's pool and opens a transaction it keeps.
            let opened!: () => void;
            const isOpen = new Promise<void>((resolve) => (opened = resolve));
            live = request(() =>
              tenancy.runWithTenant('f1', () =>
                tenancy.transaction(async () => {
                  await Item.query().resultSize();
                  opened();
                  await new Promise<void>((resolve) => (commit = resolve));
                }),
              ),
            );
            await isOpen;
          }
          return count;
        },
        { concurrency: 1, tenants: ['f1', 'f2', 'f3'] },
      );
      try {
        // Before: the job's evict(f1) waited for the live transaction, and f2 and f3 never started.
        const outcome = await Promise.race([run, new Promise((resolve) => setTimeout(() => resolve('stalled'), 3_000))]);
        assert.notEqual(outcome, 'stalled', 'the run stalled on the live transaction');
        assert.ok((outcome as { ok: boolean }).ok);
        assert.equal(tenancy.stats().leases, 1, 'the live transaction still holds its lease');
      } finally {
        commit?.();
        await live;
        await run;
      }
      assert.equal(tenancy.stats().leases, 0);
    });

    it('throws a TypeError for a missing fn or tenants list', async () => {
      await assert.rejects(tenancy.forEachTenant(undefined as never), TypeError);
      const bare = createTenancy(backend.connectionOptions());
      await assert.rejects(bare.forEachTenant(() => 1), /listTenants/);
      await bare.destroy();
    });
  });
}
