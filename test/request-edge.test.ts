/**
 * Central models pinned to a non-tenant knex, and the HTTP error mapping against real MariaDB faults:
 * a tenant database dropped under a cached pool (404, pool forgotten) and a database server that
 * goes away and comes back behind a TCP proxy (503 with Retry-After, then recovery, no restart).
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import express from 'express';
import knexFactory, { type Knex } from 'knex';
import { Model } from 'objection';
import { centralModel, createTenancy, runWithTenant, setDefaultTenancy, TenantModel, TenantUnavailableError, type Tenancy } from '../lib/index';
import { createSeededTenant, mysqlBackend, mysqlConnection, skipMysql, sqliteBackend } from './helpers/databases';
import { createSchema, Person, seed } from './helpers/fixtures';
import { listen } from './helpers/http';

describe('central models', () => {
  const backend = sqliteBackend('central');
  let tenancy: Tenancy;
  let catalog: Knex;
  class Plan extends centralModel(Model, () => catalog) {
    static override tableName = 'plans';
    declare name: string;
  }
  class Tenant extends centralModel(TenantModel, () => catalog) {
    static override tableName = 'tenants';
    declare id: string;
  }

  before(async () => {
    catalog = knexFactory(backend.knexConfig('catalog'));
    await catalog.schema.createTable('tenants', (t) => t.string('id'));
    await catalog.schema.createTable('plans', (t) => t.string('name'));
    await catalog('tenants').insert([{ id: 'c1' }, { id: 'c2' }]);
    await catalog('plans').insert({ name: 'gold' });
    tenancy = createTenancy({ knexConfig: backend.knexConfig, tenantExists: async (id) => Boolean(await Tenant.query().findById(id)) });
    setDefaultTenancy(tenancy);
    for (const t of ['c1', 'c2']) {
      await backend.createDatabase(t);
      await runWithTenant(t, async () => {
        await createSchema(tenancy.knex(), t);
        await seed(tenancy.knex(), t);
      });
    }
  });
  after(async () => {
    await tenancy.destroy();
    await catalog.destroy();
    await backend.close();
  });

  it('read the central database outside scopes, inside tenant scopes and inside tenant transactions', async () => {
    assert.deepEqual((await Tenant.query().orderBy('id')).map((t) => t.id), ['c1', 'c2']);
    await runWithTenant('c2', async () => {
      assert.equal((await Person.query().findById(1))!.name, 'c2-ada', 'tenant models still use the tenant');
      assert.equal((await Tenant.query()).length, 2);
      assert.equal((await Plan.query().first())!.name, 'gold');
      await tenancy.transaction(async () => {
        assert.equal((await Tenant.query()).length, 2);
        const [loaded] = await Tenant.query().where({ id: 'c1' });
        assert.equal((await loaded!.$query()).id, 'c1', 'no instance guard on central models');
      });
    });
    await runWithTenant('c1', async () => assert.equal((await Plan.query()).length, 1));
  });
});

/** A TCP proxy to MariaDB that can be cut and restored, standing for a server that goes away. */
function proxy(target: number): Promise<{ port: number; cut(): Promise<void>; restore(): Promise<void>; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  let server: net.Server;
  let port = 0;
  const start = () =>
    new Promise<void>((resolve) => {
      server = net.createServer((client) => {
        const upstream = net.connect(target, '127.0.0.1');
        for (const s of [client, upstream]) {
          sockets.add(s);
          s.on('close', () => sockets.delete(s));
          s.on('error', () => s.destroy());
        }
        client.pipe(upstream).pipe(client);
      });
      server.listen(port, '127.0.0.1', () => {
        port = (server.address() as net.AddressInfo).port;
        resolve();
      });
    });
  const stop = () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  return start().then(() => ({ port, cut: stop, restore: start, close: stop }));
}

for (const strategy of ['pool-per-tenant', 'shared'] as const) describe(`HTTP error mapping against MariaDB faults, ${strategy}`, { skip: skipMysql }, () => {
  const backend = mysqlBackend(strategy === 'shared' ? 'edges' : 'edge');
  let tenancy: Tenancy;
  let cutProxy: Awaited<ReturnType<typeof proxy>>;
  let server: Awaited<ReturnType<typeof listen>>;
  let central: Knex;
  const problems: unknown[] = [];
  const onUnhandled = (e: unknown) => problems.push(e);

  before(async () => {
    process.on('unhandledRejection', onUnhandled);
    cutProxy = await proxy(Number(new URL(`http://${mysqlConnection().host}:${mysqlConnection().port}`).port));
    for (const t of ['e1', 'e2', 'eflaky']) {
      const knex = await createSeededTenant(backend, t);
      await knex.destroy();
    }
    const { database: _database, ...serverConnection } = mysqlConnection();
    void _database;
    tenancy = createTenancy(
      strategy === 'shared'
        ? {
            strategy,
            servers: {
              main: { client: 'mysql2', connection: serverConnection, pool: { max: 3 } },
              flaky: { client: 'mysql2', connection: { ...serverConnection, port: cutProxy.port }, pool: { max: 2 } },
            },
            locate: (id) => ({ server: id === 'eflaky' ? 'flaky' : 'main', database: `ot_edges_${id}` }),
            acquireTimeoutMs: 2_000,
            tenantExists: backend.databaseExists,
          }
        : {
            knexConfig: (id) => {
              const config = backend.knexConfig(id);
              if (id !== 'eflaky') return config;
              return { ...config, connection: { ...(config.connection as object), port: cutProxy.port }, acquireConnectionTimeout: 2_000 };
            },
            tenantExists: backend.databaseExists,
          },
    );
    const app = express();
    // Before the tenant middleware: no scope (a health check reading the central database).
    app.get('/central-bug-no-tenant', async (_req, res, next) => {
      try {
        res.json(await central.raw('select * from persons'));
      } catch (error) {
        next(error);
      }
    });
    app.use(tenancy.middleware());
    app.get('/people', async (_req, res, next) => {
      try {
        res.json(await Person.query().orderBy('id'));
      } catch (error) {
        next(error);
      }
    });
    // A central knex with no database: its unqualified query fails with 1046, inside a tenant's request.
    central = knexFactory({ client: 'mysql2', connection: serverConnection, pool: { min: 0, max: 1 } });
    app.get('/central-bug', async (_req, res, next) => {
      try {
        res.json(await central.raw('select * from persons'));
      } catch (error) {
        next(error);
      }
    });
    // Another tenant's data inside a request (an admin view, say): its failure is not the caller's to read.
    app.get('/nested-flaky', async (_req, res, next) => {
      try {
        res.json(await tenancy.runWithTenant('eflaky', () => Person.query()));
      } catch (error) {
        next(error);
      }
    });
    app.get('/nested-unknown', async (_req, res, next) => {
      try {
        res.json(await tenancy.runWithTenant('enope', () => Person.query()));
      } catch (error) {
        next(error);
      }
    });
    // The same, with next(error) called from inside the nested scope.
    app.get('/nested-flaky-inside', (_req, res, next) => {
      void tenancy
        .runWithTenant('eflaky', async () => {
          try {
            res.json(await Person.query());
          } catch (error) {
            next(error);
          }
        })
        .catch(next);
    });
    app.use(tenancy.errorHandler({ all: true }));
    server = await listen(app);
  });
  after(async () => {
    process.off('unhandledRejection', onUnhandled);
    await server.close();
    await tenancy.destroy();
    await central.destroy();
    await cutProxy.close().catch(() => undefined);
    for (const t of ['e1', 'e2', 'eflaky']) await backend.dropDatabase(t);
    await backend.close();
  });

  const get = (t: string) => fetch(`${server.url}/people`, { headers: { 'x-tenant-id': t } });

  it('a tenant database dropped under a cached pool answers 404, is forgotten, and the others do not notice', async () => {
    assert.equal((await get('e1')).status, 200);
    assert.equal((await get('e2')).status, 200);
    // Pool per tenant: its pool closes. Shared: its handle is dropped (the server pool stays).
    const cached = () => (strategy === 'shared' ? tenancy.stats().tenants! : tenancy.stats().pools);
    const cachedBefore = cached();
    await backend.dropDatabase('e1');
    const gone = await get('e1');
    assert.equal(gone.status, 404);
    const body = await gone.text();
    assert.equal(JSON.parse(body).error.code, 'TENANT_UNKNOWN');
    assert.doesNotMatch(body, /ot_edge|127\.0\.0\.1|root/);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(cached(), cachedBefore - 1, 'the dropped tenant was forgotten');
    assert.equal((await get('e1')).status, 404, 'the catalog now says unknown');
    const other = await get('e2');
    assert.equal(other.status, 200);
    assert.equal(((await other.json()) as { name: string }[])[0]!.name, 'e2-ada');
  });

  it("\"No database selected\" from a central knex inside a tenant's request is the app's error (500), not the tenant gone: nothing is forgotten", async () => {
    assert.equal((await get('e2')).status, 200);
    const cached = () => (strategy === 'shared' ? tenancy.stats().tenants! : tenancy.stats().pools);
    const cachedBefore = cached();
    const evictionsBefore = tenancy.stats().evictions;
    for (let i = 0; i < 3; i++) {
      const answer = await fetch(`${server.url}/central-bug`, { headers: { 'x-tenant-id': 'e2' } });
      assert.equal(answer.status, 500, 'an error of the app was answered as an unknown tenant');
    }
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(tenancy.stats().evictions, evictionsBefore, "the tenant's pool was evicted for an error that was not its");
    assert.equal(cached(), cachedBefore);
    assert.equal((await get('e2')).status, 200);
  });

  it("a nested runWithTenant of an unknown tenant keeps its status but does not echo that tenant's id to the request's caller", async () => {
    const answer = await fetch(`${server.url}/nested-unknown`, { headers: { 'x-tenant-id': 'e2' } });
    assert.equal(answer.status, 404);
    const body = await answer.text();
    assert.equal(JSON.parse(body).error.code, 'TENANT_UNKNOWN');
    assert.doesNotMatch(body, /enope/);
  });

  it('"No database selected" from a central knex outside any tenant scope is the app\'s error (500), not 404 "unknown tenant"', async () => {
    const answer = await fetch(`${server.url}/central-bug-no-tenant`);
    assert.equal(answer.status, 500);
    assert.equal(((await answer.json()) as { error: { code: string } }).error.code, 'INTERNAL');
  });

  it('a server that goes away answers 503 with Retry-After, then recovers without a restart', async () => {
    assert.equal((await get('eflaky')).status, 200);
    await cutProxy.cut();
    const started = Date.now();
    const down = await get('eflaky');
    assert.equal(down.status, 503);
    assert.equal(down.headers.get('retry-after'), '1');
    const body = await down.text();
    assert.equal(JSON.parse(body).error.code, 'TENANT_UNAVAILABLE');
    assert.doesNotMatch(body, /ECONNREFUSED|127\.0\.0\.1|root|stack/i);
    assert.ok(Date.now() - started < 5_000, 'failed within the acquire timeout');
    // Outside HTTP (a job, a script): a typed TenantUnavailableError, under either strategy (the pool
    // per tenant rejected with the driver's raw ECONNREFUSED).
    const direct = await tenancy.runWithTenant('eflaky', () => Person.query()).then(() => 'served', (error: unknown) => error);
    assert.ok(direct instanceof TenantUnavailableError, String(direct));
    assert.equal(direct.tenantId, 'eflaky');
    assert.equal((await get('e2')).status, 200, 'tenants on the healthy path are served');
    // In e2's request, a nested scope of the tenant that is down: a 503 that does not name it.
    const nested = await fetch(`${server.url}/nested-flaky`, { headers: { 'x-tenant-id': 'e2' } });
    assert.equal(nested.status, 503);
    const nestedBody = await nested.text();
    assert.equal(JSON.parse(nestedBody).error.code, 'TENANT_UNAVAILABLE');
    assert.doesNotMatch(nestedBody, /eflaky/, 'the answer to e2 named another tenant');
    const inside = await fetch(`${server.url}/nested-flaky-inside`, { headers: { 'x-tenant-id': 'e2' } });
    assert.equal(inside.status, 503);
    assert.doesNotMatch(await inside.text(), /eflaky/, 'the answer to e2 named another tenant (next() called in its scope)');
    await cutProxy.restore();
    let status = 0;
    for (let i = 0; i < 20 && status !== 200; i++) {
      status = (await get('eflaky')).status;
      if (status !== 200) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(status, 200, 'recovered');
    const rows = (await (await get('eflaky')).json()) as { name: string }[];
    assert.deepEqual(rows.map((r) => r.name), ['eflaky-ada', 'eflaky-bob']);
    assert.deepEqual(problems, [], 'no unhandled rejection');
  });
});
