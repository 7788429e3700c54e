/**
 * The example app of `npm run demo` (examples/demo), started on port 0 with its SQLite tenant files
 * in a temporary directory: each tenant sees only its own rows, and tenant errors map to 400/404.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { start, type RunningDemo } from '../examples/demo/app';
import { seedFor } from '../examples/demo/migrations';

interface Reply {
  status: number;
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

describe('demo app (SQLite files)', () => {
  let dataDir: string;
  let demo: RunningDemo;

  async function request(method: string, url: string, options: { tenant?: string; body?: unknown } = {}): Promise<Reply> {
    const headers: Record<string, string> = {};
    if (options.tenant !== undefined) headers['x-tenant-id'] = options.tenant;
    if (options.body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(`http://127.0.0.1:${demo.port}${url}`, {
      method,
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
    });
    return { status: res.status, body: await res.json() };
  }

  const names = (reply: Reply): string[] => reply.body.people.map((p: { name: string }) => p.name);

  before(async () => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ot-demo-'));
    demo = await start({ port: 0, dataDir });
  });

  after(async () => {
    await demo?.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it('creates one SQLite file per demo tenant', () => {
    assert.deepEqual(fs.readdirSync(dataDir).sort(), ['acme.sqlite', 'globex.sqlite']);
  });

  it('GET /people answers each tenant with its own seeded rows only', async () => {
    const acme = await request('GET', '/people', { tenant: 'acme' });
    const globex = await request('GET', '/people', { tenant: 'globex' });
    assert.equal(acme.status, 200);
    assert.equal(globex.status, 200);
    assert.equal(acme.body.tenant, 'acme');
    assert.equal(globex.body.tenant, 'globex');
    assert.deepEqual(names(acme), seedFor('acme').map((p) => p.name));
    assert.deepEqual(names(globex), seedFor('globex').map((p) => p.name));
    assert.equal(names(acme).filter((n) => names(globex).includes(n)).length, 0, 'the seeds differ, so no name may be shared');
  });

  it('POST /people inserts into the header tenant only', async () => {
    const created = await request('POST', '/people', { tenant: 'acme', body: { name: 'Linus Torvalds' } });
    assert.equal(created.status, 201);
    assert.equal(created.body.person.name, 'Linus Torvalds');
    assert.equal(typeof created.body.person.id, 'number');
    assert.ok(names(await request('GET', '/people', { tenant: 'acme' })).includes('Linus Torvalds'));
    assert.ok(!names(await request('GET', '/people', { tenant: 'globex' })).includes('Linus Torvalds'));
  });

  it('POST /people without a name is a 400 with a code', async () => {
    const reply = await request('POST', '/people', { tenant: 'acme', body: { nom: 'x' } });
    assert.equal(reply.status, 400);
    assert.equal(reply.body.error.code, 'INVALID_BODY');
  });

  it('GET /people/:id/pets reads the pets of that tenant\'s person', async () => {
    // Person 1 exists in both databases; only the tenant decides whose pets come back.
    const acme = await request('GET', '/people/1/pets', { tenant: 'acme' });
    const globex = await request('GET', '/people/1/pets', { tenant: 'globex' });
    assert.equal(acme.status, 200);
    assert.equal(acme.body.person.name, seedFor('acme')[0]!.name);
    assert.deepEqual(acme.body.pets.map((p: { name: string }) => p.name), seedFor('acme')[0]!.pets.map((p) => p.name));
    assert.equal(globex.body.person.name, seedFor('globex')[0]!.name);
    assert.deepEqual(globex.body.pets.map((p: { name: string }) => p.name), seedFor('globex')[0]!.pets.map((p) => p.name));
  });

  it('GET /people/:id/pets is a 404 for a person missing in that tenant', async () => {
    // acme has a third person, globex does not.
    assert.equal((await request('GET', '/people/3/pets', { tenant: 'acme' })).status, 200);
    const reply = await request('GET', '/people/999/pets', { tenant: 'globex' });
    assert.equal(reply.status, 404);
    assert.equal(reply.body.error.code, 'PERSON_NOT_FOUND');
  });

  it('an unknown tenant is a 404 and creates no database file', async () => {
    const reply = await request('GET', '/people', { tenant: 'initech' });
    assert.equal(reply.status, 404);
    assert.deepEqual(reply.body, { error: { code: 'TENANT_UNKNOWN', message: 'Unknown tenant "initech".' } });
    assert.equal(fs.existsSync(path.join(dataDir, 'initech.sqlite')), false);
  });

  it('a request without x-tenant-id is a 400', async () => {
    const reply = await request('GET', '/people');
    assert.equal(reply.status, 400);
    assert.equal(reply.body.error.code, 'TENANT_CONTEXT_MISSING');
  });

  it('a malformed tenant id is a 400 without a stack', async () => {
    const reply = await request('GET', '/people', { tenant: '../x' });
    assert.equal(reply.status, 400);
    assert.equal(reply.body.error.code, 'TENANT_ID_INVALID');
    assert.deepEqual(Object.keys(reply.body.error).sort(), ['code', 'message']);
    assert.deepEqual(fs.readdirSync(dataDir).sort(), ['acme.sqlite', 'globex.sqlite']);
  });

  it('GET /health needs no tenant', async () => {
    const reply = await request('GET', '/health');
    assert.equal(reply.status, 200);
    assert.equal(reply.body.status, 'ok');
  });

  it('a restart on the same files reuses them without seeding again', async () => {
    await demo.stop();
    demo = await start({ port: 0, dataDir });
    assert.deepEqual(names(await request('GET', '/people', { tenant: 'acme' })), [...seedFor('acme').map((p) => p.name), 'Linus Torvalds']);
    assert.deepEqual(names(await request('GET', '/people', { tenant: 'globex' })), seedFor('globex').map((p) => p.name));
  });
});
