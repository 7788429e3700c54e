/**
 * The real databases the suites run against: SQLite files (always) and MariaDB (when reachable).
 * Under CI=true an unreachable MariaDB fails the run; locally the MySQL suites skip with a loud notice.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';
import knexFactory, { type Knex } from 'knex';
import type { ConnectionOptions } from '../../lib/connections';

import { createSchema, seed } from './fixtures';
import { MYSQL_URL, mysqlConnection } from './mysql-url';

export { MYSQL_URL, mysqlConnection };

function probeMysql(): string | undefined {
  const script = `require('mysql2').createConnection(process.argv[1]).promise().query('select 1')
    .then(() => process.exit(0), (e) => { console.error(e.code || e.message); process.exit(1); });`;
  const result = spawnSync(process.execPath, ['-e', script, MYSQL_URL], { encoding: 'utf8', timeout: 15_000 });
  return result.status === 0 ? undefined : (result.stderr.trim() || 'no answer');
}

const mysqlProblem = probeMysql();
if (mysqlProblem !== undefined) {
  if (process.env.CI === 'true') {
    throw new Error(`MariaDB at ${new URL(MYSQL_URL).host} is unreachable (${mysqlProblem}); under CI=true the MySQL suites must run.`);
  }
  console.error(`\n!!! MariaDB at ${new URL(MYSQL_URL).host} is unreachable (${mysqlProblem}): MySQL-backed tests are SKIPPED.\n`);
}

/** `undefined` when MariaDB is up, else the reason to skip (never under CI=true, which throws above). */
export const skipMysql: string | undefined = mysqlProblem === undefined ? undefined : `MariaDB unreachable: ${mysqlProblem}`;

/** One kind of tenant database: how to create, drop and connect to a tenant's database. */
export interface Backend {
  readonly name: 'sqlite' | 'mysql' | 'mysql-shared' | 'mysql-shared-inline' | 'mysql-shared-use';
  readonly skip: string | undefined;
  knexConfig(tenantId: string): Knex.Config;
  createDatabase(tenantId: string): Promise<void>;
  dropDatabase(tenantId: string): Promise<void>;
  databaseExists(tenantId: string): Promise<boolean>;
  /** Closes admin connections. */
  close(): Promise<void>;
  /** The tenancy's connection options: `{ knexConfig }`, or the shared strategy's. */
  connectionOptions(): ConnectionOptions;
}

/** SQLite: one file per tenant under a fresh temporary directory. */
export function sqliteBackend(label: string): Backend {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `ot-${label}-`));
  const file = (id: string) => path.join(dir, `${id}.sqlite`);
  return {
    name: 'sqlite',
    skip: undefined,
    knexConfig: (id) => ({ client: 'better-sqlite3', connection: { filename: file(id) }, useNullAsDefault: true }),
    async createDatabase(id) {
      fs.writeFileSync(file(id), '');
    },
    async dropDatabase(id) {
      fs.rmSync(file(id), { force: true });
    },
    async databaseExists(id) {
      return fs.existsSync(file(id));
    },
    async close() {
      fs.rmSync(dir, { recursive: true, force: true });
    },
    connectionOptions() {
      return { knexConfig: this.knexConfig };
    },
  };
}

/** MariaDB: one database per tenant, named `ot_<label>_<tenant>`. */
export function mysqlBackend(label: string, poolMax = 4): Backend {
  let admin: Knex | undefined;
  const adminKnex = () => (admin ??= knexFactory({ client: 'mysql2', connection: mysqlConnection(), pool: { min: 0, max: 2 } }));
  const dbName = (id: string) => `ot_${label}_${id}`.replace(/-/g, '_');
  return {
    name: 'mysql',
    skip: skipMysql,
    knexConfig: (id) => ({ client: 'mysql2', connection: mysqlConnection(dbName(id)), pool: { max: poolMax } }),
    async createDatabase(id) {
      await adminKnex().raw('drop database if exists ??', [dbName(id)]);
      await adminKnex().raw('create database ?? character set utf8mb4', [dbName(id)]);
    },
    async dropDatabase(id) {
      await adminKnex().raw('drop database if exists ??', [dbName(id)]);
    },
    async databaseExists(id) {
      const [rows] = await adminKnex().raw('select schema_name from information_schema.schemata where schema_name = ?', [dbName(id)]);
      return (rows as unknown[]).length > 0;
    },
    async close() {
      await admin?.destroy();
      admin = undefined;
    },
    connectionOptions() {
      return { knexConfig: this.knexConfig };
    },
  };
}

/**
 * MariaDB through the shared strategy, one pool of `poolMax` connections, in one of three modes:
 * - `default`: the strategy's defaults (queries name their database on connections with no current
 *   one, `qualifyTables`; the cold-switch cap sized from the server);
 * - `use`: `qualifyTables: false`, every change of tenant a `USE` round trip;
 * - `inline`: `qualifyTables: false` with every other shared option on: the switch sent in the same
 *   round trip as the next statement (`inlineSwitch`), at most one connection at once serving a
 *   tenant the pool has not used lately (`maxSwitchedConnections: 1`), and the session reset when a
 *   connection changes tenant (`resetSession`).
 */
export type SharedMode = 'default' | 'use' | 'inline';

export function mysqlSharedBackend(label: string, poolMax = 3, mode: SharedMode = 'default'): Backend {
  const backend = mysqlBackend(label, poolMax);
  const { database: _database, ...server } = mysqlConnection();
  void _database;
  const modeOptions =
    mode === 'use' ? { qualifyTables: false }
    : mode === 'inline' ? { qualifyTables: false, inlineSwitch: true, maxSwitchedConnections: 1, resetSession: true }
    : {};
  return {
    ...backend,
    name: mode === 'default' ? 'mysql-shared' : `mysql-shared-${mode}`,
    connectionOptions: () => ({
      strategy: 'shared',
      ...modeOptions,
      servers: { main: { client: 'mysql2', connection: server, pool: { max: poolMax } } },
      locate: (id: string) => ({ server: 'main', database: `ot_${label}_${id}`.replace(/-/g, '_') }),
    }),
  };
}

/** Both backends, for suites that run once per database (the objection way). */
export function backends(label: string): Backend[] {
  return [sqliteBackend(label), mysqlBackend(label)];
}

/**
 * Both backends, plus MariaDB through the shared strategy with its defaults and with `USE` switching
 * (`qualifyTables: false`); with `inlineSwitch`, once more through the shared strategy with the
 * inline switch and every other option. The suites that pin the model's behaviour run them all.
 */
export function allStrategies(label: string, { inlineSwitch = false } = {}): Backend[] {
  const strategies = [sqliteBackend(label), mysqlBackend(label), mysqlSharedBackend(`${label}s`), mysqlSharedBackend(`${label}u`, 3, 'use')];
  if (inlineSwitch) strategies.push(mysqlSharedBackend(`${label}i`, 3, 'inline'));
  return strategies;
}

/** Runs `fn` with a knex of its own on tenant `id`'s database (for checks beside the tenancy), then closes it. */
export async function withDirectKnex<R>(backend: Backend, id: string, fn: (knex: Knex) => Promise<R>): Promise<R> {
  const knex = knexFactory(backend.knexConfig(id));
  try {
    return await fn(knex);
  } finally {
    await knex.destroy();
  }
}

/** Which of `candidates` exist as tables in tenant `id`'s database, in their order. */
export function tablesIn(backend: Backend, id: string, candidates: readonly string[]): Promise<string[]> {
  return withDirectKnex(backend, id, async (knex) => {
    const found: string[] = [];
    for (const table of candidates) if (await knex.schema.hasTable(table)) found.push(table);
    return found;
  });
}

/**
 * Creates tenant `id`'s database with the fixtures' schema and rows (persons, pets and movies that
 * name their tenant), and returns a knex of its own on it, for checks beside the tenancy (the caller
 * destroys it).
 */
export async function createSeededTenant(backend: Backend, id: string): Promise<Knex> {
  await backend.createDatabase(id);
  const knex = knexFactory(backend.knexConfig(id));
  await createSchema(knex, id);
  await seed(knex, id);
  return knex;
}

/**
 * For a suite on tenant `id` of `backend`: before it, the tenant is created and seeded
 * (createSeededTenant); after it, its knex is closed, its database dropped and the backend's admin
 * connections closed. `table(name)` is a query on the tenant's table, beside the tenancy.
 */
export function seededTenantSuite(backend: Backend, id: string): { table(name: string): Knex.QueryBuilder } {
  let knex: Knex | undefined;
  before(async () => {
    knex = await createSeededTenant(backend, id);
  });
  after(async () => {
    await knex?.destroy();
    await backend.dropDatabase(id);
    await backend.close();
  });
  return { table: (name) => knex!(name) };
}
