import type { Knex } from 'knex';
import knexFactory from 'knex';
import { failStreamsOnLostConnection, streamsReleaseOnce } from './lost-stream';
import { ConnectionBudget } from './connection-budget';
import { isNoSuchDatabase, isUnreachable, TenantError, TenantUnavailableError, UnknownTenantError } from './errors';
import { PoolCache, type TenantConnections } from './pool-cache';
import { checkLocation, serverConfig, SharedConnections, type TenantLocation } from './shared-connections';
import { runInScopeSync } from './scope';
import { boundedConnect, withConnectionSettings } from './connection-settings';
import { qualifiedDatabase, refuseForeignQualifiedBuilders } from './qualify-tables';
import { warnOutsideTransaction } from './transaction';
import { checkTenantFile, FILE_RECHECK_MS, fileReplaced, refuseMissingFileAtOpen, resolvedSqliteConfig, watchTenantFile } from './sqlite-files';
import { quietLibraryRefusals } from './quiet-refusals';

/** How tenant connections are made: the options both strategies share. */
export interface CommonConnectionOptions {
  /** When no connection can be had: `'wait'` (default) up to `acquireTimeoutMs`, or `'reject'` at once (503). */
  overflow?: 'wait' | 'reject';
  /** How long a query may wait for a connection under the budget or a shared pool. Default 10 000 ms. */
  acquireTimeoutMs?: number;
  /** A tenant pool unused for this long is closed ('shared': an idle connection). Default 60 000 ms; 0 disables. */
  idleTimeoutMs?: number;
  /** Run `select 1` when a tenant's connection is first opened, so a dropped database or dead server fails fast. Default true. */
  verifyConnection?: boolean;
  /** Builds a knex from a config. Default: knex's own factory. */
  createKnex?(config: Knex.Config): Knex;
  /**
   * Warn (once per statement) when a query runs on the tenant's bare knex while a transaction is open
   * in the same scope. Default: on unless `NODE_ENV` is `production`.
   */
  warnOutsideTransaction?: boolean;
}

/**
 * `strategy: 'pool-per-tenant'` (the default): one knex and pool per tenant, from `knexConfig`.
 * The shared strategy's options are typed `never`, as `createTenancy()` refuses them at run time.
 */
export interface PoolPerTenantOptions extends CommonConnectionOptions {
  /** `'pool-per-tenant'` (default): one knex and pool per tenant, from `knexConfig`. */
  strategy?: 'pool-per-tenant';
  /** The knex config of a tenant's database (or a promise of it). */
  knexConfig(tenantId: string): Knex.Config | Promise<Knex.Config>;
  /** 'pool-per-tenant': cap on cached tenant pools; the least recently used is evicted beyond it. Default 50. */
  maxPools?: number;
  /** 'pool-per-tenant': total connections all tenant pools may hold at once. Default: no budget. */
  maxConnections?: number;
  /** 'shared' only. */
  servers?: never;
  /** 'shared' only. */
  locate?: never;
  /** 'shared' only. */
  maxConnectionsPerTenant?: never;
  /** 'shared' only (`false`, its default, is accepted: a config shared by both strategies). */
  inlineSwitch?: false;
  /** 'shared' only. */
  maxSwitchedConnections?: never;
  /** 'shared' only (`false` accepted). */
  resetSession?: false;
  /** 'shared' only (`false` accepted). */
  qualifyTables?: false;
  /** 'shared' only. */
  maxTenants?: never;
}

/**
 * `strategy: 'shared'`: one pool per database server (`servers`), tenants located with `locate`,
 * connections switched to the tenant's database (MySQL/MariaDB). The pool-per-tenant options are
 * typed `never` and refused at run time: a server's connection budget is its config's `pool.max`.
 */
export interface SharedPoolOptions extends CommonConnectionOptions {
  /** `'shared'`: one pool per database server. */
  strategy: 'shared';
  /** 'shared': one knex config per server key, without `database`; `pool.max` is that server's connection budget. */
  servers: Readonly<Record<string, Knex.Config>>;
  /** 'shared': the server key and database name of a tenant. Call `tenancy.forget(id)` after moving a tenant. */
  locate(tenantId: string): TenantLocation | Promise<TenantLocation>;
  /** 'shared': connections one tenant may hold at once on its server. Default: half of the server's `pool.max`. */
  maxConnectionsPerTenant?: number;
  /**
   * 'shared' (MySQL/MariaDB): send the `USE` of a database switch in the same round trip as the
   * tenant's next statement (`USE db; <sql>`) rather than in one of its own. It turns on
   * `multipleStatements` for the server connections, so one `knex.raw()` string may then hold several
   * statements: keep values in bindings. Default false.
   */
  inlineSwitch?: boolean;
  /**
   * 'shared': connections of a server that may at once serve a cold tenant (one not among the
   * databases its pool used last), which makes the server open that tenant's tables; a query for a
   * cold tenant beyond it waits for one (up to `acquireTimeoutMs`). Tenants used lately and connections
   * already on their tenant's database are not limited. Default `'auto'`: three per core of a MariaDB
   * server (read as `thread_pool_size` when the pool opens its first connection), with as many warm
   * databases as the server keeps open tables and table definitions; no limit on a server that does
   * not tell its cores (MySQL Community). A number: that cap, with 256 warm databases. `Infinity`: no limit.
   */
  maxSwitchedConnections?: number | 'auto';
  /**
   * 'shared' (MySQL/MariaDB): when a connection passes from one tenant to another, reset its session
   * first (COM_RESET_CONNECTION: user and session variables, temporary tables, prepared statements,
   * named locks, `LAST_INSERT_ID()`), then run the server's `pool.afterCreate` again. One round trip
   * per change of tenant. Default false.
   */
  resetSession?: boolean;
  /**
   * 'shared' (MySQL/MariaDB): TenantModel queries name the tenant's database in their SQL
   * (objection's `withSchema`), and connections that have never been switched (opened with no
   * current database) serve them without a `USE`. Anything that names no database (raw SQL, joined
   * tables) is refused there by the server ("No database selected") and sent again after a `USE`.
   * Default: on for each server whose `connection` is an object without `database` (others switch
   * with `USE`), and for each database name knex can write in SQL (one with a dot, a backtick or
   * whitespace is switched with `USE`). `true` insists: it throws for a server config that cannot
   * have it, and fails such a name with a 503. `false`: every switch is a `USE`.
   */
  qualifyTables?: boolean;
  /** 'shared': cap on cached tenant handles (under 2 KB of heap each, no connection). Default 100 000. */
  maxTenants?: number;
  /** 'pool-per-tenant' only. */
  knexConfig?: never;
  /** 'pool-per-tenant' only. */
  maxPools?: never;
  /** 'pool-per-tenant' only. */
  maxConnections?: never;
}

/** How tenant connections are made: the options of one strategy or the other. */
export type ConnectionOptions = PoolPerTenantOptions | SharedPoolOptions;

/**
 * `fn` (an app's lookup: `tenantExists`, `locate`, `knexConfig`), whose promised answer is awaited at
 * most `ms`: one that never settles would hang every request of its tenant, which shares the lookup.
 * A synchronous answer stays synchronous.
 */
export function bounded<A extends unknown[], R>(fn: (...args: A) => R | PromiseLike<R>, ms: number, what: string): (...args: A) => R | Promise<R> {
  return (...args) => {
    const answer = fn(...args);
    if (answer === null || typeof (answer as { then?: unknown } | undefined)?.then !== 'function') return answer as R;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms (acquireTimeoutMs)`)), ms);
    });
    return Promise.race([answer as PromiseLike<R>, late]).finally(() => clearTimeout(timer));
  };
}

export const CONNECTION_DEFAULTS = Object.freeze({
  maxPools: 50,
  maxTenants: 100_000,
  idleTimeoutMs: 60_000,
  acquireTimeoutMs: 10_000,
  verifyConnection: true,
});

/** @internal The tenant connections of a tenancy, and the budget when one is set. */
export function createConnections(options: ConnectionOptions): { connections: TenantConnections; budget: ConnectionBudget | undefined } {
  const createKnex = options.createKnex ?? knexFactory;
  const warn = options.warnOutsideTransaction ?? process.env.NODE_ENV !== 'production';
  const verify = (options.verifyConnection ?? CONNECTION_DEFAULTS.verifyConnection) ? verifyKnex : undefined;
  const idleTimeoutMs = options.idleTimeoutMs ?? CONNECTION_DEFAULTS.idleTimeoutMs;
  const acquireTimeoutMs = options.acquireTimeoutMs ?? CONNECTION_DEFAULTS.acquireTimeoutMs;
  const overflow = options.overflow ?? 'wait';

  if (options.strategy === 'shared') {
    const connections = new SharedConnections({
      servers: options.servers!,
      locate: bounded(options.locate!, acquireTimeoutMs, 'locate()'),
      perTenantMax: options.maxConnectionsPerTenant,
      acquireTimeoutMs,
      idleTimeoutMs,
      overflow,
      inlineSwitch: options.inlineSwitch === true,
      maxSwitched: options.maxSwitchedConnections ?? 'auto',
      resetSession: options.resetSession === true,
      qualifyTables: options.qualifyTables ?? 'auto',
      maxTenants: options.maxTenants ?? CONNECTION_DEFAULTS.maxTenants,
      createKnex,
      verify,
      onServerKnex: (knex) => {
        if (warn) knex.on('query', warnOutsideTransaction(knex));
      },
    });
    return { connections, budget: undefined };
  }

  const knexConfig = bounded(options.knexConfig!, acquireTimeoutMs, 'knexConfig()');
  let cache: PoolCache | undefined;
  const budget =
    options.maxConnections === undefined
      ? undefined
      : new ConnectionBudget({ max: options.maxConnections, overflow, acquireTimeoutMs, reclaim: (freeNow) => cache!.reclaimIdle(freeNow) });
  cache = new PoolCache({
    maxPools: options.maxPools ?? CONNECTION_DEFAULTS.maxPools,
    idleTimeoutMs,
    outdated: fileReplaced,
    recheckMs: FILE_RECHECK_MS,
    onIdle: budget === undefined ? undefined : () => {
      if (budget.stats().waiting > 0) cache!.reclaimIdle();
    },
    open: async (tenantId) => {
      let knex: Knex;
      // SQLite: what the pool opens and the file checks read, one absolute file (see resolvedSqliteConfig).
      let files: Knex.Config;
      const made: { knex?: Knex } = {};
      try {
        files = await resolvedSqliteConfig(await knexConfig(tenantId));
        checkTenantFile(files, tenantId);
        knex = createKnex(closesFailedSetUps(withPoolDefaults(boundedConnect(files, acquireTimeoutMs), acquireTimeoutMs, budget !== undefined), made));
        made.knex = knex;
      } catch (error) {
        throw error instanceof TenantError ? error : new TenantUnavailableError(tenantId, { cause: error, reason: 'its knex config could not be built' });
      }
      // Innermost: the file is checked again after the budget's wait, right before it is opened.
      refuseMissingFileAtOpen(knex, files, tenantId);
      budget?.attach(knex, tenantId);
      quietLibraryRefusals(knex);
      openOutsideScopes(knex);
      // Outermost: a missing file is refused before the budget's unit is taken.
      watchTenantFile(knex, files, tenantId, () => cache!.retire(tenantId, knex));
      failTypedOnceClosed(knex, tenantId);
      refuseForeignQualifiedBuilders(knex.client);
      failStreamsOnLostConnection(knex.client);
      streamsReleaseOnce(knex.client);
      if (verify !== undefined) {
        try {
          await verify(knex, tenantId);
        } catch (error) {
          // Closed without waiting: knex.destroy() waits for a connection still being opened, up to
          // the driver's connectTimeout (10 s), long past acquireTimeoutMs (a server that accepts
          // the connection and never answers).
          void knex.destroy().catch(() => undefined);
          throw error;
        }
      }
      if (warn) knex.on('query', warnOutsideTransaction(knex));
      return knex;
    },
  });
  return { connections: cache, budget };
}

/**
 * The knex config of a tenant under either strategy: `knexConfig(id)`, or for 'shared' the server's
 * config with the tenant's database. For tools that need their own connection (migrations).
 */
export async function tenantKnexConfig(options: ConnectionOptions, tenantId: string): Promise<Knex.Config> {
  // Bounded by acquireTimeoutMs as when serving: one that never settles would hang the operation (a
  // dropTenant() hung so kept the tenant "being dropped", and its createTenant() refused).
  const ms = options.acquireTimeoutMs ?? CONNECTION_DEFAULTS.acquireTimeoutMs;
  if (options.strategy !== 'shared') return bounded(options.knexConfig!, ms, 'knexConfig()')(tenantId);
  const location = await bounded(options.locate!, ms, 'locate()')(tenantId);
  checkLocation(location, tenantId);
  const config = serverConfig(options.servers!, location.server, tenantId);
  const { database } = location;
  return { ...config, connection: withConnectionSettings(config.connection, { database }) };
}

/**
 * Tenant pools start empty and shrink back when idle: thousands of tenants must not hold `min`
 * connections each. A query waits for a connection `acquireTimeoutMs` (knex's own default is 60 s),
 * unless the tenant's config sets knex's `acquireConnectionTimeout`.
 */
function withPoolDefaults(config: Knex.Config, acquireTimeoutMs: number, budgeted: boolean): Knex.Config {
  const pool = { min: 0, idleTimeoutMillis: 30_000, ...config.pool };
  // Under a budget, a connection waits for the budget first; the pool's own timeout must not be shorter.
  return { acquireConnectionTimeout: budgeted ? acquireTimeoutMs + 1_000 : acquireTimeoutMs, ...config, pool };
}

type AfterCreate = (conn: unknown, done: (error: unknown, conn?: unknown) => void) => void;

/**
 * knex leaves a connection whose `pool.afterCreate` failed open (its pool never sees it, so it never
 * destroys it): the server keeps it until `wait_timeout`, and under `maxConnections` its unit of the
 * budget was never given back, so a few failed set-ups (a `SET` that timed out) spent the budget for
 * good. Such a connection is closed here through the knex's client (which gives the unit back)
 * before the failure goes on to the pool.
 */
function closesFailedSetUps(config: Knex.Config, made: { readonly knex?: Knex }): Knex.Config {
  const afterCreate = (config.pool as { afterCreate?: AfterCreate } | undefined)?.afterCreate;
  if (typeof afterCreate !== 'function') return config;
  const closingAfterCreate: AfterCreate = (conn, done) => {
    const failed = (error: unknown) => {
      const client = made.knex?.client as { destroyRawConnection?(conn: unknown): Promise<unknown> } | undefined;
      void Promise.resolve()
        .then(() => client?.destroyRawConnection?.(conn))
        .catch(() => undefined)
        .then(() => done(error, conn));
    };
    try {
      afterCreate(conn, (error, result) => (error ? failed(error) : done(null, result ?? conn)));
    } catch (error) {
      failed(error);
    }
  };
  return { ...config, pool: { ...config.pool, afterCreate: closingAfterCreate } as Knex.PoolConfig };
}

/**
 * Makes a knex open its connections outside any tenant scope. A driver socket's events run in the
 * async context it was created in, so a connection opened inside some request's scope would carry
 * that scope into every later stream `data` event on it; opened outside, such listeners see no tenant
 * and fail closed (bind them with `bindTenant`).
 */
function openOutsideScopes(knex: Knex): void {
  const client = knex.client as Knex.Client & { acquireRawConnection(): Promise<unknown> };
  const acquireRaw = client.acquireRawConnection.bind(client);
  client.acquireRawConnection = () => runInScopeSync(undefined, acquireRaw);
}

/**
 * A query built in a tenant's scope and run after that tenant's pool closed (`forget()`, `evict()`,
 * the budget reclaiming it) gets a 503, not knex's untyped "Unable to acquire a connection"; so does
 * one that found every connection of the tenant's own pool busy until knex's acquire timeout (knex's
 * `KnexTimeoutError` is its `cause`), or whose server cannot be reached (a refused connection), and a
 * database gone is `UnknownTenantError` (404), as the shared strategy's acquires do.
 */
function failTypedOnceClosed(knex: Knex, tenantId: string): void {
  const client = knex.client as Knex.Client & { pool?: { destroyed?: boolean }; acquireConnection(): Promise<unknown> };
  const acquire = client.acquireConnection.bind(client);
  // Typed as the shared strategy's acquires are: a job or script gets a TenantError, not the driver's.
  const typedFailure = (error: unknown): never => {
    if (error instanceof TenantError) throw error;
    // Closed while this acquire waited for a connection (destroy(), forget, evict, the budget): tarn
    // rejects the waiting acquires with its plain "aborted".
    if (client.pool === undefined || client.pool.destroyed === true) {
      throw new TenantUnavailableError(tenantId, { cause: error, reason: 'its pool was closed (destroy, forget, evict or the connection budget) while this query waited for a connection' });
    }
    if (error === null || typeof error !== 'object') throw error;
    if (isNoSuchDatabase(error)) throw new UnknownTenantError(tenantId, { cause: error });
    if (!isUnreachable(error)) throw error;
    const busy = (error as { name?: unknown }).name === 'KnexTimeoutError';
    throw new TenantUnavailableError(tenantId, { cause: error, reason: busy ? 'every connection of its pool stayed busy until the acquire timeout' : 'its database server could not be reached' });
  };
  // A database that is not there is typed where the connection is opened, before knex logs the
  // failed acquire: the line (a stack) is then the library's own refusal, which quietLibraryRefusals
  // drops. Without `tenantExists` every request naming an unknown id printed one.
  const raw = client as Knex.Client & { acquireRawConnection(): Promise<unknown> };
  const acquireRaw = raw.acquireRawConnection.bind(raw);
  raw.acquireRawConnection = () =>
    acquireRaw().catch((error: unknown) => {
      throw isNoSuchDatabase(error) ? new UnknownTenantError(tenantId, { cause: error }) : error;
    });
  // While knex's destroy() runs, its tarn pool is still there but destroyed: an acquire then failed
  // with tarn's untyped "aborted" or waited for the acquire timeout.
  client.acquireConnection = () =>
    client.pool === undefined || client.pool.destroyed === true
      ? Promise.reject(new TenantUnavailableError(tenantId, { reason: 'its pool was closed (forget, evict or the connection budget) after this query was built; build it again in a new scope' }))
      : acquire().catch(typedFailure);
}

/** One query through the new knex; a missing database is an unknown tenant, anything else unavailable. */
async function verifyKnex(knex: Knex, tenantId: string): Promise<void> {
  // A shared handle under qualifyTables runs `select 1` on a connection with no current database,
  // where it checks nothing: it asks whether the database is there instead, with no USE.
  const database = qualifiedDatabase(knex);
  try {
    if (database === undefined) {
      await knex.raw('select 1');
    } else {
      const [rows] = (await knex.raw('select 1 from information_schema.schemata where schema_name = ?', [database])) as [unknown[]];
      if (rows.length === 0) throw new UnknownTenantError(tenantId);
    }
  } catch (error) {
    if (error instanceof TenantError) throw error;
    if (isNoSuchDatabase(error)) throw new UnknownTenantError(tenantId, { cause: error });
    const code = (error as { code?: unknown }).code;
    throw new TenantUnavailableError(tenantId, { cause: error, reason: typeof code === 'string' ? code : 'the connection check failed' });
  }
}
