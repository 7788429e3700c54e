/**
 * A streamed query whose connection the server kills mid-stream ends with a 503-mapped
 * `TenantUnavailableError`, and its connection leaves the pool. mysql2 reports the loss on the
 * connection alone, so the stream never ended: its consumer waited forever and its pooled connection
 * stayed checked out (with the shared strategy, a slot of every tenant on that server).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import knexFactory, { type Knex } from 'knex';
import { Writable, pipeline } from 'node:stream';
import { createTenancy, onRollback, TenantUnavailableError, toHttpError, type Tenancy } from '../lib/index';
import type { ConnectionOptions } from '../lib/connections';
import { mysqlBackend, mysqlConnection, mysqlSharedBackend, seededTenantSuite, skipMysql, type Backend } from './helpers/databases';
import { Person } from './helpers/fixtures';
import { knexWithStatementHook } from './helpers/statement-hook';

const MARK = 'ot_lost_stream_mark';

/** The server's admin (root), to kill the tenancy's connections. */
let admin: Knex;
before(() => {
  admin = knexFactory({ client: 'mysql2', connection: mysqlConnection(), pool: { min: 0, max: 1 } });
});
after(() => admin.destroy());

/** Kills the connection (or, with `what` 'query', the statement) whose statement carries MARK; resolves to how many were killed. */
async function killMarked(admin: Knex, what: 'connection' | 'query' = 'connection'): Promise<number> {
  let killed = 0;
  for (let i = 0; i < 50 && killed === 0; i++) {
    await new Promise((r) => setTimeout(r, 50));
    const [list] = await admin.raw("select id from information_schema.processlist where info like ? and command <> 'Killed' and id <> connection_id()", [`%${MARK}%`]);
    for (const { id } of list as { id: number }[]) {
      await admin.raw(`kill ${what} ${Number(id)}`);
      killed++;
    }
  }
  return killed;
}

/** `promise`'s outcome, or 'never ended' after 5 s. */
async function within5s<T>(promise: Promise<T>): Promise<T | 'never ended'> {
  let timer: NodeJS.Timeout | undefined;
  const outcome = await Promise.race([promise, new Promise<'never ended'>((r) => (timer = setTimeout(() => r('never ended'), 5_000)))]);
  clearTimeout(timer);
  return outcome;
}

/** The tenancy's options with one connection per server or tenant: the listener test reads the one every statement runs on. */
function oneConnection(backend: Backend): ConnectionOptions {
  if (backend.name === 'mysql') return { knexConfig: (id: string) => ({ ...backend.knexConfig(id), pool: { min: 0, max: 1 } }) };
  const options = backend.connectionOptions() as ConnectionOptions & { servers: Record<string, Knex.Config> };
  return { ...options, servers: { main: { ...options.servers.main!, pool: { min: 0, max: 1 } } } };
}

for (const backend of [mysqlBackend('lst'), mysqlSharedBackend('lsts'), mysqlSharedBackend('lstu', 3, 'use'), mysqlSharedBackend('lsti', 3, 'inline')]) {
  describe(`a stream whose connection is killed (${backend.name})`, { skip: skipMysql }, () => {
    seededTenantSuite(backend, 'a');

    it('ends with TenantUnavailableError, and its connection leaves the pool', async () => {
      const tenancy = createTenancy({ ...oneConnection(backend), tenantExists: backend.databaseExists, acquireTimeoutMs: 2_000 });
      try {
        // Rows come slowly (0.2 s each): the kill lands mid-stream.
        const outcome = tenancy.runWithTenant('a', async () => {
          const knex = tenancy.knex();
          const rows: unknown[] = [];
          try {
            for await (const row of knex('persons').select('name', knex.raw(`sleep(0.2) as ${MARK}`)).stream()) rows.push(row);
            return `ended after ${rows.length} rows`;
          } catch (error) {
            return error;
          }
        });
        assert.equal(await killMarked(admin), 1, 'the streaming connection was found and killed');
        const error = await within5s(outcome);
        assert.ok(error instanceof TenantUnavailableError, String(error));
        assert.equal((error as TenantUnavailableError).tenantId, 'a');
        // The tenant is served again, and nothing stays checked out.
        assert.equal((await tenancy.runWithTenant('a', () => Person.query().findById(1)))?.name, 'a-ada');
        const stats = tenancy.stats();
        assert.equal(stats.leases, 0);
        if (stats.servers !== undefined) assert.equal(stats.servers.main!.inUse, 0);
      } finally {
        await tenancy.destroy({ drainTimeoutMs: 1_000 });
      }
    });

    it('inside a transaction too: the stream ends with TenantUnavailableError, and the transaction fails', async () => {
      const tenancy = createTenancy({ ...oneConnection(backend), tenantExists: backend.databaseExists, acquireTimeoutMs: 2_000 });
      try {
        let streamError: unknown;
        let queued: string | undefined;
        const outcome = tenancy.runWithTenant('a', () =>
          tenancy
            .transaction(async (trx) => {
              const rows: unknown[] = [];
              const streaming = (async () => {
                for await (const row of trx('persons').select('name', trx.raw(`sleep(0.2) as ${MARK}`)).stream()) rows.push(row);
              })();
              // A query queued behind the stream on the transaction's connection: it must settle too.
              const behind = Person.query().findById(1);
              const [streamed, query] = await Promise.allSettled([streaming, behind]);
              queued = query.status;
              if (streamed.status === 'rejected') {
                streamError = streamed.reason;
                throw streamed.reason;
              }
              return `ended after ${rows.length} rows`;
            })
            .then(
              (value) => `committed: ${value}`,
              () => 'failed',
            ),
        );
        assert.equal(await killMarked(admin), 1, 'the streaming connection was found and killed');
        // (knex then fails the transaction with its ROLLBACK's error, on the closed connection.)
        assert.equal(await within5s(outcome), 'failed');
        assert.ok(streamError instanceof TenantUnavailableError, String(streamError));
        // Settled, not left waiting (it may have run before the stream's statement, after a switch).
        assert.ok(queued === 'rejected' || queued === 'fulfilled', String(queued));
        assert.equal((await tenancy.runWithTenant('a', () => Person.query().findById(1)))?.name, 'a-ada');
        assert.equal(tenancy.stats().leases, 0);
      } finally {
        await tenancy.destroy({ drainTimeoutMs: 1_000 });
      }
    });

    it('a stream its consumer destroys leaves no listener on the connection the next query takes', async () => {
      const tenancy = createTenancy({ ...oneConnection(backend), tenantExists: backend.databaseExists });
      try {
        const listeners = () =>
          tenancy.runWithTenant('a', async () => {
            const client = tenancy.knex().client as unknown as { acquireConnection(): Promise<{ listenerCount(e: string): number }>; releaseConnection(c: unknown): Promise<void> };
            const conn = await client.acquireConnection();
            const count = conn.listenerCount('end') + conn.listenerCount('error');
            await client.releaseConnection(conn);
            return count;
          });
        const before = await listeners();
        for (let i = 0; i < 15; i++) {
          await tenancy.runWithTenant('a', async () => {
            // Destroyed on its first row, the others still to come.
            const stream = tenancy.knex()('persons').select('name').stream();
            await new Promise<void>((resolve) =>
              stream.once('data', () => {
                stream.destroy();
                resolve();
              }),
            );
            await new Promise((r) => setTimeout(r, 20));
          });
        }
        assert.equal(await listeners(), before);
      } finally {
        await tenancy.destroy({ drainTimeoutMs: 1_000 });
      }
    });
  });
}

for (const backend of [mysqlBackend('ltx'), mysqlSharedBackend('ltxs'), mysqlSharedBackend('ltxu', 3, 'use')]) {
  describe(`a transaction whose connection the server closed before its BEGIN (${backend.name})`, { skip: skipMysql }, () => {
    const direct = seededTenantSuite(backend, 'a').table;

    it('fails, and its callback does not run: nothing it would write is committed outside a transaction', async () => {
      // The connection dies at BEGIN: the server ends it instead (as when it had closed it already,
      // idle past wait_timeout or killed, before this process read that).
      let killNextBegin = false;
      const createKnex = knexWithStatementHook(() => (send, sql, rest) => {
        const text = typeof sql === 'string' ? sql : (sql as { sql?: unknown } | null)?.sql;
        if (killNextBegin && typeof text === 'string' && /^BEGIN\b/i.test(text)) {
          killNextBegin = false;
          return send('KILL CONNECTION CONNECTION_ID()', ...rest);
        }
        return send(sql, ...rest);
      });
      const tenancy = createTenancy({ ...oneConnection(backend), tenantExists: backend.databaseExists, createKnex });
      try {
        assert.equal((await tenancy.runWithTenant('a', () => Person.query().findById(1)))?.name, 'a-ada');
        killNextBegin = true;
        let ran = false;
        const outcome = await tenancy
          .runWithTenant('a', () =>
            tenancy.transaction(async () => {
              ran = true;
              await Person.query().insert({ name: 'in-failed-tx' });
            }),
          )
          .then(
            () => 'committed',
            (error: unknown) => error,
          );
        assert.notEqual(outcome, 'committed');
        assert.equal(ran, false, 'the callback did not run');
        assert.deepEqual(await direct('persons').where({ name: 'in-failed-tx' }).pluck('name'), []);
        // The next transaction runs on a new connection (once this process has read the close).
        await new Promise((r) => setTimeout(r, 100));
        await tenancy.runWithTenant('a', () => tenancy.transaction(() => Person.query().insert({ name: 'next' })));
        assert.deepEqual(await direct('persons').where({ name: 'next' }).pluck('name'), ['next']);
        await direct('persons').where({ name: 'next' }).delete();
      } finally {
        await tenancy.destroy({ drainTimeoutMs: 1_000 });
      }
    });
  });
}

for (const backend of [mysqlBackend('ltm'), mysqlSharedBackend('ltms'), mysqlSharedBackend('ltmu', 3, 'use')]) {
  describe(`a transaction whose connection is lost mid-way (${backend.name})`, { skip: skipMysql }, () => {
    const direct = seededTenantSuite(backend, 'a').table;

    it("rejects with its statement's error, not with the failed ROLLBACK's, answered 503; nothing is committed", async () => {
      const tenancy = createTenancy({ ...oneConnection(backend), tenantExists: backend.databaseExists });
      try {
        let rolledBack = false;
        const outcome = await tenancy
          .runWithTenant('a', () =>
            tenancy.transaction(async () => {
              onRollback(() => void (rolledBack = true));
              await Person.query().insert({ name: 'before-the-loss' });
              // The server ends the connection while the transaction is open (a KILL from an
              // operator, a failover), as this statement runs.
              await tenancy.knex().raw('KILL CONNECTION CONNECTION_ID()');
            }),
          )
          .then(
            () => 'committed',
            (error: unknown) => error,
          );
        assert.ok(outcome instanceof Error, `rejected: ${String(outcome)}`);
        assert.match(String((outcome as { sql?: string }).sql ?? (outcome as Error).message), /KILL CONNECTION/, `the killed statement's error: ${(outcome as Error).message}`);
        assert.doesNotMatch((outcome as Error).message, /ROLLBACK|closed state/);
        assert.equal((outcome as { errno?: number }).errno ?? (outcome as { nativeError?: { errno?: number } }).nativeError?.errno, 1927);
        assert.equal(toHttpError(outcome)?.status, 503);
        assert.equal(rolledBack, true, 'onRollback ran');
        assert.deepEqual(await direct('persons').where({ name: 'before-the-loss' }).pluck('name'), []);
        // The tenant is served on a new connection.
        assert.equal((await tenancy.runWithTenant('a', () => Person.query().findById(1)))?.name, 'a-ada');
      } finally {
        await tenancy.destroy({ drainTimeoutMs: 1_000 });
      }
    });

    it("a statement an operator stops with KILL QUERY is answered 503 (retry), and the connection serves on", async () => {
      const tenancy = createTenancy({ ...oneConnection(backend), tenantExists: backend.databaseExists });
      try {
        const outcome = tenancy.runWithTenant('a', () => tenancy.knex().raw(`select sleep(3) as ${MARK}`)).then(
          () => 'not stopped',
          (error: unknown) => error,
        );
        assert.equal(await killMarked(admin, 'query'), 1);
        const error = await outcome;
        assert.equal((error as { errno?: number }).errno, 1317, String(error));
        assert.equal(toHttpError(error)?.status, 503);
        assert.equal((await tenancy.runWithTenant('a', () => Person.query().findById(1)))?.name, 'a-ada');
      } finally {
        await tenancy.destroy({ drainTimeoutMs: 1_000 });
      }
    });

    it('in a savepoint too: the outer transaction rejects with the statement error', async () => {
      const tenancy = createTenancy({ ...oneConnection(backend), tenantExists: backend.databaseExists });
      try {
        const outcome = await tenancy
          .runWithTenant('a', () =>
            tenancy.transaction(async () => {
              await Person.query().insert({ name: 'outer-write' });
              await tenancy.transaction(() => tenancy.knex().raw('KILL CONNECTION CONNECTION_ID()'));
            }),
          )
          .then(
            () => 'committed',
            (error: unknown) => error,
          );
        assert.ok(outcome instanceof Error, `rejected: ${String(outcome)}`);
        assert.match((outcome as Error).message, /KILL CONNECTION/);
        assert.equal(toHttpError(outcome)?.status, 503);
        assert.deepEqual(await direct('persons').where({ name: 'outer-write' }).pluck('name'), []);
      } finally {
        await tenancy.destroy({ drainTimeoutMs: 1_000 });
      }
    });
  });
}

for (const backend of [mysqlBackend('lsq'), mysqlSharedBackend('lsqs'), mysqlSharedBackend('lsqi', 3, 'inline')]) {
  describe(`a stream destroyed while it waits for its connection (${backend.name})`, { skip: skipMysql }, () => {
    seededTenantSuite(backend, 'a');
    // The connections the tenancy has checked out for tenant a.
    const inUse = (tenancy: Tenancy) =>
      tenancy.stats().servers?.main?.inUse ?? tenancy.runWithTenant('a', () => (tenancy.knex().client as { pool: { numUsed(): number } }).pool.numUsed());

    it('gives the connection back when it gets one (its consumer hung up while it was queued)', async () => {
      const tenancy = createTenancy({ ...oneConnection(backend), tenantExists: backend.databaseExists, acquireTimeoutMs: 3_000 });
      try {
        for (let i = 0; i < 2; i++) {
          await tenancy.runWithTenant('a', async () => {
            const busy = tenancy.knex().raw('select sleep(0.3)').then(() => undefined);
            await new Promise((r) => setTimeout(r, 20));
            const queued = tenancy.knex()('persons').select('name').stream();
            const sink = new Writable({ objectMode: true, write: (_row, _encoding, done) => done() });
            const ended = new Promise((resolve) => pipeline(queued, sink, resolve));
            setTimeout(() => sink.destroy(new Error('client hung up')), 50);
            await busy;
            await ended;
          });
        }
        await new Promise((r) => setTimeout(r, 200));
        assert.equal(await inUse(tenancy), 0, 'no connection stays checked out');
        assert.equal((await tenancy.runWithTenant('a', () => Person.query().findById(1)))?.name, 'a-ada');
      } finally {
        await tenancy.destroy({ drainTimeoutMs: 1_000 });
      }
    });

    it('and whose acquire then times out: the error it can no longer be given is dropped, not thrown out of the process', async () => {
      const tenancy = createTenancy({ ...oneConnection(backend), tenantExists: backend.databaseExists, acquireTimeoutMs: 300 });
      const unhandled: unknown[] = [];
      const onUnhandled = (reason: unknown) => void unhandled.push(reason);
      process.on('unhandledRejection', onUnhandled);
      try {
        await tenancy.runWithTenant('a', async () => {
          const busy = tenancy.knex().raw('select sleep(1)').then(() => undefined);
          await new Promise((r) => setTimeout(r, 20));
          // Destroyed by its consumer, which listens to it no more.
          const queued = tenancy.knex()('persons').select('name').stream();
          setTimeout(() => queued.destroy(), 50);
          await busy;
        });
        await new Promise((r) => setTimeout(r, 100));
        assert.deepEqual(unhandled, []);
        assert.equal(await inUse(tenancy), 0);
      } finally {
        process.off('unhandledRejection', onUnhandled);
        await tenancy.destroy({ drainTimeoutMs: 1_000 });
      }
    });
  });
}
