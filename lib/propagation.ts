/**
 * Carrying the tenant scope across boundaries `AsyncLocalStorage` does not cross by itself.
 *
 * Promises, `await`, timers, `setImmediate`, `queueMicrotask`, `process.nextTick` and async iterators
 * keep the scope on their own. What does not: callbacks that a library stores and later calls from
 * *its own* async context. An `EventEmitter` listener runs in the context of whoever calls `emit()`
 * (https://nodejs.org/api/async_context.html#troubleshooting-context-loss), and a driver's stream or
 * socket events run in the context the connection was opened in, which can be another tenant's scope.
 */
import { pinOutsideScopes } from './model';
import { currentScope, openTransactionOf, openTransactionScope, runInScope, runInScopeSync, type ScopeLease, type TenantScope } from './scope';

/**
 * Binds `fn` to the tenant scope that is current now: the returned function always runs in that
 * tenant's scope, whoever calls it and from wherever. Bound outside any scope, it always runs with no
 * scope, so tenant queries in it fail closed instead of borrowing the caller's tenant.
 *
 * Each call enters the tenant again, with a lease on its connection held until `fn` returns (or the
 * promise it returns settles), as `runWithTenant` does: a listener outlives the request that bound
 * it, and the tenant's pool may have been closed since (idle, evicted, `forget()`, moved to another
 * server). When that connection has to be opened again first, the call waits for it and returns a
 * promise of `fn`'s result. Bound inside a transaction, it runs in that transaction while it is open
 * (after a savepoint, in the transaction around it), and in the tenant's scope once it has ended;
 * called inside an open transaction of its own tenant (and not bound in one still open), it runs in
 * that transaction, as `runWithTenant` of that tenant would there.
 *
 * A generator function (`function*`, `async function*`) runs none of its body when called: bound,
 * it returns its generator at once, and each `next()`, `throw()` and `return()` runs in the tenant's
 * scope (an async step with a lease until it settles). Bind the generator function itself: a plain
 * function that returns a generator made by another is handled the same way only when the tenant's
 * connection is open (otherwise its result is a promise of the generator, as for any function).
 *
 * Only this library's scope is captured and restored (not other `AsyncLocalStorage` stores); `this`,
 * the arguments and the return value are passed through unchanged.
 * @param fn The callback to bind: an event listener, a stream handler, a callback a library calls later.
 * @returns A function with the same parameters as `fn`, returning its result, or a promise of it
 *   when the tenant's connection had to be opened again first.
 * @throws {TypeError} when `fn` is not a function.
 * @example
 * // Inside a request of tenant "acme": the listener runs in acme even when another tenant emits.
 * bus.on('invoice.paid', bindTenant(async (invoice) => {
 *   await Audit.query().insert({ message: `paid ${invoice.id}` });
 * }));
 */
export function bindTenant<A extends unknown[], G extends AnyGenerator, This = unknown>(fn: (this: This, ...args: A) => G): (this: This, ...args: A) => G;
export function bindTenant<A extends unknown[], R, This = unknown>(fn: (this: This, ...args: A) => R): (this: This, ...args: A) => R | Promise<Awaited<R>>;
export function bindTenant<A extends unknown[], R, This = unknown>(
  fn: (this: This, ...args: A) => R,
): (this: This, ...args: A) => R | Promise<Awaited<R>> {
  if (typeof fn !== 'function') throw new TypeError('bindTenant(fn): fn must be a function');
  // The store is immutable, so holding a reference is a faithful snapshot of the scope.
  const scope = currentScope();
  // A generator function's call runs none of its body (each next() does): the call makes the
  // generator at once, in the scope, and its steps run in the scope.
  if (isGeneratorFunction(fn)) {
    return function boundGenerator(this: This, ...args: A): R {
      return stepsInScope(scope, runInScopeSync(syncScopeOf(scope), () => fn.apply(this, args)));
    };
  }
  return function boundToTenant(this: This, ...args: A): R | Promise<Awaited<R>> {
    const result = inScopeOf(scope, () => fn.apply(this, args));
    return result instanceof Promise ? result : stepsInScope(scope, result);
  };
}

/** A generator, sync or async: a bound generator function returns it at once (see stepsInScope). */
export type AnyGenerator = Generator<unknown, unknown, never> | AsyncGenerator<unknown, unknown, never>;

function isGeneratorFunction(fn: unknown): boolean {
  const kind = Object.prototype.toString.call(fn);
  return kind === '[object GeneratorFunction]' || kind === '[object AsyncGeneratorFunction]';
}

/**
 * A generator (sync or async) whose body runs, step by step, in `scope`: `next()`, `throw()` and
 * `return()` run there, each async step with a lease on the tenant's connection until it settles
 * (see inScopeOf). Left to itself, its body would run in the scope of whoever iterates it.
 * Anything else is returned as it is.
 */
function stepsInScope<R>(scope: TenantScope | undefined, result: R): R {
  const kind = Object.prototype.toString.call(result);
  if (kind !== '[object Generator]' && kind !== '[object AsyncGenerator]') return result;
  const generator = result as unknown as Record<'next' | 'throw' | 'return', (value?: unknown) => unknown>;
  const sync = kind === '[object Generator]';
  const step = (method: 'next' | 'throw' | 'return') => (value?: unknown) => {
    const call = () => generator[method]!.call(generator, value);
    // A sync step cannot wait for the tenant's connection to be opened again: it runs in the scope as
    // it was bound, where the queries it builds run on that connection when awaited.
    return sync ? runInScopeSync(syncScopeOf(scope), call) : inScopeOf(scope, call);
  };
  // Inherits from the generator's own prototype: a Generator (or AsyncGenerator) still, for
  // `Symbol.toStringTag`, its iterator symbol and the iterator helpers; its steps are these.
  const wrapped = Object.create(Object.getPrototypeOf(generator) as object) as Record<string, unknown>;
  for (const method of ['next', 'throw', 'return'] as const) {
    Object.defineProperty(wrapped, method, { value: step(method), configurable: true, writable: true });
  }
  return wrapped as unknown as R;
}

/** Runs `call` in `scope`'s tenant as it is now (see bindTenant); with no scope, with none. */
function inScopeOf<R>(scope: TenantScope | undefined, call: () => R): R | Promise<Awaited<R>> {
  const open = openTransactionScope(scope);
  const enter = scope?.owner.enterNow;
  // In a transaction still open, the scope that opened it holds the lease, so its connection too.
  if (scope === undefined) {
    // Bound outside any scope: a query builder it returns, which the caller runs by awaiting it,
    // runs with no scope too (and fails closed) instead of in the caller's tenant.
    const result = runInScopeSync(undefined, call);
    pinOutsideScopes(result);
    return result;
  }
  // Called inside an open transaction of its own tenant (bound outside one, or in one that has
  // ended): it joins that transaction, as runWithTenant does there. On the tenant's own connection
  // its writes committed apart from the transaction, or on SQLite's one connection waited for it
  // until the acquire timeout.
  // Bound in a transaction still open and called inside one of its savepoints (deeper): it runs in
  // that savepoint, as a query builder built out there and awaited in it does; run out there, its
  // writes were outside the savepoint though sent while it was open, which its rollback undoes.
  const joined = joinedTransaction(scope, open);
  // With a lease on the tenant's connection until the call settles, as when it enters the tenant
  // again (below): work of it that outlives the caller's transaction must not find its pool closed.
  if (joined !== undefined) return leased(enter === undefined ? undefined : () => enter.call(scope.owner, scope.tenantId), () => runInScopeSync(joined, call));
  if (open !== undefined || enter === undefined) return runInScopeSync(open ?? scope, call);
  let entered: ScopeLease | Promise<ScopeLease>;
  try {
    entered = enter.call(scope.owner, scope.tenantId);
  } catch {
    // The tenancy is gone (destroy()): as before, in the scope it was bound in, where work that needs
    // no connection still runs and queries fail typed.
    return runInScopeSync(scope, call);
  }
  // Bound in a scope opened inside another tenant's transaction: the new scope keeps that chain, so
  // that re-entering that tenant from here joins its transaction as it would have there.
  const chained = (current: TenantScope): TenantScope => (scope.outer === undefined ? current : { ...current, outer: scope.outer });
  if (entered instanceof Promise) {
    // When the tenant cannot be entered again (catalog or server down, tenant dropped), `fn` runs in
    // the scope it was bound in, as before: work that needs no connection goes on, its queries fail
    // typed. The library adds no rejection of its own, which an emitter would leave unhandled.
    return entered.then(
      ({ scope: current, release }) => runInScope(chained(current), call).finally(release),
      () => runInScope(scope, call),
    );
  }
  const current = chained(entered.scope);
  return releasingAfter(entered.release, () => runInScopeSync(current, call));
}

/**
 * Runs `run`, then calls `release`: when its result settles if it is a promise. The caller gets a
 * promise that settles the same way, so a rejection nobody handles is still reported. Any other
 * thenable (a query builder) is not touched: calling its then() would run it, and the caller runs
 * it; it runs on the connection it was built on.
 */
function releasingAfter<R>(release: () => void, run: () => R): R | Promise<Awaited<R>> {
  let result: R;
  try {
    result = run();
  } catch (error) {
    release();
    throw error;
  }
  if (result instanceof Promise) return result.finally(release) as Promise<Awaited<R>>;
  release();
  return result;
}

/**
 * The caller's open transaction of `scope`'s tenant (of its tenancy), found as runWithTenant finds
 * one: the caller's own scope of that tenant, else the scopes it was opened within.
 */
function callersTransaction(scope: TenantScope): TenantScope | undefined {
  const current = currentScope();
  if (current === undefined) return undefined;
  if (current.owner === scope.owner && current.tenantId === scope.tenantId) return openTransactionScope(current);
  const chain = current.trx !== undefined ? current : current.outer;
  const open = chain === undefined ? undefined : openTransactionOf(chain, scope.owner, scope.tenantId);
  return open === undefined || open.outer === chain ? open : { ...open, outer: chain };
}

/** Whether `inner`'s transaction level is `outer`'s or one of its savepoints (same transaction). */
function within(inner: TenantScope, outer: TenantScope): boolean {
  for (let level = inner.txHooks; level !== undefined; level = level.parent) if (level === outer.txHooks) return true;
  return false;
}

/** The caller's transaction a call of a function bound in `scope` joins (see inScopeOf), if any. */
function joinedTransaction(scope: TenantScope, open: TenantScope | undefined): TenantScope | undefined {
  const callers = callersTransaction(scope);
  if (open === undefined) return callers;
  return callers !== undefined && within(callers, open) ? callers : undefined;
}

/**
 * The scope a synchronous step of a bound generator runs in: the transaction it joins (as
 * inScopeOf's), else the one it was bound in while open, else its own scope. It cannot wait for the
 * tenant's connection to be opened again.
 */
function syncScopeOf(scope: TenantScope | undefined): TenantScope | undefined {
  if (scope === undefined) return undefined;
  const open = openTransactionScope(scope);
  return joinedTransaction(scope, open) ?? open ?? scope;
}

/** Runs `run` holding a lease taken with `take` (when it can be) until its result settles. */
function leased<R>(take: (() => ScopeLease | Promise<ScopeLease>) | undefined, run: () => R): R | Promise<Awaited<R>> {
  let lease: ScopeLease | Promise<ScopeLease> | undefined;
  try {
    lease = take?.();
  } catch {
    // The tenancy is gone (destroy()): the call runs all the same, as it does unleased.
  }
  const release = () => {
    if (lease instanceof Promise) void lease.then((taken) => taken.release(), () => undefined);
    else lease?.release();
  };
  return releasingAfter(release, run);
}
