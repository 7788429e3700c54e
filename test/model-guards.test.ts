/**
 * The model's guards where objection hands one query's connection to another: child queries across
 * central and tenant models (childQueryOf), custom query builders, the instance guard checked where
 * the query runs, subqueries built in another tenant, and instances of another tenant given to
 * writes. Runs once per database (SQLite files, MariaDB per tenant and through the shared strategy).
 */
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import knexFactory, { type Knex } from 'knex';
import { Model, QueryBuilder, transaction as objectionTransaction, type RelationMappings } from 'objection';
import {
  centralModel,
  createTenancy,
  instanceTenantId,
  runWithTenant,
  setDefaultTenancy,
  TenantContextMissingError,
  TenantMismatchError,
  TenantModel,
  type Tenancy,
} from '../lib/index';
import { allStrategies } from './helpers/databases';
import { createSchema, Movie, Person, Pet, reseed } from './helpers/fixtures';

const TENANTS = ['g1', 'g2'] as const;
let catalog: Knex;

/** Central reference rows (`central-<id>`); every tenant database has a `countries` table too (`<t>-country-<id>`). */
async function createCountries(knex: Knex, prefix: string): Promise<void> {
  await knex.schema.dropTableIfExists('countries');
  await knex.schema.createTable('countries', (t) => {
    t.integer('id').primary();
    t.string('name').notNullable();
  });
  await knex('countries').insert([{ id: 1, name: `${prefix}-1` }, { id: 2, name: `${prefix}-2` }]);
}

/** A central model on objection's own Model. Person `n` lives in country `n` (joined on the ids). */
class Country extends centralModel(Model, () => catalog) {
  static override tableName = 'countries';
  declare id: number;
  declare name: string;
  declare people?: Citizen[];

  static override get relationMappings(): RelationMappings {
    return { people: { relation: Model.HasManyRelation, modelClass: Citizen, join: { from: 'countries.id', to: 'persons.id' } } };
  }
}

/** A central model on a tenant-aware base. */
class Region extends centralModel(TenantModel, () => catalog) {
  static override tableName = 'countries';
  declare id: number;
  declare name: string;
  declare people?: Citizen[];

  static override get relationMappings(): RelationMappings {
    return { people: { relation: Model.HasManyRelation, modelClass: Citizen, join: { from: 'countries.id', to: 'persons.id' } } };
  }
}

class Citizen extends TenantModel {
  static override tableName = 'persons';
  declare id: number;
  declare name: string;
  declare country?: Country;
  declare region?: Region;

  static override get relationMappings(): RelationMappings {
    return {
      country: { relation: Model.BelongsToOneRelation, modelClass: Country, join: { from: 'persons.id', to: 'countries.id' } },
      region: { relation: Model.BelongsToOneRelation, modelClass: Region, join: { from: 'persons.id', to: 'countries.id' } },
    };
  }
}

/** objection's documented custom builder, on objection's QueryBuilder: drops the tenant builder. */
class PlainQueryBuilder<M extends Model, R = M[]> extends QueryBuilder<M, R> {}

class PlainBuilderPerson extends TenantModel {
  static override tableName = 'persons';
  static override QueryBuilder = PlainQueryBuilder;
}

/** The same, on the tenant builder. */
class NamedQueryBuilder<M extends Model, R = M[]> extends TenantModel.QueryBuilder<M, R> {
  named(name: string): this {
    return this.where('name', name);
  }
}

class NamedPerson extends TenantModel {
  static override tableName = 'persons';
  static override QueryBuilder = NamedQueryBuilder;
  declare id: number;
  declare name: string;
}

const named = (modelClass: typeof NamedPerson, name: string) => (modelClass.query() as unknown as NamedQueryBuilder<NamedPerson>).named(name);

for (const backend of allStrategies('guard')) {
  describe(`model guards on ${backend.name}`, { skip: backend.skip }, () => {
    let tenancy: Tenancy;
    const direct = new Map<string, Knex>();

    before(async () => {
      await backend.createDatabase('catalog');
      catalog = knexFactory(backend.knexConfig('catalog'));
      await createCountries(catalog, 'central');
      for (const t of TENANTS) await backend.createDatabase(t);
      tenancy = createTenancy({ ...backend.connectionOptions(), tenantExists: async (id) => id !== 'catalog' && (await backend.databaseExists(id)) });
      setDefaultTenancy(tenancy);
      for (const t of TENANTS) {
        await tenancy.runWithTenant(t, async () => {
          await createSchema(tenancy.knex(), t);
          await createCountries(tenancy.knex(), `${t}-country`);
        });
        direct.set(t, knexFactory(backend.knexConfig(t)));
      }
    });

    beforeEach(async () => {
      for (const t of TENANTS) await reseed(direct.get(t)!, t);
    });

    after(async () => {
      await tenancy.destroy();
      for (const knex of direct.values()) await knex.destroy();
      await catalog.destroy();
      for (const t of TENANTS) await backend.dropDatabase(t);
      await backend.dropDatabase('catalog');
      await backend.close();
    });

    const names = (rows: { name: string }[]) => rows.map((r) => r.name).sort();
    const personNames = async (t: string) => names(await direct.get(t)!('persons'));

    describe('child queries across central and tenant models', () => {
      it('a central relation of a tenant query reads the central database, in scopes and their transactions', async () => {
        for (const relation of ['country', 'region'] as const) {
          const [plain, inTrx] = await runWithTenant('g1', async () => [
            await Citizen.query().withGraphFetched(relation).orderBy('id'),
            await tenancy.transaction(() => Citizen.query().withGraphFetched(relation).orderBy('id')),
          ]);
          for (const rows of [plain, inTrx]) {
            assert.deepEqual(names(rows), ['g1-ada', 'g1-bob']);
            assert.deepEqual(rows.map((r) => r[relation]!.name), ['central-1', 'central-2'], `${relation} from the central database`);
          }
        }
      });

      it('$relatedQuery and fetchGraph from a tenant instance to a central relation read the central database', async () => {
        const [related, graph] = await runWithTenant('g2', async () => {
          const bob = await Citizen.query().findById(2);
          return [await bob!.$relatedQuery('country'), await bob!.$fetchGraph('region')];
        });
        assert.equal(related!.name, 'central-2');
        assert.equal(graph.region!.name, 'central-2');
      });

      it("a tenant relation of a central query runs on the scope's tenant (its transaction), and fails closed outside any scope", async () => {
        for (const Central of [Country, Region]) {
          await assert.rejects(async () => Central.query().withGraphFetched('people'), TenantContextMissingError, `${Central.name} outside any scope`);
          const countries = await runWithTenant('g2', () => Central.query().withGraphFetched('people').orderBy('id'));
          assert.deepEqual(countries.map((c) => c.name), ['central-1', 'central-2']);
          assert.deepEqual(countries.map((c) => names(c.people!)), [['g2-ada'], ['g2-bob']]);
          const seen = await runWithTenant('g1', () =>
            tenancy.transaction(async () => {
              await direct.get('g1')!('persons').where('id', 2).first(); // another connection: not in the transaction
              await Citizen.query().patch({ name: 'g1-bob-in-trx' }).where('id', 2);
              return Central.query().findById(2).withGraphFetched('people');
            }),
          );
          assert.deepEqual(names(seen!.people!), ['g1-bob-in-trx'], 'the child query ran inside the scope transaction');
          await direct.get('g1')!('persons').where('id', 2).update({ name: 'g1-bob' });
        }
      });

      it('a tenant query nested under a central one under a tenant one stays on the tenant', async () => {
        const rows = await runWithTenant('g1', () => Citizen.query().withGraphFetched('country.people').orderBy('id'));
        assert.deepEqual(rows.map((r) => r.country!.name), ['central-1', 'central-2']);
        assert.deepEqual(rows.map((r) => names(r.country!.people!)), [['g1-ada'], ['g1-bob']]);
      });

      it('insertGraph writes central nodes to the central database and tenant nodes to the tenant', async () => {
        try {
          await runWithTenant('g1', async () => {
            await Citizen.query().insertGraph({ id: 3, name: 'g1-carol', country: { id: 3, name: 'central-3' } } as never);
            await Country.query().insertGraph({ id: 4, name: 'central-4', people: [{ name: 'g1-dan' }] } as never);
          });
          assert.deepEqual(names(await catalog('countries').whereIn('id', [3, 4])), ['central-3', 'central-4']);
          assert.deepEqual(await direct.get('g1')!('countries').whereIn('id', [3, 4]), []);
          assert.deepEqual(await personNames('g1'), ['g1-ada', 'g1-bob', 'g1-carol', 'g1-dan']);
          assert.deepEqual(await personNames('g2'), ['g2-ada', 'g2-bob']);
        } finally {
          await catalog('countries').whereIn('id', [3, 4]).delete();
          await direct.get('g1')!('countries').whereIn('id', [3, 4]).delete();
        }
      });

      it('a join across central and tenant models fails with a clear error instead of reading one database', async () => {
        await runWithTenant('g1', async () => {
          await assert.rejects(async () => Citizen.query().withGraphJoined('country'), /cannot join .* another database/);
          await assert.rejects(async () => Citizen.query().withGraphJoined('region'), /cannot join .* another database/);
          await assert.rejects(async () => Citizen.query().joinRelated('country'), /cannot join .* another database/);
          await assert.rejects(async () => Country.query().withGraphJoined('people'), /cannot join .* another database/);
          await assert.rejects(async () => Region.query().joinRelated('people'), /cannot join .* another database/);
          // Joins between tenant models are untouched.
          assert.deepEqual(names(await Person.query().joinRelated('pets').where('pets.name', 'g1-rex')), ['g1-ada']);
        });
      });

      it('tenant children of tenant parents keep the parent knex (explicit knex, bindKnex)', async () => {
        const [explicit, bound] = await runWithTenant('g1', async () => [
          await Person.query(direct.get('g2')!).withGraphFetched('pets').orderBy('id'),
          await Person.bindKnex(direct.get('g2')!).query().withGraphFetched('pets').orderBy('id'),
        ]);
        for (const rows of [explicit, bound]) assert.deepEqual(names(rows.flatMap((p) => p.pets!)), ['g2-rex', 'g2-tom']);
      });
    });

    describe('custom query builders', () => {
      it("a model whose QueryBuilder does not extend TenantModel.QueryBuilder throws a TypeError that says so", async () => {
        assert.throws(() => PlainBuilderPerson.query(), (e: unknown) => e instanceof TypeError && /TenantModel\.QueryBuilder/.test(e.message));
        await runWithTenant('g1', () => assert.throws(() => PlainBuilderPerson.query(), TypeError));
      });

      it('a builder extending TenantModel.QueryBuilder keeps the scope and the guards', async () => {
        const [built, bob] = await runWithTenant('g1', async () => [{ q: named(NamedPerson, 'g1-bob') }, await NamedPerson.query().findById(2)] as const);
        assert.deepEqual(names(await runWithTenant('g2', () => built.q)), ['g1-bob'], 'built in g1, awaited in g2: runs in g1');
        await assert.rejects(async () => named(NamedPerson, 'g1-bob'), TenantContextMissingError);
        await assert.rejects(runWithTenant('g2', async () => bob!.$query()), TenantMismatchError);
      });
    });

    describe('central relations of a bound tenant class', () => {
      for (const [form, bound] of [
        ['bindKnex', (knex: Knex) => Citizen.bindKnex(knex)],
        ['bindTransaction', (knex: Knex) => Citizen.bindTransaction(knex as Knex.Transaction)],
      ] as const) {
        it(`${form} to the tenant's connection: the central relation still reads the central database`, async () => {
          const countries = await runWithTenant('g1', async () => {
            const Bound = bound(tenancy.knex());
            const rows = await Bound.query().withGraphFetched('[country, region]').orderBy('id');
            const ada = rows[0]!;
            return [...rows.map((r) => `${r.country?.name}/${r.region?.name}`), (await ada.$relatedQuery('country'))?.name];
          });
          assert.deepEqual(countries, ['central-1/central-1', 'central-2/central-2', 'central-1']);
        });
      }

      it('objection.transaction(Citizen, fn): the central relation reads the central database, the tenant rows the transaction', async () => {
        const seen = await runWithTenant('g1', () =>
          objectionTransaction(Citizen, async (BoundCitizen) => {
            const rows = await BoundCitizen.query().withGraphFetched('country').orderBy('id');
            return rows.map((r) => `${r.name}@${r.country?.name}`);
          }),
        );
        assert.deepEqual(seen, ['g1-ada@central-1', 'g1-bob@central-2']);
      });
    });

    describe('the instance guard checks the scope the query runs in', () => {
      it('$query().patch() built outside any scope and awaited in another tenant', async () => {
        const adaOfG2 = await runWithTenant('g2', () => Person.query().findById(1));
        const patch = adaOfG2!.$query().patch({ name: 'hacked' });
        await assert.rejects(runWithTenant('g1', () => patch), TenantMismatchError);
        assert.deepEqual(await personNames('g1'), ['g1-ada', 'g1-bob']);
        // In its own tenant it runs.
        await runWithTenant('g2', () => patch);
        assert.deepEqual(await personNames('g2'), ['g2-bob', 'hacked']);
      });

      it('relatedQuery built in one tenant, for() given another tenant\'s instance in a second', async () => {
        const built = await runWithTenant('g1', () => ({ q: Person.relatedQuery('pets') }));
        const bobOfG2 = await runWithTenant('g2', () => Person.query().findById(2));
        const query = await runWithTenant('g2', () => ({ q: built.q.for(bobOfG2 as never) }));
        await assert.rejects(async () => query.q, TenantMismatchError);
      });

      it('resultSize() and toKnexQuery() check it too (neither runs the before hooks)', async () => {
        const adaOfG2 = await runWithTenant('g2', () => Person.query().findById(1));
        await assert.rejects(runWithTenant('g1', () => adaOfG2!.$relatedQuery('pets').resultSize()), TenantMismatchError);
        await assert.rejects(
          runWithTenant('g1', async () => adaOfG2!.$query().patch({ name: 'hacked' }).toKnexQuery()),
          TenantMismatchError,
        );
        assert.equal(await runWithTenant('g2', () => adaOfG2!.$relatedQuery('pets').resultSize()), 1);
        assert.deepEqual(await personNames('g1'), ['g1-ada', 'g1-bob']);
      });

      it('for() on a builder made outside any scope', async () => {
        const bobOfG2 = await runWithTenant('g2', () => Person.query().findById(2));
        const query = Person.relatedQuery('pets').for(bobOfG2 as never);
        await assert.rejects(runWithTenant('g1', () => query), TenantMismatchError);
        assert.deepEqual(names(await runWithTenant('g2', () => query)), ['g2-tom']);
      });

      it("$knex() of an instance of another tenant is refused (a write through it hit this tenant's row of the same id)", async () => {
        const adaOfG2 = await runWithTenant('g2', () => Person.query().findById(1));
        await assert.rejects(runWithTenant('g1', async () => adaOfG2!.$knex()), TenantMismatchError);
        await assert.rejects(runWithTenant('g1', async () => adaOfG2!.$transaction()), TenantMismatchError);
        await runWithTenant('g2', () => adaOfG2!.$knex()('persons').where('id', adaOfG2!.id).update({ name: 'g2-through-knex' }));
        assert.deepEqual(await personNames('g1'), ['g1-ada', 'g1-bob']);
        assert.deepEqual(await personNames('g2'), ['g2-bob', 'g2-through-knex']);
      });

      it('$knex() of an instance of a class bound to a knex the library did not open answers that knex, in any scope', async () => {
        const own = knexFactory(backend.knexConfig('g2'));
        try {
          const Bound = Person.bindKnex(own);
          const ada = await runWithTenant('g1', () => Bound.query().findById(1));
          assert.equal(await runWithTenant('g1', async () => ada!.$knex()), own);
        } finally {
          await own.destroy();
        }
      });

      it('a builder made in its own tenant and awaited in another runs in its own', async () => {
        const { q } = await runWithTenant('g1', async () => ({ q: (await Person.query().findById(1))!.$relatedQuery('pets') }));
        assert.deepEqual(names(await runWithTenant('g2', () => q)), ['g1-rex']);
      });
    });

    describe('subqueries built in another tenant', () => {
      it('fail closed with TenantMismatchError', async () => {
        const { sub } = await runWithTenant('g2', () => ({ sub: Person.query().select('id').where('name', 'g2-bob') }));
        await assert.rejects(
          runWithTenant('g1', () => Person.query().whereIn('id', sub)),
          (e: unknown) => e instanceof TenantMismatchError && /tenant "g2" was used as a subquery of a query that runs in tenant "g1"/.test(e.message),
        );
        await assert.rejects(runWithTenant('g1', () => Person.query().select(sub.clone().first().as('x'))), TenantMismatchError);
        await assert.rejects(runWithTenant('g1', () => Person.query().whereExists(Pet.query().whereIn('owner_id', sub))), TenantMismatchError);
        await assert.rejects(runWithTenant('g1', () => Person.query().where((b) => b.whereIn('id', sub))), TenantMismatchError);
        await assert.rejects(runWithTenant('g1', () => Country.query().whereIn('id', sub)), TenantMismatchError, 'a central query');
      });

      it('a tenant subquery of a central query fails closed, in its own tenant too', async () => {
        await runWithTenant('g1', async () => {
          await assert.rejects(async () => Country.query().whereIn('id', Person.query().select('id')), TenantMismatchError);
          await assert.rejects(async () => Region.query().whereIn('id', Person.query().select('id')), TenantMismatchError);
        });
      });

      it('another tenancy with the same tenant id is another tenant', async () => {
        const other = createTenancy({ ...backend.connectionOptions(), tenantExists: backend.databaseExists });
        try {
          const { sub } = await other.runWithTenant('g1', () => ({ sub: Person.query().select('id') }));
          await assert.rejects(runWithTenant('g1', () => Person.query().whereIn('id', sub)), TenantMismatchError);
          // Its instances too (two tenancies may each have a tenant g1, on different databases):
          // before stop 22 a row of the other tenancy's g1 patched this tenancy's g1.
          const ada = (await other.runWithTenant('g1', () => Person.query().findById(1)))!;
          await assert.rejects(runWithTenant('g1', async () => ada.$query().patch({ name: 'renamed' })), TenantMismatchError);
          await assert.rejects(runWithTenant('g1', async () => Person.query().upsertGraph(ada)), TenantMismatchError);
          assert.equal((await other.runWithTenant('g1', () => ada.$query()))!.name, 'g1-ada', 'in its own tenancy it works');
        } finally {
          await other.destroy();
        }
      });

      it('a central subquery of a tenant query fails closed (its table would be read in the tenant database); of a central one it works', async () => {
        const central1 = () => Country.query().select('id').where('name', 'central-1');
        await runWithTenant('g1', async () => {
          const refused = (e: unknown) => e instanceof TypeError && /Country query \(a central model\) cannot be a subquery of a query that runs in tenant "g1"/.test(e.message);
          await assert.rejects(async () => Citizen.query().whereIn('id', central1()), refused);
          await assert.rejects(async () => Citizen.query().whereExists(Region.query().where('name', 'central-1')), TypeError);
          await assert.rejects(async () => tenancy.transaction(() => Citizen.query().whereIn('id', central1())), TypeError);
          await assert.rejects(async () => Citizen.query().where((b) => b.whereIn('id', central1())), TypeError);
          await catalog.transaction(async (trx) => {
            await assert.rejects(async () => Citizen.query().whereIn('id', Country.query(trx).select('id')), TypeError, 'on a central transaction too');
          });
          assert.deepEqual(names(await Country.query().whereIn('id', central1())), ['central-1'], 'central in central');
        });
      });

      it('a tenant query built outside any scope cannot be a subquery of a central query: it has no tenant there', async () => {
        const unscoped = Citizen.query().select('id').where('name', 'like', '%-ada');
        await assert.rejects(
          runWithTenant('g1', () => Country.query().whereIn('id', unscoped)),
          (e: unknown) => e instanceof TenantMismatchError && /Citizen query \(a tenant model\) was used as a subquery of a query that runs on another connection/.test(e.message),
        );
        await assert.rejects(runWithTenant('g1', () => Region.query().whereIn('id', unscoped)), TenantMismatchError);
        await assert.rejects(async () => Country.query().whereIn('id', unscoped), TenantContextMissingError, 'outside any scope');
      });

      it("a subquery on another tenant's connection (explicit knex, its transaction, a bound class) fails closed; on the same tenant's it works", async () => {
        const knexOf = (t: string) => runWithTenant(t, () => tenancy.knex());
        const [g1, g2] = [await knexOf('g1'), await knexOf('g2')];
        const mismatch = (e: unknown) => e instanceof TenantMismatchError && /connection of tenant "g2".*runs in tenant "g1"/.test(e.message);
        await runWithTenant('g1', async () => {
          await assert.rejects(async () => Person.query().whereIn('id', Person.query(g2).select('id').where('name', 'g2-bob')), mismatch);
          await assert.rejects(async () => Person.query().whereIn('id', Person.bindKnex(g2).query().select('id')), mismatch);
          await g2.transaction(async (trx) => {
            await assert.rejects(async () => Person.query().whereIn('id', Person.query(trx).select('id')), mismatch);
          });
          // The same tenant's own knex, and a transaction of it opened beside the scope's.
          assert.deepEqual(names(await Person.query().whereIn('id', Person.query(g1).select('id').where('name', 'g1-bob'))), ['g1-bob']);
          const provided = await g1.transactionProvider()();
          try {
            assert.deepEqual(names(await Person.query(provided).whereIn('id', Person.query().select('id').where('name', 'g1-bob'))), ['g1-bob']);
          } finally {
            await provided.commit();
          }
        });
        // A subquery built outside any scope takes the tenant of the statement, not the current scope's.
        const unscoped = Person.query().select('id').where('name', 'like', '%-bob');
        const rows = await runWithTenant('g1', () => Person.query(g2).whereIn('id', unscoped));
        assert.deepEqual(names(rows), ['g2-bob']);
      });

      it('on a knex the library did not open, callback wheres and subqueries built outside any scope work, inside a scope too', async () => {
        const own = direct.get('g1')!;
        const owners = Pet.query().select('owner_id');
        const petsOfAda = Person.relatedQuery('pets').for(1);
        const run = async () => [
          names(await Person.query(own).where((b) => b.where('name', 'g1-ada').orWhere('name', 'g1-bob'))),
          names(await Person.query(own).whereIn('id', owners)),
          names(await Person.query(own).whereExists(petsOfAda)),
        ];
        const expected = [['g1-ada', 'g1-bob'], ['g1-ada', 'g1-bob'], ['g1-ada', 'g1-bob']];
        assert.deepEqual(await run(), expected, 'outside any scope');
        assert.deepEqual(await runWithTenant('g2', run), expected, "inside another tenant's scope: the statement's knex wins");
        // Built inside a scope, a subquery is that tenant's: not compiled into a statement on another knex.
        await assert.rejects(runWithTenant('g2', () => Person.query(own).whereIn('id', Pet.query().select('owner_id'))), TenantMismatchError);
      });

      // One server holds the central and tenant databases only on MariaDB (SQLite files cannot name each other).
      if (backend.name.startsWith('mysql')) it('a central model whose tableName names its database may be a subquery of a tenant query (one server)', async () => {
        const database = (backend.knexConfig('catalog').connection as { database: string }).database;
        class NamedCountry extends centralModel(Model, () => catalog) {
          static override tableName = `${database}.countries`;
        }
        const rows = await runWithTenant('g1', () => Citizen.query().whereIn('id', NamedCountry.query().select('id').where('name', 'central-2')));
        assert.deepEqual(names(rows), ['g1-bob']);
      });

      it('subqueries of the same tenant, or made outside any scope, still work', async () => {
        const { sub } = await runWithTenant('g1', () => ({ sub: Person.query().select('id').where('name', 'g1-bob') }));
        const unscoped = Person.query().select('id').where('name', 'like', '%-ada');
        const [same, inTrx, late, relationCount] = await runWithTenant('g1', async () => [
          await Person.query().whereIn('id', sub),
          await tenancy.transaction(() => Person.query().whereIn('id', sub)),
          await Person.query().whereIn('id', unscoped),
          await Person.query().select('name', Person.relatedQuery('pets').count().as('n')).orderBy('id'),
        ]);
        assert.deepEqual(names(same), ['g1-bob']);
        assert.deepEqual(names(inTrx), ['g1-bob']);
        assert.deepEqual(names(late), ['g1-ada']);
        assert.deepEqual(relationCount.map((r) => Number((r as unknown as { n: number }).n)), [1, 1]);
        assert.deepEqual(names(await runWithTenant('g2', () => Person.query().whereIn('id', unscoped))), ['g2-ada']);
      });
    });

    describe('rows loaded through an explicit knex', () => {
      it("rows read through a knex the library did not open belong to no scope: a later write in another tenant's scope is refused", async () => {
        const other = direct.get('g2')!;
        await runWithTenant('g1', async () => {
          const ada = (await Person.query(other).findById(1))!;
          assert.equal(ada.name, 'g2-ada');
          assert.equal(instanceTenantId(ada), undefined);
          // Before stop 22 the row took g1 from the scope, and this patched g1's person 1.
          await assert.rejects(async () => ada.$query().patch({ name: 'renamed' }), TenantMismatchError);
          await assert.rejects(async () => Person.query().upsertGraph(ada), TenantMismatchError);
          // Through the same knex again, it is the caller's choice.
          await ada.$query(other).patch({ name: 'g2-ada-renamed' });
        });
        assert.deepEqual(await personNames('g1'), ['g1-ada', 'g1-bob']);
        assert.deepEqual(await personNames('g2'), ['g2-ada-renamed', 'g2-bob']);
        // Outside any scope too: the row does not take the first scope it meets.
        const bob = (await Person.query(other).findById(2))!;
        await assert.rejects(runWithTenant('g1', async () => bob.$query().delete()), TenantMismatchError);
        assert.deepEqual(await personNames('g1'), ['g1-ada', 'g1-bob']);
      });

      it("a joined graph read through such a knex: its related rows belong to no scope either", async () => {
        const ada = (await runWithTenant('g1', () => Person.query(direct.get('g2')!).findById(1).withGraphJoined('pets')))!;
        assert.ok(ada.pets!.length > 0);
        await runWithTenant('g1', async () => {
          for (const pet of ada.pets!) await assert.rejects(async () => pet.$query().patch({ name: 'x' }), TenantMismatchError);
        });
      });

      it('page() and an aliased joined relation read through such a knex are stamped too', async () => {
        const other = direct.get('g2')!;
        const { results } = await runWithTenant('g1', () => Person.query(other).orderBy('id').page(0, 10));
        const ada = (await runWithTenant('g1', () => Person.query(other).findById(1).withGraphJoined('pets as dogs')))! as Person & { dogs: Pet[] };
        assert.ok(ada.dogs.length > 0);
        await runWithTenant('g1', async () => {
          await assert.rejects(async () => results[0]!.$query().patch({ name: 'renamed' }), TenantMismatchError);
          await assert.rejects(async () => ada.dogs[0]!.$query().patch({ name: 'renamed' }), TenantMismatchError);
        });
        assert.deepEqual(await personNames('g1'), ['g1-ada', 'g1-bob']);
      });

      it("rows read through another tenant's knex from the library belong to that tenant", async () => {
        const knexOfG2 = await tenancy.runWithTenant('g2', () => tenancy.knex());
        const ada = (await runWithTenant('g1', () => Person.query(knexOfG2).findById(1).withGraphFetched('pets')))!;
        assert.equal(instanceTenantId(ada), 'g2');
        assert.equal(instanceTenantId(ada.pets![0]!), 'g2');
        await assert.rejects(runWithTenant('g1', async () => ada.$query().patch({ name: 'renamed' })), TenantMismatchError);
        await runWithTenant('g2', async () => ada.$query().patch({ name: 'g2-ada-renamed' }));
        const bob = (await Person.query(knexOfG2).findById(2))!;
        assert.equal(instanceTenantId(bob), 'g2');
        assert.deepEqual(await personNames('g1'), ['g1-ada', 'g1-bob']);
        assert.deepEqual(await personNames('g2'), ['g2-ada-renamed', 'g2-bob']);
      });

      it("a transaction opened on the tenant's knex (startTransaction, Model.transaction(knex, fn), tenancy.transaction) keeps its tenant", async () => {
        await runWithTenant('g1', async () => {
          const trx = await Person.startTransaction();
          const ada = (await Person.query(trx).findById(1))!;
          await trx.commit();
          assert.equal(instanceTenantId(ada), 'g1');
          await ada.$query().patch({ name: 'g1-ada-2' });
          const bob = (await Person.transaction(tenancy.knex(), async (t) => Person.query(t).findById(2)))!;
          assert.equal(instanceTenantId(bob), 'g1');
          await bob.$query().patch({ name: 'g1-bob-2' });
          const again = (await tenancy.transaction((t) => Person.query(t).findById(1)))!;
          assert.equal(instanceTenantId(again), 'g1');
          // Transactions opened on the tenant's knex in every other way objection and knex allow.
          const inSavepoint = (await tenancy.transaction((t) => t.transaction(async (sp) => Person.query(sp).findById(1))))! as Person;
          assert.equal(instanceTenantId(inSavepoint), 'g1');
          const viaObjection = (await objectionTransaction(Person.knex(), async (t) => Person.query(t).findById(1)))!;
          assert.equal(instanceTenantId(viaObjection), 'g1');
          const provider = tenancy.knex().transactionProvider();
          const provided = await provider();
          const viaProvider = (await Person.query(provided).findById(1))!;
          await provided.commit();
          assert.equal(instanceTenantId(viaProvider), 'g1');
          await viaProvider.$query().patch({ name: 'g1-ada-3' });
          // knex's per-request copy (withUserParams) and its transactions are the tenant's too.
          const copy = tenancy.knex().withUserParams({ requestId: 'r1' });
          const viaCopy = (await Person.query(copy).findById(2))!;
          assert.equal(instanceTenantId(viaCopy), 'g1');
          const viaCopyTrx = (await copy.transaction(async (t) => Person.query(t).findById(2)))!;
          assert.equal(instanceTenantId(viaCopyTrx), 'g1');
          await viaCopy.$query().patch({ name: 'g1-bob-2' });
        });
        assert.deepEqual(await personNames('g1'), ['g1-ada-3', 'g1-bob-2']);
      });
    });

    describe('instances of another tenant given to writes', () => {
      it('$clone() keeps the tenant, of nested relations too', async () => {
        const ada = await runWithTenant('g2', () => Person.query().findById(1).withGraphFetched('pets'));
        const copy = ada!.$clone();
        assert.equal(instanceTenantId(copy), 'g2');
        assert.equal(instanceTenantId(copy.pets![0]!), 'g2');
        assert.equal(instanceTenantId(ada!.$clone({ shallow: true })), 'g2');
        await assert.rejects(runWithTenant('g1', async () => copy.$query()), TenantMismatchError);
      });

      it("instances of a class bound to another tenant's knex (bindKnex) are refused by writes too; the bound class's own queries stay on its knex", async () => {
        const knexOf = async (t: string) => tenancy.runWithTenant(t, () => tenancy.knex());
        const BoundG2 = Person.bindKnex(await knexOf('g2'));
        const adaOfG2 = (await BoundG2.query().findById(1).withGraphFetched('pets'))!;
        adaOfG2.pets = [];
        await runWithTenant('g1', async () => {
          // Before stop 22 the upsert ran: g1's person 1 became g2's, and g1's pet of person 1 was deleted.
          await assert.rejects(async () => Person.query().upsertGraph(adaOfG2), TenantMismatchError);
          await assert.rejects(async () => Person.query().patch(adaOfG2).where('id', 2), TenantMismatchError);
          assert.equal((await BoundG2.query().findById(1))!.name, 'g2-ada', 'a bound class reads its own knex in any scope');
          await adaOfG2.$query().patch({ name: 'g2-ada-bound' });
        });
        assert.deepEqual(await personNames('g1'), ['g1-ada', 'g1-bob']);
        assert.equal((await direct.get('g1')!('pets')).length, 2);
        assert.deepEqual(await personNames('g2'), ['g2-ada-bound', 'g2-bob']);
        // Bound to the scope's own tenant, they pass (the objection recipe's req.models).
        const BoundG1 = Person.bindKnex(await knexOf('g1'));
        const adaOfG1 = (await BoundG1.query().findById(1))!;
        await runWithTenant('g1', async () => Person.query().patch(adaOfG1).where('id', 1));
        // Writes through an explicit connection of a known tenant (a bound class, a knex given to
        // query(), a transaction of it) check the instances against that tenant: before stop 22
        // they were not checked at all, and req.models.Person.query().upsertGraph(rowOfG2) wrote g2's row into g1.
        const rowOfG2 = (await BoundG2.query().findById(2))!;
        await runWithTenant('g1', async () => {
          await assert.rejects(async () => BoundG1.query().upsertGraph(rowOfG2), TenantMismatchError);
          await assert.rejects(async () => Person.query(tenancy.knex()).patch(rowOfG2).where('id', 2), TenantMismatchError);
          await assert.rejects(async () => tenancy.transaction((trx) => rowOfG2.$query(trx).patch({ name: 'renamed' })), TenantMismatchError);
          await BoundG1.query().patch(adaOfG1).where('id', 1);
        });
        await assert.rejects(async () => Person.query(await knexOf('g1')).upsertGraph(rowOfG2), TenantMismatchError, 'outside any scope too');
        assert.deepEqual(await personNames('g1'), ['g1-ada', 'g1-bob']);
      });

      it('upsertGraph, insertGraph with relate, relate and patch refuse them', async () => {
        const [adaOfG2, movieOfG2] = await runWithTenant('g2', async () => [(await Person.query().findById(1))!, (await Movie.query().findById(2))!] as const);
        const petOfG2 = await runWithTenant('g2', () => Pet.query().findById(1));
        adaOfG2.pets = [];
        await runWithTenant('g1', async () => {
          await assert.rejects(async () => Person.query().upsertGraph(adaOfG2), TenantMismatchError);
          await assert.rejects(async () => Person.query().upsertGraph({ id: 1, name: 'g1-ada', pets: [petOfG2!] } as never), TenantMismatchError);
          await assert.rejects(async () => Person.query().upsertGraphAndFetch([adaOfG2]), TenantMismatchError);
          await assert.rejects(
            async () => Person.query().insertGraph({ name: 'g1-new', movies: [movieOfG2] } as never, { relate: true }),
            TenantMismatchError,
          );
          await assert.rejects(async () => Person.relatedQuery('movies').for(2).relate(movieOfG2), TenantMismatchError);
          await assert.rejects(async () => Person.query().patch(adaOfG2).where('id', 2), TenantMismatchError);
          await assert.rejects(async () => Person.query().patchAndFetchById(2, adaOfG2), TenantMismatchError);
          await assert.rejects(async () => Person.query().update(adaOfG2).where('id', 2), TenantMismatchError);
          // Plain objects and this tenant's instances go on as before.
          const own = (await Movie.query().findById(2))!;
          await Person.relatedQuery('movies').for(2).relate(own);
        });
        const g1 = direct.get('g1')!;
        assert.deepEqual(await personNames('g1'), ['g1-ada', 'g1-bob']);
        assert.equal((await g1('pets')).length, 2, "upsertGraph did not delete g1's pets");
        assert.deepEqual(await g1('persons_movies').orderBy('person_id').select('person_id', 'movie_id'), [
          { person_id: 1, movie_id: 1 },
          { person_id: 2, movie_id: 2 },
        ]);
      });

      it("an instance inserted in one tenant (new Model(), fromJson outside any scope, a related insert) is that tenant's: it cannot later patch or delete another tenant's row of its id", async () => {
        const made = new Person();
        made.name = 'g1-made';
        const loose = Person.fromJson({ name: 'g1-loose' });
        const { inserted, pet } = await runWithTenant('g1', async () => {
          const inserted = await Person.query().insert(made);
          await Person.query().insertAndFetch(loose);
          const owner = (await Person.query().findById(1))!;
          const pet = (await owner.$relatedQuery('pets').insert(Pet.fromJson({ name: 'g1-new-pet' }))) as Pet;
          return { inserted, pet };
        });
        assert.equal(instanceTenantId(inserted), 'g1');
        assert.equal(instanceTenantId(loose), 'g1');
        assert.equal(instanceTenantId(pet), 'g1');
        const g2Before = await personNames('g2');
        await runWithTenant('g2', async () => {
          // g2 has rows of these ids (auto-increment ids collide across tenant databases).
          await Person.query().insert({ name: 'g2-x' });
          await Person.query().insert({ name: 'g2-y' });
          await assert.rejects(async () => made.$query().patch({ name: 'patched-from-g1' }), TenantMismatchError);
          await assert.rejects(async () => loose.$query().delete(), TenantMismatchError);
          await assert.rejects(async () => pet.$query().delete(), TenantMismatchError);
          // Inserted again here it would take this tenant's new id, and patch its own tenant's row of it later.
          await assert.rejects(async () => Person.query().insert(made), TenantMismatchError);
          await assert.rejects(async () => Person.query().insertGraph(made), TenantMismatchError);
        });
        assert.deepEqual(await personNames('g2'), [...g2Before, 'g2-x', 'g2-y']);
        assert.equal((await direct.get('g2')!('pets')).length, 2, "g2's pets are untouched");
      });
    });
  });
}
