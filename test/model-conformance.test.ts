/**
 * Conformance: every path by which objection finds its knex (../shared/DESIGN.md, section 1) goes to
 * the scope's tenant. Runs once per database (SQLite files, MariaDB) with three tenants whose rows differ.
 */
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import knexFactory, { type Knex } from 'knex';
import { fn, raw, ref } from 'objection';
import { createTenancy, runWithTenant, setDefaultTenancy, TenantContextMissingError, type Tenancy } from '../lib/index';
import { allStrategies } from './helpers/databases';
import { Audit, createSchema, Movie, Person, Pet, reseed } from './helpers/fixtures';

const TENANTS = ['t1', 't2', 't3'] as const;

for (const backend of allStrategies('conf', { inlineSwitch: true })) {
  describe(`model conformance on ${backend.name}`, { skip: backend.skip }, () => {
    let tenancy: Tenancy;
    const direct = new Map<string, Knex>();

    before(async () => {
      for (const t of TENANTS) await backend.createDatabase(t);
      tenancy = createTenancy({ ...backend.connectionOptions(), tenantExists: backend.databaseExists });
      setDefaultTenancy(tenancy);
      for (const t of TENANTS) {
        await tenancy.runWithTenant(t, () => createSchema(tenancy.knex(), t));
        direct.set(t, knexFactory(backend.knexConfig(t)));
      }
    });

    beforeEach(async () => {
      for (const t of TENANTS) {
        await reseed(direct.get(t)!, t);
      }
    });

    after(async () => {
      await tenancy.destroy();
      for (const knex of direct.values()) await knex.destroy();
      for (const t of TENANTS) await backend.dropDatabase(t);
      await backend.close();
    });

    const names = (rows: { name: string }[]) => rows.map((r) => r.name).sort();

    it('query() reads only the scope tenant, for every tenant', async () => {
      for (const t of TENANTS) {
        assert.deepEqual(names(await runWithTenant(t, () => Person.query())), [`${t}-ada`, `${t}-bob`]);
      }
    });

    it('$query() on an instance', async () => {
      const ada = await runWithTenant('t2', async () => {
        const p = await Person.query().findById(1);
        return p!.$query();
      });
      assert.equal(ada.name, 't2-ada');
    });

    it('$relatedQuery() and relatedQuery().for()', async () => {
      const [own, forId] = await runWithTenant('t3', async () => {
        const ada = await Person.query().findById(1);
        return [await ada!.$relatedQuery('pets'), await Person.relatedQuery('pets').for(2)];
      });
      assert.deepEqual(names(own), ['t3-rex']);
      assert.deepEqual(names(forId), ['t3-tom']);
    });

    it('fetchGraph and $fetchGraph', async () => {
      const [graph, instanceGraph] = await runWithTenant('t1', async () => {
        const people = await Person.fetchGraph(await Person.query().orderBy('id'), '[pets, movies]');
        const bob = await Person.query().findById(2);
        return [people, await bob!.$fetchGraph('pets')];
      });
      assert.deepEqual(names(graph[0]!.pets!), ['t1-rex']);
      assert.deepEqual(graph[0]!.movies!.map((m) => m.title), ['t1-alien']);
      assert.deepEqual(names(instanceGraph.pets!), ['t1-tom']);
    });

    it('withGraphFetched and withGraphJoined', async () => {
      const [fetched, joined] = await runWithTenant('t2', async () => [
        await Person.query().withGraphFetched('[pets, movies]').orderBy('id'),
        await Person.query().withGraphJoined('[pets, movies]').orderBy('persons.id'),
      ]);
      for (const rows of [fetched, joined]) {
        assert.deepEqual(names(rows), ['t2-ada', 't2-bob']);
        assert.deepEqual(names(rows[0]!.pets!), ['t2-rex']);
        assert.deepEqual(rows[0]!.movies!.map((m) => m.title), ['t2-alien']);
      }
    });

    it('insertGraph writes person, pets and join rows to the scope tenant only, hooks included', async () => {
      const inserted = await runWithTenant('t3', () =>
        Person.query().insertGraph({ name: 't3-new', pets: [{ name: 't3-fido' }], movies: [{ title: 't3-heat' }] } as never),
      );
      assert.equal(inserted.note, 'inserted-in:t3', '$beforeInsert queried the scope tenant');
      const t3 = direct.get('t3')!;
      const row = await t3('persons').where({ name: 't3-new' }).first();
      assert.ok(row);
      assert.equal((await t3('pets').where({ owner_id: row.id })).length, 1);
      assert.equal((await t3('persons_movies').where({ person_id: row.id })).length, 1);
      assert.deepEqual((await t3('audit')).map((a: { message: string }) => a.message), ['pet:t3-fido'], 'static afterInsert hook wrote here');
      for (const other of ['t1', 't2']) {
        const knex = direct.get(other)!;
        assert.equal((await knex('persons').where('name', 'like', '%new%')).length, 0);
        assert.equal((await knex('audit')).length, 0);
      }
    });

    it('upsertGraph updates the scope tenant', async () => {
      await runWithTenant('t1', () =>
        Person.query().upsertGraph({ id: 1, name: 't1-ada2', pets: [{ id: 1, name: 't1-rex2' }] } as never),
      );
      assert.equal((await direct.get('t1')!('pets').where({ id: 1 }).first()).name, 't1-rex2');
      assert.equal((await direct.get('t2')!('pets').where({ id: 1 }).first()).name, 't2-rex');
      assert.equal((await direct.get('t1')!('persons').where({ id: 1 }).first()).name, 't1-ada2');
    });

    it('relate and unrelate through the many-to-many join table', async () => {
      await runWithTenant('t2', async () => {
        await Person.relatedQuery('movies').for(2).relate(2);
        await Person.relatedQuery('movies').for(1).unrelate().where('movies.id', 1);
      });
      assert.deepEqual(await direct.get('t2')!('persons_movies').select('person_id', 'movie_id'), [{ person_id: 2, movie_id: 2 }]);
      for (const other of ['t1', 't3']) {
        assert.deepEqual(await direct.get(other)!('persons_movies').select('person_id', 'movie_id'), [{ person_id: 1, movie_id: 1 }]);
      }
    });

    it('knexQuery() and Model.knex()', async () => {
      const [viaKnexQuery, viaKnex] = await runWithTenant('t3', async () => [
        await Person.knexQuery().select('name').orderBy('id'),
        await Person.knex()('tenant_info').first(),
      ]);
      assert.deepEqual(names(viaKnexQuery as { name: string }[]), ['t3-ada', 't3-bob']);
      assert.equal(viaKnex.tenant_id, 't3');
    });

    it("knex events: a listener on a tenant's knex hears that tenant's statements only, its transactions' included", async () => {
      const heard = new Map<string, string[]>(TENANTS.map((t) => [t, []]));
      const listening: [Knex, (...args: unknown[]) => void][] = [];
      for (const t of TENANTS) {
        const knex = await runWithTenant(t, () => Person.knex());
        const listener = (response: unknown) => {
          if (Array.isArray(response)) heard.get(t)!.push(...response.map((row) => (row as { name?: string }).name ?? '?'));
        };
        knex.on('query-response', listener);
        listening.push([knex, listener]);
      }
      try {
        for (const t of TENANTS) await runWithTenant(t, () => Person.query().select('name').orderBy('id'));
        await runWithTenant('t2', () => Person.transaction(async () => await Person.query().select('name').where('id', 1)));
        // A copy with user params (knex's migrator makes one) takes the listeners along, once.
        await listening[0]![0].withUserParams({ copy: true })('persons').select('name').orderBy('id');
        assert.deepEqual(Object.fromEntries(heard), {
          t1: ['t1-ada', 't1-bob', 't1-ada', 't1-bob'],
          t2: ['t2-ada', 't2-bob', 't2-ada'],
          t3: ['t3-ada', 't3-bob'],
        });
      } finally {
        for (const [knex, listener] of listening) knex.off('query-response', listener);
      }
    });

    it('raw, ref and fn inside builders', async () => {
      const rows = await runWithTenant('t1', () =>
        Person.query()
          .select('name', raw('(select tenant_id from tenant_info) as tenant'), fn.upper(ref('name')).as('upper'))
          .where(ref('persons.id'), 2),
      );
      assert.deepEqual(
        rows.map((r) => ({ ...r })),
        [{ name: 't1-bob', tenant: 't1', upper: 'T1-BOB' }],
      );
    });

    it('an explicit query(knex) and bindKnex() win over the scope, relations included', async () => {
      const [explicit, bound, boundPets] = await runWithTenant('t1', async () => {
        const BoundPerson = Person.bindKnex(direct.get('t3')!);
        const ada = await BoundPerson.query().findById(1);
        return [await Person.query(direct.get('t2')!).withGraphFetched('pets'), await BoundPerson.query(), await ada!.$relatedQuery('pets')];
      });
      assert.deepEqual(names(explicit), ['t2-ada', 't2-bob']);
      assert.deepEqual(names(explicit.flatMap((p) => p.pets!)), ['t2-rex', 't2-tom']);
      assert.deepEqual(names(bound), ['t3-ada', 't3-bob']);
      assert.deepEqual(names(boundPets), ['t3-rex']);
    });

    it('a builder created in tenant A and awaited inside tenant B runs on A, hooks included', async () => {
      const builder = await runWithTenant('t1', () => ({ select: Person.query().orderBy('id'), insert: Person.query().insert({ name: 'late' }) }));
      const [rows, inserted] = await runWithTenant('t2', async () => [await builder.select, await builder.insert] as const);
      assert.deepEqual(names(rows), ['t1-ada', 't1-bob']);
      assert.equal(inserted.note, 'inserted-in:t1');
      assert.ok(await direct.get('t1')!('persons').where({ name: 'late' }).first());
      assert.equal(await direct.get('t2')!('persons').where({ name: 'late' }).first(), undefined);
    });

    it('Model.transaction(cb) opens on the scope tenant; queries without trx run inside it', async () => {
      await assert.rejects(
        runWithTenant('t2', () =>
          Person.transaction(async () => {
            await Person.query().insert({ name: 'in-trx' });
            await Pet.query().insert({ name: 'in-trx-pet', owner_id: 1 });
            const seen = await Person.query().where({ name: 'in-trx' });
            assert.equal(seen.length, 1, 'the query inside the callback sees the uncommitted row');
            throw new Error('roll back');
          }),
        ),
        /roll back/,
      );
      for (const t of TENANTS) {
        assert.equal(await direct.get(t)!('persons').where({ name: 'in-trx' }).first(), undefined, `rolled back in ${t}`);
        assert.equal((await direct.get(t)!('audit')).length, 0);
      }
      const committed = await runWithTenant('t3', () => Person.transaction(async (trx) => {
        assert.equal(Person.knex(), trx, 'Model.knex() is the transaction');
        return Person.query().insert({ name: 'committed' });
      }));
      assert.equal(committed.name, 'committed');
      assert.ok(await direct.get('t3')!('persons').where({ name: 'committed' }).first());
    });

    it('startTransaction() opens on the scope tenant', async () => {
      await runWithTenant('t1', async () => {
        const trx = await Person.startTransaction();
        try {
          assert.equal((await trx('tenant_info').first()).tenant_id, 't1');
          await Movie.query(trx).insert({ title: 'started' });
          assert.equal((await Movie.query(trx).where({ title: 'started' })).length, 1);
        } finally {
          await trx.rollback();
        }
      });
      assert.equal(await direct.get('t1')!('movies').where({ title: 'started' }).first(), undefined);
    });

    it('outside any scope: tenant queries reject with TenantContextMissingError; an explicit knex works with eager children', async () => {
      await assert.rejects(async () => Person.query(), TenantContextMissingError);
      await assert.rejects(async () => Person.query().withGraphFetched('pets'), TenantContextMissingError);
      assert.throws(() => Person.knexQuery(), TenantContextMissingError);
      await assert.rejects(Person.transaction(async () => undefined), TenantContextMissingError);
      await assert.rejects(Person.startTransaction(), TenantContextMissingError);
      assert.throws(() => tenancy.knex(), TenantContextMissingError);
      assert.equal(Person.knex(), undefined);
      const rows = await Person.query(direct.get('t2')!).withGraphFetched('[pets, movies]').orderBy('id');
      assert.deepEqual(names(rows), ['t2-ada', 't2-bob']);
      assert.deepEqual(names(rows[0]!.pets!), ['t2-rex']);
      assert.deepEqual(rows[0]!.movies!.map((m) => m.title), ['t2-alien']);
      const viaBound = await Movie.bindKnex(direct.get('t3')!).query().orderBy('id');
      assert.deepEqual(viaBound.map((m) => m.title), ['t3-alien', 't3-brazil']);
      assert.equal(await Audit.query(direct.get('t1')!).resultSize(), 0);
    });
  });
}
