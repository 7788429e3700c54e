/**
 * A transaction whose connection is lost after its COMMIT was sent and before the answer came: the
 * server may have committed it. It rejects with `TransactionOutcomeUnknownError` (500, not a 503 that
 * invites a retry) and runs neither its onCommit nor its onRollback callbacks. It was reported as a
 * rollback, with the onRollback callbacks run, while the server had committed.
 *
 * A TCP proxy between the tenancy and MariaDB passes the COMMIT on, lets the server carry it out,
 * and cuts the connection without passing the answer back.
 *
 * And the cases around it: a COMMIT never sent (the connection was already gone) is a rollback; the
 * app's own `trx.commit()` followed by a throw is a commit; an SQLite COMMIT refused as busy leaves no
 * transaction open on the pooled connection.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
// @ts-expect-error: better-sqlite3 ships no types; the test uses five of its methods
import Database from 'better-sqlite3';
import knexFactory from 'knex';
import { after, before, describe, it } from 'node:test';
import type { Knex } from 'knex';
import { createTenancy, onCommit, onRollback, toHttpError, TransactionOutcomeUnknownError, type Tenancy, type TenancyOptions } from '../lib/index';
import { mysqlBackend, mysqlConnection, mysqlSharedBackend, seededTenantSuite, skipMysql, sqliteBackend, type Backend } from './helpers/databases';
import { Person } from './helpers/fixtures';

interface CommitCutter {
  port: number;
  /** The next COMMIT reaches the server; its answer does not come back, and the connection is cut. */
  arm(): void;
  /** How many COMMITs were cut. */
  cut: number;
  close(): Promise<void>;
}

function commitCutter(target: { host: string; port: number }): Promise<CommitCutter> {
  const sockets = new Set<net.Socket>();
  const commit = Buffer.from('COMMIT');
  const state = { armed: false, cut: 0 };
  const server = net.createServer((client) => {
    const upstream = net.connect(target.port, target.host);
    let swallow = false;
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => s.destroy());
    }
    client.on('data', (chunk: Buffer) => {
      // A COM_QUERY packet: 3 bytes of length, a sequence byte, 0x03, then the statement.
      if (state.armed && chunk.length > 5 && chunk[4] === 0x03 && chunk.subarray(5, 5 + commit.length).equals(commit)) {
        state.armed = false;
        state.cut++;
        swallow = true;
        upstream.write(chunk);
        // The server commits (a few ms), then the link goes down before its answer got through.
        setTimeout(() => {
          upstream.destroy();
          client.destroy();
        }, 300);
        return;
      }
      upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      if (!swallow) client.write(chunk);
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      resolve({
        port: (server.address() as net.AddressInfo).port,
        arm: () => void (state.armed = true),
        get cut() {
          return state.cut;
        },
        close: () =>
          new Promise<void>((done) => {
            for (const s of sockets) s.destroy();
            server.close(() => done());
          }),
      });
    });
  });
}

/**
 * Runs `body` in a `tenancy.transaction()` of tenant a that records its onCommit/onRollback
 * callbacks; resolves to the outcome ('resolved', or what it rejected with) and the callbacks run.
 */
async function transactionOutcome(tenancy: Tenancy, body: (trx: Knex.Transaction) => Promise<unknown>): Promise<{ outcome: unknown; ran: string[] }> {
  const ran: string[] = [];
  const outcome = await tenancy
    .runWithTenant('a', () =>
      tenancy.transaction(async (trx) => {
        onCommit(() => void ran.push('commit'));
        onRollback(() => void ran.push('rollback'));
        await body(trx);
      }),
    )
    .then(
      () => 'resolved',
      (error: unknown) => error,
    );
  return { outcome, ran };
}

/** The backend's tenancy options with every connection going through the proxy on `port`. */
function throughProxy(backend: Backend, port: number): TenancyOptions {
  if (backend.name === 'mysql') {
    return {
      knexConfig: (id: string) => {
        const config = backend.knexConfig(id);
        return { ...config, connection: { ...(config.connection as object), port }, pool: { min: 0, max: 1 } };
      },
      tenantExists: backend.databaseExists,
    };
  }
  const options = backend.connectionOptions() as { servers: Record<string, Knex.Config> };
  const main = options.servers.main!;
  return {
    ...(options as TenancyOptions),
    servers: { main: { ...main, connection: { ...(main.connection as object), port }, pool: { min: 0, max: 1 } } },
    tenantExists: backend.databaseExists,
  } as TenancyOptions;
}

for (const backend of [mysqlBackend('clt'), mysqlSharedBackend('clts'), mysqlSharedBackend('cltu', 3, 'use')]) {
  describe(`a COMMIT whose answer is lost (${backend.name})`, { skip: skipMysql }, () => {
    const direct = seededTenantSuite(backend, 'a').table;
    let cutter: CommitCutter;
    before(async () => {
      const { host, port } = mysqlConnection() as { host: string; port: number };
      cutter = await commitCutter({ host, port: Number(port) });
    });
    after(() => cutter.close());

    it('rejects with TransactionOutcomeUnknownError (500), runs neither onCommit nor onRollback; the server did commit', async () => {
      const tenancy = createTenancy(throughProxy(backend, cutter.port));
      try {
        const { outcome, ran } = await transactionOutcome(tenancy, async () => {
          await Person.query().insert({ name: 'in-doubt' });
          cutter.arm();
        });
        assert.equal(cutter.cut, 1, 'the COMMIT was cut');
        assert.ok(outcome instanceof TransactionOutcomeUnknownError, `typed: ${String(outcome)}`);
        assert.equal(outcome.tenantId, 'a');
        assert.equal((outcome.cause as { code?: string }).code, 'PROTOCOL_CONNECTION_LOST');
        const answer = toHttpError(outcome);
        assert.equal(answer?.status, 500);
        assert.equal(answer?.code, 'TENANT_TRANSACTION_OUTCOME_UNKNOWN');
        assert.match(answer?.message ?? '', /may or may not have been saved/);
        assert.equal(answer?.retryAfter, undefined, 'no invitation to retry');
        assert.deepEqual(ran, [], 'no callback ran: the outcome is not known');
        // What the server did: committed. A rollback would have been the wrong answer.
        assert.deepEqual(await direct('persons').where({ name: 'in-doubt' }).pluck('name'), ['in-doubt']);
        // The tenant is served on a new connection.
        assert.equal((await tenancy.runWithTenant('a', () => Person.query().findById(1)))?.name, 'a-ada');
      } finally {
        await tenancy.destroy({ drainTimeoutMs: 1_000 });
        await direct('persons').where({ name: 'in-doubt' }).delete();
      }
    });

    it("the app's own trx.commit() whose answer is lost, then a throw: outcome unknown too (not the app's error as a rollback)", async () => {
      const tenancy = createTenancy(throughProxy(backend, cutter.port));
      try {
        const { outcome, ran } = await transactionOutcome(tenancy, async (trx) => {
          await Person.query().insert({ name: 'app-commit-in-doubt' });
          cutter.arm();
          await trx.commit(); // knex resolves it though its COMMIT failed
          throw new Error('a step after the commit failed');
        });
        assert.ok(outcome instanceof TransactionOutcomeUnknownError, `typed: ${String(outcome)}`);
        assert.deepEqual(ran, []);
        assert.deepEqual(await direct('persons').where({ name: 'app-commit-in-doubt' }).pluck('name'), ['app-commit-in-doubt']);
      } finally {
        await tenancy.destroy({ drainTimeoutMs: 1_000 });
        await direct('persons').where({ name: 'app-commit-in-doubt' }).delete();
      }
    });

    it("knex's own transaction (tenancy.knex().transaction()) whose COMMIT is lost is answered 500 outcome unknown, not 503 retry", async () => {
      const tenancy = createTenancy(throughProxy(backend, cutter.port));
      try {
        const outcome = await tenancy
          .runWithTenant('a', () =>
            tenancy.knex().transaction(async (trx) => {
              await trx('persons').insert({ name: 'knex-trx-in-doubt' });
              cutter.arm();
            }),
          )
          .then(
            () => 'resolved',
            (error: unknown) => error,
          );
        assert.match(String(outcome), /COMMIT; - /, 'the driver error, untyped by knex');
        const answer = toHttpError(outcome);
        assert.equal(answer?.status, 500);
        assert.equal(answer?.code, 'TENANT_TRANSACTION_OUTCOME_UNKNOWN');
        assert.equal(answer?.retryAfter, undefined);
      } finally {
        await tenancy.destroy({ drainTimeoutMs: 1_000 });
        await direct('persons').where({ name: 'knex-trx-in-doubt' }).delete();
      }
    });

    it("work started in that transaction that runs later registers callbacks that never run", async () => {
      const tenancy = createTenancy(throughProxy(backend, cutter.port));
      try {
        const ran: string[] = [];
        let later!: Promise<void>;
        await tenancy
          .runWithTenant('a', () =>
            tenancy.transaction(async () => {
              later = new Promise<void>((resolve) =>
                setTimeout(() => {
                  void onCommit(() => void ran.push('commit'));
                  onRollback(() => void ran.push('rollback'));
                  resolve();
                }, 500),
              );
              cutter.arm();
            }),
          )
          .catch(() => undefined);
        await later;
        await new Promise((r) => setTimeout(r, 50));
        assert.deepEqual(ran, []);
      } finally {
        await tenancy.destroy({ drainTimeoutMs: 1_000 });
      }
    });
  });
}

for (const backend of [mysqlBackend('cln'), mysqlSharedBackend('clns'), mysqlSharedBackend('clnu', 3, 'use'), mysqlSharedBackend('clni', 3, 'inline')]) {
  describe(`a COMMIT never sent: its connection was killed before (${backend.name})`, { skip: skipMysql }, () => {
    const direct = seededTenantSuite(backend, 'a').table;
    let admin: Knex;
    before(() => {
      admin = knexFactory({ client: 'mysql2', connection: mysqlConnection(), pool: { min: 0, max: 1 } });
    });
    after(() => admin.destroy());

    it("a COMMIT that never left (Node's EPIPE, mysql2's closed state) is a rollback, never outcome unknown", async () => {
      const tenancy = createTenancy({ ...backend.connectionOptions(), tenantExists: backend.databaseExists } as TenancyOptions);
      try {
        // Which error the COMMIT gets is a race between the server's close and the COMMIT's write:
        // Node's EPIPE or mysql2's "closed state" (never sent: the server had rolled back), or a lost
        // connection after the write (the client cannot tell it from a lost answer: outcome unknown).
        const seen: Record<string, number> = {};
        for (let i = 0; i < 20; i++) {
          const { outcome, ran } = await transactionOutcome(tenancy, async () => {
            await Person.query().insert({ name: 'killed-before-commit' });
            const [[{ id }]] = (await tenancy.knex().raw('select connection_id() as id')) as [[{ id: number }]];
            await admin.raw('KILL CONNECTION ?', [id]);
          });
          assert.ok(outcome instanceof Error, `try ${i}: rejected`);
          const unknown = outcome instanceof TransactionOutcomeUnknownError;
          const driver = (unknown ? outcome.cause : outcome) as { code?: string; message: string };
          const kind = driver.code ?? (/closed state$/.test(driver.message) ? 'closed state' : driver.message);
          const key = `${unknown ? 'unknown' : 'rollback'} ${kind}`;
          seen[key] = (seen[key] ?? 0) + 1;
          if (kind === 'EPIPE' || kind === 'closed state') {
            assert.ok(!unknown, `try ${i}: a COMMIT that never left is a rollback (${kind})`);
            assert.deepEqual(ran, ['rollback'], `try ${i}`);
          } else {
            assert.ok(unknown, `try ${i}: ${kind}`);
            assert.deepEqual(ran, [], `try ${i}`);
          }
        }
        assert.ok((seen['rollback closed state'] ?? 0) + (seen['rollback EPIPE'] ?? 0) > 0, JSON.stringify(seen));
        assert.deepEqual(await direct('persons').where({ name: 'killed-before-commit' }).pluck('name'), [], 'the server rolled every one back');
      } finally {
        await tenancy.destroy({ drainTimeoutMs: 1_000 });
      }
    });
  });
}

for (const backend of [mysqlBackend('clc'), mysqlSharedBackend('clcs')]) {
  describe(`the app's own trx.commit(), then a throw (${backend.name})`, { skip: skipMysql }, () => {
    const direct = seededTenantSuite(backend, 'a').table;

    it('counts as committed: onCommit runs, onRollback does not, the transaction resolves, whether the commit is awaited and the throw comes at once or later', async () => {
      const tenancy = createTenancy({ ...backend.connectionOptions(), tenantExists: backend.databaseExists } as TenancyOptions);
      try {
        for (const form of ['awaited, throw at once', 'awaited, throw later', 'not awaited'] as const) {
          const name = `committed-then-threw-${form.replace(/\W+/g, '-')}`;
          const { outcome, ran } = await transactionOutcome(tenancy, async (trx) => {
            await Person.query().insert({ name });
            // Not awaited: knex settled the transaction (rejected, "already complete") before the COMMIT's answer.
            if (form === 'not awaited') void trx.commit();
            else await trx.commit();
            if (form === 'awaited, throw later') await new Promise((r) => setTimeout(r, 20));
            throw new Error('a step after the commit failed');
          });
          await new Promise((r) => setTimeout(r, 50));
          assert.equal(outcome, 'resolved', `${form}: ${String(outcome)}`);
          assert.deepEqual(ran, ['commit'], form);
          assert.deepEqual(await direct('persons').where({ name }).pluck('name'), [name]);
        }
      } finally {
        await tenancy.destroy({ drainTimeoutMs: 1_000 });
      }
    });
  });
}

describe('an SQLite COMMIT refused as busy (another process reads the file)', () => {
  const backend = sqliteBackend('clsq');
  const file = (backend.knexConfig('a').connection as { filename: string }).filename;
  seededTenantSuite(backend, 'a');

  it('rolls the transaction back: the pooled connection is not left in it, later writes persist and later transactions work', async () => {
    const tenancy = createTenancy({
      knexConfig: (id) => {
        const config = backend.knexConfig(id);
        return { ...config, connection: { ...(config.connection as object), options: { timeout: 100 } } } as Knex.Config;
      },
    });
    const reader = new Database(file);
    try {
      reader.exec('BEGIN');
      reader.prepare('select count(*) from persons').get(); // a shared lock: the COMMIT cannot write
      const { outcome, ran } = await transactionOutcome(tenancy, async () => void (await Person.query().insert({ name: 'busy-commit' })));
      assert.equal((outcome as { code?: string }).code, 'SQLITE_BUSY', String(outcome));
      assert.deepEqual(ran, ['rollback']);
      reader.exec('COMMIT');
      await tenancy.runWithTenant('a', () => Person.query().insert({ name: 'later-write' }));
      await tenancy.runWithTenant('a', () => tenancy.transaction(() => Person.query().insert({ name: 'later-transaction' })));
      // Another process sees them now, and can write: no transaction holds the file.
      const names = reader.prepare("select name from persons where name in ('busy-commit', 'later-write', 'later-transaction') order by name").pluck().all();
      assert.deepEqual(names, ['later-transaction', 'later-write']);
      reader.prepare("insert into persons (name) values ('other-process')").run();
    } finally {
      reader.close();
      await tenancy.destroy();
    }
    const after = new Database(file, { readonly: true });
    try {
      assert.deepEqual(after.prepare("select name from persons where name in ('later-write', 'later-transaction') order by name").pluck().all(), ['later-transaction', 'later-write'], 'kept after the pool closed');
    } finally {
      after.close();
    }
  });
});
