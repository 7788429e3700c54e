/**
 * The same Express app three ways (and the recipe twice more: again, and without AsyncLocalStorage), over HTTP on
 * loopback, under autocannon:
 *   ours      `tenancy.middleware()` and models imported directly: `Person.query()` (TenantModel)
 *   passing   the objection-docs recipe with its knex cache fixed (a Map of tenant knexes created once)
 *             and the knex passed to every query: `Person.query(req.knex)`
 *   bindKnex  the recipe's other form: `req.models = { Person: Person.bindKnex(req.knex) }` per request
 *             (objection caches the bound class on each tenant knex), `req.models.Person.query()`
 *   passing2  `passing` again in a process of its own: an A/A control, the run's own noise floor
 *             (two identical apps differ by this much; a ratio inside it proves nothing)
 *   passing'  `passing` in a process with no AsyncLocalStorage at all. On Node 20 the first
 *             AsyncLocalStorage.run() of a process adds promise hooks to every promise; the recipe
 *             processes above have one in use (as apps with tracing or request logging do), this
 *             one shows what the scope costs on this Node beyond the library's own code.
 * Eight tenant databases of 1,000 rows; every request names a random tenant (header `x-tenant-id`)
 * and a random id; the route does a `findById` and a list of the next 5 rows. Each variant is its own
 * server process (no variant runs on JIT code specialised for another: in one process, objection's
 * call sites see two model hierarchies and the variant measured second paid up to 8%), with its own
 * knex per tenant and the same pool settings. autocannon runs in a child process and checks that every
 * body holds only rows of the tenant asked for. The servers run with NODE_ENV=production unless set.
 *
 * Sequential rounds load one variant at a time (rotated order) after a warm-up; figures are medians
 * over rounds: requests/s, p50 and p99 latency (autocannon's), and the server's CPU time per request.
 * Side-by-side rounds then load all of them at once, each with its own autocannon, so that other load on
 * the machine hits them alike; their figure is the median of per-round ratios of requests served.
 *
 * Run: `npm run bench:http`. Env: MYSQL_URL (default mysql://root@127.0.0.1:3306/test), BENCH_ROUNDS
 * (9), BENCH_SIDE_BY_SIDE_ROUNDS (5), BENCH_CELL_S (5), BENCH_WARMUP_S (3), BENCH_CONNECTIONS (32), BENCH_POOL_MAX (3: five servers x 8 tenants x 3 stay under MariaDB's 151 connections), BENCH_PROFILE_DIR
 * (unset: when set, each server process writes its CPU profiles to `<dir>/<variant>/`).
 * Prints one table, ends with one line `RESULT {"ours_vs_passing": R, "ours_vs_bindknex": R2, ...}`
 * (req/s over req/s; the target is >= 0.97), and writes benchmarks/results/http.json.
 */
import { fork, type ChildProcess } from 'node:child_process';
import type { AddressInfo } from 'node:net';
import autocannon from 'autocannon';
import express from 'express';
import knexFactory, { type Knex } from 'knex';
import { AsyncLocalStorage } from 'node:async_hooks';
import { createTenancy } from './library';
import type { Tenancy } from '../lib/index';
import { Person, TPerson } from './models';
import { intEnv, loadAverage, median, versionOf, writeResults } from './results';
import { mysqlConnection } from '../test/helpers/mysql-url';

const MYSQL_URL = process.env.MYSQL_URL ?? 'mysql://root@127.0.0.1:3306/test';
const TENANTS = Array.from({ length: 8 }, (_, i) => `t${i + 1}`);
const ROWS = 1000;
const ROUNDS = intEnv('BENCH_ROUNDS', 9);
const CELL_S = intEnv('BENCH_CELL_S', 5);
const WARMUP_S = intEnv('BENCH_WARMUP_S', 3);
const CONNECTIONS = intEnv('BENCH_CONNECTIONS', 32);
const POOL_MAX = intEnv('BENCH_POOL_MAX', 3);
const SIDE_BY_SIDE_ROUNDS = intEnv('BENCH_SIDE_BY_SIDE_ROUNDS', 5);
const dbName = (tenant: string) => `ot_hbench_${tenant}`;

const connection = (database?: string) => mysqlConnection(database, MYSQL_URL);

function knexConfig(tenant: string): Knex.Config {
  return { client: 'mysql2', connection: connection(dbName(tenant)), pool: { min: 0, max: POOL_MAX } };
}

// ---------------------------------------------------------------------------------------------
// The load generator (child process): runs autocannon on request and reports a summary.

interface LoadRequest {
  url: string;
  seconds: number;
  connections: number;
}

interface LoadSummary {
  ok: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  /** Bodies holding a row of another tenant (or none of the right one). */
  wrong: number;
  duration: number;
  p50: number;
  p99: number;
}

async function runLoad({ url, seconds, connections }: LoadRequest): Promise<LoadSummary> {
  let wrong = 0;
  const result = await autocannon({
    url,
    connections,
    duration: seconds,
    requests: [
      {
        setupRequest: (request, context) => {
          const tenant = TENANTS[Math.floor(Math.random() * TENANTS.length)]!;
          (context as { tenant?: string }).tenant = tenant;
          const id = 1 + Math.floor(Math.random() * ROWS);
          return { ...request, path: `/people/${id}`, headers: { ...request.headers, 'x-tenant-id': tenant } };
        },
        onResponse: (status, body, context) => {
          if (status !== 200) return;
          const tenant = (context as { tenant?: string }).tenant;
          const names = body.split('"name":"').length - 1;
          const own = body.split(`"name":"${tenant}-`).length - 1;
          if (names === 0 || own !== names) wrong++;
        },
      },
    ],
  });
  return {
    ok: result['2xx'],
    non2xx: result.non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
    wrong,
    duration: result.duration,
    p50: result.latency.p50,
    p99: result.latency.p99,
  };
}

function loadChild(): void {
  process.on('message', (message: LoadRequest) => {
    runLoad(message).then(
      (summary) => process.send!({ summary }),
      (error: unknown) => process.send!({ error: String((error as Error)?.stack ?? error) }),
    );
  });
  process.on('disconnect', () => process.exit(0));
}

/** A load generator: a child process that runs autocannon on request. */
function startLoader(): ChildProcess {
  return fork(__filename, ['--load-child'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
}

/** Asks the child for one autocannon run. */
function load(child: ChildProcess, request: LoadRequest): Promise<LoadSummary> {
  return new Promise((resolve, reject) => {
    child.once('message', (message: { summary?: LoadSummary; error?: string }) => {
      if (message.summary !== undefined) resolve(message.summary);
      else reject(new Error(`autocannon failed: ${message.error}`));
    });
    child.send(request);
  });
}

// ---------------------------------------------------------------------------------------------
// The three apps.

type RecipeRequest = express.Request & { knex?: Knex; models?: { Person: typeof Person } };

function parseId(value: string | undefined): number | undefined {
  const id = Number(value);
  return Number.isInteger(id) && id > 0 ? id : undefined;
}

/** The route every variant serves: `find(req, id)` does one findById and reads the next 5 rows. */
function route(find: (req: express.Request, id: number) => Promise<{ person: unknown; next: unknown }>): express.RequestHandler {
  return async (req, res, next) => {
    try {
      const id = parseId(req.params.id);
      if (id === undefined) {
        res.status(400).json({ error: { code: 'BAD_ID' } });
        return;
      }
      res.json(await find(req, id));
    } catch (error) {
      next(error);
    }
  };
}

function oursApp(tenancy: Tenancy): express.Express {
  const app = express();
  app.use(tenancy.middleware());
  app.get('/people/:id', route(async (_req, id) => {
    const person = await TPerson.query().findById(id);
    const next = await TPerson.query().where('id', '>', id).orderBy('id').limit(5);
    return { person, next };
  }));
  app.use(tenancy.errorHandler({ all: true }));
  return app;
}

/** The objection-docs recipe, with its cache fixed: one knex per tenant, created once. */
function recipeApp(knexes: ReadonlyMap<string, Knex>, form: 'passing' | 'bindKnex'): express.Express {
  const app = express();
  app.use((req: RecipeRequest, res, next) => {
    const tenant = req.headers['x-tenant-id'];
    const knex = typeof tenant === 'string' ? knexes.get(tenant) : undefined;
    if (knex === undefined) {
      res.status(404).json({ error: { code: 'TENANT_UNKNOWN' } });
      return;
    }
    req.knex = knex;
    // objection caches the bound class on the knex: after the first request this is a lookup.
    if (form === 'bindKnex') req.models = { Person: Person.bindKnex(knex) };
    next();
  });
  if (form === 'passing') {
    app.get('/people/:id', route(async (req, id) => {
      const { knex } = req as RecipeRequest;
      const person = await Person.query(knex).findById(id);
      const next = await Person.query(knex).where('id', '>', id).orderBy('id').limit(5);
      return { person, next };
    }));
  } else {
    app.get('/people/:id', route(async (req, id) => {
      const { Person: P } = (req as RecipeRequest).models!;
      const person = await P.query().findById(id);
      const next = await P.query().where('id', '>', id).orderBy('id').limit(5);
      return { person, next };
    }));
  }
  app.use(((error, _req, res, _next) => {
    res.status(500).json({ error: { code: 'INTERNAL', message: String(error) } });
  }) as express.ErrorRequestHandler);
  return app;
}

function listen(app: express.Express): Promise<{ url: string; close(): Promise<void> }> {
  return new Promise((resolve) => {
    const server = app.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      resolve({
        url: `http://127.0.0.1:${port}`,
        close: () => new Promise<void>((done) => {
          server.closeAllConnections();
          server.close(() => done());
        }),
      });
    });
  });
}

// ---------------------------------------------------------------------------------------------

async function setUp(admin: Knex): Promise<string> {
  const [rows] = await admin.raw('select version() as v');
  for (const tenant of TENANTS) {
    const db = dbName(tenant);
    await admin.raw('drop database if exists ??', [db]);
    await admin.raw('create database ?? character set utf8mb4', [db]);
    await admin.raw(`create table ??.persons (id int not null auto_increment primary key, name varchar(255) not null)`, [db]);
    const values = Array.from({ length: ROWS }, (_, i) => `${tenant}-person-${i + 1}`);
    await admin.withSchema(db).table('persons').insert(values.map((name) => ({ name })));
  }
  return (rows as { v: string }[])[0]!.v;
}

const round3 = (value: number) => Math.round(value * 1000) / 1000;

type VariantKey = 'ours' | 'passing' | 'bindKnex' | 'passingNoAls' | 'passingCopy';

interface Variant {
  key: VariantKey;
  label: string;
}

const VARIANTS: readonly Variant[] = [
  { key: 'ours', label: 'ours: Person.query() in scope' },
  { key: 'passing', label: 'recipe: Person.query(req.knex)' },
  { key: 'bindKnex', label: 'recipe: req.models (bindKnex)' },
  { key: 'passingNoAls', label: 'recipe: Person.query(knex), no ALS' },
  { key: 'passingCopy', label: 'recipe again (A/A: the noise)' },
];

interface Cell {
  rps: number[];
  p50: number[];
  p99: number[];
  cpuUsPerReq: number[];
  failures: number;
  wrong: number;
}

// ---------------------------------------------------------------------------------------------
// A server (child process): one variant per process, so that no variant runs on code the JIT
// specialised for another (objection's builders of two model hierarchies in one process make its
// call sites polymorphic, which cost the variants measured second up to 8%).

type ServerMessage = { url: string } | { cpu: NodeJS.CpuUsage };

async function serverChild(key: VariantKey): Promise<void> {
  process.env.NODE_ENV ??= 'production';
  let app: express.Express;
  let close: () => Promise<unknown>;
  if (key === 'ours') {
    const tenancy = createTenancy({ knexConfig, tenantExists: (id) => TENANTS.includes(id) });
    app = oursApp(tenancy);
    close = () => tenancy.destroy();
  } else {
    const knexes = new Map(TENANTS.map((t) => [t, knexFactory(knexConfig(t))]));
    // passingCopy is passing once more in a process of its own: what two identical apps differ by.
    app = recipeApp(knexes, key === 'bindKnex' ? 'bindKnex' : 'passing');
    close = () => Promise.allSettled([...knexes.values()].map((k) => k.destroy()));
    // An app with an AsyncLocalStorage in use (tracing, request logging): on Node 20 the first run()
    // turns on promise hooks for the whole process. passingNoAls is the same app without one.
    if (key !== 'passingNoAls') new AsyncLocalStorage<number>().run(0, () => undefined);
  }
  const server = await listen(app);
  process.on('message', (message: string) => {
    if (message === 'cpu') process.send!({ cpu: process.cpuUsage() } satisfies ServerMessage);
  });
  process.on('disconnect', () => {
    void server.close().then(close).finally(() => process.exit(0));
  });
  process.send!({ url: server.url } satisfies ServerMessage);
}

function startServer(key: VariantKey): Promise<{ child: ChildProcess; url: string; cpu(): Promise<number> }> {
  // BENCH_PROFILE_DIR: each server writes its CPU profiles to <dir>/<variant>/ when it exits (one per
  // thread: the largest is the main thread's).
  const profile = process.env.BENCH_PROFILE_DIR;
  const execArgv = profile === undefined ? process.execArgv : [...process.execArgv, '--cpu-prof', `--cpu-prof-dir=${profile}/${key}`];
  const child = fork(__filename, ['--server-child', key], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv });
  const cpu = () =>
    new Promise<number>((resolve) => {
      const onMessage = (message: ServerMessage) => {
        if (!('cpu' in message)) return;
        child.off('message', onMessage);
        resolve(message.cpu.user + message.cpu.system);
      };
      child.on('message', onMessage);
      child.send('cpu');
    });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`server ${key} exited with ${code}`)));
    child.once('message', (message: ServerMessage) => {
      if ('url' in message) resolve({ child, url: message.url, cpu });
    });
  });
}

async function main(): Promise<void> {
  const loadBefore = loadAverage();
  const admin = knexFactory({ client: 'mysql2', connection: connection(), pool: { min: 0, max: 1 } });
  const mariadb = await setUp(admin);
  const servers = new Map<VariantKey, Awaited<ReturnType<typeof startServer>>>();
  const child = startLoader();

  try {
    for (const variant of VARIANTS) servers.set(variant.key, await startServer(variant.key));
    const urlOf = (variant: Variant) => servers.get(variant.key)!.url;
    // Every variant answers with the right tenant's rows before anything is measured.
    for (const variant of VARIANTS) {
      for (const tenant of TENANTS) {
        const response = await fetch(`${urlOf(variant)}/people/7`, { headers: { 'x-tenant-id': tenant } });
        const body = (await response.json()) as { person: { name: string }; next: { name: string }[] };
        const names = [body.person?.name, ...(body.next ?? []).map((r) => r.name)];
        if (response.status !== 200 || names.join() !== [7, 8, 9, 10, 11, 12].map((i) => `${tenant}-person-${i}`).join()) {
          throw new Error(`${variant.label}: wrong answer for ${tenant}: ${response.status} ${JSON.stringify(body)}`);
        }
      }
    }

    const cells = new Map<VariantKey, Cell>(VARIANTS.map((v) => [v.key, { rps: [], p50: [], p99: [], cpuUsPerReq: [], failures: 0, wrong: 0 }]));
    const started = Date.now();
    process.stderr.write(`warm-up: ${VARIANTS.length} x ${WARMUP_S} s\n`);
    for (const variant of VARIANTS) await load(child, { url: urlOf(variant), seconds: WARMUP_S, connections: CONNECTIONS });
    for (let round = 0; round < ROUNDS; round++) {
      const order = VARIANTS.map((_, i) => VARIANTS[(i + round) % VARIANTS.length]!);
      for (const variant of order) {
        const server = servers.get(variant.key)!;
        const cpuStart = await server.cpu();
        const summary = await load(child, { url: server.url, seconds: CELL_S, connections: CONNECTIONS });
        const cpu = (await server.cpu()) - cpuStart;
        const cell = cells.get(variant.key)!;
        cell.rps.push(summary.ok / summary.duration);
        cell.p50.push(summary.p50);
        cell.p99.push(summary.p99);
        cell.cpuUsPerReq.push(cpu / Math.max(1, summary.ok));
        cell.failures += summary.non2xx + summary.errors + summary.timeouts;
        cell.wrong += summary.wrong;
        process.stderr.write(`round ${round + 1}/${ROUNDS} ${variant.key}: ${(summary.ok / summary.duration).toFixed(0)} req/s\n`);
      }
    }
    // Side by side: every variant under its own load generator at the same time, so that whatever
    // else slows the machine slows them all alike; per-round ratios of requests served.
    const sideBySide = new Map<VariantKey, { rps: number[]; cpuUsPerReq: number[] }>(VARIANTS.map((v) => [v.key, { rps: [], cpuUsPerReq: [] }]));
    const loaders = VARIANTS.map(() => startLoader());
    try {
      for (let round = 0; round < SIDE_BY_SIDE_ROUNDS; round++) {
        const cpuStart = await Promise.all(VARIANTS.map((v) => servers.get(v.key)!.cpu()));
        const summaries = await Promise.all(VARIANTS.map((v, i) => load(loaders[i]!, { url: urlOf(v), seconds: CELL_S, connections: CONNECTIONS })));
        const cpuEnd = await Promise.all(VARIANTS.map((v) => servers.get(v.key)!.cpu()));
        VARIANTS.forEach((v, i) => {
          const summary = summaries[i]!;
          const cell = cells.get(v.key)!;
          cell.failures += summary.non2xx + summary.errors + summary.timeouts;
          cell.wrong += summary.wrong;
          sideBySide.get(v.key)!.rps.push(summary.ok / summary.duration);
          sideBySide.get(v.key)!.cpuUsPerReq.push((cpuEnd[i]! - cpuStart[i]!) / Math.max(1, summary.ok));
        });
        process.stderr.write(`side by side ${round + 1}/${SIDE_BY_SIDE_ROUNDS}: ${VARIANTS.map((v, i) => `${v.key} ${(summaries[i]!.ok / summaries[i]!.duration).toFixed(0)}`).join(', ')} req/s\n`);
      }
    } finally {
      for (const loader of loaders) loader.disconnect();
    }
    const seconds = (Date.now() - started) / 1000;
    const loadAfter = loadAverage();
    /** Median over side-by-side rounds of a's requests/s over b's in the same round. */
    const together = (a: VariantKey, b: VariantKey) => {
      const x = sideBySide.get(a)!.rps;
      const y = sideBySide.get(b)!.rps;
      return median(x.map((value, i) => value / y[i]!));
    };

    const rps = (key: VariantKey) => median(cells.get(key)!.rps);
    const cpu = (key: VariantKey) => median(cells.get(key)!.cpuUsPerReq);
    /** Median over sequential rounds of a's requests/s over b's in the same round (paired: slow spells of the machine last minutes). */
    const paired = (a: VariantKey, b: VariantKey) => {
      const y = cells.get(b)!.rps;
      return median(cells.get(a)!.rps.map((value, i) => value / y[i]!));
    };
    const pad = (text: string, width: number, right = true) => (right ? text.padStart(width) : text.padEnd(width));
    console.log('');
    console.log(`objection-tenancy over HTTP: GET /people/:id (findById + next 5 rows), ${TENANTS.length} tenant databases of ${ROWS} rows, random tenant per request`);
    console.log(`Node ${process.version}, MariaDB ${mariadb}, express ${versionOf('express')}, autocannon ${versionOf('autocannon')}, knex ${versionOf('knex')}, objection ${versionOf('objection')}, NODE_ENV=production`);
    console.log(`${CONNECTIONS} connections, pool max ${POOL_MAX} per tenant knex; one server process per variant; ${ROUNDS} rounds x ${CELL_S} s per variant after ${WARMUP_S} s warm-up; medians over rounds; ${seconds.toFixed(0)} s`);
    console.log(`load average ${loadBefore} before, ${loadAfter} after (2 cores shared by the servers, autocannon and MariaDB)`);
    console.log('');
    const header = [pad('variant', 35, false), pad('req/s', 8), pad('p50 ms', 7), pad('p99 ms', 7), pad('cpu us/req', 10), pad('vs passing', 10), pad('vs bindKnex', 11), pad('errors', 6)].join('  ');
    console.log(header);
    console.log('-'.repeat(header.length));
    for (const variant of VARIANTS) {
      const cell = cells.get(variant.key)!;
      console.log(
        [
          pad(variant.label, 35, false),
          pad(rps(variant.key).toFixed(0), 8),
          pad(median(cell.p50).toFixed(1), 7),
          pad(median(cell.p99).toFixed(1), 7),
          pad(cpu(variant.key).toFixed(0), 10),
          pad(paired(variant.key, 'passing').toFixed(3), 10),
          pad(paired(variant.key, 'bindKnex').toFixed(3), 11),
          pad(String(cell.failures + cell.wrong), 6),
        ].join('  '),
      );
    }
    console.log('');
    console.log('req/s: 2xx responses per second; p50/p99: autocannon latency; cpu us/req: the variant\'s server process CPU time');
    console.log('per response (autocannon and MariaDB not counted); vs: median of per-round ratios of req/s to the recipe\'s (higher is better); errors: non-2xx,');
    console.log('socket errors, timeouts and bodies holding another tenant\'s row (must be 0). The recipe processes have an');
    console.log('AsyncLocalStorage in use, as ours has; no ALS: the same recipe app in a process without any (Node 20 then runs');
    console.log('without promise hooks: what the library\'s scope costs on this Node beyond its own code).');
    console.log('');
    const failures = [...cells.values()].reduce((n, c) => n + c.failures, 0);
    const wrong = [...cells.values()].reduce((n, c) => n + c.wrong, 0);
    console.log(`side by side (${SIDE_BY_SIDE_ROUNDS} rounds x ${CELL_S} s, all loaded at once, ${CONNECTIONS} connections each): ` +
      VARIANTS.map((v) => `${v.key} ${median(sideBySide.get(v.key)!.rps).toFixed(0)} req/s`).join(', '));
    console.log(`  ours vs passing ${together('ours', 'passing').toFixed(3)}, the recipe's copy vs passing ${together('passingCopy', 'passing').toFixed(3)}, vs bindKnex ${together('ours', 'bindKnex').toFixed(3)}, vs passing without ALS ${together('ours', 'passingNoAls').toFixed(3)} (medians of per-round ratios)`);
    console.log('');
    const result = {
      ours_vs_passing_side_by_side: round3(together('ours', 'passing')),
      ours_vs_bindknex_side_by_side: round3(together('ours', 'bindKnex')),
      ours_vs_passing_no_als_side_by_side: round3(together('ours', 'passingNoAls')),
      passing_copy_vs_passing_side_by_side: round3(together('passingCopy', 'passing')),
      ours_vs_passing: round3(paired('ours', 'passing')),
      ours_vs_bindknex: round3(paired('ours', 'bindKnex')),
      ours_vs_passing_no_als: round3(paired('ours', 'passingNoAls')),
      passing_copy_vs_passing: round3(paired('passingCopy', 'passing')),
      ours_cpu_vs_passing: round3(cpu('ours') / cpu('passing')),
      ours_cpu_vs_bindknex: round3(cpu('ours') / cpu('bindKnex')),
      ours_cpu_vs_passing_no_als: round3(cpu('ours') / cpu('passingNoAls')),
      ours_rps: Math.round(rps('ours')),
      passing_rps: Math.round(rps('passing')),
      bindknex_rps: Math.round(rps('bindKnex')),
      passing_no_als_rps: Math.round(rps('passingNoAls')),
      ours_p99_ms: round3(median(cells.get('ours')!.p99)),
      passing_p99_ms: round3(median(cells.get('passing')!.p99)),
      bindknex_p99_ms: round3(median(cells.get('bindKnex')!.p99)),
      errors: failures,
      wrong_tenant: wrong,
    };
    console.log(`RESULT ${JSON.stringify(result)}`);
    writeResults('http', {
      mariadb,
      loadBefore,
      settings: { tenants: TENANTS.length, rows: ROWS, connections: CONNECTIONS, poolMax: POOL_MAX, rounds: ROUNDS, cellS: CELL_S, warmupS: WARMUP_S, nodeEnv: 'production', processPerVariant: true },
      result,
      rounds: Object.fromEntries(VARIANTS.map((v) => [v.key, { sequentialRps: cells.get(v.key)!.rps.map(Math.round), sideBySideRps: sideBySide.get(v.key)!.rps.map(Math.round) }])),
      express: versionOf('express'),
      autocannon: versionOf('autocannon'),
    });
    if (failures > 0 || wrong > 0) process.exitCode = 1;
  } finally {
    child.disconnect();
    await Promise.all(
      [...servers.values()].map(({ child: server }) => new Promise((done) => {
        server.once('exit', done);
        server.disconnect();
      })),
    );
    for (const tenant of TENANTS) await admin.raw('drop database if exists ??', [dbName(tenant)]);
    await admin.destroy();
  }
}

const serverIndex = process.argv.indexOf('--server-child');
if (process.argv.includes('--load-child')) {
  loadChild();
} else if (serverIndex !== -1) {
  serverChild(process.argv[serverIndex + 1] as VariantKey).catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
} else {
  main().catch((error: unknown) => {
    console.error(error);
    process.exitCode = 1;
  });
}
