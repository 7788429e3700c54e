import { AsyncLocalStorage } from 'node:async_hooks';
import type { Knex } from 'knex';
import { TenantContextMissingError } from './errors';
import type { TransactionHooks } from './transaction';

/** What the scope needs from its owner: the `Tenancy` that opened it. */
export interface ScopeOwner {
  /** Runs `fn` in a transaction of the current tenant, with the transaction in the scope. */
  transaction<T>(fn: (trx: Knex.Transaction) => T | PromiseLike<T>): Promise<Awaited<T>>;
  /** Reports a failed onCommit/onRollback callback (the app's `onHookError`). */
  reportHookError?(error: unknown, tenantId: string): void;
  /**
   * Opens a scope of `tenantId` with a lease on its connection (at once when it is cached, else a
   * promise); the caller gives the lease back when its code is done. Used to re-enter a tenant later
   * (bindTenant), when the connection of a scope captured earlier may have been closed since.
   */
  enterNow?(tenantId: string): ScopeLease | Promise<ScopeLease>;
}

/** A scope opened with a lease on its tenant's connection, and the function that gives the lease back. */
export interface ScopeLease {
  readonly scope: TenantScope;
  release(): void;
}

/**
 * The immutable store of one tenant scope. A nested scope replaces it; the outer one is back when the
 * inner returns or throws, because only `AsyncLocalStorage.run()` is used, never `enterWith()`
 * (which leaks into the caller's remaining synchronous code, see
 * https://nodejs.org/api/async_context.html#asynclocalstorageenterwithstore).
 */
export interface TenantScope {
  readonly owner: ScopeOwner;
  readonly tenantId: string;
  /** The tenant's knex (its own pool, or a handle on a shared pool). */
  readonly knex: Knex;
  /** The open transaction of `tenancy.transaction()` / `Model.transaction()`, if any. */
  readonly trx?: Knex.Transaction | undefined;
  /** onCommit/onRollback callbacks of the innermost open transaction level. */
  readonly txHooks?: TransactionHooks | undefined;
  /** This tenant of this tenancy, shared by the scope's transaction scopes (see TenantKey). */
  readonly key?: TenantKey | undefined;
  /**
   * Opened by `runWithTenant` inside a scope with a transaction (of another tenant): that scope, else
   * the `outer` of the scope it was opened in. Re-entering a tenant found here joins its transaction.
   */
  readonly outer?: TenantScope | undefined;
}

interface GlobalState {
  readonly storage: AsyncLocalStorage<TenantScope>;
  defaultOwner?: unknown;
  /** The default tenancy was destroyed, and no tenancy has been created since. */
  defaultDestroyed?: boolean;
  /** The tenant (of which tenancy) of each loaded or created instance (the instance guard). */
  instanceStamps?: WeakMap<object, TenantKey>;
  /** The tenant of each knex and transaction the library made for a scope (see connectionTenant). */
  connectionKeys?: WeakMap<object, TenantKey>;
  /** The model query whose SQL statement is being built now, by either copy (see model.ts). */
  building?: object | undefined;
}

// One storage per process, even when the package is loaded twice (CJS and ESM builds, or two
// versions in node_modules): two storages would make a scope opened by one invisible to the other.
const STATE_KEY = Symbol.for('objection-tenancy.state.v1');
const holder = globalThis as unknown as Record<symbol, GlobalState | undefined>;
const state: GlobalState = (holder[STATE_KEY] ??= { storage: new AsyncLocalStorage<TenantScope>() });

/** @internal The process-wide storage and default-tenancy slot. */
export const globalState = state;

const connectionTenants: WeakMap<object, TenantKey> = (state.connectionKeys ??= new WeakMap<object, TenantKey>());

/**
 * @internal A tenant of one tenancy: what the instance guard compares (two tenancies may both have a
 * tenant "acme", one database each). Tenancy makes one per scope it caches; compared by its fields.
 */
export interface TenantKey {
  readonly owner: ScopeOwner;
  readonly tenantId: string;
}

/** @internal The key of `scope`'s tenant. */
export function keyOf(scope: TenantScope): TenantKey {
  return scope.key ?? { owner: scope.owner, tenantId: scope.tenantId };
}

/** @internal Whether `key` is `scope`'s tenant. */
export function isKeyOf(key: TenantKey, scope: TenantScope): boolean {
  return key.tenantId === scope.tenantId && key.owner === scope.owner;
}

/**
 * @internal Records that `knex` (a tenant's knex or handle) is `key`'s tenant's, and so is every
 * transaction opened on it (knex's `client.transaction`: `knex.transaction()`, objection's
 * `Model.transaction()`/`startTransaction()`, `transactionProvider()`), so that rows a query loads
 * through one explicitly, outside its scope, are known as that tenant's (the instance guard).
 */
export function markConnection(knex: Knex, key: TenantKey): void {
  connectionTenants.set(knex, key);
  const client = knex.client as unknown as MarkedClient;
  if (Object.prototype.hasOwnProperty.call(client, CLIENT_KEY)) return;
  // Under string names: knex's withUserParams() copies a client's properties into the copy it makes
  // (symbols excepted, and WeakMap entries are not properties), so the copy stays marked.
  client[CLIENT_KEY] = key;
  // One function for every client, not a closure per tenant (a shared server's handles are many):
  // a transaction method of the client's own (inline switching sets one) is kept aside.
  if (Object.prototype.hasOwnProperty.call(client, 'transaction')) client[CLIENT_TRANSACTION] = client.transaction;
  client.transaction = markingTransaction;
}

const CLIENT_KEY = '__objectionTenancyKey';
const CLIENT_TRANSACTION = '__objectionTenancyTransaction';
type TransactionMethod = (this: unknown, container: unknown, ...rest: unknown[]) => unknown;
type MarkedClient = { transaction: TransactionMethod; [CLIENT_KEY]?: TenantKey; [CLIENT_TRANSACTION]?: TransactionMethod };

/** A marked client's `transaction`: marks the transaction knex hands its container (even in the promise form, `resolve`). */
function markingTransaction(this: unknown, container: unknown, ...rest: unknown[]): unknown {
  // `this` may be an object made from the client (Object.create): the marked client is up its chain.
  let client = this as MarkedClient;
  while (!Object.prototype.hasOwnProperty.call(client, 'transaction') || client.transaction !== markingTransaction) {
    client = Object.getPrototypeOf(client) as MarkedClient;
  }
  const key = client[CLIENT_KEY]!;
  const transaction = client[CLIENT_TRANSACTION] ?? (Object.getPrototypeOf(client) as MarkedClient).transaction;
  const marking =
    typeof container === 'function'
      ? (trx: object) => {
          connectionTenants.set(trx, key);
          return (container as (trx: object) => unknown)(trx);
        }
      : container;
  return transaction.call(this, marking, ...rest);
}

/**
 * @internal The tenant `markConnection` recorded for `knex` (or for the client a knex copy, such as
 * withUserParams()'s, shares), or for the transaction a savepoint (`trx.transaction()`) was opened
 * in; `undefined` for a connection the library did not make.
 */
export function connectionTenant(knex: object): TenantKey | undefined {
  for (let current: object | undefined = knex; current != null; current = (current as { parentTransaction?: object }).parentTransaction) {
    const key = connectionTenants.get(current);
    if (key !== undefined) return key;
  }
  return (knex as { client?: MarkedClient }).client?.[CLIENT_KEY];
}

/**
 * @internal `scope` with its innermost transaction that is still open (a savepoint ended inside an
 * open transaction leaves that one), or `undefined` when it has none open.
 */
export function openTransactionScope(scope: TenantScope | undefined): TenantScope | undefined {
  let current = scope;
  while (current?.trx !== undefined) {
    if (!current.trx.isCompleted()) return current;
    const parent = (current.trx as { parentTransaction?: Knex.Transaction }).parentTransaction;
    current = parent === undefined ? undefined : { ...current, trx: parent, txHooks: current.txHooks?.parent };
  }
  return undefined;
}

/**
 * @internal The scope, with its innermost transaction still open, of the first scope of `tenantId` of `owner`
 * among `from` and the scopes it was opened within (see TenantScope.outer); `undefined` when there is
 * none, or its transactions ended.
 */
export function openTransactionOf(from: TenantScope, owner: ScopeOwner, tenantId: string): TenantScope | undefined {
  for (let scope: TenantScope | undefined = from; scope !== undefined; scope = scope.outer) {
    if (scope.owner === owner && scope.tenantId === tenantId) return openTransactionScope(scope);
  }
  return undefined;
}

/**
 * @internal `scope` as work in it should see it now: after its transaction ended (a timer, a promise
 * or a listener started inside it and run later), its innermost transaction still open, else the
 * tenant's knex with no transaction, not the finished one (knex's untyped "Transaction query already
 * complete", and onCommit callbacks pushed where they never run).
 */
export function liveScope(scope: TenantScope): TenantScope {
  if (scope.trx === undefined || !scope.trx.isCompleted()) return scope;
  return openTransactionScope(scope) ?? { ...scope, trx: undefined, txHooks: undefined };
}

/** @internal The connection for a query in `scope` now: its open transaction, else the tenant's knex. */
export function liveConnection(scope: TenantScope): Knex {
  const trx = scope.trx;
  if (trx === undefined) return scope.knex;
  if (!trx.isCompleted()) return trx;
  return liveScope(scope).trx ?? scope.knex;
}

/** @internal The current scope, or `undefined`. */
export function currentScope(): TenantScope | undefined {
  return state.storage.getStore();
}

/**
 * @internal Runs `fn` inside `scope` and settles its result *inside* the scope, so that a thenable
 * returned by `fn` (an objection query builder) executes, hooks included, while the scope is active.
 */
export function runInScope<T>(scope: TenantScope, fn: () => T | PromiseLike<T>): Promise<Awaited<T>> {
  return state.storage.run(scope, settle, fn);
}

/**
 * @internal `promise`, with `cleanup()` run once it settles: what `finally` does, with one promise
 * (and no turn) where `finally` takes three.
 */
export function whenSettled<T>(promise: Promise<T>, cleanup: () => void): Promise<T> {
  return promise.then(
    (value) => {
      cleanup();
      return value;
    },
    (error: unknown) => {
      cleanup();
      throw error;
    },
  );
}

/**
 * `fn()` as a promise, as `(async () => await fn())()` gives it, with fewer promises and turns (each
 * promise costs AsyncLocalStorage's hooks on Node 20, once per query): a native promise as it is, a
 * thenable's `then` called at once, here, in the scope of the caller.
 */
function settle<T>(fn: () => T | PromiseLike<T>): Promise<Awaited<T>> {
  let result: T | PromiseLike<T>;
  try {
    result = fn();
  } catch (error) {
    return Promise.reject(error);
  }
  if (result instanceof Promise) return result as Promise<Awaited<T>>;
  if (result === null || (typeof result !== 'object' && typeof result !== 'function')) return Promise.resolve(result as Awaited<T>);
  const thenable = result;
  // A getter of `then` may throw: a rejection, as await gives. The executor's throws are caught too.
  return new Promise<Awaited<T>>((resolve, reject) => {
    const then = (thenable as PromiseLike<T>).then;
    if (typeof then === 'function') then.call(thenable, resolve as (value: T) => void, reject);
    else resolve(thenable as Awaited<T>);
  });
}

/**
 * @internal Runs synchronous `fn` inside `scope`, or with none. Not `storage.exit()` for none: on
 * Node 20 it disables the storage for the call, and a `run()` nested in `fn` (a runWithTenant, a
 * request's event rebound to its tenant) enables it again for good, so the rest of `fn` saw the
 * outer scope again (a tenant-less request's `finish` listener ran in the pipelined previous
 * request's tenant). `run(undefined)` sets none, and nested runs restore none.
 */
export function runInScopeSync<T>(scope: TenantScope | undefined, fn: () => T): T {
  return state.storage.run(scope as TenantScope, fn);
}

/**
 * The id of the current tenant.
 * @throws {TenantContextMissingError} outside any tenant scope.
 * @example
 * app.get('/whoami', (req, res) => res.json({ tenant: currentTenantId() }));
 */
export function currentTenantId(): string {
  const scope = state.storage.getStore();
  if (scope === undefined) throw new TenantContextMissingError();
  return scope.tenantId;
}

/** The id of the current tenant, or `undefined` outside any tenant scope. */
export function tryCurrentTenantId(): string | undefined {
  return state.storage.getStore()?.tenantId;
}
