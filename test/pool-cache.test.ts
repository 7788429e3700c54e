/**
 * The tenant pool cache: one opening per tenant under a stampede, failures not cached, LRU cap, idle
 * eviction, draining before destroy, unknown tenants never pooled. Runs on SQLite files and MariaDB.
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import type { Knex } from 'knex';
import {
  createTenancy,
  currentTenantId,
  InvalidTenantIdError,
  runWithTenant,
  setDefaultTenancy,
  TenancyDestroyedError,
  TenantUnavailableError,
  UnknownTenantError,
  type Tenancy,
  type TenancyOptions,
} from '../lib/index';
import { backends, mysqlConnection, skipMysql } from './helpers/databases';

const TENANTS = ['p1', 'p2', 'p3', 'p4'];

for (const backend of backends('pool')) {
  describe(`pool cache on ${backend.name}`, { skip: backend.skip }, () => {
    const tenancies: Tenancy[] = [];
    let configCalls: string[] = [];
    const make = (extra: Partial<TenancyOptions> = {}): Tenancy => {
      const tenancy = createTenancy({
        knexConfig: (id) => {
          configCalls.push(id);
          return backend.knexConfig(id);
        },
        tenantExists: backend.databaseExists,
        ...extra,
      });
      tenancies.push(tenancy);
      return tenancy;
    };
    const dbOf = (tenancy: Tenancy, id: string) =>
      tenancy.runWithTenant(id, async () => {
        await tenancy.knex().schema.createTableIfNotExists('marker', (t) => t.string('id'));
        return tenancy.knex()('marker').count({ n: '*' });
      });

    before(async () => {
      for (const t of TENANTS) await backend.createDatabase(t);
    });
    after(async () => {
      for (const tenancy of tenancies) await tenancy.destroy();
      for (const t of TENANTS) await backend.dropDatabase(t);
      await backend.close();
    });

    it('opens one pool when 200 first requests for a new tenant arrive together', async () => {
      configCalls = [];
      const tenancy = make();
      const knexes = await Promise.all(
        Array.from({ length: 200 }, () => tenancy.runWithTenant('p1', async () => tenancy.knex())),
      );
      assert.equal(new Set(knexes).size, 1, 'every request got the same knex');
      assert.deepEqual(configCalls, ['p1']);
      const stats = tenancy.stats();
      assert.equal(stats.pools, 1);
      assert.equal(stats.created, 1);
      assert.equal(stats.leases, 0, 'every lease was given back');
    });

    it('never opens a pool for a tenant tenantExists rejects, nor for an invalid id', async () => {
      configCalls = [];
      let asked = 0;
      const tenancy = make({ tenantExists: (id) => (asked++, backend.databaseExists(id)) });
      await assert.rejects(tenancy.runWithTenant('nope', () => 1), UnknownTenantError);
      await assert.rejects(tenancy.runWithTenant('../p1', () => 1), InvalidTenantIdError);
      await assert.rejects(tenancy.runWithTenant("p1'; drop database x; --", () => 1), InvalidTenantIdError);
      assert.equal(asked, 1, 'the catalog was asked only about the valid id');
      assert.deepEqual(configCalls, []);
      assert.equal(tenancy.stats().pools, 0);
      assert.equal(await backend.databaseExists('nope'), false, 'nothing was created for the unknown tenant');
    });

    it("a query built in a scope and run after forget() closed that tenant's pool fails with a 503, not an untyped error", async () => {
      const tenancy = make();
      const { query } = await tenancy.runWithTenant('p2', () => ({ query: tenancy.knex().raw('select 1 as one') }));
      await tenancy.forget('p2');
      await assert.rejects(Promise.resolve(query), (error: Error) => error instanceof TenantUnavailableError && /pool was closed/.test(error.message));
      // The tenant itself is served again by a new pool.
      assert.equal(await tenancy.runWithTenant('p2', async () => (await tenancy.knex().raw('select 1 as one')) !== undefined), true);
    });

    it("a query built in a scope and run while that tenant's pool is closing fails with a 503 too, not knex's untyped error or a hang", async () => {
      const tenancy = make();
      const { query, knex } = await tenancy.runWithTenant('p2', () => ({ query: tenancy.knex().raw('select 1 as one'), knex: tenancy.knex() }));
      const pool = () => (knex.client as { pool?: { destroyed?: boolean } }).pool;
      void tenancy.forget('p2');
      // Until knex's destroy() resolves, its tarn pool is there but destroyed.
      for (let i = 0; i < 1000 && pool()?.destroyed !== true; i++) await new Promise<void>((resolve) => queueMicrotask(resolve));
      assert.equal(pool()?.destroyed, true, 'the test did not catch the pool while it closed');
      const started = Date.now();
      await assert.rejects(Promise.resolve(query), (error: Error) => error instanceof TenantUnavailableError && /pool was closed/.test(error.message));
      assert.ok(Date.now() - started < 1_000, `took ${Date.now() - started} ms`);
    });

    it('does not cache a failed opening: the next request tries again', async () => {
      let fail = true;
      const tenancy = make({
        knexConfig: (id) => {
          if (fail) throw new Error('catalog down');
          return backend.knexConfig(id);
        },
      });
      const error = await tenancy.runWithTenant('p2', () => 1).catch((e: unknown) => e);
      assert.ok(error instanceof TenantUnavailableError);
      assert.equal(error.statusCode, 503);
      assert.equal(tenancy.stats().pools, 0);
      assert.equal(tenancy.stats().failures, 1);
      fail = false;
      assert.deepEqual(await dbOf(tenancy, 'p2').then((rows) => rows.length), 1);
      assert.equal(tenancy.stats().pools, 1);
    });

    it('caps pools at maxPools, evicting the least recently used', async () => {
      const tenancy = make({ maxPools: 2 });
      await dbOf(tenancy, 'p1');
      await dbOf(tenancy, 'p2');
      await dbOf(tenancy, 'p1'); // p2 is now the least recently used
      await dbOf(tenancy, 'p3');
      await sleep(50);
      const stats = tenancy.stats();
      assert.equal(stats.pools, 2);
      assert.equal(stats.evictions, 1);
      assert.equal(stats.created, 3);
      configCalls = [];
      await dbOf(tenancy, 'p1');
      assert.deepEqual(configCalls, [], 'p1 stayed cached');
      await dbOf(tenancy, 'p2');
      assert.deepEqual(configCalls, ['p2'], 'p2 was evicted and reopened');
    });

    it('closes pools idle for idleTimeoutMs, not busy ones', async () => {
      const tenancy = make({ idleTimeoutMs: 150 });
      await dbOf(tenancy, 'p1');
      const busy = tenancy.runWithTenant('p2', async () => {
        await sleep(600);
        return tenancy.knex()('marker').count({ n: '*' });
      });
      await sleep(450);
      assert.equal(tenancy.stats().pools, 1, 'p1 was reaped while p2, busy, stayed');
      await busy;
      await sleep(450);
      assert.equal(tenancy.stats().pools, 0);
      assert.ok(tenancy.stats().evictions >= 2);
    });

    it('drains an evicted pool: a scope in flight finishes its queries before the pool is destroyed', async () => {
      const tenancy = make({ maxPools: 1 });
      let inside!: () => void;
      const entered = new Promise<void>((resolve) => (inside = resolve));
      const long = tenancy.runWithTenant('p3', async () => {
        inside();
        await sleep(300);
        return tenancy.knex()('marker').count({ n: '*' });
      });
      await entered;
      await dbOf(tenancy, 'p4'); // evicts p3 while its scope is in flight
      assert.equal(tenancy.stats().draining, 1);
      assert.equal((await long).length, 1, 'the in-flight scope completed on its draining pool');
      await sleep(50);
      assert.equal(tenancy.stats().draining, 0);
      assert.equal(tenancy.stats().pools, 1);
    });

    it('forget() and evict() wait for a pool of the tenant that is already draining (evicted while busy)', async () => {
      const tenancy = make({ maxPools: 1 });
      let inside!: () => void;
      const entered = new Promise<void>((resolve) => (inside = resolve));
      let finished = false;
      const long = tenancy.runWithTenant('p3', async () => {
        inside();
        await sleep(300);
        const rows = await tenancy.knex()('marker').count({ n: '*' });
        finished = true;
        return rows;
      });
      await entered;
      await dbOf(tenancy, 'p4'); // the LRU cap evicts p3 while its scope is in flight: it drains
      assert.equal(tenancy.stats().draining, 1);
      // dropTenant and a move await forget(): it must not return while p3's pool still serves a query.
      await tenancy.forget('p3');
      assert.equal(finished, true, 'forget() returned before the draining pool of p3 had finished its scope');
      assert.equal((await long).length, 1);
      assert.equal(tenancy.stats().draining, 0);
      finished = false;
      const again = tenancy.runWithTenant('p3', async () => {
        await sleep(200);
        finished = true;
      });
      await sleep(50);
      await dbOf(tenancy, 'p4');
      await tenancy.evict('p3');
      assert.equal(finished, true, 'evict() returned before the draining pool had finished');
      await again;
    });

    it('destroy() closes every pool and refuses new scopes', async () => {
      const tenancy = make();
      await dbOf(tenancy, 'p1');
      await dbOf(tenancy, 'p2');
      setDefaultTenancy(tenancy);
      await tenancy.destroy();
      assert.equal(tenancy.stats().pools, 0);
      await assert.rejects(tenancy.runWithTenant('p1', () => 1), TenancyDestroyedError);
      // The free runWithTenant of the destroyed default says so too (before stop 22: TENANCY_MISSING, a 500).
      await assert.rejects(runWithTenant('p1', () => 1), TenancyDestroyedError);
      const next = make();
      try {
        assert.equal(await runWithTenant('p1', () => currentTenantId()), 'p1', 'the next tenancy created is the default');
      } finally {
        await next.destroy();
      }
    });

    it('without a budget, a query waits acquireTimeoutMs for a busy tenant pool (not knex\'s 60 s)', async () => {
      const tenancy = createTenancy({ knexConfig: (id) => ({ ...backend.knexConfig(id), pool: { min: 0, max: 1 } }), acquireTimeoutMs: 300 });
      try {
        let release!: () => void;
        const held = new Promise<void>((resolve) => (release = resolve));
        const holding = tenancy.runWithTenant('p1', () => tenancy.transaction(() => held));
        await sleep(50);
        const started = Date.now();
        await assert.rejects(tenancy.runWithTenant('p1', () => tenancy.knex().raw('select 1')), (error: Error) => error.name === 'KnexTimeoutError');
        const waited = Date.now() - started;
        assert.ok(waited >= 250 && waited < 5_000, `waited ${waited} ms`);
        release();
        await holding;
      } finally {
        await tenancy.destroy();
      }
    });

    // MariaDB only: a SQLite file name has room for any valid id.
    if (backend.name === 'mysql') {
      it('a valid id whose database name the server cannot have (over 64 characters) is an unknown tenant (404), not a 503 to retry', async () => {
        const tenancy = make({ tenantExists: undefined });
        const id = 'x'.repeat(63);
        await assert.rejects(tenancy.runWithTenant(id, () => 1), UnknownTenantError);
        assert.equal(tenancy.stats().pools, 0);
      });
    }

    it("a tenant's pool closed by the app (a withUserParams() copy shares it, and its destroy() closes it) is opened again for the next scope", async () => {
      const tenancy = make();
      await dbOf(tenancy, 'p1');
      await tenancy.runWithTenant('p1', async () => {
        await tenancy.knex().withUserParams({ requestId: 'r1' }).destroy();
      });
      // Before stop 22 every later scope of p1 got "its pool was closed", until the tenancy was destroyed.
      await dbOf(tenancy, 'p1');
      assert.equal(tenancy.stats().pools, 1);
    });

    it('rejects invalid options with a TypeError naming the option', () => {
      assert.throws(() => createTenancy({ knexConfig: backend.knexConfig, maxPools: 0 }), /options\.maxPools/);
      assert.throws(() => createTenancy({} as TenancyOptions), /options\.knexConfig/);
    });
  });
}

describe('pool cache against a bad MariaDB database', { skip: skipMysql }, () => {
  it('maps a dropped database to UnknownTenantError and a dead server to TenantUnavailableError, without caching', async () => {
    const dropped = createTenancy({ knexConfig: () => ({ client: 'mysql2', connection: mysqlConnection('ot_pool_never_created') }) });
    const error = await dropped.runWithTenant('ghost', () => 1).catch((e: unknown) => e);
    assert.ok(error instanceof UnknownTenantError, String(error));
    assert.equal(dropped.stats().pools, 0);
    await dropped.destroy();

    const dead = createTenancy({
      knexConfig: (): Knex.Config => ({ client: 'mysql2', connection: { ...mysqlConnection(), port: 1, password: 'secret-pw' } }),
    });
    const down = await dead.runWithTenant('x', () => 1).catch((e: unknown) => e);
    assert.ok(down instanceof TenantUnavailableError, String(down));
    assert.equal(down.statusCode, 503);
    assert.doesNotMatch(down.message, /secret-pw|127\.0\.0\.1/);
    assert.equal(dead.stats().pools, 0);
    await dead.destroy();
  });
  it('an opening that fails evicts no cached pool, and a tenant whose database is missing is remembered as unknown', async () => {
    // A catalog that says yes to ids whose database is missing (one that compares ids without case, say).
    const opened: string[] = [];
    let asked = 0;
    const tenancy = createTenancy({
      knexConfig: (id) => (opened.push(id), { client: 'mysql2', connection: mysqlConnection(id === 'real' ? 'test' : `ot_pool_missing_${id}`) }),
      tenantExists: () => (asked++, true),
      maxPools: 1,
    });
    try {
      await tenancy.runWithTenant('real', () => tenancy.knex().raw('select 1'));
      for (let i = 0; i < 5; i++) {
        for (const id of ['Real', 'REAL']) await assert.rejects(tenancy.runWithTenant(id, () => 1), UnknownTenantError);
      }
      const stats = tenancy.stats();
      assert.equal(stats.evictions, 0, 'a failed opening evicted the cached pool');
      assert.equal(stats.pools, 1);
      assert.deepEqual(opened, ['real', 'Real', 'REAL'], 'each missing database was opened once, then known as unknown');
      assert.equal(asked, 3);
      assert.equal(stats.catalog?.unknown, 2);
      // forget() (after createTenant) clears it.
      await tenancy.forget('Real');
      await assert.rejects(tenancy.runWithTenant('Real', () => 1), UnknownTenantError);
      assert.equal(asked, 4);
    } finally {
      await tenancy.destroy();
    }
  });
});
