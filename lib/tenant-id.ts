import { InvalidTenantIdError } from './errors';

/** Default tenant id pattern: letters, digits, `_` and `-`, 1 to 63 characters (a safe database name part). */
export const DEFAULT_TENANT_ID_PATTERN = /^[A-Za-z0-9_-]{1,63}$/;

/** A tenant id check: a pattern, or a function that returns `true` for a valid id. */
export type TenantIdValidator = RegExp | ((id: string) => boolean);

/**
 * Checks an untrusted tenant id before anything touches a database or the catalog.
 * @returns the id, typed as a string.
 * @throws {InvalidTenantIdError} (HTTP 400) for anything but a string matching `validator`.
 */
export function validateTenantId(id: unknown, validator: TenantIdValidator = DEFAULT_TENANT_ID_PATTERN): string {
  if (typeof id !== 'string') {
    throw new InvalidTenantIdError(Array.isArray(id) ? 'more than one tenant id was given' : 'the tenant id must be a string');
  }
  if (id.length === 0) throw new InvalidTenantIdError('the tenant id is empty');
  const ok = typeof validator === 'function' ? validator(id) === true : matchWhole(validator, id);
  // The id is not echoed: it is untrusted input and may be 10 KB of anything.
  if (!ok) throw new InvalidTenantIdError('it does not match the allowed pattern (letters, digits, "_" and "-", at most 63 characters by default)');
  return id;
}

/** Each pattern's anchored copy (a pattern object is compiled once). */
const ANCHORED = new WeakMap<RegExp, RegExp>();

/**
 * Whether the whole id matches: an app's pattern is anchored here (`/[a-z]{3,20}/` alone would let
 * `../../etc/abc` through, into a file name or a database name), without `g` and `y` (their
 * `lastIndex` would make validation depend on the previous call) and without `m` (its `$` would end
 * the match at a line break).
 */
function matchWhole(pattern: RegExp, id: string): boolean {
  let anchored = ANCHORED.get(pattern);
  if (anchored === undefined) {
    anchored = new RegExp(`^(?:${pattern.source})$`, pattern.flags.replace(/[gmy]/g, ''));
    ANCHORED.set(pattern, anchored);
  }
  return anchored.test(id);
}
