/**
 * The isolation check shared by the HTTP isolation test and the soak: concurrent reads and writes of
 * random tenants with random awaits; every response must hold its own tenant's rows only, and every
 * acknowledged write must be in its own tenant's database.
 */
import type { Knex } from 'knex';
import express from 'express';
import type { Model } from 'objection';
import { load, randomPause } from './http';

type PersonClass = typeof Model & { query(): any };

/** An app whose route code uses the model class directly (no knex passing). */
export function isolationApp(Person: PersonClass, middleware: express.RequestHandler): express.Express {
  const app = express();
  app.use(express.json());
  app.use(middleware);
  app.get('/people', async (_req, res, next) => {
    try {
      await randomPause();
      const rows = await Person.query().select('id', 'name').orderBy('id');
      await randomPause();
      res.json(rows);
    } catch (error) {
      next(error);
    }
  });
  app.post('/people', async (req, res, next) => {
    try {
      await randomPause();
      const row = await Person.query().insert({ name: req.body.name });
      await randomPause();
      res.status(201).json(row);
    } catch (error) {
      next(error);
    }
  });
  return app;
}

export interface IsolationReport {
  requests: number;
  /** Responses that held a row of another tenant, plus writes that landed in another tenant's database. */
  leaks: number;
  /** Acknowledged writes missing from their tenant's database. */
  lostWrites: number;
  failures: number;
}

/**
 * Sends `total` interleaved requests (a fifth of them writes) across `tenants` with `concurrency` in
 * flight, then checks every tenant database against the acknowledged writes. Rows are named `<tenant>-...`.
 */
export async function runIsolationLoad(
  url: string,
  tenants: readonly string[],
  databases: ReadonlyMap<string, Knex>,
  total: number,
  concurrency: number,
  runLabel: string,
): Promise<IsolationReport> {
  let leaks = 0;
  let failures = 0;
  const acknowledged = new Map<string, number>(tenants.map((t) => [t, 0]));
  await load(total, concurrency, async (i) => {
    const tenant = tenants[Math.floor(Math.random() * tenants.length)]!;
    const headers = { 'x-tenant-id': tenant, 'content-type': 'application/json' };
    if (i % 5 === 4) {
      const name = `${tenant}-${runLabel}-${i}`;
      const response = await fetch(`${url}/people`, { method: 'POST', headers, body: JSON.stringify({ name }) });
      if (response.status !== 201) failures++;
      else acknowledged.set(tenant, acknowledged.get(tenant)! + 1);
      await response.arrayBuffer();
      return;
    }
    const response = await fetch(`${url}/people`, { headers });
    if (response.status !== 200) {
      failures++;
      await response.arrayBuffer();
      return;
    }
    const rows = (await response.json()) as { name: string }[];
    if (rows.length === 0 || rows.some((row) => !row.name.startsWith(`${tenant}-`))) leaks++;
  });
  let lostWrites = 0;
  for (const tenant of tenants) {
    const written = await databases.get(tenant)!('persons').where('name', 'like', `%-${runLabel}-%`).select('name');
    const own = written.filter((row: { name: string }) => row.name.startsWith(`${tenant}-`)).length;
    leaks += written.length - own;
    lostWrites += Math.max(0, acknowledged.get(tenant)! - own);
  }
  return { requests: total, leaks, lostWrites, failures };
}
