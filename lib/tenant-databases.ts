/**
 * Built-in creation and removal of a tenant's database, used by `createTenant()` / `dropTenant()` when
 * the app gives no `createDatabase` / `dropDatabase` hook:
 * - MySQL/MariaDB (`mysql2`, `mysql`): `CREATE DATABASE` / `DROP DATABASE IF EXISTS` of the database
 *   named in `knexConfig(id).connection.database`, through an admin knex built from the same config
 *   without the database; the name is quoted as one identifier. The drop waits at most
 *   `lockWaitSeconds` for a lock on the database (a transaction of another process).
 * - SQLite (`better-sqlite3`, `sqlite3`): creates (exclusively) or removes the file named in
 *   `knexConfig(id).connection.filename`, with its `-wal`, `-shm` and `-journal` companions.
 */
import fs from 'node:fs';
import path from 'node:path';
import knexFactory, { type Knex } from 'knex';
import { configurationError, TenantAlreadyExistsError } from './operation-errors';
import { isNoSuchDatabase } from './errors';
import { boundedConnect, knexConnectionObject } from './connection-settings';
import { resolvedSqliteConfig } from './sqlite-files';

/** How a tenant's database is created and dropped. */
export interface TenantDatabaseHooks {
  create(tenantId: string, config: Knex.Config): Promise<void>;
  /** `lockWaitSeconds`: how long the built-in MySQL drop waits for the database's locks (lock_wait_timeout). */
  drop(tenantId: string, config: Knex.Config, lockWaitSeconds?: number): Promise<void>;
}

const MYSQL_CLIENTS = new Set(['mysql', 'mysql2']);
const SQLITE_CLIENTS = new Set(['better-sqlite3', 'sqlite3', 'sqlite']);
// ER_DB_CREATE_EXISTS
const DATABASE_EXISTS_ERRNO = 1007;

/** @internal Whether opening `config`'s database creates it when it is missing (an SQLite file). */
export function createdByOpening(config: Knex.Config): boolean {
  return typeof config.client === 'string' && SQLITE_CLIENTS.has(config.client);
}

/**
 * @internal Whether the SQLite file of `config` is there and holds no table: what a request's opening
 * creates (an empty file), never a tenant made again since, by another process (its migrations'
 * tables). Read through the driver (a file in WAL mode keeps its schema in its `-wal` at first), read
 * only. Any doubt (the file cannot be read) answers false: the file is kept.
 */
export async function sqliteHasNoTables(config: Knex.Config, createKnex: (config: Knex.Config) => Knex = knexFactory): Promise<boolean> {
  const resolved = await resolvedSqliteConfig(config);
  const connection = resolved.connection as { filename?: unknown; options?: Record<string, unknown> } | undefined;
  if (typeof connection?.filename !== 'string' || !fs.existsSync(connection.filename)) return false;
  const knex = createKnex({ ...resolved, connection: { ...connection, options: { ...connection.options, readonly: true } }, pool: { min: 0, max: 1 } } as Knex.Config);
  try {
    const rows = (await knex.raw('select count(*) as n from sqlite_master')) as unknown;
    const first = (Array.isArray(rows) ? rows[0] : undefined) as { n?: unknown } | undefined;
    return Number(first?.n) === 0;
  } catch {
    return false;
  } finally {
    await knex.destroy().catch(() => undefined);
  }
}

/**
 * @internal The built-in hooks for the client of `config`.
 * @throws {TypeError} for another client (PostgreSQL...), naming the options to give instead.
 */
export function builtInDatabaseHooks(config: Knex.Config, createKnex: (config: Knex.Config) => Knex = knexFactory, connectTimeoutMs = 10_000): TenantDatabaseHooks {
  const client = typeof config.client === 'string' ? config.client : undefined;
  if (client !== undefined && MYSQL_CLIENTS.has(client)) return mysqlHooks(createKnex, connectTimeoutMs);
  if (client !== undefined && SQLITE_CLIENTS.has(client)) return sqliteHooks;
  throw configurationError(
    `createTenant/dropTenant: no built-in way to create or drop a database for client ${JSON.stringify(client ?? 'custom')}: ` +
      'give the tenancy options.createDatabase(id, config) and options.dropDatabase(id, config)',
  );
}

type MySqlConnection = Knex.MySqlConnectionConfig & { database?: string };

async function mysqlConnectionOf(config: Knex.Config): Promise<{ admin: MySqlConnection; database: string }> {
  let connection: unknown = config.connection;
  if (typeof connection === 'function') connection = await (connection as () => unknown)();
  let admin: MySqlConnection;
  if (typeof connection === 'string') {
    // As knex reads it, so that the database created or dropped is the one the tenant's knex uses
    // (a decoded path would name another: `a%20b` is the database `a%20b` to knex, not `a b`).
    admin = knexConnectionObject(connection) as MySqlConnection;
  } else if (connection !== null && typeof connection === 'object') {
    admin = { ...(connection as MySqlConnection) };
  } else {
    throw configurationError('createTenant/dropTenant: knexConfig(id).connection must be an object or a URL to derive the database name');
  }
  const database = admin.database;
  if (typeof database !== 'string' || database === '') {
    throw configurationError('createTenant/dropTenant: knexConfig(id).connection.database is empty: it names the tenant database to create or drop');
  }
  delete admin.database;
  return { admin, database };
}

/** Runs `fn` on a knex of one connection to `config`'s server without its database, and the database's name. */
async function withMysqlAdmin<T>(config: Knex.Config, createKnex: (config: Knex.Config) => Knex, connectTimeoutMs: number, fn: (knex: Knex, database: string) => Promise<T>): Promise<T> {
  const { admin, database } = await mysqlConnectionOf(config);
  const knex = createKnex(boundedConnect({ acquireConnectionTimeout: connectTimeoutMs, ...config, connection: admin, pool: { min: 0, max: 1 } }, connectTimeoutMs));
  try {
    return await fn(knex, database);
  } finally {
    await knex.destroy();
  }
}

/**
 * @internal Whether `config`'s database exists (MySQL: the server lists it to the config's user;
 * SQLite: its file is there); `undefined` for a client the library cannot ask.
 */
export async function databaseExists(config: Knex.Config, createKnex: (config: Knex.Config) => Knex = knexFactory, connectTimeoutMs = 10_000): Promise<boolean | undefined> {
  const client = typeof config.client === 'string' ? config.client : undefined;
  if (client !== undefined && SQLITE_CLIENTS.has(client)) return fs.existsSync(sqliteFile(await resolvedSqliteConfig(config)));
  if (client === undefined || !MYSQL_CLIENTS.has(client)) return undefined;
  return withMysqlAdmin(config, createKnex, connectTimeoutMs, async (knex, database) => {
    const [rows] = await knex.raw('select 1 as found from information_schema.schemata where schema_name = ?', [database]);
    return (rows as unknown[]).length > 0;
  });
}

function mysqlHooks(createKnex: (config: Knex.Config) => Knex, connectTimeoutMs: number): TenantDatabaseHooks {
  const withAdmin = async (config: Knex.Config, fn: (knex: Knex, database: string) => Promise<unknown>): Promise<void> => {
    await withMysqlAdmin(config, createKnex, connectTimeoutMs, fn);
  };
  return {
    create: (tenantId, config) =>
      withAdmin(config, async (knex, database) => {
        try {
          await knex.raw(`CREATE DATABASE ${quoted(database)}`);
        } catch (error) {
          if ((error as { errno?: unknown }).errno === DATABASE_EXISTS_ERRNO) throw new TenantAlreadyExistsError(tenantId, { cause: error });
          throw error;
        }
      }),
    drop: (_tenantId, config, lockWaitSeconds) =>
      withAdmin(config, async (knex, database) => {
        // DROP DATABASE waits for every metadata lock on its tables, lock_wait_timeout long (a day by
        // default): a transaction left open on them elsewhere would hold dropTenant that long. Set on
        // the admin knex's one connection.
        if (lockWaitSeconds !== undefined) await knex.raw(`SET SESSION lock_wait_timeout = ${Math.max(1, Math.ceil(lockWaitSeconds))}`);
        try {
          await knex.raw(`DROP DATABASE IF EXISTS ${quoted(database)}`);
        } catch (error) {
          // A name the server refuses (1102: too long) cannot be a database: nothing to drop, and the
          // tenant can still be unregistered.
          if (!isNoSuchDatabase(error)) throw error;
        }
      }),
  };
}

/**
 * A database name as one identifier. knex's `??` reads a dot as schema.table and ` as ` as an alias
 * (`a.b` became `` `a`.`b` ``, a syntax error), and a database name is one name whatever it holds.
 */
function quoted(database: string): string {
  return `\`${database.replace(/`/g, '``')}\``;
}

function sqliteFile(config: Knex.Config): string {
  const connection = config.connection as { filename?: unknown } | undefined;
  const filename = connection?.filename;
  if (typeof filename !== 'string' || filename === '' || filename === ':memory:') {
    throw configurationError('createTenant/dropTenant: knexConfig(id).connection.filename must name the SQLite file of the tenant');
  }
  return filename;
}

const sqliteHooks: TenantDatabaseHooks = {
  async create(tenantId, config) {
    const file = sqliteFile(await resolvedSqliteConfig(config));
    fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    try {
      // 'wx' fails when the file exists: never adopt (and later undo) somebody else's database.
      fs.closeSync(fs.openSync(file, 'wx'));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw new TenantAlreadyExistsError(tenantId, { cause: error });
      throw error;
    }
  },
  async drop(_tenantId, config) {
    const file = sqliteFile(await resolvedSqliteConfig(config));
    for (const suffix of ['', '-wal', '-shm', '-journal']) {
      try {
        fs.rmSync(`${file}${suffix}`, { force: true });
      } catch (error) {
        // A name the file system refuses (too long) cannot be a file: nothing to drop, as MySQL's 1102.
        if ((error as NodeJS.ErrnoException).code !== 'ENAMETOOLONG') throw error;
      }
    }
  },
};
