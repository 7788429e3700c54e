/**
 * The acquires waiting for a connection of one server's shared pool, in arrival order, built so that
 * finding the next one to serve costs the same under overload as at rest.
 *
 * Two bounds make that so:
 * - A tenant has at most `perTenant` (its connection cap) acquires in the queue; the rest wait parked,
 *   in order, and one enters at the back of the queue each time one of its own leaves it. A tenant at
 *   its cap is then skipped in a handful of steps, not once per acquire it has waiting (a batch job's
 *   64,000 queries made every release walk past all of them: 58% of the process's CPU with a
 *   stand-in driver).
 * - A search looks `depth` waiters deep at most. Past that, a waiter that could take the connection
 *   waits for the ones ahead of it to move (they can once a cold-switch permit comes back).
 * A waiter taken or cancelled (timed out) leaves a hole, skipped and compacted later: a cancel
 * never searches the queue.
 */

/** What the queue needs of a waiting acquire; `place` is the queue's own. */
export interface QueuedAcquire {
  readonly tenantId: string;
  readonly db: string;
  /** Where the queue holds it: 'queued' (searchable), 'parked' (behind its tenant's cap) or 'out'. */
  place: 'queued' | 'parked' | 'out';
}

export class WaitQueue<W extends QueuedAcquire> {
  readonly #perTenant: number;
  readonly #depth: number;
  readonly #lookahead: number;
  /**
   * Searchable waiters from #head on. Holes: `undefined` where one was taken, the waiter itself
   * (`place` 'out') where one was cancelled; a cancelled waiter is never added again.
   */
  #items: (W | undefined)[] = [];
  #head = 0;
  #holes = 0;
  /** Waiters of each tenant among #items. */
  readonly #queued = new Map<string, number>();
  /** Waiters on each database among #items. */
  readonly #onDb = new Map<string, number>();
  /** Each tenant's waiters beyond `perTenant`, in order from `head` (cancelled ones are dropped when reached). */
  readonly #parked = new Map<string, { items: W[]; head: number }>();
  #size = 0;

  /**
   * @param perTenant searchable waiters per tenant (the pool's per-tenant connection cap)
   * @param depth how many waiters a search looks at, at most
   * @param lookahead how deep a search prefers a waiter on the released connection's database
   */
  constructor(perTenant: number, depth: number, lookahead: number) {
    this.#perTenant = Math.max(1, perTenant);
    this.#depth = Math.max(depth, lookahead);
    this.#lookahead = lookahead;
  }

  /** Waiting acquires, parked ones included. */
  get size(): number {
    return this.#size;
  }

  /** Whether a searchable waiter is on database `db`. */
  waitsOn(db: string): boolean {
    return this.#onDb.has(db);
  }

  /** Adds a waiter at the back (`front`: at the front, as one that was taken and could not be served). */
  add(waiter: W, front = false): void {
    this.#size++;
    if ((this.#queued.get(waiter.tenantId) ?? 0) >= this.#perTenant) {
      waiter.place = 'parked';
      const parked = this.#parked.get(waiter.tenantId);
      if (parked === undefined) this.#parked.set(waiter.tenantId, { items: [waiter], head: 0 });
      else if (!front) parked.items.push(waiter);
      else if (parked.head > 0) parked.items[--parked.head] = waiter;
      else parked.items.unshift(waiter);
      return;
    }
    this.#enter(waiter, front);
  }

  /** Takes a waiter out without serving it (it timed out). No-op when it is already out. */
  cancel(waiter: W): void {
    if (waiter.place === 'out') return;
    this.#size--;
    if (waiter.place === 'parked') {
      waiter.place = 'out';
      return;
    }
    // Left where it is, as a hole (its place says so): no search for it.
    this.#holes++;
    this.#leave(waiter);
    this.#compact();
  }

  /**
   * The first waiter that `eligible` lets take a connection, taken out of the queue: within the first
   * `lookahead` waiters, one on database `prefer` if there is one; else the first eligible one
   * within `depth`. Undefined when none is.
   */
  take(prefer: string | undefined, eligible: (waiter: W) => boolean): W | undefined {
    const preferring = prefer !== undefined && this.#onDb.has(prefer);
    const items = this.#items;
    let first = -1;
    let seen = 0;
    for (let i = this.#head; i < items.length; i++) {
      const waiter = items[i];
      if (waiter === undefined || waiter.place !== 'queued') continue;
      if (seen >= this.#lookahead && first >= 0) break;
      if (seen >= this.#depth) break;
      const position = seen++;
      if (!eligible(waiter)) continue;
      if (waiter.db === prefer || !preferring || position >= this.#lookahead) {
        first = i;
        break;
      }
      if (first < 0) first = i;
    }
    if (first < 0) return undefined;
    const waiter = items[first]!;
    items[first] = undefined;
    this.#holes++;
    this.#size--;
    this.#leave(waiter);
    this.#compact();
    return waiter;
  }

  /** Every waiting acquire, parked ones included, in no particular order; the queue is left empty. */
  drain(): W[] {
    const all: W[] = [];
    for (let i = this.#head; i < this.#items.length; i++) {
      const waiter = this.#items[i];
      if (waiter !== undefined && waiter.place === 'queued') all.push(waiter);
    }
    for (const { items, head } of this.#parked.values()) {
      for (let i = head; i < items.length; i++) if (items[i]!.place === 'parked') all.push(items[i]!);
    }
    for (const waiter of all) waiter.place = 'out';
    this.#items = [];
    this.#head = 0;
    this.#holes = 0;
    this.#queued.clear();
    this.#onDb.clear();
    this.#parked.clear();
    this.#size = 0;
    return all;
  }

  #enter(waiter: W, front: boolean): void {
    waiter.place = 'queued';
    if (!front) this.#items.push(waiter);
    else if (this.#head > 0) this.#items[--this.#head] = waiter;
    else this.#items.unshift(waiter);
    this.#queued.set(waiter.tenantId, (this.#queued.get(waiter.tenantId) ?? 0) + 1);
    this.#onDb.set(waiter.db, (this.#onDb.get(waiter.db) ?? 0) + 1);
  }

  /** A searchable waiter left: counts down, and its tenant's next parked waiter enters at the back. */
  #leave(waiter: W): void {
    waiter.place = 'out';
    const queued = this.#queued.get(waiter.tenantId)! - 1;
    if (queued === 0) this.#queued.delete(waiter.tenantId);
    else this.#queued.set(waiter.tenantId, queued);
    const onDb = this.#onDb.get(waiter.db)! - 1;
    if (onDb === 0) this.#onDb.delete(waiter.db);
    else this.#onDb.set(waiter.db, onDb);
    const parked = this.#parked.get(waiter.tenantId);
    if (parked === undefined) return;
    // Array.shift() copies a long array: a flood's parked list is read from a moving head instead.
    const { items } = parked;
    let next: W | undefined;
    while (parked.head < items.length && next === undefined) {
      const candidate = items[parked.head++]!;
      if (candidate.place === 'parked') next = candidate;
    }
    if (parked.head === items.length) this.#parked.delete(waiter.tenantId);
    else if (parked.head > 1024 && parked.head > items.length >> 1) {
      items.splice(0, parked.head);
      parked.head = 0;
    }
    if (next !== undefined) this.#enter(next, false);
  }

  /** Drops the holes at the front; rebuilds the array once holes are most of it. */
  #compact(): void {
    const items = this.#items;
    while (this.#head < items.length && items[this.#head]?.place !== 'queued') {
      this.#head++;
      this.#holes--;
    }
    if (this.#head === items.length) {
      this.#items = [];
      this.#head = 0;
      this.#holes = 0;
    } else if (this.#holes + this.#head > 64 && this.#holes + this.#head > (items.length >> 1)) {
      this.#items = items.filter((waiter, i) => i >= this.#head && waiter?.place === 'queued');
      this.#head = 0;
      this.#holes = 0;
    }
  }
}
