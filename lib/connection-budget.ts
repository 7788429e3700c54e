import type { Knex } from 'knex';
import { TenantUnavailableError } from './errors';

/** Options of the connection budget of the pool-per-tenant strategy. */
export interface ConnectionBudgetOptions {
  /** Total connections all tenant pools may hold at once. */
  max: number;
  /** 'wait' queues a new connection until one is freed (up to `acquireTimeoutMs`); 'reject' fails at once. */
  overflow: 'wait' | 'reject';
  acquireTimeoutMs: number;
  /**
   * Asked to close an idle pool to make room; returns false when no pool can be closed. `freeNow`:
   * only a pool that frees a unit at once (one whose connections are all free), for 'reject'.
   */
  reclaim(freeNow: boolean): boolean;
}

interface Waiter {
  /** The tenant pool's client whose connection waits for a unit. */
  readonly owner: object;
  readonly tenantId: string;
  /** Whether that pool still has an acquire waiting (tarn's pending acquires), which this connection may serve. */
  needed(): boolean;
  resolve(): void;
  reject(error: unknown): void;
  timer: NodeJS.Timeout;
}

/**
 * A global cap on the connections of all tenant pools together. Each tenant pool's client takes a
 * unit before it opens a connection and gives it back when the connection closes; when the budget is
 * spent, the least recently used idle pool is closed to make room, then the opener waits or fails
 * with a 503-mapped `TenantUnavailableError`.
 */
export class ConnectionBudget {
  readonly #options: ConnectionBudgetOptions;
  readonly #waiters: Waiter[] = [];
  #used = 0;
  #peak = 0;
  #timeouts = 0;
  #unneeded = 0;

  constructor(options: ConnectionBudgetOptions) {
    this.#options = options;
  }

  /** Wraps a tenant knex's client so that every connection it opens is counted against the budget. */
  attach(knex: Knex, tenantId: string): void {
    const client = knex.client as Knex.Client & Record<string, (...args: never[]) => Promise<unknown>>;
    const acquireRaw = client.acquireRawConnection!.bind(client);
    const destroyRaw = client.destroyRawConnection!.bind(client);
    const destroy = client.destroy.bind(client) as (...args: unknown[]) => Promise<void>;
    const needed = () => ((client as unknown as { pool?: { numPendingAcquires(): number } }).pool?.numPendingAcquires() ?? 1) > 0;
    /** Opens a connection once `take` got it a unit, which goes back if the opening fails. */
    const open = async (take: () => Promise<void> | void): Promise<unknown> => {
      await take();
      try {
        return await acquireRaw();
      } catch (error) {
        this.give();
        throw error;
      }
    };
    client.acquireRawConnection = () => open(() => this.take(tenantId, client, needed));
    client.destroyRawConnection = async (connection: never) => {
      try {
        return await destroyRaw(connection);
      } finally {
        // mysql2 calls back once QUIT is written; the server still holds the connection until it
        // closes the socket. The unit is free only then, or the server would briefly see more.
        await socketClosed(connection);
        this.give();
      }
    };
    // knex's cancel (`.timeout(ms, { cancel: true })`) opens a connection for its `KILL QUERY`: it
    // takes a unit only if one is free now. Waiting would wait on the unit of the very query it
    // cancels; failing leaves that query's connection to close once its statement ends.
    const cancel = (client as unknown as { cancelQuery?(connectionToKill: unknown): Promise<unknown> }).cancelQuery;
    if (typeof cancel === 'function') {
      (client as unknown as { cancelQuery(connectionToKill: unknown): Promise<unknown> }).cancelQuery = (connectionToKill) => {
        const killer = Object.create(client) as typeof client;
        killer.acquireRawConnection = () =>
          open(() => {
            if (this.#used >= this.#options.max) throw this.#exhausted(tenantId);
            this.#count();
          });
        return cancel.call(killer, connectionToKill);
      };
    }
    // Closing a pool (the budget reclaiming it, say) waits for the connections it is opening: one
    // waiting here for a unit would wait for the unit that only this close gives back.
    client.destroy = (...args: unknown[]) => {
      this.#cancel(client, tenantId);
      return destroy(...args);
    };
  }

  /**
   * A unit for a connection `owner` opens, at once or after a wait. `needed` tells whether the
   * opening is still needed when a unit frees up (see give).
   */
  async take(tenantId: string, owner: object, needed: () => boolean = () => true): Promise<void> {
    if (this.#used < this.#options.max) {
      this.#count();
      return;
    }
    // 'reject' waits only for a unit that a closing pool frees at once, not for one held by work in
    // flight (a transaction that outlived its scope): that could take the whole acquire timeout.
    const rejects = this.#options.overflow === 'reject';
    const reclaiming = this.#options.reclaim(rejects);
    if (!reclaiming && rejects) throw this.#exhausted(tenantId);
    await new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        owner,
        tenantId,
        needed,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
          this.#timeouts++;
          reject(this.#exhausted(tenantId));
        }, this.#options.acquireTimeoutMs),
      };
      this.#waiters.push(waiter);
    });
  }

  /**
   * Gives a unit back: straight to the first waiter whose pool still needs its connection. tarn
   * starts up to `pool.max` openings for one tenant's burst, and that tenant's own connections,
   * released, may serve the burst before the openings get units. An opening whose pool has no
   * acquire left is given up rather than open a connection nobody waits for ahead of another
   * tenant's (and an app's `acquireConnectionTimeout` that gave up first leaves no opening behind).
   * tarn drops a failed create when no acquire waits, and opens another for the next acquire.
   */
  give(): void {
    let waiter: Waiter | undefined;
    while ((waiter = this.#waiters.shift()) !== undefined) {
      clearTimeout(waiter.timer);
      if (waiter.needed()) {
        waiter.resolve(); // the unit passes straight to the waiter
        return;
      }
      this.#unneeded++;
      waiter.reject(new TenantUnavailableError(waiter.tenantId, { reason: 'a connection opening was given up: its pool no longer needed it' }));
    }
    this.#used--;
  }

  stats(): { max: number; used: number; peak: number; waiting: number; timeouts: number; unneeded: number } {
    return {
      max: this.#options.max,
      used: this.#used,
      peak: this.#peak,
      waiting: this.#waiters.length,
      timeouts: this.#timeouts,
      unneeded: this.#unneeded,
    };
  }

  /** Fails the waits of `owner`'s connections: their pool is closing. */
  #cancel(owner: object, tenantId: string): void {
    for (let i = this.#waiters.length - 1; i >= 0; i--) {
      const waiter = this.#waiters[i]!;
      if (waiter.owner !== owner) continue;
      this.#waiters.splice(i, 1);
      clearTimeout(waiter.timer);
      waiter.reject(new TenantUnavailableError(tenantId, { reason: 'its pool was closed while a connection waited for the connection budget' }));
    }
  }

  #count(): void {
    this.#used++;
    if (this.#used > this.#peak) this.#peak = this.#used;
  }

  #exhausted(tenantId: string): TenantUnavailableError {
    return new TenantUnavailableError(tenantId, { reason: `the connection budget of ${this.#options.max} is spent` });
  }
}

/** Resolves when a driver connection's socket has closed (at most `timeoutMs` later). */
export function socketClosed(connection: unknown, timeoutMs = 2_000): Promise<void> {
  const stream = (connection as { stream?: { destroyed?: boolean; once?(event: string, fn: () => void): unknown } } | null)?.stream;
  if (stream?.once === undefined || stream.destroyed === true) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    stream.once!('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
