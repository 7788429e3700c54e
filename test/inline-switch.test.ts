/**
 * The shared strategy's inline switch (`inlineSwitch: true`) on real MariaDB, with one connection for
 * three tenants so that nearly every statement carries a `USE`: results are the tenant statement's
 * own (inserts, multi-statement raw SQL), streams switch first, a failing batch leaves the connection's
 * database unknown, a dropped database fails closed; and the negative control: a pool that trusts a
 * failed batch's `USE` serves the next tenant from the wrong database.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it } from 'node:test';
import knexFactory, { type Knex } from 'knex';
import { createTenancy, currentTenantId, UnknownTenantError, type Tenancy } from '../lib/index';
import { AffinityPool } from '../lib/affinity-pool';
import { mysqlConnection, skipMysql } from './helpers/databases';
import { createSchema, createTenantDatabases, Person, seed, streamNames } from './helpers/fixtures';

const TENANTS = ['ia', 'ib', 'ic'];
const db = (t: string) => `ot_inline_${t}`;

describe('shared strategy, inline switch (USE sent with the statement)', { skip: skipMysql }, () => {
  let admin: Knex;
  let tenancy: Tenancy | undefined;
  const { database: _database, ...server } = mysqlConnection();
  void _database;
  const open = (max = 1) =>
    (tenancy = createTenancy({
      strategy: 'shared',
      inlineSwitch: true,
      qualifyTables: false,
      servers: { main: { client: 'mysql2', connection: server, pool: { max } } },
      locate: (id) => ({ server: 'main', database: db(id) }),
      maxConnectionsPerTenant: max,
    }));
  const names = (t: string) => tenancy!.runWithTenant(t, async () => (await Person.query().orderBy('id')).map((p) => p.name));
  const mainStats = () => tenancy!.stats().servers!.main!;

  before(async () => {
    admin = knexFactory({ client: 'mysql2', connection: server, pool: { min: 0, max: 1 } });
    await createTenantDatabases(server, TENANTS, db);
  });
  afterEach(async () => {
    await tenancy?.destroy();
    tenancy = undefined;
  });
  after(async () => {
    for (const t of TENANTS) await admin.raw('drop database if exists ??', [db(t)]);
    await admin.destroy();
  });

  it('one connection serves three tenants in turn, each from its own database, switching with no round trip of its own', async () => {
    open();
    for (const t of TENANTS) await names(t);
    const start = mainStats();
    for (let round = 0; round < 3; round++) {
      for (const t of TENANTS) assert.deepEqual(await names(t), [`${t}-ada`, `${t}-bob`]);
    }
    const stats = mainStats();
    assert.equal(stats.open, 1);
    assert.equal(stats.switches - start.switches, 9);
    assert.equal(stats.affinityHits, start.affinityHits);
    // Same tenant twice in a row: the second statement finds the connection already there.
    await names('ia');
    await names('ia');
    assert.equal(mainStats().affinityHits - stats.affinityHits, 1);
  });

  it("an insert's result is the tenant statement's (insert id), and the row lands in the tenant's database", async () => {
    open();
    await names('ib');
    const id = await tenancy!.runWithTenant('ia', async () => (await Person.query().insert({ name: 'ia-new' })).id);
    assert.ok(Number.isInteger(id) && id > 2, `insert id ${id}`);
    const [rows] = await admin.raw('select name from ??.persons where id = ?', [db('ia'), id]);
    assert.deepEqual(rows, [{ name: 'ia-new' }]);
    const [others] = await admin.raw('select count(*) as n from ??.persons where name = ?', [db('ib'), 'ia-new']);
    assert.equal(Number((others as { n: number }[])[0]!.n), 0);
    await admin.raw('delete from ??.persons where id = ?', [db('ia'), id]);
  });

  it('raw SQL with several statements answers the same with and without a switch in front', async () => {
    open();
    const raw = (t: string) => tenancy!.runWithTenant(t, async () => {
      const [rows] = await tenancy!.knex().raw('select ? as a; select (select count(*) from persons) as n, (select tenant_id from tenant_info) as t', [currentTenantId()]);
      return rows;
    });
    await names('ia');
    const switched = await raw('ib');
    const hit = await raw('ib');
    assert.deepEqual(switched, hit);
    assert.deepEqual(JSON.parse(JSON.stringify(switched)), [[{ a: 'ib' }], [{ n: 2, t: 'ib' }]]);
  });

  it('a streamed query switches first and streams the right tenant', async () => {
    open();
    await names('ia');
    const streamed = await tenancy!.runWithTenant('ic', async () => {
      const rows: string[] = [];
      for await (const row of tenancy!.knex()('persons').orderBy('id').stream() as AsyncIterable<{ name: string }>) rows.push(row.name);
      return rows;
    });
    assert.deepEqual(streamed, ['ic-ada', 'ic-bob']);
    assert.deepEqual(await names('ia'), ['ia-ada', 'ia-bob']);
  });

  it("a failing statement in a switch batch leaves the connection's database unknown, and the next tenant still gets its own rows", async () => {
    open();
    await names('ib');
    await names('ia');
    await assert.rejects(tenancy!.runWithTenant('ib', () => tenancy!.knex().raw('select * from no_such_table')), /no_such_table/);
    const before = mainStats().switches;
    assert.deepEqual(await names('ib'), ['ib-ada', 'ib-bob']);
    assert.equal(mainStats().switches, before + 1, 'the database of the connection was unknown: switched again');
    assert.deepEqual(await names('ia'), ['ia-ada', 'ia-bob']);
  });

  it('a dropped database fails closed: UnknownTenantError every time, never the rows of the database the connection was on', async () => {
    open();
    const knex = knexFactory({ client: 'mysql2', connection: { ...server, database: db('ic') }, pool: { min: 0, max: 1 } });
    try {
      await names('ic');
      await admin.raw('drop database ??', [db('ic')]);
      await names('ia');
      for (let i = 0; i < 3; i++) {
        await assert.rejects(names('ic'), (error: unknown) => error instanceof UnknownTenantError && error.tenantId === 'ic');
      }
      // A stream switches first: its failed switch fails the stream (it used to leave it open forever).
      await assert.rejects(streamNames(tenancy!, 'ic'), (error: unknown) => error instanceof UnknownTenantError && error.tenantId === 'ic');
      assert.deepEqual(await names('ia'), ['ia-ada', 'ia-bob']);
      assert.deepEqual(await streamNames(tenancy!, 'ia'), ['ia-ada', 'ia-bob']);
    } finally {
      await admin.raw('create database if not exists ??', [db('ic')]);
      await createSchema(knex, 'ic');
      await seed(knex, 'ic');
      await knex.destroy();
    }
  });

  it('a transaction opened on a connection last used by another tenant runs all its statements in its own database', async () => {
    open();
    await names('ib');
    await names('ia');
    const seen = await tenancy!.runWithTenant('ib', () =>
      Person.transaction(async () => {
        await Person.query().insert({ name: 'ib-trx' });
        const [all, info] = await Promise.all([Person.query().orderBy('id'), tenancy!.knex()('tenant_info').first()]);
        return { names: all.map((p) => p.name), tenant: (info as { tenant_id: string }).tenant_id };
      }),
    );
    assert.deepEqual(seen, { names: ['ib-ada', 'ib-bob', 'ib-trx'], tenant: 'ib' });
    await admin.raw('delete from ??.persons where name = ?', [db('ib'), 'ib-trx']);
  });

  it("negative control: a pool that trusts a failed batch's USE serves a dropped tenant from the previous tenant's database", async () => {
    const settle = AffinityPool.prototype.settleSwitch;
    AffinityPool.prototype.settleSwitch = function (this: AffinityPool, conn: unknown) {
      settle.call(this, conn, true);
    };
    const knex = knexFactory({ client: 'mysql2', connection: { ...server, database: db('ic') }, pool: { min: 0, max: 1 } });
    try {
      open();
      await names('ic');
      await admin.raw('drop database ??', [db('ic')]);
      await names('ia');
      await assert.rejects(names('ic'), UnknownTenantError);
      // The broken pool believes the connection is on ic's database: no USE, ia's rows.
      assert.deepEqual(await names('ic'), ['ia-ada', 'ia-bob']);
    } finally {
      AffinityPool.prototype.settleSwitch = settle;
      await admin.raw('create database if not exists ??', [db('ic')]);
      await createSchema(knex, 'ic');
      await seed(knex, 'ic');
      await knex.destroy();
    }
  });
});
