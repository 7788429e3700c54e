import type { Knex } from 'knex';

/**
 * knex (3.3) logs every failed connection acquire through its logger's `warn`: "Acquire connection
 * error: " and the error's stack, on stdout unless the config's `log.warn` says otherwise. The
 * library's own refusals (the connection budget under `overflow: 'reject'` or past its wait, a pool
 * closed under a waiting query, a tenant file gone) reach the caller as typed errors all the same, so
 * logged too they are only noise: a stack per refused query, tens of thousands of lines a second
 * under the overload 'reject' is there to shed, written by the process that is shedding load.
 * Those lines are dropped here; every other acquire failure (a refused connection, a bad password, a
 * timeout) and every other warning still goes to the app's `log.warn` or knex's default output.
 */
const LIBRARY_REFUSAL = /^Acquire connection error: (?:TenantUnavailableError|UnknownTenantError|TenancyDestroyedError): /;

export function quietLibraryRefusals(knex: Knex): void {
  const logger = (knex.client as { logger?: { warn?: (message: unknown) => void } }).logger;
  const warn = logger?.warn;
  if (logger === undefined || typeof warn !== 'function') return;
  logger.warn = function (this: unknown, message: unknown) {
    if (typeof message === 'string' && LIBRARY_REFUSAL.test(message)) return;
    warn.call(this, message);
  };
}
