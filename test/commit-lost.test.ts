/**
 * A transaction whose connection is lost after its COMMIT was sent and before the answer came: the
 * server may have committed it. It rejects with `TransactionOutcomeUnknownError` (500, not a 503 that
 * invites a retry) and runs neither its onCommit nor its onRollback callbacks. It was reported as a
 * rollback, with the onRollback callbacks run, while the server had committed.
 *
 * A TCP proxy between the tenancy and MariaDB passes the COMMIT on, lets the server carry it out,
 * and cuts the connection without passing the answer back.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { Knex } from 'knex';
import { createTenancy, onCommit, onRollback, toHttpError, TransactionOutcomeUnknownError, type TenancyOptions } from '../lib/index';
import { mysqlBackend, mysqlConnection, mysqlSharedBackend, seededTenantSuite, skipMysql, type Backend } from './helpers/databases';
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
        const ran: string[] = [];
        const outcome = await tenancy
          .runWithTenant('a', () =>
            tenancy.transaction(async () => {
              onCommit(() => void ran.push('commit'));
              onRollback(() => void ran.push('rollback'));
              await Person.query().insert({ name: 'in-doubt' });
              cutter.arm();
            }),
          )
          .then(
            () => 'resolved',
            (error: unknown) => error,
          );
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
