/**
 * The shared strategy's three ways of reaching a tenant's database, against a share of raw SQL that
 * names no database: which to choose when part of an app's queries do not go through its models.
 *
 * BENCH_TENANTS tenant databases (200) on one MariaDB, uniform popularity, 32 queries in flight over
 * 20 connections, each query in its own `runWithTenant`: a model `findById` or, with probability
 * `raw share`, `knex.raw('select name from persons where id = 1')` (no database named). Variants:
 *   single      reference: one database, plain knex and objection (`Person.query(knex)`), same pool.
 *   shared      ours, `qualifyTables: false`: a `USE` round trip when a connection changes tenant (the
 *               default before stop 16; the name is kept so that results compare).
 *   inline      ours, `qualifyTables: false, inlineSwitch: true`: the `USE` travels with the statement.
 *   qualified   ours, `qualifyTables` (the default since stop 16, here with no cold-switch cap, which
 *               200 warm tenants would not reach): model queries name the database and run on connections with no
 *               current database; raw SQL is refused there and sent again after a `USE`. A connection
 *               left switched that way is taken back to no database when another tenant takes it,
 *               while few statements are refused (lib/affinity-pool.ts, RESTORE_BELOW).
 *   qualified-inline  both options: model queries as in `qualified`; a connection that must be switched
 *               (it was left on another tenant's database) gets its `USE` with the next statement.
 * Every answer is checked against the tenant's own row (a wrong row is counted and printed).
 * BENCH_ROUNDS rounds (8) of BENCH_CELL_MS (3000) per cell after BENCH_WARMUP_MS (500), the order
 * reversed every other round; each cell opens a new tenancy. Reported: median queries/s, the median of
 * per-round ratios to `single`, and the qualified cells' switches, refusals and restores.
 *
 * Run: `npm run bench:raw-mix`. Prints one table, ends with `RESULT {...}`, writes results/raw-mix.json.
 * Env: MYSQL_URL, BENCH_TENANTS, BENCH_ROUNDS, BENCH_CELL_MS, BENCH_WARMUP_MS, BENCH_SHARES (comma list
 * of raw shares, default 0,0.02,0.05,0.1,0.2,0.5), BENCH_VARIANTS (comma list, default all; `single` is
 * needed for the ratios), KEEP_DBS=1 (keep the databases).
 */
import knexFactory, { type Knex } from 'knex';
import { createTenancy } from './library';
import type { Tenancy, TenancyOptions } from '../lib/index';
import { Person, TPerson } from './models';
import { intEnv, loadAverage, median, writeResults } from './results';
import { mysqlConnection } from '../test/helpers/mysql-url';

const TENANTS = intEnv('BENCH_TENANTS', 200);
const ROUNDS = intEnv('BENCH_ROUNDS', 8);
const CELL_MS = intEnv('BENCH_CELL_MS', 3000);
const WARMUP_MS = intEnv('BENCH_WARMUP_MS', 500);
const SHARES = (process.env.BENCH_SHARES ?? '0,0.02,0.05,0.1,0.2,0.5').split(',').map(Number);
const KEEP_DBS = process.env.KEEP_DBS === '1';
const IN_FLIGHT = 32;
const CONNECTIONS = 20;
const PREFIX = 'ot_rbench_';
const VARIANTS = (process.env.BENCH_VARIANTS ?? 'single,shared,inline,qualified,qualified-inline').split(',') as Variant[];
const ALL_VARIANTS = ['single', 'shared', 'inline', 'qualified', 'qualified-inline'] as const;
type Variant = (typeof ALL_VARIANTS)[number];
for (const variant of VARIANTS) if (!(ALL_VARIANTS as readonly string[]).includes(variant)) throw new Error(`BENCH_VARIANTS: unknown variant ${variant}`);
if (!VARIANTS.includes('single')) throw new Error('BENCH_VARIANTS must include single (the ratios are to it)');

const db = (i: number) => `${PREFIX}${i}`;
const { database: _database, ...server } = mysqlConnection();
void _database;

interface Cell {
  qps: number;
  wrong: number;
  counters: Record<string, number>;
}

async function setUp(): Promise<void> {
  const admin = knexFactory({ client: 'mysql2', connection: { ...server, multipleStatements: true }, pool: { min: 0, max: 1 } });
  try {
    for (let i = 0; i < TENANTS; i++) {
      const d = db(i);
      await admin.raw(
        `drop database if exists ${d}; create database ${d}; create table ${d}.persons (id int primary key, name varchar(40)); ` +
          `insert into ${d}.persons values (1, 't${i}'), (2, 't${i}-2')`,
      );
    }
    await admin.raw(`drop database if exists ${PREFIX}single; create database ${PREFIX}single; create table ${PREFIX}single.persons (id int primary key, name varchar(40)); insert into ${PREFIX}single.persons values (1, 'single')`);
  } finally {
    await admin.destroy();
  }
}

async function dropAll(): Promise<void> {
  const admin = knexFactory({ client: 'mysql2', connection: server, pool: { min: 0, max: 1 } });
  try {
    for (let i = 0; i < TENANTS; i++) await admin.raw('drop database if exists ??', [db(i)]);
    await admin.raw('drop database if exists ??', [`${PREFIX}single`]);
  } finally {
    await admin.destroy();
  }
}

/** Runs `query` from IN_FLIGHT workers for WARMUP_MS, then counts answers for CELL_MS. */
async function drive(query: (tenant: number, raw: boolean) => Promise<boolean>, share: number): Promise<{ qps: number; wrong: number }> {
  let counting = false;
  let stop = false;
  let ok = 0;
  let wrong = 0;
  const worker = async () => {
    while (!stop) {
      const tenant = Math.floor(Math.random() * TENANTS);
      const right = await query(tenant, Math.random() < share);
      if (!counting) continue;
      if (right) ok++;
      else wrong++;
    }
  };
  const workers = Array.from({ length: IN_FLIGHT }, worker);
  await new Promise((resolve) => setTimeout(resolve, WARMUP_MS));
  counting = true;
  const started = process.hrtime.bigint();
  await new Promise((resolve) => setTimeout(resolve, CELL_MS));
  counting = false;
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  stop = true;
  await Promise.all(workers);
  return { qps: ok / seconds, wrong };
}

async function runCell(variant: Variant, share: number): Promise<Cell> {
  if (variant === 'single') {
    const knex: Knex = knexFactory({ client: 'mysql2', connection: { ...server, database: `${PREFIX}single` }, pool: { min: 0, max: CONNECTIONS } });
    try {
      const result = await drive(async (_tenant, raw) => {
        if (raw) return ((await knex.raw('select name from persons where id = 1')) as [{ name: string }[]])[0][0]!.name === 'single';
        return (await Person.query(knex).findById(1))?.name === 'single';
      }, share);
      return { ...result, counters: {} };
    } finally {
      await knex.destroy();
    }
  }
  const options: Partial<TenancyOptions> = {
    shared: { qualifyTables: false, maxSwitchedConnections: Infinity },
    inline: { qualifyTables: false, inlineSwitch: true, maxSwitchedConnections: Infinity },
    qualified: { qualifyTables: true, maxSwitchedConnections: Infinity },
    'qualified-inline': { qualifyTables: true, inlineSwitch: true, maxSwitchedConnections: Infinity },
  }[variant];
  const tenancy: Tenancy = createTenancy({
    strategy: 'shared',
    servers: { main: { client: 'mysql2', connection: { ...server }, pool: { max: CONNECTIONS } } },
    locate: (id) => ({ server: 'main', database: db(Number(id)) }),
    verifyConnection: false,
    ...options,
  });
  try {
    const result = await drive(
      (tenant, raw) =>
        tenancy.runWithTenant(String(tenant), async () => {
          if (raw) return ((await tenancy.knex().raw('select name from persons where id = 1')) as [{ name: string }[]])[0][0]!.name === `t${tenant}`;
          return (await TPerson.query().findById(1))?.name === `t${tenant}`;
        }),
      share,
    );
    const s = tenancy.stats().servers!.main!;
    return { ...result, counters: { switches: s.switches, cleanHits: s.cleanHits, refused: s.qualifyRetries, restores: s.restores, affinityHits: s.affinityHits } };
  } finally {
    await tenancy.destroy();
  }
}

async function main(): Promise<void> {
  const loadBefore = loadAverage();
  process.stderr.write(`load average ${loadBefore}; setting up ${TENANTS} tenant databases...\n`);
  await setUp();
  const cells = new Map<string, Cell[]>();
  const key = (variant: Variant, share: number) => `${variant}/${share}`;
  try {
    for (let round = 0; round < ROUNDS; round++) {
      for (const share of round % 2 === 0 ? SHARES : [...SHARES].reverse()) {
        for (const variant of round % 2 === 0 ? VARIANTS : [...VARIANTS].reverse()) {
          const cell = await runCell(variant, share);
          process.stderr.write(`round ${round + 1}/${ROUNDS}: ${variant} raw ${share}... ${Math.round(cell.qps)} q/s${cell.wrong > 0 ? `, ${cell.wrong} WRONG` : ''}\n`);
          const list = cells.get(key(variant, share)) ?? [];
          list.push(cell);
          cells.set(key(variant, share), list);
        }
      }
    }
  } finally {
    if (KEEP_DBS) process.stderr.write(`KEEP_DBS=1: the ${PREFIX}* databases are kept\n`);
    else await dropAll();
  }

  const result: Record<string, number> = {};
  const lines: string[] = [];
  lines.push(`\nThe shared strategy with a share of raw SQL naming no database: ${TENANTS} tenant databases, uniform, ${IN_FLIGHT} in flight, ${CONNECTIONS} connections, ${ROUNDS} rounds x ${CELL_MS} ms`);
  lines.push(`${'raw share'.padEnd(10)}${'variant'.padEnd(18)}${'q/s'.padStart(8)}${'vs single'.padStart(11)}${'wrong'.padStart(7)}   per query: switches, refused, restores (qualified: connections taken back to no database)`);
  let wrongTotal = 0;
  for (const share of SHARES) {
    const singles = cells.get(key('single', share))!;
    for (const variant of VARIANTS) {
      const runs = cells.get(key(variant, share))!;
      const ratio = median(runs.map((run, i) => run.qps / singles[i]!.qps));
      const qps = median(runs.map((run) => run.qps));
      const wrong = runs.reduce((n, run) => n + run.wrong, 0);
      wrongTotal += wrong;
      const c = (name: string) => runs.reduce((n, run) => n + (run.counters[name] ?? 0), 0);
      const served = c('switches') - c('refused') + c('affinityHits') + c('cleanHits');
      const per = (name: string) => (served > 0 ? (c(name) / served).toFixed(3) : '-');
      const detail = variant === 'single' ? '' : `${per('switches')}, ${per('refused')}, ${per('restores')}`;
      lines.push(`${String(share).padEnd(10)}${variant.padEnd(18)}${Math.round(qps).toString().padStart(8)}${ratio.toFixed(3).padStart(11)}${String(wrong).padStart(7)}   ${detail}`);
      if (variant !== 'single') result[`${variant.replace('-', '_')}_ratio_raw_${share}`] = Number(ratio.toFixed(3));
    }
  }
  lines.push('vs single: median of the per-round ratios to one database through plain knex under the same share. Per query: over the');
  lines.push('acquires counted by the pool (all of a cell, warm-up included). wrong: answers with another tenant\'s row or none.');
  result.wrong = wrongTotal;
  process.stdout.write(`${lines.join('\n')}\n`);
  const [versionRows] = (await (async () => {
    const admin = knexFactory({ client: 'mysql2', connection: server, pool: { min: 0, max: 1 } });
    try {
      return await admin.raw('select version() as v');
    } finally {
      await admin.destroy();
    }
  })()) as [{ v: string }[]];
  writeResults('raw-mix', {
    mariadb: versionRows[0]!.v,
    loadBefore,
    settings: { tenants: TENANTS, rounds: ROUNDS, cellMs: CELL_MS, warmupMs: WARMUP_MS, shares: SHARES, inFlight: IN_FLIGHT, connections: CONNECTIONS, variants: VARIANTS },
    result,
  });
  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
  if (wrongTotal > 0) process.exitCode = 1;
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
