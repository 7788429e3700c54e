/**
 * Migrating every tenant: 1,000 tenant databases on the local MariaDB, 3 migrations creating 3 tables
 * with indexes, then a re-run with nothing to apply (the case django-tenants #719 measured at 12 minutes).
 *
 * Measured, in one process run:
 *   1. `tenancy.migrate.latest()` on fresh databases (every migration applied);
 *   2. `tenancy.migrate.latest()` again: nothing to apply (the fast path: one `select` per tenant);
 *   3. baseline for 2: what an app does without this library, a knex per tenant and knex's own
 *      `migrate.latest()` on each, one tenant after the other (BENCH_BASELINE=0 skips it).
 * The databases are created before the clock starts and dropped at the end (prefix `ot_mbench_`).
 *
 * Run: `npm run bench:migrate`. Env: MYSQL_URL (default mysql://root@127.0.0.1:3306/test),
 * BENCH_TENANTS (1000), BENCH_CONCURRENCY (4, the library default), BENCH_BASELINE (1).
 * Ends with one line `RESULT {"tenants": N, "failed": F, "migrate_s": S, "noop_s": S0, ...}`.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import knexFactory, { type Knex } from 'knex';
import { createTenancy } from './library';
import type { MigrationReport } from '../lib/index';
import { mysqlConnection } from '../test/helpers/mysql-url';
import { intEnv } from './results';

const MYSQL_URL = process.env.MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test';
const TENANTS = intEnv('BENCH_TENANTS', 1000);
const CONCURRENCY = intEnv('BENCH_CONCURRENCY', 4);
const BASELINE = process.env.BENCH_BASELINE !== '0';
const PREFIX = 'ot_mbench_';


const connection = (database?: string) => mysqlConnection(database, MYSQL_URL);

const MIGRATIONS: Record<string, string> = {
  '20250101000001_accounts.js': `
exports.up = (knex) => knex.schema.createTable('accounts', (t) => {
  t.increments('id');
  t.string('email', 191).notNullable().unique();
  t.string('name', 100).notNullable().index();
  t.timestamp('created_at').defaultTo(knex.fn.now());
});
exports.down = (knex) => knex.schema.dropTable('accounts');`,
  '20250101000002_projects.js': `
exports.up = (knex) => knex.schema.createTable('projects', (t) => {
  t.increments('id');
  t.integer('account_id').unsigned().notNullable().index();
  t.string('title', 200).notNullable();
  t.boolean('archived').notNullable().defaultTo(false);
  t.index(['account_id', 'archived']);
});
exports.down = (knex) => knex.schema.dropTable('projects');`,
  '20250101000003_events.js': `
exports.up = (knex) => knex.schema.createTable('events', (t) => {
  t.bigIncrements('id');
  t.integer('project_id').unsigned().notNullable();
  t.string('kind', 50).notNullable();
  t.timestamp('at').notNullable().defaultTo(knex.fn.now());
  t.index(['project_id', 'at']);
  t.index('kind');
});
exports.down = (knex) => knex.schema.dropTable('events');`,
};

const seconds = (ms: number) => Math.round(ms / 10) / 100;
const pad = (s: string, n: number) => s.padEnd(n);

async function dropAll(admin: Knex): Promise<number> {
  const [rows] = await admin.raw('select schema_name as name from information_schema.schemata where schema_name like ?', [`${PREFIX}%`]);
  const names = (rows as { name: string }[]).map((r) => r.name);
  for (let i = 0; i < names.length; i += 8) {
    await Promise.all(names.slice(i, i + 8).map((name) => admin.raw('drop database if exists ??', [name])));
  }
  return names.length;
}

/** What an app does without the library: a knex and knex's migrator per tenant, one after the other. */
async function baselineNoop(ids: string[], directory: string): Promise<number> {
  const started = performance.now();
  for (const id of ids) {
    const knex = knexFactory({ client: 'mysql2', connection: connection(PREFIX + id), pool: { min: 0, max: 1 } });
    try {
      await knex.migrate.latest({ directory });
    } finally {
      await knex.destroy();
    }
  }
  return performance.now() - started;
}

function line(report: MigrationReport): string {
  return Object.entries(report.counts)
    .map(([status, n]) => `${status} ${n}`)
    .join(', ');
}

async function main(): Promise<void> {
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'ot-mbench-'));
  for (const [file, body] of Object.entries(MIGRATIONS)) fs.writeFileSync(path.join(directory, file), body);
  const admin = knexFactory({ client: 'mysql2', connection: connection(), pool: { min: 0, max: 8 } });
  const ids = Array.from({ length: TENANTS }, (_, i) => `t${String(i).padStart(4, '0')}`);
  const tenancy = createTenancy({
    knexConfig: (id) => ({ client: 'mysql2', connection: connection(PREFIX + id), pool: { max: 2 } }),
    migrations: { directory },
    listTenants: () => ids,
  });
  try {
    const [[version]] = (await admin.raw('select version() as v')) as [[{ v: string }]];
    const leftovers = await dropAll(admin);
    if (leftovers > 0) console.log(`dropped ${leftovers} leftover ${PREFIX}* databases`);
    let started = performance.now();
    for (let i = 0; i < ids.length; i += 8) {
      await Promise.all(ids.slice(i, i + 8).map((id) => admin.raw('create database ??', [PREFIX + id])));
    }
    const createMs = performance.now() - started;

    started = performance.now();
    const first = await tenancy.migrate.latest({ concurrency: CONCURRENCY });
    const migrateMs = performance.now() - started;
    started = performance.now();
    const again = await tenancy.migrate.latest({ concurrency: CONCURRENCY });
    const noopMs = performance.now() - started;
    const baselineMs = BASELINE ? await baselineNoop(ids, directory) : undefined;

    const failed = first.tenants.filter((t) => t.status === 'failed');
    for (const t of failed.slice(0, 5)) console.log(`failed ${t.tenantId}: ${t.error?.message}`);
    const rows: [string, string, string][] = [
      ['create 1,000 databases (not timed below)', `${seconds(createMs)} s`, ''],
      [`migrate.latest, 3 migrations, concurrency ${CONCURRENCY}`, `${seconds(migrateMs)} s`, line(first)],
      [`migrate.latest again, nothing to apply`, `${seconds(noopMs)} s`, line(again)],
    ];
    if (baselineMs !== undefined) {
      rows.push(['baseline: knex migrate.latest per tenant, sequential, nothing to apply', `${seconds(baselineMs)} s`, `${(baselineMs / noopMs).toFixed(1)}x ours`]);
    }
    console.log(`\nMigrating ${TENANTS} tenant databases: Node ${process.version}, MariaDB ${version.v}, ${os.cpus().length} CPUs\n`);
    for (const [what, time, note] of rows) console.log(`${pad(what, 74)} ${pad(time, 9)} ${note}`);
    console.log(
      `RESULT ${JSON.stringify({
        tenants: TENANTS,
        failed: failed.length,
        migrate_s: seconds(migrateMs),
        noop_s: seconds(noopMs),
        concurrency: CONCURRENCY,
        ...(baselineMs === undefined ? {} : { baseline_noop_s: seconds(baselineMs) }),
      })}`,
    );
  } finally {
    await tenancy.destroy();
    await dropAll(admin).catch((error: unknown) => console.error('cleanup failed:', error));
    await admin.destroy();
    fs.rmSync(directory, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
