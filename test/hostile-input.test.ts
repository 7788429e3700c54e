/**
 * Hostile input: more than 500 ids (SQL metacharacters, quotes and backticks, path traversal, NUL and
 * control bytes, Unicode look-alikes and direction marks, 10 KB strings, empty strings, lists, case
 * variants of real tenants) through every resolver over raw HTTP, on Express 4 and 5. Each must get
 * a 4xx; no pool may be created, the catalog must never see a syntactically invalid id, and no query
 * may reach a tenant database.
 */
import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import express4 from 'express';
import express5 from 'express5';
import knexFactory from 'knex';
import {
  createTenancy,
  DEFAULT_TENANT_ID_PATTERN,
  firstOf,
  fromHeader,
  fromPath,
  fromQuery,
  fromRequest,
  fromSubdomain,
  InvalidTenantIdError,
  type Tenancy,
  validateTenantId,
} from '../lib/index';
import { createSeededTenant, sqliteBackend } from './helpers/databases';
import { Person } from './helpers/fixtures';
import { load, listen } from './helpers/http';
import { hostileIds } from './helpers/hostile-ids';

const backend = sqliteBackend('hostile');
const IDS = hostileIds();

/** Sends raw bytes and returns the status code of the answer (0 if the server just closed). */
function rawStatus(port: number, head: Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    socket.on('data', (chunk) => chunks.push(chunk));
    socket.on('error', (error: NodeJS.ErrnoException) => (error.code === 'ECONNRESET' ? resolve(statusOf(chunks)) : reject(error)));
    socket.on('end', () => resolve(statusOf(chunks)));
    socket.end(head);
  });
}

function statusOf(chunks: Buffer[]): number {
  const match = /^HTTP\/1\.1 (\d{3})/.exec(Buffer.concat(chunks).toString('latin1'));
  return match ? Number(match[1]) : 0;
}

function head(path: string, headers: [string, string | Buffer][]): Buffer {
  const parts: Buffer[] = [Buffer.from(`POST ${path} HTTP/1.1\r\n`, 'latin1')];
  if (!headers.some(([name]) => name === 'Host')) parts.push(Buffer.from('Host: localhost\r\n'));
  for (const [name, value] of headers) parts.push(Buffer.from(`${name}: `), Buffer.from(value), Buffer.from('\r\n'));
  parts.push(Buffer.from('Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}'));
  return Buffer.concat(parts);
}

/** Percent-encodes every UTF-8 byte (encodeURIComponent throws on lone surrogates). */
const enc = (id: string) => [...Buffer.from(id, 'utf8')].map((b) => `%${b.toString(16).padStart(2, '0')}`).join('');
const utf8 = (id: string) => Buffer.from(id, 'utf8');
/**
 * Transports: how a request carries the id to each resolver. A header value cannot hold CR/LF, and
 * HTTP strips spaces and tabs around it (RFC 9110, 5.5): such ids go through the path and query only.
 */
const headerSafe = (id: string) => !/[\r\n]|^[ \t]|[ \t]$/.test(id);
const TRANSPORTS: [string, (id: string) => Buffer | undefined][] = [
  ['header', (id) => (!headerSafe(id) ? undefined : head('/h/people', [['x-tenant-id', utf8(id)]]))],
  ['subdomain', (id) => (!headerSafe(id) ? undefined : head('/s/people', [['Host', utf8(`${id}.example.test`)]]))],
  ['path prefix', (id) => head(`/t/${enc(id)}/people`, [])],
  ['path param', (id) => head(`/p/${enc(id)}/people`, [])],
  ['query', (id) => head(`/q/people?tenant=${enc(id)}`, [])],
  ['request claim', (id) => (!headerSafe(id) ? undefined : head('/r/people', [['x-user-tenant', utf8(id)]]))],
  ['firstOf', (id) => (!headerSafe(id) ? undefined : head('/f/people', [['x-tenant-id', utf8(id)]]))],
];
const LISTS: [string, Buffer][] = [
  ['repeated header', head('/h/people', [['x-tenant-id', 'acme'], ['x-tenant-id', 'globex']])],
  ['repeated same header', head('/h/people', [['x-tenant-id', 'acme'], ['x-tenant-id', 'acme']])],
  ['repeated claim header', head('/r/people', [['x-user-tenant', 'acme'], ['x-user-tenant', 'acme']])],
  ['repeated query', head('/q/people?tenant=acme&tenant=globex', [])],
  ['query array syntax', head('/q/people?tenant[]=acme', [])],
  ['repeated host', head('/s/people', [['Host', 'acme.example.test'], ['Host', 'globex.example.test']])],
];

for (const [version, express] of [['4', express4], ['5', express5]] as const) {
  describe(`hostile tenant ids on Express ${version}`, () => {
    let tenancy: Tenancy;
    let port: number;
    let close: () => Promise<void>;
    const asked: string[] = [];
    let pools = 0;
    let queries = 0;

    before(async () => {
      for (const t of ['acme', 'globex']) {
        const knex = await createSeededTenant(backend, t);
        await knex.destroy();
      }
      tenancy = createTenancy({
        knexConfig: backend.knexConfig,
        tenantExists: (id) => (asked.push(id), backend.databaseExists(id)),
        createKnex: (config) => {
          pools++;
          const knex = knexFactory(config);
          knex.on('query', () => queries++);
          return knex;
        },
      });
      const app = express();
      app.use((req: { user?: unknown; headers: Record<string, unknown> }, _res, next) => {
        req.user = { tenantId: req.headers['x-user-tenant'] };
        next();
      });
      const mounts: [string, Parameters<Tenancy['middleware']>[0]][] = [
        ['/h', {}],
        ['/s', { resolve: fromSubdomain({ baseDomain: 'example.test' }) }],
        ['/t/:t', { resolve: fromPath('/t/') }],
        ['/p/:tenant', { resolve: fromPath('tenant') }],
        ['/q', { resolve: fromQuery('tenant') }],
        ['/r', { resolve: fromRequest<IncomingMessage & { user?: { tenantId?: unknown } }>((req) => req.user?.tenantId) }],
        ['/f', { resolve: firstOf(fromHeader('x-tenant-id'), fromSubdomain({ baseDomain: 'example.test' })) }],
      ];
      for (const [mount, options] of mounts) {
        app.use(mount, tenancy.middleware(options), express.json(), async (_req, res, next) => {
          try {
            res.json(await Person.query());
          } catch (error) {
            next(error);
          }
        });
      }
      app.use(tenancy.errorHandler({ all: true }));
      const running = await listen(app);
      port = Number(new URL(running.url).port);
      close = running.close;
    });
    after(async () => {
      await close();
      await tenancy.destroy();
    });

    it(`answers 4xx to ${IDS.length} hostile ids through each of ${TRANSPORTS.length} resolvers, opening no pool`, async () => {
      assert.ok(IDS.length >= 500);
      const requests: [string, string, Buffer][] = [];
      for (const id of IDS) {
        for (const [transport, build] of TRANSPORTS) {
          const bytes = build(id);
          if (bytes !== undefined) requests.push([transport, id, bytes]);
        }
      }
      for (const [name, bytes] of LISTS) requests.push([name, '(list)', bytes]);
      const wrong: string[] = [];
      await load(requests.length, 16, async (i) => {
        const [transport, id, bytes] = requests[i]!;
        const status = await rawStatus(port, bytes);
        if (!(status >= 400 && status < 500)) wrong.push(`${transport} ${JSON.stringify(id.slice(0, 40))} -> ${status}`);
      });
      assert.deepEqual(wrong, [], `${wrong.length} of ${requests.length} requests were not answered 4xx`);
      assert.equal(pools, 0, 'no knex was created');
      assert.equal(tenancy.stats().pools, 0);
      assert.equal(queries, 0, 'no query reached a tenant database');
      const invalidAsked = asked.filter((id) => !DEFAULT_TENANT_ID_PATTERN.test(id));
      assert.deepEqual(invalidAsked, [], 'the catalog was never asked about a syntactically invalid id');
      assert.ok(asked.length > 0, 'the valid unknown ids (case variants) did reach the catalog');
      assert.equal(new Set(asked).size, asked.length, 'each valid unknown id was asked once');
    });
  });
}

describe("an app's own tenantIdPattern", () => {
  it('must match the whole id, whatever its flags: an unanchored pattern lets no path or line break through, and opens no pool', async () => {
    const id = 'abc';
    const around = ['../../etc/abc', 'abc/../../x', 'abc\n../x', '../abc\n', 'x abc', 'abcd'];
    for (const pattern of [/[a-z]{3}/, /[a-z]{3}/g, /[a-z]{3}/y, /[a-z]{3}$/m, /^[a-z]{3}/, /[a-z]{3}|[a-z]{3}\/x/i]) {
      for (let i = 0; i < 2; i++) assert.equal(validateTenantId(id, pattern), id, `${pattern} twice (lastIndex)`);
      for (const bad of around) assert.throws(() => validateTenantId(bad, pattern), InvalidTenantIdError, `${pattern} let ${JSON.stringify(bad)} through`);
    }
    // An alternation is anchored as a whole.
    assert.equal(validateTenantId('ab', /a|ab/), 'ab');
    let pools = 0;
    const tenancy = createTenancy({
      knexConfig: backend.knexConfig,
      tenantIdPattern: /[a-z]{3}/,
      createKnex: (config) => (pools++, knexFactory(config)),
    });
    try {
      for (const bad of around) await assert.rejects(tenancy.runWithTenant(bad, () => 1), InvalidTenantIdError);
      assert.equal(pools, 0);
    } finally {
      await tenancy.destroy();
    }
  });
});

after(() => backend.close());
