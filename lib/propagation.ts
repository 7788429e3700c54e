/**
 * Carrying the tenant scope across boundaries `AsyncLocalStorage` does not cross by itself.
 *
 * Promises, `await`, timers, `setImmediate`, `queueMicrotask`, `process.nextTick` and async iterators
 * keep the scope on their own. What does not: callbacks that a library stores and later calls from
 * *its own* async context. An `EventEmitter` listener runs in the context of whoever calls `emit()`
 * (https://nodejs.org/api/async_context.html#troubleshooting-context-loss), and a driver's stream or
 * socket events run in the context the connection was opened in, which can be another tenant's scope.
 */
import { currentScope, runInScopeSync } from './scope';

/**
 * Binds `fn` to the tenant scope that is current now: the returned function always runs in that
 * scope, whoever calls it and from wherever. Bound outside any scope, it always runs with no scope,
 * so tenant queries in it fail closed instead of borrowing the caller's tenant.
 *
 * Only this library's scope is captured and restored (not other `AsyncLocalStorage` stores); `this`,
 * the arguments and the return value are passed through unchanged.
 * @param fn The callback to bind: an event listener, a stream handler, a callback a library calls later.
 * @returns A function with the same signature as `fn`.
 * @throws {TypeError} when `fn` is not a function.
 * @example
 * // Inside a request of tenant "acme": the listener runs in acme even when another tenant emits.
 * bus.on('invoice.paid', bindTenant(async (invoice) => {
 *   await Audit.query().insert({ message: `paid ${invoice.id}` });
 * }));
 */
export function bindTenant<A extends unknown[], R, This = unknown>(
  fn: (this: This, ...args: A) => R,
): (this: This, ...args: A) => R {
  if (typeof fn !== 'function') throw new TypeError('bindTenant(fn): fn must be a function');
  // The store is immutable, so holding a reference is a faithful snapshot of the scope.
  const scope = currentScope();
  return function boundToTenant(this: This, ...args: A): R {
    return runInScopeSync(scope, () => fn.apply(this, args));
  };
}
