/**
 * Thousands of tenants (GitHub issue "Thousands of tenants"): 10,000 tenant databases on one MariaDB
 * server with its default settings (`max_connections` 151), served by one Node process.
 *
 * Variants, each under uniform and Zipf(s = 1.1) tenant popularity over every tenant, at 32 queries in
 * flight (closed loop: 32 workers, each awaits one query at a time), `findById` of one of the tenant's
 * 10 rows, one tenant scope per query (as one request would):
 *   recipe      the objection-docs pattern, its cache fixed so that it hits: one knex per tenant with
 *               knex's default pool (min 2, max 10) in a Map, never evicted, `Person.query(knex)`. It
 *               runs out of server connections: its "Too many connections" errors are counted.
 *   budget      strategy 'pool-per-tenant', `maxConnections: 20`, `pool.max: 2`, `overflow: 'wait'`,
 *               `maxPools: 50` (see MAX_POOLS).
 *   shared      strategy 'shared' with its defaults: one server, `pool: { max: 20 }`, default
 *               per-tenant cap (10); model queries name the tenant's database on connections with no
 *               current database (`qualifyTables`, on by default), and cold tenants' table opens are
 *               capped at three connections per server core (`maxSwitchedConnections: 'auto'`).
 *               RESULT's `shared_*` keys.
 *   shared-use  `qualifyTables: false, maxSwitchedConnections: Infinity`: every change of tenant a
 *               `USE` round trip, no cap (the defaults before stop 16).
 *   shared-inline  shared-use with `inlineSwitch: true` (a switch's USE sent with the query).
 *   shared-tuned   shared-inline plus `maxSwitchedConnections: 4` (BENCH_MAX_SWITCHED): at
 *               most 4 connections at once serve a tenant the pool has not used lately (a cold switch,
 *               which makes the server open that tenant's table).
 *   shared-reset   shared-inline plus `resetSession: true`: a session reset (COM_RESET_CONNECTION, one
 *               round trip) each time a connection passes to another tenant: what that safety costs.
 *   shared-qualified  `qualifyTables` with no cap (`maxSwitchedConnections: Infinity`).
 *   shared-qualified-tuned  `qualifyTables` with `maxSwitchedConnections: 4` (BENCH_MAX_SWITCHED) and
 *               its 256 warm databases, where the default sizes both from the server.
 *   orm-qualified  a reference row, not a design: every tenant over one plain knex pool of 20 with no
 *               `USE` at all, `Person.query(knex).withSchema(db).findById(row)`: the bound of a shared
 *               pool that sends no switch (unsafe as it stands: an unqualified table would read the
 *               connection's database).
 *   single      the baseline: ONE tenant database, a plain knex with a pool of 20, `Person.query(knex)`:
 *               single-tenant throughput over the same number of connections, in the same run. It runs in
 *               this process, where the library's AsyncLocalStorage is on (as in an app that uses the
 *               library, or any other AsyncLocalStorage: tracing, request logging).
 *   single-plain  `single` in a child process of its own that never opens a scope: a single-tenant app
 *               with no AsyncLocalStorage at all. On Node 20 an AsyncLocalStorage in use adds promise
 *               hooks to every promise of the process; this row measures what that costs the baseline
 *               (RESULT's `*_vs_plain` keys are ratios to it).
 *   raw-one,    reference rows for the server alone: a raw mysql2 pool of 20, fully qualified `select`
 *   raw-spread  (no ORM, no USE), on one database or spread over every tenant: how much the server
 *               itself slows down when the same queries touch 10,000 tables instead of one.
 * Tenant variants go through `tenancy.runWithTenant(id, () => TPerson.query().findById(row))`, where
 * `TPerson extends TenantModel`. Every row read is checked against its tenant (`name` is
 * `<tenant>:<id>`), so a row of another tenant counts as an error.
 *
 * Per cell: errors, throughput, ratio to `single` under the same popularity, p50/p99 latency of the
 * successful queries, CPU per query of this process and of the server (from /proc when the server runs
 * here), peak server connections (`Threads_connected` sampled every 20 ms on its own connection, minus
 * its value before the cell, less the connections other clients hold at each sample, from the
 * processlist: the machine is shared), cached tenants and heap per cached tenant ((heapUsed after the cell -
 * heapUsed before the variant was created) / cached tenants, both after a forced GC). The shared
 * variant first opens every tenant with `runWithTenant(id, () => 0)` (each first open runs its
 * `select 1` check), which gives a second heap figure before any traffic, and then measures the steady
 * state; the other variants open tenants as traffic reaches them, after a warm-up.
 *
 * Cells run one at a time: each variant is created for its cell and closed after it, and the server's
 * connection count is back to its baseline before the next cell. BENCH_ROUNDS rounds; within each
 * popularity the variants run in the orders of a Williams design (each variant right after each
 * other one equally often over n rounds for n variants, 2n for odd n: see roundOrder), or with
 * BENCH_ORDER=alternate in one order reversed every other round (before stop 16); throughput is the
 * median of the rounds, ratios the median of per-round ratios (the machine is shared: rounds damp
 * bursts of other load). The headline ratios (shared against single and against single-plain, and the
 * library-free orm-qualified against single-plain) are printed again with a distribution-free interval
 * of their median (order statistics: 96% coverage at 12 rounds; below 6 rounds, the range and its lower
 * coverage) and a verdict against the issue's targets (0.6 uniform, 0.9 Zipf): met only when the whole
 * interval is at or above the target. RESULT carries the bounds (`<ratio>_low`, `<ratio>_high`,
 * `ratio_interval_coverage`); results/scale.json keeps every cell's q/s round by round (`perRound`).
 *
 * Setup: the databases (`ot_sbench_00001`...) are created in batches of statements per round trip
 * (`multipleStatements`) over several admin connections, and reused when the marker database
 * `ot_sbench_meta` says a previous run (KEEP_DBS=1) left them complete; an interrupted setup resumes.
 * By default they are dropped at the end, the same way.
 *
 * Note: the recipe cells fill the server's `max_connections`; anything else using the same server
 * during those cells gets "Too many connections" too.
 *
 * Run: `npm run bench:scale` (node --expose-gc). Env: MYSQL_URL (default
 * mysql://root@127.0.0.1:3306/test), BENCH_TENANTS (10000), BENCH_ROUNDS (4), BENCH_CELL_MS (2500),
 * BENCH_WARMUP_MS (1000), BENCH_VARIANTS (comma list, default all), BENCH_POPULARITY (uniform or zipf, default
 * both), BENCH_MAX_SWITCHED (4), BENCH_ORDER (balanced or alternate), KEEP_DBS=1 (keep the databases),
 * BENCH_CPU_PROFILE=DIR (a CPU profile of each measured window of this process: see cpu-profile.ts).
 * Prints one table, ends with one line `RESULT {...}`, and writes benchmarks/results/scale.json.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import knexFactory, { type Knex } from 'knex';
import mysql from 'mysql2/promise';
import { createTenancy, librarySource } from './library';
import type { Tenancy, TenancyOptions, TenancyStats } from '../lib/index';
import { Person, TPerson } from './models';
import { mysqlConnection } from '../test/helpers/mysql-url';
import { intEnv, median, medianInterval, runSelfAsChild } from './results';
import { profiled } from './cpu-profile';

const MYSQL_URL = process.env.MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test';
const TENANTS = intEnv('BENCH_TENANTS', 10_000);
const CELL_MS = intEnv('BENCH_CELL_MS', 2_500);
const ROUNDS = intEnv('BENCH_ROUNDS', 4);
const WARMUP_MS = intEnv('BENCH_WARMUP_MS', 1_000);
const KEEP_DBS = process.env.KEEP_DBS === '1';
const IN_FLIGHT = 32;
const ROWS = 10;
const ZIPF_S = 1.1;
const CONNECTIONS = 20;
/** pool.max of each tenant pool under the budget. */
const BUDGET_POOL_MAX = 2;
/**
 * Cached pools under the budget: the library default. It never binds here: to open a connection when
 * the budget is spent, the budget closes the least recently used idle pool that holds one, so about
 * 20 pools stay cached whatever the cap (each new pool holds a connection from its `select 1` on).
 */
const MAX_POOLS = 50;
const PREFIX = 'ot_sbench_';
/** shared-tuned: `maxSwitchedConnections`, about twice the database server's cores (README). */
const MAX_SWITCHED = intEnv('BENCH_MAX_SWITCHED', 4);
const ORDER = process.env.BENCH_ORDER ?? 'balanced';
if (ORDER !== 'balanced' && ORDER !== 'alternate') throw new TypeError(`BENCH_ORDER: "${ORDER}" is neither balanced nor alternate`);
const META_DB = `${PREFIX}meta`;
/** LIKE pattern of the tenant databases (and the marker database). */
const TENANT_DB_PATTERN = `${PREFIX.replace(/_/g, '\\_')}%`;
/** Bump when the tenant schema or data changes: a marker of another version makes setup start over. */
const SCHEMA_VERSION = 1;
const ADMIN_CONNECTIONS = 8;
const TENANTS_PER_ROUND_TRIP = 100;
const SAMPLE_MS = 20;
const LATENCY_CAPACITY = 8_000_000;

const VARIANT_KEYS = ['single', 'single-plain', 'shared', 'shared-use', 'shared-inline', 'shared-tuned', 'shared-reset', 'shared-qualified', 'shared-qualified-tuned', 'budget', 'recipe', 'orm-qualified', 'raw-one', 'raw-spread'] as const;
type VariantKey = (typeof VARIANT_KEYS)[number];
const POPULARITIES = ['uniform', 'zipf'] as const;
const ONLY_POPULARITY = process.env.BENCH_POPULARITY;
type Popularity = (typeof POPULARITIES)[number];
const SELECTED = new Set<VariantKey>(
  (process.env.BENCH_VARIANTS ?? VARIANT_KEYS.join(',')).split(',').map((key) => {
    if (!(VARIANT_KEYS as readonly string[]).includes(key)) throw new TypeError(`BENCH_VARIANTS: unknown variant "${key}"`);
    return key as VariantKey;
  }),
);

const connection = (database?: string) => mysqlConnection(database, MYSQL_URL);
/**
 * The qualified variants' connections sit on no database, so the samplers cannot tell them by it:
 * they log in as this user instead (created for the run, dropped with the databases).
 */
const QUALIFIED_USER = 'ot_sbench_q';
const QUALIFIED_HOSTS = ['%', 'localhost', '127.0.0.1'];

// Tenant i (1-based): id `t00001`, database `ot_sbench_00001`. Built once: no string work per query.
const TENANT_IDS: string[] = [''];
const DATABASES: string[] = [''];
const DATABASE_OF = new Map<string, string>();
for (let i = 1; i <= TENANTS; i++) {
  const n = String(i).padStart(5, '0');
  TENANT_IDS.push(`t${n}`);
  DATABASES.push(`${PREFIX}${n}`);
  DATABASE_OF.set(`t${n}`, `${PREFIX}${n}`);
}
/** The name of row `row` of tenant `i`, which every read checks. */
const expectedName = (tenant: number, row: number): string => `${TENANT_IDS[tenant]}:${row}`;

// --- popularity ---------------------------------------------------------------------------------

/** Cumulative Zipf(s) weights over ranks 1..n; tenant i has rank i. */
const ZIPF_CDF = (() => {
  const cdf = new Float64Array(TENANTS);
  let sum = 0;
  for (let rank = 1; rank <= TENANTS; rank++) {
    sum += 1 / rank ** ZIPF_S;
    cdf[rank - 1] = sum;
  }
  return cdf;
})();

function zipfShare(top: number): number {
  return ZIPF_CDF[Math.min(top, TENANTS) - 1]! / ZIPF_CDF[TENANTS - 1]!;
}

const PICK: Record<Popularity, () => number> = {
  uniform: () => 1 + Math.floor(Math.random() * TENANTS),
  zipf: () => {
    const u = Math.random() * ZIPF_CDF[TENANTS - 1]!;
    let lo = 0;
    let hi = TENANTS - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (ZIPF_CDF[mid]! < u) lo = mid + 1;
      else hi = mid;
    }
    return lo + 1;
  },
};

// --- setup and teardown of the tenant databases -------------------------------------------------

async function adminConnections(count: number): Promise<mysql.Connection[]> {
  return Promise.all(Array.from({ length: count }, () => mysql.createConnection({ ...connection(), multipleStatements: true })));
}

/** Runs `batches` of SQL over `ADMIN_CONNECTIONS` connections, each batch one round trip. */
async function runBatches(batches: readonly string[]): Promise<void> {
  const admins = await adminConnections(Math.min(ADMIN_CONNECTIONS, Math.max(1, batches.length)));
  let next = 0;
  try {
    await Promise.all(
      admins.map(async (admin) => {
        while (next < batches.length) await admin.query(batches[next++]!);
      }),
    );
  } finally {
    await Promise.all(admins.map((admin) => admin.end()));
  }
}

function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** Creates the tenant databases, or reuses them when the marker says they are complete. Idempotent. */
async function setUpDatabases(admin: mysql.Connection): Promise<{ ms: number; reused: boolean }> {
  const started = performance.now();
  const [markers] = await admin.query<mysql.RowDataPacket[]>(
    'select count(*) as n from information_schema.tables where table_schema = ? and table_name = ?',
    [META_DB, 'marker'],
  );
  if (Number(markers[0]!.n) === 1) {
    const [rows] = await admin.query<mysql.RowDataPacket[]>(`select tenants, rows_per_tenant, version from \`${META_DB}\`.marker`);
    const marker = rows[0];
    if (marker !== undefined && marker.version === SCHEMA_VERSION && marker.rows_per_tenant === ROWS && marker.tenants >= TENANTS) {
      return { ms: performance.now() - started, reused: true };
    }
    if (marker !== undefined && (marker.version !== SCHEMA_VERSION || marker.rows_per_tenant !== ROWS)) await dropDatabases(admin);
  }
  // No complete set: create what is missing (IF NOT EXISTS, INSERT IGNORE), then write the marker.
  await admin.query(`drop database if exists \`${META_DB}\``);
  const tenants = Array.from({ length: TENANTS }, (_, i) => i + 1);
  const batches = chunks(tenants, TENANTS_PER_ROUND_TRIP).map((batch) => {
    const ddl = batch.map(
      (i) =>
        `create database if not exists \`${DATABASES[i]}\` character set utf8mb4;` +
        `create table if not exists \`${DATABASES[i]}\`.persons (id int not null primary key, name varchar(64) not null) engine=InnoDB;`,
    );
    // DDL commits on its own; the inserts of the whole batch share one transaction (one log flush).
    const inserts = batch.map((i) => {
      const values = Array.from({ length: ROWS }, (_, r) => `(${r + 1},'${expectedName(i, r + 1)}')`).join(',');
      return `insert ignore into \`${DATABASES[i]}\`.persons (id, name) values ${values};`;
    });
    return `${ddl.join('')}start transaction;${inserts.join('')}commit;`;
  });
  await runBatches(batches);
  await admin.query(
    `create database \`${META_DB}\`;` +
      `create table \`${META_DB}\`.marker (tenants int not null, rows_per_tenant int not null, version int not null, created_at datetime not null);` +
      `insert into \`${META_DB}\`.marker values (${TENANTS}, ${ROWS}, ${SCHEMA_VERSION}, now());`,
  );
  return { ms: performance.now() - started, reused: false };
}

/** Drops every `ot_sbench_` database, the marker first (a half-dropped set is never taken as complete). */
async function dropDatabases(admin: mysql.Connection): Promise<{ ms: number; count: number }> {
  const started = performance.now();
  await admin.query(`drop database if exists \`${META_DB}\``);
  const [rows] = await admin.query<mysql.RowDataPacket[]>(
    'select schema_name as name from information_schema.schemata where schema_name like ?',
    [TENANT_DB_PATTERN],
  );
  const names = rows.map((row) => String(row.name));
  await runBatches(chunks(names, TENANTS_PER_ROUND_TRIP).map((batch) => batch.map((name) => `drop database if exists \`${name}\`;`).join('')));
  return { ms: performance.now() - started, count: names.length };
}

// --- measurement helpers ------------------------------------------------------------------------

/** `Threads_connected` sampled every SAMPLE_MS on its own connection while a cell runs. */
class ThreadSampler {
  readonly #admin: mysql.Connection;
  #running = false;
  #loop: Promise<void> = Promise.resolve();
  #baseline = 0;
  #peak = 0;
  #peakOurs = 0;
  /** Samples that failed (skipped), over the whole run. */
  failedSamples = 0;

  constructor(admin: mysql.Connection) {
    this.#admin = admin;
  }

  async threads(): Promise<number> {
    const [rows] = await this.#admin.query<mysql.RowDataPacket[]>("show status like 'Threads_connected'");
    return Number(rows[0]!.Value);
  }

  /** Waits (up to `ms`) until the server's count is back to `target`, after a variant closed its connections. */
  async settle(target: number, ms = 5_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      const now = await this.threads().catch(() => target);
      if (now <= target) return;
      await sleep(50);
    }
  }

  /**
   * In one round trip: `Threads_connected`; the server threads on a tenant database (every connection
   * of this benchmark's variants is on one); and the connections of other clients of the server
   * (neither on a tenant database nor this run's admin connections), which another benchmark or test
   * suite may open and close at any time.
   */
  async sample(): Promise<{ threads: number; ours: number; others: number }> {
    const [rows] = await this.#admin.query<mysql.RowDataPacket[]>(
      "select (select variable_value from information_schema.global_status where variable_name = 'THREADS_CONNECTED') as threads, " +
        '(select count(*) from information_schema.processlist where db like ? or user = ?) as ours, ' +
        "(select count(*) from information_schema.processlist where command not in ('Daemon', 'Binlog Dump') " +
        "and user not in ('system user', 'event_scheduler', ?) and (db is null or db not like ?) and id not in (?)) as others",
      [TENANT_DB_PATTERN, QUALIFIED_USER, QUALIFIED_USER, TENANT_DB_PATTERN, [...ownThreadIds, 0]],
    );
    return { threads: Number(rows[0]!.threads), ours: Number(rows[0]!.ours), others: Number(rows[0]!.others) };
  }

  /** Connections of other clients of the server, which a full server would refuse to replace (0 if unknown). */
  async others(): Promise<number> {
    return (await this.sample().catch(() => undefined))?.others ?? 0;
  }

  async start(): Promise<void> {
    let first: { threads: number; others: number } | undefined;
    for (let attempt = 1; first === undefined; attempt++) {
      try {
        first = await this.sample();
      } catch (error) {
        if (attempt === 20) throw error;
        await sleep(SAMPLE_MS);
      }
    }
    // Threads_connected less other clients' connections at the same instant: this run's connections.
    this.#baseline = first.threads - first.others;
    this.#peak = this.#baseline;
    this.#peakOurs = 0;
    this.#running = true;
    this.#loop = (async () => {
      while (this.#running) {
        try {
          const { threads, ours, others } = await this.sample();
          this.#peak = Math.max(this.#peak, threads - others);
          this.#peakOurs = Math.max(this.#peakOurs, ours);
        } catch {
          // A sample can fail on a busy shared server (seen: its temporary table for the processlist
          // query removed from under it); the next one is 20 ms later.
          this.failedSamples++;
        }
        await sleep(SAMPLE_MS);
      }
    })();
  }

  close(): Promise<void> {
    return this.#admin.end();
  }

  /** Stops sampling; returns the peak above the baseline taken at `start()`, and the peak of tenant-database threads. */
  async stop(): Promise<{ threads: number; ours: number }> {
    this.#running = false;
    await this.#loop;
    return { threads: this.#peak - this.#baseline, ours: this.#peakOurs };
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** heapUsed after a full collection (twice, with a turn of the event loop for finalizers). */
async function settledHeap(): Promise<number | undefined> {
  if (gc === undefined) return undefined;
  gc();
  await new Promise((resolve) => setImmediate(resolve));
  gc();
  return process.memoryUsage().heapUsed;
}

const LATENCIES = new Float64Array(LATENCY_CAPACITY);

/** Server thread ids of this run's admin connections (not counted as other clients). */
const ownThreadIds: number[] = [];

interface LoadResult {
  ok: number;
  errors: number;
  /** Rows of another tenant (or no row): must stay 0. */
  wrong: number;
  ns: number;
  /** Error kinds (driver code or class name) and their counts. */
  kinds: Map<string, number>;
  /** Latencies of this load's successful queries, ns (a copy). */
  latencies: Float64Array;
  /** CPU time of this process and of the database server (when it runs here), microseconds. */
  nodeCpuUs: number;
  serverCpuUs: number | undefined;
}

/** CPU time of the local database server process in microseconds, when its pid file is readable. */
let serverCpuUs: (() => number | undefined) | undefined;
/** The server's pid file, when it runs here (passed to the single-plain child process). */
let serverPidFile: string | undefined;

function serverCpuReader(pidFile: string): (() => number | undefined) | undefined {
  try {
    const pid = fs.readFileSync(pidFile, 'utf8').trim();
    const read = (): number | undefined => {
      // Fields 14 and 15 of /proc/<pid>/stat: utime and stime in clock ticks (100 per second on Linux).
      const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
      return (Number(fields[11]) + Number(fields[12])) * 10_000;
    };
    return read() === undefined ? undefined : read;
  } catch {
    return undefined;
  }
}

type Query = (tenant: number, row: number) => PromiseLike<{ name: string } | undefined>;

function errorKind(error: unknown): string {
  const e = error as { code?: unknown; name?: unknown; cause?: { code?: unknown } };
  const code = typeof e.code === 'string' ? e.code : undefined;
  const causeCode = typeof e.cause?.code === 'string' ? e.cause.code : undefined;
  const name = typeof e.name === 'string' ? e.name : 'Error';
  return [code ?? name, causeCode].filter(Boolean).join('/');
}

/** IN_FLIGHT closed-loop workers for `ms`. */
async function load(instance: Instance, pick: () => number, ms: number, record: boolean): Promise<LoadResult> {
  const { query, servesOnly } = instance;
  const result: LoadResult = { ok: 0, errors: 0, wrong: 0, ns: 0, kinds: new Map(), latencies: new Float64Array(0), nodeCpuUs: 0, serverCpuUs: undefined };
  let recorded = 0;
  const cpuStart = process.cpuUsage();
  const serverStart = serverCpuUs?.();
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(ms) * 1_000_000n;
  const worker = async (): Promise<void> => {
    let now = process.hrtime.bigint();
    while (now < deadline) {
      const tenant = pick();
      const row = 1 + Math.floor(Math.random() * ROWS);
      const t0 = now;
      try {
        const found = await query(tenant, row);
        now = process.hrtime.bigint();
        if (found?.name !== expectedName(servesOnly ?? tenant, row)) {
          result.wrong++;
          result.errors++;
          continue;
        }
        result.ok++;
        if (record && recorded < LATENCY_CAPACITY) LATENCIES[recorded++] = Number(now - t0);
      } catch (error) {
        now = process.hrtime.bigint();
        result.errors++;
        const kind = errorKind(error);
        result.kinds.set(kind, (result.kinds.get(kind) ?? 0) + 1);
      }
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  result.ns = Number(process.hrtime.bigint() - start);
  const cpu = process.cpuUsage(cpuStart);
  result.nodeCpuUs = cpu.user + cpu.system;
  const serverEnd = serverCpuUs?.();
  if (serverStart !== undefined && serverEnd !== undefined) result.serverCpuUs = serverEnd - serverStart;
  if (record) result.latencies = LATENCIES.slice(0, recorded);
  return result;
}

function percentile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

/**
 * The cells of round `r`, one popularity after the other (their order reversed every other round).
 * BENCH_ORDER=alternate: the variants in the same order, reversed every other round (before stop
 * 16). balanced (the default): the variants in the orders of a Williams design, in which every
 * variant runs right after every other one equally often over n rounds (n variants, n even) or 2n
 * (n odd). With the alternate order the variant listed after `single` always ran right after it or
 * right before it, and in stop 16's runs a cell right after `single` ran up to 10-20% slower under
 * Zipf than the same variant right after another tenant variant (benchmarks/README.md).
 */
function roundOrder<T>(groups: T[][], r: number): T[] {
  const reverse = r % 2 === 1;
  const out: T[] = [];
  for (const group of reverse ? [...groups].reverse() : groups) {
    if (ORDER === 'alternate') out.push(...(reverse ? [...group].reverse() : group));
    else out.push(...williamsRow(group.length, r).map((i) => group[i]!));
  }
  return out;
}

/** Row `r` of a Williams design for `n` treatments (rows repeat after n, or 2n for odd n). */
function williamsRow(n: number, r: number): number[] {
  const first = [0];
  for (let i = 1, lo = 1, hi = n - 1; i < n; i++) first.push(i % 2 === 1 ? lo++ : hi--);
  const k = r % (n % 2 === 0 ? n : 2 * n);
  const row = first.map((v) => (v + (k % n)) % n);
  return k >= n ? row.reverse() : row;
}

// --- variants -----------------------------------------------------------------------------------

/** One variant's life for one cell: created, warmed, measured, closed. */
interface Instance {
  query: Query;
  /** single: the one tenant every query reads, whichever tenant was picked. */
  servesOnly?: number;
  /** Cached tenants (tenant handles, pools or knex instances) for the heap figure. */
  cached(): number;
  /** Opens every tenant before the cell (shared); resolves to the number that failed. */
  openAll?(): Promise<number>;
  /** Strategy counters to diff across the measured window. */
  counters?(): Record<string, number>;
  close(): Promise<void>;
}

function serverConfig(): Knex.Config {
  return { client: 'mysql2', connection: connection(), pool: { min: 0, max: CONNECTIONS } };
}

function sharedCounters(stats: TenancyStats): Record<string, number> {
  const server = stats.servers?.main;
  return {
    switches: server?.switches ?? 0,
    affinityHits: server?.affinityHits ?? 0,
    timeouts: server?.timeouts ?? 0,
    coldWaits: server?.coldWaits ?? 0,
    resets: server?.resets ?? 0,
    cleanHits: server?.cleanHits ?? 0,
    qualifyRetries: server?.qualifyRetries ?? 0,
    connectionsCreated: server?.created ?? 0,
    // The cap in force at the end of the cell (0: none), as `maxSwitchedConnections: 'auto'` sized it.
    maxSwitched: server?.maxSwitchedConnections ?? 0,
    handlesCreated: stats.created,
    evictions: stats.evictions,
  };
}

function budgetCounters(stats: TenancyStats): Record<string, number> {
  return {
    poolsCreated: stats.created,
    evictions: stats.evictions,
    budgetTimeouts: stats.budget?.timeouts ?? 0,
    budgetPeak: stats.budget?.peak ?? 0,
  };
}

function tenancyQuery(tenancy: Tenancy): Query {
  return (tenant, row) => tenancy.runWithTenant(TENANT_IDS[tenant]!, () => TPerson.query().findById(row));
}

/** Opens every tenant's handle (no query but the strategy's own `select 1`), IN_FLIGHT at a time. */
async function openAll(tenancy: Tenancy): Promise<number> {
  let next = 1;
  let failed = 0;
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      while (next <= TENANTS) {
        const id = TENANT_IDS[next++]!;
        await tenancy.runWithTenant(id, () => 0).catch(() => failed++);
      }
    }),
  );
  return failed;
}

/** Fully qualified `findById` of each tenant, for the raw server-reference variants. */
const QUALIFIED_SQL = DATABASES.map((db) => `select * from \`${db}\`.persons where id = ? limit 1`);

/** A raw mysql2 pool of CONNECTIONS, no ORM, no library: what the server itself does (reference rows). */
function rawInstance(spread: boolean): Instance {
  // A default database only so that its connections count among the tenant-database threads.
  const pool = mysql.createPool({ ...connection(DATABASES[1]), connectionLimit: CONNECTIONS });
  return {
    query: async (tenant, row) => {
      const [rows] = await pool.query<mysql.RowDataPacket[]>(QUALIFIED_SQL[spread ? tenant : 1]!, [row]);
      return rows[0] as { name: string } | undefined;
    },
    ...(spread ? {} : { servesOnly: 1 }),
    cached: () => 0,
    close: () => pool.end(),
  };
}

function sharedInstance(options: Partial<Pick<TenancyOptions, 'inlineSwitch' | 'maxSwitchedConnections' | 'resetSession' | 'qualifyTables'>> = {}): Instance {
  // Connections with no current database (qualifyTables, the default) log in as QUALIFIED_USER, so
  // that the samplers can tell them from other clients' threads.
  const clean = options.qualifyTables !== false;
  const tenancy = createTenancy({
    strategy: 'shared',
    ...options,
    servers: { main: clean ? { ...serverConfig(), connection: { ...(connection() as object), user: QUALIFIED_USER, password: '' } } : serverConfig() },
    locate: (id) => ({ server: 'main', database: DATABASE_OF.get(id)! }),
  });
  return {
    query: tenancyQuery(tenancy),
    cached: () => tenancy.stats().tenants ?? 0,
    openAll: () => openAll(tenancy),
    counters: () => sharedCounters(tenancy.stats()),
    close: () => tenancy.destroy(),
  };
}

/** The ratios held against the issue's targets (0.6 uniform, 0.9 Zipf): the defaults, and the library-free bound. */
const TARGETS: Record<Popularity, number> = { uniform: 0.6, zipf: 0.9 };
const HEADLINE: { key: VariantKey; base: VariantKey; name: string }[] = [
  { key: 'shared', base: 'single', name: 'shared_ratio' },
  { key: 'shared', base: 'single-plain', name: 'shared_ratio' },
  { key: 'orm-qualified', base: 'single-plain', name: 'orm_qualified_ratio' },
];

/** Prints each headline ratio's median, its interval (medianInterval) and where it stands against the target. */
function printAgainstTargets(headline: typeof HEADLINE, ratiosOf: (key: VariantKey, popularity: Popularity, base: VariantKey) => number[]): void {
  const lines: string[] = [];
  let coverage = 0;
  for (const { key, base } of headline) {
    for (const popularity of POPULARITIES) {
      const values = ratiosOf(key, popularity, base);
      if (values.length === 0 || values.every(Number.isNaN)) continue;
      const interval = medianInterval(values);
      coverage = interval.coverage;
      const target = TARGETS[popularity];
      const verdict = interval.low >= target ? 'met' : interval.high < target ? 'not met' : 'undecided (the interval holds the target)';
      lines.push(
        `  ${key} vs ${base}, ${popularity}: median ${median(values).toFixed(3)}, interval ${interval.low.toFixed(3)}-${interval.high.toFixed(3)}; target ${target}: ${verdict}`,
      );
    }
  }
  if (lines.length === 0) return;
  console.log(`Against the targets (per-round ratios; interval of the median, ${(coverage * 100).toFixed(1)}% coverage over ${ROUNDS} rounds):`);
  for (const line of lines) console.log(line);
  console.log('');
}

const CREATE: Record<Exclude<VariantKey, 'single-plain'>, () => Instance> = {
  'raw-one': () => rawInstance(false),
  'raw-spread': () => rawInstance(true),
  single(): Instance {
    const knex = knexFactory({ ...serverConfig(), connection: connection(DATABASES[1]) });
    return {
      // The same tenant every time; `tenant` is still picked, so the loop costs the same.
      query: (_tenant, row) => Person.query(knex).findById(row),
      servesOnly: 1,
      cached: () => 1,
      close: () => knex.destroy(),
    };
  },
  'orm-qualified'(): Instance {
    // Every tenant over one plain pool with no USE at all: objection's `withSchema(db)` names the
    // database in the SQL. Not a safe design (an unqualified table would read the connection's
    // database), only the bound of one that sends no switch.
    const knex = knexFactory({ ...serverConfig(), connection: connection(DATABASES[1]) });
    return {
      query: (tenant, row) => Person.query(knex).withSchema(DATABASES[tenant]!).findById(row),
      cached: () => 0,
      close: () => knex.destroy(),
    };
  },
  shared: () => sharedInstance(),
  'shared-use': () => sharedInstance({ qualifyTables: false, maxSwitchedConnections: Infinity }),
  'shared-inline': () => sharedInstance({ qualifyTables: false, maxSwitchedConnections: Infinity, inlineSwitch: true }),
  'shared-tuned': () => sharedInstance({ qualifyTables: false, maxSwitchedConnections: MAX_SWITCHED, inlineSwitch: true }),
  'shared-reset': () => sharedInstance({ qualifyTables: false, maxSwitchedConnections: Infinity, inlineSwitch: true, resetSession: true }),
  'shared-qualified': () => sharedInstance({ qualifyTables: true, maxSwitchedConnections: Infinity }),
  'shared-qualified-tuned': () => sharedInstance({ qualifyTables: true, maxSwitchedConnections: MAX_SWITCHED }),
  budget(): Instance {
    const tenancy = createTenancy({
      knexConfig: (id) => ({ client: 'mysql2', connection: connection(DATABASE_OF.get(id)!), pool: { max: BUDGET_POOL_MAX } }),
      maxConnections: CONNECTIONS,
      maxPools: MAX_POOLS,
      overflow: 'wait',
    });
    return {
      query: tenancyQuery(tenancy),
      cached: () => tenancy.stats().pools,
      counters: () => budgetCounters(tenancy.stats()),
      close: () => tenancy.destroy(),
    };
  },
  recipe(): Instance {
    // objection's recipe with its cache fixed (one Map for the process, not one per request).
    const knexes = new Map<string, Knex>();
    const knexFor = (tenant: number): Knex => {
      const id = TENANT_IDS[tenant]!;
      let knex = knexes.get(id);
      if (knex === undefined) {
        // knex logs every failed connection with its stack: counted here instead.
        knex = knexFactory({ client: 'mysql2', connection: connection(DATABASES[tenant]), log: { warn: () => undefined } });
        knexes.set(id, knex);
      }
      return knex;
    };
    return {
      query: (tenant, row) => Person.query(knexFor(tenant)).findById(row),
      cached: () => knexes.size,
      close: async () => {
        await Promise.all([...knexes.values()].map((knex) => knex.destroy().catch(() => undefined)));
        knexes.clear();
      },
    };
  },
};

// --- cells --------------------------------------------------------------------------------------

interface CellRun extends LoadResult {
  opsPerSec: number;
  /** Peak of Threads_connected above its value before the cell. */
  peakConnections: number;
  /** Peak of server threads on a tenant database (this benchmark's own connections only). */
  peakTenantThreads: number;
  cached: number;
  heapPerTenant: number | undefined;
  /** shared: heap per tenant right after opening every handle, before any traffic. */
  heapPerHandle: number | undefined;
  counters: Record<string, number>;
  closeMs: number;
}

async function runCell(key: VariantKey, popularity: Popularity, sampler: ThreadSampler, baselineThreads: number): Promise<CellRun> {
  await sampler.settle(baselineThreads);
  const heapBefore = await settledHeap();
  await sampler.start();
  if (key === 'recipe') {
    const others = await sampler.others();
    if (others > 0) {
      process.stderr.write(`\nwarning: ${others} connection(s) of other clients on the server; while the recipe fills max_connections, their new connections are refused too\n`);
    }
  }
  if (key === 'single-plain') {
    const measured = await plainCell(popularity);
    const peak = await sampler.stop();
    return { ...measured, opsPerSec: (measured.ok * 1e9) / measured.ns, peakConnections: peak.threads, peakTenantThreads: peak.ours, cached: 1, heapPerTenant: undefined, heapPerHandle: undefined, counters: {}, closeMs: 0 };
  }
  const instance = CREATE[key]();
  let heapPerHandle: number | undefined;
  if (instance.openAll !== undefined) {
    const failed = await instance.openAll();
    if (failed > 0) throw new Error(`${key}: ${failed} tenants failed to open`);
    const heap = await settledHeap();
    if (heap !== undefined && heapBefore !== undefined) heapPerHandle = (heap - heapBefore) / instance.cached();
  }
  const pick = PICK[popularity];
  await load(instance, pick, WARMUP_MS, false);
  const before = instance.counters?.() ?? {};
  const measured = await profiled(`${key}-${popularity}`, () => load(instance, pick, CELL_MS, true), (result) => result.ok + result.errors);
  const after = instance.counters?.() ?? {};
  const counters: Record<string, number> = {};
  for (const [name, value] of Object.entries(after)) counters[name] = name === 'budgetPeak' || name === 'maxSwitched' ? value : value - (before[name] ?? 0);
  const cached = instance.cached();
  const heapAfter = await settledHeap();
  const closeStarted = performance.now();
  await instance.close();
  const closeMs = performance.now() - closeStarted;
  const peak = await sampler.stop();
  return {
    ...measured,
    opsPerSec: (measured.ok * 1e9) / measured.ns,
    peakConnections: peak.threads,
    peakTenantThreads: peak.ours,
    cached,
    heapPerTenant: heapAfter === undefined || heapBefore === undefined || cached === 0 ? undefined : (heapAfter - heapBefore) / cached,
    heapPerHandle,
    counters,
    closeMs,
  };
}

/**
 * single-plain: the `single` cell (warm-up, then the measured load) in a child process of this script
 * that never opens a tenant scope, so no AsyncLocalStorage is on there. Its latencies come back in a
 * file, the rest as one line of JSON.
 */
async function plainCell(popularity: Popularity): Promise<LoadResult> {
  const file = path.join(os.tmpdir(), `ot-scale-plain-${process.pid}.bin`);
  const parsed = await runSelfAsChild<Omit<LoadResult, 'kinds' | 'latencies'> & { kinds: [string, number][] }>('single-plain', {
    BENCH_CHILD_CELL: popularity,
    BENCH_CHILD_LATENCIES: file,
    BENCH_CHILD_PID_FILE: serverPidFile ?? '',
  });
  const latencies = new Float64Array(new Uint8Array(fs.readFileSync(file)).buffer);
  fs.rmSync(file, { force: true });
  return { ...parsed, kinds: new Map(parsed.kinds), latencies };
}

/** In the child process of `plainCell`: one `single` cell, printed as JSON. */
async function childCell(popularity: Popularity, file: string): Promise<void> {
  if (process.env.BENCH_CHILD_PID_FILE) serverCpuUs = serverCpuReader(process.env.BENCH_CHILD_PID_FILE);
  const instance = CREATE.single();
  await load(instance, PICK[popularity], WARMUP_MS, false);
  const measured = await load(instance, PICK[popularity], CELL_MS, true);
  await instance.close();
  fs.writeFileSync(file, Buffer.from(measured.latencies.buffer, measured.latencies.byteOffset, measured.latencies.byteLength));
  const { latencies: _latencies, kinds, ...rest } = measured;
  void _latencies;
  process.stdout.write(`${JSON.stringify({ ...rest, kinds: [...kinds] })}\n`);
}

// --- report -------------------------------------------------------------------------------------

function sum(runs: readonly CellRun[], pick: (run: CellRun) => number): number {
  return runs.reduce((total, run) => total + pick(run), 0);
}

function maxOf(values: readonly (number | undefined)[]): number | undefined {
  const defined = values.filter((v): v is number => v !== undefined && Number.isFinite(v));
  return defined.length === 0 ? undefined : Math.max(...defined);
}

function merged(runs: readonly CellRun[]): Float64Array {
  const all = new Float64Array(sum(runs, (run) => run.latencies.length));
  let offset = 0;
  for (const run of runs) {
    all.set(run.latencies, offset);
    offset += run.latencies.length;
  }
  return all.sort();
}

/** CPU microseconds per query attempted (successes and errors), over every round; undefined if unknown. */
function cpuPerQuery(runs: readonly CellRun[], which: 'node' | 'server' | 'both'): number | undefined {
  let total = 0;
  for (const run of runs) {
    if (which !== 'node' && run.serverCpuUs === undefined) return undefined;
    total += (which === 'server' ? 0 : run.nodeCpuUs) + (which === 'node' ? 0 : run.serverCpuUs!);
  }
  return total / Math.max(1, sum(runs, (run) => run.ok + run.errors));
}

function errorRate(runs: readonly CellRun[]): number {
  const errors = sum(runs, (run) => run.errors);
  return errors / Math.max(1, errors + sum(runs, (run) => run.ok));
}

function pad(text: string, width: number, right = true): string {
  return right ? text.padStart(width) : text.padEnd(width);
}

function fixed(value: number | undefined, digits: number): string {
  return value === undefined || !Number.isFinite(value) ? 'n/a' : value.toFixed(digits);
}

function bytes(value: number | undefined): string {
  if (value === undefined) return 'n/a';
  return Math.abs(value) >= 10_240 ? `${(value / 1024).toFixed(1)} KiB` : `${value.toFixed(0)} B`;
}

function round(value: number | undefined, digits = 3): number | null {
  if (value === undefined || !Number.isFinite(value)) return null;
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

function versionOf(name: string): string {
  return (require(`${name}/package.json`) as { version: string }).version;
}

function loadAverage(): string {
  return fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
}

interface ServerInfo {
  version: string;
  maxConnections: number;
  tableOpenCache: number;
  tableDefinitionCache: number;
  innodbOpenFiles: number;
  bufferPool: number;
  pidFile: string;
}

async function main(): Promise<void> {
  const samplerConnection = await mysql.createConnection(connection());
  const sampler = new ThreadSampler(samplerConnection);
  const admin = await mysql.createConnection({ ...connection(), multipleStatements: true });
  ownThreadIds.push(samplerConnection.threadId, admin.threadId);
  let resultLine: string | undefined;
  try {
    const [[server]] = (await admin.query(
      'select version() as version, @@max_connections as maxConnections, @@table_open_cache as tableOpenCache, ' +
        '@@table_definition_cache as tableDefinitionCache, @@innodb_open_files as innodbOpenFiles, ' +
        '@@innodb_buffer_pool_size as bufferPool, @@pid_file as pidFile',
    )) as unknown as [[ServerInfo]];
    const info = server!;
    if (['127.0.0.1', 'localhost', '::1'].includes(new URL(MYSQL_URL).hostname)) {
      serverPidFile = info.pidFile;
      serverCpuUs = serverCpuReader(info.pidFile);
    }
    const loadBefore = loadAverage();
    process.stderr.write(`load average ${loadBefore}; setting up ${TENANTS} tenant databases...\n`);
    const setup = await setUpDatabases(admin);
    // Every host form: a fresh server's anonymous ''@'localhost' would otherwise win for 127.0.0.1.
    for (const host of QUALIFIED_HOSTS) {
      await admin.query(`create user if not exists '${QUALIFIED_USER}'@'${host}'`);
      await admin.query(`grant select, insert, update, delete on \`${PREFIX.replace(/_/g, '\\_')}%\`.* to '${QUALIFIED_USER}'@'${host}'`);
    }
    process.stderr.write(`setup: ${setup.reused ? 'reused' : 'created'} in ${(setup.ms / 1000).toFixed(1)} s\n`);

    // Warm objection's and knex's lazy module state before any heap baseline, and open one tenant scope
    // first: that turns the library's AsyncLocalStorage on for the rest of the process (on Node 20 it
    // then adds promise hooks to every promise, the baselines' included), so that every cell runs as
    // in an app that uses the library, not only the cells after the first scope.
    const enabler = createTenancy({ knexConfig: () => ({ client: 'mysql2', connection: connection(DATABASES[1]) }), verifyConnection: false });
    await enabler.runWithTenant(TENANT_IDS[1]!, () => undefined);
    await enabler.destroy();
    const warm = CREATE.single();
    await load(warm, PICK.uniform, 300, false);
    await warm.close();
    const baselineThreads = await sampler.threads();

    const groups: [VariantKey, Popularity][][] = [];
    for (const popularity of POPULARITIES) {
      if ((ONLY_POPULARITY ?? popularity) !== popularity) continue;
      groups.push(VARIANT_KEYS.filter((key) => SELECTED.has(key)).map((key) => [key, popularity]));
    }
    const cells = new Map<string, CellRun[]>();
    const started = Date.now();
    for (let r = 0; r < ROUNDS; r++) {
      for (const [key, popularity] of roundOrder(groups, r)) {
        process.stderr.write(`round ${r + 1}/${ROUNDS}: ${key} ${popularity}... `);
        const run = await runCell(key, popularity, sampler, baselineThreads);
        process.stderr.write(`${run.opsPerSec.toFixed(0)} q/s, ${run.errors} errors, peak ${run.peakConnections} connections\n`);
        const cellKey = `${key}/${popularity}`;
        cells.set(cellKey, [...(cells.get(cellKey) ?? []), run]);
      }
    }
    const seconds = ((Date.now() - started) / 1000).toFixed(0);
    const loadAfter = loadAverage();

    const runsOf = (key: VariantKey, popularity: Popularity): CellRun[] => cells.get(`${key}/${popularity}`) ?? [];
    const all = (key: VariantKey): CellRun[] => POPULARITIES.flatMap((p) => runsOf(key, p));
    const qps = (key: VariantKey, popularity: Popularity): number => median(runsOf(key, popularity).map((run) => run.opsPerSec));
    // The raw reference rows compare with the raw single-database row, everything else with `single`.
    const baseOf = (key: VariantKey): VariantKey => (key.startsWith('raw-') ? 'raw-one' : 'single');
    /** Per-round ratios to `base` (by default the variant's base) measured in the same round. */
    const ratios = (key: VariantKey, popularity: Popularity, baseKey: VariantKey = baseOf(key)): number[] => {
      const base = runsOf(baseKey, popularity);
      return runsOf(key, popularity).map((run, r) => run.opsPerSec / (base[r]?.opsPerSec ?? Number.NaN));
    };
    const ratio = (key: VariantKey, popularity: Popularity): number => median(ratios(key, popularity));
    const ratioTo = (key: VariantKey, baseKey: VariantKey, popularity: Popularity): number => median(ratios(key, popularity, baseKey));
    /** Throughput ratio predicted from CPU per query (both processes), which other load on the machine disturbs less. */
    const cpuRatio = (key: VariantKey, popularity: Popularity): number | undefined => {
      const base = cpuPerQuery(runsOf(baseOf(key), popularity), 'both');
      const own = cpuPerQuery(runsOf(key, popularity), 'both');
      return base === undefined || own === undefined ? undefined : base / own;
    };

    const cpu = os.cpus();
    const machine = `${os.platform()} ${os.arch()}, ${cpu.length} x ${cpu[0]?.model.trim() ?? 'unknown CPU'}`;
    console.log('');
    console.log(
      `objection-tenancy at scale: ${TENANTS.toLocaleString('en-US')} tenant databases, findById (${ROWS} rows each), ` +
        `${IN_FLIGHT} in flight, one scope per query, ${CONNECTIONS} connections`,
    );
    console.log(`Node ${process.version}, MariaDB ${info.version}, knex ${versionOf('knex')}, objection ${versionOf('objection')}, mysql2 ${versionOf('mysql2')}`);
    console.log(
      `server: max_connections ${info.maxConnections}, table_open_cache ${info.tableOpenCache}, table_definition_cache ` +
        `${info.tableDefinitionCache}, innodb_open_files ${info.innodbOpenFiles}, innodb_buffer_pool_size ${info.bufferPool / 2 ** 20} MiB`,
    );
    console.log(`${machine} (shared with the database server); load average ${loadBefore} before, ${loadAfter} after; library from ${librarySource === 'dist' ? 'its build (dist/)' : 'its source through tsx (BENCH_LIB=src)'}`);
    console.log(
      `setup: ${setup.reused ? 'reused (marker found)' : 'created'} ${TENANTS} databases in ${(setup.ms / 1000).toFixed(1)} s; ` +
        `${ROUNDS} rounds x ${CELL_MS} ms per cell after ${WARMUP_MS} ms warm-up, ${ORDER === 'balanced' ? 'variants in the orders of a Williams design' : 'order reversed every other round'}; ${seconds} s`,
    );
    console.log(
      `Zipf(s=${ZIPF_S}): top tenant ${(zipfShare(1) * 100).toFixed(1)}% of queries, top 20 ${(zipfShare(20) * 100).toFixed(1)}%, ` +
        `top 100 ${(zipfShare(100) * 100).toFixed(1)}%, top 1,000 ${(zipfShare(1000) * 100).toFixed(1)}%`,
    );
    console.log('');
    const columns: [string, number][] = [
      ['variant', 22], ['popularity', 10], ['ok', 7], ['errors', 7], ['q/s', 6], ['vs single', 9], ['range', 11],
      ['p50 ms', 6], ['p99 ms', 6], ['node us/q', 9], ['db us/q', 7], ['peak conns', 10], ['ours', 4], ['cached', 6], ['heap/tenant', 11],
    ];
    const header = columns.map(([name, width], i) => pad(name, width, i > 1)).join('  ');
    console.log(header);
    console.log('-'.repeat(header.length));
    for (const popularity of POPULARITIES) {
      for (const key of VARIANT_KEYS) {
        const runs = runsOf(key, popularity);
        if (runs.length === 0) continue;
        const lat = merged(runs);
        const rs = ratios(key, popularity);
        const perTenant = !key.startsWith('single') && !key.startsWith('raw-');
        const cells_ = [
          key,
          popularity,
          String(sum(runs, (run) => run.ok)),
          String(sum(runs, (run) => run.errors)),
          qps(key, popularity).toFixed(0),
          ratio(key, popularity).toFixed(3),
          `${Math.min(...rs).toFixed(2)}-${Math.max(...rs).toFixed(2)}`,
          (percentile(lat, 0.5) / 1e6).toFixed(2),
          (percentile(lat, 0.99) / 1e6).toFixed(2),
          fixed(cpuPerQuery(runs, 'node'), 0),
          fixed(cpuPerQuery(runs, 'server'), 0),
          String(maxOf(runs.map((run) => run.peakConnections))),
          String(maxOf(runs.map((run) => run.peakTenantThreads))),
          perTenant ? String(maxOf(runs.map((run) => run.cached))) : '-',
          perTenant ? bytes(maxOf(runs.map((run) => run.heapPerTenant))) : '-',
        ];
        console.log(cells_.map((text, i) => pad(text, columns[i]![1], i > 1)).join('  '));
      }
      console.log('');
    }
    for (const line of [
      'ok, errors: summed over rounds; errors include rows of another tenant (none expected). q/s: successful queries',
      'per second, median of rounds. vs single: median of the per-round ratios to `single` (raw-*: to `raw-one`) under',
      'the same popularity; range: lowest-highest of them. p50/p99: successful queries, all rounds. node us/q, db us/q:',
      'CPU time of this process and of the database server per query attempted (on 2 shared cores their sum bounds',
      'throughput). peak conns: Threads_connected above its value before the cell, less the connections of other',
      'clients of the server at each sample; ours: peak of server threads on a tenant database (this run\'s',
      'connections only), both sampled every 20 ms. heap/tenant: heap growth after a forced GC over cached tenants',
      '(handles for shared, pools for budget, knex instances for recipe), largest of the rounds. raw-*: the server',
      'alone (mysql2 pool of 20, fully qualified select, no ORM, no USE) on one database (raw-one) or spread over',
      'every tenant (raw-spread). single-plain: single in a child process that never opens a scope (no',
      'AsyncLocalStorage: on Node 20 one in use adds promise hooks to every promise of the process, as in this one).',
    ]) {
      console.log(line);
    }
    console.log('');

    for (const [cellKey, runs] of cells) {
      const notes: string[] = [];
      const kinds = new Map<string, number>();
      for (const run of runs) for (const [kind, n] of run.kinds) kinds.set(kind, (kinds.get(kind) ?? 0) + n);
      const wrong = sum(runs, (run) => run.wrong);
      if (kinds.size > 0) notes.push(`errors ${[...kinds].map(([kind, n]) => `${kind} x${n}`).join(', ')}`);
      if (wrong > 0) notes.push(`ROWS OF ANOTHER TENANT OR NONE: ${wrong}`);
      const counter = (name: string): number => sum(runs, (run) => run.counters[name] ?? 0);
      if (cellKey.startsWith('shared')) {
        const acquires = counter('switches') + counter('affinityHits');
        notes.push(
          `switches ${counter('switches')} (${((counter('switches') / Math.max(1, acquires)) * 100).toFixed(1)}% of acquires), ` +
            `affinity hits ${counter('affinityHits')}, timeouts ${counter('timeouts')}, cold waits ${counter('coldWaits')}, ` +
            `session resets ${counter('resets')}, served with no USE ${counter('cleanHits')}, ` +
            `sent again after a switch ${counter('qualifyRetries')}, connections opened ${counter('connectionsCreated')}, ` +
            `cold-switch cap ${maxOf(runs.map((run) => run.counters.maxSwitched ?? 0)) || 'none'}`,
        );
        notes.push(`heap per tenant after opening all ${TENANTS} handles, before traffic: ${bytes(maxOf(runs.map((run) => run.heapPerHandle)))}`);
      }
      if (cellKey.startsWith('budget/')) {
        notes.push(
          `pools opened ${counter('poolsCreated')} (${(counter('poolsCreated') / Math.max(1, sum(runs, (run) => run.ok))).toFixed(2)} per query), ` +
            `evicted ${counter('evictions')}, budget peak ${maxOf(runs.map((run) => run.counters.budgetPeak))}, budget timeouts ${counter('budgetTimeouts')}`,
        );
      }
      if (cellKey.startsWith('recipe/')) notes.push(`error rate ${(errorRate(runs) * 100).toFixed(1)}%`);
      notes.push(`closed in ${maxOf(runs.map((run) => run.closeMs))!.toFixed(0)} ms`);
      console.log(`${pad(cellKey, 18, false)}  ${notes.join('; ')}`);
    }

    if (sampler.failedSamples > 0) console.log(`(${sampler.failedSamples} connection samples failed and were skipped)`);

    const hitRate = (popularity: Popularity, key: VariantKey = 'shared'): number => {
      const runs = runsOf(key, popularity);
      const hits = sum(runs, (run) => run.counters.affinityHits ?? 0);
      return hits / Math.max(1, hits + sum(runs, (run) => run.counters.switches ?? 0));
    };
    /** The RESULT keys of one form of the shared strategy (`<prefix>_errors`, ...). */
    const sharedFormKeys = (prefix: string, key: VariantKey): Record<string, number | null> => ({
      [`${prefix}_errors`]: sum(all(key), (run) => run.errors),
      [`${prefix}_peak_connections`]: maxOf(all(key).map((run) => run.peakConnections)) ?? null,
      [`${prefix}_ratio_uniform`]: round(ratio(key, 'uniform')),
      [`${prefix}_ratio_zipf`]: round(ratio(key, 'zipf')),
      [`${prefix}_heap_bytes_per_tenant`]: round(maxOf(all(key).map((run) => run.heapPerTenant)), 0),
      [`${prefix}_cpu_ratio_uniform`]: round(cpuRatio(key, 'uniform')),
      [`${prefix}_cpu_ratio_zipf`]: round(cpuRatio(key, 'zipf')),
      [`${prefix}_affinity_hit_rate_zipf`]: round(hitRate('zipf', key)),
    });
    const result: Record<string, number | null> = {
      tenants: TENANTS,
      shared_errors: sum(all('shared'), (run) => run.errors),
      shared_peak_connections: maxOf(all('shared').map((run) => run.peakConnections)) ?? null,
      shared_ratio_uniform: round(ratio('shared', 'uniform')),
      shared_ratio_zipf: round(ratio('shared', 'zipf')),
      shared_heap_bytes_per_tenant: round(maxOf(all('shared').map((run) => run.heapPerTenant)), 0),
      recipe_errors: sum(all('recipe'), (run) => run.errors),
      shared_peak_tenant_threads: maxOf(all('shared').map((run) => run.peakTenantThreads)) ?? null,
      shared_heap_bytes_per_tenant_before_traffic: round(maxOf(all('shared').map((run) => run.heapPerHandle)), 0),
      shared_cpu_ratio_uniform: round(cpuRatio('shared', 'uniform')),
      shared_cpu_ratio_zipf: round(cpuRatio('shared', 'zipf')),
      shared_affinity_hit_rate_uniform: round(hitRate('uniform')),
      shared_affinity_hit_rate_zipf: round(hitRate('zipf')),
      shared_qps_uniform: round(qps('shared', 'uniform'), 0),
      shared_qps_zipf: round(qps('shared', 'zipf'), 0),
      single_qps_uniform: round(qps('single', 'uniform'), 0),
      single_qps_zipf: round(qps('single', 'zipf'), 0),
      // Against a single-tenant app with no AsyncLocalStorage in its process (single-plain).
      single_plain_qps_uniform: round(qps('single-plain', 'uniform'), 0),
      single_plain_qps_zipf: round(qps('single-plain', 'zipf'), 0),
      shared_ratio_uniform_vs_plain: round(ratioTo('shared', 'single-plain', 'uniform')),
      shared_ratio_zipf_vs_plain: round(ratioTo('shared', 'single-plain', 'zipf')),
      orm_qualified_ratio_uniform_vs_plain: round(ratioTo('orm-qualified', 'single-plain', 'uniform')),
      orm_qualified_ratio_zipf_vs_plain: round(ratioTo('orm-qualified', 'single-plain', 'zipf')),
      recipe_error_rate_uniform: round(errorRate(runsOf('recipe', 'uniform'))),
      recipe_error_rate_zipf: round(errorRate(runsOf('recipe', 'zipf'))),
      recipe_ratio_uniform: round(ratio('recipe', 'uniform')),
      recipe_ratio_zipf: round(ratio('recipe', 'zipf')),
      recipe_peak_connections: maxOf(all('recipe').map((run) => run.peakConnections)) ?? null,
      recipe_heap_bytes_per_tenant: round(maxOf(all('recipe').map((run) => run.heapPerTenant)), 0),
      shared_max_switched_connections: maxOf(all('shared').map((run) => run.counters.maxSwitched ?? 0)) || null,
      ...sharedFormKeys('shared_use', 'shared-use'),
      ...sharedFormKeys('shared_inline', 'shared-inline'),
      ...sharedFormKeys('shared_tuned', 'shared-tuned'),
      shared_tuned_max_switched_connections: MAX_SWITCHED,
      ...sharedFormKeys('shared_reset', 'shared-reset'),
      ...sharedFormKeys('shared_qualified', 'shared-qualified'),
      ...sharedFormKeys('shared_qualified_tuned', 'shared-qualified-tuned'),
      budget_errors: sum(all('budget'), (run) => run.errors),
      budget_ratio_uniform: round(ratio('budget', 'uniform')),
      budget_ratio_zipf: round(ratio('budget', 'zipf')),
      budget_peak_connections: maxOf(all('budget').map((run) => run.peakConnections)) ?? null,
      budget_peak_tenant_threads: maxOf(all('budget').map((run) => run.peakTenantThreads)) ?? null,
      budget_heap_bytes_per_pool: round(maxOf(all('budget').map((run) => run.heapPerTenant)), 0),
      orm_qualified_ratio_uniform: round(ratio('orm-qualified', 'uniform')),
      orm_qualified_ratio_zipf: round(ratio('orm-qualified', 'zipf')),
      server_spread_ratio_uniform: round(ratio('raw-spread', 'uniform')),
      server_spread_ratio_zipf: round(ratio('raw-spread', 'zipf')),
      // Distribution-free intervals of the median per-round ratio (see medianInterval), and their coverage.
      ...Object.fromEntries(
        HEADLINE.flatMap(({ key, base, name }) =>
          POPULARITIES.flatMap((popularity) => {
            const { low, high } = medianInterval(ratios(key, popularity, base));
            return [[`${name}_${popularity}${base === 'single' ? '' : '_vs_plain'}_low`, round(low)], [`${name}_${popularity}${base === 'single' ? '' : '_vs_plain'}_high`, round(high)]];
          }),
        ),
      ),
      ratio_interval_coverage: round(medianInterval(Array.from({ length: ROUNDS }, (_, i) => i)).coverage),
    };
    resultLine = `RESULT ${JSON.stringify(result)}`;
    printAgainstTargets(HEADLINE, (key, popularity, base) => ratios(key, popularity, base));

    const file = path.join(__dirname, 'results', 'scale.json');
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const { pidFile: _pidFile, ...serverSettings } = info;
    void _pidFile;
    const record = {
      date: new Date().toISOString(),
      node: process.version,
      mariadb: info.version,
      knex: versionOf('knex'),
      objection: versionOf('objection'),
      mysql2: versionOf('mysql2'),
      machine,
      server: serverSettings,
      load: { before: loadBefore, after: loadAfter },
      settings: {
        tenants: TENANTS, inFlight: IN_FLIGHT, connections: CONNECTIONS, cellMs: CELL_MS, rounds: ROUNDS, warmupMs: WARMUP_MS, order: ORDER,
        zipfS: ZIPF_S, maxSwitchedConnections: MAX_SWITCHED, budgetPoolMax: BUDGET_POOL_MAX, maxPools: MAX_POOLS, variants: [...SELECTED],
      },
      setup: { reused: setup.reused, ms: Math.round(setup.ms) },
      result,
      // Successful queries per second of each cell, round by round (the rounds' order: roundOrder).
      perRound: Object.fromEntries([...cells].map(([cellKey, runs]) => [cellKey, runs.map((run) => Math.round(run.opsPerSec))])),
    };
    fs.writeFileSync(file, `${JSON.stringify(record, null, 2)}\n`);
  } finally {
    if (KEEP_DBS) {
      process.stderr.write(`KEEP_DBS=1: the ${PREFIX}* databases are kept for the next run\n`);
    } else {
      for (const host of QUALIFIED_HOSTS) await admin.query(`drop user if exists '${QUALIFIED_USER}'@'${host}'`).catch(() => undefined);
      const dropped = await dropDatabases(admin).catch((error: unknown) => {
        console.error('dropping the tenant databases failed:', error);
        return undefined;
      });
      if (dropped !== undefined) process.stderr.write(`dropped ${dropped.count} databases in ${(dropped.ms / 1000).toFixed(1)} s\n`);
    }
    await admin.end();
    await sampler.close();
  }
  // Last, after the clean-up's own output: the one line a script reads.
  if (resultLine !== undefined) console.log(resultLine);
}

const CHILD_CELL = process.env.BENCH_CHILD_CELL;
(CHILD_CELL !== undefined ? childCell(CHILD_CELL as Popularity, process.env.BENCH_CHILD_LATENCIES!) : main()).catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
