import fs from 'node:fs';
import path from 'node:path';
import knexFactory, { type Knex } from 'knex';

/** Where the demo's tenant databases live, and how to reach, check and create them. */
export interface DemoDatabases {
  /** For the start-up log: the kind and location, never a password. */
  readonly description: string;
  /** The knex config of one tenant's database (given to `createTenancy`). */
  knexConfig(tenantId: string): Knex.Config;
  /** Whether the tenant's database exists (given to `createTenancy`: a missing one answers 404). */
  tenantExists(tenantId: string): Promise<boolean>;
  /** Creates the tenant's empty database when it is missing; an existing one is left as is. */
  create(tenantId: string): Promise<void>;
  /** Closes admin connections. */
  close(): Promise<void>;
  /**
   * MariaDB only, for the shared strategy: the server's knex config (no database) and the database
   * name of a tenant on it.
   */
  readonly shared?: { server: Knex.Config; databaseName(tenantId: string): string };
}

/**
 * SQLite: one file per tenant, `<dataDir>/<tenantId>.sqlite`. The tenant id is already validated
 * (letters, digits, `_`, `-`) before `tenantExists` or `knexConfig` see it, so it cannot climb out
 * of `dataDir`.
 */
export function sqliteDatabases(dataDir: string): DemoDatabases {
  const file = (tenantId: string) => path.join(dataDir, `${tenantId}.sqlite`);
  return {
    description: `SQLite files in ${dataDir}`,
    knexConfig: (tenantId) => ({
      client: 'better-sqlite3',
      connection: { filename: file(tenantId) },
      useNullAsDefault: true,
      pool: {
        // SQLite enforces foreign keys only when each connection asks for it.
        afterCreate(conn: { pragma(sql: string): unknown }, done: (error: Error | null, conn: unknown) => void) {
          conn.pragma('foreign_keys = ON');
          done(null, conn);
        },
      },
    }),
    // The guard that matters for SQLite: opening a missing file would create it, so without this
    // check any well-formed tenant id in a header would make a new empty database.
    async tenantExists(tenantId) {
      try {
        return (await fs.promises.stat(file(tenantId))).isFile();
      } catch {
        return false;
      }
    },
    async create(tenantId) {
      await fs.promises.mkdir(dataDir, { recursive: true });
      // An empty file is a valid empty SQLite database; 'wx' leaves an existing one alone.
      await fs.promises.writeFile(file(tenantId), '', { flag: 'wx' }).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== 'EEXIST') throw error;
      });
    },
    async close() {},
  };
}

/** MariaDB/MySQL: one database per tenant, `<prefix><tenantId>` (`demo_acme`), on the server of `url`. */
export function mariadbDatabases(url: string, prefix = 'demo_'): DemoDatabases {
  const parsed = new URL(url);
  const connection = (database: string | undefined): Knex.MySql2ConnectionConfig => ({
    host: parsed.hostname,
    port: Number(parsed.port || 3306),
    user: decodeURIComponent(parsed.username || 'root'),
    password: decodeURIComponent(parsed.password),
    database,
  });
  const databaseName = (tenantId: string) => `${prefix}${tenantId}`;
  // One small admin pool for the catalog lookups and CREATE DATABASE; tenants get their own pools.
  const admin = knexFactory({
    client: 'mysql2',
    connection: connection(parsed.pathname.slice(1) || undefined),
    pool: { min: 0, max: 2 },
  });
  return {
    description: `MariaDB at ${parsed.host}, databases ${prefix}<tenant>`,
    knexConfig: (tenantId) => ({ client: 'mysql2', connection: connection(databaseName(tenantId)), pool: { max: 5 } }),
    async tenantExists(tenantId) {
      const [rows] = await admin.raw('select schema_name from information_schema.schemata where schema_name = ?', [
        databaseName(tenantId),
      ]);
      return (rows as unknown[]).length > 0;
    },
    async create(tenantId) {
      // `??` makes knex quote the name as an identifier.
      await admin.raw('create database if not exists ?? character set utf8mb4', [databaseName(tenantId)]);
    },
    close: () => admin.destroy(),
    shared: { server: { client: 'mysql2', connection: connection(undefined), pool: { max: 10 } }, databaseName },
  };
}
