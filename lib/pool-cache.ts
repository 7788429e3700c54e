import type { Knex } from 'knex';
import { TenancyDestroyedError } from './errors';
import { closeSocketNow } from './pooled-connection';

/**
 * A claim on a tenant's connection handle for the length of one scope (a request, a job). While any
 * lease is held the handle is never destroyed; an evicted pool is drained, then closed.
 */
export interface TenantLease {
  readonly knex: Knex;
  /** Gives the lease back. Idempotent. */
  release(): void;
}

/**
 * How a `Tenancy` gets a tenant's knex. The pool-per-tenant cache below is one strategy; a shared
 * pool per database server is another. Both hand out leases, so scopes never hold a raw pool.
 */
export interface TenantConnections {
  lease(tenantId: string): Promise<TenantLease>;
  /** A lease at once when the tenant's connection is cached and open, else `undefined`. */
  tryLease(tenantId: string): TenantLease | undefined;
  /**
   * Closes the tenant's handle once its leases are released; the next lease opens a new one.
   * `gone`: the tenant was dropped or moved (not only closed to save room): the shared strategy then
   * also closes the free connections left on its database.
   */
  evict(tenantId: string, options?: { gone?: boolean }): Promise<void>;
  stats(): PoolCacheStats;
  /** Closes every pool; what is still in use after `drainTimeoutMs` is closed under it. */
  destroy(drainTimeoutMs?: number): Promise<void>;
  /** The tenant's connections checked out right now. */
  checkedOut(tenantId: string): number;
  /** Closes the tenant's connections checked out right now (dropTenant, after its drain time). */
  closeCheckedOut(tenantId: string): void;
}

/** Counters of the pool cache, as returned inside `tenancy.stats()`. */
export interface PoolCacheStats {
  /** Open tenant pools: cached ones plus evicted ones still draining. */
  pools: number;
  /** Evicted pools still waiting for their last lease before they close. */
  draining: number;
  /** Leases held right now (scopes in flight). */
  leases: number;
  /** Pools created since start. */
  created: number;
  /** Pools evicted since start (LRU cap, idle timeout, or `evict()`). */
  evictions: number;
  /** Pool openings that failed (not cached). */
  failures: number;
}

/**
 * A cached pool closed by someone else than the cache: `knex.withUserParams()` makes a knex that
 * shares the tenant's pool, and its `destroy()` closes it. The tenant is opened again rather than
 * served a closed pool until the tenancy is destroyed.
 */
function closedElsewhere(entry: { knex?: Knex | undefined }): boolean {
  if (entry.knex === undefined) return false;
  const pool = (entry.knex.client as { pool?: { destroyed?: boolean } }).pool;
  return pool === undefined || pool.destroyed === true;
}

export interface PoolCacheOptions {
  /** Opens a tenant's knex; rejects to refuse the tenant. Called once per tenant at a time. */
  open(tenantId: string): Promise<Knex>;
  /** Cap on cached pools; the least recently used is evicted beyond it. */
  maxPools: number;
  /** A pool with no lease for this long is closed. 0 disables idle eviction. */
  idleTimeoutMs: number;
  /** Called when a pool's last lease is given back (the connection budget may reclaim it). */
  onIdle?(): void;
  /**
   * Whether a cached pool no longer reaches its tenant's database (an SQLite file replaced or
   * removed): then it is evicted and the tenant opened afresh. `undefined`: never asked again.
   */
  outdated?(knex: Knex): boolean | undefined;
  /** A cached pool is asked `outdated` on a lease at most this often. */
  recheckMs?: number;
}

interface Entry {
  readonly id: string;
  readonly ready: Promise<Knex>;
  /** Settles once the pool is destroyed after an eviction. */
  readonly closed: Promise<void>;
  markClosed(): void;
  knex: Knex | undefined;
  leases: number;
  lastUsed: number;
  /** When `outdated` is next asked (Infinity: never). */
  checkAt: number;
  evicted: boolean;
  /** Evicted by `evict()` (a move, a drop), not by the cache: a lease awaiting its opening opens afresh. */
  forgotten: boolean;
  /** Settle when the leases that opened afresh after `evict()` are given back. */
  followers: Promise<void>[];
  closing: boolean;
}

/**
 * One knex (and pool) per tenant, opened lazily and once: concurrent first requests share one opening,
 * a failed opening is not cached. Bounded by `maxPools` (LRU) and an idle timeout; an evicted pool
 * with leases in flight drains before it is destroyed.
 */
export class PoolCache implements TenantConnections {
  readonly #options: PoolCacheOptions;
  // A Map iterates in insertion order; re-inserting on use keeps the least recently used first.
  readonly #entries = new Map<string, Entry>();
  /** Evicted entries whose pool is not destroyed yet. */
  readonly #draining = new Set<Entry>();
  readonly #sweeper: NodeJS.Timeout | undefined;
  #destroyed = false;
  #counters = { created: 0, evictions: 0, failures: 0 };

  constructor(options: PoolCacheOptions) {
    this.#options = options;
    if (options.idleTimeoutMs > 0) {
      const every = Math.max(50, Math.min(options.idleTimeoutMs / 2, 30_000));
      this.#sweeper = setInterval(() => this.#sweepIdle(), every);
      this.#sweeper.unref();
    }
  }

  async lease(tenantId: string): Promise<TenantLease> {
    // Set once this lease opens afresh after an evict(): that evict() waits for it too (see below).
    let followed: (() => void) | undefined;
    for (;;) {
      if (this.#destroyed) throw new TenancyDestroyedError();
      let entry = this.#entries.get(tenantId);
      const now = Date.now();
      if (entry !== undefined && (closedElsewhere(entry) || this.#outdated(entry, now))) {
        void this.#evict(entry);
        entry = undefined;
      }
      if (entry === undefined) {
        entry = this.#create(tenantId);
      } else {
        this.#touch(entry);
      }
      entry.leases++;
      entry.lastUsed = now;
      let knex: Knex;
      try {
        knex = entry.knex ?? (await entry.ready);
      } catch (error) {
        this.#release(entry);
        followed?.();
        throw error;
      }
      if (!entry.forgotten) return this.#leaseOf(entry, knex, followed);
      // Evicted by evict()/forget() while it opened (a move, a drop): its knexConfig may name the
      // old location, so the tenant is opened afresh, as the shared strategy locates it again. The
      // evict() waits for this lease's scope as for one on the old pool (it came before it): a
      // dropTenant must not drop the database under it.
      if (followed === undefined) {
        entry.followers.push(new Promise<void>((resolve) => (followed = resolve)));
      }
      this.#release(entry);
    }
  }

  tryLease(tenantId: string): TenantLease | undefined {
    const entry = this.#entries.get(tenantId);
    if (entry === undefined || entry.knex === undefined || this.#destroyed || closedElsewhere(entry)) return undefined;
    const now = Date.now();
    // One comparison per lease; the check itself runs at most every recheckMs, for pools that need it.
    if (now >= entry.checkAt && this.#outdated(entry, now)) {
      void this.#evict(entry);
      return undefined;
    }
    this.#touch(entry);
    entry.leases++;
    entry.lastUsed = now;
    return this.#leaseOf(entry, entry.knex);
  }

  /** Whether a cached pool must be opened afresh (see `outdated`); asked at most every `recheckMs`. */
  #outdated(entry: Entry, now: number): boolean {
    if (entry.knex === undefined || now < entry.checkAt) return false;
    entry.checkAt = now + (this.#options.recheckMs ?? 0);
    return this.#options.outdated?.(entry.knex) === true;
  }

  /** Evicts `knex`'s pool when it is still the tenant's cached one (it no longer reaches its database). */
  retire(tenantId: string, knex: Knex): void {
    const entry = this.#entries.get(tenantId);
    if (entry !== undefined && entry.knex === knex) void this.#evict(entry);
  }

  #touch(entry: Entry): void {
    // Re-inserted: the Map's order is the LRU order.
    this.#entries.delete(entry.id);
    this.#entries.set(entry.id, entry);
  }

  #leaseOf(entry: Entry, knex: Knex, followed?: () => void): TenantLease {
    let released = false;
    return {
      knex,
      release: () => {
        if (released) return;
        released = true;
        this.#release(entry);
        followed?.();
      },
    };
  }

  /**
   * Evicts the tenant's cached pool and settles once every pool of the tenant is closed: the cached
   * one and any evicted earlier (by the LRU cap or the budget) that still drains its scopes in flight.
   * dropTenant and a move await it before they drop the database.
   */
  evict(tenantId: string, _options?: { gone?: boolean }): Promise<void> {
    const closing: Promise<void>[] = [];
    for (const entry of this.#draining) if (entry.id === tenantId) closing.push(entry.closed);
    const entry = this.#entries.get(tenantId);
    if (entry !== undefined) {
      entry.forgotten = true;
      // Then the leases that awaited its opening and opened afresh (see lease()).
      closing.push(this.#evict(entry).then(() => Promise.all(entry.followers)).then(() => undefined));
    }
    return closing.length === 0 ? Promise.resolve() : Promise.all(closing).then(() => undefined);
  }

  checkedOut(tenantId: string): number {
    let used = 0;
    for (const entry of this.#entriesOf(tenantId)) if (entry.knex !== undefined) used += checkedOutOf(entry.knex);
    return used;
  }

  closeCheckedOut(tenantId: string): void {
    for (const entry of this.#entriesOf(tenantId)) if (entry.knex !== undefined) closeCheckedOut(entry.knex);
  }

  /** The tenant's cached pool and its pools evicted earlier that still drain. */
  #entriesOf(tenantId: string): Entry[] {
    const entries = [...this.#draining].filter((entry) => entry.id === tenantId);
    const cached = this.#entries.get(tenantId);
    if (cached !== undefined) entries.push(cached);
    return entries;
  }

  stats(): PoolCacheStats {
    let leases = 0;
    let open = 0;
    for (const entry of this.#entries.values()) {
      leases += entry.leases;
      if (entry.knex !== undefined) open++;
    }
    for (const entry of this.#draining) leases += entry.leases;
    const draining = this.#draining.size;
    return { pools: open + draining, draining, leases, ...this.#counters };
  }

  /**
   * Closes every pool. Pools with leases in flight, or connections in use, get `drainTimeoutMs` to
   * finish, then are destroyed, their connections in use closed under them. New leases are refused
   * with `TenancyDestroyedError`.
   */
  async destroy(drainTimeoutMs = 10_000): Promise<void> {
    this.#destroyed = true;
    if (this.#sweeper !== undefined) clearInterval(this.#sweeper);
    const all = [...this.#entries.values()].map((entry) => this.#evict(entry));
    all.push(...[...this.#draining].map((entry) => entry.closed));
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), drainTimeoutMs);
    });
    const outcome = await Promise.race([Promise.all(all), timeout]);
    clearTimeout(timer);
    if (outcome === 'timeout') {
      for (const entry of this.#draining) {
        entry.leases = 0;
        this.#closeWhenDrained(entry);
        // knex.destroy() waits for every connection checked out of the pool: one a transaction left
        // open (or a statement that outlived its scope) holds would keep it waiting forever.
        if (entry.knex !== undefined) closeCheckedOut(entry.knex);
      }
      await Promise.all(all);
    }
  }

  #create(tenantId: string): Entry {
    let markClosed!: () => void;
    const closed = new Promise<void>((resolve) => {
      markClosed = resolve;
    });
    const entry: Entry = {
      id: tenantId,
      knex: undefined,
      leases: 0,
      lastUsed: Date.now(),
      checkAt: Infinity,
      evicted: false,
      forgotten: false,
      followers: [],
      closing: false,
      closed,
      markClosed,
      ready: this.#options.open(tenantId).then(
        (knex) => {
          this.#counters.created++;
          entry.knex = knex;
          if (this.#options.outdated?.(knex) !== undefined) entry.checkAt = Date.now() + (this.#options.recheckMs ?? 0);
          // Only an opened pool makes room: an opening that fails (an unknown tenant) evicts nothing.
          if (this.#entries.get(tenantId) === entry) this.#enforceCap(entry);
          return knex;
        },
        (error: unknown) => {
          this.#counters.failures++;
          // A failed opening is not cached: the next lease tries again.
          if (this.#entries.get(tenantId) === entry) this.#entries.delete(tenantId);
          throw error;
        },
      ),
    };
    // Leases awaiting a failed opening see the rejection; nothing else may raise an unhandled one.
    entry.ready.catch(() => {});
    this.#entries.set(tenantId, entry);
    return entry;
  }

  #release(entry: Entry): void {
    entry.leases--;
    entry.lastUsed = Date.now();
    if (entry.evicted) this.#closeWhenDrained(entry);
    else if (entry.leases === 0) this.#options.onIdle?.();
  }

  /**
   * Closes the least recently used idle pool whose connections are all free, else (unless `freeNow`)
   * the least recently used idle pool that holds connections; false when it closed none.
   */
  reclaimIdle(freeNow = false): boolean {
    // A pool whose connections are all free gives its units back as soon as it closes. One with a
    // connection in use with no lease (a transaction or stream that outlived its scope) or being
    // opened frees nothing until that ends (tarn's destroy() waits for it before it closes the free
    // ones): closed only for a caller that can wait (`freeNow` false), and only when no pool frees at once.
    let busy: Entry | undefined;
    for (const entry of this.#entries.values()) {
      if (entry.leases !== 0 || entry.knex === undefined) continue;
      const pool = poolOf(entry.knex);
      if (pool === undefined) continue;
      const held = pool.numUsed() + pool.numPendingCreates();
      if (held === 0 && pool.numFree() > 0) {
        void this.#evict(entry);
        return true;
      }
      if (busy === undefined && held + pool.numFree() > 0) busy = entry;
    }
    if (busy === undefined || freeNow) return false;
    void this.#evict(busy);
    return true;
  }

  #enforceCap(newest: Entry): void {
    while (this.#entries.size > this.#options.maxPools) {
      // The least recently used idle pool goes first; if every pool is busy, the LRU one drains.
      let victim: Entry | undefined;
      let firstBusy: Entry | undefined;
      for (const entry of this.#entries.values()) {
        if (entry === newest) continue;
        if (entry.leases === 0) {
          victim = entry;
          break;
        }
        firstBusy ??= entry;
      }
      victim ??= firstBusy;
      if (victim === undefined) return;
      void this.#evict(victim);
    }
  }

  #sweepIdle(): void {
    const cutoff = Date.now() - this.#options.idleTimeoutMs;
    for (const entry of this.#entries.values()) {
      if (entry.leases === 0 && entry.knex !== undefined && entry.lastUsed <= cutoff) void this.#evict(entry);
    }
  }

  #evict(entry: Entry): Promise<void> {
    if (this.#entries.get(entry.id) === entry) this.#entries.delete(entry.id);
    if (!entry.evicted) {
      entry.evicted = true;
      this.#counters.evictions++;
      this.#draining.add(entry);
    }
    this.#closeWhenDrained(entry);
    return entry.closed;
  }

  #closeWhenDrained(entry: Entry): void {
    if (entry.leases > 0 || entry.closing) return;
    entry.closing = true;
    void entry.ready
      .then(
        (knex) => knex.destroy(),
        () => undefined,
      )
      .catch(() => undefined)
      .finally(() => {
        entry.knex = undefined;
        this.#draining.delete(entry);
        entry.markClosed();
      });
  }
}

/**
 * Closes the connections still checked out of a knex's tarn pool and gives them back, so that the
 * pool's destroy(), waiting for them, goes on: their late release by knex is refused by tarn.
 */
function closeCheckedOut(knex: Knex): void {
  const pool = (knex.client as { pool?: { used?: { resource: unknown }[]; release(resource: unknown): boolean } }).pool;
  if (pool?.used === undefined) return;
  for (const { resource } of [...pool.used]) {
    closeSocketNow(resource);
    pool.release(resource);
  }
}

/** Connections checked out of a knex's tarn pool. */
function checkedOutOf(knex: Knex): number {
  const pool = (knex.client as { pool?: { numUsed(): number } }).pool;
  return pool === undefined ? 0 : pool.numUsed();
}

/** Connections a knex's tarn pool holds or is opening. */
function poolOf(knex: Knex): { numUsed(): number; numFree(): number; numPendingCreates(): number } | undefined {
  return (knex.client as { pool?: { numUsed(): number; numFree(): number; numPendingCreates(): number } }).pool;
}
