/**
 * A cache in front of the app's `tenantExists` catalog lookup. Positive answers live for a TTL, at
 * most POSITIVE_MAX of them, expired ones swept as new ones come; negative answers live in a bounded
 * LRU. So a flood of random (valid-looking) ids, or of ids a case-insensitive catalog says yes to in
 * every spelling, can neither grow memory without bound nor hammer the catalog. Concurrent lookups
 * of one id share one catalog call.
 */

export interface CatalogCacheOptions {
  /** How long a "tenant exists" answer is trusted. */
  ttlMs: number;
  /** How long a "no such tenant" answer is trusted. */
  negativeTtlMs: number;
  /** At most this many negative answers are kept (least recently used dropped first). */
  negativeMax: number;
}

/**
 * At most this many "exists" answers are kept (the oldest dropped first; a dropped one is asked
 * again): more than any app's tenants in one TTL, and a bound for a catalog that says yes to ids
 * without limit (each spelling of an id, with a case-insensitive one). About 100 B each.
 */
export const POSITIVE_MAX = 100_000;

export const CATALOG_DEFAULTS: Readonly<CatalogCacheOptions> = Object.freeze({
  ttlMs: 60_000,
  negativeTtlMs: 30_000,
  negativeMax: 10_000,
});

/** A catalog lookup in flight; `stale` once `forget()` ran meanwhile: its answer is neither cached nor used. */
interface Lookup {
  answer: Promise<boolean>;
  stale: boolean;
}

export class CatalogCache {
  readonly #lookup: (tenantId: string) => boolean | Promise<boolean>;
  readonly #options: CatalogCacheOptions;
  // Positive answers in the order they were given, which is the order they expire in (one TTL for
  // all): bounded by POSITIVE_MAX, expired ones swept from the front. Negative ones by negativeMax.
  readonly #positive = new Map<string, number>();
  readonly #negative = new Map<string, number>();
  readonly #pending = new Map<string, Lookup>();
  /** Catalog calls made, for stats and tests. */
  lookups = 0;

  constructor(lookup: (tenantId: string) => boolean | Promise<boolean>, options: CatalogCacheOptions) {
    this.#lookup = lookup;
    this.#options = options;
  }

  /**
   * Whether `tenantId` exists: a cached answer synchronously when there is one (the hot path costs
   * no promise), else a promise of the catalog's answer.
   */
  exists(tenantId: string): boolean | Promise<boolean> {
    const now = Date.now();
    const positiveUntil = this.#positive.get(tenantId);
    if (positiveUntil !== undefined) {
      if (positiveUntil > now) return true;
      this.#positive.delete(tenantId);
    }
    const negativeUntil = this.#negative.get(tenantId);
    if (negativeUntil !== undefined) {
      this.#negative.delete(tenantId);
      if (negativeUntil > now) {
        this.#negative.set(tenantId, negativeUntil); // re-inserted: most recently used
        return false;
      }
    }
    let pending = this.#pending.get(tenantId);
    if (pending === undefined) {
      const started = { stale: false } as Lookup;
      // .finally runs in a later microtask, so the entry is removed even if the lookup throws at once.
      started.answer = this.#ask(tenantId, started).finally(() => {
        if (this.#pending.get(tenantId) === started) this.#pending.delete(tenantId);
      });
      this.#pending.set(tenantId, (pending = started));
    }
    return pending.answer;
  }

  /**
   * Drops what is known about `tenantId`: the next request asks the catalog again. A lookup in flight
   * (begun before a create or a drop, say) is not cached when it ends, nor joined by later requests,
   * and the requests that awaited it ask the catalog again.
   */
  forget(tenantId: string): void {
    this.#positive.delete(tenantId);
    this.#negative.delete(tenantId);
    const pending = this.#pending.get(tenantId);
    if (pending !== undefined) {
      pending.stale = true;
      this.#pending.delete(tenantId);
    }
  }

  /**
   * Records that `tenantId` is unknown after all (the catalog said yes, but its database is missing:
   * a catalog that compares ids without case, say): later requests get the 404 from the cache for
   * `negativeTtlMs` instead of opening a pool each time.
   */
  refute(tenantId: string): void {
    this.#positive.delete(tenantId);
    this.#remember(tenantId, false);
  }

  stats(): { known: number; unknown: number; lookups: number } {
    this.#sweep(Date.now());
    return { known: this.#positive.size, unknown: this.#negative.size, lookups: this.lookups };
  }

  async #ask(tenantId: string, pending: { readonly stale: boolean }): Promise<boolean> {
    this.lookups++;
    const exists = (await this.#lookup(tenantId)) === true;
    // forget() ran meanwhile (a drop or a create): this answer may predate it, so ask again.
    if (pending.stale) return this.exists(tenantId);
    this.#remember(tenantId, exists);
    return exists;
  }

  #remember(tenantId: string, exists: boolean): void {
    if (exists) {
      const now = Date.now();
      this.#sweep(now);
      this.#positive.delete(tenantId);
      this.#positive.set(tenantId, now + this.#options.ttlMs);
      if (this.#positive.size > POSITIVE_MAX) this.#positive.delete(this.#positive.keys().next().value as string);
      return;
    }
    this.#negative.delete(tenantId);
    this.#negative.set(tenantId, Date.now() + this.#options.negativeTtlMs);
    if (this.#negative.size > this.#options.negativeMax) {
      // Map keeps insertion order: the first key is the least recently used answer.
      this.#negative.delete(this.#negative.keys().next().value as string);
    }
  }

  /** Drops the expired "exists" answers at the front (the oldest): amortized one per answer given. */
  #sweep(now: number): void {
    for (const [tenantId, until] of this.#positive) {
      if (until > now) return;
      this.#positive.delete(tenantId);
    }
  }
}
