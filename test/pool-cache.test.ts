/**
 * The tenant pool cache: one opening per tenant under a stampede, failures not cached, LRU cap, idle
 * eviction, draining before destroy, unknown tenants never pooled. Runs on SQLite files and MariaDB.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import knexFactory, { type Knex } from 'knex';
import {
  createTenancy,
  currentTenantId,
  InvalidTenantIdError,
  runWithTenant,
  setDefaultTenancy,
  TenancyDestroyedError,
  TenantUnavailableError,
  toHttpError,
  UnknownTenantError,
  type Tenancy,
  type PoolPerTenantOptions, type TenancyCommonOptions, type TenancyOptions,
} from '../lib/index';
import { FILE_RECHECK_MS } from '../lib/sqlite-files';
import { writeMigrations } from './helpers/migrations';
import { backends, mysqlConnection, skipMysql, sqliteBackend, withDirectKnex } from './helpers/databases';

const TENANTS = ['p1', 'p2', 'p3', 'p4'];

for (const backend of backends('pool')) {
  describe(`pool cache on ${backend.name}`, { skip: backend.skip }, () => {
    const tenancies: Tenancy[] = [];
    let configCalls: string[] = [];
    const make = (extra: Partial<PoolPerTenantOptions & TenancyCommonOptions> = {}): Tenancy => {
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

    it('without a budget, a query waits acquireTimeoutMs for a busy tenant pool (not knex\'s 60 s), then fails typed (503)', async () => {
      const tenancy = createTenancy({ knexConfig: (id) => ({ ...backend.knexConfig(id), pool: { min: 0, max: 1 } }), acquireTimeoutMs: 300 });
      try {
        let release!: () => void;
        const held = new Promise<void>((resolve) => (release = resolve));
        const holding = tenancy.runWithTenant('p1', () => tenancy.transaction(() => held));
        await sleep(50);
        const started = Date.now();
        const error = await tenancy.runWithTenant('p1', () => tenancy.knex().raw('select 1')).then(() => 'resolved', (e: unknown) => e);
        const waited = Date.now() - started;
        // Typed like the shared strategy's busy pool (before: knex's untyped KnexTimeoutError, untyped for jobs).
        assert.ok(error instanceof TenantUnavailableError, String(error));
        assert.equal(error.tenantId, 'p1');
        assert.equal((error.cause as Error).name, 'KnexTimeoutError');
        assert.equal(toHttpError(error)?.status, 503);
        assert.ok(waited >= 250 && waited < 5_000, `waited ${waited} ms`);
        release();
        await holding;
      } finally {
        await tenancy.destroy();
      }
    });

    it("under a budget with room, a busy tenant pool fails typed too (503), after the pool's own acquire timeout", async () => {
      const tenancy = createTenancy({ knexConfig: (id) => ({ ...backend.knexConfig(id), pool: { min: 0, max: 1 } }), maxConnections: 5, acquireTimeoutMs: 300 });
      try {
        let release!: () => void;
        const held = new Promise<void>((resolve) => (release = resolve));
        const holding = tenancy.runWithTenant('p1', () => tenancy.transaction(() => held));
        await sleep(50);
        const error = await tenancy.runWithTenant('p1', () => tenancy.knex().raw('select 1')).then(() => 'resolved', (e: unknown) => e);
        assert.ok(error instanceof TenantUnavailableError, String(error));
        assert.equal((error.cause as Error).name, 'KnexTimeoutError');
        assert.equal(tenancy.stats().budget?.used, 1, 'the budget still counts only the held connection');
        // Another tenant is served meanwhile: the budget has room.
        await tenancy.runWithTenant('p2', () => tenancy.knex().raw('select 1'));
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

    it('a tenant moved while its knexConfig() call is in flight: after forget(), the request that awaited that opening opens the tenant afresh, and the old pool is closed', async () => {
      // Tenant "mv" lives on p1's database, then moves to p2's; the first knexConfig() read p1, then waits.
      let where = 'p1';
      let calls = 0;
      let read!: () => void;
      const firstRead = new Promise<void>((resolve) => (read = resolve));
      let letGo!: () => void;
      const held = new Promise<void>((resolve) => (letGo = resolve));
      const tenancy = make({
        tenantExists: () => true,
        knexConfig: async (id) => {
          if (id !== 'mv') return backend.knexConfig(id);
          const config = backend.knexConfig(where);
          if (++calls === 1) {
            read();
            await held;
          }
          return config;
        },
      });
      const marked = (id: string) => tenancy.runWithTenant(id, async () => {
        await tenancy.knex().schema.createTableIfNotExists('moves', (t) => t.string('tag'));
      });
      await marked('p1');
      await marked('p2');
      const early = tenancy.runWithTenant('mv', async () => {
        await tenancy.knex()('moves').insert({ tag: 'early' });
        return tenancy.knex();
      });
      await firstRead;
      where = 'p2';
      let earlyDone = false;
      void early.then(() => (earlyDone = true), () => undefined);
      // forget() (as dropTenant awaits it) settles only once that request, opened afresh, is done.
      const forgotten = tenancy.forget('mv').then(() => earlyDone);
      letGo();
      const knex = await early;
      assert.equal(await forgotten, true, 'forget() settled while the request it sent to the new pool still ran');
      const tags = (id: string) => tenancy.runWithTenant(id, () => tenancy.knex()('moves').pluck('tag'));
      assert.deepEqual(await tags('p1'), [], 'the request that awaited the opening begun before forget() wrote to the old location');
      assert.deepEqual(await tags('p2'), ['early']);
      assert.equal(calls, 2, 'knexConfig() was asked again');
      assert.equal(tenancy.stats().draining, 0, 'the pool opened on the old location was closed');
      assert.equal(await tenancy.runWithTenant('mv', () => tenancy.knex()), knex, 'the new pool is the one cached');
    });

    it('rejects invalid options with a TypeError naming the option', async () => {
      assert.throws(() => createTenancy({ knexConfig: backend.knexConfig, maxPools: 0 }), /options\.maxPools/);
      assert.throws(() => createTenancy({} as TenancyOptions), /options\.knexConfig/);
      // A union keyed on `strategy`: what the run-time check refuses does not compile either.
      // @ts-expect-error: no knexConfig (pool-per-tenant is the default)
      assert.throws(() => createTenancy({}), /options\.knexConfig/);
      // @ts-expect-error: 'shared' needs servers and locate
      assert.throws(() => createTenancy({ strategy: 'shared' }), /options\.servers/);
      const servers = { main: { client: 'mysql2', connection: { host: '127.0.0.1' } } };
      const locate = (id: string) => ({ server: 'main', database: id });
      // @ts-expect-error: a pool per tenant's budget is not the shared strategy's (its servers' pool.max is)
      assert.throws(() => createTenancy({ strategy: 'shared', servers, locate, maxConnections: 10 }), /maxConnections applies to strategy 'pool-per-tenant' only/);
      // @ts-expect-error: knexConfig beside servers
      assert.throws(() => createTenancy({ strategy: 'shared', servers, locate, knexConfig: backend.knexConfig }), /knexConfig applies to strategy 'pool-per-tenant' only/);
      // @ts-expect-error: maxTenants caps the shared strategy's handles, not pools (maxPools does)
      assert.throws(() => createTenancy({ knexConfig: backend.knexConfig, maxTenants: 10 }), /maxTenants applies to strategy 'shared' only/);
      // A shared flag at its default (false) is accepted: a config shared by both strategies.
      await createTenancy({ knexConfig: backend.knexConfig, qualifyTables: false, inlineSwitch: false, resetSession: false }).destroy();
      // @ts-expect-error: servers without strategy 'shared'
      assert.throws(() => createTenancy({ knexConfig: backend.knexConfig, servers }), /servers applies to strategy 'shared' only/);
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

describe('pool cache on SQLite files removed or replaced by another process', () => {
  const backend = sqliteBackend('poolfile');
  const tenancies: Tenancy[] = [];
  const make = (extra: Partial<PoolPerTenantOptions & TenancyCommonOptions> = {}): Tenancy => {
    const tenancy = createTenancy({ knexConfig: backend.knexConfig, ...extra });
    tenancies.push(tenancy);
    return tenancy;
  };
  const file = (id: string) => (backend.knexConfig(id).connection as { filename: string }).filename;
  /** What another process's dropTenant then createTenant leave: a new file at the same path. */
  const incarnation = async (id: string, name: string) => {
    await backend.dropDatabase(id);
    await backend.createDatabase(id);
    await withDirectKnex(backend, id, async (knex) => {
      await knex.schema.createTable('names', (t) => t.string('name'));
      await knex('names').insert({ name });
    });
  };
  const names = (tenancy: Tenancy, id: string) => tenancy.runWithTenant(id, () => tenancy.knex()('names').pluck('name'));
  after(async () => {
    for (const tenancy of tenancies) await tenancy.destroy();
    await backend.close();
  });

  it("a file removed by another process while its tenant's first connection waits for the budget is not created again: UnknownTenantError", async () => {
    await incarnation('w1', 'w1-row');
    await incarnation('w2', 'w2-row');
    const tenancy = make({ maxConnections: 1, acquireTimeoutMs: 3_000 });
    let releaseW1!: () => void;
    const holding = tenancy.runWithTenant('w1', () =>
      tenancy.transaction(async (trx) => {
        await trx.raw('select 1');
        await new Promise<void>((resolve) => (releaseW1 = resolve));
      }),
    );
    await sleep(100);
    const waiting = tenancy.runWithTenant('w2', () => tenancy.knex()('names').pluck('name')).catch((error: unknown) => error);
    await sleep(100);
    fs.rmSync(file('w2'));
    releaseW1();
    await holding;
    assert.ok((await waiting) instanceof UnknownTenantError, String(await waiting));
    assert.equal(fs.existsSync(file('w2')), false, 'no empty file was created');
    assert.equal(tenancy.stats().budget?.used, 0);
  });

  it('a write refused as SQLITE_BUSY (another connection holds the file past the busy timeout) is answered 503 with Retry-After', async () => {
    await incarnation('busy1', 'row');
    const tenancy = make({ knexConfig: (id) => ({ ...backend.knexConfig(id), connection: { ...(backend.knexConfig(id).connection as object), options: { timeout: 50 } } }) as Knex.Config });
    const holder = knexFactory({ client: 'better-sqlite3', connection: { filename: file('busy1') }, useNullAsDefault: true, pool: { min: 1, max: 1 } });
    try {
      await holder.transaction(async (trx) => {
        await trx('names').insert({ name: 'holding the write lock' });
        const error = await tenancy.runWithTenant('busy1', () => tenancy.knex()('names').insert({ name: 'waits' })).catch((e: unknown) => e);
        assert.equal((error as { code?: string }).code, 'SQLITE_BUSY', String(error));
        const answer = toHttpError(error);
        assert.equal(answer?.status, 503);
        assert.equal(answer?.retryAfter, 1);
      });
    } finally {
      await holder.destroy();
    }
  });

  it("a transaction whose SQLite connection destroy() closed after its drain time fails answered 503, as a lost MariaDB connection is", async () => {
    await incarnation('dc1', 'row');
    const tenancy = createTenancy({ knexConfig: backend.knexConfig });
    const outcome = tenancy.runWithTenant('dc1', () =>
      tenancy.transaction(async (trx) => {
        await trx('names').insert({ name: 'first' });
        await sleep(400);
        await trx('names').insert({ name: 'second' });
      }),
    ).then(() => 'committed', (error: unknown) => error);
    await sleep(50);
    await tenancy.destroy({ drainTimeoutMs: 100 });
    const error = await outcome;
    // better-sqlite3's TypeError "The database connection is not open": untyped for errorHandler before.
    assert.equal(toHttpError(error)?.status, 503, String(error));
  });

  it('in WAL mode (where SQLite raises no SQLITE_READONLY_DBMOVED) a write on a pool whose file was replaced or removed fails with a 503: nothing is acknowledged and lost', async () => {
    await incarnation('wal1', 'old');
    const wal: Knex.PoolConfig['afterCreate'] = (conn: { pragma(sql: string): unknown }, done: (error: unknown, conn: unknown) => void) => {
      conn.pragma('journal_mode = WAL');
      done(null, conn);
    };
    const tenancy = make({ knexConfig: (id) => ({ ...backend.knexConfig(id), pool: { afterCreate: wal } }) });
    const removeWithWal = (id: string) => {
      for (const suffix of ['', '-wal', '-shm']) fs.rmSync(`${file(id)}${suffix}`, { force: true });
    };
    assert.deepEqual(await names(tenancy, 'wal1'), ['old']);
    // Another process drops and creates the tenant again, within the pool's 1 s recheck.
    removeWithWal('wal1');
    await incarnation('wal1', 'new');
    const replaced = await tenancy.runWithTenant('wal1', () => tenancy.knex()('names').insert({ name: 'acknowledged-then-lost' })).catch((e: unknown) => e);
    assert.ok(replaced instanceof TenantUnavailableError, `before: the insert resolved and the row was lost (${String(replaced)})`);
    assert.deepEqual(await names(tenancy, 'wal1'), ['new']);
    // A write that starts with WITH is checked too (it was taken for a read).
    removeWithWal('wal1');
    await incarnation('wal1', 'newer');
    const withWrite = await tenancy
      .runWithTenant('wal1', () => tenancy.knex().raw("with x as (select 'cte-write' as name) insert into names (name) select name from x"))
      .catch((e: unknown) => e);
    assert.ok(withWrite instanceof TenantUnavailableError, `a WITH ... INSERT: ${String(withWrite)}`);
    assert.deepEqual(await names(tenancy, 'wal1'), ['newer']);
    // A transaction opened with a top-level SAVEPOINT commits with its RELEASE (SQLite's other form of
    // BEGIN ... COMMIT): that RELEASE is checked as the COMMIT is (it reported success, the row lost).
    removeWithWal('wal1');
    await incarnation('wal1', 'newest');
    await tenancy.evict('wal1');
    assert.deepEqual(await names(tenancy, 'wal1'), ['newest']);
    const released = await tenancy
      .runWithTenant('wal1', async () => {
        const knex = tenancy.knex();
        await knex.raw('savepoint s1');
        await knex.raw("insert into names (name) values ('released')");
        // Another process drops and creates the tenant again before the RELEASE.
        removeWithWal('wal1');
        await incarnation('wal1', 'after-release');
        await knex.raw('release s1');
      })
      .catch((e: unknown) => e);
    assert.ok(released instanceof TenantUnavailableError, `a top-level RELEASE: ${String(released)}`);
    assert.deepEqual(await names(tenancy, 'wal1'), ['after-release']);
    // Removed for good, under a cached pool: a write in a transaction fails too, then the tenant is unknown.
    removeWithWal('wal1');
    const removed = await tenancy.runWithTenant('wal1', () => tenancy.transaction((trx) => trx('names').insert({ name: 'lost' }))).catch((e: unknown) => e);
    assert.ok(removed instanceof TenantUnavailableError, String(removed));
    await assert.rejects(names(tenancy, 'wal1'), UnknownTenantError);
    assert.equal(fs.existsSync(file('wal1')), false, 'no file was created again');
  });

  it('a file switched to WAL mode by another connection after the pool wrote (a migration, a script), then replaced: the next write fails with a 503, not acknowledged and lost', async () => {
    await incarnation('wal2', 'old');
    const tenancy = make();
    await tenancy.runWithTenant('wal2', () => tenancy.knex()('names').insert({ name: 'journal-mode write' }));
    await withDirectKnex(backend, 'wal2', (knex) => knex.raw('pragma journal_mode = WAL'));
    // The serving connection follows the file into WAL mode at its next read.
    assert.deepEqual(await names(tenancy, 'wal2'), ['old', 'journal-mode write']);
    // (Upper case: the check before had its cached mode read again after a statement naming journal_mode.)
    assert.equal(await tenancy.runWithTenant('wal2', async () => (await tenancy.knex().raw('PRAGMA JOURNAL_MODE'))[0].journal_mode), 'wal');
    for (const suffix of ['', '-wal', '-shm']) fs.rmSync(`${file('wal2')}${suffix}`, { force: true });
    await incarnation('wal2', 'new');
    const write = await tenancy.runWithTenant('wal2', () => tenancy.knex()('names').insert({ name: 'acknowledged-then-lost' })).catch((e: unknown) => e);
    assert.ok(write instanceof TenantUnavailableError, `the insert resolved and the row was lost (${String(write)})`);
    assert.deepEqual(await names(tenancy, 'wal2'), ['new']);
  });

  it("busy_timeout set in pool.afterCreate bounds better-sqlite3's synchronous wait for a locked file (knex does not pass connection.options.timeout on)", async () => {
    await incarnation('busy1', 'row');
    const tenancy = make({
      knexConfig: (id) => ({
        ...backend.knexConfig(id),
        pool: {
          afterCreate: (conn: { pragma(sql: string): unknown }, done: (error: unknown, conn: unknown) => void) => {
            conn.pragma('busy_timeout = 200');
            done(null, conn);
          },
        },
      }),
    });
    await names(tenancy, 'busy1');
    const holder = knexFactory({ ...backend.knexConfig('busy1'), pool: { min: 1, max: 1 } });
    try {
      await holder.transaction(async (trx) => {
        await trx('names').insert({ name: 'holds the write lock' });
        const started = Date.now();
        const error = await tenancy.runWithTenant('busy1', () => tenancy.knex()('names').insert({ name: 'waits' })).catch((e: unknown) => e);
        const waited = Date.now() - started;
        assert.equal(toHttpError(error)?.status, 503, String(error));
        assert.ok(waited < 1_500, `waited ${waited} ms (the default is 5 s)`);
      });
    } finally {
      await holder.destroy();
    }
  });

  it('a relative filename is the file it named when the pool opened: a connection opened after process.chdir() reads it, and makes no stray file', async () => {
    await incarnation('rel1', 'here');
    const tenancy = make({ knexConfig: () => ({ client: 'better-sqlite3', connection: { filename: path.basename(file('rel1')) }, useNullAsDefault: true, pool: { min: 0, max: 1, idleTimeoutMillis: 30, reapIntervalMillis: 10 } }) });
    const elsewhere = fs.mkdtempSync(path.join(os.tmpdir(), 'ot-chdir-'));
    const cwd = process.cwd();
    try {
      process.chdir(path.dirname(file('rel1')));
      assert.deepEqual(await names(tenancy, 'rel1'), ['here']);
      process.chdir(elsewhere);
      await sleep(150); // the idle connection is closed; the next one is opened after the chdir
      assert.deepEqual(await names(tenancy, 'rel1'), ['here']);
      assert.deepEqual(fs.readdirSync(elsewhere), [], 'a stray file was made in the new working directory');
    } finally {
      process.chdir(cwd);
      fs.rmSync(elsewhere, { recursive: true, force: true });
    }
  });

  it("a tenant whose file would be named like another tenant's side file (no extension: acme-journal is acme's journal) is refused with 400; no file is made", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ot-sidefile-'));
    const files = writeMigrations();
    const tenancy = make({
      knexConfig: (id) => ({ client: 'better-sqlite3', connection: { filename: path.join(dir, id) }, useNullAsDefault: true }),
      migrations: { directory: files.migrations },
    });
    try {
      await tenancy.createTenant('acme', { seed: false });
      await tenancy.runWithTenant('acme', () => tenancy.knex().raw('create table t (v text)'));
      for (const id of ['acme-journal', 'acme-wal', 'acme-shm']) {
        await assert.rejects(tenancy.createTenant(id), InvalidTenantIdError);
        await assert.rejects(tenancy.runWithTenant(id, () => 1), InvalidTenantIdError);
        const status = await tenancy.migrate.status({ tenants: [id] });
        assert.equal(status.tenants[0]!.error?.name, 'InvalidTenantIdError');
      }
      await tenancy.runWithTenant('acme', () => tenancy.knex()('t').insert({ v: 'x' }));
      assert.deepEqual(fs.readdirSync(dir), ['acme'], 'no side-file-named tenant file was made');
      assert.equal(tenancy.stats().pools, 1);
    } finally {
      await tenancy.destroy();
      files.cleanup();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a savepoint's RELEASE inside a transaction while the file cannot be checked (its directory briefly replaced): not refused, since the transaction's COMMIT is what writes: the app is not told a saved write failed", async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'ot-release-'));
    const dir = path.join(root, 'd');
    fs.mkdirSync(dir);
    const own = make({ knexConfig: (id) => ({ client: 'better-sqlite3', connection: { filename: path.join(dir, `${id}.sqlite`) }, useNullAsDefault: true }) });
    const direct = knexFactory({ client: 'better-sqlite3', connection: { filename: path.join(dir, 't.sqlite') }, useNullAsDefault: true });
    try {
      await direct.schema.createTable('names', (t) => t.string('name'));
      await direct.destroy();
      let nested = '';
      await own.runWithTenant('t', () =>
        own.transaction(async (trx) => {
          await trx('names').insert({ name: 'outer' });
          nested = await trx
            .transaction(async (inner) => {
              await inner('names').insert({ name: 'nested' });
              // statSync of the file now fails with ENOTDIR, not ENOENT: the file cannot be checked.
              fs.renameSync(dir, `${dir}.real`);
              fs.writeFileSync(dir, '');
            })
            .then(
              () => 'released',
              (error: unknown) => `refused: ${String(error)}`,
            );
          fs.rmSync(dir);
          fs.renameSync(`${dir}.real`, dir);
        }),
      );
      assert.equal(nested, 'released');
      const saved = await own.runWithTenant('t', () => own.knex()('names').pluck('name'));
      assert.deepEqual(saved.sort(), ['nested', 'outer']);
    } finally {
      if (fs.existsSync(`${dir}.real`)) {
        fs.rmSync(dir, { force: true });
        fs.renameSync(`${dir}.real`, dir);
      }
      fs.rmSync(root, { recursive: true, force: true });
    }
  });

  it("better-sqlite3 with a filename that starts with file: (a plain path to it: no URI support): an unknown tenant is refused, no file made; a registered tenant whose name the file system refuses is dropped and unregistered", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ot-fileuri-'));
    const files = writeMigrations();
    const registered = new Set<string>(['x'.repeat(300)]);
    const tenancy = make({
      knexConfig: (id) => ({ client: 'better-sqlite3', connection: { filename: `file:${id}.sqlite` }, useNullAsDefault: true }),
      migrations: { directory: files.migrations },
      tenantIdPattern: /^[a-z]{1,400}$/,
      unregisterTenant: (id) => void registered.delete(id),
    });
    const cwd = process.cwd();
    process.chdir(dir);
    try {
      await tenancy.createTenant('real', { seed: false });
      assert.ok(fs.existsSync(path.join(dir, 'file:real.sqlite')));
      const ghost = await tenancy.runWithTenant('ghost', () => tenancy.knex()('people').select()).catch((e: unknown) => e);
      assert.ok(ghost instanceof UnknownTenantError, `before: a raw SqliteError, and a file made (${String(ghost)})`);
      assert.deepEqual(fs.readdirSync(dir).sort(), ['file:real.sqlite']);
      // 300 characters: the file system refuses the name (ENAMETOOLONG), so no such file can exist.
      await tenancy.dropTenant('x'.repeat(300), { confirm: 'x'.repeat(300) });
      assert.equal(registered.size, 0, 'unregistered (the drop failed with ENAMETOOLONG before)');
    } finally {
      process.chdir(cwd);
      files.cleanup();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a connection given as a function (knex\'s dynamic form): a missing file is an unknown tenant for serving, status and latest, and none is created', async () => {
    const files = writeMigrations();
    const tenancy = make({
      knexConfig: (id) => ({ client: 'better-sqlite3', connection: () => ({ filename: file(id) }), useNullAsDefault: true }),
      migrations: { directory: files.migrations },
    });
    try {
      await backend.dropDatabase('fn1');
      await assert.rejects(tenancy.runWithTenant('fn1', () => tenancy.knex().raw('select 1')), UnknownTenantError);
      for (const run of [() => tenancy.migrate.status({ tenants: ['fn1'] }), () => tenancy.migrate.latest({ tenants: ['fn1'] })]) {
        const report = await run();
        assert.equal(report.tenants[0]!.error?.name, 'UnknownTenantError', JSON.stringify(report.tenants[0]));
      }
      assert.equal(fs.existsSync(file('fn1')), false, 'a file was created for a tenant that does not exist');
      await incarnation('fn1', 'there');
      assert.deepEqual(await names(tenancy, 'fn1'), ['there']);
    } finally {
      files.cleanup();
    }
  });

  it('a write on a pool whose file was replaced fails with a 503 and closes that pool: the next request reads the new file', async () => {
    await incarnation('f1', 'old');
    const tenancy = make();
    assert.deepEqual(await names(tenancy, 'f1'), ['old']);
    await incarnation('f1', 'new');
    const error = await tenancy.runWithTenant('f1', () => tenancy.knex()('names').insert({ name: 'lost' })).catch((e: unknown) => e);
    assert.ok(error instanceof TenantUnavailableError, String(error));
    assert.equal(error.statusCode, 503);
    assert.deepEqual(await names(tenancy, 'f1'), ['new'], 'the stale pool was served again');
    // In a transaction (knex builds its client from the driver's prototype) as well.
    await incarnation('f1', 'newer');
    const inTransaction = await tenancy.runWithTenant('f1', () => tenancy.transaction((trx) => trx('names').insert({ name: 'lost' }))).catch((e: unknown) => e);
    assert.ok(inTransaction instanceof TenantUnavailableError, String(inTransaction));
    assert.deepEqual(await names(tenancy, 'f1'), ['newer'], 'the stale pool was served again after a transaction');
    await tenancy.runWithTenant('f1', () => tenancy.knex()('names').insert({ name: 'kept' }));
    assert.deepEqual(await withDirectKnex(backend, 'f1', (knex) => knex('names').pluck('name')), ['newer', 'kept']);
  });

  it('a pool whose file was replaced is not served past FILE_RECHECK_MS, even under steady reads', async () => {
    await incarnation('f2', 'old');
    const tenancy = make();
    assert.deepEqual(await names(tenancy, 'f2'), ['old']);
    await incarnation('f2', 'new');
    const started = Date.now();
    let seen: string[] = [];
    while (Date.now() - started < FILE_RECHECK_MS + 300) {
      seen = await names(tenancy, 'f2');
      await sleep(20);
    }
    assert.deepEqual(seen, ['new'], 'the deleted incarnation was still served');
    assert.equal(tenancy.stats().pools, 1);
  });

  it('a pool whose file was removed answers UnknownTenantError past FILE_RECHECK_MS, and creates no file', async () => {
    await incarnation('f3', 'old');
    const tenancy = make();
    assert.deepEqual(await names(tenancy, 'f3'), ['old']);
    await backend.dropDatabase('f3');
    await sleep(FILE_RECHECK_MS + 50);
    await assert.rejects(names(tenancy, 'f3'), UnknownTenantError);
    assert.equal(fs.existsSync(file('f3')), false, 'opening the tenant created its file again');
    await sleep(50); // the stale pool closes
    assert.equal(tenancy.stats().pools, 0);
  });

  it('a tenant whose file is missing is unknown: no pool, no file, even when the catalog says yes', async () => {
    const tenancy = make({ tenantExists: () => true });
    await assert.rejects(tenancy.runWithTenant('ghost', () => 1), UnknownTenantError);
    assert.equal(fs.existsSync(file('ghost')), false, 'opening the tenant created an empty file');
    assert.equal(tenancy.stats().pools, 0);
    // A cached pool whose connection was closed while idle does not create the file either.
    await incarnation('f4', 'old');
    const reaped = make({ knexConfig: (id) => ({ ...backend.knexConfig(id), pool: { idleTimeoutMillis: 20, reapIntervalMillis: 10 } }) });
    assert.deepEqual(await names(reaped, 'f4'), ['old']);
    await sleep(150);
    await backend.dropDatabase('f4');
    await assert.rejects(names(reaped, 'f4'), UnknownTenantError);
    assert.equal(fs.existsSync(file('f4')), false, 'a new connection of the cached pool created the file again');
  });

  it('connection.options.fileMustExist: false lets opening create the file', async () => {
    const tenancy = make({
      knexConfig: (id) => {
        const config = backend.knexConfig(id);
        return { ...config, connection: { ...(config.connection as object), options: { fileMustExist: false } } } as Knex.Config;
      },
    });
    assert.equal(await tenancy.runWithTenant('made', () => 'served'), 'served');
    assert.equal(fs.existsSync(file('made')), true);
  });
});

describe('a server that accepts connections and never answers (pool per tenant)', () => {
  it('fails the tenant within acquireTimeoutMs, not mysql2 connectTimeout (10 s) later', async () => {
    const sockets = new Set<net.Socket>();
    const silent = net.createServer((socket) => void sockets.add(socket));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as net.AddressInfo).port;
    const tenancy = createTenancy({ knexConfig: (id) => ({ client: 'mysql2', connection: { host: '127.0.0.1', port, user: 'root', database: `ot_silent_${id}` } }), acquireTimeoutMs: 500 });
    try {
      const started = Date.now();
      await assert.rejects(tenancy.runWithTenant('a', () => tenancy.knex().raw('select 1')), TenantUnavailableError);
      assert.ok(Date.now() - started < 3_000, `failed after ${Date.now() - started} ms`);
      assert.equal(tenancy.stats().pools, 0, 'no pool is cached for it');
    } finally {
      await tenancy.destroy({ drainTimeoutMs: 0 });
      for (const socket of sockets) socket.destroy();
      silent.close();
    }
  });

  it("under a budget, its failed openings give their units back within about acquireTimeoutMs: healthy tenants are served", { skip: skipMysql }, async () => {
    const sockets = new Set<net.Socket>();
    const silent = net.createServer((socket) => void sockets.add(socket));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as net.AddressInfo).port;
    const tenancy = createTenancy({
      knexConfig: (id) =>
        id === 'ok' ? { client: 'mysql2', connection: mysqlConnection() } : { client: 'mysql2', connection: { host: '127.0.0.1', port, user: 'root', database: `ot_silent_${id}` } },
      maxConnections: 2,
      acquireTimeoutMs: 500,
    });
    try {
      for (const id of ['dead1', 'dead2']) await assert.rejects(tenancy.runWithTenant(id, () => tenancy.knex().raw('select 1')), TenantUnavailableError);
      await sleep(600);
      const started = Date.now();
      await tenancy.runWithTenant('ok', () => tenancy.knex().raw('select 1'));
      assert.ok(Date.now() - started < 1_000, `served after ${Date.now() - started} ms`);
    } finally {
      await tenancy.destroy({ drainTimeoutMs: 0 });
      for (const socket of sockets) socket.destroy();
      silent.close();
    }
  });

  it('bounds the operations by acquireTimeoutMs too: migrate.status, createTenant and dropTenant fail typed, not 10-20 s later', async () => {
    const sockets = new Set<net.Socket>();
    const silent = net.createServer((socket) => void sockets.add(socket));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as net.AddressInfo).port;
    const files = writeMigrations();
    const tenancy = createTenancy({
      knexConfig: (id) => ({ client: 'mysql2', connection: { host: '127.0.0.1', port, user: 'root', database: `ot_silent_${id}` } }),
      acquireTimeoutMs: 500,
      migrations: { directory: files.migrations },
    });
    const timed = async (what: string, run: () => Promise<unknown>) => {
      const started = Date.now();
      const outcome = await run().catch((error: unknown) => error);
      assert.ok(Date.now() - started < 3_000, `${what} ended after ${Date.now() - started} ms`);
      return outcome;
    };
    try {
      const status = (await timed('migrate.status', () => tenancy.migrate.status({ tenants: ['a'] }))) as { tenants: { status: string; error?: unknown }[] };
      assert.equal(status.tenants[0]!.status, 'failed');
      assert.ok(status.tenants[0]!.error instanceof TenantUnavailableError, String(status.tenants[0]!.error));
      const created = await timed('createTenant', () => tenancy.createTenant('a'));
      assert.equal((created as { code?: string }).code, 'TENANT_CREATE_FAILED');
      const dropped = await timed('dropTenant', () => tenancy.dropTenant('a', { confirm: 'a' }));
      assert.equal((dropped as { code?: string }).code, 'TENANT_DROP_FAILED');
      // A knexConfig whose connection is a URL, or a connection provider: bounded the same way.
      for (const connection of [`mysql://root@127.0.0.1:${port}/ot_silent_u`, async () => ({ host: '127.0.0.1', port, user: 'root', database: 'ot_silent_p' })]) {
        const other = createTenancy({ knexConfig: () => ({ client: 'mysql2', connection: connection as never }), acquireTimeoutMs: 500, migrations: { directory: files.migrations } });
        try {
          const report = (await timed(`migrate.status (${typeof connection})`, () => other.migrate.status({ tenants: ['u'] }))) as { tenants: { status: string }[] };
          assert.equal(report.tenants[0]!.status, 'failed');
        } finally {
          await other.destroy({ drainTimeoutMs: 0 });
        }
      }
    } finally {
      await tenancy.destroy({ drainTimeoutMs: 0 });
      for (const socket of sockets) socket.destroy();
      silent.close();
      files.cleanup();
    }
  });

  it("a knexConfig() or locate() that never settles fails the operations within acquireTimeoutMs too: no dropTenant() left hanging with its tenant 'being dropped'", async () => {
    const files = writeMigrations();
    const never = () => new Promise<never>(() => undefined);
    const tenancies = [
      createTenancy({ knexConfig: never, acquireTimeoutMs: 300, migrations: { directory: files.migrations } }),
      createTenancy({ strategy: 'shared', servers: { main: { client: 'mysql2', connection: { host: '127.0.0.1', user: 'root' } } }, locate: never, acquireTimeoutMs: 300, migrations: { directory: files.migrations } }),
    ];
    try {
      for (const tenancy of tenancies) {
        const within = <T>(what: string, promise: Promise<T>) =>
          Promise.race([promise.then((value) => value, (error: unknown) => error), new Promise((resolve) => setTimeout(resolve, 3_000, `${what} still pending after 3 s`))]);
        const status = (await within('migrate.status', tenancy.migrate.status({ tenants: ['h'] }))) as { tenants?: { status: string }[] };
        assert.equal(status.tenants?.[0]?.status, 'failed', String(status));
        const dropped = await within('dropTenant', tenancy.dropTenant('h', { confirm: 'h' }));
        assert.equal((dropped as { code?: string }).code, 'TENANT_DROP_FAILED', String(dropped));
        const created = await within('createTenant', tenancy.createTenant('h'));
        assert.equal((created as { code?: string }).code, 'TENANT_CREATE_FAILED', String(created));
      }
    } finally {
      for (const tenancy of tenancies) await tenancy.destroy({ drainTimeoutMs: 0 });
      files.cleanup();
    }
  });
});
