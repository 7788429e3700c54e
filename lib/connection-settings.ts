import type { Knex } from 'knex';

// knex's own reading of a connection URL (knex parses it, not the driver): the database is the
// path as written (not percent-decoded), user and password are decoded, query values JSON-parsed.
// Whatever the library derives from a URL must name the database knex connects to.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const parseConnection = require('knex/lib/knex-builder/internal/parse-connection') as (url: string) => { connection: Record<string, unknown> };

/** @internal A connection URL as the object knex makes of it. */
export function knexConnectionObject(url: string): Record<string, unknown> {
  return { ...parseConnection(url).connection };
}

/**
 * A server's connection config with `settings` added (its `database`, say): an object (mysql2 lets
 * an explicit `database` win over a `uri`'s), a URL made the object knex reads from it (a database
 * name written into a URL path is ambiguous: `a b` and `a%20b` both become `a%20b`, which knex
 * reads as the second), or a function (sync or async, as knex accepts) whose result gets them.
 */
export function withConnectionSettings(connection: Knex.Config['connection'], settings: Record<string, unknown>): Knex.Config['connection'] {
  if (typeof connection === 'string') return { ...knexConnectionObject(connection), ...settings } as Knex.StaticConnectionConfig;
  if (typeof connection === 'function') {
    const provider = connection as () => unknown;
    return (async () => ({ ...((await provider()) as object), ...settings })) as unknown as Knex.Config['connection'];
  }
  return { ...(connection as object), ...settings } as Knex.StaticConnectionConfig;
}
