import { EventEmitter } from 'node:events';
import type { Knex } from 'knex';
import { AffinityPool, type AffinityPoolOptions, type AffinityPoolStats } from './affinity-pool';
import { closeSocketNow, type AfterCreate } from './pooled-connection';
import { TenancyDestroyedError, TenantError, TenantUnavailableError } from './errors';
import { installInlineSwitch } from './inline-switch';
import { failStreamsOnLostConnection, streamsReleaseOnce } from './lost-stream';
import { isAliasObject, markQualified, namesItsDatabase, refuseForeignQualifiedBuilders, settleOwnNamesOnCompile } from './qualify-tables';
import { knexConnectionObject, withConnectionSettings } from './connection-settings';
import type { PoolCacheStats, TenantConnections, TenantLease } from './pool-cache';
import { quietLibraryRefusals } from './quiet-refusals';

/** Where a tenant lives: a server key of `options.servers` and the database name on it. */
export interface TenantLocation {
  server: string;
  database: string;
}

export interface SharedConnectionsOptions {
  /** One knex config per database server (no `database`); `pool.max` is the server's connection budget. */
  servers: Readonly<Record<string, Knex.Config>>;
  /** Maps a (validated) tenant id to its server and database. */
  locate(tenantId: string): TenantLocation | Promise<TenantLocation>;
  perTenantMax: number | undefined;
  acquireTimeoutMs: number;
  idleTimeoutMs: number;
  overflow: 'wait' | 'reject';
  /** Send a database switch's `USE` in the same round trip as the next statement (inline-switch.ts). */
  inlineSwitch: boolean;
  /** Connections of a server that may at once serve a cold tenant (`maxSwitchedConnections`); Infinity: no limit; 'auto': sized from each server. */
  maxSwitched: number | 'auto';
  /** Reset a connection's session when it passes to another tenant (`resetSession`). */
  resetSession: boolean;
  /**
   * Model queries name the tenant's database; never-switched connections serve them without `USE`
   * (`qualifyTables`). 'auto' (the default): on each server whose connection config is an object
   * without `database`, and for each database name knex can write (a name it would split or trim is
   * served with `USE` instead); true: the same, but such a name fails with a 503.
   */
  qualifyTables: boolean | 'auto';
  /** Cap on cached tenant handles (LRU); a handle is under 2 KB of heap, no connection. */
  maxTenants: number;
  /** Builds the knex of a server. */
  createKnex(config: Knex.Config): Knex;
  /** Checks a new handle (one query through it), so a missing database fails fast. */
  verify: ((knex: Knex, tenantId: string) => Promise<void>) | undefined;
  /** Called once per server knex (the tenancy attaches its development warning there). */
  onServerKnex?(knex: Knex): void;
}

/**
 * With `maxSwitchedConnections`: a switch to one of the databases a server's pool used last is not
 * limited. MariaDB keeps 400 table definitions by default (`table_definition_cache`); a few tables
 * per tenant make ~100-400 tenants whose tables are likely still open.
 */
const WARM_DATABASES = 256;

interface Server {
  readonly knex: Knex;
  readonly pool: AffinityPool;
  /** The tenant handles' `client.cancelQuery`: knex's, its `KILL QUERY` sent over a free pooled connection. */
  readonly cancelQuery: (connectionToKill: unknown) => Promise<unknown>;
}

interface Handle {
  readonly knex: Knex;
  leases: number;
  /** Leased since the cache was last trimmed past it (second-chance LRU: no reordering per lease). */
  used: boolean;
  /** Set by `evict()` (not by trimming the cache): an acquire that waited for its opening leases it no more. */
  forgotten: boolean;
  /**
   * Acquires that waited for its opening and have not taken their lease yet (they resume a turn or
   * more after it): trimming passes it by meanwhile, as one in use, or they would lease it closed.
   */
  pending: number;
  /** Set once evicted: resolves the eviction when the last lease is given back. */
  drained?: () => void;
}

/**
 * A handle being opened. `stale` once the tenant is evicted meanwhile (`forget()` after a move, a
 * drop): the location it read may be the old one, so it is not cached, and its acquires open again.
 */
interface Opening {
  handle: Promise<Handle | undefined>;
  stale: boolean;
  /** The acquires waiting for it (see Handle.pending). */
  waiters: number;
}

/** Stats of the shared strategy. */
export interface SharedStats extends PoolCacheStats {
  /** Cached tenant handles. */
  tenants: number;
  servers: Record<string, AffinityPoolStats>;
}

/**
 * The shared-pool strategy: one pool per database server, and per tenant only a handle: a knex whose
 * client borrows connections from its server's pool, switched to the tenant's database on demand.
 * Thousands of tenant databases are served over a fixed number of connections.
 */
export class SharedConnections implements TenantConnections {
  readonly #options: SharedConnectionsOptions;
  readonly #servers = new Map<string, Server>();
  readonly #handles = new Map<string, Handle>();
  readonly #opening = new Map<string, Opening>();
  /** Evicted handles with scopes still in flight, by tenant: settles when their last lease is back. */
  readonly #draining = new Map<string, Promise<void>>();
  /** Evicted handles with scopes still in flight (their leases count in stats). */
  readonly #busyEvicted = new Set<Handle>();
  #destroyed = false;
  readonly #counters = { created: 0, evictions: 0, failures: 0 };

  constructor(options: SharedConnectionsOptions) {
    this.#options = options;
    // resetSession needs the driver's COM_RESET_CONNECTION: fail at createTenancy(), not at the
    // first change of tenant under load.
    if (options.resetSession) for (const key of Object.keys(options.servers)) checkResetSupport(this.#server(key, '').knex, key);
  }

  async lease(tenantId: string): Promise<TenantLease> {
    for (;;) {
      if (this.#destroyed) throw new TenancyDestroyedError();
      const cached = this.tryLease(tenantId);
      if (cached !== undefined) return cached;
      let opening = this.#opening.get(tenantId);
      if (opening === undefined) {
        const started = { stale: false, waiters: 0 } as Opening;
        started.handle = this.#open(tenantId, started).finally(() => {
          if (this.#opening.get(tenantId) === started) this.#opening.delete(tenantId);
        });
        this.#opening.set(tenantId, (opening = started));
      }
      opening.waiters++;
      const handle = await opening.handle;
      if (handle === undefined) continue;
      if (handle.pending > 0) handle.pending--;
      // Evicted while it opened, or after (before this acquire got back to it): locate the tenant again.
      if (!handle.forgotten) return leaseOf(handle);
    }
  }

  tryLease(tenantId: string): TenantLease | undefined {
    const handle = this.#handles.get(tenantId);
    if (handle === undefined || this.#destroyed) return undefined;
    handle.used = true;
    return leaseOf(handle);
  }

  /**
   * Drops the tenant's handle (no connection is closed): the next lease locates the tenant again.
   * Resolves once the scopes holding the old handle are done, so that a caller dropping the
   * tenant's database does not pull it from under requests in flight.
   */
  evict(tenantId: string, options: { gone?: boolean } = {}): Promise<void> {
    // A free connection left on the tenant's database would serve its next handle with no `USE`, so
    // on a dropped database its check (`select 1`) would pass and its queries fail untyped (1146)
    // instead of the 404 a `USE` gives; after a move it would name the old database. Closed now,
    // cached handle or not (one trimmed by maxTenants), and again once the scopes in flight are done
    // (they give theirs back on it). Not for an eviction that only makes room (forEachTenant's).
    const discard = options.gone === true ? () => this.#discardTenant(tenantId) : undefined;
    discard?.();
    const opening = this.#opening.get(tenantId);
    if (opening !== undefined) {
      opening.stale = true;
      this.#opening.delete(tenantId);
    }
    // A handle evicted earlier (a forget() not awaited, as the error handler's) may still serve scopes:
    // waited for too, so that dropTenant and a move never go on under them.
    const earlier = this.#draining.get(tenantId);
    const handle = this.#handles.get(tenantId);
    if (handle === undefined) return earlier ?? Promise.resolve();
    this.#handles.delete(tenantId);
    handle.forgotten = true;
    this.#counters.evictions++;
    if (handle.leases === 0) {
      closeHandle(handle);
      return earlier ?? Promise.resolve();
    }
    this.#busyEvicted.add(handle);
    const drained = new Promise<void>((resolve) => {
      handle.drained = () => {
        this.#busyEvicted.delete(handle);
        discard?.();
        resolve();
      };
    });
    const all = earlier === undefined ? drained : Promise.all([earlier, drained]).then(() => undefined);
    this.#draining.set(tenantId, all);
    void all.then(() => {
      if (this.#draining.get(tenantId) === all) this.#draining.delete(tenantId);
    });
    return all;
  }

  /** Closes, on every server, the free connections the tenant left on a database (see `evict`). */
  #discardTenant(tenantId: string): void {
    for (const server of this.#servers.values()) server.pool.discardTenant(tenantId);
  }

  checkedOut(tenantId: string): number {
    let used = 0;
    for (const server of this.#servers.values()) used += server.pool.checkedOutBy(tenantId);
    return used;
  }

  closeCheckedOut(tenantId: string): void {
    for (const server of this.#servers.values()) server.pool.closeCheckedOutBy(tenantId);
  }

  stats(): SharedStats {
    let leases = 0;
    for (const handle of this.#handles.values()) leases += handle.leases;
    for (const handle of this.#busyEvicted) leases += handle.leases;
    const servers: Record<string, AffinityPoolStats> = {};
    for (const [key, server] of this.#servers) servers[key] = server.pool.stats();
    return { pools: this.#servers.size, draining: this.#busyEvicted.size, leases, tenants: this.#handles.size, ...this.#counters, servers };
  }

  /** Refuses new scopes, waits up to `drainTimeoutMs` for the scopes in flight, then closes every server pool. */
  async destroy(drainTimeoutMs = 10_000): Promise<void> {
    this.#destroyed = true;
    const busy = [...this.#handles.values()].filter((handle) => handle.leases > 0);
    this.#handles.clear();
    const evicted = [...this.#draining.values()];
    // Connections checked out with no scope left (a transaction left open, a statement that outlived
    // its scope) get the same drain time as scopes in flight; the pools then close what is left.
    const idle = [...this.#servers.values()].map((server) => server.pool.whenIdle());
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all([...busy.map((handle) => new Promise<void>((resolve) => (handle.drained = resolve))), ...evicted, ...idle]),
      new Promise<void>((resolve) => (timer = setTimeout(resolve, drainTimeoutMs))),
    ]);
    clearTimeout(timer);
    await Promise.all([...this.#servers.values()].map(async (server) => {
      await server.pool.destroy();
      await server.knex.destroy();
    }));
  }

  async #open(tenantId: string, opening: { readonly stale: boolean; readonly waiters: number }): Promise<Handle | undefined> {
    let location: TenantLocation;
    try {
      location = await this.#options.locate(tenantId);
    } catch (error) {
      this.#counters.failures++;
      throw error instanceof TenantError ? error : new TenantUnavailableError(tenantId, { cause: error, reason: 'locating it failed' });
    }
    let server: Server;
    try {
      checkLocation(location, tenantId);
      server = this.#server(location.server, tenantId);
    } catch (error) {
      this.#counters.failures++;
      throw error;
    }
    // knex's withSchema trims each part of a name and splits it at dots: such a database would be
    // named as another one in qualified SQL ('tenant_b ' as `tenant_b`).
    const writable = /^[^\s.`]+$/.test(location.database);
    if (server.pool.cleanConnectionsOn && !writable && this.#options.qualifyTables === true) {
      this.#counters.failures++;
      throw new TenantUnavailableError(tenantId, { reason: `qualifyTables cannot name database "${location.database}" in SQL (it has a dot, a backtick or whitespace)` });
    }
    // By default such a tenant's queries name no database: on a clean connection the server refuses
    // them and they are sent again after a `USE` (inline-switch.ts), as raw SQL is.
    const knex = tenantHandle(server, tenantId, location.database, writable);
    if (this.#options.verify !== undefined) {
      try {
        await this.#options.verify(knex, tenantId);
      } catch (error) {
        this.#counters.failures++;
        throw error;
      }
    }
    if (this.#destroyed) throw new TenancyDestroyedError();
    if (opening.stale) return undefined;
    const handle: Handle = { knex, leases: 0, used: false, forgotten: false, pending: opening.waiters };
    this.#handles.set(tenantId, handle);
    this.#counters.created++;
    // Not this one: its caller takes its lease next, and an evicted handle is tracked by nothing.
    this.#trim(handle);
    return handle;
  }

  #server(key: string, tenantId: string): Server {
    let server = this.#servers.get(key);
    if (server !== undefined) return server;
    const config = serverConfig(this.#options.servers, key, tenantId);
    const connection = this.#options.inlineSwitch ? withConnectionSettings(config.connection, { multipleStatements: true }) : config.connection;
    const knex = this.#options.createKnex({ ...config, connection, pool: { min: 0, max: 1 } });
    settingsFromProvider(knex.client);
    quietLibraryRefusals(knex);
    const max = config.pool?.max ?? 10;
    const poolOptions: AffinityPoolOptions = {
      max,
      identity: serverAddress(config.connection),
      perTenantMax: this.#options.perTenantMax ?? Math.max(1, Math.ceil(max / 2)),
      acquireTimeoutMs: this.#options.acquireTimeoutMs,
      idleTimeoutMs: this.#options.idleTimeoutMs,
      overflow: this.#options.overflow,
      inlineSwitch: this.#options.inlineSwitch,
      maxSwitched: this.#options.maxSwitched,
      warmDatabases: WARM_DATABASES,
      resetSession: this.#options.resetSession,
      // A connection opened on a database is not clean: with qualifyTables true checkTenancyOptions
      // refuses that combination; by default such a server (or one configured by a string or a
      // function, whose database cannot be read here) switches with USE.
      cleanConnections: this.#options.qualifyTables !== false && opensOnNoDatabase(config.connection),
      afterCreate: (config.pool as { afterCreate?: AfterCreate } | undefined)?.afterCreate,
    };
    const pool = new AffinityPool(knex.client, poolOptions);
    streamsReleaseOnce(knex.client);
    // Before any handle: their clients inherit it, and inlineSwitch's `_stream` calls it.
    failStreamsOnLostConnection(knex.client);
    refuseForeignQualifiedBuilders(knex.client);
    server = { knex, pool, cancelQuery: cancelsOverPool(knex.client, pool, this.#options.acquireTimeoutMs) };
    cancelOverPool(knex, server.cancelQuery);
    this.#servers.set(key, server);
    this.#options.onServerKnex?.(knex);
    return server;
  }

  /**
   * Evicts beyond `maxTenants`, oldest first, but a handle leased since it was last passed gets a
   * second chance (moved to the back), and one in use is never evicted: an approximate LRU that
   * costs a lease one property write instead of two Map operations.
   */
  #trim(keep?: Handle): void {
    for (const [id, handle] of this.#handles) {
      if (this.#handles.size <= this.#options.maxTenants) return;
      if (handle.leases > 0 || handle.pending > 0 || handle === keep) continue;
      this.#handles.delete(id);
      if (handle.used) {
        handle.used = false;
        this.#handles.set(id, handle);
      } else {
        closeHandle(handle);
        this.#counters.evictions++;
      }
    }
  }
}

type ProvidedClient = {
  connectionConfigProvider?: () => unknown;
  connectionConfigExpirationChecker?: (() => boolean) | null;
  connectionSettings?: unknown;
  acquireRawConnection(): Promise<unknown>;
};

/**
 * A server configured by a function (knex's connection provider): knex calls it in its own pool's
 * create (client.js), which the affinity pool replaces, so it is called here before each new
 * connection, as knex does: on first use, then whenever its `expirationChecker` says so.
 */
function settingsFromProvider(client: Knex.Client): void {
  const target = client as unknown as ProvidedClient;
  const provider = target.connectionConfigProvider;
  if (typeof provider !== 'function') return;
  const acquireRaw = target.acquireRawConnection.bind(target);
  target.acquireRawConnection = async () => {
    if (target.connectionSettings === undefined || target.connectionConfigExpirationChecker?.() === true) {
      const { expirationChecker, ...settings } = (await provider()) as { expirationChecker?: () => boolean };
      target.connectionConfigExpirationChecker = expirationChecker ?? null;
      target.connectionSettings = settings;
    }
    return acquireRaw();
  };
}

/**
 * @internal Refuses a `locate()` result that is not `{ server, database }` with both non-empty
 * strings: a catalog row with a column missing must not leave a tenant with no database, which on a
 * connection whose database is unknown would match and read the database another tenant left there.
 */
export function checkLocation(location: unknown, tenantId: string): asserts location is TenantLocation {
  const { server, database } = (location ?? {}) as Partial<Record<keyof TenantLocation, unknown>>;
  if (typeof location !== 'object' || typeof server !== 'string' || typeof database !== 'string' || database === '') {
    throw new TenantUnavailableError(tenantId, { reason: 'locate() must return { server, database }, both non-empty strings' });
  }
}

/**
 * @internal The config of server `key`, an own key of `servers` only: `toString` or `__proto__` from
 * a catalog must not reach Object.prototype's.
 */
export function serverConfig<C>(servers: Record<string, C>, key: string, tenantId: string): C {
  const config = Object.prototype.hasOwnProperty.call(servers, key) ? servers[key] : undefined;
  if (config === undefined) throw new TenantUnavailableError(tenantId, { reason: `locate() named server "${key}", which is not in options.servers` });
  return config;
}

/** Set on a handle's client once it is evicted and its scopes are done (see closeHandle). */
const CLOSED = Symbol('objection-tenancy.closedHandle');

/**
 * An evicted handle whose scopes are done serves no more queries: one built in a scope and run after
 * a `forget()` (a move to another server) would reach the old location, and one run after an LRU
 * eviction a handle nothing tracks. As with a closed tenant pool, it fails with a 503.
 */
function closeHandle(handle: Handle): void {
  (handle.knex.client as unknown as Record<symbol, unknown>)[CLOSED] = true;
}

function closedHandle(tenantId: string): TenantUnavailableError {
  return new TenantUnavailableError(tenantId, { reason: 'its connection was closed (forget, evict or maxTenants) after this query was built; build it again in a new scope' });
}

function leaseOf(handle: Handle): TenantLease {
  handle.leases++;
  let released = false;
  return {
    knex: handle.knex,
    release: () => {
      if (released) return;
      released = true;
      handle.leases--;
      if (handle.leases === 0) {
        if (handle.forgotten) closeHandle(handle);
        handle.drained?.();
      }
    },
  };
}

/**
 * A knex for one tenant on a shared server pool, costing a few objects rather than a knex instance:
 * it inherits everything from the server's knex, and only its client's connection methods differ.
 * The server's knex is never handed out, so nothing is bound to it (objection keeps bound models on
 * `knex.$$objection`, which each handle then owns).
 */
function tenantHandle(server: Server, tenantId: string, database: string, writable: boolean): Knex {
  const base = server.knex as Knex & { context: { client: unknown } };
  const protos = handlePrototypes(base);
  const client = Object.create(protos.client) as Knex.Client & Record<string | symbol, unknown>;
  client.acquireConnection = () => (client[CLOSED] === true ? Promise.reject(closedHandle(tenantId)) : server.pool.acquire(tenantId, database));
  client.releaseConnection = (conn: never) => {
    server.pool.release(conn);
    return Promise.resolve();
  };
  // The server's pool outlives every handle.
  client.destroy = () => Promise.resolve();
  // knex's MySQL columnInfo() (objection reads it for withGraphJoined's table metadata) asks for
  // `table_schema = client.database()`: the tenant's database, not the server connection's (none,
  // which matched no column and left joined relations without their columns). Transactions copy it.
  client.connectionSettings = { ...(base.client.connectionSettings as object), database };
  const qualified = server.pool.cleanConnectionsOn && writable ? database : undefined;
  if (server.pool.switchesInStatements) installInlineSwitch(client, server.pool, tenantId, qualified);
  if (qualified !== undefined) settleOwnNamesOnCompile(client, qualified, tenantId, server.pool.identity);
  const context = Object.create(protos.context) as { client: unknown; queryBuilder(): Knex.QueryBuilder };
  context.client = client;
  const handle = function (tableName?: string | Record<string, unknown>, options?: unknown) {
    const builder = context.queryBuilder();
    if (!tableName) return builder;
    // qualifyTables: `knex('table')` names the tenant's database too (unless the name has its own),
    // and so does `knex({ p: 'table' })`: compiled as `table as p` under it (see settleName).
    if (qualified !== undefined && (typeof tableName === 'string' ? !namesItsDatabase(tableName) : isAliasObject(tableName))) builder.withSchema(qualified);
    return builder.table(tableName as string, options as never);
  } as unknown as Knex & { context: unknown };
  Object.setPrototypeOf(handle, protos.handle);
  handle.context = context;
  client[HANDLE_OF] = handle;
  if (qualified !== undefined) markQualified(handle, qualified);
  return handle;
}

/** The events a knex passes on from its client (knex's make-knex.js), as a tenant's knex does. */
const KNEX_EVENTS: ReadonlySet<string | symbol> = new Set(['start', 'query', 'query-error', 'query-response']);
const HANDLE_OF = Symbol('objection-tenancy.handleOf');
type TenantClient = EventEmitter & { [HANDLE_OF]: EventEmitter };

/** Per server knex: the prototypes of its tenants' handles, clients and contexts (below). */
const PROTOTYPES = new WeakMap<Knex, { handle: object; client: object; context: object }>();

/**
 * The prototypes a tenant's handle, client and context inherit from the server knex's through. They
 * give each handle and client an emitter of its own: otherwise both inherit the server knex's and
 * its client's, which every tenant's handle shares, and `tenancy.knex().on('query-response', fn)` in
 * one tenant's scope would hear every tenant's statements and rows. A tenant's statements now reach
 * the listeners added on its own handle (or its client), as with a knex per tenant. The emitter
 * fields are inherited as empty and become a handle's own with its first listener, so a tenant with
 * none costs nothing more (a field per handle cost ~250 B of heap per cached tenant).
 */
function handlePrototypes(base: Knex): { handle: object; client: object; context: object } {
  let protos = PROTOTYPES.get(base);
  if (protos !== undefined) return protos;
  const empty = { _events: undefined, _eventsCount: 0 };
  const baseContext = (base as unknown as { context: BaseContext }).context;
  protos = {
    handle: Object.assign(Object.create(base) as object, empty),
    client: Object.assign(Object.create(base.client) as object, empty, { emit: emitToHandle }),
    context: Object.assign(Object.create(baseContext) as object, {
      withUserParams(this: { client: TenantClient }, params: unknown): Knex {
        return withListenersOf(this.client[HANDLE_OF], baseContext.withUserParams.call(this, params));
      },
    }),
  };
  PROTOTYPES.set(base, protos);
  return protos;
}

/**
 * A tenant client's `emit`: to its own listeners, and knex's events on to its handle. A copy of the
 * client that `knex.withUserParams()` makes (knex's migrator does) has no handle: its knex listens
 * on it, with the handle's listeners copied, as for any knex.
 */
function emitToHandle(this: TenantClient, event: string | symbol, ...args: unknown[]): boolean {
  const heard = EventEmitter.prototype.emit.call(this, event, ...args);
  const handle = this[HANDLE_OF] as EventEmitter | undefined;
  return handle !== undefined && KNEX_EVENTS.has(event) ? handle.emit(event, ...args) || heard : heard;
}

type BaseContext = { withUserParams(this: unknown, params: unknown): Knex };

/**
 * `handle.withUserParams()` (knex's migrator calls it): knex's copies the knex its context was made
 * for, the server's, with the tenant's client, and that knex's listeners: the handle's are copied.
 */
function withListenersOf(handle: EventEmitter, copy: Knex): Knex {
  for (const event of KNEX_EVENTS) for (const listener of handle.listeners(event)) copy.on(event as 'query', listener as () => void);
  return copy;
}

/**
 * A server's address from its connection config (an object or a URL): host, port and socket. A
 * connection given as a function has none that can be read here.
 */
function serverAddress(connection: unknown): string | undefined {
  let settings = typeof connection === 'string' ? knexConnectionObject(connection) : connection;
  if (settings === null || typeof settings !== 'object') return undefined;
  // mysql2's own `uri` wins over host and port; a `stream` (a socket of the app's making) has no address here.
  const { uri, stream } = settings as { uri?: unknown; stream?: unknown };
  if (stream !== undefined) return undefined;
  if (uri !== undefined) {
    if (typeof uri !== 'string') return undefined;
    try {
      settings = { ...settings, ...knexConnectionObject(uri) };
    } catch {
      return undefined;
    }
  }
  const { host, port, socketPath } = settings as { host?: unknown; port?: unknown; socketPath?: unknown };
  return `${String(host ?? 'localhost')}:${String(port ?? 3306)}:${String(socketPath ?? '')}`;
}

/** Whether a server's connection config is an object that names no database (its connections open on none). */
export function opensOnNoDatabase(connection: unknown): boolean {
  return connection !== null && typeof connection === 'object' && (connection as { database?: unknown }).database == null;
}


/**
 * `.timeout(ms, { cancel: true })`: knex opens a connection of its own for the `KILL QUERY`, outside
 * any pool, so the server would see `pool.max + 1`. Here it borrows a free connection of the server's
 * pool (from the server's client, so no tenant switching applies to it) and gives it back after.
 */
function cancelsOverPool(base: Knex.Client, pool: AffinityPool, ms: number): Server['cancelQuery'] {
  const cancel = (base as unknown as { cancelQuery(connectionToKill: unknown): Promise<unknown> }).cancelQuery;
  return (connectionToKill) => {
    const tenantId = pool.tenantOf(connectionToKill) ?? '';
    let borrowed: unknown;
    const killer = Object.create(base) as Knex.Client & Record<string, unknown>;
    killer.acquireRawConnection = () => pool.borrowForKill(connectionToKill).then((conn) => (borrowed = conn));
    killer.destroyRawConnection = (conn: never) => {
      pool.release(conn);
      return Promise.resolve();
    };
    const cancelled = cancel.call(killer, connectionToKill);
    // A server that does not answer the KILL (frozen, or cut off without a reset) would hold the
    // timed-out query's rejection for good: knex waits for its cancel. Bounded by acquireTimeoutMs;
    // the KILL's connection is closed then (its statement fails, and it is given back).
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        if (borrowed !== undefined) closeSocketNow(borrowed);
        reject(new TenantUnavailableError(tenantId, { reason: `its database server did not answer the KILL QUERY of a timed-out query within ${ms} ms (acquireTimeoutMs)` }));
      }, ms);
    });
    cancelled.catch(() => undefined);
    return Promise.race([cancelled, late]).finally(() => clearTimeout(timer));
  };
}

/**
 * The pool's `cancelQuery` for every client of this server's tenants: their handles' clients, through
 * the prototype they share, and their transactions' clients, which knex builds from
 * `client.constructor.prototype` (makeTxClient), not from the tenant's client; with knex's own
 * `cancelQuery` those opened a connection of their own for the `KILL QUERY` (pool.max + 1 on the
 * server). The constructor's prototype is the driver's with the pool's `cancelQuery` (qualifyTables'
 * transaction class chains from it too).
 */
function cancelOverPool(knex: Knex, cancelQuery: Server['cancelQuery']): void {
  const driverPrototype = (knex.client.constructor as { prototype: object }).prototype;
  const prototype = Object.create(driverPrototype) as Record<string, unknown>;
  prototype.cancelQuery = cancelQuery;
  const transactionClass = { prototype };
  Object.defineProperty(prototype, 'constructor', { value: transactionClass, configurable: true, writable: true });
  const handleClient = handlePrototypes(knex).client as Record<string, unknown>;
  handleClient.cancelQuery = cancelQuery;
  Object.defineProperty(handleClient, 'constructor', { value: transactionClass, configurable: true, writable: true });
}

function checkResetSupport(knex: Knex, key: string): void {
  const driver = (knex.client as { driver?: { Connection?: { prototype?: { reset?: unknown } } } }).driver;
  if (typeof driver?.Connection?.prototype?.reset !== 'function') {
    throw new TypeError(`createTenancy: options.resetSession needs mysql2 3.22 or later (connection.reset(), COM_RESET_CONNECTION) for servers.${key}`);
  }
}
