import type { Knex } from 'knex';
import { commitMayHaveApplied, TenantUnavailableError, TransactionAbortedError, TransactionOutcomeUnknownError } from './errors';
import { statementStart } from './inline-switch';
import { ask, IN_TRANS, type RawConnection } from './pooled-connection';
import { followLaterSends } from './statement-order';
import { currentScope, openTransactionScope, runInScope, type TenantScope } from './scope';

type Callback = () => unknown;

/** Callbacks registered in one transaction level (a transaction or a savepoint). */
export interface TransactionHooks {
  readonly commit: Callback[];
  readonly rollback: Callback[];
  readonly parent: TransactionHooks | undefined;
  /**
   * `open` until the level ends: `released` (a savepoint that went on into its parent), `committed`
   * (the outermost) or `rolledBack`. Callbacks registered after the end (work started in the
   * transaction that runs later) follow it: see onCommit and onRollback. `unknown`: the connection
   * was lost after the outermost `COMMIT` was sent, before its answer; no callback runs.
   */
  state: 'open' | 'released' | 'committed' | 'rolledBack' | 'unknown';
  /** The transaction this level belongs to: one for the outermost level and its savepoints. */
  readonly tx: TransactionState;
}

/** @internal What the levels of one transaction share. */
export interface TransactionState {
  /**
   * Set when the database rolled the transaction back under it (a deadlock): the statement that
   * failed for it. Its later statements are refused, not run in autocommit (see refuseAborted).
   */
  aborted?: { readonly error: unknown };
  /** The savepoints open on the connection, in the order their SAVEPOINT went out (see onStatement). */
  savepoints?: OpenSavepoint[];

  /**
   * Set when a savepoint rolled back after a statement of a level outside it wrote beside it: that
   * statement was undone though it was reported done. The transaction cannot commit what its code
   * believes it did: its later statements are refused, and its COMMIT is sent as a ROLLBACK.
   */
  doomed?: { readonly error: TransactionAbortedError };
}

/** Reports a failing onCommit/onRollback callback; the transaction's outcome is already final. */
export type HookErrorHandler = (error: unknown, tenantId: string) => void;

export const defaultHookError: HookErrorHandler = (error, tenantId) => {
  process.emitWarning(`objection-tenancy: an onCommit/onRollback callback of tenant "${tenantId}" failed: ${printable(error)}`, 'TenantTransactionHookWarning');
};

/** `String(error)`, or its tag for a value with no string form (`Object.create(null)`). */
function printable(error: unknown): string {
  try {
    return String(error);
  } catch {
    return Object.prototype.toString.call(error);
  }
}

/**
 * @internal Runs `fn` in a transaction (or savepoint) of `scope`'s tenant, with the transaction in the
 * scope. Commit callbacks of the outermost level run after the commit, rollback callbacks after a
 * rollback; a savepoint's callbacks wait for the outermost outcome, since a committed savepoint is
 * still undone by an outer rollback.
 */
export async function runTransaction<T>(
  scope: TenantScope,
  fn: (trx: Knex.Transaction) => T | PromiseLike<T>,
  onHookError: HookErrorHandler = defaultHookError,
): Promise<Awaited<T>> {
  const tx: TransactionState = scope.trx !== undefined && scope.txHooks !== undefined ? scope.txHooks.tx : {};
  const hooks: TransactionHooks = { commit: [], rollback: [], parent: scope.txHooks, state: 'open', tx };
  const parent = scope.trx === undefined ? undefined : scope.txHooks;
  if (parent === undefined) return runLevel(scope, hooks, fn, onHookError);
  // A savepoint. Its callbacks take, in its parent's lists, the place where it began: in registration
  // order, ahead of what the parent registers while it runs (a Promise.all beside it).
  const commitPlace: Callback = () => undefined;
  const rollbackPlace: Callback = () => undefined;
  parent.commit.push(commitPlace);
  parent.rollback.push(rollbackPlace);
  try {
    const result = await runLevel(scope, hooks, fn, onHookError);
    if (hooks.state === 'released') {
      replace(parent.commit, commitPlace, hooks.commit);
      replace(parent.rollback, rollbackPlace, hooks.rollback);
    }
    return result;
  } finally {
    replace(parent.commit, commitPlace, []);
    replace(parent.rollback, rollbackPlace, []);
  }
}

/**
 * A `ROLLBACK TO SAVEPOINT` undoes every statement sent on the connection since the savepoint began,
 * those of its outer level too: an insert run beside a nested `tenancy.transaction()` (a
 * `Promise.all` of both) that then rolled back was undone, reported done, and the transaction
 * committed without it. Holding such statements until the savepoint ends made code that waits for
 * them inside it (its own onRollback queries, an outer-level bindTenant helper) wait for good; the
 * transaction fails instead (fails closed): rolled back as a whole, with TransactionAbortedError.
 */
function doom(tx: TransactionState, tenantId: string): void {
  if (tx.doomed !== undefined) return;
  const error = new TransactionAbortedError(tenantId, {
    cause: new Error('a savepoint rolled back after statements of a level outside it were sent beside it (a Promise.all of an outer query and a nested transaction): its ROLLBACK TO SAVEPOINT undid them'),
  });
  error.message =
    `A savepoint of tenant "${tenantId}"'s transaction rolled back after statements of its outer level ran beside it, and undid them: ` +
    'the whole transaction is rolled back, its statements are refused until it ends. Await nested transactions before running outer statements, and run the transaction again.';
  tx.doomed = { error };
}

/** A savepoint whose SAVEPOINT went out, until its RELEASE or ROLLBACK TO goes out. */
interface OpenSavepoint {
  readonly name: string;
  /** Its level, once its callback started (set then: see runLevel). */
  level: TransactionHooks | undefined;
  /** A statement that may write, of a level not inside it, went out since its SAVEPOINT. */
  foreign: boolean;
}

// knex's savepoint statements (`SAVEPOINT trx2;`, `RELEASE SAVEPOINT trx2;`, `ROLLBACK TO SAVEPOINT trx2`).
const SAVEPOINT = /^savepoint\s+([^\s;]+)/i;
const SAVEPOINT_END = /^(release|rollback\s+to)\s+savepoint\s+([^\s;]+)/i;
// Statements whose undoing by a savepoint's rollback loses nothing: reads (their locks stay, as
// InnoDB keeps them) and session variables, which no rollback undoes.
const READS = /^(?:select|show|explain|describe|desc|values|table|set)\b|^\(\s*select\b/i;
const CTE_WRITE = /\b(?:insert|update|delete|replace)\b/i;

/**
 * Follows the statements of one transaction in the order they go out on its connection (knex's
 * `query` event, emitted as each is sent, by every level, and the later sends statement-order.ts
 * reports): a write of a level not inside an open savepoint marks it, and that savepoint's `ROLLBACK
 * TO SAVEPOINT` then dooms the transaction. A statement is attributed to the level the library's own
 * client sent it through (LEVEL); one sent otherwise (knex's own nested `trx.transaction()`,
 * `Model.startTransaction()`) is not.
 */
function onStatement(tx: TransactionState, input: unknown, tenantId: string): void {
  const sql = typeof input === 'string' ? input : String((input as { sql?: unknown } | null)?.sql ?? '');
  const level = typeof input === 'object' && input !== null ? (input as { [LEVEL]?: TransactionHooks })[LEVEL] : undefined;
  const open = (tx.savepoints ??= []);
  const started = SAVEPOINT.exec(sql);
  if (started !== null) {
    open.push({ name: started[1]!, level: undefined, foreign: false });
    return;
  }
  if (open.length === 0) return;
  const ended = SAVEPOINT_END.exec(sql);
  if (ended !== null) {
    const at = open.findIndex((savepoint) => savepoint.name === ended[2]);
    if (at < 0) return;
    // It ends, and every savepoint opened inside it with it.
    const [savepoint] = open.splice(at);
    if (savepoint!.foreign && !/^release/i.test(ended[1]!)) doom(tx, tenantId);
    return;
  }
  if (level === undefined || CONTROL.test(sql) || !mayWrite(sql)) return;
  for (const savepoint of open) if (!inside(level, savepoint.level)) savepoint.foreign = true;
}

function mayWrite(sql: string): boolean {
  const start = statementStart(sql);
  if (READS.test(start)) return false;
  return !/^with\b/i.test(start) || CTE_WRITE.test(start);
}

/** Whether `level` is `savepoint`'s level or one of its savepoints. */
function inside(level: TransactionHooks, savepoint: TransactionHooks | undefined): boolean {
  for (let at: TransactionHooks | undefined = level; at !== undefined; at = at.parent) if (at === savepoint) return true;
  return false;
}

// The level a statement was sent through, on knex's query object (Object.assign copies it into the
// `query` event's object, and a statement sent later after a switch carries it too).
const LEVEL = Symbol('objection-tenancy.transactionLevel');

function sentBy<T>(obj: T, hooks: TransactionHooks): T {
  if (obj !== null && typeof obj === 'object') (obj as Record<symbol, unknown>)[LEVEL] = hooks;
  return obj;
}

/** Puts `items` where `place` is in `list` (nothing when it is not there). */
function replace(list: Callback[], place: Callback, items: Callback[]): void {
  const at = list.indexOf(place);
  if (at >= 0) list.splice(at, 1, ...items);
}

/** One level of a transaction (see runTransaction): the outermost, or a savepoint with its place set. */
async function runLevel<T>(
  scope: TenantScope,
  hooks: TransactionHooks,
  fn: (trx: Knex.Transaction) => T | PromiseLike<T>,
  onHookError: HookErrorHandler,
): Promise<Awaited<T>> {
  const base = scope.trx ?? scope.knex;
  const { tx } = hooks;
  // A savepoint: knex deletes its connection's transaction mark (`__knexTxId`) when it ends, though
  // the outer transaction goes on on that connection. Put back, its statements still read as inside.
  const outer = scope.trx === undefined ? undefined : ((await (scope.trx.client as unknown as { acquireConnection(): Promise<{ __knexTxId?: string }> }).acquireConnection()));
  const outerTxId = outer?.__knexTxId;
  let result: Awaited<T>;
  // Rolled back: by the app's own `trx.rollback()` (`rolledBackByApp`; knex then resolves, with
  // undefined, as if it had committed), or by knex once `fn` rejected.
  let rolledBack = false;
  // What the transaction was rolled back for: `fn`'s error (knex passes it to `rollback`) or the
  // app's own `trx.rollback(error)`.
  let rollbackReason: { error: unknown } | undefined;
  // Set once the outermost level's COMMIT was sent (by knex once `fn` resolved, or by the app's
  // `trx.commit()`): its own answer, undefined once it succeeded, else its error.
  let commitAnswer: Promise<unknown> | undefined;
  // `fn`'s own promise: knex settles the transaction as soon as the app calls `trx.rollback()` or
  // `trx.commit()`, while `fn` may go on; whether (and how) `fn` has settled, seen before knex sees it.
  let running: Promise<unknown> | undefined;
  let fnSettled = false;
  let fnFailed: { error: unknown } | undefined;
  let rolledBackByApp = false;
  // The app's own `trx.commit()` (a savepoint's: its release), called while `fn` ran.
  let committedByApp = false;
  // The outermost level: stops following its connection's later sends (statement-order.ts).
  let unfollow: (() => void) | undefined;
  try {
    result = (await base.transaction((trx) => {
      // Its BEGIN (or SAVEPOINT) failed: knex marks the transaction complete, rejects it, and still
      // calls this. `fn` must not run: its queries would find no open transaction and run in
      // autocommit on the tenant's connection, committed while the transaction failed.
      if (trx.isCompleted()) return Promise.reject(new TenantUnavailableError(scope.tenantId, { reason: 'its transaction could not be started' }));
      const rollback = trx.rollback;
      trx.rollback = function (this: unknown, ...args: unknown[]) {
        // knex also calls it when `fn` rejects after the app's own `trx.commit()`: skipped below, the
        // outcome is the commit's.
        if (!trx.isCompleted()) {
          rolledBack = true;
          // The app's own call, or knex's once `fn` rejected (`fnFailed` is set before knex's handler runs).
          rolledBackByApp = fnFailed === undefined;
          if (args[0] !== undefined) rollbackReason = { error: args[0] };
        } else if (rolledBack || committedByApp) {
          // Ended already by the app (its own `trx.rollback()` or `trx.commit()`, not awaited, then
          // `fn` settled): knex's second statement would be refused at once, settling the transaction
          // (or savepoint) with knex's untyped "already complete" before the first one's answer.
          return Promise.resolve();
        }
        return (rollback as (...args: unknown[]) => unknown).apply(this, args);
      } as typeof rollback;
      const commit = trx.commit;
      trx.commit = function (this: unknown, ...args: unknown[]) {
        // Called while `fn` runs: the app's own (knex's comes once `fn` has resolved).
        if (!trx.isCompleted()) committedByApp ||= !fnSettled;
        // knex's COMMIT (or RELEASE) once `fn` resolved, after the app ended the level itself: as above.
        else if (rolledBack || committedByApp) return Promise.resolve();
        return (commit as (...args: unknown[]) => unknown).apply(this, args);
      } as typeof commit;
      // Every statement of this level goes through its own client (knex makes one per level).
      const client = trx.client as unknown as { query(conn: unknown, obj: unknown): Promise<unknown> };
      const query = client.query;
      client.query = function (this: unknown, conn: unknown, obj: unknown): Promise<unknown> {
        const sql = typeof obj === 'string' ? obj : (obj as { sql?: unknown } | null)?.sql;
        const text = String(sql);
        const doomed = tx.doomed !== undefined && !ROLLBACK.test(text) ? tx.doomed.error : undefined;
        const answer =
          doomed !== undefined
            ? // Its COMMIT is sent as a ROLLBACK: knex then settles the transaction with this error.
              sql === 'COMMIT;'
              ? query.call(this, conn, 'ROLLBACK').then(
                  () => Promise.reject(doomed),
                  () => Promise.reject(doomed),
                )
              : Promise.reject(doomed)
            : tx.aborted !== undefined && !ROLLBACK.test(text)
              ? Promise.reject(new TransactionAbortedError(scope.tenantId, { cause: tx.aborted.error }))
              : query.call(this, conn, sentBy(obj, hooks));
        // The outcome of the outermost level is its COMMIT's own answer, whoever sent it (knex once `fn`
        // resolved, or the app's `trx.commit()`, whose failure knex may settle differently): read here.
        if (outer === undefined && commitAnswer === undefined && sql === 'COMMIT;') {
          commitAnswer = answer.then(
            () => undefined,
            (error: unknown) => error ?? new Error('COMMIT failed'),
          );
        }
        // A statement on a transaction that has ended (knex refuses it) says nothing about that transaction.
        if (doomed !== undefined || tx.aborted !== undefined || CONTROL.test(text) || trx.isCompleted()) return answer;
        return answer.then(undefined, (error: unknown) => noteAborted(tx, conn, sql, error));
      };
      // A stream's statement carries its level too: on MariaDB a stream can write (`INSERT ...
      // RETURNING`), and unattributed its write beside a savepoint went unseen.
      const streamed = client as unknown as { stream?: (conn: unknown, obj: unknown, ...rest: unknown[]) => unknown };
      const stream = streamed.stream;
      if (typeof stream === 'function') streamed.stream = function (this: unknown, conn: unknown, obj: unknown, ...rest: unknown[]) {
        return stream.call(this, conn, sentBy(obj, hooks), ...rest);
      };
      // The outermost level follows every statement of the transaction; a savepoint's callback runs
      // once its SAVEPOINT was answered: the last one that went out is this level's.
      if (hooks.parent === undefined) {
        const follow = (input: unknown) => onStatement(tx, input, scope.tenantId);
        trx.on('query', follow);
        void (trx.client as unknown as { acquireConnection(): Promise<object> }).acquireConnection().then(
          (conn) => (unfollow = followLaterSends(conn, follow)),
          () => undefined,
        );
      } else {
        const open = tx.savepoints ?? [];
        for (let i = open.length - 1; i >= 0; i--) {
          if (open[i]!.level !== undefined) continue;
          open[i]!.level = hooks;
          break;
        }
      }
      running = runInScope({ ...scope, trx, txHooks: hooks }, () => fn(trx));
      // Before knex's own handlers: a rejection of `fn` (even with no reason, which knex then treats
      // as a plain rollback and resolves) is known as such when knex's rollback comes.
      running.then(
        () => void (fnSettled = true),
        (error: unknown) => {
          fnSettled = true;
          fnFailed ??= { error };
        },
      );
      return running;
    })) as Awaited<T>;
  } catch (caught) {
    unfollow?.();
    if (outer !== undefined) outer.__knexTxId = outerTxId;
    let error = caught;
    let committed = false;
    // Once its COMMIT went out (and `fn` did not roll back), the COMMIT's own answer is the outcome.
    const commitSent = commitAnswer !== undefined && !rolledBack;
    if (commitSent) {
      const answer = await commitAnswer;
      if (answer === undefined) committed = true;
      else error = answer;
    }
    if (!committed) {
      // The connection died after COMMIT went out: the server may have committed. Reporting a rollback
      // (and running onRollback's compensations) would be wrong as often as reporting a commit.
      if (commitSent && commitMayHaveApplied(error)) {
        hooks.state = 'unknown';
        throw new TransactionOutcomeUnknownError(scope.tenantId, { cause: error });
      }
      hooks.state = 'rolledBack';
      // The app's own `trx.rollback(error)`, then another throw of `fn`: reported, not lost.
      if (rolledBackByApp) reportLateThrow(running, rollbackReason, onHookError, scope.tenantId);
      await runCallbacks(scope, hooks.rollback, onHookError);
      // Its ROLLBACK failed too (the connection was lost: the server rolls the transaction back
      // itself), and knex rejects with that failure, "ROLLBACK - Connection lost", in place of the
      // error the transaction was rolled back for. That one says what happened.
      throw rollbackReason !== undefined && rollbackReason.error !== error ? rollbackReason.error : error;
    }
    // Committed by the app's own `trx.commit()` before `fn` threw: as knex does for an awaited one,
    // the transaction resolves (with undefined), and its onCommit callbacks run. The throw is reported (below).
    result = undefined as Awaited<T>;
  }
  unfollow?.();
  if (outer !== undefined) outer.__knexTxId = outerTxId;
  if (rolledBack) {
    hooks.state = 'rolledBack';
    // `fn` rejected with no reason: knex rolled back and resolved; the transaction rejects as `fn` did.
    if (fnFailed !== undefined && !rolledBackByApp) {
      await runCallbacks(scope, hooks.rollback, onHookError);
      throw fnFailed.error;
    }
    // Rolled back by the app's own `trx.rollback()`: knex settles there, and `fn` may go on. A throw of
    // it after that is reported (onHookError), not lost; the transaction does not wait for it (`fn`
    // may wait for the transaction's own callbacks, or its outcome).
    reportLateThrow(running, rollbackReason, onHookError, scope.tenantId);
    await runCallbacks(scope, hooks.rollback, onHookError);
    return result;
  }
  // Committed (or released) by the app's own `trx.commit()`, then `fn` threw: reported, not lost.
  reportLateThrow(running, undefined, onHookError, scope.tenantId);
  hooks.state = hooks.parent === undefined ? 'committed' : 'released';
  // A released savepoint's callbacks go where it began in its parent's lists (runTransaction).
  if (hooks.parent === undefined) await runCallbacks(scope, hooks.commit, onHookError);
  return result;
}

// knex's own transaction statements; a ROLLBACK still goes out once the transaction was aborted (it
// ends nothing then; knex ignores a ROLLBACK TO SAVEPOINT's "no such savepoint").
const CONTROL = /^(?:begin|start transaction|savepoint|release savepoint|rollback|commit)\b/i;
const ROLLBACK = /^rollback\b/i;

/**
 * After a statement of a transaction failed: whether the database rolled the whole transaction back
 * for it. InnoDB does on a deadlock (1213), a full lock table (1206), a read view conflict with
 * `innodb_snapshot_isolation` (1020, on by default from MariaDB 11.8), a lock wait timeout (1205)
 * with `innodb_rollback_on_timeout`, and more; SQLite on some I/O and full-disk errors. Its later
 * statements would run in autocommit, committed whatever the transaction's outcome (knex, MySQL: knex
 * #805's warning only, for the savepoint's ROLLBACK that then fails). The driver says whether it is
 * still open: better-sqlite3's `inTransaction`; mysql2's status flags of one more answer (an error
 * answer carries none). Not asked after a statement that commits the transaction itself before it
 * runs (MySQL's implicit commit: DDL, `LOCK TABLES`...), which is no rollback (knex #805). Rejects
 * with `error` in all cases.
 */
async function noteAborted(tx: TransactionState, conn: unknown, sql: unknown, error: unknown): Promise<never> {
  const driver = conn as { inTransaction?: unknown; serverStatus?: unknown; query?: unknown } | null;
  if (tx.aborted === undefined && driver !== null && typeof driver === 'object' && !(error as { fatal?: unknown } | null)?.fatal) {
    if (driver.inTransaction === false) tx.aborted = { error };
    else if (typeof driver.serverStatus === 'number' && typeof driver.query === 'function' && !commitsImplicitly(String(sql))) {
      try {
        await ask(driver as RawConnection, 'DO 0');
        if (((driver.serverStatus as number) & IN_TRANS) === 0) tx.aborted = { error };
      } catch {
        // The connection failed too: the transaction ends with it.
      }
    }
  }
  throw error;
}

// Statements MySQL/MariaDB commit the open transaction before (whether they then succeed or fail),
// read on the statement's first words with comments and runs of spaces removed. Not a temporary
// table's `CREATE`/`DROP` (a temporary sequence's does commit), not MariaDB's `ANALYZE <statement>`
// (it runs the statement), not a `SET autocommit` (inside a transaction knex opened it commits
// nothing on MariaDB).
const IMPLICIT_COMMIT =
  /^(?:(?:create|drop)\b(?! (?:or replace )?temporary table\b)|alter\b|rename\b|truncate\b|(?:un)?lock tables?\b|grant\b|revoke\b|(?:analyze|optimize|repair) (?:(?:no_write_to_binlog|local) )?tables?\b|check tables?\b|flush\b|reset\b|cache index\b|load index\b|install\b|uninstall\b|set password\b)/;

/** Whether MySQL/MariaDB commits the open transaction before `sql` runs (see IMPLICIT_COMMIT). */
function commitsImplicitly(sql: string): boolean {
  const words = statementStart(sql)
    .slice(0, 200)
    .replace(/\/\*[\s\S]*?\*\//g, ' ')
    .replace(/\s+/g, ' ')
    .trim()
    .toLowerCase();
  return IMPLICIT_COMMIT.test(words);
}
/** Reports a throw of `fn` after the app's own rollback (other than the error it rolled back with). */
function reportLateThrow(running: Promise<unknown> | undefined, reason: { error: unknown } | undefined, onHookError: HookErrorHandler, tenantId: string): void {
  void running?.catch((error: unknown) => {
    if (reason === undefined || error !== reason.error) reportSafely(onHookError, error, tenantId);
  });
}

/** Calls the app's `onHookError`; one that throws falls back to the default (no unhandled rejection). */
function reportSafely(onHookError: HookErrorHandler, error: unknown, tenantId: string): void {
  try {
    onHookError(error, tenantId);
  } catch {
    defaultHookError(error, tenantId);
  }
}

async function runCallbacks(scope: TenantScope, callbacks: Callback[], onHookError: HookErrorHandler): Promise<void> {
  for (const callback of callbacks) {
    try {
      await runInScope(scope, callback);
    } catch (error) {
      reportSafely(onHookError, error, scope.tenantId);
    }
  }
}

/**
 * Runs `fn` after the current tenant transaction commits, in the tenant's scope (outside the
 * transaction). Outside a transaction, `fn` runs at once, the typeorm-transactional convention; the
 * returned promise settles when it has run (inside a transaction: at once). It never rejects: a
 * failing `fn` goes to the tenancy's `onHookError`.
 * @example
 * await tenancy.transaction(async () => {
 *   const order = await Order.query().insert(input);
 *   onCommit(() => queue.add('receipt', withTenant({ orderId: order.id })));
 * });
 */
export function onCommit(fn: Callback): Promise<void> {
  const scope = currentScope();
  const hooks = openLevel(scope?.txHooks);
  // Registered after its transaction was rolled back, or lost in its COMMIT (work started in it, run
  // later): never runs.
  if (hooks === 'rolledBack' || hooks === 'unknown') return Promise.resolve();
  if (hooks === undefined) return runNow(scope, fn);
  hooks.commit.push(fn);
  return Promise.resolve();
}

/**
 * Runs `fn` after the current tenant transaction rolls back, in the tenant's scope. Outside a
 * transaction there is nothing to roll back and `fn` never runs.
 */
export function onRollback(fn: Callback): void {
  const scope = currentScope();
  const hooks = openLevel(scope?.txHooks);
  if (hooks === undefined || hooks === 'unknown') return;
  if (hooks !== 'rolledBack') {
    hooks.rollback.push(fn);
    return;
  }
  // Registered after its transaction was rolled back: it runs now, as it would have then.
  void runNow(scope, fn);
}

/**
 * Runs a callback that has no transaction to wait for. As inside a transaction, a failure goes to
 * onHookError and the promise resolves: callers do not await it (`onCommit(() => queue.add(...))`),
 * and a rejection would end the process.
 */
function runNow(scope: TenantScope | undefined, fn: Callback): Promise<void> {
  return Promise.resolve()
    .then(fn)
    .then(
      () => undefined,
      (error: unknown) => {
        const report = scope?.owner.reportHookError;
        if (report === undefined) defaultHookError(error, scope?.tenantId ?? '');
        else reportSafely((e, id) => report.call(scope!.owner, e, id), error, scope!.tenantId);
      },
    );
}

/**
 * The innermost level of `hooks` still open; `'rolledBack'` when the transaction the callbacks
 * would belong to was rolled back, `'unknown'` when its COMMIT's outcome was lost; `undefined` with
 * no transaction, or once the outermost committed.
 */
function openLevel(hooks: TransactionHooks | undefined): TransactionHooks | 'rolledBack' | 'unknown' | undefined {
  let level = hooks;
  while (level !== undefined && level.state !== 'open') {
    if (level.state === 'rolledBack' || level.state === 'unknown') return level.state;
    level = level.parent;
  }
  return level;
}

const warned = new Set<string>();

/**
 * @internal A knex `query` listener for development: warns, once per SQL statement, when a query runs
 * on the tenant's bare knex while a transaction is open in the same scope (it runs outside the
 * transaction: knex #1469, objection #809). The statement, not the call site, is the key: knex runs a
 * builder from a microtask, so no stack frame of the caller is left to report.
 */
export function warnOutsideTransaction(knex: Knex): (query: { __knexTxId?: string; sql?: string }) => void {
  return (query) => {
    const scope = currentScope();
    if (scope?.trx === undefined || query.__knexTxId !== undefined) return;
    // Its transactions have all ended: the query runs on the tenant's knex as it should (liveScope).
    if (scope.trx.isCompleted() && openTransactionScope(scope) === undefined) return;
    // A shared-pool tenant handle inherits from its server's knex, which is where the listener sits.
    if (scope.knex !== knex && Object.getPrototypeOf(scope.knex) !== knex) return;
    const sql = String(query.sql ?? '').slice(0, 200);
    if (warned.has(sql) || warned.size > 1000) return;
    warned.add(sql);
    process.emitWarning(
      `objection-tenancy: a query ran on tenant "${scope.tenantId}"'s knex outside the transaction open in its scope: ${sql}. ` +
        'Inside tenancy.transaction(), use tenancy.knex() (not a knex captured before) or model queries without an explicit knex, or pass trx.',
      'TenantTransactionWarning',
    );
  };
}
