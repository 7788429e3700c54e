/**
 * A streamed query whose connection the server kills mid-stream ends with a 503-mapped
 * `TenantUnavailableError`, and its connection leaves the pool. mysql2 reports the loss on the
 * connection alone, so the stream never ended: its consumer waited forever and its pooled connection
 * stayed checked out (with the shared strategy, a slot of every tenant on that server).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import knexFactory, { type Knex } from 'knex';
import { createTenancy, TenantUnavailableError } from '../lib/index';
import { createSeededTenant, mysqlBackend, mysqlConnection, mysqlSharedBackend, skipMysql } from './helpers/databases';
import { Person } from './helpers/fixtures';

const MARK = 'ot_lost_stream_mark';

for (const backend of [mysqlBackend('lst'), mysqlSharedBackend('lsts'), mysqlSharedBackend('lstu', 3, 'use')]) {
  describe(`a stream whose connection is killed (${backend.name})`, { skip: skipMysql }, () => {
    let direct: Knex;
    let admin: Knex;

    before(async () => {
      direct = await createSeededTenant(backend, 'a');
      admin = knexFactory({ client: 'mysql2', connection: mysqlConnection(), pool: { min: 0, max: 1 } });
    });
    after(async () => {
      await direct.destroy();
      await admin.destroy();
      await backend.dropDatabase('a');
      await backend.close();
    });

    it('ends with TenantUnavailableError, and its connection leaves the pool', async () => {
      const tenancy = createTenancy({ ...backend.connectionOptions(), tenantExists: backend.databaseExists, acquireTimeoutMs: 2_000 });
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
        let killed = 0;
        for (let i = 0; i < 50 && killed === 0; i++) {
          await new Promise((r) => setTimeout(r, 50));
          const [list] = await admin.raw('select id from information_schema.processlist where info like ? and id <> connection_id()', [`%${MARK}%`]);
          for (const { id } of list as { id: number }[]) {
            await admin.raw(`kill connection ${Number(id)}`);
            killed++;
          }
        }
        assert.equal(killed, 1, 'the streaming connection was found and killed');
        let timer: NodeJS.Timeout | undefined;
        const error = await Promise.race([outcome, new Promise((r) => (timer = setTimeout(() => r('never ended'), 5_000)))]);
        clearTimeout(timer);
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
  });
}
