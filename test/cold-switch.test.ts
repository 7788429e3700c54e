/**
 * The shared strategy's cold-switch limit (`maxSwitchedConnections`) and its tenant-handle cache
 * (`maxTenants`), on real MariaDB. A switch to a database the pool has not used lately makes the
 * server open that tenant's tables; the limit bounds how many connections do that at once, counted on
 * the server (processlist), while tenants used lately (warm) and connections already on their
 * tenant's database go ahead. The negative control runs the same load with no limit and must exceed
 * it, so the bound is a property of the option, not of the load.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it } from 'node:test';
import knexFactory, { type Knex } from 'knex';
import { raw } from 'objection';
import { createTenancy, TenantModel, TenantUnavailableError, UnknownTenantError, type Tenancy, type SharedPoolOptions, type TenancyCommonOptions } from '../lib/index';
import { mysqlConnection, skipMysql } from './helpers/databases';
import { knexWithStatementHook } from './helpers/statement-hook';

const TENANTS = Array.from({ length: 10 }, (_, i) => `c${i}`);
const db = (t: string) => `ot_cold_${t}`;
const SLEEP = 0.15;

/** Each tenant database's one table. */
class Marker extends TenantModel {
  static override tableName = 'marker';
  static override idColumn = 'tenant_id';
}

/** A `createKnex` whose connections send `replacement` instead of the pool's first sizing read ('auto'); `reads.n` counts the reads. */
function firstSizingReadSends(replacement: string, reads: { n: number }): (config: Knex.Config) => Knex {
  return knexWithStatementHook(() => (send, sql, rest) => {
    const sizing = typeof sql === 'string' && sql.startsWith('SHOW GLOBAL VARIABLES');
    return send(sizing && reads.n++ === 0 ? replacement : sql, ...rest);
  });
}

/** A promise and the function that resolves it. */
function gate(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

describe('shared strategy, cold-switch limit and tenant-handle cache', { skip: skipMysql }, () => {
  let admin: Knex;
  let tenancy: Tenancy | undefined;
  const { database: _database, ...server } = mysqlConnection();
  void _database;
  const open = (options: Partial<SharedPoolOptions & TenancyCommonOptions> & { max?: number } = {}) => {
    const { max = 8, ...rest } = options;
    return (tenancy = createTenancy({
      strategy: 'shared',
      servers: { main: { client: 'mysql2', connection: server, pool: { max } } },
      // 'gone' is a tenant whose database does not exist.
      locate: (id) => ({ server: 'main', database: id === 'gone' ? 'ot_cold_gone' : db(id) }),
      verifyConnection: false,
      ...rest,
    }));
  };
  const mainStats = () => tenancy!.stats().servers!.main!;
  /** Holds a connection on the tenant's database for SLEEP seconds; answers the database it ran on. */
  const slow = (t: string) =>
    tenancy!.runWithTenant(t, async () => {
      const [rows] = await tenancy!.knex().raw(`select sleep(${SLEEP}) as s, database() as d, (select tenant_id from marker) as m`);
      return (rows as { d: string; m: string }[])[0]!;
    });
  const quick = (t: string) =>
    tenancy!.runWithTenant(t, async () => {
      const [rows] = await tenancy!.knex().raw('select database() as d, (select tenant_id from marker) as m');
      return (rows as { d: string; m: string }[])[0]!;
    });

  /**
   * Starts `slowFirst` (c1 takes the only permit with a slow first statement), then asks for cold c2:
   * c2 must be served only once that statement has ended, the permit still held until then.
   */
  async function servedAfter(slowFirst: () => Promise<unknown>): Promise<void> {
    let finished = 0;
    const first = slowFirst().then(() => (finished = Date.now()));
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal((await quick('c2')).m, 'c2');
    const served = Date.now();
    await first;
    assert.ok(served >= finished, `c2 was served ${finished - served} ms before c1's first statement ended`);
  }

  /** Runs `work` while sampling how many statements of this suite's sleep run on tenant databases. */
  async function peakSleeping<T>(work: () => Promise<T>): Promise<{ result: T; peak: number }> {
    let peak = 0;
    let running = true;
    const sampler = (async () => {
      while (running) {
        const [rows] = await admin.raw(
          "select count(*) as n from information_schema.processlist where db like 'ot\\_cold\\_%' and command = 'Query' and info like ?",
          [`%sleep(${SLEEP})%`],
        );
        peak = Math.max(peak, Number((rows as { n: number }[])[0]!.n));
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    })();
    try {
      const result = await work();
      return { result, peak };
    } finally {
      running = false;
      await sampler;
    }
  }

  /** A database per tenant with one table, `marker`, holding the tenant's id. */
  async function createMarkedDatabases(tenants: readonly string[]): Promise<void> {
    for (const t of tenants) {
      await admin.raw('drop database if exists ??', [db(t)]);
      await admin.raw('create database ??', [db(t)]);
      await admin.raw('create table ??.marker (tenant_id varchar(16) not null)', [db(t)]);
      await admin.raw('insert into ??.marker values (?)', [db(t), t]);
    }
  }

  before(async () => {
    admin = knexFactory({ client: 'mysql2', connection: server, pool: { min: 0, max: 2 } });
    await admin.raw('drop database if exists ot_cold_gone');
    await createMarkedDatabases(TENANTS);
  });
  afterEach(async () => {
    await tenancy?.destroy();
    tenancy = undefined;
  });
  after(async () => {
    for (const t of TENANTS) await admin.raw('drop database if exists ??', [db(t)]);
    await admin.destroy();
  });

  for (const inlineSwitch of [false, true]) {
    it(`at most maxSwitchedConnections connections serve cold tenants at once, counted on the server (inlineSwitch ${inlineSwitch})`, async () => {
      open({ max: 8, maxSwitchedConnections: 2, inlineSwitch });
      const started = Date.now();
      const { result, peak } = await peakSleeping(() => Promise.all(TENANTS.map(slow)));
      const elapsed = Date.now() - started;
      assert.deepEqual(result.map((r) => r.m), TENANTS, 'each statement ran on its own tenant database');
      assert.deepEqual(result.map((r) => r.d), TENANTS.map(db));
      assert.ok(peak >= 1 && peak <= 2, `peak ${peak} statements on tenant databases at once`);
      // Ten statements of 150 ms, two at a time.
      assert.ok(elapsed >= 5 * SLEEP * 1000 * 0.9, `took ${elapsed} ms`);
      const stats = mainStats();
      assert.ok(stats.coldWaits >= 1, `coldWaits ${stats.coldWaits}`);
      assert.equal(stats.coldSwitching, 0, 'every permit given back');
      assert.ok(stats.open <= 3, `${stats.open} connections opened for two permits (+1 at most, opened for a warm tenant)`);
    });
  }

  it('negative control: without the limit the same load runs more than two at once', async () => {
    open({ max: 8, maxSwitchedConnections: Infinity });
    const { result, peak } = await peakSleeping(() => Promise.all(TENANTS.map(slow)));
    assert.deepEqual(result.map((r) => r.m), TENANTS);
    assert.ok(peak > 2, `peak ${peak}: the load itself must exceed the limit for the test above to mean anything`);
    assert.equal(mainStats().coldWaits, 0);
  });

  it("by default ('auto') the cap is three per server core and the warm set the server's table caches, read from the server; the limit holds under load", async () => {
    const [rows] = await admin.raw("show global variables where Variable_name in ('thread_pool_size', 'table_open_cache', 'table_definition_cache')");
    const variable = (name: string) => Number((rows as { Variable_name: string; Value: string }[]).find((r) => r.Variable_name === name)!.Value);
    const cap = 3 * variable('thread_pool_size');
    const warm = Math.min(variable('table_open_cache'), variable('table_definition_cache'));
    // More cold tenants than the cap, and more connections, so that the cap is what limits them.
    const extra = Array.from({ length: cap + 4 - TENANTS.length }, (_, i) => `c${TENANTS.length + i}`);
    await createMarkedDatabases(extra);
    try {
      const tenants = [...TENANTS, ...extra];
      open({ max: cap + 2 });
      const { result, peak } = await peakSleeping(() => Promise.all(tenants.map(slow)));
      assert.deepEqual(result.map((r) => r.m), tenants, 'each statement ran on its own tenant database');
      const stats = mainStats();
      assert.deepEqual([stats.maxSwitchedConnections, stats.warmDatabases], [cap, warm]);
      // The first connection's statement ran before the server was read (no cap yet): one above at most.
      assert.ok(peak <= cap + 1, `peak ${peak} statements on tenant databases at once, cap ${cap}`);
      assert.ok(stats.coldWaits >= 1, `coldWaits ${stats.coldWaits}`);
      assert.equal(stats.coldSwitching, 0);
    } finally {
      await tenancy?.destroy();
      tenancy = undefined;
      for (const t of extra) await admin.raw('drop database if exists ??', [db(t)]);
    }
  });

  it("'auto' lifts the cap while cold acquires are under half of the last 512, and puts it back when they are most of them again", async () => {
    // A server read as 1 core (cap 3) whose table caches hold 3 tables (3 warm databases): ten tenants
    // taken in turn are cold at every acquire; two of them taken over and over are warm.
    const sizing = "select 'thread_pool_size' as Variable_name, '1' as Value union all select 'table_open_cache', '3' union all select 'table_definition_cache', '3'";
    open({ max: 6, createKnex: firstSizingReadSends(sizing, { n: 0 }) });
    const run = async (pick: (i: number) => string, count: number) => {
      for (let i = 0; i < count; i += 6) {
        const batch = Array.from({ length: 6 }, (_, j) => pick(i + j));
        assert.deepEqual((await Promise.all(batch.map(quick))).map((r) => r.m), batch);
      }
    };
    await run((i) => TENANTS[i % TENANTS.length]!, 600);
    assert.deepEqual([mainStats().maxSwitchedConnections, mainStats().warmDatabases, mainStats().capChanges, mainStats().coldCapHeld], [3, 3, 0, true]);
    assert.ok(mainStats().coldWaits > 0, 'cold acquires waited for the cap');
    await run((i) => (i % 20 === 0 ? TENANTS[(i / 20) % TENANTS.length]! : TENANTS[i % 2]!), 1_200);
    assert.equal(mainStats().capChanges, 1, 'the cap was lifted under a hot set');
    assert.equal(mainStats().coldCapHeld, false, 'stats tell the cap is lifted');
    const waits = mainStats().coldWaits;
    await run((i) => (i % 20 === 0 ? TENANTS[(i / 20) % TENANTS.length]! : TENANTS[i % 2]!), 600);
    assert.equal(mainStats().coldWaits, waits, 'no acquire waited for the lifted cap');
    await run((i) => TENANTS[i % TENANTS.length]!, 1_200);
    assert.equal(mainStats().capChanges, 2, 'the cap was put back under cold traffic');
    assert.equal(mainStats().coldCapHeld, true);
  });

  it('a maxSwitchedConnections given as a number always holds, whatever the share of cold acquires', async () => {
    open({ max: 6, maxSwitchedConnections: 2 });
    for (let i = 0; i < 1_200; i += 6) await Promise.all(Array.from({ length: 6 }, (_, j) => quick(TENANTS[(i + j) % 2]!)));
    assert.equal(mainStats().capChanges, 0);
    assert.equal(mainStats().coldCapHeld, true);
  });

  it("'auto' with a server that does not tell its cores (the read fails) sets no cap, and queries go on", async () => {
    open({
      max: 4,
      createKnex: knexWithStatementHook(() => (send, sql, rest) => send(typeof sql === 'string' && sql.startsWith('SHOW GLOBAL VARIABLES') ? 'select @@no_such_variable' : sql, ...rest)),
    });
    assert.deepEqual(await Promise.all(TENANTS.map(quick)), TENANTS.map((t) => ({ d: db(t), m: t })));
    // (They waited while the first connection read the server: the interim cap is one.)
    assert.deepEqual([mainStats().maxSwitchedConnections, mainStats().warmDatabases, mainStats().coldCapHeld], [null, null, false]);
  });

  it("'auto' reads the server again on the next connection after a failed read", async () => {
    const reads = { n: 0 };
    open({ max: 4, maxConnectionsPerTenant: 4, createKnex: firstSizingReadSends('select @@no_such_variable', reads) });
    assert.equal((await quick('c0')).m, 'c0');
    assert.equal(mainStats().maxSwitchedConnections, null, 'no cap after the failed read');
    // Two at once: the second opens a connection, which reads the server again.
    await Promise.all([slow('c1'), slow('c2')]);
    assert.equal(reads.n, 2);
    assert.ok(mainStats().maxSwitchedConnections !== null && mainStats().maxSwitchedConnections! >= 3, JSON.stringify(mainStats()));
  });

  it("a server that does not answer a new connection's set-up within acquireTimeoutMs fails the acquire with a 503; the connection keeps its place under max until it closes, and the next one reads the server", async () => {
    // The first sizing read runs for 2 s on the server (a server that stopped answering it).
    const reads = { n: 0 };
    open({ max: 1, acquireTimeoutMs: 400, createKnex: firstSizingReadSends('select sleep(2)', reads) });
    const started = Date.now();
    await assert.rejects(quick('c0'), (error: unknown) => error instanceof TenantUnavailableError && /did not answer SHOW GLOBAL VARIABLES within 400 ms/.test(error.message));
    const failedAfter = Date.now() - started;
    assert.ok(failedAfter < 1_500, `the acquire failed after ${failedAfter} ms, not at its timeout`);
    // Its statement still runs: the connection is not closed yet and holds the only place (max 1).
    assert.deepEqual([mainStats().open, mainStats().maxSwitchedConnections], [0, 1]);
    await assert.rejects(quick('c1'), (error: unknown) => error instanceof TenantUnavailableError && /no connection was free within 400 ms/.test(error.message));
    // Once the server answers and the socket closes, a new connection serves, and reads the server.
    await new Promise((resolve) => setTimeout(resolve, 2_200 - (Date.now() - started)));
    assert.deepEqual(await quick('c1'), { d: db('c1'), m: 'c1' });
    assert.equal(reads.n, 2);
    assert.ok(mainStats().maxSwitchedConnections! >= 3, JSON.stringify(mainStats()));
  });

  it('a driver that throws at once when asked for a connection fails the acquire with a 503 and frees its place', async () => {
    let attempts = 0;
    open({
      max: 1,
      acquireTimeoutMs: 300,
      createKnex: (config) => {
        const knex = knexFactory(config);
        const client = knex.client as { acquireRawConnection(): unknown };
        const acquire = client.acquireRawConnection.bind(client);
        client.acquireRawConnection = () => {
          if (attempts++ < 2) throw new Error('bad driver config');
          return acquire();
        };
        return knex;
      },
    });
    const refused = (error: unknown) => error instanceof TenantUnavailableError && /no connection to its database server could be opened/.test(error.message);
    await assert.rejects(quick('c0'), refused);
    // Its place under max (1) was given back: the next acquire tries again rather than wait for it.
    await assert.rejects(quick('c0'), refused);
    assert.deepEqual(await quick('c0'), { d: db('c0'), m: 'c0' });
  });

  it('a USE the server does not answer within acquireTimeoutMs fails the acquire with a 503 (qualifyTables off)', async () => {
    let uses = 0;
    open({
      max: 2,
      acquireTimeoutMs: 300,
      qualifyTables: false,
      maxSwitchedConnections: Infinity,
      createKnex: knexWithStatementHook(() => (send, sql, rest) => send(typeof sql === 'string' && sql.startsWith('USE ') && uses++ === 0 ? 'select sleep(1)' : sql, ...rest)),
    });
    await assert.rejects(quick('c0'), (error: unknown) => error instanceof TenantUnavailableError && /did not answer a USE within 300 ms/.test(error.message));
    // The other connection serves meanwhile; the first is closed once its statement ends.
    assert.deepEqual(await quick('c0'), { d: db('c0'), m: 'c0' });
    assert.equal(mainStats().destroyed, 1);
  });

  it('a pool.afterCreate that never calls back fails the acquire with a 503 at acquireTimeoutMs, not never', async () => {
    let calls = 0;
    open({
      acquireTimeoutMs: 300,
      servers: {
        main: {
          client: 'mysql2',
          connection: server,
          pool: { max: 2, afterCreate: (_conn: unknown, done: (error?: Error) => void) => void (calls++ === 0 ? undefined : done()) },
        },
      },
    });
    await assert.rejects(quick('c0'), (error: unknown) => error instanceof TenantUnavailableError && /did not answer pool.afterCreate within 300 ms/.test(error.message));
    // No statement runs on it: it is closed at once, and the next acquire opens a working one.
    assert.deepEqual(await quick('c0'), { d: db('c0'), m: 'c0' });
    assert.equal(calls, 2);
  });

  it('maxSwitchedConnections: Infinity sets no cap', async () => {
    open({ max: 4, maxSwitchedConnections: Infinity });
    assert.equal((await quick('c0')).m, 'c0');
    assert.deepEqual([mainStats().maxSwitchedConnections, mainStats().warmDatabases], [null, null]);
  });

  it('a long transaction on a cold tenant holds its permit for its first 200 ms only: another cold tenant is served while it goes on', async () => {
    open({ max: 4, maxSwitchedConnections: 1 });
    let finished = 0;
    const transaction = tenancy!.runWithTenant('c1', () =>
      tenancy!.transaction(async () => {
        await tenancy!.knex().raw('select tenant_id from marker');
        await tenancy!.knex().raw('select sleep(1.2)');
        finished = Date.now();
      }),
    );
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(mainStats().coldSwitching, 1, 'the transaction holds the one permit');
    const started = Date.now();
    assert.equal((await quick('c2')).m, 'c2');
    const served = Date.now();
    await transaction;
    assert.ok(served < finished, `c2 was served ${served - started} ms after it asked, before the transaction ended`);
    assert.ok(served - started < 1_000, `c2 waited ${served - started} ms`);
    assert.ok(mainStats().coldWaits >= 1, 'c2 did wait for the permit first');
    assert.equal(mainStats().coldSwitching, 0);
  });

  it('a first statement still running past 200 ms keeps its permit (a server slow to open tables stays capped)', async () => {
    open({ max: 4, maxSwitchedConnections: 1 });
    await servedAfter(() => tenancy!.runWithTenant('c1', () => tenancy!.knex().raw('select sleep(0.6), (select tenant_id from marker) as m')));
  });

  it('a cold tenant that queued while the pool was full is served once the permit taken after it lapses', async () => {
    open({ max: 2, maxSwitchedConnections: 1, maxConnectionsPerTenant: 2, acquireTimeoutMs: 1_500 });
    assert.equal((await quick('c0')).m, 'c0');
    // c0 (warm now) holds both connections in two transactions, each until its gate opens.
    const gates = [gate(), gate()];
    const holds = gates.map((gate) =>
      tenancy!.runWithTenant('c0', () => tenancy!.transaction(async () => {
        await tenancy!.knex().raw('select tenant_id from marker');
        await gate.promise;
      })),
    );
    await new Promise((resolve) => setTimeout(resolve, 50));
    // c1 queues with the permit still free; c2 queues behind it.
    const c1 = tenancy!.runWithTenant('c1', () => tenancy!.transaction(async () => {
      await tenancy!.knex().raw('select tenant_id from marker');
      await new Promise((resolve) => setTimeout(resolve, 2_000));
    }));
    await new Promise((resolve) => setTimeout(resolve, 20));
    const asked = Date.now();
    const c2 = quick('c2').then(() => Date.now() - asked);
    await new Promise((resolve) => setTimeout(resolve, 20));
    gates[0]!.resolve(); // its connection goes to c1, which takes the permit for 2 s
    await holds[0];
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(mainStats().coldSwitching, 1);
    gates[1]!.resolve(); // a connection is free, but c2 is cold and the permit is taken
    await holds[1];
    const waited = await c2;
    await c1;
    assert.ok(waited < 1_000, `c2 waited ${waited} ms (the permit should lapse 200 ms after c1's first statement)`);
  });

  for (const qualifyTables of [undefined, false]) {
    it(`a transaction whose first statement after BEGIN is still running keeps its permit (qualifyTables ${qualifyTables ?? 'default'})`, async () => {
      open({ max: 4, maxSwitchedConnections: 1, ...(qualifyTables === undefined ? {} : { qualifyTables }) });
      // A model query names its database (no refusal, no USE before it) when qualifyTables is on.
      await servedAfter(() => tenancy!.runWithTenant('c1', () => tenancy!.transaction(() => Marker.query().select(raw('sleep(0.6) as s'), 'tenant_id'))));
    });
  }

  it('a warm tenant is served by a free connection even behind more cold waiters than the pool looks ahead', async () => {
    open({ max: 3, maxSwitchedConnections: 1, maxConnectionsPerTenant: 3, acquireTimeoutMs: 1_500 });
    const raw = (t: string, sql: string) => tenancy!.runWithTenant(t, () => tenancy!.knex().raw(sql));
    await raw('c1', 'select tenant_id from marker');
    await raw('c2', 'select tenant_id from marker');
    const holder = raw('c0', 'select sleep(1.5), tenant_id from marker'); // the permit, no answer for 1.5 s
    await new Promise((resolve) => setTimeout(resolve, 30));
    const opened = gate();
    const busy = [opened.promise, new Promise((resolve) => setTimeout(resolve, 1_800))].map((until) =>
      tenancy!.runWithTenant('c2', () => tenancy!.transaction(async () => {
        await tenancy!.knex().raw('select 1');
        await until;
      })),
    );
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(mainStats().inUse, 3);
    // 40 cold tenants (their databases do not exist: they fail once served) queue ahead of the warm c1.
    const cold = Array.from({ length: 40 }, (_, i) => raw(`x${i}`, 'select 1').catch(() => undefined));
    await new Promise((resolve) => setTimeout(resolve, 10));
    const asked = Date.now();
    const warm = raw('c1', 'select tenant_id from marker').then(() => Date.now() - asked);
    await new Promise((resolve) => setTimeout(resolve, 50));
    opened.resolve();
    const waited = await warm;
    await Promise.all([holder, ...busy, ...cold]);
    assert.ok(waited < 500, `the warm tenant waited ${waited} ms with a connection free`);
  });

  it('a warm tenant (used lately) and a connection already on its database are not held behind cold switches', async () => {
    open({ max: 4, maxSwitchedConnections: 1 });
    assert.equal((await quick('c0')).m, 'c0');
    const done: string[] = [];
    const cold = ['c1', 'c2', 'c3'].map((t) => slow(t).then((r) => done.push(r.m)));
    await new Promise((resolve) => setTimeout(resolve, 30));
    const warm = quick('c0').then((r) => done.push(`warm:${r.m}`));
    await Promise.all([...cold, warm]);
    // The cold ones run one at a time (about 450 ms); the warm one finishes while the first still runs.
    assert.equal(done[0], 'warm:c0', `completion order ${done.join(', ')}`);
    assert.deepEqual(done.slice(1).sort(), ['c1', 'c2', 'c3']);
    assert.equal(mainStats().coldSwitching, 0);
  });

  it('permits come back after failed switches (unknown database): the limit never shrinks', async () => {
    open({ max: 4, maxSwitchedConnections: 1, acquireTimeoutMs: 2_000, inlineSwitch: true });
    for (let i = 0; i < 5; i++) {
      await assert.rejects(quick('gone'), UnknownTenantError);
      assert.equal(mainStats().coldSwitching, 0);
      assert.equal((await quick(TENANTS[i]!)).m, TENANTS[i]);
    }
    await tenancy!.destroy();
    open({ max: 4, maxSwitchedConnections: 1, acquireTimeoutMs: 2_000 });
    await assert.rejects(quick('gone'), UnknownTenantError);
    assert.equal((await quick('c9')).m, 'c9');
    assert.equal(mainStats().coldSwitching, 0);
  });

  for (const inlineSwitch of [false, true]) {
    it(`a database that could not be entered does not count as warm: it stays under the cap (inlineSwitch ${inlineSwitch})`, async () => {
      open({ max: 4, maxSwitchedConnections: 1, acquireTimeoutMs: 100, inlineSwitch });
      await assert.rejects(quick('gone'), UnknownTenantError);
      const holder = slow('c6');
      await new Promise((resolve) => setTimeout(resolve, 20));
      // Were 'gone' warm, it would bypass the cap and fail at once with UnknownTenantError.
      await assert.rejects(quick('gone'), TenantUnavailableError);
      assert.equal((await holder).m, 'c6');
      await assert.rejects(quick('gone'), UnknownTenantError);
    });
  }

  it('a cold acquire that gets no permit within acquireTimeoutMs fails with a 503-mapped error', async () => {
    open({ max: 4, maxSwitchedConnections: 1, acquireTimeoutMs: 100 });
    const holder = slow('c4');
    await new Promise((resolve) => setTimeout(resolve, 20));
    const error = await quick('c5').then(
      () => assert.fail('served without a permit'),
      (e: unknown) => e,
    );
    assert.ok(error instanceof TenantUnavailableError, String(error));
    assert.equal(error.statusCode, 503);
    assert.equal((await holder).m, 'c4');
    assert.ok(mainStats().timeouts >= 1);
    assert.equal((await quick('c5')).m, 'c5');
  });

  it('maxTenants keeps the tenants used lately: a handle leased since the last trim gets a second chance', async () => {
    open({ max: 2, maxTenants: 3 });
    for (const t of ['c0', 'c1', 'c2']) await quick(t);
    await quick('c0');
    await quick('c3');
    let stats = tenancy!.stats();
    assert.equal(stats.tenants, 3);
    assert.equal(stats.evictions, 1);
    const created = stats.created;
    // c0 was used again before c3 came in, so c1 (oldest, unused since) went.
    assert.equal((await quick('c0')).m, 'c0');
    assert.equal(tenancy!.stats().created, created, 'c0 still cached');
    assert.equal((await quick('c1')).m, 'c1');
    stats = tenancy!.stats();
    assert.equal(stats.created, created + 1, 'c1 was evicted and is opened again');
    assert.equal(stats.tenants, 3);
  });

  it('maxTenants: first requests of more tenants at once than it keeps are all served, none on a handle trimmed before it got its lease', async () => {
    open({ max: 2, maxTenants: 2 });
    for (let round = 0; round < 3; round++) {
      const tenants = TENANTS.slice(round, round + 6);
      const seen = await Promise.allSettled(tenants.map((t) => quick(t).then((r) => r.m)));
      assert.deepEqual(
        seen.map((o) => (o.status === 'fulfilled' ? o.value : String(o.reason))),
        tenants,
      );
    }
    assert.ok(tenancy!.stats().evictions > 0, 'the cache was trimmed meanwhile');
  });

  it('rejects a maxSwitchedConnections that is not a positive integer, and shared-only options without the shared strategy', () => {
    for (const value of [0, -1, 1.5, Number.NaN, -Infinity, 'on' as unknown as number]) {
      assert.throws(() => open({ maxSwitchedConnections: value }), /maxSwitchedConnections must be 'auto', an integer >= 1 or Infinity/);
    }
    const knexConfig = () => ({ client: 'mysql2', connection: server });
    // @ts-expect-error: a 'shared' option beside knexConfig does not compile either
    assert.throws(() => createTenancy({ knexConfig, maxSwitchedConnections: 4 }), /maxSwitchedConnections applies to strategy 'shared' only/);
    // @ts-expect-error: a 'shared' option beside knexConfig does not compile either
    assert.throws(() => createTenancy({ knexConfig, maxSwitchedConnections: 'auto' }), /maxSwitchedConnections applies to strategy 'shared' only/);
    // @ts-expect-error: a 'shared' option beside knexConfig does not compile either
    assert.throws(() => createTenancy({ knexConfig, inlineSwitch: true }), /inlineSwitch applies to strategy 'shared' only/);
  });
});
