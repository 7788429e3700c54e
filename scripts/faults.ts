/**
 * Fault injection under HTTP load, for each strategy (pool-per-tenant; shared with its defaults,
 * qualifyTables and the 'auto' cold-switch cap; and shared with `qualifyTables: false`: alone
 * (shared-use), with inlineSwitch, with inlineSwitch and maxSwitchedConnections: 2, and with
 * inlineSwitch and resetSession), through the ledger app (scripts/ledger.ts) with
 * `tenancy.errorHandler()`:
 *
 * (a) Server outage. Tenants `p1..p4` live on a private MariaDB started by this script
 *     (scripts/private-mariadb.ts, port 3308 or a free one; the system server is never stopped) and
 *     tenants `m1, m2` on the system MariaDB. Under load, the private server is stopped (SIGTERM; the
 *     full run also crashes it with SIGKILL), left down for a few seconds, and started again on the
 *     same data directory. Checks: while it is down its tenants get 503 with Retry-After, fast (the
 *     acquire timeout is 1 s); every answer to them is 2xx or 503, or 500 outcome unknown for a
 *     transaction whose COMMIT the fault cut after it was sent (never another 500); they are served again
 *     after the restart without restarting the app; the tenants on the other server never notice.
 *     The full run also freezes it (SIGSTOP, thawed with SIGCONT after the same time): a server that
 *     accepts connections and answers nothing, as a hung one or one cut off without a reset. Then
 *     the requests answered while it is frozen are 503s within the same bound, and only statements
 *     already on one of its connections wait for the thaw (at most one per connection it may hold).
 * (b) Dropped database. Tenants `d1..d4` on the system MariaDB; under load `d2`'s database is dropped.
 *     Checks: `d2` then gets 404 or 503 only; the other tenants never notice.
 *
 * Both: no response holds another tenant's row; every tenant's database holds every write
 * acknowledged to it, no rolled-back write, and no row of another tenant (writes that got no answer
 * or a 503 may or may not have landed); no unhandled rejection; no lease left. With qualifyTables
 * (shared), raw SQL naming no database is part of the load, and connections were taken back to no database.
 *
 * Run: `npm run faults` (full: ~2.5 min) or `npm run faults -- --short` (CI: SIGTERM only, shorter
 * phases, ~30 s). Env: MYSQL_URL (default mysql://root@127.0.0.1:3306/test), FAULTS_MARIADB_PORT
 * (3308). Prints a summary, ends with one line `RESULT {...}`, exits non-zero when a check fails; the
 * full run also writes benchmarks/results/faults.json.
 */
import knexFactory, { type Knex } from 'knex';
import { createTenancy, type TenancyOptions } from '../lib/index';
import { mysqlConnection } from '../test/helpers/databases';
import { listen } from '../test/helpers/http';
import { loadAverage, writeResults } from '../benchmarks/results';
import { checkLedger, createLedgerSchema, LedgerClient, LedgerPerson, ledgerApp, mix, type LedgerModelClass, type Outcome } from './ledger';
import { startPrivateMariaDb, type PrivateMariaDb } from './private-mariadb';

const SHORT = process.argv.includes('--short');
const WARM_MS = SHORT ? 1_000 : 3_000;
const DOWN_MS = SHORT ? 2_000 : 5_000;
const STEADY_MS = SHORT ? 1_000 : 3_000;
const AFTER_DROP_MS = SHORT ? 1_500 : 4_000;
const RECOVERY_LIMIT_MS = 15_000;
const ACQUIRE_MS = 1_000;
/** A 503 while the server is down must come within the acquire timeout plus this much. */
const FAIL_FAST_SLACK_MS = 1_500;
const CONCURRENCY = 16;
const SHARED_POOL_MAX = 8;
const PER_TENANT_POOL_MAX = 3;
/** SIGSTOP: the server is frozen (thawed with SIGCONT) rather than stopped and started again. */
type Fault = 'SIGTERM' | 'SIGKILL' | 'SIGSTOP';
const SIGNALS: Fault[] = SHORT ? ['SIGTERM'] : ['SIGTERM', 'SIGKILL', 'SIGSTOP'];
const STRATEGIES = ['pool-per-tenant', 'shared', 'shared-use', 'shared-inline', 'shared-tuned', 'shared-reset'] as const;
type Strategy = (typeof STRATEGIES)[number];

const PREFIX = 'ot_faults_';
const PRIVATE_TENANTS = ['p1', 'p2', 'p3', 'p4'];
const MAIN_TENANTS = ['m1', 'm2'];
const DROP_TENANTS = ['d1', 'd2', 'd3', 'd4'];
const DROPPED = 'd2';
const dbName = (tenant: string) => `${PREFIX}${tenant}`;
const LOAD_WEIGHTS = { list: 35, get: 20, balance: 10, write: 20, txWrite: 15 };
/**
 * `session` requests (another tenant's user variable is a leak) where a clean session per tenant is
 * promised; with qualifyTables, `raw` requests (SQL naming no database: refused on a clean connection,
 * sent again after a switch, the connection taken back to no database when another tenant takes it).
 */
const loadMix = (strategy: Strategy) => {
  if (strategy === 'pool-per-tenant' || strategy === 'shared-reset') return mix({ ...LOAD_WEIGHTS, session: 8 });
  if (strategy === 'shared') return mix({ ...LOAD_WEIGHTS, raw: 3 });
  return mix(LOAD_WEIGHTS);
};

let unhandled = 0;
const unhandledSamples: string[] = [];
process.on('unhandledRejection', (reason) => {
  unhandled++;
  if (unhandledSamples.length < 5) unhandledSamples.push(String((reason as Error)?.stack ?? reason).slice(0, 500));
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const is2xx = (status: number) => status >= 200 && status < 300;
/**
 * A write whose COMMIT the fault cut after it was sent: 500 `TENANT_TRANSACTION_OUTCOME_UNKNOWN` (it may
 * have landed; the ledger books every non-2xx write as uncertain, and counts those that landed).
 */
const outcomeUnknown = (o: { status: number; body?: string }) => o.status === 500 && (o.body ?? '').includes('TENANT_TRANSACTION_OUTCOME_UNKNOWN');

interface Servers {
  private: PrivateMariaDb;
  /** Connection settings without a database. */
  privateConnection: Knex.MySql2ConnectionConfig;
  mainConnection: Knex.MySql2ConnectionConfig;
}

function locate(servers: Servers, tenant: string): { server: 'private' | 'main'; connection: Knex.MySql2ConnectionConfig } {
  return tenant.startsWith('p')
    ? { server: 'private', connection: servers.privateConnection }
    : { server: 'main', connection: servers.mainConnection };
}

function tenancyOptions(strategy: Strategy, servers: Servers, tenants: readonly string[]): TenancyOptions {
  const known = new Set(tenants);
  const tenantExists = (id: string) => known.has(id);
  if (strategy !== 'pool-per-tenant') {
    return {
      strategy: 'shared',
      // shared: the defaults; the others USE switching, with no cap unless named.
      ...(strategy === 'shared' ? {} : { qualifyTables: false, maxSwitchedConnections: strategy === 'shared-tuned' ? 2 : Infinity }),
      inlineSwitch: strategy !== 'shared' && strategy !== 'shared-use',
      resetSession: strategy === 'shared-reset',
      servers: {
        private: { client: 'mysql2', connection: { ...servers.privateConnection, connectTimeout: ACQUIRE_MS }, pool: { max: SHARED_POOL_MAX } },
        main: { client: 'mysql2', connection: { ...servers.mainConnection, connectTimeout: ACQUIRE_MS }, pool: { max: SHARED_POOL_MAX } },
      },
      locate: (id) => ({ server: locate(servers, id).server, database: dbName(id) }),
      acquireTimeoutMs: ACQUIRE_MS,
      tenantExists,
    };
  }
  return {
    knexConfig: (id) => ({
      client: 'mysql2',
      connection: { ...locate(servers, id).connection, database: dbName(id), connectTimeout: ACQUIRE_MS },
      pool: { max: PER_TENANT_POOL_MAX },
      acquireConnectionTimeout: ACQUIRE_MS,
    }),
    tenantExists,
  };
}

async function withKnex<T>(connection: Knex.MySql2ConnectionConfig, fn: (knex: Knex) => Promise<T>): Promise<T> {
  const knex = knexFactory({ client: 'mysql2', connection, pool: { min: 0, max: 1 } });
  try {
    return await fn(knex);
  } finally {
    await knex.destroy();
  }
}

async function createTenantDatabases(servers: Servers, tenants: readonly string[]): Promise<void> {
  for (const tenant of tenants) {
    const { connection } = locate(servers, tenant);
    await withKnex(connection, async (admin) => {
      await admin.raw('drop database if exists ??', [dbName(tenant)]);
      await admin.raw('create database ?? character set utf8mb4', [dbName(tenant)]);
    });
    await withKnex({ ...connection, database: dbName(tenant) }, (knex) => createLedgerSchema(knex, tenant));
  }
}

async function dropTenantDatabases(servers: Servers, tenants: readonly string[], onlyMain = false): Promise<void> {
  for (const tenant of tenants) {
    const { server, connection } = locate(servers, tenant);
    if (onlyMain && server !== 'main') continue;
    await withKnex(connection, (admin) => admin.raw('drop database if exists ??', [dbName(tenant)])).catch(() => undefined);
  }
}

/** An app, a tenancy and a closed-loop load over `tenants` that records every outcome. */
async function startLoad(strategy: Strategy, servers: Servers, tenants: readonly string[], label: string) {
  const tenancy = createTenancy(tenancyOptions(strategy, servers, tenants));
  const serverErrors = new Map<string, number>();
  const unmapped: string[] = [];
  const onError = (error: unknown) => {
    const native = (error as { nativeError?: unknown }).nativeError ?? (error as { cause?: unknown }).cause ?? error;
    const key = String((native as { code?: unknown }).code ?? (error as { code?: unknown }).code ?? (error as Error).name);
    serverErrors.set(key, (serverErrors.get(key) ?? 0) + 1);
  };
  // Errors the tenancy's handler did not map (answered 500 by the app): the ones to explain.
  const onInternalError = (error: unknown) => {
    onError(error);
    if (unmapped.length < 3) {
      const { code, errno, fatal } = error as { code?: unknown; errno?: unknown; fatal?: unknown };
      unmapped.push(`${String((error as Error)?.stack ?? error).split('\n').slice(0, 4).join(' | ')} (code ${String(code)}, errno ${String(errno)}, fatal ${String(fatal)})`);
    }
  };
  const app = ledgerApp({
    middleware: tenancy.middleware(),
    Person: LedgerPerson as unknown as LedgerModelClass,
    transaction: (fn) => tenancy.transaction(() => fn()),
    errorHandler: tenancy.errorHandler({ onServerError: onError }),
    onInternalError,
  });
  const http = await listen(app);
  const client = new LedgerClient(http.url, label, CONCURRENCY);
  const nextKind = loadMix(strategy);
  const outcomes: Outcome[] = [];
  let running = true;
  const workers = Array.from({ length: CONCURRENCY }, async () => {
    while (running) {
      const tenant = tenants[Math.floor(Math.random() * tenants.length)]!;
      outcomes.push(await client.send(nextKind(), tenant));
    }
  });
  return {
    tenancy,
    client,
    outcomes,
    serverErrors,
    unmapped,
    async stop(): Promise<{ leasesLeft: number; restores: Restores }> {
      running = false;
      await Promise.all(workers);
      client.close();
      await http.close();
      for (let i = 0; i < 50 && tenancy.stats().leases > 0; i++) await sleep(20);
      const stats = tenancy.stats();
      const servers = Object.values(stats.servers ?? {});
      const restores = { taken: servers.reduce((sum, s) => sum + s.restores, 0), refused: servers.reduce((sum, s) => sum + s.restoreRefusals, 0) };
      await tenancy.destroy();
      return { leasesLeft: stats.leases, restores };
    },
  };
}

/** shared (qualifyTables): changes of user sent to take connections back to no database, and those refused. */
interface Restores {
  taken: number;
  refused: number;
}

/**
 * shared (qualifyTables): the raw requests ran, and connections were taken back to no database. Refused
 * changes of user are recorded, not checked: a dead connection is dropped before one is sent, so an
 * outage almost never reaches that path (the short form passed with every failure counted as one).
 */
function qualifiedRestores(scenario: Scenario, restores: Restores, outcomes: readonly Outcome[]): void {
  const raw = outcomes.filter((o) => o.kind === 'raw');
  scenario.facts.rawAnswers = statusCounts(raw);
  scenario.facts.restores = restores.taken;
  scenario.facts.restoreRefusals = restores.refused;
  scenario.checks.push({ name: 'raw SQL was served, and connections were taken back to no database', ok: raw.some((o) => is2xx(o.status)) && restores.taken > 0, detail: `${raw.length} raw requests, ${restores.taken} restores` });
}

interface Scenario {
  name: string;
  strategy: Strategy;
  requests: number;
  checks: { name: string; ok: boolean; detail: string }[];
  facts: Record<string, unknown>;
}

function statusCounts(outcomes: readonly Outcome[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const o of outcomes) counts[o.status] = (counts[o.status] ?? 0) + 1;
  return counts;
}

function percentile(values: readonly number[], q: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

async function databaseChecks(scenario: Scenario, client: LedgerClient, servers: Servers, tenants: readonly string[]): Promise<void> {
  const byServer = new Map<Knex.MySql2ConnectionConfig, string[]>();
  for (const tenant of tenants) {
    const { connection } = locate(servers, tenant);
    byServer.set(connection, [...(byServer.get(connection) ?? []), tenant]);
  }
  let lost = 0;
  let foreign = 0;
  let phantom = 0;
  let mismatches = 0;
  let landed = 0;
  for (const [connection, group] of byServer) {
    const check = await withKnex(connection, (admin) => checkLedger(client, group, (t) => admin.withSchema(dbName(t)).from('persons')));
    lost += check.lostWrites;
    foreign += check.foreignRows;
    phantom += check.phantomWrites;
    mismatches += check.sumMismatches;
    landed += check.landedUncertain;
  }
  const acked = [...client.books.values()].reduce((n, book) => n + book.acked.size, 0);
  scenario.facts.acknowledgedWrites = acked;
  scenario.facts.uncertainWritesThatLanded = landed;
  scenario.checks.push({ name: 'no wrong-tenant row in any response', ok: client.leaks === 0, detail: `${client.leaks} ${client.leakSamples.join(' | ')}` });
  scenario.checks.push({ name: 'no row of another tenant in any database', ok: foreign === 0, detail: String(foreign) });
  scenario.checks.push({ name: 'every acknowledged write is in its tenant database', ok: lost === 0, detail: `${lost} lost of ${acked}` });
  scenario.checks.push({ name: 'no rolled-back write in a database', ok: phantom === 0, detail: String(phantom) });
  scenario.checks.push({ name: 'every tenant sum = acknowledged (+ landed unanswered) amounts', ok: mismatches === 0, detail: `${mismatches} tenants differ` });
}

/** Connections the private server's tenants may hold at once: as many statements can be caught by a freeze. */
function privateConnections(strategy: Strategy): number {
  return strategy === 'pool-per-tenant' ? PRIVATE_TENANTS.length * PER_TENANT_POOL_MAX : SHARED_POOL_MAX;
}

async function outage(strategy: Strategy, signal: Fault, servers: Servers): Promise<Scenario> {
  const tenants = [...PRIVATE_TENANTS, ...MAIN_TENANTS];
  await createTenantDatabases(servers, tenants);
  const frozen = signal === 'SIGSTOP';
  const name = frozen ? 'server frozen (SIGSTOP, then SIGCONT)' : `server ${signal === 'SIGTERM' ? 'stopped' : 'killed'} (${signal})`;
  const scenario: Scenario = { name, strategy, requests: 0, checks: [], facts: {} };
  const run = await startLoad(strategy, servers, tenants, `faults-${strategy}-${signal}`);
  await sleep(WARM_MS);
  const stopAt = performance.now();
  if (frozen) servers.private.freeze();
  else await servers.private.stop(signal);
  const downAt = performance.now();
  await sleep(DOWN_MS);
  const startAt = performance.now();
  if (frozen) servers.private.thaw();
  else await servers.private.start();
  const upAt = performance.now();
  // Served again: every private tenant answered 2xx since the restart, and no private-tenant failure for STEADY_MS.
  const isPrivate = (o: Outcome) => PRIVATE_TENANTS.includes(o.tenant);
  let recoveredAt: number | undefined;
  while (performance.now() - upAt < RECOVERY_LIMIT_MS) {
    await sleep(100);
    const after = run.outcomes.filter((o) => isPrivate(o) && o.sentAt >= upAt);
    const served = new Set(after.filter((o) => is2xx(o.status)).map((o) => o.tenant));
    const lastFailure = Math.max(upAt, ...after.filter((o) => !is2xx(o.status)).map((o) => o.sentAt + o.ms));
    if (served.size === PRIVATE_TENANTS.length && performance.now() - lastFailure >= STEADY_MS) {
      recoveredAt = lastFailure;
      break;
    }
  }
  const { leasesLeft, restores } = await run.stop();
  if (strategy === 'shared') qualifiedRestores(scenario, restores, run.outcomes);
  const outcomes = run.outcomes;
  scenario.requests = outcomes.length;

  const priv = outcomes.filter(isPrivate);
  const main = outcomes.filter((o) => !isPrivate(o));
  const before = priv.filter((o) => o.sentAt + o.ms < stopAt);
  const down = priv.filter((o) => o.sentAt >= downAt && o.sentAt + o.ms <= startAt);
  // Frozen: answered only after the thaw, though sent early enough for their acquire to have timed
  // out before it (before the freeze or during it): statements the freeze caught on a connection.
  const caught = priv.filter((o) => o.sentAt + ACQUIRE_MS + FAIL_FAST_SLACK_MS <= startAt && o.sentAt + o.ms > startAt);
  const downOk = down.filter((o) => o.status === 503);
  const downMs = down.map((o) => o.ms);
  const bad = priv.filter((o) => !is2xx(o.status) && o.status !== 503 && !outcomeUnknown(o));
  scenario.facts.outcomeUnknown = priv.filter(outcomeUnknown).length;
  const no503Header = priv.filter((o) => o.status === 503 && o.retryAfter === undefined);
  const mainBad = main.filter((o) => !is2xx(o.status));
  Object.assign(scenario.facts, {
    privateAnswers: statusCounts(priv),
    otherServerAnswers: statusCounts(main),
    downAnswers: statusCounts(down),
    down503p50Ms: Math.round(percentile(downMs, 0.5)),
    down503p99Ms: Math.round(percentile(downMs, 0.99)),
    down503MaxMs: Math.round(Math.max(0, ...downMs)),
    ...(frozen ? { waitedForThaw: caught.length, waitedForThawAnswers: statusCounts(caught) } : {}),
    stopMs: Math.round(downAt - stopAt),
    startMs: Math.round(upAt - startAt),
    recoveryMs: recoveredAt === undefined ? null : Math.round(recoveredAt - upAt),
    serverErrors: Object.fromEntries(run.serverErrors),
  });
  if (run.unmapped.length > 0) scenario.facts.unmappedErrors = run.unmapped;
  scenario.checks.push({ name: 'before the fault, its tenants are served', ok: before.length > 0 && before.every((o) => is2xx(o.status)), detail: JSON.stringify(statusCounts(before)) });
  scenario.checks.push({ name: 'while it is down, its tenants get 503', ok: down.length > 0 && downOk.length === down.length, detail: `${downOk.length}/${down.length} ${JSON.stringify(statusCounts(down))}` });
  if (frozen) {
    const bound = privateConnections(strategy);
    scenario.checks.push({
      name: `only statements already on a connection wait for the thaw (at most ${bound}, one per connection)`,
      ok: caught.length <= bound,
      detail: `${caught.length} ${JSON.stringify(statusCounts(caught))}`,
    });
  }
  scenario.checks.push({
    name: `503s come fast (within ${ACQUIRE_MS + FAIL_FAST_SLACK_MS} ms)`,
    ok: down.length > 0 && Math.max(...downMs) <= ACQUIRE_MS + FAIL_FAST_SLACK_MS,
    detail: `p50 ${scenario.facts.down503p50Ms} ms, p99 ${scenario.facts.down503p99Ms} ms, max ${scenario.facts.down503MaxMs} ms`,
  });
  scenario.checks.push({ name: 'its tenants never get anything but 2xx, 503, or 500 outcome unknown for a write whose COMMIT was cut', ok: bad.length === 0, detail: bad.slice(0, 3).map((o) => `${o.kind} ${o.status} ${o.body ?? ''}`).join(' | ') || 'none' });
  scenario.checks.push({ name: 'every 503 carries Retry-After', ok: no503Header.length === 0, detail: String(no503Header.length) });
  scenario.checks.push({
    name: `served again after the ${frozen ? 'thaw' : 'restart'}, without restarting the app (within ${RECOVERY_LIMIT_MS / 1000} s)`,
    ok: recoveredAt !== undefined,
    detail: recoveredAt === undefined ? 'no recovery' : `${Math.round(recoveredAt - upAt)} ms after the server answered`,
  });
  scenario.checks.push({ name: 'tenants on the other server never notice', ok: main.length > 0 && mainBad.length === 0, detail: JSON.stringify(statusCounts(main)) });
  scenario.checks.push({ name: 'no lease left', ok: leasesLeft === 0, detail: String(leasesLeft) });
  await databaseChecks(scenario, run.client, servers, tenants);
  return scenario;
}

async function droppedDatabase(strategy: Strategy, servers: Servers): Promise<Scenario> {
  await createTenantDatabases(servers, DROP_TENANTS);
  const scenario: Scenario = { name: `tenant database dropped (${DROPPED})`, strategy, requests: 0, checks: [], facts: {} };
  const run = await startLoad(strategy, servers, DROP_TENANTS, `faults-drop-${strategy}`);
  await sleep(WARM_MS);
  const dropAt = performance.now();
  await withKnex(servers.mainConnection, (admin) => admin.raw('drop database ??', [dbName(DROPPED)]));
  const droppedAt = performance.now();
  await sleep(AFTER_DROP_MS);
  const { leasesLeft, restores } = await run.stop();
  if (strategy === 'shared') qualifiedRestores(scenario, restores, run.outcomes);
  const outcomes = run.outcomes;
  scenario.requests = outcomes.length;

  const victim = outcomes.filter((o) => o.tenant === DROPPED);
  const others = outcomes.filter((o) => o.tenant !== DROPPED);
  const before = victim.filter((o) => o.sentAt + o.ms < dropAt);
  const after = victim.filter((o) => o.sentAt > droppedAt);
  const afterOk = after.filter((o) => o.status === 404 || o.status === 503);
  const anyBad = victim.filter((o) => !is2xx(o.status) && o.status !== 404 && o.status !== 503 && !outcomeUnknown(o));
  const othersBad = others.filter((o) => !is2xx(o.status));
  Object.assign(scenario.facts, {
    droppedTenantAnswers: statusCounts(victim),
    droppedTenantAnswersAfterDrop: statusCounts(after),
    otherTenantsAnswers: statusCounts(others),
    dropMs: Math.round(droppedAt - dropAt),
    serverErrors: Object.fromEntries(run.serverErrors),
  });
  if (run.unmapped.length > 0) scenario.facts.unmappedErrors = run.unmapped;
  scenario.checks.push({ name: 'before the drop, the tenant is served', ok: before.length > 0 && before.every((o) => is2xx(o.status)), detail: JSON.stringify(statusCounts(before)) });
  scenario.checks.push({ name: 'after the drop, the tenant gets 404 or 503', ok: after.length > 0 && afterOk.length === after.length, detail: `${afterOk.length}/${after.length} ${JSON.stringify(statusCounts(after))}` });
  scenario.checks.push({ name: 'the tenant never gets anything but 2xx, 404, 503, or 500 outcome unknown for a cut COMMIT', ok: anyBad.length === 0, detail: anyBad.slice(0, 3).map((o) => `${o.kind} ${o.status} ${o.body ?? ''}`).join(' | ') || 'none' });
  scenario.checks.push({ name: 'the other tenants never notice', ok: others.length > 0 && othersBad.length === 0, detail: JSON.stringify(statusCounts(others)) });
  scenario.checks.push({ name: 'no lease left', ok: leasesLeft === 0, detail: String(leasesLeft) });
  await databaseChecks(scenario, run.client, servers, DROP_TENANTS.filter((t) => t !== DROPPED));
  return scenario;
}

async function main(): Promise<void> {
  const loadBefore = loadAverage();
  const started = performance.now();
  const { database: _database, ...mainConnection } = mysqlConnection();
  void _database;
  const mariadb = await withKnex(mainConnection, async (admin) => ((await admin.raw('select version() as v'))[0] as { v: string }[])[0]!.v);
  process.stderr.write('starting a private MariaDB server...\n');
  const privateServer = await startPrivateMariaDb({ label: 'faults' });
  const servers: Servers = {
    private: privateServer,
    privateConnection: { host: '127.0.0.1', port: privateServer.port, user: 'root', password: '' },
    mainConnection,
  };
  const scenarios: Scenario[] = [];
  try {
    for (const strategy of STRATEGIES) {
      for (const signal of SIGNALS) {
        process.stderr.write(`outage, ${strategy}, ${signal}...\n`);
        scenarios.push(await outage(strategy, signal, servers));
      }
      process.stderr.write(`dropped database, ${strategy}...\n`);
      scenarios.push(await droppedDatabase(strategy, servers));
    }
  } finally {
    await dropTenantDatabases(servers, [...MAIN_TENANTS, ...DROP_TENANTS], true);
    await privateServer.destroy();
  }

  const seconds = (performance.now() - started) / 1000;
  console.log(`\nobjection-tenancy fault injection${SHORT ? ' (short)' : ''}: ${CONCURRENCY} requests in flight, acquire timeout ${ACQUIRE_MS} ms`);
  console.log(`Node ${process.version}, MariaDB ${mariadb} (system, port ${mainConnection.port}; private, port ${privateServer.port}); load average ${loadBefore} before, ${loadAverage()} after; ${seconds.toFixed(0)} s`);
  let failed = 0;
  for (const scenario of scenarios) {
    console.log(`\n== ${scenario.strategy}: ${scenario.name}, ${scenario.requests} requests`);
    for (const [key, value] of Object.entries(scenario.facts)) console.log(`   ${key}: ${typeof value === 'object' ? JSON.stringify(value) : String(value)}`);
    for (const check of scenario.checks) {
      if (!check.ok) failed++;
      console.log(`   ${check.ok ? 'ok  ' : 'FAIL'} ${check.name}: ${check.detail}`);
    }
  }
  console.log(`\nunhandled rejections: ${unhandled}`);
  for (const sample of unhandledSamples) console.log(`  ${sample}`);

  const outageFacts = (strategy: Strategy) =>
    Object.fromEntries(
      scenarios
        .filter((s) => s.strategy === strategy && s.name.startsWith('server'))
        .map((s) => [
          s.name.includes('SIGKILL') ? 'killed' : s.name.includes('SIGSTOP') ? 'frozen' : 'stopped',
          { down_503: (s.facts.downAnswers as Record<string, number>)['503'] ?? 0, max_503_ms: s.facts.down503MaxMs, recovery_ms: s.facts.recoveryMs },
        ]),
    );
  const dropFacts = (strategy: Strategy) => {
    const s = scenarios.find((x) => x.strategy === strategy && x.name.startsWith('tenant'));
    return s === undefined ? null : { after_drop: s.facts.droppedTenantAnswersAfterDrop, others: s.facts.otherTenantsAnswers };
  };
  const result = {
    short: SHORT,
    scenarios: scenarios.length,
    checks: scenarios.reduce((n, s) => n + s.checks.length, 0),
    failed_checks: failed + (unhandled > 0 ? 1 : 0),
    unhandled_rejections: unhandled,
    requests: scenarios.reduce((n, s) => n + s.requests, 0),
    outage: Object.fromEntries(STRATEGIES.map((s) => [s, outageFacts(s)])),
    dropped: Object.fromEntries(STRATEGIES.map((s) => [s, dropFacts(s)])),
  };
  console.log(result.failed_checks > 0 ? `\nFAULTS: ${result.failed_checks} check(s) FAILED` : '\nfaults: every check passed');
  console.log(`RESULT ${JSON.stringify(result)}`);
  if (!SHORT) {
    writeResults('faults', {
      mariadb,
      loadBefore,
      settings: { inFlight: CONCURRENCY, acquireTimeoutMs: ACQUIRE_MS, downMs: DOWN_MS, warmMs: WARM_MS, steadyMs: STEADY_MS, signals: SIGNALS },
      result,
      scenarios,
    });
  }
  if (result.failed_checks > 0) process.exitCode = 1;
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
