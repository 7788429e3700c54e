/**
 * `tenancy.destroy()`: scopes in flight and connections still in use get `drainTimeoutMs`, then their
 * connections are closed, in every strategy. A transaction left open (`startTransaction()` never
 * committed) kept the pool-per-tenant strategy's destroy() waiting forever (knex's own destroy
 * waits for every connection in use), and the shared strategy's left its connection open.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createTenancy } from '../lib/index';
import { allStrategies, seededTenantSuite } from './helpers/databases';
import { Person } from './helpers/fixtures';

/** `promise`'s outcome, or 'pending' after `ms`. */
function within<T>(promise: Promise<T>, ms: number): Promise<T | 'pending'> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([promise, new Promise<'pending'>((resolve) => (timer = setTimeout(() => resolve('pending'), ms)))]).finally(() => clearTimeout(timer));
}

for (const backend of allStrategies('dst')) {
  describe(`destroy() (${backend.name})`, { skip: backend.skip }, () => {
    const direct = seededTenantSuite(backend, 'a').table;

    it('a transaction left open: destroy() waits drainTimeoutMs, then closes its connection, and the server rolls it back', async () => {
      const tenancy = createTenancy({ ...backend.connectionOptions(), tenantExists: backend.databaseExists });
      await tenancy.runWithTenant('a', async () => {
        const trx = await Person.startTransaction();
        await trx('persons').insert({ name: 'abandoned' });
      });
      // MariaDB: a statement still running at the end of the drain time fails (its connection is
      // closed under it) rather than leave its request waiting.
      const running =
        backend.name === 'sqlite'
          ? undefined
          : tenancy.runWithTenant('a', () => tenancy.knex().raw('select sleep(5)')).then(
              () => 'finished',
              () => 'failed',
            );
      const started = Date.now();
      assert.equal(await within(tenancy.destroy({ drainTimeoutMs: 300 }), 8_000), undefined, 'destroy() settled');
      const took = Date.now() - started;
      assert.ok(took >= 250, `it waited the drain time first (${took} ms)`);
      if (running !== undefined) assert.equal(await within(running, 2_000), 'failed');
      const stats = tenancy.stats();
      assert.equal(stats.leases, 0);
      if (stats.servers !== undefined) assert.deepEqual([stats.servers.main!.open, stats.servers.main!.inUse], [0, 0]);
      else assert.equal(stats.pools, 0);
      // Its connection is gone: the row it wrote was rolled back, and the table is free to write.
      await direct('persons').insert({ name: 'after' });
      assert.deepEqual((await direct('persons').whereIn('name', ['abandoned', 'after']).pluck('name')).sort(), ['after']);
      await direct('persons').where({ name: 'after' }).delete();
    });

    it('with nothing in use, destroy() does not wait; a drainTimeoutMs that is not a duration is refused', async () => {
      const tenancy = createTenancy({ ...backend.connectionOptions(), tenantExists: backend.databaseExists });
      assert.equal((await tenancy.runWithTenant('a', () => Person.query().findById(1)))?.name, 'a-ada');
      await assert.rejects(tenancy.destroy({ drainTimeoutMs: -1 }), TypeError);
      // Longer than Node's timers keep: it would fire at once and close scopes still running.
      await assert.rejects(tenancy.destroy({ drainTimeoutMs: 30 * 24 * 3_600_000 }), TypeError);
      const started = Date.now();
      await tenancy.destroy({ drainTimeoutMs: 5_000 });
      assert.ok(Date.now() - started < 2_000, `took ${Date.now() - started} ms`);
    });
  });
}
