import type { Knex } from 'knex';
import { UnknownTenantError } from './errors';
import { markQualified, settleOwnNamesOnCompile } from './qualify-tables';
import { sentLater } from './statement-order';

/**
 * The inline database switch of the shared strategy (`inlineSwitch: true`): when a connection has to
 * change database, the `USE` goes in the same round trip as the tenant's first statement on it,
 * `USE \`db\`; <sql>`, instead of a round trip of its own.
 *
 * Safe because MySQL and MariaDB stop a multi-statement batch at its first error: when the `USE`
 * fails (database dropped), the tenant's statement never runs on the database the connection was on.
 * After any error in such a batch the connection's database is treated as unknown, so the next
 * acquire switches it again. Needs `multipleStatements` on the server's connections.
 *
 * The same hook serves `qualifyTables`: on a connection that has no current database, statements
 * go as they are and are switched only when the server refuses them (`cleanQuery` below).
 */

/** What the inline switch needs from the shared pool. */
export interface SwitchState {
  /** The database `conn` must be switched to before its next statement, if any. */
  pendingSwitch(conn: unknown): string | undefined;
  /** Records the outcome of a batch that carried the switch. */
  settleSwitch(conn: unknown, ok: boolean): void;
  /** Which database server this is (see AffinityPool.identity). */
  readonly identity: unknown;
  /** Switches `conn` with a `USE` round trip of its own (streams, transactions, refused statements), if it has one to make. */
  switchNow(conn: unknown, tenantId: string): Promise<void>;
  /** qualifyTables: the tenant database `conn` serves with no current database of its own, if so. */
  cleanTarget(conn: unknown): string | undefined;
  /**
   * qualifyTables: counts a statement that needed a switch on a clean connection (refused there, or
   * known to be) and remembers its text (`knownRefused`).
   */
  noteQualifyRetry(sql: string): void;
  /** qualifyTables: whether a statement with this text was refused on a clean connection lately (it would be again). */
  knownRefused(sql: string): boolean;
  /**
   * qualifyTables: whether `conn` is on `database` once the switch it is making (for another
   * statement of the same acquire) has settled; rejects as that switch did.
   */
  switchedTo(conn: unknown, database: string): Promise<boolean>;
}

type QueryObject = { sql: string; bindings?: unknown; options?: unknown; response?: [unknown, unknown] };
type ClientQuery = (this: Knex.Client, conn: unknown, obj: QueryObject | string) => Promise<QueryObject>;
type ClientStream = (this: Knex.Client, conn: unknown, obj: unknown, stream: unknown, options: unknown) => Promise<unknown>;

/** ER_NO_DB_ERROR: a statement named a table without a database on a session that has none. */
const NO_DATABASE_SELECTED = 1046;
/**
 * ER_SP_DOES_NOT_EXIST: what a call of the tenant's own stored function (`select whoami()`) gets on a
 * session with no database (procedures get 1046). Refused before it runs, like 1046: sent again after
 * a `USE`, where a function that is really missing fails again with the same error.
 */
const NO_SUCH_ROUTINE = 1305;
/** ER_NO_SUCH_TABLE: also what a qualified statement gets when its whole database is gone. */
const NO_SUCH_TABLE = 1146;
/**
 * Functions that read the session's current database (NULL on a clean connection). Any word
 * `database` or `schema`, as comments and quotes can sit between the name and its parenthesis
 * (`DATABASE/**\/()`, `` `schema`() ``): a word that is not a call only costs a switch.
 */
const CURRENT_DATABASE = /\b(?:database|schema)\b/i;
/** A `;` with anything after it: possibly several statements (a `;` inside a literal only costs a switch). */
const SEVERAL_STATEMENTS = /;\s*\S/;

/** The switch inlineSwitch puts before a statement (see inlineUse): the statement is what follows it. */
const INLINE_USE = /^USE `(?:[^`]|``)*`; /;
/** Whitespace and comments before a statement's first word (not MariaDB's executable `/*!` ones). */
const LEADING_COMMENTS = /^(?:\s+|\/\*(?![!M])[\s\S]*?\*\/|(?:--(?=\s)|#)[^\n]*(?:\n|$))*/;

/** A statement's text from its first word: the inline switch and leading comments left out. */
export function statementStart(text: string): string {
  return text.replace(INLINE_USE, '').replace(LEADING_COMMENTS, '');
}

/**
 * Statements whose routines MariaDB resolves before anything runs: refused with 1305 on a clean
 * connection, they did nothing. A `CALL` (or `EXECUTE`) resolves them as its body runs, after its
 * earlier statements' writes: not sent again.
 */
const RESOLVED_BEFORE_RUNNING = /^(?:select|insert|update|delete|replace|with|values|table)\b|^\(/i;

/** Whether a statement refused with `errno` on a clean connection did nothing, so it may be sent again after a `USE`. */
function refusedBeforeRunning(errno: unknown, sql: string): boolean {
  if (errno === NO_DATABASE_SELECTED) return true;
  return errno === NO_SUCH_ROUTINE && !SEVERAL_STATEMENTS.test(sql) && RESOLVED_BEFORE_RUNNING.test(statementStart(sql));
}

/** Whether `sql` (a string or knex's `{ sql }`) may hold several statements. */
export function severalStatements(sql: unknown): boolean {
  const text = typeof sql === 'string' ? sql : (sql as { sql?: unknown } | null)?.sql;
  return typeof text === 'string' && SEVERAL_STATEMENTS.test(text);
}

/** `USE \`db\`; ` for a database name the driver's placeholder formatting cannot touch, else undefined. */
export function inlineUse(database: string): string | undefined {
  // mysql2 replaces every `?` of the text when it formats bindings, quoted or not.
  return database.includes('?') ? undefined : `USE \`${database.replace(/`/g, '``')}\`; `;
}

/**
 * Gives a tenant handle's client (`Object.create(serverClient)`) the inline switch (and the clean
 * connections of qualifyTables): its `_query` prefixes the pending `USE` and hands knex only the
 * tenant statement's result; streams and transactions switch with a round trip of their own first
 * (a streamed query's rows are piped as they come; a transaction's statements go through a client
 * knex builds without this one's methods). Must be called after the client's `acquireConnection` /
 * `releaseConnection` are set.
 */
export function installInlineSwitch(client: Record<string, unknown>, state: SwitchState, tenantId: string, qualifiedDatabase?: string): void {
  const baseQuery = client._query as ClientQuery;
  const baseStream = client._stream as ClientStream;

  // Not an async function: most statements take the first or the last branch, and a promise per layer
  // is what this path costs.
  client._query = function (this: Knex.Client, conn: unknown, input: QueryObject | string): Promise<QueryObject> {
    const target = state.cleanTarget(conn);
    if (target !== undefined) return cleanQuery(this, baseQuery, state, tenantId, conn, input, target);
    const database = state.pendingSwitch(conn);
    if (database !== undefined) return switchInline(this, baseQuery, state, tenantId, conn, input, database);
    return baseQuery.call(this, conn, input);
  };

  // knex builds a transaction's client from the client's class prototype, not from this client, so
  // the `_query` above would not apply to its statements: a transaction switches when it takes its
  // connection, with a round trip of its own. With qualifyTables, a clean connection stays clean:
  // the transaction's client is built from a prototype that handles refusals as `cleanQuery` does,
  // and the transaction is marked so that model queries in it name the tenant's database.
  const baseTransaction = client.transaction as (this: unknown, ...args: unknown[]) => unknown;
  const acquire = client.acquireConnection as () => Promise<unknown>;
  const release = client.releaseConnection as (conn: unknown) => Promise<unknown>;
  client.transaction = function (this: Knex.Client, ...args: unknown[]): unknown {
    const eager = Object.create(this) as Record<string, unknown>;
    eager.acquireConnection = async () => {
      const conn = await acquire();
      try {
        if (qualifiedDatabase === undefined || state.cleanTarget(conn) === undefined) await state.switchNow(conn, tenantId);
      } catch (error) {
        await release(conn);
        throw error;
      }
      return conn;
    };
    if (qualifiedDatabase !== undefined) {
      const txClass = cleanTransactionClass((this.constructor as { prototype: object }).prototype, state, tenantId, qualifiedDatabase);
      Object.defineProperty(eager, 'constructor', { value: txClass, configurable: true, writable: true });
      markContainer(args, qualifiedDatabase);
      return trackClientOf(baseTransaction.apply(eager, args));
    }
    return baseTransaction.apply(eager, args);
  };

  client._stream = async function (this: Knex.Client, conn: unknown, obj: unknown, stream: unknown, options: unknown): Promise<unknown> {
    await switchBeforeStream(state, conn, tenantId, stream);
    return baseStream.call(this, conn, obj, stream, options);
  };
}

/**
 * A stream's switch, before its query. Its failure goes to the stream: knex emits there only what
 * fails before it holds a connection (runner.js), so the stream would otherwise never end.
 */
async function switchBeforeStream(state: SwitchState, conn: unknown, tenantId: string, stream: unknown): Promise<void> {
  try {
    await state.switchNow(conn, tenantId);
  } catch (error) {
    (stream as { emit(event: 'error', error: unknown): unknown }).emit('error', error);
    throw error;
  }
}

/** inlineSwitch: sends the pending `USE` and the tenant's statement in one round trip. */
async function switchInline(
  client: Knex.Client,
  baseQuery: ClientQuery,
  state: SwitchState,
  tenantId: string,
  conn: unknown,
  input: QueryObject | string,
  database: string,
): Promise<QueryObject> {
  const obj: QueryObject = typeof input === 'string' ? { sql: input } : input;
  const batch: QueryObject = { ...obj, sql: `${inlineUse(database)!}${obj.sql}` };
  let ok = false;
  try {
    await baseQuery.call(client, conn, batch);
    ok = true;
  } catch (error) {
    const { errno, message } = error as { errno?: unknown; message?: unknown };
    if (errno === 1049 && String(message).includes(database)) throw new UnknownTenantError(tenantId, { cause: error });
    throw error;
  } finally {
    state.settleSwitch(conn, ok);
  }
  const [rows, fields] = batch.response as [unknown[], unknown[]];
  // One result per statement: the USE's, then the tenant's (several if its SQL had several).
  obj.response = rows.length === 2 ? [rows[1], fields[1]] : [rows.slice(1), fields.slice(1)];
  return obj;
}

/**
 * qualifyTables, on a connection that has no current database: the statement goes as it is. A table
 * it names without a database cannot resolve anywhere, so the server refuses it ("No database
 * selected", before running anything); it is then sent again after a `USE`. `DATABASE()` and
 * `SCHEMA()` would answer NULL there, and in a string of several statements an earlier one may have
 * run: such statements are switched first. So is a statement whose text the server refused lately
 * (the same text names the same tables): the doomed round trip is skipped. (Module level: no closure
 * per tenant handle.)
 */
function cleanQuery(
  client: Knex.Client,
  baseQuery: ClientQuery,
  state: SwitchState,
  tenantId: string,
  conn: unknown,
  input: QueryObject | string,
  target: string,
): Promise<QueryObject> {
  const sql = typeof input === 'string' ? input : input.sql;
  if (CURRENT_DATABASE.test(sql) || SEVERAL_STATEMENTS.test(sql)) {
    return state.switchNow(conn, tenantId).then(() => sendAfterSwitch(client, baseQuery, conn, input, undefined));
  }
  if (state.knownRefused(sql)) {
    state.noteQualifyRetry(sql);
    return state.switchNow(conn, tenantId).then(() => sendAfterSwitch(client, baseQuery, conn, input, undefined));
  }
  // No async function here: this is every statement's path, and its promises are what it costs.
  return baseQuery.call(client, conn, input).then(undefined, (error: unknown) => refused(client, baseQuery, state, tenantId, conn, input, target, error));
}

/** cleanQuery, once the server refused a statement sent with no current database. */
async function refused(
  client: Knex.Client,
  baseQuery: ClientQuery,
  state: SwitchState,
  tenantId: string,
  conn: unknown,
  input: QueryObject | string,
  target: string,
  error: unknown,
): Promise<QueryObject> {
  const errno = (error as { errno?: unknown }).errno;
  if (state.cleanTarget(conn) === undefined) {
    // Sent together with other statements of the acquire (a transaction's) and refused before the
    // switch one of them started had run: sent again once it has, if it went to this tenant's database.
    if (!refusedBeforeRunning(errno, typeof input === 'string' ? input : input.sql) || !(await state.switchedTo(conn, target))) throw error;
    state.noteQualifyRetry(typeof input === 'string' ? input : input.sql);
    return sendAfterSwitch(client, baseQuery, conn, input, error);
  }
  // A table of a dropped tenant database: the switch says so (UnknownTenantError), as it would
  // without qualifyTables; a database that is there leaves the missing table's own error.
  if (errno === NO_SUCH_TABLE) {
    await state.switchNow(conn, tenantId);
    throw error;
  }
  if (!refusedBeforeRunning(errno, typeof input === 'string' ? input : input.sql)) throw error;
  state.noteQualifyRetry(typeof input === 'string' ? input : input.sql);
  await state.switchNow(conn, tenantId);
  return sendAfterSwitch(client, baseQuery, conn, input, error);
}

/**
 * The transaction of each qualifyTables transaction client (knex's makeTxClient keeps it in closures
 * only): set as knex gives the transaction its client (`trackClientOf`).
 */
const TRANSACTION_OF = new WeakMap<object, { isCompleted(): boolean }>();

/**
 * Sends a statement after the switch it waited for, unless its transaction ended meanwhile. A
 * statement refused on a transaction's clean connection waits for a `USE` queued behind the
 * transaction's other statements; if one of those failed, the ROLLBACK is queued before the resend,
 * which would then run on its own, in autocommit, and stay committed. It fails instead, with the
 * server's refusal (`refusal`) or knex's own "already complete" error.
 */
function sendAfterSwitch(client: Knex.Client, baseQuery: ClientQuery, conn: unknown, input: QueryObject | string, refusal: unknown): Promise<QueryObject> {
  if (TRANSACTION_OF.get(client)?.isCompleted() === true) {
    return Promise.reject(refusal ?? new Error('Transaction query already complete: the transaction ended while its statement waited for a switch'));
  }
  sentLater(conn, input);
  return baseQuery.call(client, conn, input);
}

/** Records the client knex makes for `trx` (knex sets `trx.trxClient` once it holds the connection). */
function trackClientOf<T>(trx: T): T {
  if (trx === null || typeof trx !== 'object') return trx;
  let client: unknown;
  Object.defineProperty(trx, 'trxClient', {
    configurable: true,
    enumerable: true,
    get: () => client,
    set: (value: unknown) => {
      client = value;
      if (value !== null && typeof value === 'object') TRANSACTION_OF.set(value, trx as unknown as { isCompleted(): boolean });
    },
  });
  return trx;
}

/**
 * qualifyTables: the class knex builds a transaction's client from (`Object.create(client.constructor
 * .prototype)`, nested transactions included): the driver's, with `_query` and `_stream` that leave
 * a clean connection clean until a statement needs its database.
 */
function cleanTransactionClass(proto: object, state: SwitchState, tenantId: string, database: string): { prototype: object } {
  const base = proto as { _query: ClientQuery; _stream: ClientStream; transaction: (...args: unknown[]) => unknown };
  const txProto = Object.create(proto) as Record<string, unknown>;
  const txClass = { prototype: txProto };
  Object.defineProperty(txProto, 'constructor', { value: txClass, configurable: true, writable: true });
  txProto._query = function (this: Knex.Client, conn: unknown, input: QueryObject | string): Promise<QueryObject> {
    const target = state.cleanTarget(conn);
    if (target !== undefined) return cleanQuery(this, base._query, state, tenantId, conn, input, target);
    return base._query.call(this, conn, input);
  };
  txProto._stream = async function (this: Knex.Client, conn: unknown, obj: unknown, stream: unknown, options: unknown): Promise<unknown> {
    await switchBeforeStream(state, conn, tenantId, stream);
    return base._stream.call(this, conn, obj, stream, options);
  };
  // The transaction's statements (its model queries, a builder moved in with `.transacting(trx)`)
  // are compiled by this client: their own names are settled here too.
  settleOwnNamesOnCompile(txProto, database, tenantId, state.identity);
  // A nested transaction (a savepoint) is marked too.
  txProto.transaction = function (this: Knex.Client, ...args: unknown[]): unknown {
    markContainer(args, database);
    return trackClientOf(base.transaction.apply(this, args));
  };
  return txClass;
}

/** Marks the transaction a `transaction(container, ...)` call hands its container (knex passes one even to the promise form). */
function markContainer(args: unknown[], database: string): void {
  const container = args[0];
  if (typeof container !== 'function') return;
  args[0] = (trx: Knex) => {
    markQualified(trx, database);
    return (container as (trx: Knex) => unknown)(trx);
  };
}
