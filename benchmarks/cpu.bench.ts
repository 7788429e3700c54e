/**
 * What the library's JavaScript costs per query, without a database server: the same `findById` through
 * objection and knex's mysql2 client, over a stand-in for mysql2's connections that answers each
 * statement on the next turn of the event loop (`setImmediate`). No socket, no server: what is left
 * is the CPU time of this process (objection, knex, the library), which on a real server competes
 * with the server for the same cores (see scale.bench.ts). A regression of a few microseconds per
 * query on the shared pool's path shows here plainly; in scale.bench.ts it hides in the noise.
 *
 * Variants, 32 queries in flight, over BENCH_TENANTS tenants (20) taken in turn:
 *   passing      the objection recipe: one knex per tenant (a Map), `Person.query(knex)`. The baseline.
 *   bindKnex     the recipe's other form: `Person.bindKnex(knex).query()`.
 *   passing-scoped  the recipe, each query run inside `AsyncLocalStorage.run()` of an app's own store
 *                (no library code): what an active store costs per query on this Node, which any
 *                implicit scope pays (on Node 20 every promise made in the scope carries the store).
 *   qualified    no library, one knex for every tenant: `Person.query(knex).withSchema(db)` (scale.bench.ts's
 *                `orm-qualified`), the bound of a client that names each tenant's database.
 *   pool-per-tenant  ours: `runWithTenant(id, () => TPerson.query().findById(row))`, a pool per tenant.
 *   shared       ours, strategy 'shared' (20 connections) with its defaults (`qualifyTables`, the
 *                'auto' cap: the stand-in tells no cores, so no cap).
 *   shared-use, shared-inline  the same with `qualifyTables: false`: a `USE` per change of tenant,
 *                alone or sent with the statement (`inlineSwitch`); the stand-in answers `USE` like a server.
 *                (Before stop 16, `shared` was `USE` switching and `shared-qualified` the `qualifyTables` form.)
 * Each run of a variant is its own process (in one process, every variant's code shapes would
 * share objection's call sites); BENCH_ROUNDS rounds (7), the order rotated each round; per run,
 * BENCH_QUERIES (60,000) queries after half as many to warm up. Reported: median and lowest CPU time
 * per query, and the median of per-round ratios to `passing`. Only the library's own AsyncLocalStorage
 * is in use in every process (as in an app that uses the library), so every variant pays its promise hooks.
 *
 * Run: `npm run bench:cpu`. Prints one table, ends with `RESULT {...}`, writes results/cpu.json.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { execFileSync } from 'node:child_process';
import knexFactory, { type Knex } from 'knex';
import { createTenancy } from './library';
import type { Tenancy } from '../lib/index';
import { Person, TPerson } from './models';
import { intEnv, loadAverage, median, writeResults } from './results';

const VARIANTS = ['passing', 'bindKnex', 'passing-scoped', 'qualified', 'pool-per-tenant', 'shared', 'shared-use', 'shared-inline'] as const;
type Variant = (typeof VARIANTS)[number];
const ROUNDS = intEnv('BENCH_ROUNDS', 7);
const QUERIES = intEnv('BENCH_QUERIES', 60_000);
const TENANTS = intEnv('BENCH_TENANTS', 20);
const IN_FLIGHT = 32;
const CONNECTIONS = 20;

// --- the stand-in driver (child processes only) ------------------------------------------------

type Callback = (error: unknown, result: unknown, fields: unknown) => void;

/** A stand-in for a mysql2 connection: answers on the next turn of the event loop, as a socket would. */
function standInConnection(id: number): Record<string, unknown> {
  return {
    threadId: id,
    stream: { destroyed: false },
    // SERVER_STATUS_AUTOCOMMIT, as mysql2 reads it off a server's answers.
    serverStatus: 2,
    query(options: unknown, values: unknown, callback?: Callback): void {
      let cb = callback;
      let bindings = values;
      if (typeof values === 'function') {
        cb = values as Callback;
        bindings = undefined;
      }
      const sql = typeof options === 'string' ? options : (options as { sql: string }).sql;
      const id = Array.isArray(bindings) ? (bindings[0] as number) : 1;
      const rows = [{ id, name: `row:${id}` }];
      if (!sql.startsWith('USE')) setImmediate(cb!, null, rows, []);
      // A `USE`, alone or first in a batch (inlineSwitch): an OK packet, then the statement's rows.
      else if (sql.includes(';')) setImmediate(cb!, null, [{}, rows], [undefined, []]);
      else setImmediate(cb!, null, {}, undefined);
    },
    end() {},
    destroy() {},
    on() {},
    removeAllListeners() {},
  };
}

function installStandInDriver(): void {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const Client = require('knex/lib/dialects/mysql2') as { prototype: Record<string, unknown> };
  let made = 0;
  Client.prototype.acquireRawConnection = async () => standInConnection(++made);
  Client.prototype.destroyRawConnection = async () => undefined;
}

const CONNECTION = { host: '127.0.0.1', user: 'bench' };
const tenantId = (i: number): string => `t${i}`;

function tenancyFor(variant: Variant): Tenancy {
  if (variant === 'pool-per-tenant') {
    return createTenancy({ knexConfig: (id) => ({ client: 'mysql2', connection: { ...CONNECTION, database: `db_${id}` }, pool: { min: 0, max: 2 } }) });
  }
  return createTenancy({
    strategy: 'shared',
    ...(variant === 'shared' ? {} : { qualifyTables: false, inlineSwitch: variant === 'shared-inline' }),
    servers: { main: { client: 'mysql2', connection: CONNECTION, pool: { max: CONNECTIONS } } },
    locate: (id) => ({ server: 'main', database: `db_${id}` }),
  });
}

async function child(variant: Variant): Promise<void> {
  installStandInDriver();
  // The library's storage is in use in every variant, as in any app that loads it.
  const warm = tenancyFor('pool-per-tenant');
  await warm.runWithTenant('warm', () => 0);
  await warm.destroy();
  let query: (tenant: number, row: number) => PromiseLike<unknown>;
  let close: () => Promise<unknown>;
  if (variant === 'passing' || variant === 'bindKnex' || variant === 'passing-scoped') {
    const knexes: Knex[] = Array.from({ length: TENANTS }, (_, i) =>
      knexFactory({ client: 'mysql2', connection: { ...CONNECTION, database: `db_${tenantId(i)}` }, pool: { min: 0, max: 2 } }),
    );
    const appStorage = new AsyncLocalStorage<{ tenant: number }>();
    query =
      variant === 'passing' ? (t, row) => Person.query(knexes[t]!).findById(row)
      : variant === 'bindKnex' ? (t, row) => Person.bindKnex(knexes[t]!).query().findById(row)
      : (t, row) => appStorage.run({ tenant: t }, () => Person.query(knexes[t]!).findById(row));
    close = () => Promise.all(knexes.map((knex) => knex.destroy()));
  } else if (variant === 'qualified') {
    const knex = knexFactory({ client: 'mysql2', connection: CONNECTION, pool: { min: 0, max: CONNECTIONS } });
    const databases = Array.from({ length: TENANTS }, (_, i) => `db_${tenantId(i)}`);
    query = (t, row) => Person.query(knex).withSchema(databases[t]!).findById(row);
    close = () => knex.destroy();
  } else {
    const tenancy = tenancyFor(variant);
    query = (t, row) => tenancy.runWithTenant(tenantId(t), () => TPerson.query().findById(row));
    close = () => tenancy.destroy();
  }
  const load = async (count: number): Promise<void> => {
    let next = 0;
    await Promise.all(
      Array.from({ length: IN_FLIGHT }, async () => {
        while (next < count) {
          const n = next++;
          const row = 1 + (n % 10);
          const person = (await query(n % TENANTS, row)) as { id: number } | undefined;
          if (person?.id !== row) throw new Error(`${variant}: query ${n} answered ${JSON.stringify(person)}`);
        }
      }),
    );
  };
  await load(QUERIES / 2);
  const cpu = process.cpuUsage();
  const start = process.hrtime.bigint();
  await load(QUERIES);
  const used = process.cpuUsage(cpu);
  const ns = Number(process.hrtime.bigint() - start);
  await close();
  process.stdout.write(JSON.stringify({ variant, cpuUs: (used.user + used.system) / QUERIES, wallUs: ns / 1000 / QUERIES }));
}

// --- parent -------------------------------------------------------------------------------------

const round3 = (n: number): number => Math.round(n * 1000) / 1000;

function parent(): void {
  const loadBefore = loadAverage();
  const runs = new Map<Variant, number[]>(VARIANTS.map((v) => [v, []]));
  const ratios = new Map<Variant, number[]>(VARIANTS.map((v) => [v, []]));
  for (let round = 0; round < ROUNDS; round++) {
    const order = VARIANTS.map((_, i) => VARIANTS[(i + round) % VARIANTS.length]!);
    const cpu = new Map<Variant, number>();
    for (const variant of order) {
      const out = execFileSync(process.execPath, ['--import', 'tsx', __filename, '--child', variant], {
        env: { ...process.env, NODE_ENV: process.env.NODE_ENV ?? 'production' },
        encoding: 'utf8',
      });
      const { cpuUs } = JSON.parse(out) as { cpuUs: number };
      cpu.set(variant, cpuUs);
      runs.get(variant)!.push(cpuUs);
    }
    for (const variant of VARIANTS) ratios.get(variant)!.push(cpu.get(variant)! / cpu.get('passing')!);
    process.stderr.write(`round ${round + 1}/${ROUNDS}: ${VARIANTS.map((v) => `${v} ${cpu.get(v)!.toFixed(1)}`).join(', ')} µs/query\n`);
  }
  console.log(`\nCPU time per query of this process, stand-in driver (no server), ${TENANTS} tenants in turn, ${IN_FLIGHT} in flight, ${ROUNDS} rounds of ${QUERIES} queries`);
  console.log(`${'variant'.padEnd(18)}${'median µs'.padStart(11)}${'lowest µs'.padStart(11)}${'vs passing'.padStart(12)}`);
  const result: Record<string, number> = {};
  for (const variant of VARIANTS) {
    const values = runs.get(variant)!;
    const ratio = median(ratios.get(variant)!);
    console.log(`${variant.padEnd(18)}${median(values).toFixed(1).padStart(11)}${Math.min(...values).toFixed(1).padStart(11)}${ratio.toFixed(3).padStart(12)}`);
    const key = variant.replace(/-/g, '_');
    result[`${key}_cpu_us`] = Math.round(median(values) * 10) / 10;
    if (variant !== 'passing') result[`${key}_vs_passing`] = round3(ratio);
  }
  console.log('vs passing: median of the per-round ratios of CPU time per query (lower is cheaper); 1.000 is the recipe itself.');
  console.log(`RESULT ${JSON.stringify(result)}`);
  writeResults('cpu', { mariadb: 'none (stand-in driver)', loadBefore, settings: { rounds: ROUNDS, queries: QUERIES, tenants: TENANTS, inFlight: IN_FLIGHT, connections: CONNECTIONS }, result });
}

const childAt = process.argv.indexOf('--child');
if (childAt >= 0) {
  const variant = process.argv[childAt + 1] as Variant;
  if (!VARIANTS.includes(variant)) throw new Error(`unknown variant ${variant}`);
  child(variant).catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
} else {
  parent();
}
