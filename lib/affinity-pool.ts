import type { Knex } from 'knex';
import { isNoSuchDatabase, TenancyDestroyedError, TenantError, TenantUnavailableError, UnknownTenantError } from './errors';
import { runInScopeSync } from './scope';
import { inlineUse, type SwitchState } from './inline-switch';
import { socketClosed } from './connection-budget';
import { WaitQueue, type QueuedAcquire } from './wait-queue';
import {
  ask,
  autocommitOn,
  closeSocketNow,
  guardPendingSwitch,
  leftTransactional,
  restoreCharset,
  stillRunning,
  trackSchemaChanges,
  type AfterCreate,
  type RawConnection,
  type Slot,
} from './pooled-connection';

interface Waiter extends QueuedAcquire {
  resolve(conn: RawConnection): void;
  reject(error: unknown): void;
  timer: NodeJS.Timeout | undefined;
}

/** Options of one server's shared pool. */
export interface AffinityPoolOptions {
  /** Connections this server may open (the connection budget of the server). */
  max: number;
  /**
   * Which database server this is, the same for every pool on it (another tenancy's too): its
   * address, when the config names one; else none, and the pool itself stands for it.
   */
  identity?: string | undefined;
  /** Connections one tenant may hold at once, so a busy tenant cannot starve the others. */
  perTenantMax: number;
  /** How long an acquire may wait for a connection before it fails with a 503-mapped error. */
  acquireTimeoutMs: number;
  /** Free connections idle this long are closed. 0 keeps them. */
  idleTimeoutMs: number;
  /** 'wait' queues acquires when every connection is busy; 'reject' fails them at once. */
  overflow: 'wait' | 'reject';
  /** Send a switch's `USE` with the next statement (see inline-switch.ts) rather than on its own. */
  inlineSwitch: boolean;
  /**
   * Connections that may at once serve an acquire that switched them (or opened them) to a cold
   * database: one not among the `warmDatabases` this pool used last. Cold switches make the server
   * open the tenant's tables (see README, "Cold switches"). Infinity: no limit. 'auto': sized from
   * the server when the pool opens its first connection (see `#sizeFrom`), one until then, no limit
   * when the server does not tell its cores.
   */
  maxSwitched: number | 'auto';
  /** How many of the databases used last count as warm (their switches are not limited); with 'auto' cap, sized from the server. */
  warmDatabases: number;
  /**
   * Reset a connection's session (COM_RESET_CONNECTION: user variables, session variables, temporary
   * tables, prepared statements, named locks) when it passes from one tenant to another.
   */
  resetSession: boolean;
  /** The server's `pool.afterCreate`: run on each new connection, and again after each reset. */
  afterCreate: AfterCreate | undefined;
  /**
   * qualifyTables: new connections open with no current database and serve any tenant without a
   * `USE` while they stay that way (the tenant's statements name its database; see inline-switch.ts).
   */
  cleanConnections: boolean;
}

/** Counters of one server's shared pool, as shown in `tenancy.stats().servers`. */
export interface AffinityPoolStats {
  open: number;
  inUse: number;
  waiting: number;
  /** Connections switched to another tenant's database (`USE`). */
  switches: number;
  /** Acquires served by a connection already on the tenant's database (no `USE`). */
  affinityHits: number;
  created: number;
  destroyed: number;
  timeouts: number;
  /** Connections in use now that were switched (or opened) to a cold database for their acquire. */
  coldSwitching: number;
  /** Acquires for a cold database that waited because `maxSwitched` connections were serving one. */
  coldWaits: number;
  /**
   * Times the cold-switch cap was lifted or put back: it holds only while at least half of the
   * recent acquires were of cold databases.
   */
  capChanges: number;
  /**
   * Connections the server refused as full (`max_connections`, `max_user_connections`) while the
   * pool had some of its own: the acquire then waited for one of those, and the pool opened none
   * for a second.
   */
  serverFull: number;
  /** The cap on connections serving a cold database at once (`maxSwitched`, as sized); null: no limit. */
  maxSwitchedConnections: number | null;
  /**
   * Whether that cap holds now: false with no cap, and while the `'auto'` cap is lifted (cold
   * acquires are not most of the recent traffic); a numeric cap always holds.
   */
  coldCapHeld: boolean;
  /** How many of the databases used last count as warm (not limited by the cap); null with no cap. */
  warmDatabases: number | null;
  /** resetSession: sessions reset because their connection passed to another tenant. */
  resets: number;
  /**
   * Connections given back inside a transaction (a raw `BEGIN` never committed) or with autocommit
   * turned off: closed rather than handed to the next tenant, so the server rolls back.
   */
  openTransactionsClosed: number;
  /** qualifyTables: acquires served by a connection with no current database (no `USE`). */
  cleanHits: number;
  /**
   * qualifyTables: statements that needed a `USE` on such a connection: refused there ("No database
   * selected") and sent again, or switched first because the server refused the same text lately.
   */
  qualifyRetries: number;
  /**
   * qualifyTables: connections left on a tenant's database by such a statement, taken back to no
   * database (COM_CHANGE_USER) when another tenant took them, rather than switched with `USE`.
   */
  restores: number;
  /**
   * qualifyTables: changes of user refused (the pool user's password changed since the
   * connection opened, say). The connection is closed, the pool stops taking connections back to no
   * database, and the acquire is served as it would be without that (a `USE`).
   */
  restoreRefusals: number;
}

// maxSwitched 'auto': connections that may serve cold databases at once per server core. Measured
// with 10,000 tenants on 2-vCPU hosts (scale benchmark): 2 per core best on Intel, 3 on AMD EPYC
// (with qualifyTables: 0.58-0.60x of one database at 3 per core, 0.55x at 2 and 4, 0.48x at 5).
const COLD_PER_CPU = 3;

// The cap pays when acquires of cold databases are most of the traffic (uniform popularity over
// many tenants: every statement opens tables, and the server's table caches thrash under many at
// once), and costs when they are a minority (a hot set with a long tail, Zipf(1.1) over 10,000
// tenants: about a quarter cold), where it holds tail queries back while connections are free. So
// the 'auto' cap holds only while at least COLD_SHARE of the last COLD_WINDOW acquires were cold (a
// number given as maxSwitchedConnections always holds). Scale
// benchmark, 2 x Intel Xeon, 4 rounds: uniform 0.49x of one database with the cap against 0.33x
// without it; Zipf 0.86x with it against 0.92x without.
const COLD_WINDOW = 512;
const COLD_SHARE = 0.5;

// A cold-switch permit lapses PERMIT_MS after it was taken once a statement of the tenant's has been
// answered on its connection: its tables are open by then, and a transaction that goes on holds no
// permit (see #lapsePermits).
const PERMIT_MS = 200;

// How far down the wait queue a released connection looks for a waiter on its own database:
// affinity without letting the head of the queue starve.
const LOOKAHEAD = 32;
// How far down the wait queue any search looks, at the least (and at least `max` past LOOKAHEAD: the
// waiters of tenants at their connection cap, which the queue holds to `perTenantMax` each, never
// hide one that may take the connection). See wait-queue.ts.
const SEARCH_DEPTH = 256;

// qualifyTables: a connection a refused statement left on a tenant's database is taken back to no
// database (COM_CHANGE_USER: two round trips on MariaDB, which re-authenticates; about three USEs of
// time, twice their CPU) when another tenant takes it, while fewer than RESTORE_BELOW statements per
// acquire on a clean connection are refused (or switched first, their text known: REFUSED_TEXTS);
// above that, one chance in EXPLORE, so that the share is still measured. Restoring every time,
// against never (stop 13, 200 tenants, 20 connections, paired runs): +10% of throughput with 2% of
// statements raw, even at 5-10%, -10% at 20-50%. Since refused texts are remembered (stop 19, Intel
// host, 2 paired runs of 4 rounds): +3-7% at 10% raw SQL (restores kept on, against the 0.1 this was,
// under which 10% sat at the threshold and mostly switched), -6-10% at 20%; hence 0.125.
// benchmarks/raw-mix.bench.ts measures the rule.
const RESTORE_BELOW = 0.125;
const EXPLORE = 256;
/** Acquires on clean connections per update of the refused share (halved into the previous value). */
const REFUSAL_WINDOW = 256;
// qualifyTables: how many texts of statements refused on clean connections the pool remembers (the
// most recent), so that the same statement is switched first next time rather than sent to be refused
// again (a round trip of ~70-90 µs of Node CPU on a 2-vCPU host); texts longer than REFUSED_TEXT_MAX
// characters (a statement with its values written in) are not kept: at most 1 Mi characters per server.
const REFUSED_TEXTS = 256;
const REFUSED_TEXT_MAX = 4096;

/**
 * One database server's connections, shared by every tenant database on it. A connection is switched
 * with `USE` only when it is not already on the tenant's database, and a free connection already there
 * is preferred (affinity). Connections are opened lazily up to `max`, and reaped when idle.
 */
export class AffinityPool implements SwitchState {
  readonly #client: Knex.Client;
  readonly #options: AffinityPoolOptions;
  readonly #slots = new Map<RawConnection, Slot>();
  /** Free connections by database, most recently used last. */
  readonly #free = new Map<string | undefined, Slot[]>();
  readonly #waiters: WaitQueue<Waiter>;
  readonly #heldBy = new Map<string, number>();
  readonly #owner = new Map<RawConnection, string>();
  /** Connections opened for one `KILL QUERY` (borrowForKill): closed when given back. */
  readonly #killers = new Set<RawConnection>();
  /** Until when no connection is opened while the pool has some: the server refused one as full. */
  #fullUntil = 0;
  #fullTimer: NodeJS.Timeout | undefined;
  /** whenIdle() callers, settled when the last checked-out connection comes back. */
  readonly #idleWaiters: (() => void)[] = [];
  readonly #reaper: NodeJS.Timeout | undefined;
  #freeCount = 0;
  #creating = 0;
  /** Acquires holding a cold-switch permit (see `maxSwitched`), creations included. */
  #switching = 0;
  /** With `maxSwitched`: the databases used last, least recent first (the warm ones). */
  readonly #recent: Map<string, number> | undefined;
  /** Touches of `#recent` so far: the value of each entry is the touch that last moved it to the end. */
  #touches = 0;
  /** 'auto': the cap holds only while cold acquires are most of the traffic (see COLD_SHARE). A number is a hard cap. */
  readonly #adaptive: boolean;
  /** Whether the cold-switch cap holds now; counted over the current window. */
  #capped = true;
  #acquiresSeen = 0;
  #coldSeen = 0;
  /** The cold-switch cap in force (`maxSwitched`; 'auto' starts at one until the server is read). */
  #maxSwitched: number;
  #warmDatabases: number;
  /** 'auto' cap not yet sized: the next connection opened reads the server's cores and table caches. */
  #sizeFromServer: boolean;
  #lapseTimer: NodeJS.Timeout | undefined;
  /**
   * qualifyTables: connections open with no current database. Turned off for good when a new
   * connection turns out to have one (a `uri` or an `init_connect` naming a database, an
   * `afterCreate` that changes user): its switches are then `USE`s, as without the option.
   */
  #clean: boolean;
  #closed = false;
  #warnedOpenTransaction = false;
  /** qualifyTables: statements refused per acquire on a clean connection, smoothed (see RESTORE_BELOW). */
  #refusedShare = 0;
  #windowClean = 0;
  #windowRefused = 0;
  #restoreChances = 0;
  /** qualifyTables: the server refused a change of user once; connections are no longer taken back. */
  #restoresOff = false;
  /** qualifyTables: texts of statements refused lately on clean connections, least recent first (see REFUSED_TEXTS). */
  readonly #refusedTexts = new Map<string, undefined>();
  readonly #counters = { switches: 0, affinityHits: 0, created: 0, destroyed: 0, timeouts: 0, coldWaits: 0, capChanges: 0, serverFull: 0, resets: 0, openTransactionsClosed: 0, cleanHits: 0, qualifyRetries: 0, restores: 0, restoreRefusals: 0 };

  constructor(client: Knex.Client, options: AffinityPoolOptions) {
    this.#client = client;
    this.#options = options;
    this.#waiters = new WaitQueue(options.perTenantMax, Math.max(SEARCH_DEPTH, LOOKAHEAD + options.max), LOOKAHEAD);
    const auto = options.maxSwitched === 'auto';
    // 'auto': one cold switch at a time until the first connection has read the server, so that a
    // burst at start (a restart under load) does not open every connection on cold tenants at once.
    this.#maxSwitched = auto ? 1 : (options.maxSwitched as number);
    this.#warmDatabases = options.warmDatabases;
    this.#sizeFromServer = auto;
    this.#adaptive = auto;
    this.#clean = options.cleanConnections;
    this.#recent = options.maxSwitched === Infinity ? undefined : new Map();
    if (options.idleTimeoutMs > 0) {
      this.#reaper = setInterval(() => this.#reapIdle(), Math.max(50, Math.min(options.idleTimeoutMs / 2, 10_000)));
      this.#reaper.unref();
    }
  }

  /** A connection on database `db` for tenant `tenantId`. */
  acquire(tenantId: string, db: string): Promise<RawConnection> {
    if (this.#closed) return Promise.reject(new TenancyDestroyedError());
    if (this.#adaptive) this.#countCold(db);
    return this.#acquire(tenantId, db, this.#options.acquireTimeoutMs);
  }

  /** `acquire()` once counted: a connection at once, else a wait of at most `timeoutMs`. */
  #acquire(tenantId: string, db: string, timeoutMs: number): Promise<RawConnection> {
    const canCreate = this.#canCreate();
    if (this.#held(tenantId) < this.#options.perTenantMax) {
      const maySwitch = this.#maySwitchTo(db);
      const slot = this.#takeFree(db, maySwitch);
      if (slot !== undefined) return this.#assign(slot, tenantId, db);
      if (maySwitch && canCreate) return this.#create(tenantId, db);
      if (!maySwitch && (this.#freeCount > 0 || canCreate)) this.#counters.coldWaits++;
    }
    // 'reject' sheds load when every connection of the server is in use. An acquire held back only by
    // its tenant's cap or the cold-switch cap, with connections free or room to open one, waits its
    // turn (up to acquireTimeoutMs): refused, a burst on a fresh pool (cap of one until the server is
    // read) failed all but one query with a pool nearly empty.
    if (this.#options.overflow === 'reject' && this.#freeCount === 0 && !canCreate) {
      return Promise.reject(new TenantUnavailableError(tenantId, { reason: 'every connection of its database server is busy' }));
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { tenantId, db, place: 'out', ticket: undefined, resolve, reject, timer: undefined };
      waiter.timer = setTimeout(() => {
        this.#waiters.cancel(waiter);
        this.#counters.timeouts++;
        reject(new TenantUnavailableError(tenantId, { reason: `no connection was free within ${this.#options.acquireTimeoutMs} ms` }));
      }, timeoutMs);
      this.#waiters.add(waiter, false, this.#recent?.has(db) ?? false);
      if (this.#recent !== undefined) this.#armLapse();
    });
  }

  /** The tenant `conn` is checked out to, if it is. */
  tenantOf(conn: unknown): string | undefined {
    return this.#owner.get(conn as RawConnection);
  }

  /**
   * A connection for the `KILL QUERY` with which knex cancels the statement running on `cancelling`:
   * it needs no database and serves no tenant. A free one, else one opened for it when the pool has
   * room under `max` (closed after the kill; it holds its place until its socket closes). With
   * neither, the cancel fails at once rather than open a connection beyond `max` (the timed-out
   * statement's connection is then closed once that statement ends). Given back with `release()`.
   */
  borrowForKill(cancelling: unknown): Promise<RawConnection> {
    const tenantId = this.#owner.get(cancelling as RawConnection) ?? '';
    const slot = this.#closed ? undefined : this.#takeFree('', true);
    if (slot !== undefined) {
      this.#claim(slot.conn, '');
      return Promise.resolve(slot.conn);
    }
    if (!this.#closed && this.#slots.size + this.#creating < this.#options.max) return this.#openForKill(tenantId);
    return Promise.reject(new TenantUnavailableError(tenantId, { reason: 'no connection of its database server was free to cancel its query with' }));
  }

  /**
   * A new driver connection, opened outside any scope: a socket's events run in the context it was
   * created in, and this connection will serve many tenants (DESIGN: never let pool internals carry a
   * tenant). A driver that throws at once (a bad config) fails like a refused connection.
   */
  #openRaw(): Promise<RawConnection> {
    return runInScopeSync(undefined, () => {
      try {
        return Promise.resolve(this.#client.acquireRawConnection()) as Promise<RawConnection>;
      } catch (error) {
        return Promise.reject(error);
      }
    });
  }

  /** A connection outside the free list for one `KILL QUERY`, counted under `max` until its socket closes. */
  async #openForKill(tenantId: string): Promise<RawConnection> {
    this.#creating++;
    const attempt = this.#openRaw();
    try {
      const conn = await this.#answered(tenantId, 'a connection attempt', attempt);
      this.#killers.add(conn);
      return conn;
    } catch (error) {
      if (error instanceof TenantUnavailableError) this.#abandon(attempt);
      else this.#freeCreatingPlace();
      throw new TenantUnavailableError(tenantId, { cause: error, reason: 'no connection to cancel its query with could be opened' });
    }
  }

  /**
   * Closes the free connections `tenantId` used last and left on a database (the tenant was dropped
   * or moved), so that none serves it again without a `USE` on a database that may be gone. Its
   * databases count as cold again.
   */
  discardTenant(tenantId: string): void {
    let discarded = false;
    for (const [db, list] of this.#free) {
      if (db === undefined) continue;
      const keep = list.filter((slot) => slot.tenant !== tenantId);
      if (keep.length === list.length) continue;
      for (const slot of list) if (slot.tenant === tenantId) void this.#destroy(slot);
      this.#freeCount -= list.length - keep.length;
      this.#recent?.delete(db);
      if (keep.length === 0) this.#free.delete(db);
      else this.#free.set(db, keep);
      discarded = true;
    }
    if (discarded && this.#waiters.size > 0) this.#pump();
  }

  /** Gives a connection back: to a waiter (preferring one on the same database), or to the free list. */
  release(conn: RawConnection): void {
    this.#releaseConnection(conn);
    if (this.#idleWaiters.length > 0) this.#settleIdle();
  }

  #releaseConnection(conn: RawConnection): void {
    if (this.#killers.delete(conn)) {
      void this.#closeUnjoined(conn);
      return;
    }
    const tenantId = this.#owner.get(conn);
    // Not checked out: a second release of one acquire (knex's streams release twice, tenant
    // handles release once). Listing the connection free again would hand it to two tenants.
    if (tenantId === undefined) return;
    this.#owner.delete(conn);
    this.#unhold(tenantId);
    const slot = this.#slots.get(conn);
    if (slot === undefined) return;
    // A statement still runs on it (knex gave up on it: a timeout, cancelled or not, or an abandoned
    // stream): whatever it and the statements queued behind it do, no other acquire may follow them.
    if (stillRunning(conn)) slot.broken = true;
    const gavePermit = slot.switched;
    if (gavePermit) {
      slot.switched = false;
      this.#switching--;
    }
    // A switch never sent leaves the connection where it was.
    slot.pending = undefined;
    slot.target = undefined;
    if (!this.#closed && !slot.broken && slot.autocommit && leftTransactional(conn) && this.#valid(conn)) this.#leftInTransaction(slot, tenantId);
    if (this.#closed || slot.broken || !this.#valid(conn)) {
      this.#destroy(slot);
      this.#pump();
      return;
    }
    const waiter = this.#nextWaiter(slot.db, (w) => w.db === slot.db || this.#maySwitchTo(w.db));
    if (waiter !== undefined) {
      this.#serve(waiter, this.#assign(slot, waiter.tenantId, waiter.db));
      // The permit this connection gave back, if that waiter did not need it, may serve another
      // waiter from a free connection.
      if (gavePermit && this.#waiters.size > 0 && this.#freeCount > 0 && this.#switching < this.#maxSwitched) this.#pump();
      return;
    }
    slot.idleSince = Date.now();
    const list = this.#free.get(slot.db);
    if (list === undefined) this.#free.set(slot.db, [slot]);
    else list.push(slot);
    this.#freeCount++;
    // A tenant at its cap that just released may unblock a waiter that a free connection can serve.
    if (this.#waiters.size > 0) this.#pump();
  }

  /** Which database server this is (see AffinityPoolOptions.identity): its address, else this pool. */
  get identity(): unknown {
    return this.#options.identity ?? this;
  }

  /** True when switches are sent with the next statement (the tenant handles then prefix it). */
  get inlineSwitch(): boolean {
    return this.#options.inlineSwitch;
  }

  /** qualifyTables: connections open with no current database (tenant handles then name theirs). */
  get cleanConnectionsOn(): boolean {
    return this.#clean;
  }

  /** True when tenant handles take part in switching (inlineSwitch, or qualifyTables' clean connections). */
  get switchesInStatements(): boolean {
    return this.#options.inlineSwitch || this.#clean;
  }

  pendingSwitch(conn: unknown): string | undefined {
    return this.#slots.get(conn as RawConnection)?.pending;
  }

  settleSwitch(conn: unknown, ok: boolean): void {
    const slot = this.#slots.get(conn as RawConnection);
    if (slot === undefined || slot.pending === undefined) return;
    if (ok) {
      slot.db = slot.pending;
      slot.pending = undefined;
    } else {
      // Whether the USE ran is unknown: the switch stays pending for any further statement of this
      // acquire, and the database unknown for the next one. Nor is it warm (it may not exist).
      slot.db = undefined;
      this.#recent?.delete(slot.pending);
    }
  }

  /** qualifyTables: the tenant database a clean connection (no current database) serves now, if it is one. */
  cleanTarget(conn: unknown): string | undefined {
    const slot = this.#slots.get(conn as RawConnection);
    return slot !== undefined && slot.clean ? slot.target : undefined;
  }

  /**
   * qualifyTables: a statement was refused on a clean connection ("No database selected"), or its text
   * was lately: it is sent (again) after a switch.
   */
  noteQualifyRetry(sql: string): void {
    this.#counters.qualifyRetries++;
    this.#windowRefused++;
    if (sql.length > REFUSED_TEXT_MAX) return;
    const texts = this.#refusedTexts;
    texts.delete(sql);
    texts.set(sql, undefined);
    if (texts.size > REFUSED_TEXTS) texts.delete(texts.keys().next().value!);
  }

  knownRefused(sql: string): boolean {
    return this.#refusedTexts.size !== 0 && this.#refusedTexts.has(sql);
  }

  async switchNow(conn: unknown, tenantId: string): Promise<void> {
    const slot = this.#slots.get(conn as RawConnection);
    const db = slot === undefined ? undefined : (slot.pending ?? (slot.clean ? slot.target : undefined));
    if (slot === undefined || db === undefined) return;
    // A pending switch was counted when it was decided; a clean connection's is decided here.
    if (slot.pending === undefined) this.#counters.switches++;
    slot.pending = undefined;
    slot.db = undefined;
    const switching = this.#use(slot, db, tenantId).catch((error: unknown) => {
      throw mapSwitchError(tenantId, error);
    });
    slot.switching = switching;
    try {
      await switching;
    } finally {
      if (slot.switching === switching) slot.switching = undefined;
    }
  }

  async switchedTo(conn: unknown, database: string): Promise<boolean> {
    const slot = this.#slots.get(conn as RawConnection);
    if (slot === undefined) return false;
    if (slot.switching !== undefined) await slot.switching;
    return slot.db === database;
  }

  stats(): AffinityPoolStats {
    return {
      open: this.#slots.size,
      inUse: this.#slots.size - this.#freeCount,
      waiting: this.#waiters.size,
      coldSwitching: this.#switching,
      maxSwitchedConnections: this.#maxSwitched === Infinity ? null : this.#maxSwitched,
      coldCapHeld: this.#maxSwitched !== Infinity && this.#capped,
      warmDatabases: this.#maxSwitched === Infinity ? null : this.#warmDatabases,
      ...this.#counters,
    };
  }

  /** Connections the tenant has checked out right now. */
  checkedOutBy(tenantId: string): number {
    let used = 0;
    for (const owner of this.#owner.values()) if (owner === tenantId) used++;
    return used;
  }

  /**
   * Closes the connections the tenant has checked out (dropTenant, after its drain time: a
   * transaction left open holds its database's locks), socket first, and takes them back: the server
   * rolls back what they left open, and a late release of one is a release of nothing.
   */
  closeCheckedOutBy(tenantId: string): void {
    for (const [conn, owner] of [...this.#owner]) {
      if (owner !== tenantId) continue;
      closeSocketNow(conn);
      this.#releaseConnection(conn);
    }
    if (this.#idleWaiters.length > 0) this.#settleIdle();
  }

  /**
   * Resolves once no connection is checked out (given right back when none is): what destroy()
   * waits for, up to its drain time, before it closes the rest.
   */
  whenIdle(): Promise<void> {
    if (this.#owner.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /**
   * Closes every connection; waiting acquires fail. Connections still checked out (a transaction
   * left open, a statement that outlived its scope, after the tenancy's drain time) are closed at
   * once, their sockets first: the server rolls back what they left open, and their late release
   * finds them gone.
   */
  async destroy(): Promise<void> {
    this.#closed = true;
    if (this.#reaper !== undefined) clearInterval(this.#reaper);
    clearTimeout(this.#lapseTimer);
    clearTimeout(this.#fullTimer);
    for (const waiter of this.#waiters.drain()) {
      clearTimeout(waiter.timer);
      waiter.reject(new TenancyDestroyedError());
    }
    const closing: Promise<unknown>[] = [];
    for (const list of this.#free.values()) for (const slot of list) closing.push(this.#destroy(slot));
    this.#free.clear();
    this.#freeCount = 0;
    for (const [conn, tenantId] of [...this.#owner]) {
      this.#owner.delete(conn);
      this.#unhold(tenantId);
      const slot = this.#slots.get(conn);
      if (slot === undefined) continue;
      if (slot.switched) {
        slot.switched = false;
        this.#switching--;
      }
      closeSocketNow(conn);
      closing.push(this.#destroy(slot));
    }
    this.#settleIdle();
    await Promise.all(closing);
  }

  #settleIdle(): void {
    if (this.#owner.size > 0 || this.#idleWaiters.length === 0) return;
    for (const resolve of this.#idleWaiters.splice(0)) resolve();
  }

  /** knex types it as async; the mysql2 client answers synchronously. */
  #valid(conn: RawConnection): boolean {
    return (this.#client.validateConnection(conn as never) as unknown) === true;
  }

  #held(tenantId: string): number {
    return this.#heldBy.get(tenantId) ?? 0;
  }

  #unhold(tenantId: string): void {
    const held = this.#held(tenantId) - 1;
    if (held <= 0) this.#heldBy.delete(tenantId);
    else this.#heldBy.set(tenantId, held);
  }

  #claim(conn: RawConnection, tenantId: string): void {
    this.#owner.set(conn, tenantId);
    this.#heldBy.set(tenantId, this.#held(tenantId) + 1);
  }

  /** Whether an acquire for `db` may switch (or open) a connection now. */
  #maySwitchTo(db: string): boolean {
    return !this.#capped || this.#switching < this.#maxSwitched || this.#recent!.has(db);
  }

  /** Counts cold acquires; every COLD_WINDOW acquires, whether the cold-switch cap holds (see COLD_SHARE). */
  #countCold(db: string): void {
    if (!this.#recent!.has(db)) this.#coldSeen++;
    if (++this.#acquiresSeen < COLD_WINDOW) return;
    const capped = this.#coldSeen >= COLD_SHARE * this.#acquiresSeen;
    this.#acquiresSeen = 0;
    this.#coldSeen = 0;
    if (capped === this.#capped) return;
    this.#capped = capped;
    this.#counters.capChanges++;
    // Lifted: acquires the cap held back may go now.
    if (!capped && this.#waiters.size > 0) queueMicrotask(() => this.#pump());
  }

  /**
   * Takes back the permits held PERMIT_MS or longer by connections that have answered a statement
   * of their tenant's (they stay in use): its tables are open, and a long transaction on a cold
   * tenant no longer keeps other cold tenants waiting. A first statement still running (a server
   * slow to open the table) keeps its permit: the cap holds when the server is slowest.
   */
  #lapsePermits(): void {
    const now = Date.now();
    for (const slot of this.#slots.values()) {
      if (slot.switched && slot.answered && now - slot.permitSince >= PERMIT_MS) {
        slot.switched = false;
        this.#switching--;
      }
    }
  }

  /** Takes a cold-switch permit; with acquires waiting, they are looked at again once permits may lapse. */
  #takePermit(): void {
    this.#switching++;
    if (this.#waiters.size > 0) this.#armLapse();
  }

  /**
   * An acquire waits with every permit taken: in PERMIT_MS, permits held that long lapse and the
   * waiters are looked at again (one timer per pool, while such waits go on; releases serve them
   * before that in the usual case).
   */
  #armLapse(): void {
    if (this.#lapseTimer !== undefined || this.#switching < this.#maxSwitched) return;
    this.#lapseTimer = setTimeout(() => {
      this.#lapseTimer = undefined;
      if (this.#closed) return;
      this.#lapsePermits();
      this.#pump();
      if (this.#waiters.size > 0) this.#armLapse();
    }, PERMIT_MS);
    this.#lapseTimer.unref();
  }

  /** Whether switching to `db` takes a permit: it is not among the databases used last. */
  #cold(db: string): boolean {
    return this.#recent !== undefined && !this.#recent.has(db);
  }

  #touch(db: string): void {
    const recent = this.#recent;
    if (recent === undefined) return;
    const now = ++this.#touches;
    const warm = this.#warmDatabases;
    // A database moved to the end within the last quarter of the set's size of touches stays where it
    // is: at most that many others went behind it since, so it is far from the front, and a hot one is
    // not deleted and set again on every query (in a Map of thousands, sized from a server's table
    // caches, that cost ~6 µs per query under Zipf: a CPU profile, stop 28). A small set (under 4) is
    // kept in exact order, as before.
    const moved = recent.get(db);
    if (moved !== undefined && now - moved < warm >> 2) return;
    recent.delete(db);
    recent.set(db, now);
    if (recent.size > warm) recent.delete(recent.keys().next().value!);
  }

  /** A free connection on `db`, else (when `maySwitch`) the free connection idle longest. */
  #takeFree(db: string, maySwitch: boolean): Slot | undefined {
    for (;;) {
      const slot = this.#takeFreeSlot(db, maySwitch);
      // A free connection may have died while idle (server restart): drop it, as tarn does on acquire.
      if (slot === undefined || this.#valid(slot.conn)) return slot;
      void this.#destroy(slot);
    }
  }

  #takeFreeSlot(db: string, maySwitch: boolean): Slot | undefined {
    const same = this.#free.get(db);
    let slot = same?.pop();
    if (slot === undefined && maySwitch && this.#clean) slot = this.#takeClean();
    if (slot === undefined && maySwitch) {
      // No free connection on this database: take the one idle longest (least likely to be wanted back).
      let oldest: Slot[] | undefined;
      for (const list of this.#free.values()) {
        if (list.length > 0 && (oldest === undefined || list[0]!.idleSince < oldest[0]!.idleSince)) oldest = list;
      }
      slot = oldest?.shift();
    }
    if (slot === undefined) return undefined;
    this.#freeCount--;
    const list = this.#free.get(slot.db);
    if (list !== undefined && list.length === 0) this.#free.delete(slot.db);
    return slot;
  }

  /** A free connection with no current database, if any (they are listed under `undefined`). */
  #takeClean(): Slot | undefined {
    const list = this.#free.get(undefined);
    if (list === undefined) return undefined;
    for (let i = list.length - 1; i >= 0; i--) {
      const slot = list[i]!;
      if (slot.clean) return list.splice(i, 1)[0];
    }
    return undefined;
  }

  async #assign(slot: Slot, tenantId: string, db: string): Promise<RawConnection> {
    this.#claim(slot.conn, tenantId);
    // Clean connections stop being served as such once the pool found one that was not (#verifyClean):
    // tenant handles opened since then neither name their database nor expect refusals.
    if (slot.clean && !this.#clean) slot.clean = false;
    const reset = this.#options.resetSession && slot.tenant !== undefined && slot.tenant !== tenantId;
    slot.tenant = tenantId;
    if (slot.db === db) {
      this.#counters.affinityHits++;
      this.#touch(db);
      if (reset) await this.#reset(slot, tenantId);
      return slot.conn;
    }
    // qualifyTables: a connection a refused statement left on another tenant's database goes back to
    // no database rather than to this one, so that it serves every tenant with no USE again.
    const restore = this.#clean && !slot.clean && this.#restoreWorthIt();
    if (slot.clean) this.#servedClean();
    else if (!restore) this.#counters.switches++;
    slot.answered = false;
    if (this.#cold(db)) {
      slot.switched = true;
      slot.permitSince = Date.now();
      this.#takePermit();
    }
    this.#touch(db);
    if (restore) {
      // A change of user the server refused closed the connection: the acquire starts again, restores off.
      if (!(await this.#restore(slot, tenantId, reset))) return this.acquire(tenantId, db);
    } else if (reset) await this.#reset(slot, tenantId);
    if (slot.clean) {
      // No database to leave: the tenant's statements name theirs, anything else is refused.
      slot.target = db;
      return slot.conn;
    }
    if (this.#inline(slot, db)) return slot.conn;
    try {
      await this.#use(slot, db, tenantId);
    } catch (error) {
      this.release(slot.conn);
      throw mapSwitchError(tenantId, error);
    }
    return slot.conn;
  }

  /**
   * resetSession: clears what the previous tenant left on the connection's session, then runs the
   * server's `afterCreate` again (the reset also cleared what it set). The database stays selected.
   */
  #reset(slot: Slot, tenantId: string): Promise<void> {
    this.#counters.resets++;
    return this.#renewSession(slot, tenantId, 'its connection could not be reset for it', (done) => {
      if (typeof slot.conn.reset !== 'function') throw new TypeError('resetSession needs a driver connection with reset() (mysql2)');
      slot.conn.reset(done);
    });
  }

  /**
   * qualifyTables: takes a connection back to no current database (COM_CHANGE_USER as the same user;
   * its configured database is none), then runs the server's `afterCreate` again (the command also
   * resets the session, as resetSession's reset does). Should `afterCreate` itself select a
   * database, the connection stays switched and is switched to the tenant's database as usual.
   */
  async #restore(slot: Slot, tenantId: string, countReset: boolean): Promise<boolean> {
    this.#counters.restores++;
    if (countReset) this.#counters.resets++;
    let refusal: unknown;
    try {
      await this.#renewSession(
        slot,
        tenantId,
        'its connection could not be taken back to no database',
        (done) => {
          if (typeof slot.conn.changeUser !== 'function') throw new TypeError('qualifyTables needs a driver connection with changeUser() (mysql2)');
          slot.conn.changeUser({}, (error) => {
            if (refusedChange(error)) refusal = error;
            done(error);
          });
        },
        () => {
          slot.db = undefined;
          slot.clean = true;
        },
      );
    } catch (error) {
      // The change of user was refused (the user's password changed since the connection opened, say)
      // and would be again: a plain USE needs no authentication, so switches go on without restores.
      // A lost connection or a failed afterCreate stays a 503, as for a new connection.
      if (refusal === undefined) throw error;
      this.#counters.restoreRefusals++;
      this.#restoresOff = true;
      return false;
    }
    if (slot.clean) this.#servedClean();
    else this.#counters.switches++;
    return true;
  }

  /**
   * Sends a session command (a reset, a change of user), then runs the server's `afterCreate` again.
   * A connection that fails either is closed, never handed to the tenant (503).
   */
  async #renewSession(slot: Slot, tenantId: string, reason: string, send: (done: (error: unknown) => void) => void, sent?: () => void): Promise<void> {
    try {
      restoreCharset(slot);
      await this.#answered(tenantId, 'a session command', new Promise<void>((resolve, reject) => send((error) => (error ? reject(error) : resolve()))));
      sent?.();
      await this.#answered(tenantId, 'pool.afterCreate', this.#setUp(slot.conn));
      slot.autocommit = autocommitOn(slot.conn);
      slot.answered = false;
    } catch (error) {
      slot.broken = true;
      this.release(slot.conn);
      if (error instanceof TenantUnavailableError) throw error;
      throw new TenantUnavailableError(tenantId, { cause: error, reason });
    }
  }

  /** An acquire served by a connection with no current database. */
  #servedClean(): void {
    this.#counters.cleanHits++;
    if (++this.#windowClean < REFUSAL_WINDOW) return;
    this.#refusedShare = (this.#refusedShare + this.#windowRefused / this.#windowClean) / 2;
    this.#windowClean = 0;
    this.#windowRefused = 0;
  }

  /** Whether to take a switched connection back to no database (see RESTORE_BELOW). */
  #restoreWorthIt(): boolean {
    if (this.#restoresOff) return false;
    return this.#refusedShare < RESTORE_BELOW || ++this.#restoreChances % EXPLORE === 0;
  }

  /**
   * A connection given back inside a transaction (a raw `BEGIN` never committed; knex's own
   * transactions end before they give their connection back), or with `autocommit` turned off, would
   * run the next tenant's statements in a transaction nobody commits: it is closed instead, and the
   * server rolls back. A session set up with autocommit off (`afterCreate`) is left alone.
   */
  #leftInTransaction(slot: Slot, tenantId: string | undefined): void {
    slot.broken = true;
    this.#counters.openTransactionsClosed++;
    if (this.#warnedOpenTransaction) return;
    this.#warnedOpenTransaction = true;
    process.emitWarning(
      `objection-tenancy: a connection of tenant "${tenantId ?? '?'}" came back to the shared pool inside a transaction ` +
        '(a raw BEGIN never committed, or autocommit turned off); it was closed, so the server rolled back. Use knex transactions.',
      'TenantOpenTransactionWarning',
    );
  }

  /** The server's `pool.afterCreate`, outside any tenant scope (it sets up a connection every tenant will use). */
  #setUp(conn: RawConnection): Promise<void> {
    const afterCreate = this.#options.afterCreate;
    if (afterCreate === undefined) return Promise.resolve();
    return new Promise((resolve, reject) => {
      runInScopeSync(undefined, () => afterCreate(conn, (error?: unknown) => (error ? reject(error) : resolve())));
    });
  }

  /** With inlineSwitch, defers the switch to the connection's next statement. */
  #inline(slot: Slot, db: string): boolean {
    if (!this.#options.inlineSwitch || inlineUse(db) === undefined) return false;
    slot.pending = db;
    return true;
  }

  async #create(tenantId: string, db: string): Promise<RawConnection> {
    // The tenant's share is taken before the connection exists, or concurrent acquires of one
    // tenant would all see room under its cap while their connections are being opened.
    const started = Date.now();
    this.#creating++;
    const permit = this.#cold(db);
    if (permit) this.#takePermit();
    this.#touch(db);
    this.#heldBy.set(tenantId, this.#held(tenantId) + 1);
    let slot: Slot | undefined;
    const attempt = this.#openRaw();
    try {
      const conn = await this.#answered(tenantId, 'a connection attempt', attempt);
      slot = {
        conn,
        charsetNumber: (conn as { config?: { charsetNumber?: number } }).config?.charsetNumber,
        db: undefined,
        pending: undefined,
        switched: permit,
        permitSince: Date.now(),
        answered: false,
        tenant: tenantId,
        broken: false,
        autocommit: false,
        clean: this.#clean,
        target: undefined,
        switching: undefined,
        idleSince: Date.now(),
      };
      // Before afterCreate, so that a USE there is seen (the connection is then not clean).
      trackSchemaChanges(slot);
      await this.#answered(tenantId, 'pool.afterCreate', this.#setUp(conn));
      slot.autocommit = autocommitOn(conn);
      if (slot.clean) await this.#verifyClean(slot, tenantId);
      if (this.#sizeFromServer) {
        this.#sizeFromServer = false;
        await this.#sizeFrom(conn, tenantId);
        // Acquires held back by the interim cap of one may go now.
        queueMicrotask(() => this.#pump());
      }
      slot.answered = false;
    } catch (error) {
      if (permit) this.#switching--;
      this.#unhold(tenantId);
      if (slot !== undefined) await this.#discardNew(slot.conn);
      else if (error instanceof TenantUnavailableError) this.#abandon(attempt);
      else this.#creating--;
      // The server is full (max_connections, or the user's max_user_connections): with connections
      // of its own to wait for, the pool opens none for SERVER_FULL_MS and the acquire waits for one
      // of them (up to acquireTimeoutMs), as when every connection is busy, rather than fail at once
      // and try again on the next acquire, hundreds of times a second.
      if (slot === undefined && serverFull(error) && this.#slots.size > 0 && !this.#closed) {
        this.#fullUntil = Date.now() + SERVER_FULL_MS;
        this.#counters.serverFull++;
        // When the window ends, waiters that a new connection would serve are looked at again.
        if (this.#fullTimer === undefined) this.#endFullWindowIn(SERVER_FULL_MS);
        this.#pump();
        // Within the acquire's time: the refused attempt counts (it was not counted as an acquire twice).
        return this.#acquire(tenantId, db, Math.max(0, this.#options.acquireTimeoutMs - (Date.now() - started)));
      }
      this.#pump();
      if (error instanceof TenantUnavailableError) throw error;
      const reason = slot === undefined ? 'no connection to its database server could be opened (refused, or its handshake timed out)' : 'setting up a new connection (pool.afterCreate) failed';
      throw new TenantUnavailableError(tenantId, { cause: error, reason });
    }
    this.#creating--;
    this.#counters.created++;
    const conn = slot.conn;
    if (this.#options.inlineSwitch) guardPendingSwitch(slot);
    this.#slots.set(conn, slot);
    this.#owner.set(conn, tenantId);
    if (slot.clean) {
      this.#servedClean();
      slot.target = db;
      return conn;
    }
    if (this.#inline(slot, db)) return conn;
    try {
      await this.#use(slot, db, tenantId);
    } catch (error) {
      this.release(conn);
      throw mapSwitchError(tenantId, error);
    }
    return conn;
  }

  /**
   * maxSwitched 'auto': the cap is COLD_PER_CPU times the server's cores, and the warm databases as
   * many as it keeps both open tables and table definitions (the smaller of `table_open_cache` and
   * `table_definition_cache`; one table per tenant query, at the least). Against `table_open_cache`
   * alone (2,000 by default, against 400), on 10,000 tenants (scale benchmark, stop 16, 6 rounds
   * each): uniform 0.58-0.61x of one database against 0.56-0.57x (a fifth of the acquires then
   * counted warm and went past the cap), Zipf within the runs' noise.
   * MariaDB tells its cores as `thread_pool_size` (default: the CPUs it sees), whether or not its
   * thread pool is on; MySQL Community has no such variable, and stays without a cap. A server
   * sized for its tenants (table caches of tens of thousands) counts them all warm: no cap applies.
   * A failed read leaves no cap until the next connection the pool opens reads it again; it never
   * fails the acquire. A read not answered within `acquireTimeoutMs` does (see #answered), and the
   * cap stays at one until a later connection reads the server. Until the first read, the cap is one.
   */
  async #sizeFrom(conn: RawConnection, tenantId: string): Promise<void> {
    const sql = "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('thread_pool_size', 'table_open_cache', 'table_definition_cache')";
    let rows: unknown;
    try {
      rows = await this.#answered(tenantId, 'SHOW GLOBAL VARIABLES', ask(conn, sql));
    } catch (error) {
      // No answer in time: the connection is closed (the acquire fails) and the next one reads again,
      // the interim cap staying in force meanwhile.
      this.#sizeFromServer = true;
      if (error instanceof TenantUnavailableError) throw error;
      rows = undefined;
    }
    const read = new Map<unknown, number>();
    if (Array.isArray(rows)) for (const row of rows as { Variable_name?: unknown; Value?: unknown }[]) read.set(row.Variable_name, Number(row.Value));
    const value = (name: string): number => {
      const n = read.get(name);
      return n !== undefined && Number.isInteger(n) && n > 0 ? n : NaN;
    };
    const cpus = value('thread_pool_size');
    const tables = Math.min(value('table_open_cache'), value('table_definition_cache'));
    this.#maxSwitched = Number.isNaN(cpus) ? Infinity : COLD_PER_CPU * cpus;
    if (!Number.isNaN(tables)) this.#warmDatabases = tables;
  }

  /**
   * qualifyTables: a new connection is trusted to have no current database only once the server
   * says so (`DATABASE()` is NULL): a connection config may name one where the library cannot see
   * it (`uri`, a server's `init_connect`, an `afterCreate` that changes user). One that has one ends
   * clean connections for the pool: unqualified SQL would otherwise run on that database.
   */
  async #verifyClean(slot: Slot, tenantId: string): Promise<void> {
    const rows = await this.#answered(tenantId, 'SELECT DATABASE()', ask(slot.conn, 'SELECT DATABASE() AS d'));
    const current = Array.isArray(rows) ? (rows[0] as { d?: unknown } | undefined)?.d : undefined;
    if (current != null) {
      this.#clean = false;
      slot.clean = false;
      slot.db = String(current);
    }
  }

  /**
   * What the pool itself waits for from the server before it hands a connection out (`afterCreate`,
   * its reads of a new connection, a `USE`, a session reset) gets `acquireTimeoutMs` like any wait
   * for a connection: a server that accepted the connection and then stopped answering fails the
   * acquire with a 503 rather than hold it forever. The connection is then closed by the caller; its
   * place under `max` is freed once its socket closes (when the server answers, or is gone).
   */
  #answered<T>(tenantId: string, what: string, work: Promise<T>): Promise<T> {
    const ms = this.#options.acquireTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new TenantUnavailableError(tenantId, { reason: `its database server did not answer ${what} within ${ms} ms` })), ms);
    });
    return Promise.race([work, late]).finally(() => clearTimeout(timer));
  }

  /**
   * A connection attempt given up on (no handshake within `acquireTimeoutMs`: a server that is
   * frozen, or cut off without a reset) keeps its place under `max` until it ends: its connection,
   * should it come, is closed at once.
   */
  #abandon(attempt: Promise<RawConnection>): void {
    void attempt.then(
      (conn) => this.#closeUnjoined(conn),
      () => this.#freeCreatingPlace(),
    );
  }

  /**
   * Closes a connection that failed its set-up. One whose statement still runs (no answer in time)
   * keeps its place under `max` until its socket closes, as `#destroy` does for a connection in use.
   */
  async #discardNew(conn: RawConnection): Promise<void> {
    if (stillRunning(conn)) {
      void this.#closeUnjoined(conn);
      return;
    }
    this.#creating--;
    await Promise.resolve(this.#client.destroyRawConnection(conn as never)).catch(() => undefined);
  }

  /** Closes a connection that never joined the pool; its place under `max` is freed once its socket is closed. */
  async #closeUnjoined(conn: RawConnection): Promise<void> {
    await Promise.resolve(this.#client.destroyRawConnection(conn as never)).catch(() => undefined);
    await socketClosed(conn);
    this.#freeCreatingPlace();
  }

  #freeCreatingPlace(): void {
    this.#creating--;
    this.#pump();
  }

  #use(slot: Slot, db: string, tenantId: string): Promise<void> {
    slot.clean = false;
    slot.target = undefined;
    const sql = `USE \`${db.replace(/`/g, '``')}\``;
    return this.#answered(tenantId, 'a USE', new Promise((resolve, reject) => {
      slot.conn.query(sql, (error) => {
        if (error) {
          // A database that could not be entered (dropped, never created) is not warm.
          this.#recent?.delete(db);
          return reject(error);
        }
        slot.db = db;
        // What was answered before (a statement refused on a clean connection) opened no table.
        slot.answered = false;
        resolve();
      });
    }));
  }

  /**
   * The first waiter that may take a connection (`eligible`, under its tenant's cap), preferring one
   * on database `db`. Past the queue's search depth, the first of those that came on a warm database
   * (one a connection may go to without a cold-switch permit).
   */
  #nextWaiter(db: string | undefined, eligible: (waiter: Waiter) => boolean): Waiter | undefined {
    return this.#waiters.take(db, (waiter) => this.#held(waiter.tenantId) < this.#options.perTenantMax && eligible(waiter));
  }

  #serve(waiter: Waiter, served: Promise<RawConnection>): void {
    clearTimeout(waiter.timer);
    served.then(waiter.resolve, waiter.reject);
  }

  /** Serves waiters from free connections or new ones while capacity allows. */
  /**
   * Ends the server-full window when it is over (a refusal during it extends it) and looks at the
   * waiters again. A timer may fire a millisecond before `Date.now()` reaches the window's end: the
   * window counted as still open then, and the waiters stayed until a connection was released (seen
   * on Node 24, about one run in eight).
   */
  #endFullWindowIn(ms: number): void {
    this.#fullTimer = setTimeout(() => {
      this.#fullTimer = undefined;
      if (this.#closed) return;
      const left = this.#fullUntil - Date.now();
      if (left > 1) return this.#endFullWindowIn(left);
      this.#fullUntil = 0;
      this.#pump();
    }, ms);
    this.#fullTimer.unref();
  }

  /** Room to open a connection: under `max`, and the server not found full lately (see SERVER_FULL_MS). */
  #canCreate(): boolean {
    return this.#slots.size + this.#creating < this.#options.max && (this.#fullUntil === 0 || this.#slots.size === 0 || Date.now() >= this.#fullUntil);
  }

  #pump(): void {
    while (this.#waiters.size > 0 && !this.#closed) {
      const canCreate = this.#canCreate();
      if (this.#freeCount === 0 && !canCreate) return;
      // A waiter for a cold database, with every cold-switch permit taken, is served only by a free
      // connection already on its database.
      const waiter = this.#nextWaiter(undefined, (w) => this.#free.has(w.db) || this.#maySwitchTo(w.db));
      if (waiter === undefined) return;
      const maySwitch = this.#maySwitchTo(waiter.db);
      const slot = this.#takeFree(waiter.db, maySwitch);
      if (slot === undefined && !(maySwitch && canCreate)) {
        // Its free connection was dead (dropped by takeFree): back to the head of the queue.
        this.#waiters.add(waiter, true, this.#recent?.has(waiter.db) ?? false);
        continue;
      }
      this.#serve(waiter, slot !== undefined ? this.#assign(slot, waiter.tenantId, waiter.db) : this.#create(waiter.tenantId, waiter.db));
    }
  }

  #reapIdle(): void {
    const cutoff = Date.now() - this.#options.idleTimeoutMs;
    for (const [db, list] of this.#free) {
      while (list.length > 0 && list[0]!.idleSince <= cutoff) {
        this.#freeCount--;
        void this.#destroy(list.shift()!);
      }
      if (list.length === 0) this.#free.delete(db);
    }
  }

  #destroy(slot: Slot): Promise<unknown> {
    this.#counters.destroyed++;
    const running = stillRunning(slot.conn);
    if (!running) this.#slots.delete(slot.conn);
    const closed = Promise.resolve(this.#client.destroyRawConnection(slot.conn as never)).catch(() => undefined);
    if (!running) return closed;
    // Its server connection lives until the statement it runs ends (the close waits behind it) and
    // the server closes the socket, so it keeps its place under `max` until then.
    return closed
      .then(() => socketClosed(slot.conn))
      .then(() => {
        this.#slots.delete(slot.conn);
        this.#pump();
      });
  }
}


/** How long a pool with connections opens no more after the server refused one as full. */
const SERVER_FULL_MS = 1_000;

/**
 * The server refused a connection as full: ER_CON_COUNT_ERROR (1040, max_connections),
 * ER_TOO_MANY_USER_CONNECTIONS (1203, the global max_user_connections), ER_USER_LIMIT_REACHED (1226,
 * an account's MAX_USER_CONNECTIONS).
 */
function serverFull(error: unknown): boolean {
  const { errno, code, cause } = (error ?? {}) as { errno?: unknown; code?: unknown; cause?: unknown };
  if (errno === 1040 || errno === 1203 || errno === 1226 || code === 'ER_CON_COUNT_ERROR' || code === 'ER_TOO_MANY_USER_CONNECTIONS' || code === 'ER_USER_LIMIT_REACHED') return true;
  return error instanceof TenantUnavailableError && cause !== undefined && serverFull(cause);
}

function mapSwitchError(tenantId: string, error: unknown): Error {
  if (error instanceof TenantError) return error;
  // The tenant's database does not exist (never created, or dropped), or its name cannot be one.
  if (isNoSuchDatabase(error)) return new UnknownTenantError(tenantId, { cause: error });
  const code = (error as { code?: unknown }).code;
  return new TenantUnavailableError(tenantId, { cause: error, reason: typeof code === 'string' ? code : 'switching its database failed' });
}

/**
 * Whether a failed command was refused by the server itself (an error with an SQLSTATE: access
 * denied is 28000), not lost on the way: a connection exception (class 08: a shutdown) or an
 * interruption (class 70: the connection was killed) is a loss, and so is any error of the driver's
 * own (a closed socket has no SQLSTATE).
 */
function refusedChange(error: unknown): boolean {
  const sqlState = error == null ? undefined : (error as { sqlState?: unknown }).sqlState;
  return typeof sqlState === 'string' && !sqlState.startsWith('08') && !sqlState.startsWith('70');
}
