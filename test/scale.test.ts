/**
 * Many tenants over few connections, on two real MariaDB servers (3306 and a second one on 3307):
 * the shared strategy (isolation under load with its negative control, a moved tenant, fairness) and
 * the pool-per-tenant connection budget (never exceeded by the server's own count, eviction under
 * load with no failed query).
 *
 * The tenancies under test log in as their own user, so the server's count of their connections
 * (the processlist's rows of that user) holds whatever else connects to the server meanwhile: this
 * suite's admin and checking connections, another suite, a person's `mariadb` prompt.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import knexFactory, { type Knex } from 'knex';
import { createTenancy, TenantMismatchError, TenantUnavailableError, toHttpError, type SharedPoolOptions, type TenancyCommonOptions } from '../lib/index';
import { mysqlConnection, skipMysql } from './helpers/databases';
import { createSchema, Person, seed } from './helpers/fixtures';
import { jsonErrors, listen, load } from './helpers/http';
import { isolationApp, runIsolationLoad } from './helpers/isolation';
import { startSecondServer, type SecondServer } from './helpers/second-server';
import { knexWithStatementHook } from './helpers/statement-hook';

const ON_FIRST = ['sa1', 'sa2', 'sa3', 'sa4', 'sa5', 'sa6'];
const ON_SECOND = ['sb1', 'sb2', 'sb3', 'sb4'];
const ALL = [...ON_FIRST, ...ON_SECOND];
const db = (t: string) => `ot_scale_${t}`;

/** A port nothing listens on: bound, read, closed. */
function closedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}
/** The login of every tenancy under test (admin and checking connections log in as root). */
const POOL_USER = 'ot_scale_pool';
// Both exact hosts, so that an anonymous ''@'localhost' (mariadb-install-db makes one) cannot win.
const POOL_HOSTS = ['localhost', '127.0.0.1', '%'];

describe('many tenants over few connections, two MariaDB servers', { skip: skipMysql }, () => {
  let second: SecondServer;
  const admins = new Map<string, Knex>();
  const direct = new Map<string, Knex>();
  const serverConfig = (port: number, max: number, user?: string): Knex.Config => {
    const { database: _database, ...connection } = mysqlConnection();
    void _database;
    return { client: 'mysql2', connection: { ...connection, port, ...(user === undefined ? {} : { user, password: '' }) }, pool: { min: 0, max } };
  };
  /** A server as the tenancies under test reach it: as POOL_USER. */
  const poolConfig = (port: number, max: number) => serverConfig(port, max, POOL_USER);
  const sharedOptions = (max: number, extra: Partial<SharedPoolOptions & TenancyCommonOptions> = {}): SharedPoolOptions & TenancyCommonOptions => ({
    strategy: 'shared',
    servers: { first: poolConfig(mysqlConnection().port!, max), second: poolConfig(second.port, max) },
    locate: (id) => ({ server: id.startsWith('sb') ? 'second' : 'first', database: db(id) }),
    ...extra,
  });
  /**
   * The tenancy's connections to `server`: the processlist's rows of POOL_USER, as the server counts
   * them. Not `Threads_connected` less the other clients' rows: the server counts a connection there
   * before it lists it and after it has unlisted it, so a client connecting or leaving meanwhile was
   * counted as the tenancy's (measured: up to 3 with no tenancy connected, while another client
   * opened and closed 3 connections in a loop; it failed CI once as "first 5"). A connection of the
   * tenancy is listed under its user from its login to its close; in its handshake it is listed as
   * 'unauthenticated user' and not counted, which only lowers the count for a few milliseconds: a
   * pool over its budget holds the extra connection for its queries, where it is listed.
   */
  /** Sets POOL_USER's MAX_USER_CONNECTIONS on the first server (0: no limit). */
  const limitPoolUser = async (limit: number) => {
    for (const host of POOL_HOSTS) await admins.get('first')!.raw('alter user ?@? with max_user_connections ?', [POOL_USER, host, limit]);
  };
  /**
   * The pool user's live threads: not the ones ending after their client closed them (`Killed`).
   * `established` also leaves out attempts still logging in or being refused (`Connect`, `Busy`),
   * which the server does not count against max_user_connections. Measured: with a limit of 2, rapid
   * connects list 3 threads now and then, the third always one of these.
   */
  const threads = async (server: 'first' | 'second', established = false) => {
    const skipped = established ? "'Killed', 'Connect', 'Busy'" : "'Killed'";
    const [rows] = await admins
      .get(server)!
      .raw(`select count(*) as listed from information_schema.processlist where user = ? and command not in (${skipped})`, [POOL_USER]);
    return Number((rows as { listed: number | string }[])[0]!.listed);
  };

  before(async () => {
    second = await startSecondServer();
    admins.set('first', knexFactory({ ...serverConfig(mysqlConnection().port!, 1) }));
    admins.set('second', knexFactory({ ...serverConfig(second.port, 1) }));
    for (const admin of admins.values()) {
      for (const host of POOL_HOSTS) {
        await admin.raw('drop user if exists ?@?', [POOL_USER, host]);
        await admin.raw("create user ?@? identified by ''", [POOL_USER, host]);
        await admin.raw('grant all on `ot\\_scale\\_%`.* to ?@?', [POOL_USER, host]);
      }
    }
    for (const t of ALL) {
      const admin = admins.get(t.startsWith('sb') ? 'second' : 'first')!;
      await admin.raw('drop database if exists ??', [db(t)]);
      await admin.raw('create database ??', [db(t)]);
      const config = serverConfig(t.startsWith('sb') ? second.port : mysqlConnection().port!, 2);
      const knex = knexFactory({ ...config, connection: { ...(config.connection as object), database: db(t) } });
      await createSchema(knex, t);
      await seed(knex, t);
      direct.set(t, knex);
    }
  });
  after(async () => {
    for (const knex of direct.values()) await knex.destroy();
    for (const t of ALL) await admins.get(t.startsWith('sb') ? 'second' : 'first')!.raw('drop database if exists ??', [db(t)]);
    for (const admin of admins.values()) for (const host of POOL_HOSTS) await admin.raw('drop user if exists ?@?', [POOL_USER, host]);
    for (const admin of admins.values()) await admin.destroy();
    await second.stop();
  });

  /**
   * Samples both servers' count of the tenancy's connections while `work` runs; returns the peaks.
   * Starts from none: a connection an earlier test left open fails here, with its count. With
   * `outsider`, a client that is not the tenancy (root) connects while `work` runs and stays
   * connected until it ends: the count must not move for it.
   */
  async function peakThreads<T>(work: () => Promise<T>, outsider = false, established = false): Promise<{ result: T; first: number; second: number }> {
    for (const server of ['first', 'second'] as const) {
      let left = await threads(server);
      for (let i = 0; left > 0 && i < 100; i++) {
        await new Promise((r) => setTimeout(r, 20));
        left = await threads(server);
      }
      assert.equal(left, 0, `${server} server: connections of an earlier tenancy still open`);
    }
    const peak = { first: 0, second: 0 };
    let running = true;
    const sampler = (async () => {
      while (running) {
        peak.first = Math.max(peak.first, await threads('first', established));
        peak.second = Math.max(peak.second, await threads('second', established));
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    const outside = outsider ? knexFactory({ ...serverConfig(mysqlConnection().port!, 3) }) : undefined;
    try {
      const [result] = await Promise.all([
        work(),
        outside && new Promise((r) => setTimeout(r, 50)).then(() => Promise.all([1, 2, 3].map(() => outside.raw('select sleep(0.5)')))),
      ]);
      return { result, ...peak };
    } finally {
      running = false;
      await sampler;
      await outside?.destroy();
    }
  }

  for (const [mode, extra] of [['defaults', {}], ['USE switching', { qualifyTables: false }]] as const) it(`shared strategy (${mode}): tenants on both servers under concurrent load, no leak, no lost write, at most 3 connections per server`, async () => {
    const tenancy = createTenancy(sharedOptions(3, { maxConnectionsPerTenant: 2, ...extra }));
    const app = isolationApp(Person, tenancy.middleware());
    app.use(jsonErrors);
    const server = await listen(app);
    try {
      // Three outside connections, busy half a second each, meanwhile: not the tenancy's, not counted.
      const { result: report, first, second: onSecond } = await peakThreads(() => runIsolationLoad(server.url, ALL, direct, 1500, 48, 'shared'), true);
      assert.deepEqual(report, { requests: 1500, leaks: 0, lostWrites: 0, failures: 0 });
      // At least one: the count does see the tenancy's connections.
      assert.ok(first >= 1 && first <= 3 && onSecond >= 1 && onSecond <= 3, `the tenancy's server connections: first ${first}, second ${onSecond}`);
      const stats = tenancy.stats();
      assert.equal(stats.strategy, 'shared');
      assert.equal(stats.tenants, ALL.length);
      for (const key of ['first', 'second']) {
        const s = stats.servers![key]!;
        assert.ok(s.open <= 3 && s.created <= 3 + s.destroyed, JSON.stringify(s));
        assert.equal(s.inUse, 0);
        assert.ok(s.switches > 0 && s.affinityHits > 0, JSON.stringify(s));
      }
    } finally {
      await server.close();
      await tenancy.destroy();
    }
  });

  it('negative control: a shared pool that forgets to switch databases is caught leaking', async () => {
    // Each connection honours only its first USE: the bug a connection-switching pool must not have.
    const tenancy = createTenancy(
      sharedOptions(3, {
        qualifyTables: false,
        createKnex: knexWithStatementHook(() => {
          let switched = false;
          return (send, sql, rest) => {
            if (typeof sql === 'string' && sql.startsWith('USE ') && switched) return (rest.at(-1) as (e: null) => void)(null);
            if (typeof sql === 'string' && sql.startsWith('USE ')) switched = true;
            return send(sql, ...rest);
          };
        }),
      }),
    );
    const app = isolationApp(Person, tenancy.middleware());
    app.use(jsonErrors);
    const server = await listen(app);
    try {
      const report = await runIsolationLoad(server.url, ON_FIRST, direct, 600, 48, 'noswitch');
      assert.ok(report.leaks > 0, `the broken pool must leak: ${JSON.stringify(report)}`);
    } finally {
      await server.close();
      await tenancy.destroy();
    }
  });

  it('shared strategy: two tenants on two servers whose databases have one name: a knex builder of one, used as a subquery in the other, is refused (it names its own server\'s database)', async () => {
    const same = 'ot_scale_same';
    const made: Knex[] = [];
    for (const [key, port] of [['first', mysqlConnection().port!], ['second', second.port]] as const) {
      await admins.get(key)!.raw('drop database if exists ??', [same]);
      await admins.get(key)!.raw('create database ??', [same]);
      const config = serverConfig(port, 1);
      const knex = knexFactory({ ...config, connection: { ...(config.connection as object), database: same } });
      made.push(knex);
      await createSchema(knex, key);
      await seed(knex, key);
    }
    const tenancy = createTenancy({ ...sharedOptions(2), locate: (id: string) => ({ server: id === 'x' ? 'first' : 'second', database: same }) });
    try {
      const fromX = await tenancy.runWithTenant('x', async () => ({ sub: tenancy.knex()('persons').select('id') }));
      for (const use of [() => Person.query().whereIn('id', fromX.sub), () => tenancy.knex()('persons').whereIn('id', fromX.sub)]) {
        const outcome = await tenancy.runWithTenant('y', async () => use()).then((rows: unknown) => `ran: ${JSON.stringify(rows)}`, (error: unknown) => error);
        assert.ok(outcome instanceof TenantMismatchError, String(outcome));
      }
      // Built where it runs, the same subquery is fine.
      const names = await tenancy.runWithTenant('y', () => Person.query().whereIn('id', tenancy.knex()('persons').select('id')).orderBy('id'));
      assert.deepEqual(names.map((row) => row.name), ['second-ada', 'second-bob']);
      // Servers given as mysql2's `uri`: told apart by the address in it (both read as localhost:3306 before).
      const viaUri = createTenancy({
        strategy: 'shared',
        servers: Object.fromEntries(
          (['first', 'second'] as const).map((key) => [key, { client: 'mysql2', connection: { uri: `mysql://${POOL_USER}@127.0.0.1:${key === 'first' ? mysqlConnection().port : second.port}` }, pool: { max: 2 } }]),
        ),
        locate: (id: string) => ({ server: id === 'x' ? 'first' : 'second', database: same }),
      });
      try {
        const fromUriX = await viaUri.runWithTenant('x', async () => ({ sub: viaUri.knex()('persons').select('id') }));
        const refused = await viaUri.runWithTenant('y', async () => Person.query().whereIn('id', fromUriX.sub)).then((rows: unknown) => `ran: ${JSON.stringify(rows)}`, (error: unknown) => error);
        assert.ok(refused instanceof TenantMismatchError, String(refused));
      } finally {
        await viaUri.destroy();
      }
      // So is one of the same database on the same server from another tenancy (its own pool).
      const other = createTenancy({ ...sharedOptions(1), locate: () => ({ server: 'second', database: same }) });
      try {
        const fromOther = await other.runWithTenant('y', async () => ({ sub: other.knex()('persons').select('id') }));
        const rows = await tenancy.runWithTenant('y', () => Person.query().whereIn('id', fromOther.sub).orderBy('id'));
        assert.deepEqual(rows.map((row) => row.name), ['second-ada', 'second-bob']);
      } finally {
        await other.destroy();
      }
    } finally {
      await tenancy.destroy();
      for (const knex of made) await knex.destroy();
      for (const key of ['first', 'second']) await admins.get(key)!.raw('drop database if exists ??', [same]);
    }
  });

  it('shared strategy: a server that freezes with connections open: a query with .timeout(ms, { cancel: true }) fails typed within acquireTimeoutMs of its KILL, not never', async () => {
    // A proxy in front of the real server that can stop passing bytes both ways: a frozen server
    // (SIGSTOP) or a route cut off without a reset, for connections already open.
    let frozen = false;
    const pairs = new Set<net.Socket>();
    const proxy = net.createServer((client) => {
      const upstream = net.connect(mysqlConnection().port!, '127.0.0.1');
      for (const socket of [client, upstream]) {
        pairs.add(socket);
        socket.on('error', () => undefined);
        socket.on('close', () => (client.destroy(), upstream.destroy()));
      }
      client.on('data', (chunk) => void (frozen || upstream.write(chunk)));
      upstream.on('data', (chunk) => void (frozen || client.write(chunk)));
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const tenancy = createTenancy({
      strategy: 'shared',
      servers: { first: poolConfig((proxy.address() as net.AddressInfo).port, 2) },
      locate: (id: string) => ({ server: 'first', database: db(id) }),
      acquireTimeoutMs: 500,
    });
    try {
      // Two connections open and free: the query takes one, its KILL the other.
      await Promise.all(['sa1', 'sa2'].map((id) => tenancy.runWithTenant(id, () => tenancy.knex().raw('select sleep(0.1)'))));
      assert.equal(tenancy.stats().servers!.first!.open, 2);
      frozen = true;
      const started = Date.now();
      const outcome = await Promise.race([
        tenancy.runWithTenant('sa1', () => tenancy.knex().raw('select 1').timeout(200, { cancel: true })).then(
          () => 'answered',
          (error: unknown) => error,
        ),
        new Promise((resolve) => setTimeout(resolve, 4_000, 'still pending after 4 s')),
      ]);
      assert.ok(outcome instanceof TenantUnavailableError, String(outcome));
      assert.equal(outcome.statusCode, 503);
      assert.ok(Date.now() - started < 2_000, `failed after ${Date.now() - started} ms`);
    } finally {
      frozen = false;
      await tenancy.destroy({ drainTimeoutMs: 0 });
      for (const socket of pairs) socket.destroy();
      proxy.close();
    }
  });

  it('shared strategy: a server that accepts connections and never answers (frozen, or cut off without a reset) fails its tenants with a 503 at acquireTimeoutMs, while the other server serves; the attempt keeps its place under max until it ends', async () => {
    // A real listening socket that never sends the handshake: what a SIGSTOPped server or a dropped route looks like.
    const sockets = new Set<net.Socket>();
    const frozen = net.createServer((socket) => void sockets.add(socket));
    await new Promise<void>((resolve) => frozen.listen(0, '127.0.0.1', resolve));
    const port = (frozen.address() as net.AddressInfo).port;
    const frozenConfig = serverConfig(port, 1);
    // mysql2 gives up on the handshake after 1 s (its default: 10 s).
    frozenConfig.connection = { ...(frozenConfig.connection as object), connectTimeout: 1_000 };
    const tenancy = createTenancy({
      ...sharedOptions(2, { acquireTimeoutMs: 300 }),
      servers: { first: serverConfig(mysqlConnection().port!, 2), frozen: frozenConfig },
      locate: (id: string) => (id === 'cold' ? { server: 'frozen', database: 'ot_scale_cold' } : { server: 'first', database: db(id) }),
    });
    const read = (t: string) => tenancy.runWithTenant(t, () => Person.query().select('name').orderBy('id').first());
    const unavailable = (pattern: RegExp) => (error: unknown) => error instanceof TenantUnavailableError && error.statusCode === 503 && pattern.test(error.message);
    try {
      const started = Date.now();
      const [cold, served] = await Promise.allSettled([read('cold'), read('sa1')]);
      assert.equal(cold.status, 'rejected');
      assert.ok(unavailable(/did not answer a connection attempt within 300 ms/)((cold as PromiseRejectedResult).reason), String((cold as PromiseRejectedResult).reason));
      assert.ok(Date.now() - started < 900, `answered after ${Date.now() - started} ms`);
      assert.equal((served as PromiseFulfilledResult<{ name: string } | undefined>).value?.name.startsWith('sa1'), true);
      // The attempt still counts under the frozen server's max of 1: the next acquire waits for it.
      await assert.rejects(read('cold'), unavailable(/no connection was free within 300 ms/));
      // Once mysql2 gives up on it (1 s), its place is free: a new attempt, given up on in turn.
      await new Promise((resolve) => setTimeout(resolve, 1_100 - (Date.now() - started)));
      await assert.rejects(read('cold'), unavailable(/did not answer a connection attempt within 300 ms/));
      assert.equal(tenancy.stats().servers!.frozen!.open, 0);
      assert.ok(sockets.size >= 2, `${sockets.size} connection attempts reached the frozen server`);
    } finally {
      await tenancy.destroy();
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => frozen.close(resolve));
    }
  });

  /** "Moves" sa1: a copy of its database on the second server, with a row that tells them apart. */
  const copySa1ToSecond = async () => {
    const target = admins.get('second')!;
    await target.raw('drop database if exists ??', [db('sa1')]);
    await target.raw('create database ??', [db('sa1')]);
    await target.raw(`create table ${db('sa1')}.persons (id int auto_increment primary key, name varchar(255) not null, note varchar(255))`);
    await target.raw(`insert into ${db('sa1')}.persons (name) values ('sa1-moved')`);
  };
  const sa1Names = (tenancy: ReturnType<typeof createTenancy>) =>
    tenancy.runWithTenant('sa1', async () => (await Person.query().orderBy('id').limit(2)).map((p) => p.name));

  it('a tenant moved to another server is picked up after forget()', async () => {
    const where = new Map([['sa1', 'first']]);
    const tenancy = createTenancy(sharedOptions(2, { locate: (id) => ({ server: where.get(id) ?? 'first', database: db(id) }) }));
    try {
      assert.deepEqual(await sa1Names(tenancy), ['sa1-ada', 'sa1-bob']);
      await copySa1ToSecond();
      where.set('sa1', 'second');
      assert.deepEqual(await sa1Names(tenancy), ['sa1-ada', 'sa1-bob'], 'cached until forgotten');
      await tenancy.forget('sa1');
      assert.deepEqual(await sa1Names(tenancy), ['sa1-moved']);
    } finally {
      await tenancy.destroy();
      await admins.get('second')!.raw('drop database if exists ??', [db('sa1')]);
    }
  });

  it('a tenant moved while it is being opened: forget() keeps the open in flight out of the cache, and its request locates the tenant again', async () => {
    const where = new Map([['sa1', 'first']]);
    let calls = 0;
    let located!: () => void;
    const firstLocated = new Promise<void>((resolve) => (located = resolve));
    let letGo!: () => void;
    const held = new Promise<void>((resolve) => (letGo = resolve));
    const tenancy = createTenancy(
      sharedOptions(2, {
        // The first lookup reads the old location, then waits while the tenant moves.
        locate: async (id) => {
          const server = where.get(id) ?? 'first';
          if (++calls === 1) {
            located();
            await held;
          }
          return { server, database: db(id) };
        },
      }),
    );
    try {
      const early = sa1Names(tenancy);
      await firstLocated;
      await copySa1ToSecond();
      where.set('sa1', 'second');
      await tenancy.forget('sa1');
      letGo();
      assert.deepEqual(await early, ['sa1-moved'], 'the request in flight was served from the old location');
      assert.deepEqual(await sa1Names(tenancy), ['sa1-moved'], 'the old location was cached');
      assert.equal(calls, 2);
    } finally {
      await tenancy.destroy();
      await admins.get('second')!.raw('drop database if exists ??', [db('sa1')]);
    }
  });

  it('shared strategy: stats() counts the leases of scopes still running on a forgotten handle, as pool-per-tenant does', async () => {
    const tenancy = createTenancy(sharedOptions(2));
    try {
      let letGo!: () => void;
      const held = new Promise<void>((resolve) => (letGo = resolve));
      const scopes = [1, 2, 3].map(() => tenancy.runWithTenant('sa2', () => held));
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(tenancy.stats().leases, 3);
      const forgotten = tenancy.forget('sa2');
      const stats = tenancy.stats();
      assert.deepEqual([stats.leases, stats.draining], [3, 1], 'the draining scopes were not counted');
      letGo();
      await Promise.all(scopes);
      await forgotten;
      assert.deepEqual([tenancy.stats().leases, tenancy.stats().draining], [0, 0]);
    } finally {
      await tenancy.destroy();
    }
  });

  it("shared strategy: a server that refuses more connections (max_user_connections) makes queries wait for the pool's own, not fail", async () => {
    await limitPoolUser(2);
    const tenancy = createTenancy(sharedOptions(6, { maxConnectionsPerTenant: 6, acquireTimeoutMs: 5_000 }));
    try {
      const tenants = ON_FIRST.slice(0, 4);
      const outcomes = await peakThreads(() =>
        Promise.allSettled(
          Array.from({ length: 24 }, (_, i) => {
            const t = tenants[i % tenants.length]!;
            return tenancy.runWithTenant(t, async () => {
              await tenancy.knex().raw('select sleep(0.05)');
              return (await Person.query().findById(1))?.name;
            });
          }),
        ),
        false,
        true,
      );
      const failed = outcomes.result.filter((o) => o.status === 'rejected').map((o) => String((o as PromiseRejectedResult).reason));
      assert.deepEqual(failed, [], 'no query failed');
      assert.deepEqual(
        outcomes.result.map((o) => (o as PromiseFulfilledResult<unknown>).value),
        Array.from({ length: 24 }, (_, i) => `${tenants[i % tenants.length]}-ada`),
      );
      // The server holds its limit itself; what can fail here is the pool giving up one it had.
      assert.equal(outcomes.first, 2, 'the pool used both connections the server allows, and no more');
      assert.ok(tenancy.stats().servers!.first!.serverFull >= 1, JSON.stringify(tenancy.stats().servers!.first));
    } finally {
      await tenancy.destroy();
      await limitPoolUser(0);
    }
  });

  it('shared strategy: a query that waits after the server refused a connection as full gets a new one once the server has room and the pause is over', async () => {
    await limitPoolUser(1);
    const tenancy = createTenancy(sharedOptions(3, { maxConnectionsPerTenant: 3, acquireTimeoutMs: 6_000 }));
    try {
      await tenancy.runWithTenant('sa1', () => Person.query().first()); // the pool's one connection
      const holder = tenancy.runWithTenant('sa1', () => tenancy.knex().raw('select sleep(3)'));
      await new Promise((r) => setTimeout(r, 100));
      const started = Date.now();
      const waiting = tenancy.runWithTenant('sa2', () => Person.query().findById(1));
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(tenancy.stats().servers!.first!.serverFull, 1, 'refused as full, and waiting');
      await limitPoolUser(0);
      assert.equal((await waiting)?.name, 'sa2-ada');
      const waited = Date.now() - started;
      // Served by a new connection after the 1 s pause, not by the holder's at 3 s.
      assert.ok(waited < 2_500, `waited ${waited} ms`);
      await holder;
    } finally {
      await tenancy.destroy();
      await limitPoolUser(0);
    }
  });

  it("pool-per-tenant: a connection the server refuses for the account's MAX_USER_CONNECTIONS fails its query with TenantUnavailableError (503)", async () => {
    await limitPoolUser(1);
    const tenancy = createTenancy({
      knexConfig: (id) => {
        const config = poolConfig(mysqlConnection().port!, 2);
        return { ...config, connection: { ...(config.connection as object), database: db(id) } };
      },
    });
    try {
      await tenancy.runWithTenant('sa1', () => Person.query().first()); // its first connection
      const outcomes = await Promise.allSettled([1, 2].map(() => tenancy.runWithTenant('sa1', () => tenancy.knex().raw('select sleep(0.3)'))));
      const refused = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected').map((o) => o.reason as unknown);
      assert.equal(refused.length, 1, JSON.stringify(outcomes.map((o) => o.status)));
      assert.ok(refused[0] instanceof TenantUnavailableError, String(refused[0]));
      assert.equal((refused[0].cause as { errno?: number }).errno, 1226);
      assert.equal(toHttpError(refused[0])?.status, 503);
    } finally {
      await tenancy.destroy();
      await limitPoolUser(0);
    }
  });

  it('fairness: a tenant holding its cap of connections does not starve the others', async () => {
    const tenancy = createTenancy(sharedOptions(4, { maxConnectionsPerTenant: 2 }));
    try {
      await tenancy.runWithTenant('sa2', () => Person.query().first()); // warm
      const started = Date.now();
      const hog = Promise.all(Array.from({ length: 10 }, () => tenancy.runWithTenant('sa3', () => tenancy.knex().raw('select sleep(0.3)'))));
      await new Promise((r) => setTimeout(r, 50));
      const quick = Date.now();
      await Promise.all(Array.from({ length: 20 }, () => tenancy.runWithTenant('sa2', () => Person.query().first())));
      const quickMs = Date.now() - quick;
      await hog;
      const hogMs = Date.now() - started;
      assert.ok(quickMs < 250, `the other tenant waited ${quickMs} ms`);
      assert.ok(hogMs >= 1_400, `the hog ran at most 2 at a time (${hogMs} ms for 10 x 0.3 s)`);
    } finally {
      await tenancy.destroy();
    }
  });

  it('fairness under a flood: 3,000 queries of one tenant at once wait past its cap while the others are served; each gets its own rows', async () => {
    const tenancy = createTenancy(sharedOptions(4, { maxConnectionsPerTenant: 2, acquireTimeoutMs: 60_000 }));
    try {
      let floodDone = 0;
      const names = (t: string) => tenancy.runWithTenant(t, async () => (await Person.query().select('name').orderBy('id').limit(1))[0]!.name);
      for (const t of ['sa2', 'sa3', 'sa4']) await names(t); // handles opened, the cap sized
      const flood = Promise.all(
        Array.from({ length: 3_000 }, async () => {
          const name = await names('sa3');
          floodDone++;
          return name;
        }),
      );
      // Most of the flood waits (parked past the tenant's cap, counted all the same).
      const waiting = () => tenancy.stats().servers!.first!.waiting;
      for (let i = 0; i < 200 && waiting() < 2_900; i++) await new Promise((r) => setTimeout(r, 5));
      assert.ok(waiting() >= 2_900, JSON.stringify(tenancy.stats().servers!.first));
      const others = await Promise.all(Array.from({ length: 40 }, (_, i) => names(i % 2 === 0 ? 'sa2' : 'sa4')));
      const floodDoneWhenOthersWere = floodDone;
      const flooded = await flood;
      assert.ok(floodDoneWhenOthersWere < 3_000, 'the other tenants waited for the whole flood');
      assert.ok(others.every((name, i) => name.startsWith(i % 2 === 0 ? 'sa2-' : 'sa4-')), JSON.stringify(others));
      assert.ok(flooded.every((name) => name.startsWith('sa3-')), 'a flood query read another tenant');
      const stats = tenancy.stats().servers!.first!;
      assert.equal(stats.waiting, 0);
      assert.ok(stats.open <= 4, JSON.stringify(stats));
    } finally {
      await tenancy.destroy();
    }
  });

  it('pool-per-tenant budget: 6 tenants, 4 connections at most, evictions under load, no failed query', async () => {
    // One server, so that one processlist reading is one instant (two servers read one after the
    // other would count a connection that moved between them twice).
    const tenancy = createTenancy({
      knexConfig: (id) => {
        const config = poolConfig(mysqlConnection().port!, 3);
        return { ...config, connection: { ...(config.connection as object), database: db(id) } };
      },
      maxConnections: 4,
      maxPools: 3,
      acquireTimeoutMs: 20_000,
    });
    try {
      let failures = 0;
      let wrong = 0;
      const { first } = await peakThreads(() =>
        load(600, 24, async (i) => {
          const t = ON_FIRST[i % ON_FIRST.length]!;
          try {
            const rows = await tenancy.runWithTenant(t, () => Person.query().orderBy('id'));
            if (rows[0]?.name !== `${t}-ada`) wrong++;
          } catch {
            failures++;
          }
        }),
      );
      const stats = tenancy.stats();
      assert.equal(failures, 0);
      assert.equal(wrong, 0);
      assert.ok(first >= 1 && first <= 4, `the tenancy's server connections: ${first}`);
      assert.ok(stats.budget!.peak <= 4, JSON.stringify(stats.budget));
      assert.ok(stats.evictions > 0, 'pools were evicted under load');
    } finally {
      await tenancy.destroy();
    }
  });

  it("pool-per-tenant budget: a connection whose pool.afterCreate failed is closed and gives its unit back", async () => {
    let failing = 2;
    const tenancy = createTenancy({
      knexConfig: (id) => {
        const config = poolConfig(mysqlConnection().port!, 2);
        const afterCreate = (conn: unknown, done: (error: unknown, conn: unknown) => void) => done(failing-- > 0 ? new Error('SET timed out') : null, conn);
        return { ...config, connection: { ...(config.connection as object), database: db(id) }, pool: { ...config.pool, afterCreate } };
      },
      maxConnections: 1,
      acquireTimeoutMs: 1_500,
    });
    try {
      for (let i = 0; i < 2; i++) await assert.rejects(tenancy.runWithTenant('sa2', () => Person.query().first()));
      assert.equal(tenancy.stats().budget!.used, 0, 'the failed set-ups kept their units');
      assert.equal((await tenancy.runWithTenant('sa2', () => Person.query().orderBy('id').first()))?.name, 'sa2-ada');
      assert.equal(await threads('first'), 1, 'the connections whose set-up failed are still open on the server');
    } finally {
      await tenancy.destroy();
    }
  });

  it('pool-per-tenant budget: closing an idle pool whose pool.max > 1 frees its unit at once (no wait on its own pending connection)', async () => {
    // sa4 runs two queries at once over a budget of one: tarn opens a second connection, which waits
    // for the budget. Reclaiming sa4's idle pool for sa5 used to wait for that pending connection,
    // which waited for the unit only the close gives back: sa5 timed out with nothing running.
    const tenancy = createTenancy({
      knexConfig: (id) => ({ ...serverConfig(mysqlConnection().port!, 2), connection: { ...(serverConfig(0, 0).connection as object), port: mysqlConnection().port, database: db(id) } }),
      maxConnections: 1,
      overflow: 'wait',
      acquireTimeoutMs: 3_000,
    });
    try {
      const both = tenancy.runWithTenant('sa4', () => Promise.all([Person.query().orderBy('id'), Person.query().orderBy('id')]));
      const other = tenancy.runWithTenant('sa5', () => Person.query().orderBy('id'));
      const [[first, second], rows] = await Promise.all([both, other]);
      assert.deepEqual([first[0]!.name, second[0]!.name, rows[0]!.name], ['sa4-ada', 'sa4-ada', 'sa5-ada']);
      assert.equal(tenancy.stats().budget!.timeouts, 0);
    } finally {
      await tenancy.destroy();
    }
  });

  it("pool-per-tenant budget: a burst's openings its own pool no longer needs give their turn to another tenant's query", async () => {
    // sa4 runs four queries at once over a budget of two: tarn starts four openings, two get units
    // and two wait. sa4's first two connections, released, serve its last two queries, so those two
    // openings serve nobody. When sa4's connections close idle, their units went to them (two more
    // idle connections for sa4) while sa5's query waited behind; now they are given up.
    const tenancy = createTenancy({
      knexConfig: (id) => {
        const config = poolConfig(mysqlConnection().port!, 4);
        return { ...config, connection: { ...(config.connection as object), database: db(id) }, pool: { min: 0, max: 4, idleTimeoutMillis: 300, reapIntervalMillis: 50 } };
      },
      maxConnections: 2,
      overflow: 'wait',
      acquireTimeoutMs: 10_000,
    });
    try {
      let opened = 0;
      let others: { name: string }[] = [];
      await tenancy.runWithTenant('sa4', async () => {
        type Tarn = { on(event: string, fn: () => void): void; numUsed(): number; numFree(): number };
        const pool = (tenancy.knex().client as unknown as { pool: Tarn }).pool;
        // Opening the pool checked the database on a connection, which stays open in it.
        opened = pool.numUsed() + pool.numFree();
        pool.on('createSuccess', () => opened++);
        const burst = Promise.all([1, 2, 3, 4].map(() => tenancy.knex().raw('select sleep(0.3)')));
        await new Promise((r) => setTimeout(r, 100));
        // sa4's lease is held meanwhile: its pool cannot be reclaimed for sa5.
        const other = tenancy.runWithTenant('sa5', () => Person.query().orderBy('id'));
        await burst;
        others = await other;
      });
      assert.equal(others[0]?.name, 'sa5-ada');
      const budget = tenancy.stats().budget!;
      assert.equal(opened, 2, `connections opened for sa4 (${JSON.stringify(budget)})`);
      assert.equal(budget.unneeded, 2, JSON.stringify(budget));
      assert.equal(budget.timeouts, 0);
      assert.ok(budget.peak <= 2, JSON.stringify(budget));
    } finally {
      await tenancy.destroy();
    }
  });

  it('pool-per-tenant budget: a cancelled timeout takes a free unit for its KILL, or fails at once when none is free', async () => {
    const make = (maxConnections: number) =>
      createTenancy({
        knexConfig: (id) => ({ ...serverConfig(mysqlConnection().port!, 1), connection: { ...(serverConfig(0, 0).connection as object), port: mysqlConnection().port, database: db(id) } }),
        maxConnections,
        overflow: 'wait',
        acquireTimeoutMs: 3_000,
      });
    const roomy = make(2);
    try {
      await assert.rejects(roomy.runWithTenant('sa4', () => roomy.knex().raw('select sleep(2)').timeout(100, { cancel: true })), (error: Error) => error.name === 'KnexTimeoutError');
      assert.ok(roomy.stats().budget!.peak <= 2);
    } finally {
      await roomy.destroy();
    }
    // The only unit is the cancelled query's own: the KILL used to wait acquireTimeoutMs for it.
    const full = make(1);
    try {
      const started = Date.now();
      await assert.rejects(full.runWithTenant('sa4', () => full.knex().raw('select sleep(0.5)').timeout(100, { cancel: true })), TenantUnavailableError);
      assert.ok(Date.now() - started < 1_500, `answered after ${Date.now() - started} ms`);
      assert.equal(full.stats().budget!.peak, 1);
    } finally {
      await full.destroy();
    }
  });

  it("pool-per-tenant budget with overflow 'reject' fails fast with a 503-mapped error, and knex logs no stack for the refusal; a connection the server refuses is still logged", async () => {
    const warnings: string[] = [];
    const deadPort = await closedPort();
    const tenancy = createTenancy({
      knexConfig: (id) => ({
        ...serverConfig(mysqlConnection().port!, 2),
        connection: { ...(serverConfig(0, 0).connection as object), port: id === 'dead' ? deadPort : mysqlConnection().port, database: id === 'dead' ? db('sa1') : db(id) },
        log: { warn: (message: string) => warnings.push(message) },
      }),
      maxConnections: 1,
      overflow: 'reject',
      verifyConnection: false,
    });
    try {
      const busy = tenancy.runWithTenant('sa4', () => tenancy.knex().raw('select sleep(0.3)'));
      await new Promise((r) => setTimeout(r, 50));
      for (let i = 0; i < 5; i++) {
        const error = await tenancy.runWithTenant('sa5', () => Person.query()).catch((e: unknown) => e);
        assert.equal((error as { code?: string }).code, 'TENANT_UNAVAILABLE', String(error));
        assert.equal((error as { statusCode?: number }).statusCode, 503);
      }
      // knex 3.3 logged "Acquire connection error: TenantUnavailableError: ..." with its stack for each.
      assert.equal(warnings.length, 0, warnings.join('\n'));
      await busy;
      // Not the library's refusal: the app's log.warn still gets knex's line.
      await assert.rejects(tenancy.runWithTenant('dead', () => Person.query()), TenantUnavailableError);
      assert.ok(warnings.some((w) => w.startsWith('Acquire connection error: ') && w.includes('ECONNREFUSED')), warnings.join('\n'));
    } finally {
      await tenancy.destroy();
    }
  });

  it('pool-per-tenant: a tenant whose database is not there is a typed 404, and knex logs no stack for it (a client naming unknown ids at will filled the logs when no tenantExists is given)', async () => {
    const warnings: string[] = [];
    const tenancy = createTenancy({
      knexConfig: (id) => ({
        ...serverConfig(mysqlConnection().port!, 2),
        connection: { ...(serverConfig(0, 0).connection as object), port: mysqlConnection().port, database: db(id) },
        log: { warn: (message: string) => warnings.push(message) },
      }),
    });
    try {
      for (const id of ['nosuch1', 'nosuch2']) {
        const error = await tenancy.runWithTenant(id, () => Person.query()).catch((e: unknown) => e);
        assert.equal((error as { code?: string }).code, 'TENANT_UNKNOWN', String(error));
        assert.equal((error as { statusCode?: number }).statusCode, 404);
        assert.equal(((error as { cause?: { errno?: number } }).cause)?.errno, 1049);
      }
      assert.equal(warnings.length, 0, warnings.join('\n'));
      assert.equal(tenancy.stats().pools, 0);
      assert.equal((await tenancy.runWithTenant('sa1', () => Person.query().findById(1)))?.name, 'sa1-ada');
    } finally {
      await tenancy.destroy();
    }
  });

  it("pool-per-tenant budget, overflow 'reject': an idle pool whose only connection is held by a transaction that outlived its scope frees no unit now: refused at once, and that pool is left open", async () => {
    const tenancy = createTenancy({
      knexConfig: (id) => ({ ...serverConfig(mysqlConnection().port!, 1), connection: { ...(serverConfig(0, 0).connection as object), port: mysqlConnection().port, database: db(id) } }),
      maxConnections: 1,
      overflow: 'reject',
      acquireTimeoutMs: 3_000,
    });
    try {
      const trx = await tenancy.runWithTenant('sa4', () => tenancy.knex().transaction());
      await trx('persons').where({ id: 1 }).update({ name: 'sa4-ada' });
      const started = Date.now();
      await assert.rejects(tenancy.runWithTenant('sa5', () => Person.query()), TenantUnavailableError);
      // Before: it closed sa4's pool (draining under the transaction) and waited acquireTimeoutMs.
      assert.ok(Date.now() - started < 1_000, `refused after ${Date.now() - started} ms`);
      assert.equal(tenancy.stats().budget!.timeouts, 0);
      assert.equal(tenancy.stats().draining, 0, "sa4's pool was closed under its transaction");
      await trx.commit();
      // Its connection free now, the pool is closed for sa5's query.
      assert.equal((await tenancy.runWithTenant('sa5', () => Person.query().findById(1)))?.name, 'sa5-ada');
    } finally {
      await tenancy.destroy();
    }
  });

  it('pool-per-tenant budget: a pool with one connection held by a transaction that outlived its scope and one free frees nothing at once: not closed for \'reject\' (refused at once), and passed over for a pool whose connections are all free under \'wait\'', async () => {
    const make = (maxConnections: number, overflow: 'wait' | 'reject') =>
      createTenancy({
        knexConfig: (id) => ({ ...serverConfig(mysqlConnection().port!, 2), connection: { ...(serverConfig(0, 0).connection as object), port: mysqlConnection().port, database: db(id) } }),
        maxConnections,
        overflow,
        acquireTimeoutMs: 3_000,
      });
    for (const overflow of ['reject', 'wait'] as const) {
      const tenancy = make(overflow === 'reject' ? 2 : 3, overflow);
      try {
        const trx = await tenancy.runWithTenant('sa4', () => tenancy.knex().transaction());
        await trx('persons').where({ id: 1 }).update({ name: 'sa4-ada' });
        // A second connection of sa4's pool, used outside the transaction, then free.
        await tenancy.runWithTenant('sa4', () => tenancy.knex().raw('select 1'));
        // 'wait': a newer idle pool whose one connection is free.
        if (overflow === 'wait') await tenancy.runWithTenant('sa5', () => tenancy.knex().raw('select 1'));
        const started = Date.now();
        const outcome = await tenancy.runWithTenant('sa6', () => Person.query().findById(1)).then((row) => row?.name, (error: unknown) => error);
        assert.ok(Date.now() - started < 1_000, `${overflow}: answered after ${Date.now() - started} ms`);
        if (overflow === 'reject') assert.ok(outcome instanceof TenantUnavailableError, String(outcome));
        else assert.equal(outcome, 'sa6-ada');
        assert.equal(tenancy.stats().budget!.timeouts, 0);
        assert.equal(tenancy.stats().draining, 0, `${overflow}: sa4's pool was closed under its transaction`);
        await trx.commit();
      } finally {
        await tenancy.destroy();
      }
    }
  });

  it('pool-per-tenant, with and without a budget: a query waiting for a connection when destroy() closes its pool fails typed (503), not with the pool\'s plain "aborted"', async () => {
    for (const maxConnections of [1, undefined]) {
      const tenancy = createTenancy({
        knexConfig: (id) => ({ ...serverConfig(mysqlConnection().port!, 1), connection: { ...(serverConfig(0, 0).connection as object), port: mysqlConnection().port, database: db(id) } }),
        maxConnections,
        overflow: 'wait',
        acquireTimeoutMs: 8_000,
      });
      const busy = tenancy.runWithTenant('sa4', () => tenancy.knex().raw('select sleep(1)')).catch((error: unknown) => error);
      await new Promise((r) => setTimeout(r, 200));
      const waiting = tenancy.runWithTenant('sa4', () => tenancy.knex().raw('select 2')).catch((error: unknown) => error);
      await new Promise((r) => setTimeout(r, 100));
      await tenancy.destroy({ drainTimeoutMs: 100 });
      const error = await waiting;
      assert.ok(error instanceof TenantUnavailableError, `budget ${maxConnections}: ${String(error)}`);
      assert.equal(toHttpError(error)?.status, 503);
      await busy;
    }
  });
});
