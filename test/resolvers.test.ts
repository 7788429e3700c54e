/**
 * Every resolver, on Express 4 and Express 5, with express.json() mounted before and after the
 * middleware, over real HTTP and real SQLite tenant files.
 */
import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { after, before, describe, it } from 'node:test';
import express4 from 'express';
import express5 from 'express5';
import {
  createTenancy,
  currentTenantId,
  firstOf,
  fromHeader,
  fromPath,
  fromQuery,
  fromRequest,
  fromSubdomain,
  type Tenancy,
  type TenantResolver,
} from '../lib/index';
import { sqliteBackend } from './helpers/databases';
import { Person, setUpTenants } from './helpers/fixtures';
import { listen, randomPause, request, type Running } from './helpers/http';

const backend = sqliteBackend('resolvers');
const TENANTS = ['acme', 'globex'];
let tenancy: Tenancy;

before(async () => {
  tenancy = createTenancy({ knexConfig: backend.knexConfig, tenantExists: backend.databaseExists });
  for (const t of TENANTS) await backend.createDatabase(t);
  await setUpTenants(tenancy, TENANTS);
});
after(async () => {
  await tenancy.destroy();
  await backend.close();
});

type Req = { user?: { tenantId?: string } } & import('node:http').IncomingMessage;

/**
 * POSTs `{}` to `path` sent as it is (node:http, not fetch, which would normalise it) with header
 * `x-tenant-id: acme`, so that a resolver that falls through to the header answers acme.
 */
function postAsAcme(server: Running, path: string): Promise<{ status: number; text: string }> {
  const { port } = new URL(server.url);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, method: 'POST', headers: { 'x-tenant-id': 'acme', 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode!, text }));
    });
    req.on('error', reject);
    req.end('{}');
  });
}

/** Mount point, resolver, and how a request names tenant `t` for it. */
const CASES: [string, TenantResolver, (t: string) => { path: string; headers: Record<string, string> }][] = [
  ['/h', fromHeader('x-tenant-id'), (t) => ({ path: '/h/people', headers: { 'x-tenant-id': t } })],
  ['/s', fromSubdomain({ baseDomain: 'example.test' }), (t) => ({ path: '/s/people', headers: { host: `${t}.example.test` } })],
  ['/t/:t', fromPath('/t/'), (t) => ({ path: `/t/${t}/people`, headers: {} })],
  ['/p/:tenant', fromPath('tenant'), (t) => ({ path: `/p/${t}/people`, headers: {} })],
  ['/q', fromQuery('tenant'), (t) => ({ path: `/q/people?tenant=${t}`, headers: {} })],
  ['/r', fromRequest<Req>((req) => req.user?.tenantId), (t) => ({ path: '/r/people', headers: { 'x-user-tenant': t } })],
  ['/f', firstOf(fromHeader('x-tenant-id'), fromSubdomain({ baseDomain: 'example.test' })), (t) => ({ path: '/f/people', headers: { host: `${t}.example.test` } })],
  ['/g', firstOf(fromHeader('x-tenant-id'), fromSubdomain({ baseDomain: 'example.test' })), (t) => ({ path: '/g/people', headers: { 'x-tenant-id': t, host: 'www.example.test' } })],
];

for (const [version, express] of [['4', express4], ['5', express5]] as const) {
  for (const order of ['before', 'after'] as const) {
    describe(`resolvers on Express ${version}, express.json() ${order} the middleware`, () => {
      let server: Running;
      before(async () => {
        const app = express();
        if (order === 'before') app.use(express.json());
        // Stands for an auth middleware that verified a token and set req.user.
        app.use((req: Req, _res, next) => {
          const claim = req.headers['x-user-tenant'];
          if (typeof claim === 'string') req.user = { tenantId: claim };
          next();
        });
        // A path prefix ahead of a header: the path must win whenever Express routes the request to it.
        const byPathThenHeader = firstOf(fromPath('/k/'), fromHeader('x-tenant-id'));
        for (const [mount, resolve] of [...CASES, ['/k/:t', byPathThenHeader] as const]) {
          const router = express.Router();
          router.post('/people', async (req, res, next) => {
            try {
              await randomPause();
              res.json({ scope: currentTenantId(), body: req.body, people: (await Person.query().orderBy('id')).map((p) => p.name) });
            } catch (error) {
              next(error);
            }
          });
          const stack = [tenancy.middleware({ resolve }), ...(order === 'after' ? [express.json()] : [])];
          app.use(mount, ...stack, router);
        }
        // The same resolver in a router mounted at a path: Express routes on the path below it.
        const api = express.Router();
        api.use(tenancy.middleware({ resolve: byPathThenHeader }));
        api.post('/k/:t/people', (req, res) => void res.json({ route: req.params.t, scope: currentTenantId() }));
        app.use('/api', api);
        app.use(tenancy.errorHandler({ all: true }));
        server = await listen(app);
      });
      after(() => server.close());

      for (const [mount, , describeRequest] of CASES) {
        it(`${mount}: names the tenant and the handler runs in its scope after the body is parsed`, async () => {
          for (const t of TENANTS) {
            const { path, headers } = describeRequest(t);
            const response = await request(`${server.url}${path}`, {
              method: 'POST',
              headers: { ...headers, 'content-type': 'application/json' },
              body: JSON.stringify({ sent: t }),
            });
            assert.equal(response.status, 200, `${path} ${JSON.stringify(headers)} ${response.text}`);
            assert.deepEqual(response.json(), { scope: t, body: { sent: t }, people: [`${t}-ada`, `${t}-bob`] });
          }
        });
      }

      it("firstOf(fromPath('/k/'), fromHeader()): a path Express routes without regard to case, or given as an absolute URL, still names the tenant", async () => {
        for (const path of ['/K/globex/people', `http://example.test/k/globex/people`, '/k/globex/people']) {
          // Before stop 22 the first two fell through to the header's tenant, acme.
          const response = await postAsAcme(server, path);
          assert.equal(response.status, 200, `${path}: ${response.text}`);
          assert.equal((JSON.parse(response.text) as { scope: string }).scope, 'globex', path);
        }
      });

      it("firstOf(fromPath('/k/'), fromHeader()): a path routers may read another way (a backslash, a fragment, an empty segment) is refused; in a router mounted at /api the path below the mount names the tenant", async () => {
        const send = (path: string) => postAsAcme(server, path);
        // Express reads `\\` as `/` when the target has a `#` (url.parse): it routes to /k/:t with globex.
        for (const path of ['/k\\globex/people#', '/k\\globex/people?x#']) {
          const response = await send(path);
          assert.equal(response.status, 400, `${path}: ${response.text}`);
          assert.doesNotMatch(response.text, /acme/, path);
        }
        // An empty segment: refused by the resolver (here Express itself finds no route: 404).
        assert.throws(() => fromPath('/k/')({ url: '/k//globex/people', headers: {} } as never), { code: 'TENANT_ID_INVALID' });
        assert.notEqual((await send('/k//globex/people')).status, 200);
        const mounted = await send('/api/k/globex/people');
        assert.equal(mounted.status, 200, mounted.text);
        assert.deepEqual(JSON.parse(mounted.text), { route: 'globex', scope: 'globex' });
      });

      it("fromQuery: a target with a fragment is refused (Express reads no query after a '#': the scope and req.query would disagree)", async () => {
        for (const path of ['/q/people?x=1#&tenant=globex', '/q/people#?tenant=globex', '/q/people?tenant=globex#x']) {
          const response = await postAsAcme(server, path);
          // Before: the first two ran in globex while req.query named no tenant.
          assert.equal(response.status, 400, `${path}: ${response.text}`);
          assert.equal((JSON.parse(response.text) as { error: { code: string } }).error.code, 'TENANT_ID_INVALID', path);
        }
        const plain = await postAsAcme(server, '/q/people?x=1&tenant=globex');
        assert.equal(plain.status, 200, plain.text);
        assert.equal((JSON.parse(plain.text) as { scope: string }).scope, 'globex');
      });

      it('fromSubdomain: ignored names match in any case, and a fully qualified host (trailing dot) names its tenant', async () => {
        const upper = await request(`${server.url}/s/people`, { method: 'POST', headers: { host: 'WWW.example.test' } });
        assert.equal(upper.status, 400, upper.text);
        assert.equal((upper.json() as { error: { code: string } }).error.code, 'TENANT_CONTEXT_MISSING');
        const dotted = await request(`${server.url}/s/people`, { method: 'POST', headers: { host: 'globex.example.test.', 'content-type': 'application/json' }, body: '{}' });
        assert.equal(dotted.status, 200, dotted.text);
        assert.equal((dotted.json() as { scope: string }).scope, 'globex');
      });

      it('fromSubdomain reads the host before any port, as Express does; a host with an empty label is refused, not passed over', async () => {
        for (const host of ['globex.example.test:', 'globex.example.test:x', 'globex.example.test:80:80']) {
          // firstOf(header, subdomain) and firstOf(subdomain, header) alike: the subdomain names globex.
          const response = await request(`${server.url}/s/people`, { method: 'POST', headers: { host, 'content-type': 'application/json' }, body: '{}' });
          assert.equal(response.status, 200, `${host}: ${response.text}`);
          assert.equal((response.json() as { scope: string }).scope, 'globex', host);
        }
        for (const host of ['globex.example.test..', '.globex.example.test']) {
          const response = await request(`${server.url}/s/people`, { method: 'POST', headers: { host } });
          assert.equal(response.status, 400, `${host}: ${response.text}`);
          assert.equal((response.json() as { error: { code: string } }).error.code, 'TENANT_ID_INVALID', host);
        }
      });

      it('a request naming no tenant gets 400 from every resolver; the bare domain and www name none', async () => {
        for (const [path, headers] of [
          ['/h/people', {}],
          ['/s/people', { host: 'example.test' }],
          ['/s/people', { host: 'www.example.test' }],
          ['/s/people', { host: 'acme.other.test' }],
          ['/q/people', {}],
          ['/r/people', {}],
          ['/f/people', { host: 'www.example.test' }],
        ] as const) {
          const response = await request(`${server.url}${path}`, { method: 'POST', headers });
          assert.equal(response.status, 400, `${path} ${JSON.stringify(headers)}`);
          assert.equal((response.json() as { error: { code: string } }).error.code, 'TENANT_CONTEXT_MISSING');
        }
      });
    });
  }
}

describe('resolver arguments', () => {
  it('reject bad options with a TypeError', () => {
    assert.throws(() => fromSubdomain({ baseDomain: '' }), TypeError);
    assert.throws(() => fromPath(''), TypeError);
  });
});
