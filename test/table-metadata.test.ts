/**
 * `withGraphJoined` reads each table's columns once and objection caches them per model class: the
 * first tenant's column list then served every tenant. Tenants part-way through a migration differ
 * (one has a column the other does not yet), and another tenant's list sent its columns into this
 * tenant's SQL (an unknown column) or left this tenant's own out. The cache is per tenant now.
 * Runs on SQLite files and MariaDB, per tenant and through the shared strategy.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createTenancy, type Tenancy } from '../lib/index';
import { allStrategies, createSeededTenant } from './helpers/databases';
import { Person } from './helpers/fixtures';

for (const backend of allStrategies('meta')) {
  describe(`withGraphJoined's table metadata is each tenant's own (${backend.name})`, { skip: backend.skip }, () => {
    // m1 is migrated (persons has `vip`), m2 not yet.
    before(async () => {
      for (const t of ['m1', 'm2']) {
        const knex = await createSeededTenant(backend, t);
        if (t === 'm1') {
          await knex.schema.alterTable('persons', (table) => table.boolean('vip').defaultTo(true));
        }
        await knex.destroy();
      }
    });
    after(async () => {
      for (const t of ['m1', 'm2']) await backend.dropDatabase(t);
      await backend.close();
    });

    const graph = (tenancy: Tenancy, t: string) =>
      tenancy.runWithTenant(t, async () => {
        const people = await Person.query().withGraphJoined('pets').orderBy('persons.id');
        return people.map((p) => ({ name: p.name, vip: (p as unknown as { vip?: unknown }).vip, pets: (p.pets ?? []).map((pet) => pet.name) }));
      });

    for (const order of [['m1', 'm2'], ['m2', 'm1']] as const) {
      it(`${order.join(' then ')}: each tenant's query selects its own columns`, async () => {
        const tenancy = createTenancy({ ...backend.connectionOptions(), tenantExists: backend.databaseExists });
        try {
          for (const t of order) {
            const rows = await graph(tenancy, t);
            assert.deepEqual(rows.map((r) => [r.name, r.pets]), [[`${t}-ada`, [`${t}-rex`]], [`${t}-bob`, [`${t}-tom`]]], t);
            // m1's `vip` is read (SQLite and MariaDB give 1 for true); m2 has none.
            if (t === 'm1') assert.deepEqual(rows.map((r) => Boolean(r.vip)), [true, true], 'm1 has its vip column');
            else assert.deepEqual(rows.map((r) => r.vip), [undefined, undefined]);
          }
        } finally {
          await tenancy.destroy();
        }
      });
    }

    it('a withGraphJoined builder made in a scope builds its SQL outside any scope too (toKnexQuery)', async () => {
      const tenancy = createTenancy({ ...backend.connectionOptions(), tenantExists: backend.databaseExists });
      try {
        await graph(tenancy, 'm2');
        const builder = await tenancy.runWithTenant('m2', () => ({ query: Person.query().withGraphJoined('pets') }));
        assert.match(String(builder.query.toKnexQuery().toString()), /left join/);
      } finally {
        await tenancy.destroy();
      }
    });
  });
}
