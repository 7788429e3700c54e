/**
 * What a shared connection may carry back into the pool, on real MariaDB (stop 15's adversarial
 * review found each of these leaking one tenant's rows to another):
 * - knex releases a stream's connection twice (the stream's 'close' and its acquire's `finally`):
 *   the pool listed it free twice and handed it to two tenants at once;
 * - a statement abandoned by `.timeout()` (cancelled or not) still runs, and whatever it switches
 *   (an inline `USE`) lands after the pool handed the connection on;
 * - a `USE` sent through a stream was not followed;
 * - under `qualifyTables`, a database name knex rewrites in `withSchema` (whitespace, dots) named
 *   another database, and `DATABASE/**\/()` slipped past the switch-first check.
 * Every case ran against the code before the fix and failed there (see the stop 15 note).
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it } from 'node:test';
import knexFactory, { type Knex } from 'knex';
import { createTenancy, TenantUnavailableError, toHttpError, UnknownTenantError, type Tenancy, type SharedPoolOptions, type TenancyCommonOptions } from '../lib/index';
import { mysqlConnection, skipMysql } from './helpers/databases';
import { createTenantDatabases, dropTenantDatabases, Person } from './helpers/fixtures';

const TENANTS = ['a', 'b'];
const db = (t: string) => `ot_release_${t}`;
const CONFIGS: { name: string; options: Partial<SharedPoolOptions & TenancyCommonOptions> }[] = [
  { name: 'default (qualifyTables)', options: {} },
  { name: 'USE switching', options: { qualifyTables: false } },
  { name: 'inlineSwitch', options: { qualifyTables: false, inlineSwitch: true } },
  { name: 'qualifyTables + inlineSwitch + resetSession', options: { qualifyTables: true, inlineSwitch: true, resetSession: true } },
];

/** The server's count of connections opened since it started (`Connections`). */
const connectionsOpened = async (admin: Knex) => Number(((await admin.raw("show global status like 'Connections'")) as [{ Value: string }[]])[0][0]!.Value);

describe('connections released to the shared pool', { skip: skipMysql }, () => {
  const { database: _database, ...server } = mysqlConnection();
  void _database;
  let tenancy: Tenancy | undefined;
  const open = (options: Partial<SharedPoolOptions & TenancyCommonOptions>, max = 1) =>
    (tenancy = createTenancy({
      strategy: 'shared',
      servers: { main: { client: 'mysql2', connection: { ...server }, pool: { max } } },
      locate: (id) => ({ server: 'main', database: db(id) }),
      verifyConnection: false,
      acquireTimeoutMs: 5_000,
      ...options,
    }));
  const names = (t: string) => tenancy!.runWithTenant(t, async () => (await Person.query().orderBy('id')).map((p) => p.name));
  const rawNames = (t: string, sql: string) =>
    tenancy!.runWithTenant(t, async () => ((await tenancy!.knex().raw(sql)) as [{ name: string }[]])[0].map((r) => r.name));
  const main = () => tenancy!.stats().servers!.main!;

  before(() => createTenantDatabases(server, TENANTS, db));
  afterEach(async () => {
    await tenancy?.destroy();
    tenancy = undefined;
  });
  after(() => dropTenantDatabases(server, TENANTS, db));

  for (const { name, options } of CONFIGS) {
    it(`${name}: a stream read to its end gives its connection back once; two tenants at once then read their own rows`, async () => {
      open(options);
      await tenancy!.runWithTenant('a', async () => {
        for await (const row of tenancy!.knex().select('name').from('persons').stream()) void row;
      });
      assert.equal(main().inUse, 0);
      for (let round = 0; round < 3; round++) {
        const [a, b] = await Promise.all([rawNames('a', 'select name from persons order by id'), rawNames('b', 'select name from persons order by id')]);
        assert.deepEqual([a, b], [['a-ada', 'a-bob'], ['b-ada', 'b-bob']]);
      }
      assert.deepEqual([main().inUse, main().open], [0, 1]);
    });

    it(`${name}: a stream that ends while other tenants wait gives its connection to one of them, once`, async () => {
      open(options);
      for (let round = 0; round < 3; round++) {
        const streamed = tenancy!.runWithTenant('a', async () => {
          const seen: string[] = [];
          for await (const row of tenancy!.knex().select('name').from('persons').orderBy('id').stream()) seen.push((row as { name: string }).name);
          return seen;
        });
        // Queued behind the stream: the first release hands the connection to b; a second one would
        // hand it to the next waiter while b still runs on it.
        const waiting = ['b', 'a', 'b', 'a'].map((t) => rawNames(t, 'select name from persons where sleep(0.02) = 0 order by id'));
        assert.deepEqual(await streamed, ['a-ada', 'a-bob']);
        assert.deepEqual(await Promise.all(waiting), [['b-ada', 'b-bob'], ['a-ada', 'a-bob'], ['b-ada', 'b-bob'], ['a-ada', 'a-bob']]);
      }
      assert.deepEqual([main().inUse, main().open], [0, 1]);
    });

    it(`${name}: a connection whose statement outlived its timeout is never handed to another tenant`, async () => {
      open(options);
      assert.deepEqual(await names('a'), ['a-ada', 'a-bob']);
      for (const cancel of [false, true]) {
        // b's statement (carrying b's switch, with inlineSwitch) is abandoned while it runs.
        await assert.rejects(tenancy!.runWithTenant('b', () => tenancy!.knex().raw('select sleep(0.5) as s from persons').timeout(60, { cancel })), /timeout/i);
        assert.deepEqual(await rawNames('a', 'select name from persons order by id'), ['a-ada', 'a-bob']);
        assert.deepEqual(await names('a'), ['a-ada', 'a-bob']);
      }
      assert.ok(main().destroyed >= 1, 'the abandoned connection was closed');
      assert.ok(main().open <= 1, 'within pool.max');
    });
  }

  for (const { name, options } of CONFIGS) {
    it(`${name}: after dropTenant(), the tenant is unknown (404), not served on a free connection still on its dropped database`, async () => {
      await createTenantDatabases(server, ['gone'], db);
      try {
        open(options);
        assert.deepEqual(await names('gone'), ['gone-ada', 'gone-bob']);
        assert.deepEqual(await rawNames('gone', 'select name from persons order by id'), ['gone-ada', 'gone-bob']);
        await tenancy!.dropTenant('gone', { confirm: 'gone' });
        await assert.rejects(names('gone'), UnknownTenantError);
        await assert.rejects(rawNames('gone', 'select name from persons'), UnknownTenantError);
        assert.deepEqual(await names('a'), ['a-ada', 'a-bob']);
      } finally {
        await dropTenantDatabases(server, ['gone'], db);
      }
    });
  }

  it("forEachTenant's closing of the handles it opened keeps the pool's connections (only forget, evict and dropTenant close those left on a tenant's database)", async () => {
    open({ qualifyTables: false });
    const report = await tenancy!.forEachTenant(async () => (await Person.query().orderBy('id')).map((p) => p.name)[0], { tenants: ['a', 'b'], concurrency: 1 });
    assert.deepEqual(report.tenants.map((t) => t.result), ['a-ada', 'b-ada']);
    assert.equal(main().created, 1, 'a connection was closed and opened again between tenants');
    await tenancy!.evict('b');
    assert.equal(main().open, 0, "evict() closes the free connection left on the tenant's database");
  });

  it('two busy tenants at their cap holding every connection do not starve the others: each gets its share within acquireTimeoutMs', async () => {
    const extra = ['c', 'd'];
    await createTenantDatabases(server, extra, db);
    try {
      open({ acquireTimeoutMs: 1_000 }, 4); // maxConnectionsPerTenant: half of pool.max, 2
      const done = new Map<string, number>();
      const errors: string[] = [];
      const until = Date.now() + 1_500;
      const worker = async (t: string) => {
        while (Date.now() < until) {
          try {
            await rawNames(t, 'select name from persons where sleep(0.005) = 0 limit 1');
            done.set(t, (done.get(t) ?? 0) + 1);
          } catch (error) {
            errors.push(`${t}: ${(error as Error).message}`);
          }
        }
      };
      await Promise.all(['a', 'b', 'c', 'd'].flatMap((t) => Array.from({ length: 6 }, () => worker(t))));
      assert.deepEqual(errors, []);
      for (const t of ['a', 'b', 'c', 'd']) assert.ok((done.get(t) ?? 0) >= 30, `${t}: ${done.get(t) ?? 0} queries (${JSON.stringify(Object.fromEntries(done))})`);
    } finally {
      await tenancy?.destroy();
      tenancy = undefined;
      await dropTenantDatabases(server, extra, db);
    }
  });

  it('a cancelled timeout sends its KILL QUERY over a free pooled connection, never a connection beyond pool.max', async () => {
    open({}, 2);
    const admin = knexFactory({ client: 'mysql2', connection: server, pool: { min: 1, max: 1 } });
    const connections = () => connectionsOpened(admin);
    try {
      // Both pool connections open, one free again.
      await Promise.all([names('a'), rawNames('b', 'select name from persons where sleep(0.05) = 0')]);
      assert.equal(main().open, 2);
      const before = await connections();
      const started = Date.now();
      await assert.rejects(tenancy!.runWithTenant('a', () => tenancy!.knex().raw('select sleep(3)').timeout(100, { cancel: true })), (error: Error) => error.name === 'KnexTimeoutError');
      assert.equal((await connections()) - before, 0, 'no connection was opened for the KILL');
      // The KILL ended the statement: the pool serves again at once, not after 3 s.
      assert.deepEqual(await names('b'), ['b-ada', 'b-bob']);
      assert.ok(Date.now() - started < 2_000, `took ${Date.now() - started} ms`);
      assert.ok(main().open <= 2);
      // With no free connection, the cancel fails at once (503) instead of opening a third one.
      const busy = rawNames('b', 'select name from persons where sleep(0.5) = 0');
      await new Promise((resolve) => setTimeout(resolve, 50));
      await assert.rejects(tenancy!.runWithTenant('a', () => tenancy!.knex().raw('select sleep(0.4)').timeout(50, { cancel: true })), TenantUnavailableError);
      await busy;
      assert.ok(main().open <= 2);
    } finally {
      await admin.destroy();
    }
  });

  it('a cancelled timeout on a quiet pool (none free, room under pool.max) opens one connection for its KILL, and closes it after', async () => {
    open({}, 2);
    const admin = knexFactory({ client: 'mysql2', connection: server, pool: { min: 1, max: 1 } });
    try {
      assert.deepEqual(await names('a'), ['a-ada', 'a-bob']);
      assert.equal(main().open, 1);
      const before = await connectionsOpened(admin);
      const started = Date.now();
      await assert.rejects(tenancy!.runWithTenant('a', () => tenancy!.knex().raw('select sleep(3)').timeout(100, { cancel: true })), (error: Error) => error.name === 'KnexTimeoutError');
      assert.equal((await connectionsOpened(admin)) - before, 1, 'one connection, for the KILL');
      assert.deepEqual(await names('b'), ['b-ada', 'b-bob']);
      assert.ok(Date.now() - started < 2_000, `took ${Date.now() - started} ms: the statement was not killed`);
      const sleeping = (await admin.raw("select count(*) as n from information_schema.processlist where info = 'select sleep(3)'")) as [{ n: number }[]];
      assert.equal(Number(sleeping[0][0]!.n), 0, 'the statement still runs on the server');
      assert.ok(main().open <= 2);
    } finally {
      await admin.destroy();
    }
  });

  it("overflow 'reject' refuses only when every connection is in use: acquires held back by the cold-switch cap or the tenant's cap wait their turn", async () => {
    // A fresh pool allows one cold switch until it has read the server: b waits for it.
    open({ overflow: 'reject' }, 4);
    assert.deepEqual(await Promise.all([names('a'), names('b'), names('a'), names('b')]), [['a-ada', 'a-bob'], ['b-ada', 'b-bob'], ['a-ada', 'a-bob'], ['b-ada', 'b-bob']]);
    await tenancy!.destroy();
    open({ overflow: 'reject', maxConnectionsPerTenant: 1 }, 4);
    const sleepy = () => rawNames('a', 'select name from persons where sleep(0.05) = 0 order by id');
    assert.deepEqual(await Promise.all([sleepy(), sleepy(), sleepy()]), [['a-ada', 'a-bob'], ['a-ada', 'a-bob'], ['a-ada', 'a-bob']]);
    await tenancy!.destroy();
    // Every connection in use: refused at once.
    open({ overflow: 'reject' }, 1);
    const busy = rawNames('a', 'select name from persons where sleep(0.3) = 0');
    await new Promise((resolve) => setTimeout(resolve, 50));
    const started = Date.now();
    await assert.rejects(names('b'), TenantUnavailableError);
    assert.ok(Date.now() - started < 200, `refused after ${Date.now() - started} ms`);
    await busy;
  });

  for (const { name, options } of CONFIGS) {
    it(`${name}: a cancelled timeout inside a transaction sends its KILL QUERY over the pool too, never a connection beyond pool.max`, async () => {
      open(options, 2);
      const admin = knexFactory({ client: 'mysql2', connection: server, pool: { min: 1, max: 1 } });
      const connections = () => connectionsOpened(admin);
      try {
        await Promise.all([names('a'), rawNames('b', 'select name from persons where sleep(0.05) = 0')]);
        assert.equal(main().open, 2);
        const before = await connections();
        const started = Date.now();
        await assert.rejects(
          tenancy!.runWithTenant('a', () => tenancy!.transaction(() => tenancy!.knex().raw('select sleep(3)').timeout(100, { cancel: true }))),
          (error: Error) => error.name === 'KnexTimeoutError',
        );
        assert.equal((await connections()) - before, 0, "a connection was opened for the transaction's KILL");
        assert.deepEqual(await names('b'), ['b-ada', 'b-bob']);
        assert.ok(Date.now() - started < 2_000, `took ${Date.now() - started} ms: the statement was not killed`);
        assert.ok(main().open <= 2);
      } finally {
        await admin.destroy();
      }
    });
  }

  it('destroy() lets the scopes in flight finish (as the pool-per-tenant strategy does), then refuses new ones', async () => {
    open({});
    // A scope (a request, say) between two queries when shutdown starts: its second query still runs.
    const running = tenancy!.runWithTenant('a', async () => {
      await Person.query().first();
      await new Promise((resolve) => setTimeout(resolve, 200));
      return (await Person.query().orderBy('id')).map((p) => p.name);
    });
    await new Promise((resolve) => setTimeout(resolve, 50));
    const destroyed = tenancy!.destroy();
    assert.deepEqual(await running, ['a-ada', 'a-bob']);
    await destroyed;
    await assert.rejects(names('a'), (error: Error) => (error as { code?: string }).code === 'TENANCY_DESTROYED');
  });

  it('inlineSwitch: a batch that fails after its own USE leaves the connection to be switched again', async () => {
    open({ inlineSwitch: true });
    // The connection is on a's database already: the batch carries no switch of the pool's.
    assert.deepEqual(await names('a'), ['a-ada', 'a-bob']);
    await assert.rejects(tenancy!.runWithTenant('a', () => tenancy!.knex().raw(`use ${db('b')}; select * from no_such_table`)));
    assert.deepEqual(await rawNames('a', 'select name from persons order by id'), ['a-ada', 'a-bob']);
  });

  it('a USE sent through a stream is followed: the tenant reads its own database next', async () => {
    open({});
    await tenancy!.runWithTenant('a', async () => {
      for await (const row of tenancy!.knex().raw(`use ${db('b')}`).stream()) void row;
    });
    assert.deepEqual(await names('a'), ['a-ada', 'a-bob']);
    assert.deepEqual(await rawNames('a', 'select name from persons order by id'), ['a-ada', 'a-bob']);
  });

  it('qualifyTables: a database name knex would rewrite in SQL (whitespace, a dot) is refused, never read as another', async () => {
    for (const database of [`${db('b')} `, ` ${db('b')}`, `${db('b')}\t`, `x.${db('b')}`]) {
      tenancy = createTenancy({
        strategy: 'shared',
        qualifyTables: true,
        servers: { main: { client: 'mysql2', connection: { ...server }, pool: { max: 1 } } },
        locate: () => ({ server: 'main', database }),
        verifyConnection: false,
      });
      await assert.rejects(
        tenancy.runWithTenant('evil', () => Person.query()),
        (error: Error) => {
          assert.ok(error instanceof TenantUnavailableError && /cannot name database/.test(error.message), error.message);
          // The reason names the database: it stays on the error, out of the HTTP answer.
          const answer = toHttpError(error)!;
          assert.equal(answer.status, 503);
          assert.equal(answer.message, 'The database of tenant "evil" is unavailable. Retry later.');
          return true;
        },
      );
      await tenancy.destroy();
      tenancy = undefined;
    }
  });

  it('by default a database name knex would rewrite in SQL (a dot, a leading space) is served with USE: its own rows, never another tenant\'s', async () => {
    const odd = new Map([['dot', `${db('d')}.x`], ['space', ` ${db('s')}`]]);
    const oddDb = (t: string) => odd.get(t)!;
    await createTenantDatabases(server, [...odd.keys()], oddDb);
    try {
      tenancy = createTenancy({
        strategy: 'shared',
        servers: { main: { client: 'mysql2', connection: { ...server }, pool: { max: 2 } } },
        locate: (id) => ({ server: 'main', database: odd.get(id) ?? db(id) }),
        acquireTimeoutMs: 5_000,
      });
      const order = ['dot', 'a', 'space', 'b', 'dot', 'space', 'a'];
      for (let round = 0; round < 3; round++) {
        const seen = await Promise.all(order.map((t) => names(t)));
        assert.deepEqual(seen, order.map((t) => [`${t}-ada`, `${t}-bob`]));
      }
      // The plain names stayed qualified: connections served them with no USE.
      assert.ok(main().cleanHits > 0, JSON.stringify(main()));
    } finally {
      await tenancy?.destroy();
      tenancy = undefined;
      await dropTenantDatabases(server, [...odd.keys()], oddDb);
    }
  });

  it('qualifyTables: DATABASE() however spelled is switched first, never NULL on a clean connection', async () => {
    open({ qualifyTables: true });
    for (const call of ['DATABASE/**/()', 'database /* x */ ()', '`database`()', 'SCHEMA/**/()']) {
      const [rows] = (await tenancy!.runWithTenant('a', () => tenancy!.knex().raw(`select ${call} as d`))) as [{ d: string | null }[]];
      assert.equal(rows[0]!.d, db('a'), call);
    }
  });
});
