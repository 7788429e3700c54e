/**
 * Tenant SQLite files served by a pool per tenant. Opening a missing file makes the driver create an
 * empty one: a request for a tenant dropped by another process would leave a database with no
 * tables that keeps `createTenant` from creating the id again. And a pool's connection keeps reading
 * a file unlinked under it (another process dropped the tenant, or dropped and created it again),
 * while its writes fail with `SQLITE_READONLY_DBMOVED`. So a serving pool opens only an existing
 * file, remembers which file it opened (device and inode), and is retired once the file at its path
 * is another one or gone.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Knex } from 'knex';
import { InvalidTenantIdError, TenantUnavailableError, UnknownTenantError } from './errors';

const SQLITE_CLIENTS = new Set(['better-sqlite3', 'sqlite3', 'sqlite']);

/**
 * How often a cached pool's file is compared with the one at its path, at most, per tenant: on a
 * lease, one `fs.statSync` (about 2 µs) per tenant per interval, never per query.
 */
export const FILE_RECHECK_MS = 1_000;

interface TenantFile {
  readonly path: string;
  /** The device and inode of the file the pool's first connection opened. */
  dev: number;
  ino: number;
  opened: boolean;
  /** A write failed with SQLITE_READONLY_DBMOVED: the file was unlinked under the pool. */
  moved: boolean;
}

const FILES = new WeakMap<Knex, TenantFile>();

/**
 * The file a tenant's SQLite config opens, or `undefined` (another client, `:memory:`, a URI, a
 * connection function not resolved with `resolvedSqliteConfig`).
 */
function fileOf(config: Knex.Config): { path: string; mustExist: boolean } | undefined {
  if (typeof config.client !== 'string' || !SQLITE_CLIENTS.has(config.client)) return undefined;
  const connection = config.connection as { filename?: unknown; options?: { fileMustExist?: unknown } } | undefined;
  const filename = connection?.filename;
  if (!onDisk(filename, config.client)) return undefined;
  // better-sqlite3's own option; knex does not pass it on, so it is honoured here (for sqlite3 too).
  // Absolute, as of the pool's opening: a later `process.chdir()` does not move the tenant's file.
  return { path: path.resolve(filename), mustExist: connection?.options?.fileMustExist !== false };
}

/**
 * A filename naming a file on disk: not empty, `:memory:` or a `file:` URI. better-sqlite3 is built
 * without URI filenames (SQLITE_USE_URI=0): it opens `file:x.db` as a file of that name, which is
 * then checked as any other (it was not: a file and a pool were made for every unknown tenant).
 */
function onDisk(filename: unknown, client: unknown): filename is string {
  return typeof filename === 'string' && filename !== '' && filename !== ':memory:' && (client === 'better-sqlite3' || !filename.startsWith('file:'));
}

/**
 * @internal For an SQLite client, `config` with its connection function (knex's dynamic form,
 * `connection: () => ({ filename })`) called and its filename made absolute: what the tenant's pool
 * opens and the file checks read. Any other config as it is.
 */
export async function resolvedSqliteConfig(config: Knex.Config): Promise<Knex.Config> {
  if (typeof config.client !== 'string' || !SQLITE_CLIENTS.has(config.client)) return config;
  const connection = (typeof config.connection === 'function' ? await (config.connection as () => unknown)() : config.connection) as { filename?: unknown } | undefined;
  const filename = connection?.filename;
  // Absolute, as of now: a later `process.chdir()` moves neither the checks nor the file knex opens.
  const absolute = onDisk(filename, config.client) ? path.resolve(filename) : filename;
  if (connection === config.connection && absolute === filename) return config;
  return { ...config, connection: { ...connection, filename: absolute } as Knex.Config['connection'] };
}

// SQLite's own files beside a database `x`: `x-journal`, `x-wal`, `x-shm`.
const SIDE_FILE = /-(?:journal|wal|shm)$/i;

/**
 * @internal Refuses a tenant whose SQLite file is named like another database's side file (a
 * template with no extension, `path.join(dir, id)`, gives tenant `acme-journal` the file SQLite
 * uses as tenant `acme`'s rollback journal: acme's writes overwrite and delete it, and its drop
 * removes it). Nothing for another client.
 * @throws {InvalidTenantIdError}
 */
export function refuseSideFileName(config: Knex.Config): void {
  const found = fileOf(config);
  if (found !== undefined && SIDE_FILE.test(found.path)) {
    throw new InvalidTenantIdError("its SQLite file would be named like another tenant's side file (-journal, -wal, -shm); give the files an extension in knexConfig");
  }
}

/**
 * @internal Refuses a tenant whose SQLite file is missing before its knex is even built (no pool,
 * no knex warning); `watchTenantFile` checks again before each connection.
 * @throws {UnknownTenantError} when the file is missing and the config does not allow creating it.
 */
export function checkTenantFile(config: Knex.Config, tenantId: string): void {
  refuseSideFileName(config);
  const found = fileOf(config);
  if (found !== undefined && found.mustExist && !fs.existsSync(found.path)) throw new UnknownTenantError(tenantId);
}

/**
 * @internal Watches the SQLite file of a tenant's new knex (nothing for another client): each new
 * connection opens the file only if it exists (else `UnknownTenantError`, and no file is created,
 * unless the config sets `connection.options.fileMustExist: false`), the first one records which
 * file it is, and a query failing with `SQLITE_READONLY_DBMOVED` fails with a `TenantUnavailableError`
 * (503) after `onMoved()`, which retires the pool.
 */
export function watchTenantFile(knex: Knex, config: Knex.Config, tenantId: string, onMoved: () => void): void {
  const found = fileOf(config);
  if (found === undefined) return;
  const file: TenantFile = { path: found.path, dev: 0, ino: 0, opened: false, moved: false };
  FILES.set(knex, file);
  const client = knex.client as Knex.Client & { acquireRawConnection(): Promise<unknown> };
  const acquireRaw = client.acquireRawConnection.bind(client);
  client.acquireRawConnection = async () => {
    let stat: fs.Stats | undefined;
    try {
      stat = fs.statSync(file.path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      if (found.mustExist) throw new UnknownTenantError(tenantId, { cause: error });
    }
    const connection = await acquireRaw();
    if (!file.opened) {
      try {
        // Read before the open: a file swapped in between is taken for a replaced one, and reopened.
        stat ??= fs.statSync(file.path);
      } catch (error) {
        // Removed as it was opened: the connection is closed, not left outside the pool.
        await Promise.resolve(client.destroyRawConnection(connection as never)).catch(() => undefined);
        throw new UnknownTenantError(tenantId, { cause: error });
      }
      file.dev = stat.dev;
      file.ino = stat.ino;
      file.opened = true;
    }
    return connection;
  };
  movedFailsTyped(client, tenantId, file, () => {
    file.moved = true;
    onMoved();
  });
}

/**
 * @internal Checks again, right before the driver opens a connection, that a tenant's SQLite file
 * still exists (see watchTenantFile, which checks before the budget's wait): removed by another
 * process while the opening waited for a unit of `maxConnections`, it would otherwise be created
 * empty by better-sqlite3, and served from then on. Nothing for another client, or a config that
 * allows creating the file.
 */
export function refuseMissingFileAtOpen(knex: Knex, config: Knex.Config, tenantId: string): void {
  const found = fileOf(config);
  if (found === undefined || !found.mustExist) return;
  const client = knex.client as Knex.Client & { acquireRawConnection(): Promise<unknown> };
  const open = client.acquireRawConnection.bind(client);
  client.acquireRawConnection = () => (fs.existsSync(found.path) ? open() : Promise.reject(new UnknownTenantError(tenantId)));
}

/**
 * @internal Whether the file a knex opened is no longer the one at its path (replaced, removed, or
 * moved under a write); `undefined` for a knex with no watched file, which never needs the check.
 */
export function fileReplaced(knex: Knex): boolean | undefined {
  const file = FILES.get(knex);
  if (file === undefined) return undefined;
  if (file.moved) return true;
  if (!file.opened) return false;
  try {
    const stat = fs.statSync(file.path);
    return stat.ino !== file.ino || stat.dev !== file.dev;
  } catch {
    return true;
  }
}

type QueryFn = (this: Knex.Client, connection: unknown, query: unknown) => Promise<unknown>;

/**
 * The client's `_query`, and its transactions' (knex builds a transaction's client from
 * `client.constructor.prototype`, see makeTxClient), turn `SQLITE_READONLY_DBMOVED` into a 503, and
 * end a transaction whose COMMIT failed (see endFailedCommit).
 */
function movedFailsTyped(client: Knex.Client, tenantId: string, file: TenantFile, onMoved: () => void): void {
  const driverPrototype = (client.constructor as { prototype: { _query: QueryFn } }).prototype;
  const query = driverPrototype._query;
  const moved = (cause?: unknown) => {
    onMoved();
    return new TenantUnavailableError(tenantId, { cause, reason: 'its SQLite file was removed or replaced while its pool was open; the pool is closed, retry' });
  };
  const typed: QueryFn = function (connection, obj) {
    let refused = walWriteToReplacedFile(connection, obj, file);
    // A RELEASE is checked for the file replaced (the RELEASE of a top-level SAVEPOINT commits; one
    // inside BEGIN commits nothing, and its COMMIT is refused too), but not refused when the file
    // cannot be read: a nested one refused so while its transaction commits would report a write lost
    // that was saved.
    if (refused === 'unverified' && RELEASE.test(String((obj as { sql?: unknown } | null)?.sql))) refused = undefined;
    if (refused !== undefined) {
      // A refused COMMIT ends its transaction here too (see endFailedCommit).
      endFailedCommit(connection, obj);
      if (refused === 'moved') return Promise.reject(moved());
      return Promise.reject(new TenantUnavailableError(tenantId, { reason: 'its SQLite file could not be checked before a write' }));
    }
    return query.call(this, connection, obj).catch((error: unknown) => {
      endFailedCommit(connection, obj);
      if (!isMoved(error)) throw error;
      throw moved(error);
    });
  };
  const prototype = Object.create(driverPrototype) as Record<string, unknown>;
  prototype._query = typed;
  const transactionClass = { prototype };
  Object.defineProperty(prototype, 'constructor', { value: transactionClass, configurable: true, writable: true });
  (client as unknown as Record<string, unknown>)._query = typed;
  Object.defineProperty(client, 'constructor', { value: transactionClass, configurable: true, writable: true });
}

const RELEASE = /^\s*release\b/i;

/** Statements that write nothing: not checked (see walWriteToReplacedFile). Not RELEASE: that of a top-level SAVEPOINT commits. */
const READS = /^\s*(?:select|explain|begin|savepoint|rollback)\b/i;

/**
 * In WAL mode SQLite raises no `SQLITE_READONLY_DBMOVED`: a connection on a file unlinked under it
 * (another process dropped the tenant, or dropped and created it again) writes into the unlinked
 * file's WAL, reports success, and the write is lost. So every statement that may write (and every
 * COMMIT) first compares the file at the tenant's path with the one the pool opened: one
 * `fs.statSync` (about 2 µs) per write (a `WITH` or a `PRAGMA` may write: checked too). In every
 * journal mode: a file switched to WAL by another connection (a migration, an admin script) turns
 * this one's mode too, unseen. `'moved'` when the file is another one or gone; `'unverified'` when
 * it cannot be read (a full file table, permissions): the write is refused, the pool kept.
 */
function walWriteToReplacedFile(connection: unknown, obj: unknown, file: TenantFile): 'moved' | 'unverified' | undefined {
  if (!file.opened) return undefined;
  const sql = (obj as { sql?: unknown } | null)?.sql;
  const db = connection as { pragma?: (sql: string, options: { simple: boolean }) => unknown } | null;
  if (typeof sql !== 'string' || db === null || typeof db !== 'object' || typeof db.pragma !== 'function') return undefined;
  if (READS.test(sql)) return undefined;
  try {
    const stat = fs.statSync(file.path);
    return stat.ino !== file.ino || stat.dev !== file.dev ? 'moved' : undefined;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'moved' : 'unverified';
  }
}

/**
 * SQLite keeps a transaction open when its COMMIT fails (`SQLITE_BUSY`: another process reads the
 * file), for the COMMIT to be tried again. knex never tries again: it reports the failure and returns
 * the connection to the pool still inside the transaction, where the tenant's later writes joined it,
 * were reported saved, and were lost when the pool closed. Rolled back here, before knex releases it,
 * the transaction ends as reported: not committed. better-sqlite3 only (its `inTransaction`).
 */
function endFailedCommit(connection: unknown, obj: unknown): void {
  const sql = (obj as { sql?: unknown } | null)?.sql;
  if (typeof sql !== 'string' || !/^\s*COMMIT\b/i.test(sql)) return;
  const db = connection as { inTransaction?: unknown; exec?: (sql: string) => unknown } | null;
  if (db?.inTransaction !== true || typeof db.exec !== 'function') return;
  try {
    db.exec('ROLLBACK');
  } catch {
    // Left as it is: a later BEGIN on this connection fails loudly ("within a transaction").
  }
}

/** better-sqlite3's extended code, or sqlite3's message (its `code` is the primary one, SQLITE_READONLY). */
function isMoved(error: unknown): boolean {
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  return code === 'SQLITE_READONLY_DBMOVED' || (typeof message === 'string' && message.includes('SQLITE_READONLY_DBMOVED'));
}
