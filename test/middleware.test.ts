/**
 * The Express middleware on Express 4 and 5, with body parsers mounted before and after it, over real
 * HTTP and real SQLite tenant files.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import express4 from 'express';
import express5 from 'express5';
import { bindTenant, createTenancy, currentTenantId, fromPath, tryCurrentTenantId, type Tenancy } from '../lib/index';
import { sqliteBackend } from './helpers/databases';
import { Person, setUpTenants } from './helpers/fixtures';
import { jsonErrors, listen, randomPause, type Running } from './helpers/http';

const backend = sqliteBackend('mw');
const TENANTS = ['acme', 'globex'];
let tenancy: Tenancy;

before(async () => {
  for (const t of TENANTS) await backend.createDatabase(t);
  tenancy = createTenancy({ knexConfig: backend.knexConfig, tenantExists: backend.databaseExists });
  await setUpTenants(tenancy, TENANTS);
});
after(async () => {
  await tenancy.destroy();
  await backend.close();
});

/** What a handler sees after the body parsers: the scope, the database behind it, and the parsed body. */
async function whoami(req: { body?: unknown }, res: { json(body: unknown): void }): Promise<void> {
  await randomPause();
  const info = await tenancy.knex()('tenant_info').first();
  const people = await Person.query().orderBy('id');
  res.json({ scope: currentTenantId(), db: info.tenant_id, people: people.map((p) => p.name), body: req.body });
}

for (const [version, express] of [['4', express4], ['5', express5]] as const) {
  for (const order of ['parsers before', 'parsers after'] as const) {
    describe(`Express ${version}, ${order} the middleware`, () => {
      let server: Running;
      before(async () => {
        const app = express();
        const parsers = [express.json(), express.urlencoded({ extended: false }), express.text()];
        if (order === 'parsers before') app.use(...parsers);
        app.use('/health', (_req, res) => res.json({ ok: true, tenant: tryCurrentTenantId() ?? null }));
        app.use('/open', tenancy.middleware({ optional: true }), async (_req, res, next) => {
          try {
            res.json({ tenant: tryCurrentTenantId() ?? null, count: await Person.query().resultSize() });
          } catch (error) {
            next(error);
          }
        });
        app.use(tenancy.middleware());
        if (order === 'parsers after') app.use(...parsers);
        app.post('/whoami', (req, res, next) => void whoami(req, res).catch(next));
        app.get('/whoami', (req, res, next) => void whoami(req, res).catch(next));
        app.use(jsonErrors);
        server = await listen(app);
      });
      after(() => server.close());

      it('runs the handler, after JSON, urlencoded and text bodies are parsed, in the tenant scope', async () => {
        for (const t of TENANTS) {
          for (const [type, body, parsed] of [
            ['application/json', JSON.stringify({ hello: t }), { hello: t }],
            ['application/x-www-form-urlencoded', `hello=${t}`, { hello: t }],
            ['text/plain', `hello ${t}`, `hello ${t}`],
          ] as const) {
            const response = await fetch(`${server.url}/whoami`, { method: 'POST', headers: { 'x-tenant-id': t, 'content-type': type }, body });
            assert.equal(response.status, 200);
            const json = await response.json();
            assert.deepEqual(json, { scope: t, db: t, people: [`${t}-ada`, `${t}-bob`], body: parsed });
          }
        }
      });

      it('answers 400 without a tenant, 400 for an invalid id, 404 for an unknown tenant, through next(err)', async () => {
        const cases: [Record<string, string>, number, string][] = [
          [{}, 400, 'TENANT_CONTEXT_MISSING'],
          [{ 'x-tenant-id': '../acme' }, 400, 'TENANT_ID_INVALID'],
          [{ 'x-tenant-id': 'acme, globex' }, 400, 'TENANT_ID_INVALID'],
          [{ 'x-tenant-id': 'initech' }, 404, 'TENANT_UNKNOWN'],
        ];
        for (const [headers, status, code] of cases) {
          const response = await fetch(`${server.url}/whoami`, { headers });
          assert.equal(response.status, status, JSON.stringify(headers));
          assert.equal(((await response.json()) as { error: { code: string } }).error.code, code);
        }
        assert.equal(tenancy.stats().pools, 2, 'no pool was opened for a bad tenant');
      });

      it('lets tenant-optional routes run without a scope, where tenant models still fail closed', async () => {
        const health = await fetch(`${server.url}/health`, { headers: { 'x-tenant-id': 'acme' } });
        assert.deepEqual(await health.json(), { ok: true, tenant: null });
        const open = await fetch(`${server.url}/open`);
        assert.equal(open.status, 500, "a tenant query without a scope is a server bug, not a client error");
        assert.equal(((await open.json()) as { error: { code: string } }).error.code, 'TENANT_CONTEXT_MISSING');
        const scoped = await fetch(`${server.url}/open`, { headers: { 'x-tenant-id': 'globex' } });
        assert.deepEqual(await scoped.json(), { tenant: 'globex', count: 2 });
      });

      it('gives every lease back when responses end', async () => {
        await Promise.all(Array.from({ length: 40 }, (_, i) => fetch(`${server.url}/whoami`, { headers: { 'x-tenant-id': TENANTS[i % 2]! } }).then((r) => r.json())));
        assert.equal(tenancy.stats().leases, 0);
      });
    });
  }
}

describe('middleware resolvers and errors', () => {
  it('accepts an async resolver and sends resolver errors to next(err), never throwing', async () => {
    const app = express4();
    app.use(
      tenancy.middleware({
        resolve: async (req) => {
          await randomPause();
          if (req.url?.startsWith('/boom')) throw Object.assign(new Error('resolver failed'), { statusCode: 502, code: 'RESOLVER' });
          return req.url?.split('/')[2];
        },
      }),
    );
    app.get('/t/:tenant', (_req, res) => res.json({ tenant: currentTenantId() }));
    app.get('/boom', (_req, res) => res.json({ reached: true }));
    app.use(jsonErrors);
    const server = await listen(app);
    try {
      assert.deepEqual(await (await fetch(`${server.url}/t/globex`)).json(), { tenant: 'globex' });
      const boom = await fetch(`${server.url}/boom`);
      assert.equal(boom.status, 502);
      assert.equal(((await boom.json()) as { error: { code: string } }).error.code, 'RESOLVER');
    } finally {
      await server.close();
    }
  });

  it('calls next(err) when a synchronous resolver throws', async () => {
    const middleware = tenancy.middleware({
      resolve: () => {
        throw new Error('sync resolver failure');
      },
    });
    const error = await new Promise((resolve) => middleware({} as never, {} as never, resolve));
    assert.match(String(error), /sync resolver failure/);
  });

  it("a resolver that throws or rejects with something that is not an Error refuses the request (500), never runs the route without a tenant", async () => {
    for (const version of [express4, express5]) {
      const app = version();
      app.get('/reject', tenancy.middleware({ resolve: () => Promise.reject(undefined) }), (_req, res) => res.json({ routeRan: true }));
      app.get('/throw', tenancy.middleware({ resolve: () => { throw 'route'; } }), (_req, res) => res.json({ routeRan: true }));
      app.get('/throw', (_req, res) => res.json({ nextRouteRan: true }));
      app.use(tenancy.errorHandler());
      const server = await listen(app);
      try {
        for (const path of ['/reject', '/throw']) {
          const response = await fetch(`${server.url}${path}`);
          assert.equal(response.status, 500, path);
          assert.doesNotMatch(await response.text(), /RouteRan/i, path);
        }
      } finally {
        await server.close();
      }
    }
  });

  it("a pipelined request's own events (res 'finish', req 'data') run in its tenant, not the tenant of the request before it on the connection", async () => {
    const { connect } = await import('node:net');
    for (const version of [express4, express5]) {
      const seen: string[] = [];
      const app = version();
      app.use(tenancy.middleware({ resolve: fromPath('/t/') }));
      app.post('/t/:tenant/audit', (req, res) => {
        const tenant = req.params.tenant;
        req.on('data', () => seen.push(`${tenant} data in ${tryCurrentTenantId()}`));
        req.on('end', () => {
          res.on('finish', () => seen.push(`${tenant} finish in ${tryCurrentTenantId()}`));
          setTimeout(() => res.json({ tenant }), tenant === 'acme' ? 30 : 0);
        });
      });
      const server = await listen(app);
      try {
        const { port } = new URL(server.url);
        const body = 'x'.repeat(10);
        const one = (t: string) => `POST /t/${t}/audit HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
        await new Promise<void>((resolve, reject) => {
          const socket = connect(Number(port), '127.0.0.1', () => socket.write(one('acme') + one('globex') + one('acme')));
          let text = '';
          socket.setEncoding('utf8');
          socket.on('data', (chunk: string) => {
            text += chunk;
            if ((text.match(/HTTP\/1\.1 200/g) ?? []).length === 3) {
              socket.end();
              resolve();
            }
          });
          socket.on('error', reject);
        });
        await new Promise((resolve) => setTimeout(resolve, 20));
        assert.ok(seen.length >= 6, seen.join());
        for (const entry of seen) {
          const [tenant, , , scope] = entry.split(' ');
          assert.equal(scope, tenant, entry);
        }
      } finally {
        await server.close();
      }
    }
  });

  it("a pipelined request whose client hangs up while its response waits behind another gives its lease back when its route ends", async () => {
    const { connect } = await import('node:net');
    for (const version of [express4, express5]) {
      const own = createTenancy({ knexConfig: backend.knexConfig, tenantExists: backend.databaseExists });
      const ended: string[] = [];
      const app = version();
      app.use(own.middleware({ resolve: fromPath('/t/') }));
      app.get('/t/:tenant/slow', (_req, res) => void setTimeout(() => res.json({ ok: 1 }), 200));
      app.get('/t/:tenant/fast', async (req, res) => {
        await own.knex()('tenant_info').first();
        res.json({ ok: 1 });
        ended.push(req.params.tenant!);
      });
      const server = await listen(app);
      try {
        const { port } = new URL(server.url);
        const get = (path: string) => `GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`;
        const socket = connect(Number(port), '127.0.0.1');
        socket.on('error', () => undefined);
        await new Promise((resolve) => socket.once('connect', resolve));
        // Both globex responses are queued behind acme's (200 ms) when the client goes.
        socket.write(get('/t/acme/slow') + get('/t/globex/fast') + get('/t/globex/fast'));
        await new Promise((resolve) => setTimeout(resolve, 50));
        socket.destroy();
        await new Promise((resolve) => setTimeout(resolve, 400));
        assert.deepEqual(ended, ['globex', 'globex'], 'both queued routes ran to their end');
        // Before: 2 leases held for good (the 30 s grace never started), so evict('globex') never settled.
        assert.equal(own.stats().leases, 0, JSON.stringify(own.stats()));
        const evicted = await Promise.race([own.evict('globex').then(() => 'evicted'), new Promise((resolve) => setTimeout(() => resolve('still pending after 2 s'), 2_000))]);
        assert.equal(evicted, 'evicted');
      } finally {
        await server.close();
        await own.destroy({ drainTimeoutMs: 100 });
      }
    }
  });

  it('a pipelined request whose route destroys its response while it waits behind a slow one gives its lease back at once', async () => {
    const { connect } = await import('node:net');
    for (const version of [express4, express5]) {
      const own = createTenancy({ knexConfig: backend.knexConfig, tenantExists: backend.databaseExists });
      let destroyed!: () => void;
      const routeDestroyed = new Promise<void>((resolve) => (destroyed = resolve));
      const app = version();
      app.use(own.middleware({ resolve: fromPath('/t/') }));
      app.get('/t/:tenant/slow', (_req, res) => void setTimeout(() => res.json({ ok: 1 }), 1_500));
      app.get('/t/:tenant/destroy', async (_req, res) => {
        await own.knex()('tenant_info').first();
        res.destroy();
        destroyed();
      });
      const server = await listen(app);
      const socket = connect(Number(new URL(server.url).port), '127.0.0.1');
      try {
        socket.on('error', () => undefined);
        await new Promise((resolve) => socket.once('connect', resolve));
        const get = (path: string) => `GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`;
        socket.write(get('/t/acme/slow') + get('/t/globex/destroy'));
        await routeDestroyed;
        const started = Date.now();
        await own.evict('globex');
        assert.ok(Date.now() - started < 500, `evict(globex) waited ${Date.now() - started} ms for the response ahead of it`);
      } finally {
        socket.destroy();
        await server.close();
        await own.destroy({ drainTimeoutMs: 100 });
      }
    }
  });

  it("a keep-alive connection's many requests leave no listener behind on it", async () => {
    const app = express5();
    const counts: number[] = [];
    app.use(tenancy.middleware({ resolve: fromPath('/t/') }));
    app.get('/t/:tenant/n', (req, res) => {
      counts.push(req.socket.listenerCount('close'));
      res.json({ ok: 1 });
    });
    const server = await listen(app);
    try {
      const agent = new (await import('node:http')).Agent({ keepAlive: true, maxSockets: 1 });
      for (let i = 0; i < 25; i++) {
        await new Promise<void>((resolve, reject) => {
          (async () => (await import('node:http')).get(`${server.url}/t/acme/n`, { agent }, (res) => {
            res.resume();
            res.on('end', resolve);
          }).on('error', reject))();
        });
      }
      agent.destroy();
      assert.equal(counts.length, 25);
      assert.ok(Math.max(...counts) === counts[0], `listeners on the connection grew: ${counts.join()}`);
    } finally {
      await server.close();
    }
  });

  it("a pipelined request with no tenant (optional middleware, a route mounted before it, a 400) emits its events with no scope, not the previous request's", async () => {
    const { connect } = await import('node:net');
    for (const version of [express4, express5]) {
      const seen: string[] = [];
      const app = version();
      const audit = (label: string) => (_req: unknown, res: NodeJS.EventEmitter, next: () => void) => {
        res.on('finish', () => seen.push(`${label}:${tryCurrentTenantId() ?? 'none'}`));
        next();
      };
      app.get('/health', audit('health'), (_req, res) => void res.json({ ok: true }));
      app.use(tenancy.middleware({ optional: true, resolve: fromPath('/t/') }));
      app.use(audit('after'));
      app.get('/public', (_req, res) => void res.json({ tenant: tryCurrentTenantId() ?? null }));
      app.get('/t/:tenant/x', (req, res) => void setTimeout(() => res.json({ tenant: req.params.tenant }), 20));
      app.use(tenancy.middleware({ resolve: fromPath('/strict/') }));
      app.get('/strict', (_req, res) => void res.json({ unreachable: true }));
      app.use(tenancy.errorHandler());
      const server = await listen(app);
      try {
        const { port } = new URL(server.url);
        const get = (path: string) => `GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`;
        await new Promise<void>((resolve, reject) => {
          const socket = connect(Number(port), '127.0.0.1', () =>
            socket.write(get('/t/acme/x') + get('/public') + get('/t/acme/x') + get('/health') + get('/t/acme/x') + get('/strict')),
          );
          let text = '';
          socket.setEncoding('utf8');
          socket.on('data', (chunk: string) => {
            text += chunk;
            if ((text.match(/HTTP\/1\.1 \d{3}/g) ?? []).length === 6) {
              socket.end();
              resolve();
            }
          });
          socket.on('error', reject);
        });
        await new Promise((resolve) => setTimeout(resolve, 20));
        assert.deepEqual(seen.filter((entry) => !entry.startsWith('after:acme')), ['after:none', 'health:none', 'after:none'], seen.join());
      } finally {
        await server.close();
      }
    }
  });

  it("with two tenancies' middlewares on one request (the same id), its events run in the scope its route runs in", async () => {
    const second = createTenancy({ knexConfig: backend.knexConfig, tenantExists: backend.databaseExists });
    const owner = () => {
      try {
        second.knex();
        return 'second';
      } catch {
        return tryCurrentTenantId() === undefined ? 'none' : 'first';
      }
    };
    try {
      for (const version of [express4, express5]) {
        const seen: string[] = [];
        const app = version();
        app.use(tenancy.middleware());
        app.use(second.middleware());
        app.get('/x', (_req, res) => {
          seen.push(`route:${owner()}`);
          res.on('finish', () => seen.push(`finish:${owner()}`));
          res.json({ ok: true });
        });
        const server = await listen(app);
        try {
          const response = await fetch(`${server.url}/x`, { headers: { 'x-tenant-id': TENANTS[0] } });
          assert.equal(response.status, 200);
          await new Promise((resolve) => setTimeout(resolve, 20));
          assert.deepEqual(seen, ['route:second', 'finish:second']);
        } finally {
          await server.close();
        }
      }
    } finally {
      await second.destroy();
    }
  });

  it("errorHandler({ all: true }) answers a body parser's client error with its own 4xx, not a 500 reported as a server error", async () => {
    const serverErrors: unknown[] = [];
    for (const version of [express4, express5]) {
      const app = version();
      app.use(express4.json());
      // The README's route-parameter mount: the router refuses a parameter that is not valid
      // percent-encoding with a 400 that has no `expose` (it was answered 500 INTERNAL).
      app.use('/t/:tenant', tenancy.middleware({ resolve: fromPath('tenant') }));
      app.get('/t/:tenant/people', (_req, res) => res.json({ ok: true }));
      app.use(tenancy.middleware());
      app.post('/x', (_req, res) => res.json({ ok: true }));
      app.get('/boom', () => {
        throw new Error('a bug');
      });
      app.use(tenancy.errorHandler({ all: true, onServerError: (error) => serverErrors.push(error) }));
      const server = await listen(app);
      try {
        const bad = await fetch(`${server.url}/x`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-tenant-id': 'acme' }, body: '{not json' });
        assert.equal(bad.status, 400);
        assert.equal(((await bad.json()) as { error: { code: string } }).error.code, 'CLIENT_ERROR');
        const undecodable = await fetch(`${server.url}/t/%zz/people`);
        assert.equal(undecodable.status, 400);
        assert.deepEqual(await undecodable.json(), { error: { code: 'CLIENT_ERROR', message: 'Bad Request.' } });
        const boom = await fetch(`${server.url}/boom`, { headers: { 'x-tenant-id': 'acme' } });
        assert.equal(boom.status, 500);
      } finally {
        await server.close();
      }
    }
    assert.equal(serverErrors.length, 2, 'only the bugs are server errors');
  });

  it('releases the lease of an aborted request once its route ends the response', async () => {
    const app = express4();
    let entered!: () => void;
    const inHandler = new Promise<void>((r) => (entered = r));
    app.use(tenancy.middleware());
    app.get('/slow', (_req, res) => {
      entered();
      setTimeout(() => res.end('late'), 300);
    });
    const server = await listen(app);
    try {
      const controller = new AbortController();
      const request = fetch(`${server.url}/slow`, { headers: { 'x-tenant-id': 'acme' }, signal: controller.signal }).catch(() => 'aborted');
      await inHandler;
      assert.equal(tenancy.stats().leases, 1);
      controller.abort();
      assert.equal(await request, 'aborted');
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(tenancy.stats().leases, 1, 'held while the route may still query');
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(tenancy.stats().leases, 0, 'given back when the route ended the response');
    } finally {
      await server.close();
    }
  });

  it('gives the lease back when the client hangs up while the tenant is still being looked up', async () => {
    const slow = createTenancy({
      knexConfig: backend.knexConfig,
      tenantExists: (id) => new Promise((resolve) => setTimeout(() => resolve(backend.databaseExists(id)), 80)),
    });
    const app = express4();
    app.use(slow.middleware());
    app.get('/', (_req, res) => res.json({ ok: true }));
    const server = await listen(app);
    try {
      const controller = new AbortController();
      const request = fetch(server.url, { headers: { 'x-tenant-id': 'acme' }, signal: controller.signal }).catch(() => 'aborted');
      setTimeout(() => controller.abort(), 10);
      assert.equal(await request, 'aborted');
      await new Promise((r) => setTimeout(r, 250));
      assert.equal(slow.stats().leases, 0);
    } finally {
      await server.close();
      const started = Date.now();
      await slow.destroy();
      assert.ok(Date.now() - started < 1_000, 'destroy() did not wait for a leaked lease');
    }
  });

  it('gives the lease back when the client hung up before the middleware ran (an async middleware before it), tenant cached or not', async () => {
    const late = createTenancy({ knexConfig: backend.knexConfig, tenantExists: backend.databaseExists });
    const app = express4();
    let routeEnded!: () => void;
    let ended = new Promise<void>((r) => (routeEnded = r));
    let arrived!: () => void;
    // A session store or an auth check that answers only after the client is gone.
    app.use((_req, res, next) => {
      res.once('close', () => setTimeout(next, 10));
      arrived();
    });
    app.use(late.middleware());
    app.get('/', async (_req, res, next) => {
      try {
        res.json(await Person.query());
      } catch (error) {
        next(error);
      } finally {
        routeEnded();
      }
    });
    const server = await listen(app);
    try {
      // First uncached (the scope comes as a promise), then cached (at once).
      for (const cached of [false, true]) {
        const controller = new AbortController();
        const arrival = new Promise<void>((r) => (arrived = r));
        const request = fetch(server.url, { headers: { 'x-tenant-id': 'acme' }, signal: controller.signal }).catch(() => 'aborted');
        await arrival;
        controller.abort();
        assert.equal(await request, 'aborted');
        await ended;
        ended = new Promise<void>((r) => (routeEnded = r));
        await new Promise((r) => setTimeout(r, 20));
        assert.equal(late.stats().leases, 0, `cached ${cached}: the lease was never given back`);
      }
      const evicted = await Promise.race([late.evict('acme').then(() => 'evicted'), new Promise((r) => setTimeout(r, 1_000, 'still waiting for the lease'))]);
      assert.equal(evicted, 'evicted');
    } finally {
      await server.close();
      await late.destroy();
    }
  });

  for (const [version, express] of [['4', express4], ['5', express5]] as const) {
    it(`Express ${version}: a route that ends its response with res.destroy() gives the lease back at once, client connected or already gone`, async () => {
      const app = express();
      let routeDone!: () => void;
      let done = new Promise<void>((r) => (routeDone = r));
      app.use(tenancy.middleware());
      app.get('/destroy', async (_req, res) => {
        await Person.query();
        res.destroy();
        routeDone();
      });
      app.get('/destroy-after-hang-up', async (_req, res) => {
        await new Promise<void>((r) => res.once('close', () => r()));
        await Person.query();
        res.destroy(); // what a route that stops when its client goes does
        routeDone();
      });
      const server = await listen(app);
      try {
        for (const path of ['/destroy', '/destroy-after-hang-up']) {
          const controller = new AbortController();
          const request = fetch(`${server.url}${path}`, { headers: { 'x-tenant-id': 'acme' }, signal: controller.signal }).catch(() => 'failed');
          if (path === '/destroy-after-hang-up') setTimeout(() => controller.abort(), 30);
          assert.equal(await request, 'failed');
          await done;
          done = new Promise<void>((r) => (routeDone = r));
          await new Promise((r) => setTimeout(r, 20));
          assert.equal(tenancy.stats().leases, 0, `${path}: the lease was held (30 s before)`);
        }
        const evicted = await Promise.race([tenancy.evict('acme').then(() => 'evicted'), new Promise((r) => setTimeout(r, 1_000, 'still waiting for the lease'))]);
        assert.equal(evicted, 'evicted');
      } finally {
        await server.close();
      }
    });
  }

  it("an error after the headers went out: the lease is kept while a later error handler still uses the tenant's database (an eviction waits for it)", async () => {
    for (const version of [express4, express5]) {
      const app = version();
      let evicted: Promise<string> | undefined;
      app.use(tenancy.middleware());
      app.get('/half', async (_req, res, next) => {
        await Person.query();
        res.status(200).write('[');
        next(new Error('the stream failed half-way'));
      });
      app.use(tenancy.errorHandler());
      // The app's own handler after the library's: it logs the error in the tenant's database.
      app.use((error: Error, _req: unknown, res: { end(chunk: string): void }, _next: unknown) => {
        evicted = tenancy.evict('acme').then(() => 'evicted');
        void (async () => {
          await new Promise((r) => setTimeout(r, 100));
          await Person.query().insert({ name: `error-log: ${error.message}` });
          res.end(']');
        })();
      });
      const server = await listen(app);
      try {
        assert.equal(await (await fetch(`${server.url}/half`, { headers: { 'x-tenant-id': 'acme' } })).text(), '[]');
        assert.equal(await Promise.race([evicted!, new Promise((r) => setTimeout(r, 1_000, 'still waiting'))]), 'evicted');
        const logged = await tenancy.runWithTenant('acme', () => Person.query().where('name', 'like', 'error-log:%'));
        assert.equal(logged.length, 1, 'the handler\'s write landed: its lease was held');
        await tenancy.runWithTenant('acme', () => Person.query().where('name', 'like', 'error-log:%').delete());
        assert.equal(tenancy.stats().leases, 0);
      } finally {
        await server.close();
      }
    }
  });

  it("a 'finish' listener runs after the request's lease is given back: its write fails typed when the pool is closed meanwhile; bound with bindTenant, it holds a lease and lands", async () => {
    const own = createTenancy({ knexConfig: backend.knexConfig, tenantExists: backend.databaseExists });
    const outcomes: string[] = [];
    let written!: () => void;
    for (const bound of [false, true]) {
      const landed = new Promise<void>((resolve) => (written = resolve));
      const app = express4();
      app.use(own.middleware());
      app.get('/audited', (_req, res) => {
        const audit = async () => {
          // The pool closes between the response and the audit write (maxPools, the budget, evict).
          await own.evict('acme');
          await Person.query().insert({ name: `audit-${bound}` });
        };
        res.on('finish', bound ? bindTenant(() => audit().then(() => outcomes.push('landed'), (e: unknown) => outcomes.push((e as { code?: string }).code ?? String(e))).finally(written)) : () => void audit().then(() => outcomes.push('landed'), (e: unknown) => outcomes.push((e as { code?: string }).code ?? String(e))).finally(written));
        res.json({ ok: true });
      });
      const server = await listen(app);
      try {
        assert.equal((await fetch(`${server.url}/audited`, { headers: { 'x-tenant-id': 'acme' } })).status, 200);
        await Promise.race([landed, new Promise((r) => setTimeout(r, 3_000))]);
      } finally {
        await server.close();
      }
    }
    try {
      // Unbound: evict() closed the pool at once (no lease), and the write failed typed, in no other tenant.
      // Bound: evict() waited for the listener's lease, and the write landed.
      assert.deepEqual(outcomes, ['TENANT_UNAVAILABLE', 'landed']);
      const rows = await own.runWithTenant('acme', () => Person.query().where('name', 'like', 'audit-%'));
      assert.deepEqual(rows.map((row) => row.name), ['audit-true']);
      await own.runWithTenant('acme', () => Person.query().where('name', 'like', 'audit-%').delete());
    } finally {
      await own.destroy();
    }
  });

  it('more than ten pipelined requests on one connection: no listener-leak warning, every lease given back', async () => {
    const { connect } = await import('node:net');
    const warnings: string[] = [];
    const onWarning = (warning: Error) => warnings.push(`${warning.name}: ${warning.message}`);
    process.on('warning', onWarning);
    const app = express4();
    app.use(tenancy.middleware({ resolve: fromPath('/t/') }));
    app.get('/t/:tenant/name', async (_req, res) => res.json(await Person.query().findById(1)));
    const server = await listen(app);
    try {
      const { port } = new URL(server.url);
      const socket = connect(Number(port), '127.0.0.1');
      let received = '';
      socket.on('data', (chunk) => (received += String(chunk)));
      await new Promise((resolve) => socket.once('connect', resolve));
      socket.write(Array.from({ length: 12 }, (_, i) => `GET /t/${i % 2 === 0 ? 'acme' : 'globex'}/name HTTP/1.1\r\nHost: x\r\n\r\n`).join(''));
      for (let waited = 0; (received.match(/HTTP\/1\.1 200/g) ?? []).length < 12 && waited < 3_000; waited += 20) await new Promise((r) => setTimeout(r, 20));
      assert.equal((received.match(/HTTP\/1\.1 200/g) ?? []).length, 12);
      socket.destroy();
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(tenancy.stats().leases, 0);
      assert.deepEqual(warnings.filter((w) => w.includes('MaxListeners')), []);
    } finally {
      process.off('warning', onWarning);
      await server.close();
    }
  });

  it('keeps the lease of a route still running after its client hung up, so an eviction cannot close the pool under it', async () => {
    const app = express4();
    let done!: () => void;
    const finished = new Promise<void>((r) => (done = r));
    app.use(tenancy.middleware());
    app.post('/slow-write', async (_req, res) => {
      await Person.query().insert({ name: 'acme-before-hang-up' });
      await new Promise((r) => setTimeout(r, 150));
      await Person.query().insert({ name: 'acme-after-hang-up' });
      res.status(201).end();
      done();
    });
    const server = await listen(app);
    try {
      const controller = new AbortController();
      const request = fetch(`${server.url}/slow-write`, { method: 'POST', headers: { 'x-tenant-id': 'acme' }, signal: controller.signal }).catch(() => 'aborted');
      await new Promise((r) => setTimeout(r, 50));
      controller.abort();
      assert.equal(await request, 'aborted');
      await new Promise((r) => setTimeout(r, 20));
      assert.equal(tenancy.stats().leases, 1, 'the running route still holds its lease');
      const evicted = tenancy.evict('acme'); // what the LRU cap, the budget or the idle sweep would do
      await finished;
      await evicted;
      assert.equal(tenancy.stats().leases, 0);
      const names = await tenancy.runWithTenant('acme', async () => (await Person.query().where('name', 'like', 'acme-%-hang-up')).map((p) => p.name));
      assert.deepEqual(names.sort(), ['acme-after-hang-up', 'acme-before-hang-up']);
    } finally {
      await server.close();
    }
  });

  for (const [version, express] of [['4', express4], ['5', express5]] as const) {
    it(`Express ${version}: a second middleware naming another tenant than the scope open for the request answers 400, naming the same one opens no second lease`, async () => {
      const app = express();
      const leases: number[] = [];
      const checked: string[] = [];
      // A callback queue drained by a timer started outside any scope (a pooled session store, say):
      // what it calls back runs without the request's async context.
      const queue: (() => void)[] = [];
      const drain = setInterval(() => queue.splice(0).forEach((callback) => callback()), 2);
      const lost: (string | undefined)[] = [];
      app.use(tenancy.middleware()); // x-tenant-id
      // The app's authorization check, against the tenant of the scope open here.
      app.use((_req, _res, next) => {
        checked.push(currentTenantId());
        next();
      });
      app.use((req, _res, next) => {
        if (req.headers['x-lose-context'] === undefined) return next();
        queue.push(() => {
          lost.push(tryCurrentTenantId());
          next();
        });
      });
      app.use('/t/:tenant', tenancy.middleware({ resolve: fromPath('tenant') }), async (_req, res, next) => {
        try {
          leases.push(tenancy.stats().leases);
          const info = await tenancy.knex()('tenant_info').first();
          res.json({ scope: currentTenantId(), db: info.tenant_id });
        } catch (error) {
          next(error);
        }
      });
      app.use(tenancy.errorHandler());
      const server = await listen(app);
      try {
        for (const lose of [false, true]) {
          const headers = { 'x-tenant-id': 'acme', ...(lose ? { 'x-lose-context': '1' } : {}) };
          const switched = await fetch(`${server.url}/t/globex/people`, { headers });
          assert.equal(switched.status, 400, `context lost ${lose}: the route must not run in globex after acme was checked`);
          const body = (await switched.json()) as { error: { code: string; message: string } };
          assert.equal(body.error.code, 'TENANT_ID_INVALID');
          assert.match(body.error.message, /another tenant/);
          assert.doesNotMatch(body.error.message, /globex/, 'the untrusted id is not echoed');

          const invalid = await fetch(`${server.url}/t/..%2Fx/people`, { headers });
          assert.equal(invalid.status, 400);

          const same = await fetch(`${server.url}/t/acme/people`, { headers });
          assert.equal(same.status, 200, `context lost ${lose}`);
          assert.deepEqual(await same.json(), { scope: 'acme', db: 'acme' });
        }
        assert.deepEqual(lost, [undefined, undefined, undefined], 'the queue did lose the async context');
        assert.deepEqual(leases, [1, 1], 'the same tenant resolved twice holds one lease, not two');
        assert.deepEqual(checked, Array(6).fill('acme'));
        await new Promise((r) => setTimeout(r, 20));
        assert.equal(tenancy.stats().leases, 0);
      } finally {
        clearInterval(drain);
        await server.close();
      }
    });
  }

  it("another service's connection error (an HTTP client's ECONNRESET) goes to the app's handler, not a 503 'tenant database unavailable'", async () => {
    const app = express4();
    app.use(tenancy.middleware());
    app.get('/upstream', (_req, _res, next) => next(Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' })));
    app.get('/driver', (_req, _res, next) => next(Object.assign(new Error('Connection lost: The server closed the connection.'), { code: 'PROTOCOL_CONNECTION_LOST', fatal: true })));
    app.use(tenancy.errorHandler());
    app.use((error: Error, _req: unknown, res: { status(n: number): { json(body: unknown): void } }, _next: unknown) => res.status(502).json({ app: error.message }));
    const server = await listen(app);
    try {
      const upstream = await fetch(`${server.url}/upstream`, { headers: { 'x-tenant-id': 'acme' } });
      assert.equal(upstream.status, 502, 'an error of another service was answered as the tenant database being down');
      assert.deepEqual(await upstream.json(), { app: 'socket hang up' });
      // The database driver's own (mysql2 marks the errors that closed its connection fatal) is still a 503.
      const driver = await fetch(`${server.url}/driver`, { headers: { 'x-tenant-id': 'acme' } });
      assert.equal(driver.status, 503);
      assert.equal(driver.headers.get('retry-after'), '1');
    } finally {
      await server.close();
    }
  });

  it('a request that named no tenant to a global optional middleware may still name one at the route', async () => {
    const app = express4();
    app.use(tenancy.middleware({ optional: true }));
    app.use('/t/:tenant', tenancy.middleware({ resolve: fromPath('tenant') }), (_req, res) => res.json({ scope: currentTenantId() }));
    app.use(tenancy.errorHandler());
    const server = await listen(app);
    try {
      assert.deepEqual(await (await fetch(`${server.url}/t/globex`)).json(), { scope: 'globex' });
    } finally {
      await server.close();
    }
  });
});
