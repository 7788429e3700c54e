import type { Knex } from 'knex';

/**
 * A server's connection config with `settings` added (its `database`, say), in the form the server
 * gave it: an object (mysql2 lets an explicit `database` win over a `uri`'s), a URL (its path is the
 * database, other settings go in its query, which mysql2 reads as options), or a function (sync or
 * async, as knex accepts) whose result gets them.
 */
export function withConnectionSettings(connection: Knex.Config['connection'], settings: Record<string, unknown>): Knex.Config['connection'] {
  if (typeof connection === 'string') {
    const url = new URL(connection);
    for (const [key, value] of Object.entries(settings)) {
      if (key === 'database') url.pathname = `/${String(value)}`;
      else url.searchParams.set(key, JSON.stringify(value));
    }
    return url.toString();
  }
  if (typeof connection === 'function') {
    const provider = connection as () => unknown;
    return (async () => ({ ...((await provider()) as object), ...settings })) as unknown as Knex.Config['connection'];
  }
  return { ...(connection as object), ...settings } as Knex.StaticConnectionConfig;
}
