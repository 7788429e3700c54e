import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import express from 'express';
import type { Express } from 'express';
import { createTenancy, type Tenancy, type TenancyOptions } from '../../lib/index'; // in your app: from 'objection-tenancy'
import { mariadbDatabases, sqliteDatabases, type DemoDatabases } from './databases';
import { errorHandler, notFound } from './errors';
import { DEMO_TENANTS, demoMigrations } from './migrations';
import { tenantRoutes } from './routes';

/** Where the SQLite files go when `dataDir` is not given. */
export const DEFAULT_DATA_DIR = path.join(__dirname, 'data');

/** Options of `start()`. Nothing is read from the environment here: `server.ts` does that. */
export interface DemoOptions {
  /** Port to listen on; 0 picks a free one. Default 3000. */
  port?: number;
  /** Directory of the SQLite tenant files. Default `examples/demo/data`. Ignored with `mysqlUrl`. */
  dataDir?: string;
  /** A `mysql://user:pass@host:port/db` URL: use MariaDB databases `demo_<tenant>` instead of SQLite. */
  mysqlUrl?: string;
  /** With `mysqlUrl`: the prefix of the tenant database names. Default `demo_`. */
  databasePrefix?: string;
  /**
   * With `mysqlUrl`: `'pool-per-tenant'` (default, a pool per tenant database) or `'shared'` (one pool
   * of 10 connections for the server, switched between tenant databases: the setting for thousands of
   * tenants).
   */
  strategy?: 'pool-per-tenant' | 'shared';
}

/** A running demo. */
export interface RunningDemo {
  readonly app: Express;
  readonly server: http.Server;
  readonly tenancy: Tenancy;
  readonly databases: DemoDatabases;
  /** The port actually listened on. */
  readonly port: number;
  /** Closes the server, then every tenant pool. Safe to call twice. */
  stop(): Promise<void>;
}

/** The Express app: `/health` without a tenant, the tenant routes behind `tenancy.middleware()`. */
export function createApp(tenancy: Tenancy): Express {
  const app = express();
  app.disable('x-powered-by');
  app.use(express.json({ limit: '10kb' }));

  // Before the tenancy middleware: needs no x-tenant-id header.
  app.get('/health', (_req, res) => {
    res.json({ status: 'ok', pools: tenancy.stats().pools });
  });

  // Tenant from the x-tenant-id header: 400 when missing or malformed, 404 when unknown.
  app.use(tenancy.middleware());
  app.use(tenantRoutes());
  app.use(notFound);
  app.use(errorHandler);
  return app;
}

function tenancyOptions(databases: DemoDatabases, strategy: 'pool-per-tenant' | 'shared'): TenancyOptions {
  const tenantExists = (tenantId: string) => databases.tenantExists(tenantId);
  if (strategy === 'pool-per-tenant') return { knexConfig: (tenantId) => databases.knexConfig(tenantId), tenantExists };
  const shared = databases.shared;
  if (shared === undefined) throw new TypeError("demo: strategy 'shared' needs MariaDB (mysqlUrl)");
  return {
    strategy: 'shared',
    servers: { main: shared.server },
    locate: (tenantId) => ({ server: 'main', database: shared.databaseName(tenantId) }),
    // The defaults: model queries name the tenant's database on connections that have none
    // (qualifyTables), and the connections serving tenants the pool has not used lately are capped
    // from the server's cores (maxSwitchedConnections 'auto'; README, "Thousands of tenants").
    tenantExists,
  };
}

/** Creates each demo tenant's database if missing and brings its schema and seed rows up to date. */
async function provision(tenancy: Tenancy, databases: DemoDatabases): Promise<void> {
  for (const tenantId of DEMO_TENANTS) {
    await databases.create(tenantId);
    await tenancy.runWithTenant(tenantId, () => tenancy.knex().migrate.latest({ migrationSource: demoMigrations(tenantId) }));
  }
}

function listen(server: http.Server, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/**
 * Opens the tenant databases (creating and seeding `acme` and `globex` on first start) and listens.
 * @example
 * const demo = await start({ port: 0, dataDir: tmp });
 * await fetch(`http://127.0.0.1:${demo.port}/people`, { headers: { 'x-tenant-id': 'acme' } });
 * await demo.stop();
 */
export async function start(options: DemoOptions = {}): Promise<RunningDemo> {
  const databases =
    options.mysqlUrl !== undefined ? mariadbDatabases(options.mysqlUrl, options.databasePrefix) : sqliteDatabases(options.dataDir ?? DEFAULT_DATA_DIR);
  const tenancy = createTenancy(tenancyOptions(databases, options.strategy ?? 'pool-per-tenant'));
  const app = createApp(tenancy);
  const server = http.createServer(app);
  try {
    await provision(tenancy, databases);
    await listen(server, options.port ?? 3000);
  } catch (error) {
    await tenancy.destroy();
    await databases.close();
    throw error;
  }

  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      await new Promise<void>((resolve, reject) => server.close((error) => (error ? reject(error) : resolve())));
      await tenancy.destroy();
      await databases.close();
    })());

  return { app, server, tenancy, databases, port: (server.address() as AddressInfo).port, stop };
}
