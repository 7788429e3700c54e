/** A small schema and model graph used by the suites: persons, pets, movies (many-to-many), audit. */
import knexFactory, { type Knex } from 'knex';
import { Model, type RelationMappings } from 'objection';
import { TenantModel, type Tenancy } from '../../lib/index';

export async function createSchema(knex: Knex, tenantId: string): Promise<void> {
  for (const table of ['persons_movies', 'pets', 'movies', 'persons', 'audit', 'tenant_info']) {
    await knex.schema.dropTableIfExists(table);
  }
  await knex.schema.createTable('tenant_info', (t) => {
    t.string('tenant_id').notNullable();
  });
  await knex.schema.createTable('persons', (t) => {
    t.increments('id').primary();
    t.string('name').notNullable();
    t.string('note');
  });
  await knex.schema.createTable('pets', (t) => {
    t.increments('id').primary();
    t.integer('owner_id').unsigned().references('persons.id').onDelete('CASCADE');
    t.string('name').notNullable();
  });
  await knex.schema.createTable('movies', (t) => {
    t.increments('id').primary();
    t.string('title').notNullable();
  });
  await knex.schema.createTable('persons_movies', (t) => {
    t.integer('person_id').unsigned().references('persons.id').onDelete('CASCADE');
    t.integer('movie_id').unsigned().references('movies.id').onDelete('CASCADE');
    t.primary(['person_id', 'movie_id']);
  });
  await knex.schema.createTable('audit', (t) => {
    t.increments('id').primary();
    t.string('message').notNullable();
  });
  await knex('tenant_info').insert({ tenant_id: tenantId });
}

/**
 * Seeds rows that name their tenant: persons `<t>-ada` and `<t>-bob`, pets `<t>-rex` (ada) and
 * `<t>-tom` (bob), movies `<t>-alien` (ada) and `<t>-brazil`. Ids are the same in every tenant,
 * so only the names tell which database a row came from.
 */
export async function seed(knex: Knex, t: string): Promise<void> {
  await knex('persons').insert([{ id: 1, name: `${t}-ada` }, { id: 2, name: `${t}-bob` }]);
  await knex('pets').insert([{ id: 1, owner_id: 1, name: `${t}-rex` }, { id: 2, owner_id: 2, name: `${t}-tom` }]);
  await knex('movies').insert([{ id: 1, title: `${t}-alien` }, { id: 2, title: `${t}-brazil` }]);
  await knex('persons_movies').insert([{ person_id: 1, movie_id: 1 }]);
}

/** Empties the tables and seeds them again (between tests). */
export async function reseed(knex: Knex, t: string): Promise<void> {
  for (const table of ['persons_movies', 'pets', 'movies', 'persons', 'audit']) await knex(table).delete();
  await seed(knex, t);
}

/** MariaDB settings with no database: what `mysqlConnection()` gives, `database` left out. */
type Server = { host: string; port: number; user: string; password: string };

/** A database name quoted whole (knex's `??` splits it at dots). */
function quoteName(name: string): string {
  return `\`${name.replace(/`/g, '``')}\``;
}

/** Creates each tenant's MariaDB database afresh (`database(t)`), with the schema and the seed rows. */
export async function createTenantDatabases(server: Server, tenantIds: readonly string[], database: (t: string) => string): Promise<void> {
  const admin = knexFactory({ client: 'mysql2', connection: server, pool: { min: 0, max: 1 } });
  try {
    for (const t of tenantIds) {
      await admin.raw(`drop database if exists ${quoteName(database(t))}`);
      await admin.raw(`create database ${quoteName(database(t))}`);
      const knex = knexFactory({ client: 'mysql2', connection: { ...server, database: database(t) }, pool: { min: 0, max: 1 } });
      try {
        await createSchema(knex, t);
        await seed(knex, t);
      } finally {
        await knex.destroy();
      }
    }
  } finally {
    await admin.destroy();
  }
}

/** Drops the databases createTenantDatabases made. */
export async function dropTenantDatabases(server: Server, tenantIds: readonly string[], database: (t: string) => string): Promise<void> {
  const admin = knexFactory({ client: 'mysql2', connection: server, pool: { min: 0, max: 1 } });
  try {
    for (const t of tenantIds) await admin.raw(`drop database if exists ${quoteName(database(t))}`);
  } finally {
    await admin.destroy();
  }
}

/** Creates the schema and seeds it in each tenant, through the tenancy's own scope. */
export async function setUpTenants(tenancy: Tenancy, tenantIds: readonly string[]): Promise<void> {
  for (const t of tenantIds) {
    await tenancy.runWithTenant(t, async () => {
      await createSchema(tenancy.knex(), t);
      await seed(tenancy.knex(), t);
    });
  }
}

export class Audit extends TenantModel {
  static override tableName = 'audit';
  declare id: number;
  declare message: string;
}

export class Person extends TenantModel {
  static override tableName = 'persons';
  declare id: number;
  declare name: string;
  declare note?: string | null;
  declare pets?: Pet[];
  declare movies?: Movie[];

  /** An instance hook that queries: records how many persons its tenant had before the insert. */
  override async $beforeInsert(): Promise<void> {
    const tenant = await Person.query().select(Person.raw('(select tenant_id from tenant_info) as t')).first();
    this.note = `inserted-in:${(tenant as unknown as { t: string } | undefined)?.t ?? 'empty-tenant'}`;
  }

  static override get relationMappings(): RelationMappings {
    return {
      pets: { relation: Model.HasManyRelation, modelClass: Pet, join: { from: 'persons.id', to: 'pets.owner_id' } },
      movies: {
        relation: Model.ManyToManyRelation,
        modelClass: Movie,
        join: { from: 'persons.id', through: { from: 'persons_movies.person_id', to: 'persons_movies.movie_id' }, to: 'movies.id' },
      },
    };
  }
}

export class Pet extends TenantModel {
  static override tableName = 'pets';
  declare id: number;
  declare name: string;
  declare owner_id: number | null;
  declare owner?: Person;

  /** A static hook that queries: writes an audit row in the tenant's database. */
  static override async afterInsert({ inputItems }: { inputItems: Pet[] }): Promise<void> {
    await Audit.query().insert(inputItems.map((pet) => ({ message: `pet:${pet.name}` })));
  }

  static override get relationMappings(): RelationMappings {
    return {
      owner: { relation: Model.BelongsToOneRelation, modelClass: Person, join: { from: 'pets.owner_id', to: 'persons.id' } },
    };
  }
}

export class Movie extends TenantModel {
  static override tableName = 'movies';
  declare id: number;
  declare title: string;
}

/**
 * Drains a `.stream()` of the tenant's `persons` through the tenancy's knex and returns the names; a
 * stream that neither ends nor fails within `ms` rejects (a hang fails the test instead of the run).
 */
export function streamNames(tenancy: Tenancy, tenantId: string, ms = 5_000): Promise<string[]> {
  let timer: NodeJS.Timeout | undefined;
  const drained = tenancy.runWithTenant(tenantId, async () => {
    const names: string[] = [];
    for await (const row of tenancy.knex()('persons').orderBy('id').stream() as AsyncIterable<{ name: string }>) names.push(row.name);
    return names;
  });
  const hung = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`the stream neither ended nor failed within ${ms} ms`)), ms)));
  return Promise.race([drained, hung]).finally(() => clearTimeout(timer));
}
