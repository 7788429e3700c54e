/**
 * The example app of `npm run demo` on MariaDB (`MYSQL_URL`), once per strategy: a pool per tenant
 * database, and `DEMO_STRATEGY=shared` (one pool switched between the tenant databases, with
 * `inlineSwitch` and `maxSwitchedConnections`). Each tenant sees only its own rows, an unknown tenant
 * is a 404 that creates no database, and a restart reuses the databases without seeding again.
 * The databases are `ot_demo_<tenant>`, not the demo's own `demo_<tenant>`.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import knexFactory, { type Knex } from 'knex';
import { start, type RunningDemo } from '../examples/demo/app';
import { seedFor } from '../examples/demo/migrations';
import { mysqlConnection, skipMysql } from './helpers/databases';
import { MYSQL_URL } from './helpers/mysql-url';

const PREFIX = 'ot_demo_';

for (const strategy of ['pool-per-tenant', 'shared'] as const) {
  describe(`demo app on MariaDB (${strategy})`, { skip: skipMysql }, () => {
    let demo: RunningDemo;
    let admin: Knex;
    const open = () => start({ port: 0, mysqlUrl: MYSQL_URL, databasePrefix: PREFIX, strategy });

    async function request(method: string, url: string, tenant?: string, body?: unknown): Promise<{ status: number; body: any }> { // eslint-disable-line @typescript-eslint/no-explicit-any
      const headers: Record<string, string> = {};
      if (tenant !== undefined) headers['x-tenant-id'] = tenant;
      if (body !== undefined) headers['content-type'] = 'application/json';
      const res = await fetch(`http://127.0.0.1:${demo.port}${url}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
      return { status: res.status, body: await res.json() };
    }
    const names = async (tenant: string): Promise<string[]> => (await request('GET', '/people', tenant)).body.people.map((p: { name: string }) => p.name);
    const databases = async (): Promise<string[]> => {
      const [rows] = await admin.raw("select schema_name as s from information_schema.schemata where schema_name like 'ot\\_demo\\_%' order by 1");
      return (rows as { s: string }[]).map((r) => r.s);
    };
    const dropAll = async () => {
      for (const db of await databases()) await admin.raw('drop database ??', [db]);
    };

    before(async () => {
      const { database: _database, ...server } = mysqlConnection();
      void _database;
      admin = knexFactory({ client: 'mysql2', connection: server, pool: { min: 0, max: 1 } });
      await dropAll();
      demo = await open();
    });
    after(async () => {
      await demo?.stop();
      await dropAll();
      await admin.destroy();
    });

    it('creates one database per demo tenant and serves each its own seeded rows', async () => {
      assert.deepEqual(await databases(), ['ot_demo_acme', 'ot_demo_globex']);
      assert.equal(demo.tenancy.stats().strategy, strategy);
      assert.deepEqual(await names('acme'), seedFor('acme').map((p) => p.name));
      assert.deepEqual(await names('globex'), seedFor('globex').map((p) => p.name));
    });

    it('writes land in the header tenant only, and relations read that tenant\'s rows', async () => {
      const created = await request('POST', '/people', 'acme', { name: 'Grace Hopper' });
      assert.equal(created.status, 201);
      assert.ok((await names('acme')).includes('Grace Hopper'));
      assert.ok(!(await names('globex')).includes('Grace Hopper'));
      const [rows] = await admin.raw('select count(*) as n from ot_demo_globex.persons where name = ?', ['Grace Hopper']);
      assert.equal(Number((rows as { n: number }[])[0]!.n), 0);
      const pets = await request('GET', '/people/1/pets', 'globex');
      assert.equal(pets.body.person.name, seedFor('globex')[0]!.name);
      assert.deepEqual(pets.body.pets.map((p: { name: string }) => p.name), seedFor('globex')[0]!.pets.map((p) => p.name));
    });

    it('interleaved requests of both tenants each get their own rows', async () => {
      const replies = await Promise.all(Array.from({ length: 40 }, (_, i) => (i % 2 === 0 ? 'acme' : 'globex')).map(async (t) => [t, await names(t)] as const));
      for (const [tenant, got] of replies) {
        const seeded = seedFor(tenant).map((p) => p.name);
        assert.deepEqual(got.slice(0, seeded.length), seeded, tenant);
      }
    });

    it('an unknown tenant is a 404 and creates no database', async () => {
      const reply = await request('GET', '/people', 'initech');
      assert.equal(reply.status, 404);
      assert.equal(reply.body.error.code, 'TENANT_UNKNOWN');
      assert.deepEqual(await databases(), ['ot_demo_acme', 'ot_demo_globex']);
    });

    it('a restart reuses the databases without seeding again', async () => {
      await demo.stop();
      demo = await open();
      assert.deepEqual(await names('acme'), [...seedFor('acme').map((p) => p.name), 'Grace Hopper']);
      assert.deepEqual(await names('globex'), seedFor('globex').map((p) => p.name));
    });
  });
}
