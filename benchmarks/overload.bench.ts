/**
 * Overload: far more queries at once than connections, on a real MariaDB. Two scenarios:
 *   burst   BENCH_BURST (20,000) `findById`s at once spread over BENCH_TENANTS (1,000) tenant
 *           databases (a restart under load, a spike across tenants).
 *   flood   BENCH_FLOOD (20,000) at once from ONE tenant (a batch job's `Promise.all`) while 8 other
 *           tenants keep 32 queries in flight: does the flood starve them?
 * Variants:
 *   recipe  the objection recipe: one knex per tenant (knex's default pool, min 2 max 10) in a Map,
 *           `Person.query(knex)`.
 *   shared  ours: `strategy: 'shared'` with its defaults (`qualifyTables`, the 'auto' cold-switch
 *           cap, at most half the connections per tenant), 20 connections, `runWithTenant` per query.
 * Every row read is checked against its tenant. Each cell runs in a process of its own; BENCH_ROUNDS
 * rounds (3), the order reversed every other round. Reported per cell (medians of rounds): queries
 * answered and failed, how long the burst or flood took to drain and at what rate, the Node CPU per
 * query, and in `flood` the other tenants' throughput and p99 latency meanwhile.
 *
 * Run: `npm run bench:overload`. Env: MYSQL_URL (default mysql://root@127.0.0.1:3306/test),
 * BENCH_TENANTS, BENCH_BURST, BENCH_FLOOD, BENCH_ROUNDS, KEEP_DBS=1 (keep the databases).
 * Prints one table, ends with `RESULT {...}`, writes benchmarks/results/overload.json.
 */
import knexFactory, { type Knex } from 'knex';
import mysql from 'mysql2/promise';
import { createTenancy } from './library';
import { Person, TPerson } from './models';
import { mysqlConnection } from '../test/helpers/mysql-url';
import { intEnv, loadAverage, median, runSelfAsChild, writeResults } from './results';

const MYSQL_URL = process.env.MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test';
const TENANTS = intEnv('BENCH_TENANTS', 1_000);
const BURST = intEnv('BENCH_BURST', 20_000);
const FLOOD = intEnv('BENCH_FLOOD', 20_000);
const ROUNDS = intEnv('BENCH_ROUNDS', 3);
const KEEP_DBS = process.env.KEEP_DBS === '1';
const CONNECTIONS = 20;
const ROWS = 10;
const OTHERS = 8;
const OTHERS_IN_FLIGHT = 32;
const PREFIX = 'ot_obench_';
const SCENARIOS = ['burst', 'flood'] as const;
const VARIANTS = ['recipe', 'shared'] as const;
type Scenario = (typeof SCENARIOS)[number];
type Variant = (typeof VARIANTS)[number];

const database = (i: number): string => `${PREFIX}${String(i).padStart(5, '0')}`;
const connection = (db?: string) => mysqlConnection(db, MYSQL_URL);

interface Cell {
  ok: number;
  errors: number;
  wrong: number;
  drainMs: number;
  nodeUs: number;
  othersQps?: number;
  othersP99Ms?: number;
}

type Query = (tenant: number, row: number) => Promise<{ name: string } | undefined>;

function variantOf(variant: Variant): { query: Query; close: () => Promise<unknown> } {
  if (variant === 'recipe') {
    const knexes = new Map<number, Knex>();
    const knexFor = (tenant: number): Knex => {
      let knex = knexes.get(tenant);
      if (knex === undefined) {
        knex = knexFactory({ client: 'mysql2', connection: connection(database(tenant)), log: { warn: () => undefined } });
        knexes.set(tenant, knex);
      }
      return knex;
    };
    return {
      query: async (tenant, row) => (await Person.query(knexFor(tenant)).findById(row)) as { name: string } | undefined,
      close: () => Promise.all([...knexes.values()].map((knex) => knex.destroy().catch(() => undefined))),
    };
  }
  const tenancy = createTenancy({
    strategy: 'shared',
    acquireTimeoutMs: 120_000,
    servers: { main: { client: 'mysql2', connection: connection(), pool: { max: CONNECTIONS } } },
    locate: (id) => ({ server: 'main', database: database(Number(id)) }),
  });
  return {
    query: (tenant, row) => tenancy.runWithTenant(String(tenant), async () => (await TPerson.query().findById(row)) as { name: string } | undefined),
    close: () => tenancy.destroy(),
  };
}

/** In a child process: one cell, printed as one line of JSON. */
async function child(scenario: Scenario, variant: Variant): Promise<void> {
  const { query, close } = variantOf(variant);
  const cell: Cell = { ok: 0, errors: 0, wrong: 0, drainMs: 0, nodeUs: 0 };
  const checked = async (tenant: number, row: number): Promise<void> => {
    try {
      const found = await query(tenant, row);
      if (found?.name === `${database(tenant)}:${row}`) cell.ok++;
      else cell.wrong++;
    } catch {
      cell.errors++;
    }
  };
  // Warm-up: every tenant the scenario touches answers once (handles, pools, the 'auto' read).
  const touched = scenario === 'burst' ? TENANTS : OTHERS + 1;
  for (let t = 1; t <= touched; t++) await checked(t, 1);
  Object.assign(cell, { ok: 0, errors: 0, wrong: 0 });
  const cpu = process.cpuUsage();
  const started = performance.now();
  let queries = 0;
  if (scenario === 'burst') {
    await Promise.all(Array.from({ length: BURST }, (_, i) => checked(1 + (i % TENANTS), 1 + (i % ROWS))));
    queries = BURST;
  } else {
    let flooding = true;
    const latencies: number[] = [];
    const others = Promise.all(
      Array.from({ length: OTHERS_IN_FLIGHT }, async (_, w) => {
        for (let n = 0; flooding; n++) {
          const t0 = performance.now();
          await checked(2 + (w % OTHERS), 1 + (n % ROWS));
          latencies.push(performance.now() - t0);
        }
      }),
    );
    await Promise.all(Array.from({ length: FLOOD }, (_, i) => checked(1, 1 + (i % ROWS))));
    const floodMs = performance.now() - started;
    flooding = false;
    await others;
    latencies.sort((a, b) => a - b);
    cell.othersQps = (latencies.length / floodMs) * 1000;
    cell.othersP99Ms = latencies[Math.floor(latencies.length * 0.99)] ?? Number.NaN;
    queries = FLOOD + latencies.length;
  }
  cell.drainMs = performance.now() - started;
  const used = process.cpuUsage(cpu);
  cell.nodeUs = (used.user + used.system) / queries;
  await close();
  process.stdout.write(`${JSON.stringify(cell)}\n`);
}

async function setUp(admin: mysql.Connection): Promise<void> {
  const [rows] = await admin.query("select count(*) as n from information_schema.schemata where schema_name like 'ot\\_obench\\_%'");
  if ((rows as { n: number }[])[0]!.n === TENANTS) return;
  await dropAll(admin);
  for (let start = 1; start <= TENANTS; start += 100) {
    const statements: string[] = [];
    for (let t = start; t < Math.min(start + 100, TENANTS + 1); t++) {
      const db = database(t);
      const values = Array.from({ length: ROWS }, (_, r) => `(${r + 1}, '${db}:${r + 1}')`).join(', ');
      statements.push(`create database \`${db}\``, `create table \`${db}\`.persons (id int primary key, name varchar(64) not null)`, `insert into \`${db}\`.persons values ${values}`);
    }
    await admin.query(statements.join(';\n'));
  }
}

async function dropAll(admin: mysql.Connection): Promise<void> {
  const [rows] = await admin.query("select schema_name as name from information_schema.schemata where schema_name like 'ot\\_obench\\_%'");
  const names = (rows as { name: string }[]).map((row) => row.name);
  for (let i = 0; i < names.length; i += 200) await admin.query(names.slice(i, i + 200).map((name) => `drop database \`${name}\``).join(';\n'));
}

async function parent(): Promise<void> {
  const loadBefore = loadAverage();
  const admin = await mysql.createConnection({ ...connection(), multipleStatements: true });
  const [[server]] = (await admin.query('select version() as version')) as unknown as [[{ version: string }]];
  try {
    await setUp(admin);
    const cells = new Map<string, Cell[]>();
    for (let round = 0; round < ROUNDS; round++) {
      const order = SCENARIOS.flatMap((scenario) => VARIANTS.map((variant) => [scenario, variant] as const));
      if (round % 2 === 1) order.reverse();
      for (const [scenario, variant] of order) {
        process.stderr.write(`round ${round + 1}/${ROUNDS}: ${scenario} ${variant}... `);
        const cell = await runSelfAsChild<Cell>(`${scenario} ${variant}`, { OT_OVERLOAD_CELL: `${scenario}:${variant}` });
        process.stderr.write(`${cell.ok} ok, ${cell.errors} errors in ${cell.drainMs.toFixed(0)} ms\n`);
        cells.set(`${scenario}/${variant}`, [...(cells.get(`${scenario}/${variant}`) ?? []), cell]);
      }
    }
    const med = (key: string, pick: (cell: Cell) => number | undefined): number => median((cells.get(key) ?? []).map(pick).filter((v): v is number => v !== undefined));
    const sum = (key: string, pick: (cell: Cell) => number): number => (cells.get(key) ?? []).reduce((total, cell) => total + pick(cell), 0);
    console.log(`\nOverload on MariaDB ${server.version}, Node ${process.version}: ${TENANTS} tenant databases, ${CONNECTIONS} shared connections, ${ROUNDS} rounds`);
    console.log(`burst: ${BURST} findById at once over every tenant; flood: ${FLOOD} at once from one tenant, ${OTHERS} others at ${OTHERS_IN_FLIGHT} in flight meanwhile`);
    const header = ['scenario', 'variant', 'ok', 'errors', 'wrong', 'drain ms', 'q/s', 'node us/q', 'others q/s', 'others p99 ms'];
    const widths = [9, 8, 8, 8, 6, 9, 7, 10, 11, 14];
    const line = (cols: string[]): string => cols.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' ');
    console.log(line(header));
    console.log('-'.repeat(line(header).length));
    const result: Record<string, number | null> = { tenants: TENANTS };
    for (const scenario of SCENARIOS) {
      for (const variant of VARIANTS) {
        const key = `${scenario}/${variant}`;
        const total = scenario === 'burst' ? BURST : FLOOD;
        const drainMs = med(key, (cell) => cell.drainMs);
        const others = scenario === 'flood' ? med(key, (cell) => cell.othersQps) : Number.NaN;
        const p99 = scenario === 'flood' ? med(key, (cell) => cell.othersP99Ms) : Number.NaN;
        console.log(
          line([
            scenario, variant, String(sum(key, (c) => c.ok)), String(sum(key, (c) => c.errors)), String(sum(key, (c) => c.wrong)),
            drainMs.toFixed(0), ((total / drainMs) * 1000).toFixed(0), med(key, (cell) => cell.nodeUs).toFixed(0),
            Number.isNaN(others) ? '-' : others.toFixed(0), Number.isNaN(p99) ? '-' : p99.toFixed(1),
          ]),
        );
        const prefix = `${scenario}_${variant}`;
        result[`${prefix}_errors`] = sum(key, (c) => c.errors);
        result[`${prefix}_wrong`] = sum(key, (c) => c.wrong);
        result[`${prefix}_qps`] = Math.round((total / drainMs) * 1000);
        result[`${prefix}_node_us`] = Math.round(med(key, (cell) => cell.nodeUs));
        if (scenario === 'flood') {
          result[`${prefix}_others_qps`] = Math.round(others);
          result[`${prefix}_others_p99_ms`] = Math.round(p99 * 10) / 10;
        }
      }
    }
    console.log('ok/errors/wrong: summed over rounds (wrong: a row of another tenant, or none). drain ms, q/s, node us/q, others: medians of rounds.');
    console.log(`RESULT ${JSON.stringify(result)}`);
    writeResults('overload', {
      mariadb: server.version,
      loadBefore,
      settings: { tenants: TENANTS, burst: BURST, flood: FLOOD, rounds: ROUNDS, connections: CONNECTIONS, others: OTHERS, othersInFlight: OTHERS_IN_FLIGHT },
      result,
    });
  } finally {
    if (KEEP_DBS) process.stderr.write(`KEEP_DBS=1: the ${PREFIX}* databases are kept\n`);
    else await dropAll(admin);
    await admin.end();
  }
}

const cellEnv = process.env.OT_OVERLOAD_CELL;
if (cellEnv !== undefined) {
  const [scenario, variant] = cellEnv.split(':') as [Scenario, Variant];
  child(scenario, variant).then(
    () => process.exit(0),
    (error: unknown) => {
      console.error(error);
      process.exit(1);
    },
  );
} else {
  parent().catch((error: unknown) => {
    console.error(error);
    process.exitCode = 1;
  });
}
