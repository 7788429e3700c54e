import type { Knex } from 'knex';

// knex's own reading of a connection URL (knex parses it, not the driver): the database is the
// path as written (not percent-decoded), user and password are decoded, query values JSON-parsed.
// Whatever the library derives from a URL must name the database knex connects to.
const parseConnection = knexUrlParser();

/** @internal A connection URL as the object knex makes of it. */
export function knexConnectionObject(url: string): Record<string, unknown> {
  return { ...parseConnection(url).connection };
}

type UrlParser = (url: string) => { connection: Record<string, unknown> };

/**
 * knex's own parser (an internal module: knex 3 has no exports map), or, should a knex version not
 * have it there, the same reading for MySQL URLs: the path as written, user and password decoded,
 * query values JSON-parsed where they parse.
 */
function knexUrlParser(): UrlParser {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const parser = require('knex/lib/knex-builder/internal/parse-connection') as unknown;
    if (typeof parser === 'function') return parser as UrlParser;
  } catch {
    // Not there: the reading below.
  }
  return (url) => {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      // Not a URL: knex reads it as an SQLite file name.
      return { connection: { filename: url } };
    }
    const connection: Record<string, unknown> = { database: parsed.pathname.replace(/^\//, '') };
    if (parsed.hostname !== '') connection.host = parsed.hostname;
    if (parsed.port !== '') connection.port = parsed.port;
    if (parsed.username !== '' || parsed.password !== '') connection.user = decodeURIComponent(parsed.username);
    if (parsed.password !== '') connection.password = decodeURIComponent(parsed.password);
    // JSON values for the protocols knex reads them for, strings for the others (`mysql2:` too).
    const nested = ['mysql:', 'mariadb:', 'mssql:'].includes(parsed.protocol);
    for (const [key, value] of parsed.searchParams) {
      try {
        connection[key] = nested ? JSON.parse(value) : value;
      } catch {
        connection[key] = value;
      }
    }
    return { connection };
  };
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

/**
 * @internal `config` whose MySQL connections give up connecting after `ms` (mysql2's `connectTimeout`,
 * 10 s by default) unless it sets its own: an operation's knex is closed at its end, and closing
 * waits for a connection still being opened, so a server that accepts connections and never answers
 * would hold each tenant's operation for the driver's time rather than acquireTimeoutMs; and a
 * serving pool's attempt would hold its unit of the budget (`maxConnections`) as long.
 */
export function boundedConnect(config: Knex.Config, ms: number): Knex.Config {
  const { client, connection } = config;
  if (client !== 'mysql2' && client !== 'mysql') return config;
  // Not over a connectTimeout of the config's own, nor over a `uri` (whose own would lose to an explicit option).
  const bounded = (settings: unknown): unknown =>
    settings !== null && typeof settings === 'object' && (settings as { connectTimeout?: unknown }).connectTimeout === undefined && !('uri' in settings) ? { ...settings, connectTimeout: ms } : settings;
  // A URL as knex reads it (its own settings kept); a connection provider's answer, each time.
  if (typeof connection === 'string') return { ...config, connection: bounded(knexConnectionObject(connection)) as Knex.StaticConnectionConfig };
  if (typeof connection === 'function') {
    const provider = connection as (this: unknown) => unknown;
    // Called as knex calls it, with the client as `this`.
    return { ...config, connection: async function (this: unknown) { return bounded(await provider.call(this)); } as unknown as Knex.Config['connection'] };
  }
  return { ...config, connection: bounded(connection) as Knex.Config['connection'] };
}

