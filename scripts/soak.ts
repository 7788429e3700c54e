/**
 * Soak: 100,000 HTTP requests across 50 tenant databases on MariaDB at 64 in flight, per strategy
 * (pool-per-tenant under a connection budget, then shared), through the ledger app (scripts/ledger.ts):
 * random reads and writes with random awaits, writes in transactions with a savepoint rolled back,
 * transactions that throw after their writes (409, all rolled back), bad ids (400/404), unknown and
 * malformed tenants (404/400), and requests the client hangs up on.
 *
 * Checks, per strategy: no response holds another tenant's row (nor, for pool-per-tenant and
 * shared-reset, which also send `session` requests, a user variable another tenant set on the
 * connection); every answer is the one a healthy app gives (no 5xx, also none answered to a client
 * that already hung up); every tenant's sum of amounts
 * equals the sum acknowledged to it, every acknowledged write is there and nothing rolled back is; no
 * unhandled rejection; no lease left when the load ends.
 * Negative control: a shorter run against the deliberately broken global-variable tenancy
 * (test/helpers/broken-tenancy.ts) must report leaks, or the check could not have caught one. With
 * shared-reset, a second one: `session` requests on the shared strategy without resetSession must
 * see another tenant's user variable.
 *
 * The databases (`ot_soak_s1`...) are created at the start and dropped at the end.
 *
 * Run: `npm run soak`. Env: MYSQL_URL (default mysql://root@127.0.0.1:3306/test), SOAK_REQUESTS
 * (100000 per strategy), SOAK_TENANTS (50), SOAK_CONCURRENCY (64), SOAK_NEGATIVE_REQUESTS (5000),
 * SOAK_STRATEGIES (pool-per-tenant,shared: shared with its defaults, qualifyTables and the 'auto'
 * cold-switch cap; also, with `qualifyTables: false`: shared-use (USE switching), shared-inline,
 * shared-tuned: inlineSwitch with maxSwitchedConnections 2, which only binds with more than 256
 * tenants, e.g. SOAK_TENANTS=1000, and shared-reset: inlineSwitch with resetSession), SOAK_MAX_CONNECTIONS (40: the pool-per-tenant budget), SOAK_SKIP
 * (request kinds to leave out, e.g. `abort`), SOAK_TIME_LIMIT_S (900 per strategy) and SOAK_MAX_UNEXPECTED
 * (1000): a run that stalls or keeps failing stops there, and fails.
 * Ends with one line `RESULT {"requests": N, "leaks": 0, "lost_writes": 0, "negative_control_leaks": M, ...}`,
 * writes it to benchmarks/results/soak.json (soak-without-<kinds>.json with SOAK_SKIP, soak-<strategies>.json
 * with other SOAK_STRATEGIES), and exits
 * non-zero when a check fails.
 */
import knexFactory, { type Knex } from 'knex';
import { createTenancy, type Tenancy, type TenancyOptions } from '../lib/index';
import { BrokenPerson, brokenMiddleware, registerBrokenKnex } from '../test/helpers/broken-tenancy';
import { mysqlConnection } from '../test/helpers/databases';
import { listen, load } from '../test/helpers/http';
import { intEnv, loadAverage, writeResults } from '../benchmarks/results';
import {
  checkLedger,
  createLedgerSchema,
  LedgerClient,
  LedgerPerson,
  ledgerApp,
  mix,
  statusTable,
  type LedgerCheck,
  type LedgerModelClass,
} from './ledger';

const REQUESTS = intEnv('SOAK_REQUESTS', 100_000);
const TENANT_COUNT = intEnv('SOAK_TENANTS', 50);
const CONCURRENCY = intEnv('SOAK_CONCURRENCY', 64);
const NEGATIVE_REQUESTS = intEnv('SOAK_NEGATIVE_REQUESTS', 5_000);
const MAX_CONNECTIONS = intEnv('SOAK_MAX_CONNECTIONS', 40);
const TIME_LIMIT_S = intEnv('SOAK_TIME_LIMIT_S', 900);
const MAX_UNEXPECTED = intEnv('SOAK_MAX_UNEXPECTED', 1000);
type Strategy = 'pool-per-tenant' | 'shared' | 'shared-use' | 'shared-inline' | 'shared-tuned' | 'shared-reset';
const STRATEGIES = (process.env.SOAK_STRATEGIES ?? 'pool-per-tenant,shared').split(',').map((s) => s.trim()) as Strategy[];
const PREFIX = 'ot_soak_';
const TENANTS = Array.from({ length: TENANT_COUNT }, (_, i) => `s${i + 1}`);
const dbName = (tenant: string) => `${PREFIX}${tenant}`;

// SOAK_SKIP=abort,txFail leaves kinds out (to tell which one a failure needs).
const SKIP = new Set((process.env.SOAK_SKIP ?? '').split(',').map((s) => s.trim()).filter(Boolean));
const without = <T extends Record<string, number>>(weights: T): T =>
  Object.fromEntries(Object.entries(weights).map(([kind, w]) => [kind, SKIP.has(kind) ? 0 : w])) as T;
const WEIGHTS = {
  list: 28,
  get: 18,
  balance: 8,
  getMissing: 3,
  getBad: 2,
  write: 16,
  txWrite: 9,
  txFail: 7,
  abort: 4,
  unknownTenant: 3,
  invalidTenant: 2,
};
/**
 * `session` requests (a user variable left by another tenant is a leak) go only to strategies that
 * promise a clean session per tenant: a pool per tenant, and shared with `resetSession`.
 */
const soakMix = (strategy: Strategy) =>
  mix(without(strategy === 'pool-per-tenant' || strategy === 'shared-reset' ? { ...WEIGHTS, session: 6 } : { ...WEIGHTS, session: 0 }));
// The broken tenancy has no implicit transactions (its queries ignore the one open), so its run sticks
// to reads and single writes: enough to show that the check sees leaks.
const NEGATIVE_MIX = mix({ list: 40, get: 25, balance: 10, write: 25 });

for (const strategy of STRATEGIES) {
  if (!['pool-per-tenant', 'shared', 'shared-use', 'shared-inline', 'shared-tuned', 'shared-reset'].includes(strategy)) throw new TypeError(`SOAK_STRATEGIES: unknown strategy "${strategy}"`);
}

let unhandled = 0;
const unhandledSamples: string[] = [];
process.on('unhandledRejection', (reason) => {
  unhandled++;
  if (unhandledSamples.length < 5) unhandledSamples.push(String((reason as Error)?.stack ?? reason).slice(0, 500));
});
const warnings = new Map<string, number>();
process.on('warning', (warning) => warnings.set(warning.name, (warnings.get(warning.name) ?? 0) + 1));

function tenancyOptions(strategy: Strategy): TenancyOptions {
  const known = new Set(TENANTS);
  const tenantExists = (id: string) => known.has(id);
  if (strategy !== 'pool-per-tenant') {
    const { database: _database, ...server } = mysqlConnection();
    void _database;
    return {
      strategy: 'shared',
      // shared: the defaults; the others USE switching, with no cap unless named.
      ...(strategy === 'shared' ? {} : { qualifyTables: false, maxSwitchedConnections: strategy === 'shared-tuned' ? 2 : Infinity }),
      inlineSwitch: strategy !== 'shared' && strategy !== 'shared-use',
      resetSession: strategy === 'shared-reset',
      servers: { main: { client: 'mysql2', connection: server, pool: { max: 16 } } },
      locate: (id) => ({ server: 'main', database: dbName(id) }),
      tenantExists,
    };
  }
  return {
    knexConfig: (id) => ({ client: 'mysql2', connection: mysqlConnection(dbName(id)), pool: { max: 4 } }),
    maxConnections: MAX_CONNECTIONS,
    tenantExists,
  };
}

async function eachTenant(fn: (tenant: string) => Promise<void>, concurrency = 8): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < TENANTS.length) await fn(TENANTS[next++]!);
  }));
}

async function resetSchemas(): Promise<void> {
  await eachTenant(async (tenant) => {
    const knex = knexFactory({ client: 'mysql2', connection: mysqlConnection(dbName(tenant)), pool: { min: 0, max: 1 } });
    try {
      await createLedgerSchema(knex, tenant);
    } finally {
      await knex.destroy();
    }
  });
}

interface RunReport {
  label: string;
  requests: number;
  seconds: number;
  perSecond: number;
  leaks: number;
  unexpected: number;
  internalErrors: number;
  /** 5xx answered to requests whose client had already hung up. */
  afterHangUp: number;
  stoppedEarly: boolean;
  leasesLeft: number;
  check: LedgerCheck;
  statuses: Record<string, number>;
  samples: string[];
  stats: ReturnType<Tenancy['stats']> | undefined;
}

function progress(label: string, client: LedgerClient, total: number, tenancy?: Tenancy): NodeJS.Timeout {
  const started = Date.now();
  const timer = setInterval(() => {
    const s = (Date.now() - started) / 1000;
    const stats = tenancy === undefined ? '' : `; ${JSON.stringify(tenancy.stats())}`;
    process.stderr.write(`${label}: ${client.requests}/${total} requests, ${(client.requests / s).toFixed(0)}/s, leaks ${client.leaks}, unexpected ${client.unexpected}${stats}\n`);
  }, Number(process.env.SOAK_PROGRESS_MS ?? 5_000));
  timer.unref();
  return timer;
}

async function settleLeases(tenancy: Tenancy): Promise<number> {
  // Handlers of requests the client hung up on may still be running when the load ends.
  for (let i = 0; i < 100 && tenancy.stats().leases > 0; i++) await new Promise((r) => setTimeout(r, 20));
  return tenancy.stats().leases;
}

/**
 * One strategy under the soak mix. `sessionControl`: instead, only `session` requests, NEGATIVE_REQUESTS
 * of them, on the shared strategy without resetSession: the negative control of the session check
 * (it must see another tenant's user variable).
 */
async function soak(strategy: Strategy, admin: Knex, sessionControl = false): Promise<RunReport> {
  const requests = sessionControl ? NEGATIVE_REQUESTS : REQUESTS;
  await resetSchemas();
  const tenancy = createTenancy(tenancyOptions(strategy));
  const internal: string[] = [];
  let internalErrors = 0;
  let afterHangUp = 0;
  const onError = (error: unknown, req: { destroyed: boolean; socket?: { destroyed: boolean } | null }) => {
    // A 5xx for a request whose client already hung up is not seen by the client, only here.
    const gone = req.destroyed || req.socket?.destroyed === true;
    if (gone) afterHangUp++;
    else internalErrors++;
    if (internal.length < 5) internal.push(`${gone ? '(client gone) ' : ''}${String((error as Error)?.stack ?? error).split('\n').slice(0, 3).join(' | ').slice(0, 300)}`);
  };
  const app = ledgerApp({
    middleware: tenancy.middleware(),
    Person: LedgerPerson as unknown as LedgerModelClass,
    transaction: (fn) => tenancy.transaction(() => fn()),
    errorHandler: tenancy.errorHandler({ onServerError: onError }),
    onInternalError: onError,
  });
  const server = await listen(app);
  const label = sessionControl ? 'soak-shared-session-control' : `soak-${strategy}`;
  const client = new LedgerClient(server.url, label, CONCURRENCY);
  const timer = progress(label, client, requests, tenancy);
  const started = performance.now();
  const deadline = started + TIME_LIMIT_S * 1000;
  const nextKind = sessionControl ? mix({ session: 1 }) : soakMix(strategy);
  let stoppedEarly = false;
  try {
    await load(requests, CONCURRENCY, async () => {
      if (performance.now() > deadline || client.unexpected > MAX_UNEXPECTED) {
        stoppedEarly = true;
        return;
      }
      await client.send(nextKind(), TENANTS[Math.floor(Math.random() * TENANTS.length)]!);
    });
  } finally {
    clearInterval(timer);
  }
  if (stoppedEarly) {
    console.error(`${label}: stopped early (SOAK_TIME_LIMIT_S=${TIME_LIMIT_S}, SOAK_MAX_UNEXPECTED=${MAX_UNEXPECTED}) with ${client.requests} of ${requests} requests sent`);
  }
  const seconds = (performance.now() - started) / 1000;
  const leasesLeft = await settleLeases(tenancy);
  const stats = tenancy.stats();
  const check = await checkLedger(client, TENANTS, (t) => admin.withSchema(dbName(t)).from('persons'));
  client.close();
  await server.close();
  await tenancy.destroy();
  return {
    label: sessionControl ? 'shared without resetSession, session requests only (negative control)' : strategy,
    requests: client.requests,
    seconds,
    perSecond: client.requests / seconds,
    leaks: client.leaks + check.foreignRows,
    unexpected: client.unexpected,
    internalErrors,
    afterHangUp,
    stoppedEarly,
    leasesLeft,
    check,
    statuses: statusTable(client),
    samples: [...client.leakSamples, ...client.unexpectedSamples, ...internal],
    stats,
  };
}

async function negativeControl(admin: Knex): Promise<RunReport> {
  await resetSchemas();
  const knexes = TENANTS.map((tenant) => {
    const knex = knexFactory({ client: 'mysql2', connection: mysqlConnection(dbName(tenant)), pool: { min: 0, max: 1 } });
    registerBrokenKnex(tenant, knex);
    return knex;
  });
  const app = ledgerApp({
    middleware: brokenMiddleware as never,
    Person: BrokenPerson as unknown as LedgerModelClass,
    transaction: (fn) => fn(),
  });
  const server = await listen(app);
  const client = new LedgerClient(server.url, 'soak-broken', CONCURRENCY);
  const started = performance.now();
  try {
    await load(NEGATIVE_REQUESTS, CONCURRENCY, async () => {
      await client.send(NEGATIVE_MIX(), TENANTS[Math.floor(Math.random() * TENANTS.length)]!);
    });
  } finally {
    client.close();
    await server.close();
  }
  const seconds = (performance.now() - started) / 1000;
  const check = await checkLedger(client, TENANTS, (t) => admin.withSchema(dbName(t)).from('persons'));
  await Promise.all(knexes.map((knex) => knex.destroy()));
  return {
    label: 'broken (negative control)',
    requests: client.requests,
    seconds,
    perSecond: client.requests / seconds,
    leaks: client.leaks + check.foreignRows,
    unexpected: client.unexpected,
    internalErrors: 0,
    afterHangUp: 0,
    stoppedEarly: false,
    leasesLeft: 0,
    check,
    statuses: statusTable(client),
    samples: client.leakSamples.slice(0, 2),
    stats: undefined,
  };
}

function printRun(run: RunReport): void {
  const c = run.check;
  console.log(`\n== ${run.label}: ${run.requests} requests in ${run.seconds.toFixed(1)} s (${run.perSecond.toFixed(0)}/s)`);
  console.log(
    `leaks ${run.leaks} (responses ${run.leaks - c.foreignRows}, foreign rows ${c.foreignRows}); lost writes ${c.lostWrites}; ` +
      `phantom (rolled back but present) ${c.phantomWrites}; tenants whose sum differs ${c.sumMismatches}; ` +
      `uncertain writes that landed ${c.landedUncertain}; unexpected answers ${run.unexpected}; 5xx errors ${run.internalErrors} ` +
      `(+ ${run.afterHangUp} after the client hung up); leases left ${run.leasesLeft}${run.stoppedEarly ? '; STOPPED EARLY' : ''}`,
  );
  const acked = c.tenants.reduce((n, t) => n + t.ackedSum, 0);
  const inDb = c.tenants.reduce((n, t) => n + t.dbSum, 0);
  console.log(`sum of acknowledged amounts ${acked}, sum in the databases ${inDb}`);
  console.log(`answers: ${Object.entries(run.statuses).map(([k, n]) => `${k} x${n}`).join(', ')}`);
  if (run.stats !== undefined) {
    const { strategy, pools, created, evictions, failures, budget, servers } = run.stats;
    const extra = budget !== undefined ? `, budget ${JSON.stringify(budget)}` : servers !== undefined ? `, servers ${JSON.stringify(servers)}` : '';
    console.log(`tenancy: ${strategy}, pools ${pools}, created ${created}, evictions ${evictions}, failures ${failures}${extra}`);
  }
  for (const sample of run.samples) console.log(`  sample: ${sample}`);
}

async function main(): Promise<void> {
  const loadBefore = loadAverage();
  const admin = knexFactory({ client: 'mysql2', connection: mysqlConnection(), pool: { min: 0, max: 2 } });
  let mariadb = 'unknown';
  const runs: RunReport[] = [];
  let negative: RunReport | undefined;
  let sessionNegative: RunReport | undefined;
  try {
    const [rows] = await admin.raw('select version() as v');
    mariadb = (rows as { v: string }[])[0]!.v;
    await eachTenant(async (tenant) => {
      await admin.raw('drop database if exists ??', [dbName(tenant)]);
      await admin.raw('create database ?? character set utf8mb4', [dbName(tenant)]);
    }, 2);
    for (const strategy of STRATEGIES) runs.push(await soak(strategy, admin));
    negative = await negativeControl(admin);
    if (STRATEGIES.includes('shared-reset')) sessionNegative = await soak('shared-use', admin, true);
  } finally {
    await eachTenant((tenant) => admin.raw('drop database if exists ??', [dbName(tenant)]).then(() => undefined), 2).catch((error: unknown) => {
      console.error('dropping the soak databases failed:', error);
    });
    await admin.destroy();
  }

  console.log(`\nobjection-tenancy soak: ${TENANT_COUNT} tenant databases, ${CONCURRENCY} requests in flight`);
  console.log(`Node ${process.version}, MariaDB ${mariadb}; load average ${loadBefore} before, ${loadAverage()} after`);
  for (const run of runs) printRun(run);
  printRun(negative);
  if (sessionNegative !== undefined) printRun(sessionNegative);
  console.log(`\nunhandled rejections ${unhandled}; process warnings ${JSON.stringify(Object.fromEntries(warnings))}`);
  for (const sample of unhandledSamples) console.log(`  unhandled: ${sample}`);

  const total = (pick: (run: RunReport) => number) => runs.reduce((n, run) => n + pick(run), 0);
  const result = {
    requests: total((r) => r.requests),
    leaks: total((r) => r.leaks),
    lost_writes: total((r) => r.check.lostWrites),
    negative_control_leaks: negative.leaks,
    phantom_writes: total((r) => r.check.phantomWrites),
    sum_mismatches: total((r) => r.check.sumMismatches),
    unexpected_answers: total((r) => r.unexpected),
    server_errors: total((r) => r.internalErrors),
    server_errors_after_hang_up: total((r) => r.afterHangUp),
    stopped_early: runs.some((r) => r.stoppedEarly),
    unhandled_rejections: unhandled,
    leases_left: total((r) => r.leasesLeft),
    tenants: TENANT_COUNT,
    in_flight: CONCURRENCY,
    strategies: runs.map((r) => r.label),
    requests_per_second: Object.fromEntries(runs.map((r) => [r.label, Math.round(r.perSecond)])),
    negative_control_requests: negative.requests,
    // With shared-reset: the session check's own negative control (shared, no resetSession).
    session_negative_control_leaks: sessionNegative?.leaks ?? null,
  };
  const failed =
    result.leaks > 0 ||
    result.lost_writes > 0 ||
    result.phantom_writes > 0 ||
    result.sum_mismatches > 0 ||
    result.unexpected_answers > 0 ||
    result.server_errors > 0 ||
    result.server_errors_after_hang_up > 0 ||
    result.stopped_early ||
    result.unhandled_rejections > 0 ||
    result.leases_left > 0 ||
    result.negative_control_leaks === 0 ||
    result.session_negative_control_leaks === 0;
  console.log(failed ? '\nSOAK FAILED' : '\nsoak passed');
  console.log(`RESULT ${JSON.stringify(result)}`);
  // A run with kinds left out, or with other strategies, is not the soak of record: it gets its own file.
  const defaultStrategies = STRATEGIES.join() === 'pool-per-tenant,shared';
  const name = SKIP.size > 0 ? `soak-without-${[...SKIP].sort().join('-')}` : defaultStrategies ? 'soak' : `soak-${STRATEGIES.join('-')}`;
  writeResults(name, {
    mariadb,
    loadBefore,
    settings: { requestsPerStrategy: REQUESTS, skipped: [...SKIP], timeLimitS: TIME_LIMIT_S, maxUnexpected: MAX_UNEXPECTED, tenants: TENANT_COUNT, inFlight: CONCURRENCY, negativeRequests: NEGATIVE_REQUESTS, maxConnections: MAX_CONNECTIONS, strategies: STRATEGIES },
    result,
    passed: !failed,
  });
  if (failed) process.exitCode = 1;
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
