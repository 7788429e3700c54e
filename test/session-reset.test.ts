/**
 * Session state on the shared strategy's connections, on real MariaDB. A connection serves many
 * tenants one after the other; whatever a query leaves on its session (user variables, session
 * variables, temporary tables, named locks, `LAST_INSERT_ID()`) is seen by the next tenant on it
 * unless `resetSession` resets it (COM_RESET_CONNECTION) when the connection changes tenant. The
 * server's `pool.afterCreate` sets up each new connection, and again after each reset.
 *
 * Negative controls: the same sequences without `resetSession` must show the previous tenant's state,
 * so the checks are able to fail.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it } from 'node:test';
import knexFactory, { type Knex } from 'knex';
import mysql from 'mysql2/promise';
import { createTenancy, tryCurrentTenantId, TenantUnavailableError, type Tenancy, type SharedPoolOptions, type TenancyCommonOptions } from '../lib/index';
import { mysqlConnection, skipMysql } from './helpers/databases';

const TENANTS = ['a', 'b', 'c', 'd', 'e', 'f'];
const db = (t: string) => `ot_reset_${t}`;

/** The part of a mysql2 connection `pool.afterCreate` uses here. */
type MysqlConn = { query(sql: string, ...rest: unknown[]): unknown };

type Seen = { d: string; m: string; secret: string | null; tz: string; lock: number | null; lastId: number; setup: string | null };

describe('shared strategy, session state between tenants', { skip: skipMysql }, () => {
  let admin: Knex;
  let tenancy: Tenancy | undefined;
  const { database: _database, ...server } = mysqlConnection();
  void _database;
  let globalTimeZone = '';

  const open = (options: Partial<SharedPoolOptions & TenancyCommonOptions> & { max?: number; afterCreate?: (conn: MysqlConn, done: (error?: unknown) => void) => void } = {}) => {
    const { max = 1, afterCreate, ...rest } = options;
    return (tenancy = createTenancy({
      strategy: 'shared',
      servers: { main: { client: 'mysql2', connection: { ...server }, pool: afterCreate === undefined ? { max } : { max, afterCreate } } },
      locate: (id) => ({ server: 'main', database: db(id) }),
      verifyConnection: false,
      // USE switching: connections stay on their tenant's database, so the negative controls can
      // show state crossing tenants on one (qualifyTables' clean connections are tested below).
      qualifyTables: false,
      ...rest,
    }));
  };
  const raw = async <T>(sql: string, bindings: readonly Knex.RawBinding[] = []): Promise<T[]> => {
    const [rows] = await tenancy!.knex().raw(sql, bindings);
    return rows as T[];
  };
  /** Leaves state on the session: a user variable, the time zone, a temporary table, a named lock, an insert id. */
  const dirty = (t: string) =>
    tenancy!.runWithTenant(t, async () => {
      await raw("set @secret = ?, time_zone = '+05:00'", [`${t}-secret`]);
      await raw('create temporary table tmp_secret (v varchar(32))');
      await raw('insert into tmp_secret values (?)', [`${t}-row`]);
      await raw('select get_lock(?, 0) as l', [`ot_reset_lock_${t}`]);
      await raw('insert into counter () values ()');
    });
  const look = (t: string) =>
    tenancy!.runWithTenant(t, async () => {
      const [row] = await raw<Seen>(
        "select database() as d, (select tenant_id from marker) as m, @secret as secret, @@session.time_zone as tz, is_used_lock('ot_reset_lock_a') as `lock`, last_insert_id() as lastId, @setup as setup",
      );
      let tmp: string[] | string;
      try {
        // A temporary table belongs to the database it was created in: another tenant reaches it qualified.
        tmp = (await raw<{ v: string }>('select v from ??.tmp_secret', [db('a')])).map((r) => r.v);
      } catch (error) {
        tmp = (error as { code?: string }).code ?? String(error);
      }
      return { ...row!, lock: row!.lock === null ? null : Number(row!.lock), lastId: Number(row!.lastId), tmp };
    });

  before(async () => {
    admin = knexFactory({ client: 'mysql2', connection: server, pool: { min: 0, max: 2 } });
    for (const t of TENANTS) {
      await admin.raw('drop database if exists ??', [db(t)]);
      await admin.raw('create database ??', [db(t)]);
      await admin.raw('create table ??.marker (tenant_id varchar(16) not null)', [db(t)]);
      await admin.raw('insert into ??.marker values (?)', [db(t), t]);
      await admin.raw('create table ??.counter (id int auto_increment primary key)', [db(t)]);
    }
    const [rows] = await admin.raw('select @@global.time_zone as tz');
    globalTimeZone = (rows as { tz: string }[])[0]!.tz;
  });
  afterEach(async () => {
    await tenancy?.destroy();
    tenancy = undefined;
  });
  after(async () => {
    for (const t of TENANTS) await admin.raw('drop database if exists ??', [db(t)]);
    await admin.destroy();
  });

  it('negative control: without resetSession the next tenant on the connection sees the previous one\'s session', async () => {
    open();
    await dirty('a');
    const seen = await look('b');
    assert.equal(seen.d, db('b'));
    assert.equal(seen.m, 'b');
    assert.equal(seen.secret, 'a-secret');
    assert.equal(seen.tz, '+05:00');
    assert.deepEqual(seen.tmp, ['a-row'], "a's temporary table is readable from b");
    assert.notEqual(seen.lock, null, "a's named lock is still held");
    assert.equal(seen.lastId, 1, "a's insert id");
  });

  for (const inlineSwitch of [false, true]) {
    describe(inlineSwitch ? 'inlineSwitch' : 'USE round trip', () => {
      it('resetSession: the next tenant finds a clean session on its own database', async () => {
        open({ resetSession: true, inlineSwitch });
        await dirty('a');
        const seen = await look('b');
        assert.deepEqual(seen, { d: db('b'), m: 'b', secret: null, tz: globalTimeZone, lock: null, lastId: 0, setup: null, tmp: 'ER_NO_SUCH_TABLE' });
        const stats = tenancy!.stats().servers!.main!;
        assert.equal(stats.open, 1, 'one connection served both tenants');
        assert.equal(stats.resets, 1);
        // The same connection still serves a's queries, on a's database.
        const back = await look('a');
        assert.equal(back.d, db('a'));
        assert.equal(back.m, 'a');
        assert.equal(back.secret, null);
      });

      it('a tenant keeps its own session state: no reset while the connection stays with it', async () => {
        open({ resetSession: true, inlineSwitch });
        await dirty('a');
        const seen = await look('a');
        assert.equal(seen.secret, 'a-secret');
        assert.deepEqual(seen.tmp, ['a-row']);
        assert.equal(tenancy!.stats().servers!.main!.resets, 0);
      });
    });
  }

  it('under the defaults (qualifyTables), a connection with no database passes session state to the next tenant unless resetSession (negative control first)', async () => {
    const leftBy = async (resetSession: boolean) => {
      open({ qualifyTables: true, resetSession });
      // Statements that name no table run on the clean connection itself: it stays clean.
      await tenancy!.runWithTenant('a', () => raw("set @secret = 'a-secret'"));
      const [seen] = await tenancy!.runWithTenant('b', () => raw<{ secret: string | null; d: string | null }>('select @secret as secret, database() as d'));
      const stats = tenancy!.stats().servers!.main!;
      assert.equal(stats.open, 1, 'one connection served both tenants');
      await tenancy!.destroy();
      tenancy = undefined;
      return { secret: seen!.secret, resets: stats.resets };
    };
    assert.deepEqual(await leftBy(false), { secret: 'a-secret', resets: 0 }, 'negative control: without resetSession b sees a\'s variable');
    assert.deepEqual(await leftBy(true), { secret: null, resets: 1 });
  });

  it("a tenant's pending SET TRANSACTION READ ONLY makes the next tenant's transaction refuse its writes, unless resetSession (negative control first)", async () => {
    const nextWrite = async (resetSession: boolean) => {
      open({ qualifyTables: true, resetSession });
      // One-shot: it applies to the session's next transaction, whichever tenant's that is.
      await tenancy!.runWithTenant('a', () => raw('set transaction read only'));
      const outcome = await tenancy!.runWithTenant('b', () => tenancy!.transaction(() => raw('insert into counter () values ()'))).then(
        () => 'written',
        (error: { code?: string }) => error.code,
      );
      assert.equal(tenancy!.stats().servers!.main!.open, 1, 'one connection served both tenants');
      await tenancy!.destroy();
      tenancy = undefined;
      return outcome;
    };
    assert.equal(await nextWrite(false), 'ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION', 'negative control');
    assert.equal(await nextWrite(true), 'written');
  });

  it('a transaction of the next tenant starts on a reset session', async () => {
    open({ resetSession: true, inlineSwitch: true });
    await tenancy!.runWithTenant('a', () =>
      tenancy!.knex().transaction(async (trx) => {
        await trx.raw("set @secret = 'a-in-trx'");
        await trx.raw('create temporary table tmp_secret (v varchar(32))');
        await trx.raw("insert into tmp_secret values ('a-row')");
      }),
    );
    const seen = await tenancy!.runWithTenant('b', () =>
      tenancy!.knex().transaction(async (trx) => {
        const [rows] = await trx.raw('select database() as d, @secret as secret');
        const row = (rows as { d: string; secret: string | null }[])[0]!;
        const tmp = await trx.raw('select v from ??.tmp_secret', [db('a')]).then(
          () => 'readable',
          (error: { code?: string }) => error.code,
        );
        return { ...row, tmp };
      }),
    );
    assert.deepEqual(seen, { d: db('b'), secret: null, tmp: 'ER_NO_SUCH_TABLE' });
  });

  it('pool.afterCreate sets up each new connection, outside any tenant scope, and again after each reset', async () => {
    const scopes: (string | undefined)[] = [];
    open({
      resetSession: true,
      afterCreate: (conn, done) => {
        scopes.push(tryCurrentTenantId());
        conn.query("set time_zone = '+03:00', @setup = 'yes'", (error: unknown) => done(error));
      },
    });
    const first = await look('a');
    assert.equal(first.tz, '+03:00');
    assert.equal(first.setup, 'yes');
    await dirty('a');
    const seen = await look('b');
    assert.equal(seen.tz, '+03:00', 'afterCreate ran again after the reset');
    assert.equal(seen.setup, 'yes');
    assert.equal(seen.secret, null);
    assert.deepEqual(scopes, [undefined, undefined], 'once for the new connection, once after the reset; never in a tenant scope');
  });

  it('pool.afterCreate runs without resetSession too; when it fails the query fails with 503 and no connection is kept', async () => {
    let zone = '+03:00';
    open({ afterCreate: (conn, done) => conn.query('set time_zone = ?', [zone], (error: unknown) => done(error)) });
    assert.equal((await look('a')).tz, '+03:00');
    await tenancy!.destroy();
    zone = 'Not/AZone';
    open({ afterCreate: (conn, done) => conn.query('set time_zone = ?', [zone], (error: unknown) => done(error)) });
    await assert.rejects(look('a'), (error: unknown) => {
      assert.ok(error instanceof TenantUnavailableError);
      assert.equal(error.statusCode, 503);
      assert.match(String((error.cause as { message?: string }).message), /time zone/i);
      return true;
    });
    const stats = tenancy!.stats().servers!.main!;
    assert.equal(stats.open, 0);
    assert.equal(stats.inUse, 0);
  });

  it('a connection whose reset fails is closed, the tenant gets 503, and the next query runs on a fresh, clean connection', async () => {
    let zone = '+03:00';
    open({ resetSession: true, afterCreate: (conn, done) => conn.query('set time_zone = ?', [zone], (error: unknown) => done(error)) });
    await dirty('a');
    zone = 'Not/AZone';
    await assert.rejects(look('b'), (error: unknown) => error instanceof TenantUnavailableError && error.statusCode === 503);
    let stats = tenancy!.stats().servers!.main!;
    assert.equal(stats.open, 0, 'the connection that failed its reset is closed');
    assert.equal(stats.destroyed, 1);
    zone = '+04:00';
    const seen = await look('b');
    assert.equal(seen.d, db('b'));
    assert.equal(seen.secret, null);
    assert.equal(seen.tz, '+04:00');
    stats = tenancy!.stats().servers!.main!;
    assert.equal(stats.open, 1);
    assert.equal(stats.inUse, 0);
  });

  /**
   * Many tenants through two connections, every query first reading the user variable `@owner`
   * (null or its own tenant) and then claiming it. Without resetSession (the negative control) some
   * query finds another tenant's value.
   */
  const claimOwners = async (rounds: number): Promise<{ foreign: number; total: number }> => {
    let foreign = 0;
    let total = 0;
    // 12 workers, each going through the tenants in its own order, one scope at a time.
    await Promise.all(
      Array.from({ length: 12 }, async (_, w) => {
        for (let i = 0; i < rounds / 12; i++) {
          const t = TENANTS[(w * 5 + i * 7) % TENANTS.length]!;
          await tenancy!.runWithTenant(t, async () => {
            const [row] = await raw<{ owner: string | null; m: string }>('select @owner as owner, (select tenant_id from marker) as m');
            total++;
            if (row!.m !== t) throw new Error(`tenant ${t} read ${row!.m}'s marker`);
            if (row!.owner !== null && row!.owner !== t) foreign++;
            await raw('set @owner = ?', [t]);
          });
        }
      }),
    );
    return { foreign, total };
  };

  it('under concurrent load no tenant sees another tenant\'s user variable (negative control: without resetSession it does)', async () => {
    open({ max: 2 });
    const control = await claimOwners(240);
    console.log(`# negative control: ${control.foreign} of ${control.total} queries saw another tenant's @owner`);
    assert.ok(control.foreign > 0, `without resetSession, queries should see another tenant's @owner (saw ${control.foreign} of ${control.total})`);
    await tenancy!.destroy();
    for (const inlineSwitch of [false, true]) {
      open({ max: 2, resetSession: true, inlineSwitch });
      const result = await claimOwners(240);
      assert.equal(result.total, 240);
      assert.equal(result.foreign, 0);
      assert.ok(tenancy!.stats().servers!.main!.resets > 0);
      await tenancy!.destroy();
    }
  });

  describe('a transaction left open on a shared connection', () => {
    const markers = async (t: string) => (await admin.withSchema(db(t)).from('marker').pluck('tenant_id')) as string[];
    const cleanMarkers = async () => {
      for (const t of ['a', 'b']) await admin.withSchema(db(t)).from('marker').whereNot('tenant_id', t).delete();
    };
    // One raw string (inlineSwitch turns on multipleStatements): a pooled connection could not be
    // relied on to keep a transaction across two statements anyway.
    const leaveOpen = () => tenancy!.runWithTenant('a', () => raw("begin; insert into marker values ('a-uncommitted')"));
    const writeB = () => tenancy!.runWithTenant('b', () => raw("insert into marker values ('b-row')"));

    it('negative control: on one connection, the next tenant\'s write lands in the open transaction, uncommitted', async () => {
      await cleanMarkers();
      const conn = await mysql.createConnection({ ...server });
      try {
        await conn.query(`use ${db('a')}`);
        await conn.query('begin');
        await conn.query("insert into marker values ('a-uncommitted')");
        await conn.query(`use ${db('b')}`);
        await conn.query("insert into marker values ('b-row')");
        assert.deepEqual(await markers('b'), ['b'], "b's acknowledged write is not committed: it is in a's transaction");
      } finally {
        await conn.end();
      }
      assert.deepEqual(await markers('a'), ['a']);
      assert.deepEqual(await markers('b'), ['b']);
    });

    for (const resetSession of [false, true]) {
      it(`the connection is closed, the transaction rolled back, and the next tenant writes on its own${resetSession ? ' (resetSession)' : ''}`, async () => {
        await cleanMarkers();
        const warnings: string[] = [];
        const onWarning = (warning: Error) => {
          if (warning.name === 'TenantOpenTransactionWarning') warnings.push(warning.message);
        };
        process.on('warning', onWarning);
        try {
          open({ resetSession, inlineSwitch: true });
          await leaveOpen();
          await writeB();
          assert.deepEqual((await markers('b')).sort(), ['b', 'b-row'], "b's write is committed");
          assert.deepEqual(await markers('a'), ['a'], "a's uncommitted insert was rolled back");
          const stats = tenancy!.stats().servers!.main!;
          assert.equal(stats.openTransactionsClosed, 1);
          assert.equal(stats.destroyed, 1);
          await new Promise((resolve) => setImmediate(resolve));
          assert.equal(warnings.length, 1);
          assert.match(warnings[0]!, /tenant "a".*inside a transaction/);
        } finally {
          process.off('warning', onWarning);
        }
      });
    }

    for (const mode of [{}, { qualifyTables: true }, { inlineSwitch: true }] as const) {
      it(`a stored procedure that starts a transaction and fails (its error carries no status): the connection is closed, the next tenant writes on its own (${JSON.stringify(mode)})`, async () => {
        await cleanMarkers();
        await admin.raw(`create or replace procedure \`${db('a')}\`.fails_in_transaction() begin start transaction; insert into marker values ('a-in-procedure'); signal sqlstate '45000' set message_text = 'failed half-way'; end`);
        // With a comment before it too (query tags, sqlcommenter): it was not recognised then.
        for (const call of ['call fails_in_transaction()', '/* tag */ call fails_in_transaction()', '-- tag\nCALL fails_in_transaction()']) {
          await cleanMarkers();
          open(mode);
          await assert.rejects(tenancy!.runWithTenant('a', () => raw(call)), /failed half-way/);
          // Before: b's insert joined a's open transaction (acknowledged, then lost), or b's BEGIN committed a's half-done work.
          await writeB();
          await tenancy!.runWithTenant('b', () => tenancy!.transaction(() => raw("insert into marker values ('b-in-transaction')")));
          assert.deepEqual((await markers('b')).sort(), ['b', 'b-in-transaction', 'b-row'], call);
          assert.deepEqual(await markers('a'), ['a'], `${call}: a's half-done write was rolled back, never committed by b`);
          assert.equal(tenancy!.stats().servers!.main!.destroyed, 1, `${call}: the connection was closed`);
          await tenancy!.destroy();
          tenancy = undefined;
        }
      });
    }

    it('a connection whose autocommit was turned off is closed too: later writes, its own or the next tenant\'s, commit', async () => {
      await cleanMarkers();
      open();
      await tenancy!.runWithTenant('a', async () => {
        await raw('set autocommit = 0');
        await raw("insert into marker values ('a-later')");
      });
      await writeB();
      assert.deepEqual((await markers('a')).sort(), ['a', 'a-later']);
      assert.deepEqual((await markers('b')).sort(), ['b', 'b-row']);
      const stats = tenancy!.stats().servers!.main!;
      assert.equal(stats.openTransactionsClosed, 1);
      assert.equal(stats.created, 2);
    });

    it('knex transactions, savepoints and rollbacks never trip it, nor does a server with autocommit off', async () => {
      await cleanMarkers();
      open({ inlineSwitch: true });
      for (const t of ['a', 'b', 'a']) {
        await tenancy!.runWithTenant(t, () =>
          tenancy!.knex().transaction(async (trx) => {
            await trx.raw('select 1');
            await trx.transaction(async (inner) => {
              await inner.raw('select 2');
              throw new Error('roll back the savepoint');
            }).catch(() => undefined);
          }),
        );
        await assert.rejects(tenancy!.runWithTenant(t, () => tenancy!.knex().transaction(async () => {
          throw new Error('roll back');
        })));
      }
      let stats = tenancy!.stats().servers!.main!;
      assert.equal(stats.openTransactionsClosed, 0);
      assert.equal(stats.destroyed, 0);
      await tenancy!.destroy();
      open({ afterCreate: (conn, done) => conn.query('set autocommit = 0', (error: unknown) => done(error)) });
      for (const t of ['a', 'b', 'a', 'b']) assert.equal((await look(t)).m, t);
      stats = tenancy!.stats().servers!.main!;
      assert.equal(stats.openTransactionsClosed, 0, 'with autocommit off every statement opens a transaction: not a leftover');
      assert.equal(stats.created, 1);
    });
  });

  describe('a database changed by the application itself (a raw USE)', () => {
    const marker = (t: string) => tenancy!.runWithTenant(t, async () => (await raw<{ d: string; m: string }>('select database() as d, (select tenant_id from marker) as m'))[0]!);

    for (const inlineSwitch of [false, true]) {
      it(`the pool follows the connection to the database it was moved to${inlineSwitch ? ' (inlineSwitch)' : ''}`, async () => {
        open({ inlineSwitch });
        assert.equal((await marker('a')).m, 'a');
        // Tenant a's code moves its connection to b's database (a bug, or a report across databases).
        await tenancy!.runWithTenant('a', () => raw(`use ${db('b')}`));
        const before = tenancy!.stats().servers!.main!;
        // Without tracking, the pool would believe the connection still on a's database: a would read b.
        assert.deepEqual(await marker('a'), { d: db('a'), m: 'a' });
        assert.deepEqual(await marker('b'), { d: db('b'), m: 'b' });
        const after = tenancy!.stats().servers!.main!;
        assert.equal(after.open, 1);
        assert.equal(after.switches - before.switches, 2, 'a switched back to its database, then b switched again');
      });
    }

    it('in a batch, the last USE counts (inlineSwitch)', async () => {
      open({ inlineSwitch: true });
      assert.equal((await marker('a')).m, 'a');
      await tenancy!.runWithTenant('a', () => raw(`select 1; use ${db('c')}; select 2`));
      const hits = tenancy!.stats().servers!.main!.affinityHits;
      assert.deepEqual(await marker('c'), { d: db('c'), m: 'c' });
      assert.equal(tenancy!.stats().servers!.main!.affinityHits - hits, 1, "c's query found the connection already on c's database");
      assert.deepEqual(await marker('a'), { d: db('a'), m: 'a' });
    });

    it('a row with a column named stateChanges is not mistaken for a database change', async () => {
      open();
      assert.equal((await marker('a')).m, 'a');
      // The row carries { schema: <b's database> } as an object, as a JSON column parsed by typeCast would.
      const [rows] = await tenancy!.runWithTenant('a', () =>
        tenancy!.knex().raw(`select json_object('schema', ?) as stateChanges`, [db('b')]).options({
          typeCast: (field: { string(): string | null }, next: () => unknown) => JSON.parse(field.string() ?? 'null') ?? next(),
        }),
      );
      assert.deepEqual((rows as { stateChanges: unknown }[])[0]!.stateChanges, { schema: db('b') });
      // Mistaken for a USE, the pool would believe the connection on b's database and skip b's switch.
      assert.deepEqual(await marker('b'), { d: db('b'), m: 'b' });
    });
  });

  it("resetSession: a tenant's SET NAMES does not change how the next tenant's text is sent (it was encoded latin1, read utf8mb4: corrupted)", async () => {
    await admin.raw('create table if not exists ??.texts (v varchar(32) character set utf8mb4)', [db('b')]);
    await admin.raw('delete from ??.texts', [db('b')]);
    for (const mode of [{ resetSession: true }, { resetSession: true, inlineSwitch: true }, { resetSession: true, qualifyTables: true }] as const) {
      open(mode);
      await tenancy!.runWithTenant('a', () => raw('set names latin1'));
      await tenancy!.runWithTenant('b', () => raw('insert into texts values (?)', ['b-é€✓']));
      const [charset] = await tenancy!.runWithTenant('b', () => raw<{ c: string }>('select @@character_set_client as c'));
      assert.equal(charset!.c, 'utf8mb4', JSON.stringify(mode));
      await tenancy!.destroy();
      tenancy = undefined;
    }
    assert.deepEqual(await admin.withSchema(db('b')).from('texts').pluck('v'), ['b-é€✓', 'b-é€✓', 'b-é€✓']);
  });

  it("a tenant that turns session_track_schema off and moves its connection with USE: the next tenant's raw SQL still reads its own database", async () => {
    for (const mode of [{ qualifyTables: true }, { qualifyTables: true, resetSession: true }, {}] as const) {
      open(mode);
      await tenancy!.runWithTenant('a', async () => {
        await raw('set session session_track_schema = off');
        await raw(`use ${db('a')}`);
      });
      // Before (qualifyTables): the pool still took the connection for one with no database, and b read a's marker.
      const [row] = await tenancy!.runWithTenant('b', () => raw<{ m: string }>('select tenant_id as m from marker'));
      assert.equal(row!.m, 'b', JSON.stringify(mode));
      await tenancy!.destroy();
      tenancy = undefined;
    }
  });

  it('resetSession is validated and applies to the shared strategy only', () => {
    // @ts-expect-error: a 'shared' option beside knexConfig does not compile either
    assert.throws(() => createTenancy({ knexConfig: () => ({ client: 'mysql2' }), resetSession: true }), /resetSession applies to strategy 'shared' only/);
    assert.throws(() => open({ resetSession: 'yes' as unknown as boolean }), /resetSession must be a boolean/);
    // A driver without connection.reset() (mysql2 before 3.22): refused when the tenancy is created.
    const oldDriver = (config: Knex.Config) => {
      const knex = knexFactory(config);
      (knex.client as { driver: unknown }).driver = { Connection: class {} };
      return knex;
    };
    assert.throws(() => open({ resetSession: true, createKnex: oldDriver }), /resetSession needs mysql2 3\.22 or later .*servers\.main/);
    open({ resetSession: false, createKnex: oldDriver });
  });
});
