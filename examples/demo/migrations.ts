import type { Knex } from 'knex';

/** The tenants the demo creates and seeds on first start. */
export const DEMO_TENANTS = ['acme', 'globex'] as const;

interface SeedPerson {
  name: string;
  pets: { name: string; species: string }[];
}

// Different people in each tenant, so a leak between tenants shows at a glance.
const SEEDS: Record<string, SeedPerson[]> = {
  acme: [
    { name: 'Ada Lovelace', pets: [{ name: 'Babbage', species: 'cat' }] },
    { name: 'Grace Hopper', pets: [{ name: 'Cobol', species: 'dog' }, { name: 'Nanosecond', species: 'parrot' }] },
    { name: 'Alan Turing', pets: [] },
  ],
  globex: [
    { name: 'Hank Scorpio', pets: [{ name: 'Mr. Snuggles', species: 'hamster' }] },
    { name: 'Homer Simpson', pets: [{ name: "Santa's Little Helper", species: 'dog' }] },
  ],
};

/** The people (and their pets) seeded into `tenantId`; empty for tenants the demo does not know. */
export function seedFor(tenantId: string): readonly SeedPerson[] {
  return SEEDS[tenantId] ?? [];
}

interface DemoMigration {
  name: string;
  up(knex: Knex): Promise<void>;
  down(knex: Knex): Promise<void>;
}

function migrations(tenantId: string): DemoMigration[] {
  return [
    {
      name: '001_create_persons_and_pets',
      async up(knex) {
        await knex.schema.createTable('persons', (t) => {
          t.increments('id').primary();
          t.string('name', 100).notNullable();
        });
        await knex.schema.createTable('pets', (t) => {
          t.increments('id').primary();
          t.integer('owner_id').unsigned().notNullable().references('persons.id').onDelete('CASCADE');
          t.string('name', 100).notNullable();
          t.string('species', 50).notNullable();
          t.index(['owner_id']);
        });
      },
      async down(knex) {
        await knex.schema.dropTableIfExists('pets');
        await knex.schema.dropTableIfExists('persons');
      },
    },
    {
      name: '002_seed_demo_rows',
      async up(knex) {
        for (const person of seedFor(tenantId)) {
          // Both SQLite and MySQL answer a single-row insert with [insertId].
          const [ownerId] = await knex('persons').insert({ name: person.name });
          for (const pet of person.pets) await knex('pets').insert({ owner_id: ownerId, ...pet });
        }
      },
      async down(knex) {
        await knex('pets').delete();
        await knex('persons').delete();
      },
    },
  ];
}

/**
 * The demo's migrations as an in-code knex migration source: run them with
 * `knex.migrate.latest({ migrationSource: demoMigrations(id) })` on a tenant's knex. Knex records
 * what ran in the tenant's own `knex_migrations` table, so later starts change nothing.
 */
export function demoMigrations(tenantId: string): Knex.MigrationSource<DemoMigration> {
  const list = migrations(tenantId);
  return {
    getMigrations: async () => list,
    getMigrationName: (migration) => migration.name,
    getMigration: async (migration) => migration,
  };
}
