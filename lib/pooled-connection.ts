/**
 * A connection of a shared pool as the pool knows it: its `Slot` (the database its session is on,
 * a switch still to send, a cold-switch permit, the tenant that held it last), the hooks on its
 * statements that keep that record true to the server (a raw `USE` in application code, a batch
 * that failed half-way), and what the pool reads off its session (a transaction left open,
 * autocommit, a statement still running). The pool that hands such connections out is
 * affinity-pool.ts.
 */
import { TenantError } from './errors';
import { inlineUse, severalStatements, statementStart } from './inline-switch';

/** A raw driver connection (a mysql2 `Connection`), as knex's client hands it out. */
export type RawConnection = {
  query(sql: string, callback: (error: unknown, rows?: unknown) => void): unknown;
  /** COM_RESET_CONNECTION (mysql2). */
  reset?(callback: (error: unknown) => void): unknown;
  /** COM_CHANGE_USER (mysql2): with no options, the same user and the connection's configured database (none here). */
  changeUser?(options: Record<string, never>, callback: (error: unknown) => void): unknown;
  /** The server status flags of the last statement's answer (mysql2). */
  serverStatus?: number;
  __knexUid?: string;
  /** Set by knex on a connection whose statement timed out without being cancelled: never reuse it. */
  __knex__disposed?: unknown;
  /** mysql2: the command the connection is running, null when idle. */
  _command?: unknown;
};

/** knex's `pool.afterCreate`: set up a new connection's session, then call `done`. */
export type AfterCreate = (conn: unknown, done: (error?: unknown) => void) => void;

export interface Slot {
  readonly conn: RawConnection;
  /** The database the connection is on (`USE`), if any; undefined also when unknown. */
  db: string | undefined;
  /** inlineSwitch: the database its next statement must switch to (sent with it), if any. */
  pending: string | undefined;
  /** Holds one of `maxSwitched` (this acquire switched it, or opened it, to a cold database). */
  switched: boolean;
  /** When it took that permit (a permit lapses after a while: see `AffinityPool#lapsePermits`). */
  permitSince: number;
  /**
   * A statement of the tenant's that may open tables has been answered on it since it was handed
   * out (the pool's own statements, a `USE` or `afterCreate`'s, and `BEGIN`, `SAVEPOINT`, `SET`...
   * do not count): its tables are open. Tracked only while it holds a permit.
   */
  answered: boolean;
  /** The tenant that held the connection last (resetSession resets it when another takes it). */
  tenant: string | undefined;
  /**
   * Closed when released, never handed out again: its session could not be reset, or the pool can no
   * longer trust what it knows of it (see `tracked`).
   */
  broken: boolean;
  /** mysql2's character set for the session as the connection was opened (see `restoreCharset`). */
  readonly charsetNumber: number | undefined;
  /** Whether its session was in autocommit mode once set up (only then is an open transaction a leftover). */
  autocommit: boolean;
  /**
   * qualifyTables: the connection has never had a current database (opened without one, never
   * switched), so that a statement naming no database is refused by the server, not run elsewhere.
   */
  clean: boolean;
  /** qualifyTables: the database of the tenant a clean connection serves in this acquire. */
  target: string | undefined;
  /**
   * qualifyTables: the switch a refused statement started (`switchNow`), while its `USE` is in
   * flight. Statements of the same acquire (a transaction's, sent together) that the server refused
   * before it ran are sent again once it settles.
   */
  switching: Promise<void> | undefined;
  idleSince: number;
}

/**
 * inlineSwitch, defence in depth: while a switch is pending on the connection, a statement that does
 * not carry it (a path of knex's that bypassed the tenant handle's client) is refused rather than run
 * on the database the connection is still on.
 */
export function guardPendingSwitch(slot: Slot): void {
  const conn = slot.conn as RawConnection & { query(...args: unknown[]): unknown };
  const query = conn.query;
  // Fixed arity, `arguments` forwarded as they are: this runs on every statement (see trackSchemaChanges).
  conn.query = function (this: unknown, sql: unknown): unknown {
    const pending = slot.pending;
    if (pending !== undefined) {
      const text = typeof sql === 'string' ? sql : (sql as { sql?: unknown } | null)?.sql;
      if (typeof text !== 'string' || !text.startsWith(inlineUse(pending)!)) {
        const error = new TenantError('TENANT_SWITCH_PENDING', `A statement reached a connection still to be switched to database "${pending}" without the switch: refused.`, { statusCode: 500 });
        const callback: unknown = arguments[arguments.length - 1];
        if (typeof callback !== 'function') throw error;
        process.nextTick(callback as (error: unknown) => void, error);
        return undefined;
      }
    }
    return query.apply(this, arguments as never);
  };
}

/**
 * Keeps `slot.db` true to the server when a statement changes the session's database itself (a raw
 * `USE` in application code): MariaDB and MySQL name the new database in the OK packet
 * (`session_track_schema`, on by default) and mysql2 hands it over as `stateChanges.schema`. Without
 * this, the pool would believe the connection still on its tenant's database and skip the next
 * switch. In a batch (inlineSwitch), the last change counts, and the pending switch is settled here.
 */
export function trackSchemaChanges(slot: Slot): void {
  const conn = slot.conn as unknown as { query(sql: unknown, values?: unknown, callback?: unknown): unknown };
  const query = conn.query;
  // Fixed arity and a callback wrapped by a module-level function: the first version took a rest
  // array, replaced its last element and handed it to `apply`, which cost ~8 µs of CPU per query
  // (more than the rest of the library's cost per query; benchmarks/cpu.bench.ts).
  conn.query = function (this: unknown, sql: unknown, values: unknown, callback: unknown): unknown {
    if (typeof callback === 'function') return query.call(this, sql, values, tracked(slot, sql, callback as Callback));
    if (typeof values === 'function') return query.call(this, sql, tracked(slot, sql, values as Callback));
    // No callback (knex's streams): its answer is not read here, so where it leaves the session is
    // unknown (a streamed `USE`): the next acquire switches the connection again. Whether it failed
    // is not known either: counted as failed (see untrusted).
    slot.db = undefined;
    slot.clean = false;
    untrusted(slot, sql, true);
    return query.apply(this, arguments as never);
  };
}

type Callback = (error: unknown, result: unknown, fields: unknown) => unknown;


/** Marks `slot` broken when a statement leaves its session unknown to the pool (see the patterns above). */
function untrusted(slot: Slot, sql: unknown, failed: boolean): void {
  const text = typeof sql === 'string' ? sql : (sql as { sql?: unknown } | null)?.sql;
  if (typeof text !== 'string') return;
  if (SCHEMA_TRACKING.test(text)) slot.broken = true;
  else if (failed) {
    const own = statementStart(text);
    if (MAY_OPEN_TRANSACTION_INSIDE.test(own) || severalStatements(own)) slot.broken = true;
  }
}

/**
 * Gives mysql2 back the character set the connection was opened with, before a session reset or a
 * change of user: a `SET NAMES` in a tenant's raw SQL changed it for good on the driver's side, and
 * the reset puts the server back to the opening one, so the next tenant's text would be encoded in
 * one character set and read in another (its writes silently corrupted).
 */
export function restoreCharset(slot: Slot): void {
  const config = (slot.conn as { config?: { charsetNumber?: number } }).config;
  if (config !== undefined && slot.charsetNumber !== undefined) config.charsetNumber = slot.charsetNumber;
}

/**
 * A statement that may start a transaction inside it (a stored procedure, a prepared or immediate
 * EXECUTE, several statements) and then fails: an error answer carries no status flags, so the pool's
 * record of the session (in a transaction or not) is the one from before, and a transaction the
 * statement left open would pass to the next tenant, whose writes would join it (or whose BEGIN
 * would commit it). Such a connection is closed when released: the server rolls back. Read after
 * leading comments (`/* tag *\/ CALL p()`); a statement that starts with one of MariaDB's executable
 * comments (`/*!...*\/`) counts too.
 */
const MAY_OPEN_TRANSACTION_INSIDE = /^(?:(?:call|execute|xa)\b|\/\*)/i;
/**
 * `session_track_schema` turned off (or touched at all): the server stops naming the database a
 * `USE` moves to, and the pool could believe a connection clean (qualifyTables) or on a database it
 * left. Never trusted again: closed when released.
 */
const SCHEMA_TRACKING = /session_track_schema/i;

function tracked(slot: Slot, sql: unknown, callback: Callback): Callback {
  return function (this: unknown, error: unknown, result: unknown, fields: unknown): unknown {
    if (slot.switched && !slot.answered && opensTables(sql)) slot.answered = true;
    untrusted(slot, sql, error !== null && error !== undefined);
    if (!error) {
      const schema = changedSchema(result);
      if (schema !== undefined) {
        slot.db = schema;
        slot.pending = undefined;
        slot.clean = false;
        slot.target = undefined;
      }
    } else if (severalStatements(sql)) {
      // A failed batch answers only its error: a `USE` that ran before it is not reported, so where
      // the session is left is unknown; the next acquire switches it again.
      slot.db = undefined;
      slot.clean = false;
    }
    return callback.call(this, error, result, fields);
  };
}

/**
 * The database a statement's answer says the session moved to (the last one, for a batch), if any.
 * Only mysql2's `ResultSetHeader`s (the answers of statements without rows) are read: a row, even one
 * with a JSON column named `stateChanges`, never counts.
 */
function changedSchema(result: unknown): string | undefined {
  if (!Array.isArray(result)) return headerSchema(result);
  // A batch answers one entry per statement (an array of rows, or a header); a single SELECT, its
  // rows, which are never read here: no per-row work on the query path.
  const first: unknown = result[0];
  if (!Array.isArray(first) && !isHeader(first)) return undefined;
  let schema: string | undefined;
  for (const part of result) schema = headerSchema(part) ?? schema;
  return schema;
}

function isHeader(value: unknown): boolean {
  return value !== null && typeof value === 'object' && value.constructor?.name === 'ResultSetHeader';
}

function headerSchema(value: unknown): string | undefined {
  if (!isHeader(value)) return undefined;
  const schema = (value as { stateChanges?: { schema?: unknown } | null }).stateChanges?.schema;
  return typeof schema === 'string' && schema !== '' ? schema : undefined;
}

// mysql2's server status flags (SERVER_STATUS_IN_TRANS, SERVER_STATUS_AUTOCOMMIT), as of the last answer.
export const IN_TRANS = 0x1;
const AUTOCOMMIT = 0x2;

// Statements that open no table: their answer does not mean the tenant's tables are open.
const OPENS_NO_TABLE = /^\s*(?:begin|start\s+transaction|savepoint|release\s+savepoint|rollback|commit|set|use|xa)\b/i;

/** Whether a statement (text, or mysql2's query options) may open tables (see `Slot.answered`). */
function opensTables(sql: unknown): boolean {
  const text = typeof sql === 'string' ? sql : (sql as { sql?: unknown } | null)?.sql;
  return typeof text !== 'string' || !OPENS_NO_TABLE.test(text);
}

/** A statement is still running on it, or knex marked it unusable after a timeout. */
/**
 * Closes a driver connection's socket at once, not behind the statement it runs as `end()` does: the
 * server rolls back what it left open, and the driver fails every statement still running or queued
 * on it ("Connection lost"). The socket itself, not mysql2's `destroy()`: that marks the connection
 * as closing, and mysql2 then answers none of those statements, which would wait forever. Other
 * connections (better-sqlite3's) are left to the pool's own close.
 */
export function closeSocketNow(conn: unknown): void {
  const socket = (conn as { stream?: { destroy?: () => void } } | null)?.stream;
  if (socket === undefined || typeof socket.destroy !== 'function') return;
  try {
    socket.destroy();
  } catch {
    // Closed already.
  }
}

export function stillRunning(conn: RawConnection): boolean {
  return conn._command != null || conn.__knex__disposed !== undefined;
}

/** One statement the pool sends itself, its rows or its error. */
export function ask(conn: RawConnection, sql: string): Promise<unknown> {
  return new Promise((resolve, reject) => conn.query(sql, (error, rows) => (error ? reject(error) : resolve(rows))));
}

/** Inside a transaction, or with autocommit turned off (so that the next statement would open one). */
export function leftTransactional(conn: RawConnection): boolean {
  const status = conn.serverStatus ?? 0;
  return (status & IN_TRANS) !== 0 || (status & AUTOCOMMIT) === 0;
}

/** With autocommit off (a server default some setups choose), every statement opens a transaction: not a leftover. */
export function autocommitOn(conn: RawConnection): boolean {
  return ((conn.serverStatus ?? 0) & AUTOCOMMIT) !== 0;
}
