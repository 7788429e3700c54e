/**
 * Overhead of the implicit tenant scope on the hottest path there is: `findById` of a random id.
 *
 * Compares, in one process run, with one pool of 10 connections per variant:
 *   1. raw mysql2 (promise pool, `query`)
 *   2. knex alone
 *   3. `Person.query(knex)`              (objection docs: pass the knex to every query)
 *   3'. the same with the library's AsyncLocalStorage disabled for the cell: what a process that never
 *       opens a tenant scope pays (on Node 20 an enabled AsyncLocalStorage adds promise hooks to every
 *       promise of the process, variant 3 included, so the 5-vs-3 ratio alone hides that cost)
 *   4. `Person.bindKnex(knex).query()`   (objection docs: a bound class, created once)
 *   5. `TPerson.query()` inside one tenant scope per worker (one scope per request, the real shape)
 *   6. `runWithTenant(id, () => TPerson.query())` per query (shows the cost of entering a scope)
 * at 1 and 32 queries in flight (closed loop: N workers, each awaits one query at a time).
 * Many short rounds interleave the variants (rotated order) to damp drift and noisy neighbours; the
 * process CPU time per op is reported beside the wall time because it is far less sensitive to other
 * load on the machine. No forced GC between cells: on Node 20 a `gc()` before each cell made every
 * variant's next half second about 4x more CPU-hungry, which measures the collector, not the query path.
 *
 * Run: `npm run bench:overhead`. Env: MYSQL_URL (default mysql://root@127.0.0.1:3306/test),
 * BENCH_ROUNDS (15), BENCH_CELL_MS (300), BENCH_WARMUP_MS (500).
 * Prints one table and ends with one line `RESULT {...}`: time per op of variant 5 over variant 3; writes
 * it to benchmarks/results/overhead.json.
 */
import os from 'node:os';
import knexFactory, { type Knex } from 'knex';
import mysql from 'mysql2/promise';
import { createTenancy } from './library';
import { Person, TPerson } from './models';
// Internal: only to switch the library's AsyncLocalStorage off for variant 3'.
import { globalState } from '../lib/scope';
import { intEnv, median, writeResults } from './results';
import { mysqlConnection } from '../test/helpers/mysql-url';

const MYSQL_URL = process.env.MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test';
const DATABASE = 'ot_bench_overhead';
const TENANT = 'bench';
const ROWS = 1000;
const POOL_MAX = 10;
const CONCURRENCIES = [1, 32] as const;
const ROUNDS = intEnv('BENCH_ROUNDS', 15);
const CELL_MS = intEnv('BENCH_CELL_MS', 300);
const WARMUP_MS = intEnv('BENCH_WARMUP_MS', 500);

const connection = (database?: string) => mysqlConnection(database, MYSQL_URL);

/** Every knex variant, the tenancy's included, gets its own pool with these settings. */
function knexConfig(): Knex.Config {
  return { client: 'mysql2', connection: connection(DATABASE), pool: { min: 0, max: POOL_MAX } };
}

interface Row {
  id: number;
  name: string;
}

interface Variant {
  readonly key: string;
  readonly label: string;
  /** One `findById`. */
  once(id: number): PromiseLike<Row | undefined>;
  /** Wraps a worker's whole loop (variant 5: one tenant scope per worker, like one per request). */
  around?(loop: () => Promise<void>): Promise<void>;
  /** Runs with the library's AsyncLocalStorage disabled (variant 3'). */
  withoutAls?: boolean;
}

interface Cell {
  /** Nanoseconds per op (wall time / ops) of each round. */
  nsPerOp: number[];
  /** Process CPU nanoseconds (user + system) per op of each round. */
  cpuNsPerOp: number[];
  opsPerSec: number[];
  /** Every measured query latency, ns, all rounds. */
  latencies: number[];
}

async function setUp(): Promise<string> {
  const admin = await mysql.createConnection(connection());
  try {
    const [[{ version }]] = (await admin.query('select version() as version')) as unknown as [[{ version: string }]];
    await admin.query(`drop database if exists \`${DATABASE}\``);
    await admin.query(`create database \`${DATABASE}\` character set utf8mb4`);
    await admin.query(
      `create table \`${DATABASE}\`.persons (id int not null auto_increment primary key, name varchar(255) not null)`,
    );
    const values = Array.from({ length: ROWS }, (_, i) => [`person-${i + 1}`]);
    await admin.query(`insert into \`${DATABASE}\`.persons (name) values ?`, [values]);
    return version;
  } finally {
    await admin.end();
  }
}

async function dropDatabase(): Promise<void> {
  const admin = await mysql.createConnection(connection());
  try {
    await admin.query(`drop database if exists \`${DATABASE}\``);
  } finally {
    await admin.end();
  }
}

/** Runs `concurrency` closed-loop workers for `ms`; returns wall ns and pushes each latency. */
async function runCell(
  variant: Variant,
  concurrency: number,
  ms: number,
  latencies: number[] | undefined,
): Promise<{ ns: number; cpuNs: number; ops: number }> {
  let ops = 0;
  const cpuStart = process.cpuUsage();
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(ms) * 1_000_000n;
  const loop = async (): Promise<void> => {
    let now = process.hrtime.bigint();
    while (now < deadline) {
      const id = 1 + Math.floor(Math.random() * ROWS);
      const t0 = now;
      await variant.once(id);
      now = process.hrtime.bigint();
      ops++;
      latencies?.push(Number(now - t0));
    }
  };
  const workers: Promise<void>[] = [];
  for (let i = 0; i < concurrency; i++) workers.push(variant.around ? variant.around(loop) : loop());
  await Promise.all(workers);
  const ns = Number(process.hrtime.bigint() - start);
  const cpu = process.cpuUsage(cpuStart);
  return { ns, cpuNs: (cpu.user + cpu.system) * 1000, ops };
}

function percentile(values: readonly number[], q: number): number {
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

function pad(text: string, width: number, right = false): string {
  return right ? text.padStart(width) : text.padEnd(width);
}

async function main(): Promise<void> {
  const mariadbVersion = await setUp();

  const rawPool = mysql.createPool({ ...connection(DATABASE), connectionLimit: POOL_MAX });
  const knexAlone = knexFactory(knexConfig());
  const knexPassing = knexFactory(knexConfig());
  const knexBound = knexFactory(knexConfig());
  const BoundPerson = Person.bindKnex(knexBound);
  const tenancy = createTenancy({ knexConfig: () => knexConfig() });

  const variants: Variant[] = [
    {
      key: 'raw',
      label: '1 raw mysql2 pool.query',
      async once(id) {
        const [rows] = await rawPool.query<mysql.RowDataPacket[]>('select * from `persons` where `id` = ? limit 1', [id]);
        return rows[0] as Row | undefined;
      },
    },
    {
      key: 'knex',
      label: "2 knex('persons').first()",
      once: (id) => knexAlone<Row>('persons').where({ id }).first(),
    },
    {
      key: 'passing',
      label: '3 Person.query(knex)',
      once: (id) => Person.query(knexPassing).findById(id),
    },
    {
      key: 'passingNoAls',
      label: "3' Person.query(knex) no ALS",
      once: (id) => Person.query(knexPassing).findById(id),
      withoutAls: true,
    },
    {
      key: 'bindKnex',
      label: '4 Person.bindKnex(knex)',
      once: (id) => BoundPerson.query().findById(id),
    },
    {
      key: 'implicit',
      label: '5 TPerson.query() in scope',
      once: (id) => TPerson.query().findById(id),
      around: (loop) => tenancy.runWithTenant(TENANT, loop),
    },
    {
      key: 'scopePerQuery',
      label: '6 runWithTenant per query',
      once: (id) => tenancy.runWithTenant(TENANT, () => TPerson.query().findById(id)),
    },
  ];

  // Before each cell: the AsyncLocalStorage on (a scope opened once turns it on) or off (variant 3').
  const prepare = async (variant: Variant): Promise<void> => {
    if (variant.withoutAls) globalState.storage.disable();
    else await tenancy.runWithTenant(TENANT, () => undefined);
  };
  const measure = async (variant: Variant, c: number, ms: number, latencies?: number[]) => {
    await prepare(variant);
    return runCell(variant, c, ms, latencies);
  };

  try {
    // Every variant must read the right row, and the implicit ones must go through the tenancy's pool.
    for (const variant of variants) {
      const check = variant.around ? await tenancy.runWithTenant(TENANT, () => variant.once(7)) : await variant.once(7);
      if (check?.id !== 7 || check.name !== 'person-7') throw new Error(`${variant.label}: wrong row ${JSON.stringify(check)}`);
    }
    if (tenancy.stats().created !== 1) throw new Error('the implicit variants did not open the tenant pool');

    const cells = new Map<string, Cell>();
    for (const variant of variants) {
      for (const c of CONCURRENCIES) cells.set(`${variant.key}@${c}`, { nsPerOp: [], cpuNsPerOp: [], opsPerSec: [], latencies: [] });
    }
    const loadBefore = os.loadavg()[0]!;

    const started = Date.now();
    process.stderr.write(`warm-up: ${variants.length * CONCURRENCIES.length} cells x ${WARMUP_MS} ms\n`);
    for (const c of [...CONCURRENCIES].reverse()) {
      for (const variant of variants) await measure(variant, c, WARMUP_MS);
    }
    for (let round = 0; round < ROUNDS; round++) {
      process.stderr.write(`round ${round + 1}/${ROUNDS}\n`);
      // Rotate the order each round so no variant always follows the same neighbour.
      const order = variants.map((_, i) => variants[(i + round) % variants.length]!);
      const concurrencies = round % 2 === 0 ? CONCURRENCIES : [...CONCURRENCIES].reverse();
      for (const c of concurrencies) {
        for (const variant of order) {
          const cell = cells.get(`${variant.key}@${c}`)!;
          const { ns, cpuNs, ops } = await measure(variant, c, CELL_MS, cell.latencies);
          cell.nsPerOp.push(ns / ops);
          cell.cpuNsPerOp.push(cpuNs / ops);
          cell.opsPerSec.push((ops * 1e9) / ns);
        }
      }
    }
    const seconds = ((Date.now() - started) / 1000).toFixed(0);
    const loadAfter = os.loadavg()[0]!;

    const perOp = (key: string, c: number, what: 'nsPerOp' | 'cpuNsPerOp' = 'nsPerOp'): number => median(cells.get(`${key}@${c}`)![what]);
    const ratio = (key: string, c: number, base = 'passing', what: 'nsPerOp' | 'cpuNsPerOp' = 'nsPerOp'): number =>
      perOp(key, c, what) / perOp(base, c, what);

    const cpu = os.cpus();
    console.log('');
    console.log('objection-tenancy overhead: findById of a random id (1000 rows), one pool of 10 per variant');
    console.log(
      `Node ${process.version}, MariaDB ${mariadbVersion}, knex ${versionOf('knex')}, objection ${versionOf('objection')}, ` +
        `mysql2 ${versionOf('mysql2')}`,
    );
    console.log(
      `${os.platform()} ${os.arch()}, ${cpu.length} x ${cpu[0]?.model.trim() ?? 'unknown CPU'} (shared with the database server); ` +
        `load average ${loadBefore.toFixed(2)} before, ${loadAfter.toFixed(2)} after`,
    );
    console.log(`${ROUNDS} rounds x ${CELL_MS} ms per cell after ${WARMUP_MS} ms warm-up; medians across rounds; latency over all rounds; ${seconds} s`);
    console.log('');
    const header = [
      pad('variant', 28),
      pad('in flight', 9, true),
      pad('ops/s', 9, true),
      pad('iqr', 7, true),
      pad('us/op', 8, true),
      pad('cpu us/op', 9, true),
      pad('p50 us', 8, true),
      pad('p99 us', 8, true),
      pad('vs (3)', 7, true),
      pad('cpu vs (3)', 10, true),
    ].join('  ');
    console.log(header);
    console.log('-'.repeat(header.length));
    for (const c of CONCURRENCIES) {
      for (const variant of variants) {
        const cell = cells.get(`${variant.key}@${c}`)!;
        const ops = median(cell.opsPerSec);
        const spread = (percentile(cell.opsPerSec, 0.75) - percentile(cell.opsPerSec, 0.25)) / ops;
        console.log(
          [
            pad(variant.label, 28),
            pad(String(c), 9, true),
            pad(ops.toFixed(0), 9, true),
            pad(`${(spread * 100).toFixed(1)}%`, 7, true),
            pad((median(cell.nsPerOp) / 1000).toFixed(1), 8, true),
            pad((median(cell.cpuNsPerOp) / 1000).toFixed(1), 9, true),
            pad((percentile(cell.latencies, 0.5) / 1000).toFixed(0), 8, true),
            pad((percentile(cell.latencies, 0.99) / 1000).toFixed(0), 8, true),
            pad(ratio(variant.key, c).toFixed(3), 7, true),
            pad(ratio(variant.key, c, 'passing', 'cpuNsPerOp').toFixed(3), 10, true),
          ].join('  '),
        );
      }
      console.log('');
    }
    console.log('us/op = wall time / ops (1 / throughput); cpu us/op = this process\'s CPU time / ops (the database');
    console.log('server\'s is not counted); iqr = interquartile range / median of ops/s across rounds; vs (3) = us/op over');
    console.log('that of Person.query(knex) at the same concurrency, cpu vs (3) the same for cpu us/op (lower is better).');
    console.log('');
    const result = {
      implicit_vs_passing_c1: round3(ratio('implicit', 1)),
      implicit_vs_passing_c32: round3(ratio('implicit', 32)),
      scope_per_query_vs_passing_c1: round3(ratio('scopePerQuery', 1)),
      scope_per_query_vs_passing_c32: round3(ratio('scopePerQuery', 32)),
      implicit_vs_passing_no_als_c1: round3(ratio('implicit', 1, 'passingNoAls')),
      implicit_vs_passing_no_als_c32: round3(ratio('implicit', 32, 'passingNoAls')),
      implicit_vs_passing_cpu_c1: round3(ratio('implicit', 1, 'passing', 'cpuNsPerOp')),
      implicit_vs_passing_cpu_c32: round3(ratio('implicit', 32, 'passing', 'cpuNsPerOp')),
      bindknex_vs_passing_c1: round3(ratio('bindKnex', 1)),
      bindknex_vs_passing_c32: round3(ratio('bindKnex', 32)),
    };
    console.log(`RESULT ${JSON.stringify(result)}`);
    writeResults('overhead', {
      mariadb: mariadbVersion,
      loadBefore: loadBefore.toFixed(2),
      settings: { rows: ROWS, poolMax: POOL_MAX, concurrencies: CONCURRENCIES, rounds: ROUNDS, cellMs: CELL_MS, warmupMs: WARMUP_MS },
      result,
    });
  } finally {
    await Promise.allSettled([rawPool.end(), knexAlone.destroy(), knexPassing.destroy(), knexBound.destroy(), tenancy.destroy()]);
    await dropDatabase();
  }
}

function round3(value: number): number {
  return Math.round(value * 1000) / 1000;
}

function versionOf(name: string): string {
  return (require(`${name}/package.json`) as { version: string }).version;
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
