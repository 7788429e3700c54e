/**
 * Isolation over real HTTP: 1,200 interleaved requests across four tenants with random awaits, on
 * SQLite files and on MariaDB. Every response must hold only its own tenant's rows and every write
 * must land in its own database. The negative control runs the same load against a global-variable
 * tenancy and must see leaks, proving the check can fail.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Knex } from 'knex';
import { createTenancy, type Tenancy } from '../lib/index';
import { BrokenPerson, brokenMiddleware, registerBrokenKnex } from './helpers/broken-tenancy';
import { allStrategies, createSeededTenant } from './helpers/databases';
import { Person } from './helpers/fixtures';
import { jsonErrors, listen } from './helpers/http';
import { isolationApp, runIsolationLoad } from './helpers/isolation';

const TENANTS = ['iso1', 'iso2', 'iso3', 'iso4'];
const REQUESTS = 1200;
const IN_FLIGHT = 48;

for (const backend of allStrategies('iso', { inlineSwitch: true })) {
  describe(`HTTP isolation on ${backend.name}`, { skip: backend.skip }, () => {
    let tenancy: Tenancy;
    const direct = new Map<string, Knex>();

    before(async () => {
      for (const t of TENANTS) {
        const knex = await createSeededTenant(backend, t);
        direct.set(t, knex);
        registerBrokenKnex(t, knex);
      }
      tenancy = createTenancy({ ...backend.connectionOptions(), tenantExists: backend.databaseExists });
    });
    after(async () => {
      await tenancy.destroy();
      for (const knex of direct.values()) await knex.destroy();
      for (const t of TENANTS) await backend.dropDatabase(t);
      await backend.close();
    });

    it(`serves ${REQUESTS} interleaved requests with no leak and no lost write`, async () => {
      const app = isolationApp(Person, tenancy.middleware());
      app.use(jsonErrors);
      const server = await listen(app);
      try {
        const report = await runIsolationLoad(server.url, TENANTS, direct, REQUESTS, IN_FLIGHT, 'ok');
        assert.deepEqual(report, { requests: REQUESTS, leaks: 0, lostWrites: 0, failures: 0 });
        assert.equal(tenancy.stats().leases, 0);
      } finally {
        await server.close();
      }
    });

    it('negative control: the same load against a global "current tenant" variable reports leaks', async () => {
      const app = isolationApp(BrokenPerson, brokenMiddleware as never);
      app.use(jsonErrors);
      const server = await listen(app);
      try {
        const report = await runIsolationLoad(server.url, TENANTS, direct, REQUESTS, IN_FLIGHT, 'broken');
        assert.ok(report.leaks > 0, `the broken tenancy must leak, got ${JSON.stringify(report)}`);
      } finally {
        await server.close();
      }
    });
  });
}
