/**
 * `qualifyTables` (shared strategy) on real MariaDB: TenantModel queries name their tenant's database
 * (joins, eager loads and subqueries included) and run on connections that have never had a current
 * database, with no `USE`. What names no database (raw SQL, `DATABASE()`) is refused there by the
 * server and sent again after a switch, or switched first.
 *
 * Why that fails closed: on a connection with no current database, a table named without a database
 * resolves nowhere. The negative control shows the hazard the design avoids: the same unqualified
 * statement on a connection left on another tenant's database reads that tenant's rows.
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, afterEach, before, describe, it } from 'node:test';
import knexFactory, { type Knex } from 'knex';
import { createTenancy, TenantMismatchError, TenantUnavailableError, UnknownTenantError, type Tenancy, type SharedPoolOptions, type TenancyCommonOptions } from '../lib/index';
import { mysqlConnection, skipMysql } from './helpers/databases';
import { Audit, createTenantDatabases, dropTenantDatabases, Movie, Person, Pet, streamNames } from './helpers/fixtures';
import { knexWithStatementHook } from './helpers/statement-hook';
import { AffinityPool } from '../lib/affinity-pool';

const TENANTS = ['a', 'b', 'c'];
const db = (t: string) => `ot_qualify_${t}`;

describe('shared strategy, qualifyTables', { skip: skipMysql }, () => {
  let tenancy: Tenancy | undefined;
  const { database: _database, ...server } = mysqlConnection();
  void _database;
  const open = (options: Partial<SharedPoolOptions & TenancyCommonOptions> & { max?: number } = {}) => {
    const { max = 2, ...rest } = options;
    return (tenancy = createTenancy({
      strategy: 'shared',
      qualifyTables: true,
      servers: { main: { client: 'mysql2', connection: { ...server }, pool: { max } } },
      locate: (id) => ({ server: 'main', database: db(id) }),
      verifyConnection: false,
      ...rest,
    }));
  };
  const stats = () => tenancy!.stats().servers!.main!;
  const names = (t: string) => tenancy!.runWithTenant(t, async () => (await Person.query().orderBy('id')).map((p) => p.name));
  /** The rows of raw SQL run in tenant `t`'s scope through `tenancy.knex()`. */
  const raw = async <T>(t: string, sql: string) => ((await tenancy!.runWithTenant(t, () => tenancy!.knex().raw(sql))) as [T[]])[0];
  /** Runs `fn` with a user that has a password and the test databases' grants; drops it (and the tenancy) after. */
  const withPasswordUser = async (user: string, password: string, fn: (admin: Knex) => Promise<void>) => {
    const admin = knexFactory({ client: 'mysql2', connection: server, pool: { min: 0, max: 1 } });
    try {
      await admin.raw('drop user if exists ?@?', [user, server.host]);
      await admin.raw('create user ?@? identified by ?', [user, server.host, password]);
      await admin.raw('grant all on `ot\\_qualify\\_%`.* to ?@?', [user, server.host]);
      await fn(admin);
    } finally {
      await tenancy?.destroy();
      tenancy = undefined;
      await admin.raw('drop user if exists ?@?', [user, server.host]);
      await admin.destroy();
    }
  };

  before(() => createTenantDatabases(server, TENANTS, db));
  afterEach(async () => {
    await tenancy?.destroy();
    tenancy = undefined;
  });
  after(() => dropTenantDatabases(server, TENANTS, db));

  it('model queries of many tenants share connections with no USE at all', async () => {
    open();
    for (let round = 0; round < 5; round++) {
      for (const t of TENANTS) {
        assert.deepEqual(await names(t), [`${t}-ada`, `${t}-bob`]);
        const ada = await tenancy!.runWithTenant(t, () => Person.query().findById(1).withGraphFetched('pets'));
        assert.deepEqual(ada!.pets!.map((p) => p.name), [`${t}-rex`]);
      }
    }
    await Promise.all(Array.from({ length: 60 }, (_, i) => TENANTS[i % 3]!).map(async (t) => assert.deepEqual(await names(t), [`${t}-ada`, `${t}-bob`])));
    // A model whose table names its own database keeps it.
    class APersons extends Person {
      static override tableName = `${db('a')}.persons`;
    }
    for (const t of TENANTS) assert.deepEqual((await tenancy!.runWithTenant(t, () => APersons.query().orderBy('id'))).map((p) => p.name), ['a-ada', 'a-bob']);
    // Bare builders through the tenant's knex name its database too; a name with its own keeps it.
    for (const t of TENANTS) {
      const info = await tenancy!.runWithTenant(t, () => tenancy!.knex()('tenant_info').first('tenant_id'));
      assert.equal(info.tenant_id, t);
      const other = await tenancy!.runWithTenant(t, () => tenancy!.knex()(`${db('a')}.tenant_info`).first('tenant_id'));
      assert.equal(other.tenant_id, 'a', 'an explicit database is kept');
    }
    const s = stats();
    assert.equal(s.switches, 0);
    assert.equal(s.qualifyRetries, 0);
    assert.ok(s.cleanHits >= 89, `cleanHits ${s.cleanHits}`);
    assert.ok(s.open <= 2);
  });

  it('model subqueries and joined eager loads name the database too; a CTE and a from() naming its own database stay as written', async () => {
    open({ max: 1 });
    for (const t of TENANTS) {
      await tenancy!.runWithTenant(t, async () => {
        // A model query used as a subquery is built, never executed: it is qualified all the same.
        // (The pet's name is the tenant's own: run on another database, it would find no owner.)
        const owners = await Person.query().whereIn('id', Pet.query().select('owner_id').where('name', `${t}-tom`));
        assert.deepEqual(owners.map((p) => p.name), [`${t}-bob`]);
        // A common table expression: `from x` names the CTE, not a table of the tenant's database.
        const named = await Person.query().with('x', Person.query().select('id', 'name').where('id', 2)).from('x');
        assert.deepEqual(named.map((p) => p.name), [`${t}-bob`]);
        // ...also inside a transaction, whose client compiles it.
        const inTransaction = await tenancy!.transaction(() => Person.query().with('x', Person.query().select('id', 'name').where('id', 2)).from('x'));
        assert.deepEqual(inTransaction.map((p) => p.name), [`${t}-bob`]);
        // ...and a join to one names the CTE too, while the model's own table is qualified.
        const owner = await Person.query().with('x', Pet.query().select('owner_id').where('name', `${t}-tom`)).join('x', 'x.owner_id', 'persons.id');
        assert.deepEqual(owner.map((p) => p.name), [`${t}-bob`]);
        // An explicit from() with its own database keeps it.
        const other = await Person.query().from(`${db('a')}.persons`).orderBy('id');
        assert.deepEqual(other.map((p) => p.name), ['a-ada', 'a-bob']);
        // A bare knex('x') builder whose `x` is a CTE defined after it reads the CTE, not a table.
        const knex = tenancy!.knex();
        const bare = await knex('x').with('x', knex('persons').select('id', 'name').where('id', 2)).select('name');
        assert.deepEqual(bare.map((p: { name: string }) => p.name), [`${t}-bob`]);
        // (A table the tenant has, named like that, would be shadowed the same way in plain SQL.)
        const shadow = await knex('pets').with('pets', knex('persons').select('name').where('id', 1)).select('name');
        assert.deepEqual(shadow.map((p: { name: string }) => p.name), [`${t}-ada`]);
        // ...also when it is moved into a transaction, whose client compiles it.
        const moved = await knex.transaction((trx) => knex('x').with('x', knex('persons').select('name').where('id', 2)).select('name').transacting(trx));
        assert.deepEqual(moved.map((p: { name: string }) => p.name), [`${t}-bob`]);
        // A CTE's name reaches the statement's subqueries and its other CTEs' bodies, as in plain SQL
        // (they named the tenant's table `pets`, or a table `big` that is not there).
        const pets = knex('pets').select('owner_id').where('name', `${t}-tom`);
        const viaSubquery = await Person.query().with('pets', pets).whereIn('id', Pet.query().select('owner_id'));
        assert.deepEqual(viaSubquery.map((p) => p.name), [`${t}-bob`]);
        const viaKnex = await knex('persons').with('pets', pets).whereIn('id', knex('pets').select('owner_id')).select('name');
        assert.deepEqual(viaKnex.map((p: { name: string }) => p.name), [`${t}-bob`]);
        const chained = await knex('persons')
          .with('big', knex('pets').select('owner_id').where('name', `${t}-tom`))
          .with('owners', knex('big').select('owner_id'))
          .whereIn('id', knex('owners').select('owner_id'))
          .select('name');
        assert.deepEqual(chained.map((p: { name: string }) => p.name), [`${t}-bob`]);
        // A recursive member that joins its own CTE.
        const member = knex('persons').select('persons.id', knex.raw('up.depth + 1')).join('up', 'persons.id', knex.raw('up.id + 1')).where('up.depth', '<', 1);
        const walked = await knex('up')
          .withRecursive('up', ['id', 'depth'], knex('persons').select('id', knex.raw('0')).where('id', 1).unionAll(member))
          .select('id')
          .orderBy('id');
        assert.deepEqual(walked.map((row: { id: number }) => row.id), [1, 2]);
        // A subquery inside a CTE's own body reads the table of the CTE's name, as SQL does: it stays
        // qualified, so even after an app's own USE inside a transaction (which the README warns
        // against) it reads the tenant's table, not the other database's.
        const elsewhere = t === 'a' ? 'b' : 'a';
        const selfNamed = () => Person.query().with('pets', Person.query().select(Pet.query().select('name').orderBy('id').limit(1).as('pet_name')).where('id', 1)).from('pets');
        assert.deepEqual((await selfNamed()).map((row) => (row as unknown as { pet_name: string }).pet_name), [`${t}-rex`]);
        const afterUse = await tenancy!.transaction(async (trx) => {
          await trx.raw(`use ${db(elsewhere)}`);
          return selfNamed();
        });
        assert.deepEqual(afterUse.map((row) => (row as unknown as { pet_name: string }).pet_name), [`${t}-rex`]);
        // A builder settled for an outer CTE names its database again when used without it.
        const reused = knex('pets').select('owner_id');
        await knex('persons').with('pets', pets).whereIn('id', reused).select('name');
        assert.match(reused.toQuery(), new RegExp(`\`${db(t)}\`\\.\`pets\``));
        // A table of the tenant with no CTE of its name around it is still qualified.
        assert.deepEqual((await knex('persons').whereIn('id', knex('pets').select('owner_id')).select('name').orderBy('id')).map((p: { name: string }) => p.name), [`${t}-ada`, `${t}-bob`]);
      });
    }
    const s = stats();
    assert.equal(s.qualifyRetries, 0, 'nothing was refused: the subquery named its database');
    assert.equal(s.switches, 0);
  });

  for (const inlineSwitch of [false, true]) {
    it(`a knex builder made in one tenant, used as a subquery or a binding in another, is refused, not read from its tenant${inlineSwitch ? ' (inlineSwitch)' : ''}`, async () => {
      open({ inlineSwitch });
      const built = await tenancy!.runWithTenant('a', () => ({
        knex: tenancy!.knex()('persons').select('name').where('id', 1),
        model: Person.query().select('name').where('id', 1).toKnexQuery(),
      }));
      await tenancy!.runWithTenant('b', async () => {
        for (const sub of [built.knex, built.model]) {
          // Before stop 22 each of these read a-ada, tenant a's row, in tenant b's query.
          await assert.rejects(async () => Person.query().select('id', sub.clone().as('n')).findById(1), TenantMismatchError);
          await assert.rejects(async () => Person.query().whereIn('name', sub.clone()), TenantMismatchError);
          await assert.rejects(async () => tenancy!.knex().raw('select (?) as n', [sub.clone()]), TenantMismatchError);
          await assert.rejects(async () => tenancy!.knex()('persons').whereIn('name', sub.clone()), TenantMismatchError);
        }
        // Moved into b's transaction: refused too (before the fix, a read and a write of a's database).
        await assert.rejects(
          tenancy!.transaction(async (trx) => {
            for (const sub of [built.knex, built.model]) await assert.rejects(async () => sub.clone().transacting(trx), TenantMismatchError);
            throw new TenantMismatchError('a', 'b');
          }),
          TenantMismatchError,
        );
        // Built in b, the same shapes read b (moved into its own transaction too).
        const own = tenancy!.knex()('persons').select('name').where('id', 1);
        assert.deepEqual(await tenancy!.transaction(async (trx) => (await own.clone().transacting(trx)).map((r: { name: string }) => r.name)), ['b-ada']);
        assert.equal(((await Person.query().select('id', own.clone().as('n')).findById(1)) as unknown as { n: string }).n, 'b-ada');
        assert.deepEqual((await Person.query().whereIn('name', own.clone())).map((p) => p.name), ['b-ada']);
      });
      // In its own tenant it still works.
      assert.deepEqual(await tenancy!.runWithTenant('a', async () => (await Person.query().whereIn('name', built.knex.clone())).map((p) => p.name)), ['a-ada']);
    });
  }

  for (const inlineSwitch of [false, true]) {
    it(`locate() results with no database, or an inherited server key, are refused (503), nothing cached${inlineSwitch ? ' (inlineSwitch)' : ''}`, async () => {
      const located: Record<string, unknown> = { a: { server: 'main' }, b: { server: 'toString', database: db('b') }, c: null, d: { server: 'main', database: '' } };
      open({ inlineSwitch, locate: (id) => located[id] as never });
      for (const t of ['a', 'b', 'c', 'd']) {
        // Before stop 22: a and d were served (on whatever database the connection had), b and c failed untyped.
        await assert.rejects(tenancy!.runWithTenant(t, () => Person.query()), TenantUnavailableError, t);
      }
      assert.equal(tenancy!.stats().tenants, 0);
      assert.equal(tenancy!.stats().servers?.main?.inUse ?? 0, 0, 'no connection left claimed');
    });
  }

  it('a locate() that never answers fails its requests with a 503 after acquireTimeoutMs, instead of hanging them', async () => {
    let hang = true;
    open({ acquireTimeoutMs: 300, locate: (id) => (hang ? new Promise<never>(() => undefined) : { server: 'main', database: db(id) }) });
    const started = Date.now();
    await assert.rejects(tenancy!.runWithTenant('a', () => Person.query()), TenantUnavailableError);
    assert.ok(Date.now() - started < 3_000, `answered after ${Date.now() - started} ms`);
    hang = false;
    assert.deepEqual(await names('a'), ['a-ada', 'a-bob']);
  });

  it("a query built before forget() (a move to another server) fails with a 503 instead of reaching the old location; the next scope serves", async () => {
    open();
    const held = await tenancy!.runWithTenant('a', () => ({ query: Person.query().insert({ name: 'a-late' }), knex: tenancy!.knex() }));
    await tenancy!.forget('a');
    // Before stop 22 both wrote to a's old location; a tenant pool closed the same way already said 503.
    await assert.rejects(tenancy!.runWithTenant('a', async () => held.query), TenantUnavailableError);
    await assert.rejects(async () => held.knex('persons').insert({ name: 'a-late' }), TenantUnavailableError);
    assert.deepEqual(await names('a'), ['a-ada', 'a-bob']);
  });

  it('with maxTenants, a tenant just opened is not evicted before its first lease: forget() waits for its scope', async () => {
    open({ maxTenants: 1 });
    await names('a');
    await names('a');
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let finished = false;
    const inflight = tenancy!.runWithTenant('b', async () => {
      await gate;
      await Person.query();
      finished = true;
    });
    await sleep(50);
    assert.equal(tenancy!.stats().leases, 1);
    const forgotten = tenancy!.forget('b');
    release();
    await forgotten;
    // Before stop 22 b's handle was evicted before its lease, untracked: forget() returned at once.
    assert.equal(finished, true, "forget() returned before b's scope had finished");
    await inflight;
  });

  it("withGraphJoined reads the joined tables' columns from the tenant's database (shared, with and without qualifyTables)", async () => {
    for (const qualifyTables of [false, true]) {
      // objection caches each model's table metadata (read through columnInfo()) for the process.
      for (const model of [Person, Pet]) Reflect.deleteProperty(model, '$$tableMetadata');
      open({ max: 1, qualifyTables });
      for (const t of TENANTS) {
        const joined = await tenancy!.runWithTenant(t, () => Person.query().withGraphJoined('pets').where('persons.id', 2));
        assert.deepEqual(joined.map((p) => [p.name, p.pets!.map((pet) => [pet.id, pet.name])]), [[`${t}-bob`, [[2, `${t}-tom`]]]], `qualifyTables: ${qualifyTables}`);
      }
      // With qualifyTables, the joins name the database too: nothing refused, no connection switched.
      if (qualifyTables) assert.deepEqual([stats().qualifyRetries, stats().switches], [0, 0]);
      await tenancy!.destroy();
    }
  });

  it('writes, updates and deletes name the tenant database too, hooks included', async () => {
    open({ max: 1 });
    for (const t of TENANTS) {
      await tenancy!.runWithTenant(t, async () => {
        const row = await Audit.query().insert({ message: `${t}-new` });
        await Audit.query().patch({ message: `${t}-patched` }).where('id', row.id);
        assert.equal((await Audit.query().findById(row.id))!.message, `${t}-patched`);
        // Pet's static afterInsert hook writes an audit row.
        const pet = await Pet.query().insert({ name: `${t}-new-pet` });
        assert.deepEqual((await Audit.query().orderBy('id')).map((a) => a.message), [`${t}-patched`, `pet:${t}-new-pet`]);
        await Pet.query().deleteById(pet.id);
        await Audit.query().delete();
      });
    }
    assert.equal(stats().switches, 0);
    assert.equal(stats().qualifyRetries, 0);
    for (const t of TENANTS) assert.deepEqual(await names(t), [`${t}-ada`, `${t}-bob`]);
  });

  it("a model query that names a table without its database (a raw subquery in Person's hook) is sent again after a switch", async () => {
    open({ max: 1 });
    const row = await tenancy!.runWithTenant('a', () => Person.query().insert({ name: 'a-hooked' }));
    assert.equal(row.note, 'inserted-in:a');
    assert.equal(stats().qualifyRetries, 1);
    await tenancy!.runWithTenant('a', () => Person.query().deleteById(row.id));
    assert.deepEqual(await names('b'), ['b-ada', 'b-bob']);
  });

  it('what names no database is refused, then sent again after a switch: raw SQL', async () => {
    open({ max: 1 });
    const [rows] = await tenancy!.runWithTenant('b', () => tenancy!.knex().raw('select name from persons order by id'));
    assert.deepEqual((rows as { name: string }[]).map((r) => r.name), ['b-ada', 'b-bob']);
    assert.equal(stats().qualifyRetries, 1);
    assert.equal(stats().switches, 1);
    // The connection is now on b's database, no longer clean: a's unqualified SQL must not run as it
    // is (it would read b's rows), it is switched first.
    const [aRows] = await tenancy!.runWithTenant('a', () => tenancy!.knex().raw('select name from persons order by id'));
    assert.deepEqual((aRows as { name: string }[]).map((r) => r.name), ['a-ada', 'a-bob']);
    // a took it back to no database first (COM_CHANGE_USER); the same text was refused for b, so a's
    // statement was switched first (the next test shows what went to the server).
    assert.equal(stats().restores, 1);
    assert.equal(stats().switches, 2);
    assert.equal(stats().qualifyRetries, 2);
    // Many-to-many: the join table is named with its database too (the relation's join is qualified).
    const movies = await tenancy!.runWithTenant('c', () => Person.relatedQuery('movies').for(1));
    assert.deepEqual(movies.map((m: Movie) => m.title), ['c-alien']);
  });

  it("a call of the tenant's own stored function on a clean connection (refused there with 1305, not 1046) is sent again after a switch", async () => {
    const admin = knexFactory({ client: 'mysql2', connection: server, pool: { min: 0, max: 1 } });
    try {
      for (const t of TENANTS) await admin.raw(`create or replace function \`${db(t)}\`.whoami() returns varchar(20) deterministic return '${t}'`);
    } finally {
      await admin.destroy();
    }
    open({ max: 1 });
    // a, b, a: each tenant change takes the connection back to no database first.
    for (const t of ['a', 'b', 'a']) {
      const person = await tenancy!.runWithTenant(t, () => Person.query().select('name', tenancy!.knex().raw('whoami() as w')).findById(1));
      assert.deepEqual({ name: person?.name, w: (person as unknown as { w: string }).w }, { name: `${t}-ada`, w: t });
      const [[row]] = (await tenancy!.runWithTenant(t, () => tenancy!.knex().raw('select whoami() as w'))) as [[{ w: string }]];
      assert.equal(row.w, t);
    }
    assert.ok(stats().qualifyRetries >= 1, JSON.stringify(stats()));
    // A function that is really missing fails with the server's own error, once switched.
    await assert.rejects(tenancy!.runWithTenant('c', () => tenancy!.knex().raw('select nosuchfunction() as w')), (error: { errno?: number }) => error.errno === 1305);
  });

  it('a CALL that fails with 1305 half-way (after its own writes) is not sent again: its writes happen once', async () => {
    const admin = knexFactory({ client: 'mysql2', connection: server, pool: { min: 0, max: 1 } });
    try {
      await admin.raw(`create table if not exists \`${db('a')}\`.calls (v varchar(8))`);
      await admin.raw(`delete from \`${db('a')}\`.calls`);
      await admin.raw(`create or replace procedure \`${db('a')}\`.half_way() begin insert into calls values ('ran'); select missing_function(); end`);
      open({ max: 1 });
      await assert.rejects(tenancy!.runWithTenant('a', () => tenancy!.knex().raw(`call \`${db('a')}\`.half_way()`)), (error: { errno?: number }) => error.errno === 1305);
      assert.deepEqual(await admin.withSchema(db('a')).from('calls').pluck('v'), ['ran'], 'the procedure ran once');
    } finally {
      await admin.destroy();
    }
  });

  it("knex's alias objects ({ q: 'pets' }) in joins, from() and knex({ p: 'persons' }) name the tenant's database (they compiled to `db`.`[object Object]`)", async () => {
    open({ max: 1 });
    for (const t of ['a', 'b']) {
      const pets = await tenancy!.runWithTenant(t, async () => (await Person.query().join({ q: 'pets' } as never, 'q.owner_id', 'persons.id').select('q.name as pet').orderBy('q.id')).map((r) => (r as unknown as { pet: string }).pet));
      assert.deepEqual(pets, [`${t}-rex`, `${t}-tom`]);
      const joined = await tenancy!.runWithTenant(t, async () => (await tenancy!.knex()('persons').leftJoin({ q: 'pets' } as never, 'q.owner_id', 'persons.id').select('q.name as pet').orderBy('q.id')).map((r: { pet: string }) => r.pet));
      assert.deepEqual(joined, [`${t}-rex`, `${t}-tom`]);
      const names = await tenancy!.runWithTenant(t, async () => (await Person.query().from({ p: 'persons' } as never).select('p.name').orderBy('p.id')).map((r) => r.name));
      assert.deepEqual(names, [`${t}-ada`, `${t}-bob`]);
      const sql = await tenancy!.runWithTenant(t, () => Person.query().join({ q: 'pets' } as never, 'q.owner_id', 'persons.id').toKnexQuery().toString());
      assert.match(sql, new RegExp(`join \`${db(t)}\`.\`pets\` as \`q\``));
      // knex({ p: 'persons' }) as knex('persons'): it named no database and cost a USE.
      const started = await tenancy!.runWithTenant(t, async () => {
        const knex = tenancy!.knex();
        return { sql: knex({ p: 'persons' }).select('p.name').toString(), names: (await knex({ p: 'persons' }).select('p.name').orderBy('p.id')).map((r: { name: string }) => r.name) };
      });
      assert.equal(started.sql, `select \`p\`.\`name\` from \`${db(t)}\`.\`persons\` as \`p\``);
      assert.deepEqual(started.names, [`${t}-ada`, `${t}-bob`]);
    }
    assert.equal(tenancy!.stats().servers!.main!.switches, 0, 'no USE was needed');
  });

  it('a statement the server refused lately is switched first on a clean connection, not sent to be refused again', async () => {
    const sent: string[] = [];
    open({
      max: 1,
      createKnex: knexWithStatementHook(() => (send, sql, rest) => {
        sent.push(typeof sql === 'string' ? sql : String((sql as { sql?: unknown }).sql));
        return send(sql, ...rest);
      }),
    });
    const text = 'select name from persons order by id';
    const since = (mark: number) => sent.slice(mark).filter((sql) => !/^(SHOW GLOBAL VARIABLES|SELECT DATABASE\(\))/.test(sql));
    let mark = sent.length;
    assert.deepEqual((await raw<{ name: string }>('b', text)).map((r) => r.name), ['b-ada', 'b-bob']);
    assert.deepEqual(since(mark), [text, `USE \`${db('b')}\``, text], 'the first time: refused, switched, sent again');
    // a's model query takes the connection back to no database (a change of user: no statement).
    assert.deepEqual(await names('a'), ['a-ada', 'a-bob']);
    assert.equal(stats().restores, 1);
    mark = sent.length;
    assert.deepEqual((await raw<{ name: string }>('a', text)).map((r) => r.name), ['a-ada', 'a-bob']);
    assert.deepEqual(since(mark), [`USE \`${db('a')}\``, text], 'known: switched first, no refused round trip');
    assert.deepEqual([stats().qualifyRetries, stats().switches, stats().restores], [2, 2, 1]);
    // Another text is not known: refused once, as usual.
    await names('c');
    mark = sent.length;
    assert.deepEqual((await raw<{ n: number }>('c', 'select count(*) as n from persons')).map((r) => Number(r.n)), [2]);
    assert.deepEqual(since(mark), ['select count(*) as n from persons', `USE \`${db('c')}\``, 'select count(*) as n from persons']);
    // A statement with no table (it runs on a clean connection) is never remembered as refused.
    await names('b');
    mark = sent.length;
    assert.equal((await raw<{ one: number }>('b', 'select 1 as one'))[0]!.one, 1);
    assert.deepEqual(since(mark), ['select 1 as one']);
  });

  it('a connection a refused statement left on a tenant database goes back to no database when another tenant takes it', async () => {
    const admin = knexFactory({ client: 'mysql2', connection: server, pool: { min: 0, max: 1 } });
    const dbOf = async (thread: number) => {
      const [rows] = await admin.raw('select db from information_schema.processlist where id = ?', [thread]);
      return (rows as { db: string | null }[])[0]!.db;
    };
    let setUps = 0;
    try {
      open({
        servers: {
          main: { client: 'mysql2', connection: { ...server }, pool: { max: 1, afterCreate: (conn: { query(sql: string, cb: (e: unknown) => void): void }, done: (e?: unknown) => void) => {
            setUps++;
            conn.query("set time_zone = '+03:00'", (error) => done(error));
          } } },
        },
      });
      const thread = (await raw<{ id: number }>('b', 'select connection_id() as id'))[0]!.id;
      assert.equal(await dbOf(thread), null, 'opened with no database; a statement without tables ran there as it was');
      assert.deepEqual((await raw<{ name: string }>('b', 'select name from persons order by id')).map((r) => r.name), ['b-ada', 'b-bob']);
      await raw('b', "set @owner = 'b', time_zone = '+00:00'");
      assert.equal(await dbOf(thread), db('b'));
      assert.deepEqual([stats().switches, stats().qualifyRetries, stats().restores], [1, 1, 0]);
      // b again: the connection is on its database (affinity), nothing to undo.
      assert.deepEqual((await raw<{ name: string }>('b', 'select name from persons order by id')).map((r) => r.name), ['b-ada', 'b-bob']);
      assert.deepEqual([stats().switches, stats().restores], [1, 0]);
      // a's model query: the connection goes back to no database rather than to a's.
      assert.deepEqual(await names('a'), ['a-ada', 'a-bob']);
      assert.deepEqual([stats().switches, stats().restores], [1, 1]);
      assert.equal((await raw<{ id: number }>('a', 'select connection_id() as id'))[0]!.id, thread, 'the same connection');
      assert.equal(await dbOf(thread), null);
      // The change of user also reset b's session; afterCreate ran again.
      const [session] = await raw<{ owner: string | null; tz: string }>('a', 'select @owner as owner, @@session.time_zone as tz');
      assert.deepEqual(session, { owner: null, tz: '+03:00' });
      assert.equal(setUps, 2);
      // a's own unqualified SQL is refused there, then runs on a's database.
      assert.deepEqual((await raw<{ name: string }>('a', 'select name from persons order by id')).map((r) => r.name), ['a-ada', 'a-bob']);
      assert.deepEqual([stats().switches, stats().qualifyRetries, stats().restores], [2, 2, 1]);
      assert.deepEqual(await names('c'), ['c-ada', 'c-bob']);
      assert.deepEqual([stats().restores, stats().created, stats().destroyed], [2, 1, 0]);
      assert.equal(await dbOf(thread), null);
    } finally {
      await admin.destroy();
    }
  });

  it('while most statements on clean connections are refused, switched connections are mostly switched, not taken back', async () => {
    // Two tenants in turn on one connection, raw SQL only: every clean acquire has its statement
    // refused. Taking the connection back each time would cost a round trip per query for nothing.
    open({ max: 1 });
    const rounds = 800;
    let restoresAfterWarmUp = 0;
    for (let i = 0; i < rounds; i++) {
      const t = i % 2 === 0 ? 'a' : 'b';
      if (i === 600) restoresAfterWarmUp = stats().restores;
      const [rows] = await tenancy!.runWithTenant(t, () => tenancy!.knex().raw('select tenant_id from tenant_info'));
      assert.equal((rows as { tenant_id: string }[])[0]!.tenant_id, t);
    }
    const s = stats();
    // The first 256 clean acquires set the refused share (1 per acquire); from then on one switched
    // connection in 256 is taken back, to keep measuring it.
    assert.ok(s.restores < 400, `restores ${s.restores} of ${rounds} changes of tenant`);
    const late = s.restores - restoresAfterWarmUp;
    assert.ok(late <= 2, `restores in the last 200 changes of tenant: ${late}`);
    // Every change of tenant took a switched connection: back to no database, or a USE.
    assert.equal(s.switches - s.qualifyRetries + s.restores, rounds - 1);
    // Model queries bring the share down again: connections are taken back once more.
    for (let i = 0; i < 2000; i++) assert.equal((await tenancy!.runWithTenant(i % 2 === 0 ? 'a' : 'c', () => Person.query().findById(1)))!.name, i % 2 === 0 ? 'a-ada' : 'c-ada');
    const before = stats().restores;
    await tenancy!.runWithTenant('b', () => tenancy!.knex().raw('select 1 from persons'));
    assert.deepEqual(await names('c'), ['c-ada', 'c-bob']);
    assert.equal(stats().restores, before + 1, 'a connection switched by b is taken back for c');
  });

  it('takes connections back to no database for a user with a password (the change of user authenticates again)', async () => {
    const user = 'ot_qualify_user';
    await withPasswordUser(user, 'pw-Qualify-1', async () => {
      open({ servers: { main: { client: 'mysql2', connection: { ...server, user, password: 'pw-Qualify-1' }, pool: { max: 1 } } } });
      for (let i = 0; i < 3; i++) {
        const [rows] = await tenancy!.runWithTenant('b', () => tenancy!.knex().raw('select name from persons order by id'));
        assert.deepEqual((rows as { name: string }[]).map((r) => r.name), ['b-ada', 'b-bob']);
        assert.deepEqual(await names('a'), ['a-ada', 'a-bob']);
      }
      assert.deepEqual([stats().restores, stats().created, stats().destroyed], [3, 1, 0]);
      const [who] = await tenancy!.runWithTenant('a', () => tenancy!.knex().raw('select current_user() as u, database() as d'));
      assert.equal((who as { u: string }[])[0]!.u, `${user}@${server.host}`);
    });
  });

  it("after the pool user's password changes, a refused change of user costs no query: restores stop, USE goes on", async () => {
    // Sessions opened before a password change stay authenticated; a change of user authenticates
    // again and is refused. The connections themselves can still switch with USE.
    const user = 'ot_qualify_rotated';
    const rawNames = async (t: string, sql: string) => (await raw<{ name: string }>(t, sql)).map((r) => r.name);
    await withPasswordUser(user, 'pw-Before-1', async (admin) => {
      open({ servers: { main: { client: 'mysql2', connection: { ...server, user, password: 'pw-Before-1' }, pool: { max: 2 } } } });
      // Two connections at once, each left on a tenant's database by refused raw SQL.
      const [b, c] = await Promise.all([rawNames('b', 'select name from persons where sleep(0.1) = 0 order by id'), rawNames('c', 'select name from persons where sleep(0.1) = 0 order by id')]);
      assert.deepEqual([b, c], [['b-ada', 'b-bob'], ['c-ada', 'c-bob']]);
      assert.deepEqual([stats().created, stats().switches, stats().restores], [2, 2, 0]);
      await admin.raw('alter user ?@? identified by ?', [user, server.host, 'pw-After-2']);
      // a's query takes one of them: the change of user is refused, that connection closed, and the
      // acquire takes the other one with a USE. New connections would be refused too.
      assert.deepEqual(await names('a'), ['a-ada', 'a-bob']);
      assert.deepEqual([stats().restores, stats().restoreRefusals, stats().destroyed, stats().open, stats().switches], [1, 1, 1, 1, 3]);
      // From now on connections are switched with USE, never taken back.
      assert.deepEqual(await rawNames('b', 'select name from persons order by id'), ['b-ada', 'b-bob']);
      assert.deepEqual(await names('c'), ['c-ada', 'c-bob']);
      assert.deepEqual([stats().restores, stats().restoreRefusals, stats().switches, stats().destroyed], [1, 1, 5, 1]);
    });
  });

  it('a connection that cannot be taken back to no database is closed, never handed out (503)', async () => {
    let setUps = 0;
    open({
      servers: {
        main: { client: 'mysql2', connection: { ...server }, pool: { max: 1, afterCreate: (_conn: unknown, done: (e?: unknown) => void) => done(++setUps === 2 ? new Error('set-up failed') : undefined) } },
      },
    });
    await tenancy!.runWithTenant('b', () => tenancy!.knex().raw('select name from persons'));
    assert.equal(stats().switches, 1);
    await assert.rejects(names('a'), (error: Error) => error instanceof TenantUnavailableError && /back to no database/.test(error.message));
    assert.deepEqual([stats().restores, stats().destroyed, stats().open], [1, 1, 0]);
    assert.deepEqual(await names('a'), ['a-ada', 'a-bob']);
    assert.deepEqual([stats().created, stats().switches], [2, 1]);
  });

  it('DATABASE() and strings of several statements are switched first', async () => {
    open({ max: 1, inlineSwitch: true });
    const [rows] = await tenancy!.runWithTenant('c', () => tenancy!.knex().raw('select database() as d'));
    assert.equal((rows as { d: string }[])[0]!.d, db('c'));
    assert.equal(stats().qualifyRetries, 0);
    await tenancy!.destroy();
    open({ max: 1, inlineSwitch: true });
    const [results] = await tenancy!.runWithTenant('a', () => tenancy!.knex().raw(`insert into ${db('a')}.audit (message) values ('once'); select count(*) as n from audit`));
    assert.equal(Number((results as [unknown, { n: number }[]])[1]![0]!.n), 1, 'the insert ran once');
    assert.equal(stats().qualifyRetries, 0);
    assert.equal(stats().switches, 1);
    await tenancy!.destroy();
    // One statement with a trailing `;` is not several: it goes as it is on a clean connection.
    open({ max: 1, inlineSwitch: true });
    const [counted] = await tenancy!.runWithTenant('a', () => tenancy!.knex().raw(`select count(*) as n from ${db('a')}.audit;`));
    assert.equal(Number((counted as { n: number }[])[0]!.n), 1);
    assert.equal(stats().switches, 0);
    assert.equal(stats().cleanHits, 1);
    await tenancy!.runWithTenant('a', () => tenancy!.knex().raw('delete from audit'));
  });

  it('transactions keep a clean connection clean: their model queries name the database, the rest is switched', async () => {
    open({ max: 1 });
    await tenancy!.runWithTenant('b', () =>
      tenancy!.transaction(async () => {
        await Audit.query().insert({ message: 'b-tx' });
        assert.equal((await Audit.query().where('message', 'b-tx')).length, 1);
        // A nested transaction is a savepoint on the same connection.
        await tenancy!.transaction(async () => {
          await Audit.query().insert({ message: 'b-inner' });
          throw new Error('roll back the savepoint');
        }).catch(() => undefined);
      }),
    );
    let s = stats();
    assert.equal(s.switches, 0, 'BEGIN, qualified statements, SAVEPOINT, COMMIT: no USE');
    assert.equal(s.qualifyRetries, 0);
    assert.deepEqual((await tenancy!.runWithTenant('b', () => Audit.query())).map((a) => a.message), ['b-tx']);
    // A rolled-back transaction leaves nothing.
    await assert.rejects(tenancy!.runWithTenant('c', () => tenancy!.transaction(async () => {
      await Audit.query().insert({ message: 'c-gone' });
      throw new Error('roll back');
    })));
    assert.deepEqual(await tenancy!.runWithTenant('c', () => Audit.query()), []);
    assert.equal(stats().switches, 0);
    // Unqualified SQL in a transaction is refused, then sent again after a USE inside it.
    await tenancy!.runWithTenant('b', () =>
      tenancy!.transaction(async () => {
        await Audit.query().insert({ message: 'b-two' });
        const [rows] = await tenancy!.knex().raw('select count(*) as n from audit');
        assert.equal(Number((rows as { n: number }[])[0]!.n), 2, 'the refused statement ran in the same transaction, after the switch');
        const [where] = await tenancy!.knex().raw('select database() as d');
        assert.equal((where as { d: string }[])[0]!.d, db('b'));
      }),
    );
    s = stats();
    assert.equal(s.qualifyRetries, 1);
    assert.equal(s.switches, 1);
    await tenancy!.runWithTenant('b', () => Audit.query().delete());
    assert.deepEqual(await names('b'), ['b-ada', 'b-bob']);
    assert.deepEqual(await names('a'), ['a-ada', 'a-bob']);
  });

  it('statements of one transaction sent at once, refused together on its clean connection: each is sent again after the one switch', async () => {
    open({ max: 1 });
    // Four texts the pool has never seen, in flight together on the transaction's connection (as
    // objection sends a graph's many-to-many join rows, four at a time, through a join model that
    // names no database): the server refuses all four before the first refusal's USE runs.
    await tenancy!.runWithTenant('c', () =>
      tenancy!.transaction(() => Promise.all([1, 2, 3, 4].map((i) => tenancy!.knex().raw(`insert into audit (message) values ('c-at-once-${i}')`)))),
    );
    assert.deepEqual((await tenancy!.runWithTenant('c', () => Audit.query().orderBy('message'))).map((a) => a.message), ['c-at-once-1', 'c-at-once-2', 'c-at-once-3', 'c-at-once-4']);
    assert.equal(stats().switches, 1);
    await tenancy!.runWithTenant('c', () => Audit.query().delete());
  });

  it('a statement refused on a clean connection is not sent again once its transaction has rolled back (it would commit on its own)', async () => {
    open({ max: 1 });
    for (let round = 0; round < 3; round++) {
      // Both sent at once. S1 names no database: refused, its USE queued behind S2. S2 fails
      // (duplicate key), the transaction rolls back; S1 must not then run after the ROLLBACK, in autocommit.
      const text = `insert into audit (message) values ('rolled-back-${round}')`;
      const outcome = await tenancy!
        .runWithTenant('c', () =>
          tenancy!.transaction(() =>
            Promise.all([tenancy!.knex().raw(text), tenancy!.knex().raw(`insert into ${db('c')}.persons (id, name) values (1, 'duplicate')`)]),
          ),
        )
        .then(
          () => 'committed',
          (error: { errno?: number; nativeError?: { errno?: number } }) => error.nativeError?.errno ?? error.errno ?? String(error),
        );
      assert.equal(outcome, 1062, 'the transaction failed on the duplicate key');
      await sleep(50);
      const rows = await tenancy!.runWithTenant('c', () => Audit.query().where('message', 'like', 'rolled-back-%'));
      assert.deepEqual(rows.map((a) => a.message), [], 'a statement of the rolled-back transaction was committed');
    }
  });

  it('a server connection that names a database where the library cannot see it (a uri) is switched with USE: raw SQL never runs on that database', async () => {
    const uri = `mysql://${server.user}${server.password ? `:${server.password}` : ''}@${server.host}:${server.port}/${db('b')}`;
    for (const qualifyTables of [undefined, true]) {
      open({ max: 1, ...(qualifyTables === undefined ? {} : { qualifyTables }), servers: { main: { client: 'mysql2', connection: { uri } as never, pool: { max: 1 } } } });
      // The connection is on b's database; a's unqualified SQL must not run there.
      assert.deepEqual((await raw<{ tenant_id: string }>('a', 'select tenant_id from tenant_info')).map((r) => r.tenant_id), ['a'], `qualifyTables ${qualifyTables}`);
      assert.deepEqual(await names('a'), ['a-ada', 'a-bob']);
      assert.deepEqual((await raw<{ tenant_id: string }>('b', 'select tenant_id from tenant_info')).map((r) => r.tenant_id), ['b']);
      assert.deepEqual((await raw<{ tenant_id: string }>('a', 'select tenant_id from tenant_info')).map((r) => r.tenant_id), ['a']);
      assert.equal(stats().cleanHits, 0, 'no connection counted as clean');
      assert.ok(stats().switches >= 2, JSON.stringify(stats()));
      await tenancy!.destroy();
      tenancy = undefined;
    }
  });

  it('connections found clean before the pool found one on a database are switched with USE after it, for tenants opened since then too', async () => {
    // The second connection lands on a's database where the pool cannot see it (as a server's
    // init_connect could): the pool stops serving connections with no database from then on.
    let created = 0;
    const afterCreate = (conn: { changeUser(options: object, done: (error: unknown) => void): void }, done: (error: unknown, conn: unknown) => void) => {
      if (++created !== 2) return done(null, conn);
      // Not a USE, which the pool follows: a change of user onto a database, which it cannot see.
      conn.changeUser({ database: db('a') }, (error) => done(error, conn));
    };
    open({ max: 2, servers: { main: { client: 'mysql2', connection: { ...server }, pool: { max: 2, afterCreate } as never } } });
    assert.deepEqual(await names('b'), ['b-ada', 'b-bob']);
    assert.equal(stats().cleanHits, 1);
    // Two at once: the second connection opens, on a's database.
    await Promise.all([raw('a', 'select sleep(0.05)'), raw('b', 'select sleep(0.05)')]);
    assert.equal(stats().open, 2);
    // c's handle is opened now: its statements neither name a database nor expect refusals. Both
    // connections serve it in turn (the clean one first: idle longest).
    for (let i = 0; i < 3; i++) {
      assert.deepEqual(await names('c'), ['c-ada', 'c-bob']);
      assert.deepEqual((await raw<{ tenant_id: string }>('c', 'select tenant_id from tenant_info')).map((r) => r.tenant_id), ['c']);
    }
    assert.deepEqual(await names('b'), ['b-ada', 'b-bob']);
  });

  it('a tenant whose database was dropped gets UnknownTenantError, as without qualifyTables', async () => {
    const admin = knexFactory({ client: 'mysql2', connection: server, pool: { min: 0, max: 1 } });
    try {
      await admin.raw('drop database if exists ??', [db('gone')]);
      await admin.raw('create database ??', [db('gone')]);
      await admin.raw('create table ??.persons (id int primary key, name varchar(32), note varchar(64))', [db('gone')]);
      open({ max: 1 });
      assert.deepEqual(await names('gone'), []);
      await admin.raw('drop database ??', [db('gone')]);
      await assert.rejects(names('gone'), UnknownTenantError);
      // A stream switches first: its failed switch fails the stream (it used to leave it open forever).
      await assert.rejects(streamNames(tenancy!, 'gone'), UnknownTenantError);
      await assert.rejects(tenancy!.runWithTenant('gone', () => tenancy!.transaction(() => streamNames(tenancy!, 'gone'))), UnknownTenantError);
      // A table missing from a database that is there keeps its own error.
      await assert.rejects(tenancy!.runWithTenant('a', () => tenancy!.knex()('no_such_table').select()), (error: { errno?: number }) => error.errno === 1146);
      assert.deepEqual(await names('b'), ['b-ada', 'b-bob']);
    } finally {
      await admin.raw('drop database if exists ??', [db('gone')]);
      await admin.destroy();
    }
  });

  it("a server's wrapIdentifier (a snake-case mapper) never rewrites the tenant's database name: bigCo reads bigCo, not big_co", async () => {
    // knex wraps `db.table` part by part through the client's wrapIdentifier: a snake-case mapper (as
    // objection's knexSnakeCaseMappers) named tenant big_co's database for tenant bigCo.
    const snake = (value: string, origImpl: (value: string) => string) => origImpl(value.replace(/([a-z])([A-Z])/g, '$1_$2').toLowerCase());
    await createTenantDatabases(server, ['bigCo', 'big_co'], db);
    try {
      open({ servers: { main: { client: 'mysql2', connection: { ...server }, pool: { max: 2 }, wrapIdentifier: snake } } });
      for (let round = 0; round < 3; round++) {
        assert.deepEqual(await names('bigCo'), ['bigCo-ada', 'bigCo-bob']);
        assert.deepEqual(await names('big_co'), ['big_co-ada', 'big_co-bob']);
      }
      // In a transaction (its own client), a join, and a bare builder of the tenant's knex.
      await tenancy!.runWithTenant('bigCo', () =>
        tenancy!.transaction(async () => {
          assert.deepEqual((await Person.query().orderBy('id')).map((p) => p.name), ['bigCo-ada', 'bigCo-bob']);
          const ada = await Person.query().findById(1).withGraphJoined('pets');
          assert.deepEqual(ada!.pets!.map((p) => p.name), ['bigCo-rex']);
          assert.deepEqual((await tenancy!.knex()('persons').orderBy('id')).map((p: { name: string }) => p.name), ['bigCo-ada', 'bigCo-bob']);
        }),
      );
      // The mapper still applies to everything else (columns, tables).
      assert.deepEqual((await tenancy!.runWithTenant('bigCo', () => Person.query().select('NAME').orderBy('ID'))).map((p) => p.name), ['bigCo-ada', 'bigCo-bob']);
    } finally {
      await dropTenantDatabases(server, ['bigCo', 'big_co'], db);
    }
  });

  it('the connection check of a new tenant finds a missing database on a clean connection: UnknownTenantError, nothing cached', async () => {
    open({ verifyConnection: true });
    for (let i = 0; i < 2; i++) {
      // select 1 + 1 names no table: on a connection with no database it would run, whatever the tenant.
      await assert.rejects(tenancy!.runWithTenant('never', () => tenancy!.knex().raw('select 1 + 1 as two')), UnknownTenantError);
      assert.equal(tenancy!.stats().tenants, 0, 'a handle was cached for a tenant whose database does not exist');
    }
    assert.deepEqual(await names('a'), ['a-ada', 'a-bob']);
    assert.equal(tenancy!.stats().servers!.main!.switches, 0, 'the check of a tenant that exists cost a USE');
  });

  it('negative control: the same unqualified statement on a connection left on another database reads that tenant', async () => {
    // What a pool that trusted a switched connection as "clean" would do.
    const conn = knexFactory({ client: 'mysql2', connection: { ...server, database: db('a') }, pool: { min: 1, max: 1 } });
    try {
      const [rows] = await conn.raw('select name from persons order by id');
      assert.deepEqual((rows as { name: string }[]).map((r) => r.name), ['a-ada', 'a-bob'], "meant for b, it read a's rows");
    } finally {
      await conn.destroy();
    }
  });

  it('is validated: shared only, connections with no database', () => {
    // @ts-expect-error: a 'shared' option beside knexConfig does not compile either
    assert.throws(() => createTenancy({ knexConfig: () => ({ client: 'mysql2' }), qualifyTables: true }), /qualifyTables applies to strategy 'shared' only/);
    assert.throws(
      () => open({ servers: { main: { client: 'mysql2', connection: { ...server, database: db('a') } } } }),
      /qualifyTables needs servers\.main\.connection as an object without database/,
    );
    assert.throws(() => open({ qualifyTables: 1 as unknown as boolean }), /qualifyTables must be a boolean/);
  });
});

describe('qualifyTables: the texts a shared pool remembers as refused', () => {
  const pool = () =>
    new AffinityPool({} as Knex.Client, {
      max: 1,
      perTenantMax: 1,
      acquireTimeoutMs: 1_000,
      idleTimeoutMs: 0,
      overflow: 'wait',
      inlineSwitch: false,
      maxSwitched: Infinity,
      warmDatabases: 0,
      resetSession: false,
      afterCreate: undefined,
      cleanConnections: true,
    });

  it('are bounded: the 256 refused last, none longer than 4,096 characters', async () => {
    const p = pool();
    try {
      assert.equal(p.knownRefused('select 0 from t'), false);
      for (let i = 0; i < 300; i++) p.noteQualifyRetry(`select ${i} from t`);
      assert.equal(p.knownRefused('select 299 from t'), true);
      assert.equal(p.knownRefused('select 44 from t'), true);
      assert.equal(p.knownRefused('select 43 from t'), false, 'the least recent ones are forgotten');
      // Refused again, a text becomes the most recent: it outlives those refused after it once.
      p.noteQualifyRetry('select 44 from t');
      for (let i = 300; i < 555; i++) p.noteQualifyRetry(`select ${i} from t`);
      assert.equal(p.knownRefused('select 44 from t'), true);
      assert.equal(p.knownRefused('select 45 from t'), false);
      const long = `select '${'x'.repeat(4096)}' from t`;
      p.noteQualifyRetry(long);
      assert.equal(p.knownRefused(long), false, 'a statement with its values written in is not kept');
      assert.equal(p.stats().qualifyRetries, 300 + 1 + 255 + 1);
    } finally {
      await p.destroy();
    }
  });
});

describe("a knex builder of a tenant's qualified connection, compiled on any other connection", { skip: skipMysql }, () => {
  const server = mysqlConnection();
  const admin = knexFactory({ client: 'mysql2', connection: server, pool: { min: 0, max: 1 } });
  // `a` on a database name with a dot: served with USE, on a handle that is not qualified.
  const DATABASES = ['ot_qfb_q.a', 'ot_qfb_b', 'ot_qfb_x_a'];
  const quoted = (name: string) => `\`${name.replace(/`/g, '``')}\``;
  before(async () => {
    for (const name of DATABASES) {
      await admin.raw(`drop database if exists ${quoted(name)}`);
      await admin.raw(`create database ${quoted(name)}`);
      await admin.raw(`create table ${quoted(name)}.persons (id int primary key, name varchar(60))`);
      await admin.raw(`insert into ${quoted(name)}.persons values (1, ?)`, [`${name}-ada`]);
    }
  });
  after(async () => {
    for (const name of DATABASES) await admin.raw(`drop database if exists ${quoted(name)}`);
    await admin.destroy();
  });

  it('is refused with TenantMismatchError: under a USE handle, a pool per tenant of another tenancy, a central knex', async () => {
    const shared = createTenancy({
      strategy: 'shared',
      servers: { main: { client: 'mysql2', connection: server, pool: { max: 2 } } },
      locate: (id) => ({ server: 'main', database: id === 'a' ? 'ot_qfb_q.a' : 'ot_qfb_b' }),
    });
    const perTenant = createTenancy({ knexConfig: (id) => ({ client: 'mysql2', connection: { ...server, database: `ot_qfb_x_${id}` } }) });
    const central = knexFactory({ client: 'mysql2', connection: { ...server, database: 'ot_qfb_x_a' }, pool: { min: 0, max: 1 } });
    try {
      const { names, fromModel } = await shared.runWithTenant('b', async () => ({
        names: shared.knex()('persons').select('name').where('id', 1),
        fromModel: Person.query().select('id').toKnexQuery(),
      }));
      assert.match(names.toString(), /`ot_qfb_b`\.`persons`/, "the builder names b's database");
      await shared.runWithTenant('a', async () => {
        await assert.rejects(async () => Person.query().select('name', names.as('of_b')), TenantMismatchError);
        await assert.rejects(async () => Person.query().whereIn('id', fromModel), TenantMismatchError);
      });
      await perTenant.runWithTenant('a', async () => {
        await assert.rejects(async () => Person.query().select('name', names.as('of_b')), TenantMismatchError);
        await assert.rejects(async () => perTenant.knex().raw('select name from persons where id in (?)', [fromModel]), TenantMismatchError);
      });
      await assert.rejects(async () => central('persons').whereIn('id', fromModel), TenantMismatchError);
      // Its own tenant still runs it, alone and as a subquery.
      assert.deepEqual(await shared.runWithTenant('b', () => names.clone()), [{ name: 'ot_qfb_b-ada' }]);
      assert.deepEqual(await shared.runWithTenant('b', async () => (await Person.query().select('name').whereIn('id', fromModel)).map((p) => p.name)), ['ot_qfb_b-ada']);
    } finally {
      await shared.destroy();
      await perTenant.destroy();
      await central.destroy();
    }
  });
});
