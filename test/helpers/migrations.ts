/**
 * A temporary knex migrations directory for the operations suites: three migrations creating
 * `people`, `pets` and `notes`, and a seeds directory with one seed.
 *
 * Tenant `<id>` whose database already holds a `pets` table fails half-way: migration 1 applies and
 * migration 2 fails. Migration 1 also counts how many tenants are inside it at once (`inFlight`).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const MIGRATION_NAMES = ['20250101000001_people.js', '20250101000002_pets.js', '20250101000003_notes.js'];

const STATE = Symbol.for('objection-tenancy.test.migrations');

/** Counters shared with the migration files (same process). */
export interface MigrationCounters {
  inFlight: number;
  maxInFlight: number;
  /** Extra milliseconds migration 1 waits, to make concurrency or an interruption observable. */
  delayMs: number;
}

export function counters(): MigrationCounters {
  const holder = globalThis as unknown as Record<symbol, MigrationCounters | undefined>;
  return (holder[STATE] ??= { inFlight: 0, maxInFlight: 0, delayMs: 0 });
}

const FILES: Record<string, string> = {
  [MIGRATION_NAMES[0]!]: `
const state = () => (globalThis[Symbol.for('objection-tenancy.test.migrations')] ??= { inFlight: 0, maxInFlight: 0, delayMs: 0 });
exports.up = async (knex) => {
  const s = state();
  s.inFlight++;
  s.maxInFlight = Math.max(s.maxInFlight, s.inFlight);
  try {
    const delay = Number(process.env.OT_MIGRATION_DELAY_MS || s.delayMs || 0);
    if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay));
    await knex.schema.createTable('people', (t) => {
      t.increments('id');
      t.string('name').notNullable().index();
    });
  } finally {
    s.inFlight--;
  }
};
exports.down = (knex) => knex.schema.dropTable('people');
`,
  [MIGRATION_NAMES[1]!]: `
exports.up = (knex) => knex.schema.createTable('pets', (t) => {
  t.increments('id');
  t.integer('person_id').unsigned().notNullable().index();
  t.string('name').notNullable();
});
exports.down = (knex) => knex.schema.dropTable('pets');
`,
  [MIGRATION_NAMES[2]!]: `
exports.up = (knex) => knex.schema.createTable('notes', (t) => {
  t.increments('id');
  t.text('body');
});
exports.down = (knex) => knex.schema.dropTable('notes');
`,
};

const SEED = `
exports.seed = async (knex) => {
  await knex('people').insert({ name: 'seeded' });
};
`;

/** Writes the migrations (and seeds) into a fresh temporary directory. */
export function writeMigrations(): { dir: string; migrations: string; seeds: string; addMigration(name: string, body: string): void; removeMigration(name: string): void; cleanup(): void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ot-ops-'));
  const migrations = path.join(dir, 'migrations');
  const seeds = path.join(dir, 'seeds');
  fs.mkdirSync(migrations);
  fs.mkdirSync(seeds);
  for (const [name, body] of Object.entries(FILES)) fs.writeFileSync(path.join(migrations, name), body);
  fs.writeFileSync(path.join(seeds, '01_people.js'), SEED);
  return {
    dir,
    migrations,
    seeds,
    addMigration: (name, body) => fs.writeFileSync(path.join(migrations, name), body),
    removeMigration: (name) => fs.rmSync(path.join(migrations, name), { force: true }),
    cleanup: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}
