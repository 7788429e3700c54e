/**
 * The acquires waiting for a connection of one server's shared pool, in arrival order, built so that
 * finding the next one to serve costs the same under overload as at rest.
 *
 * - A tenant has at most `perTenant` (its connection cap) acquires in the queue; the rest wait parked,
 *   in order, and one enters at the back of the queue each time one of its own leaves it. A tenant at
 *   its cap is then skipped in a handful of steps, not once per acquire it has waiting (a batch job's
 *   64,000 queries made every release walk past all of them: 58% of the process's CPU with a
 *   stand-in driver).
 * - A search looks `depth` waiters deep at most. Past that, it looks at the first of the waiters
 *   whose database was warm when they came (a line of their own): cold tenants stalled at the front
 *   do not hold back warm ones behind them, and that costs a few looks, not one per cold waiter.
 * Each entry is a ticket; taking or cancelling a waiter kills its ticket where it lies (no search),
 * and dead tickets are skipped and compacted away later.
 */

/** What the queue needs of a waiting acquire; `place` and `ticket` are the queue's own. */
export interface QueuedAcquire {
  readonly tenantId: string;
  readonly db: string;
  /** Where the queue holds it: 'queued' (searchable), 'parked' (behind its tenant's cap) or 'out'. */
  place: 'queued' | 'parked' | 'out';
  ticket: unknown;
}

interface Ticket<W> {
  readonly waiter: W;
  /** Arrival order (kept when a waiter is put back, or enters from the parked ones). */
  readonly seq: number;
  /** Its database was warm when it came (see `add`). */
  readonly warm: boolean;
  live: boolean;
  /** Times a waiter behind it on a released connection's database was taken first (see MAX_PASSES). */
  passed: number;
}

/** How many of the first warm waiters a search past `depth` looks at (one gone cold meanwhile is skipped). */
const WARM_LOOKS = 8;

/**
 * How many times the first waiter that may take a connection can be passed over for one on the
 * released connection's database: then it is served. Without a bound, two busy tenants each at its
 * cap and together holding every connection got each released connection back for their own next
 * query, and the other tenants' queries waited until they timed out.
 */
const MAX_PASSES = 2;

const DEAD: Ticket<never> = { waiter: undefined as never, seq: -1, warm: false, live: false, passed: 0 };

/** A FIFO of tickets read from a moving head (Array.shift() copies a long array). */
class Line<W> {
  items: Ticket<W>[] = [];
  head = 0;

  /**
   * The first live ticket that `accept` takes among the first `looks` live ones, without taking it
   * out; dead ones at the front are dropped.
   */
  peek(accept: (ticket: Ticket<W>) => boolean, looks = Infinity): Ticket<W> | undefined {
    this.skipDead();
    let dead = 0;
    let found: Ticket<W> | undefined;
    let i = this.head;
    for (; i < this.items.length && looks > 0; i++) {
      const ticket = this.items[i]!;
      if (!ticket.live) {
        dead++;
        continue;
      }
      if (accept(ticket)) {
        found = ticket;
        break;
      }
      looks--;
    }
    // Dead tickets behind live ones that stay at the front are walked once, not on every look.
    if (dead > 32) this.closeUp(i);
    return found;
  }

  /** Adds a ticket at the back, or at the front. */
  push(ticket: Ticket<W>, front: boolean): void {
    if (!front) this.items.push(ticket);
    else if (this.head > 0) this.items[--this.head] = ticket;
    else this.items.unshift(ticket);
  }

  /**
   * Takes the first live ticket out (it is then dead), or undefined; `empty` tells whether a live
   * one is left. The dead front is dropped from the array once it is most of it.
   */
  shift(): Ticket<W> | undefined {
    this.skipDead();
    const ticket = this.items[this.head];
    if (ticket !== undefined) {
      ticket.live = false;
      this.head++;
    }
    this.skipDead();
    if (this.head > 1024 && this.head > this.items.length >> 1) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return ticket;
  }

  /** Whether no live ticket is left at or after the head (call after `skipDead` or `shift`). */
  get empty(): boolean {
    return this.head === this.items.length;
  }

  /** Moves the head past the dead tickets at the front. */
  skipDead(): void {
    while (this.head < this.items.length && !this.items[this.head]!.live) this.head++;
  }

  /** Moves the live tickets before index `end` up against it, dropping the dead ones among them. */
  closeUp(end: number): void {
    let write = end;
    for (let read = end - 1; read >= this.head; read--) {
      const ticket = this.items[read]!;
      if (ticket.live) this.items[--write] = ticket;
    }
    // What is left before the new head is never read again; it holds no waiter.
    for (let i = this.head; i < write; i++) this.items[i] = DEAD as Ticket<W>;
    this.head = write;
  }

  /** Drops dead tickets once they are most of the line (amortized O(1) per ticket). */
  compact(live: number): void {
    if (this.items.length - live > 64 && this.items.length - live > live) {
      this.items = this.items.slice(this.head).filter((ticket) => ticket.live);
      this.head = 0;
    }
  }
}

export class WaitQueue<W extends QueuedAcquire> {
  readonly #perTenant: number;
  readonly #depth: number;
  readonly #lookahead: number;
  /** Searchable waiters' tickets, in order from the head. */
  readonly #items = new Line<W>();
  #queuedCount = 0;
  /** Searchable waiters of each tenant. */
  readonly #queued = new Map<string, number>();
  /** Searchable waiters on each database. */
  readonly #onDb = new Map<string, number>();
  /** Each tenant's waiters beyond `perTenant`, in order. */
  readonly #parked = new Map<string, Line<W>>();
  /** Searchable waiters whose database was warm when they came, in order (for searches past `depth`). */
  readonly #warm = new Line<W>();
  #warmCount = 0;
  #size = 0;
  #seq = 0;

  /**
   * @param perTenant searchable waiters per tenant (the pool's per-tenant connection cap)
   * @param depth how many waiters a search looks at in order, at most
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

  /**
   * Adds a waiter at the back (`front`: at the front, as one that was taken and could not be served).
   * `warm`: its database is one a connection may switch to without waiting for a permit (the pool's
   * recent databases), so that a search past `depth` finds it.
   */
  add(waiter: W, front = false, warm = false): void {
    this.#size++;
    const seq = front && waiter.ticket !== undefined ? (waiter.ticket as Ticket<W>).seq : this.#seq++;
    if ((this.#queued.get(waiter.tenantId) ?? 0) >= this.#perTenant) {
      waiter.place = 'parked';
      const ticket: Ticket<W> = { waiter, seq, warm, live: true, passed: 0 };
      waiter.ticket = ticket;
      let parked = this.#parked.get(waiter.tenantId);
      if (parked === undefined) this.#parked.set(waiter.tenantId, (parked = new Line()));
      parked.push(ticket, front);
      return;
    }
    this.#enter(waiter, seq, front, warm);
  }

  /** Takes a waiter out without serving it (it timed out). No-op when it is already out. */
  cancel(waiter: W): void {
    if (waiter.place === 'out') return;
    this.#size--;
    const ticket = waiter.ticket as Ticket<W>;
    ticket.live = false;
    if (waiter.place === 'parked') {
      waiter.place = 'out';
      return;
    }
    this.#leave(ticket);
  }

  /**
   * The first waiter that `eligible` lets take a connection, taken out of the queue: within the first
   * `lookahead` waiters, one on database `prefer` if there is one; else the first eligible one within
   * `depth`; past `depth`, the first eligible one among the first that came warm. Undefined when
   * none is.
   */
  take(prefer: string | undefined, eligible: (waiter: W) => boolean): W | undefined {
    const preferring = prefer !== undefined && this.#onDb.has(prefer);
    const line = this.#items;
    const { items } = line;
    line.skipDead();
    let found: Ticket<W> | undefined;
    let seen = 0;
    let dead = 0;
    let i = line.head;
    for (; i < items.length; i++) {
      const ticket = items[i]!;
      if (!ticket.live) {
        dead++;
        continue;
      }
      if (seen >= this.#lookahead && found !== undefined) break;
      if (seen >= this.#depth) break;
      const position = seen++;
      if (!eligible(ticket.waiter)) continue;
      if (ticket.waiter.db === prefer || !preferring || position >= this.#lookahead) {
        // On the released connection's database, ahead of the first that may go: taken, unless that
        // one has been passed over MAX_PASSES times already.
        if (found !== undefined && found !== ticket && ticket.waiter.db === prefer && position < this.#lookahead) {
          if (found.passed < MAX_PASSES) {
            found.passed++;
            found = ticket;
          }
        } else {
          found = ticket;
        }
        break;
      }
      found ??= ticket;
    }
    if (found === undefined && i < items.length) found = this.#firstWarm(eligible);
    // Tickets taken behind waiters that stay at the front: the live ones it walked past close up
    // behind them, so that no later search walks the same dead ones again.
    if (dead > this.#lookahead) line.closeUp(i);
    if (found === undefined) return undefined;
    found.live = false;
    this.#size--;
    this.#leave(found);
    return found.waiter;
  }

  /** Every waiting acquire, parked ones included, in no particular order; the queue is left empty. */
  drain(): W[] {
    const all: W[] = [];
    for (const line of [this.#items, ...this.#parked.values()]) {
      for (let i = line.head; i < line.items.length; i++) if (line.items[i]!.live) all.push(line.items[i]!.waiter);
    }
    for (const waiter of all) {
      (waiter.ticket as Ticket<W>).live = false;
      waiter.place = 'out';
    }
    for (const line of [this.#items, this.#warm]) {
      line.items = [];
      line.head = 0;
    }
    this.#queuedCount = 0;
    this.#warmCount = 0;
    this.#queued.clear();
    this.#onDb.clear();
    this.#parked.clear();
    this.#size = 0;
    return all;
  }

  /** The first eligible one among the first searchable waiters that came warm. */
  #firstWarm(eligible: (waiter: W) => boolean): Ticket<W> | undefined {
    return this.#warm.peek((t) => eligible(t.waiter), WARM_LOOKS);
  }

  #enter(waiter: W, seq: number, front: boolean, warm: boolean): void {
    waiter.place = 'queued';
    const ticket: Ticket<W> = { waiter, seq, warm, live: true, passed: 0 };
    waiter.ticket = ticket;
    this.#items.push(ticket, front);
    if (warm) {
      this.#warmCount++;
      this.#warm.push(ticket, front);
      this.#warm.compact(this.#warmCount);
    }
    this.#queuedCount++;
    this.#queued.set(waiter.tenantId, (this.#queued.get(waiter.tenantId) ?? 0) + 1);
    this.#onDb.set(waiter.db, (this.#onDb.get(waiter.db) ?? 0) + 1);
  }

  /** A searchable waiter left (its ticket dead): counts down, and its tenant's next parked waiter enters at the back. */
  #leave(ticket: Ticket<W>): void {
    const { waiter } = ticket;
    waiter.place = 'out';
    this.#queuedCount--;
    this.#items.compact(this.#queuedCount);
    if (ticket.warm) this.#warmCount--;
    const queued = this.#queued.get(waiter.tenantId)! - 1;
    if (queued === 0) this.#queued.delete(waiter.tenantId);
    else this.#queued.set(waiter.tenantId, queued);
    const onDb = this.#onDb.get(waiter.db)! - 1;
    if (onDb === 0) this.#onDb.delete(waiter.db);
    else this.#onDb.set(waiter.db, onDb);
    const parked = this.#parked.get(waiter.tenantId);
    if (parked === undefined) return;
    const next = parked.shift();
    if (parked.empty) this.#parked.delete(waiter.tenantId);
    if (next !== undefined) this.#enter(next.waiter, next.seq, false, next.warm);
  }
}
