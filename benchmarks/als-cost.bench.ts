/**
 * What AsyncLocalStorage costs a query, on the Node that runs this script: the same objection
 * `findById` (one database of 10 rows, a knex pool of 20, 32 queries in flight, closed loop), each
 * variant in a child process of its own so that none inherits another's promise hooks or JIT state:
 *   plain       `Person.query(knex).findById(id)` in a process that never opens a scope: a
 *               single-tenant app with no AsyncLocalStorage at all (the baseline, 1.0).
 *   scope-on    the same queries, in a process that has opened one tenant scope of the library before
 *               (on Node 20 an AsyncLocalStorage in use adds promise hooks to every promise).
 *   ours        `tenancy.runWithTenant(id, () => TPerson.query().findById(id))`: the library's
 *               implicit scope per query, its pool per tenant (one tenant here).
 * BENCH_ROUNDS rounds (5), the variants' order rotated each round; per cell a BENCH_WARMUP_MS warm-up
 * (1000) then BENCH_CELL_MS (3000) measured. Reported: median queries/s, median Node CPU µs per query,
 * median of per-round ratios to `plain`. Writes benchmarks/results/als-cost-node<major>.json.
 *
 * Run: `npm run bench:als` (Node 20 here); with another Node: `<node> --import tsx benchmarks/als-cost.bench.ts`.
 * Env: MYSQL_URL (default mysql://root@127.0.0.1:3306/test).
 */
import knexFactory, { type Knex } from 'knex';
import { createTenancy } from './library';
import { Person, TPerson } from './models';
import { mysqlConnection } from '../test/helpers/mysql-url';
import { intEnv, loadAverage, median, runSelfAsChild, writeResults } from './results';

const MYSQL_URL = process.env.MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test';
const ROUNDS = intEnv('BENCH_ROUNDS', 5);
const WARMUP_MS = intEnv('BENCH_WARMUP_MS', 1_000);
const CELL_MS = intEnv('BENCH_CELL_MS', 3_000);
const IN_FLIGHT = 32;
const CONNECTIONS = 20;
const ROWS = 10;
const DATABASE = 'ot_alsbench';
const VARIANTS = ['plain', 'scope-on', 'ours'] as const;
type Variant = (typeof VARIANTS)[number];

interface Cell {
  qps: number;
  nodeUs: number;
  errors: number;
}

const connection = (database?: string) => mysqlConnection(database, MYSQL_URL);

/** In a child process: one variant's cell, printed as one line of JSON. */
async function child(variant: Variant): Promise<void> {
  const knex = knexFactory({ client: 'mysql2', connection: connection(DATABASE), pool: { min: 0, max: CONNECTIONS } });
  const tenancy = createTenancy({ knexConfig: () => ({ client: 'mysql2', connection: connection(DATABASE), pool: { min: 0, max: CONNECTIONS } }) });
  if (variant === 'scope-on') await tenancy.runWithTenant('t1', () => undefined);
  const query =
    variant === 'ours'
      ? (id: number) => tenancy.runWithTenant('t1', () => TPerson.query().findById(id))
      : (id: number) => Person.query(knex).findById(id);
  const run = async (ms: number): Promise<Cell> => {
    let done = 0;
    let errors = 0;
    const cpu = process.cpuUsage();
    const started = performance.now();
    const end = started + ms;
    await Promise.all(
      Array.from({ length: IN_FLIGHT }, async () => {
        while (performance.now() < end) {
          const id = 1 + (done % ROWS);
          const row = await query(id).catch(() => undefined);
          if (row?.name === `row-${id}`) done++;
          else errors++;
        }
      }),
    );
    const used = process.cpuUsage(cpu);
    return { qps: (done * 1000) / (performance.now() - started), nodeUs: (used.user + used.system) / Math.max(1, done + errors), errors };
  };
  await run(WARMUP_MS);
  const cell = await run(CELL_MS);
  await tenancy.destroy();
  await knex.destroy();
  process.stdout.write(`${JSON.stringify(cell)}\n`);
}

async function setUp(admin: Knex): Promise<string> {
  await admin.raw('create database if not exists ??', [DATABASE]);
  await admin.raw('drop table if exists ??.persons', [DATABASE]);
  await admin.raw('create table ??.persons (id int not null primary key, name varchar(64) not null)', [DATABASE]);
  await admin.withSchema(DATABASE).table('persons').insert(Array.from({ length: ROWS }, (_, i) => ({ id: i + 1, name: `row-${i + 1}` })));
  const [rows] = (await admin.raw('select version() as v')) as [{ v: string }[]];
  return rows[0]!.v;
}

async function main(): Promise<void> {
  const admin = knexFactory({ client: 'mysql2', connection: connection(), pool: { min: 0, max: 1 } });
  const loadBefore = loadAverage();
  try {
    const mariadb = await setUp(admin);
    const cells = new Map<Variant, Cell[]>(VARIANTS.map((v) => [v, []]));
    for (let r = 0; r < ROUNDS; r++) {
      const order = VARIANTS.map((_, i) => VARIANTS[(i + r) % VARIANTS.length]!);
      for (const variant of order) {
        process.stderr.write(`round ${r + 1}/${ROUNDS}: ${variant}... `);
        const cell = await runSelfAsChild<Cell>(variant, { ALS_BENCH_CHILD: variant });
        process.stderr.write(`${cell.qps.toFixed(0)} q/s, ${cell.nodeUs.toFixed(0)} µs/q\n`);
        cells.get(variant)!.push(cell);
      }
    }
    const ratio = (variant: Variant) => median(cells.get(variant)!.map((cell, r) => cell.qps / cells.get('plain')![r]!.qps));
    console.log(`\nAsyncLocalStorage's cost per query, Node ${process.version}, MariaDB ${mariadb}; ${ROUNDS} rounds, ${IN_FLIGHT} in flight, ${CONNECTIONS} connections, one process per cell`);
    console.log(`${'variant'.padEnd(10)}  ${'q/s'.padStart(7)}  ${'node us/q'.padStart(9)}  ${'vs plain'.padStart(8)}  errors`);
    const result: Record<string, number> = {};
    for (const variant of VARIANTS) {
      const runs = cells.get(variant)!;
      const qps = median(runs.map((c) => c.qps));
      const nodeUs = median(runs.map((c) => c.nodeUs));
      const errors = runs.reduce((n, c) => n + c.errors, 0);
      console.log(`${variant.padEnd(10)}  ${qps.toFixed(0).padStart(7)}  ${nodeUs.toFixed(1).padStart(9)}  ${ratio(variant).toFixed(3).padStart(8)}  ${errors}`);
      const key = variant.replace('-', '_');
      Object.assign(result, { [`${key}_qps`]: Math.round(qps), [`${key}_node_us_per_query`]: Math.round(nodeUs * 10) / 10, [`${key}_ratio`]: Math.round(ratio(variant) * 1000) / 1000, [`${key}_errors`]: errors });
    }
    console.log(`RESULT ${JSON.stringify(result)}`);
    writeResults(`als-cost-node${process.versions.node.split('.')[0]}`, { mariadb, loadBefore, settings: { rounds: ROUNDS, warmupMs: WARMUP_MS, cellMs: CELL_MS, inFlight: IN_FLIGHT, connections: CONNECTIONS }, result });
  } finally {
    await admin.raw('drop database if exists ??', [DATABASE]);
    await admin.destroy();
  }
}

const CHILD = process.env.ALS_BENCH_CHILD as Variant | undefined;
(CHILD !== undefined ? child(CHILD) : main()).catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
