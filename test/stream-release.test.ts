/**
 * knex releases a stream's connection twice (on the stream's 'close' and in its acquire's `finally`).
 * With a pool per tenant (knex's own pool, tarn) the second release gave back a connection that a
 * transaction had taken meanwhile: the next query ran inside that transaction, was acknowledged, and
 * was rolled back with it. Pool-per-tenant only, in a process of its own: the shared strategy patches
 * knex's runner for every knex of the process once it is used.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createTenancy } from '../lib/index';
import { mysqlBackend, seededTenantSuite, skipMysql } from './helpers/databases';
import { Person } from './helpers/fixtures';

const backend = mysqlBackend('srl');

describe('a stream releases its connection once (pool per tenant)', { skip: skipMysql }, () => {
  const direct = seededTenantSuite(backend, 'a').table;

  it("an acknowledged insert after a stream is never rolled back with another request's transaction", async () => {
    const tenancy = createTenancy({
      knexConfig: (id) => ({ ...backend.knexConfig(id), pool: { min: 0, max: 1 } }),
      tenantExists: backend.databaseExists,
      acquireTimeoutMs: 5_000,
    });
    try {
      const lost: string[] = [];
      for (let round = 0; round < 5; round++) {
        const streamed = tenancy.runWithTenant('a', async () => {
          let rows = 0;
          for await (const _row of tenancy.knex()('persons').select('name').stream()) rows++;
          return rows;
        });
        const rolledBack = tenancy
          .runWithTenant('a', () =>
            tenancy.transaction(async () => {
              await Person.query().insert({ name: `undone-${round}` });
              await tenancy.knex().raw('select sleep(0.3)');
              throw new Error('rolled back on purpose');
            }),
          )
          .catch(() => 'rolled back');
        await new Promise((r) => setTimeout(r, 1));
        const acknowledged = tenancy.runWithTenant('a', () => Person.query().insert({ name: `kept-${round}` }));
        const [, outcome, row] = await Promise.all([streamed, rolledBack, acknowledged]);
        assert.equal(outcome, 'rolled back');
        assert.ok(row.id > 0);
        if ((await direct('persons').where({ name: `kept-${round}` }).pluck('name')).length === 0) lost.push(`kept-${round}`);
      }
      assert.deepEqual(lost, [], 'acknowledged inserts that are not in the database');
      assert.deepEqual(await direct('persons').where('name', 'like', 'undone-%').pluck('name'), []);
    } finally {
      await tenancy.destroy({ drainTimeoutMs: 1_000 });
    }
  });
});
