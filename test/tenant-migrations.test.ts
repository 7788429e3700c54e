/**
 * `tenancy.migrate`: every tenant migrated with bounded concurrency, one tenant failing half-way
 * without stopping the others, the fast path (one query for a current tenant), status, rollback,
 * abort (running tenants finish, the rest are skipped), and no serving pool used. Runs on MariaDB
 * (50 tenants), MariaDB under the shared strategy and SQLite files (10 tenants each).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import knexFactory, { type Knex } from 'knex';
import {
  createTenancy,
  InvalidTenantIdError,
  MigrationsUnreadableError,
  TenantMigrationError,
  UnknownTenantError,
  type Tenancy,
  type TenancyOptions,
} from '../lib/index';
import { allStrategies, tablesIn, withDirectKnex } from './helpers/databases';
import { counters, MIGRATION_NAMES, writeMigrations } from './helpers/migrations';

for (const backend of allStrategies('ops')) {
  const size = backend.name === 'mysql' ? 50 : 10;
  const tenants = Array.from({ length: size }, (_, i) => `m${String(i).padStart(2, '0')}`);
  const broken = 'm07';

  describe(`tenancy.migrate on ${backend.name} (${size} tenants)`, { skip: backend.skip }, () => {
    const files = writeMigrations();
    const tenancies: Tenancy[] = [];
    /** Queries per tenant database, counted on every knex the tenancy builds. */
    let queries = new Map<string, string[]>();
    const make = (extra: Partial<TenancyOptions> = {}): Tenancy => {
      const tenancy = createTenancy({
        ...backend.connectionOptions(),
        migrations: { directory: files.migrations },
        listTenants: () => tenants,
        createKnex: (config) => {
          const knex = knexFactory(config);
          const connection = config.connection as { database?: string; filename?: string };
          const key = String(connection.database ?? connection.filename);
          knex.on('query', (q: { sql: string }) => queries.set(key, [...(queries.get(key) ?? []), q.sql]));
          return knex;
        },
        ...extra,
      } as TenancyOptions);
      tenancies.push(tenancy);
      return tenancy;
    };
    const withDb = <T>(id: string, fn: (knex: Knex) => Promise<T>) => withDirectKnex(backend, id, fn);
    const tablesOf = (id: string) => tablesIn(backend, id, ['people', 'pets', 'notes', 'knex_migrations']);

    before(async () => {
      for (const id of [...tenants, 'ghost', 'fresh']) await backend.dropDatabase(id);
      for (const id of tenants) await backend.createDatabase(id);
      // A table in the way of migration 2: this tenant fails half-way.
      await withDb(broken, (knex) => knex.schema.createTable('pets', (t) => t.string('other')));
    });
    after(async () => {
      for (const tenancy of tenancies) await tenancy.destroy();
      for (const id of [...tenants, 'ghost', 'fresh']) await backend.dropDatabase(id);
      await backend.close();
      files.cleanup();
    });

    it('migrates every tenant at most `concurrency` at a time; the broken one fails without stopping the others', async () => {
      const tenancy = make();
      counters().maxInFlight = 0;
      counters().delayMs = 20;
      const seen: number[] = [];
      const report = await tenancy.migrate.latest({ concurrency: 4, onResult: (_r, p) => seen.push(p.done) });
      counters().delayMs = 0;
      assert.equal(report.operation, 'latest');
      assert.equal(report.ok, false);
      assert.equal(report.aborted, false);
      assert.deepEqual(report.counts, { applied: size - 1, failed: 1 });
      assert.deepEqual(report.tenants.map((t) => t.tenantId), tenants, 'one result per tenant, in order');
      assert.deepEqual(seen, tenants.map((_, i) => i + 1), 'onResult after each tenant');
      assert.ok(counters().maxInFlight <= 4, `at most 4 at once (saw ${counters().maxInFlight})`);
      assert.ok(counters().maxInFlight >= 2, 'tenants did run concurrently');
      for (const result of report.tenants.filter((t) => t.tenantId !== broken)) {
        assert.deepEqual(result.migrations, MIGRATION_NAMES);
        assert.equal(result.error, undefined);
      }
      const failed = report.tenants.find((t) => t.tenantId === broken)!;
      assert.equal(failed.status, 'failed');
      assert.ok(failed.error instanceof TenantMigrationError);
      assert.equal(failed.error.code, 'TENANT_MIGRATION_FAILED');
      assert.equal(failed.error.tenantId, broken);
      assert.equal(failed.error.migration, MIGRATION_NAMES[1], 'the report names the migration that failed');
      assert.match(failed.error.message, /pets/);
      assert.ok(failed.error.cause, 'the driver error is kept as cause');
      assert.deepEqual(await tablesOf('m00'), ['people', 'pets', 'notes', 'knex_migrations']);
      assert.equal(tenancy.stats().created, 0, 'no serving pool or handle was opened: the LRU cache is untouched');
    });

    it('status: current tenants, and the broken one with its pending migrations', async () => {
      const report = await make().migrate.status();
      assert.equal(report.counts.current, size - 1);
      const broke = report.tenants.find((t) => t.tenantId === broken)!;
      assert.equal(broke.status, 'pending');
      // MySQL commits DDL as it goes: migration 1 stayed applied. SQLite rolled the whole batch back.
      const applied = backend.name === 'sqlite' ? [] : MIGRATION_NAMES.slice(0, 1);
      assert.deepEqual(broke.completed, applied);
      assert.deepEqual(broke.migrations, MIGRATION_NAMES.filter((n) => !applied.includes(n)));
      assert.ok(report.ok);
    });

    it('re-run: current tenants cost one query each (no migrator run); the fixed tenant gets the rest', async () => {
      await withDb(broken, (knex) => knex.schema.dropTable('pets'));
      queries = new Map();
      const report = await make().migrate.latest({ concurrency: 4 });
      assert.ok(report.ok, JSON.stringify(report.counts));
      assert.deepEqual(report.counts, { current: size - 1, applied: 1 });
      const fixed = report.tenants.find((t) => t.tenantId === broken)!;
      assert.deepEqual(fixed.migrations, backend.name === 'sqlite' ? MIGRATION_NAMES : MIGRATION_NAMES.slice(1));
      const current = [...queries.entries()].filter(([key]) => !key.includes(broken));
      assert.equal(current.length, size - 1);
      for (const [key, sqls] of current) assert.equal(sqls.length, 1, `${key}: ${sqls.join('; ')}`);
      assert.match(current[0]![1][0]!, /select .name. from .knex_migrations. order by .id./);
    });

    it('status lists a new migration as pending everywhere and writes nothing, even on a fresh database', async () => {
      files.addMigration('20250101000004_tags.js', "exports.up = (k) => k.schema.createTable('tags', (t) => t.increments('id')); exports.down = (k) => k.schema.dropTable('tags');");
      await backend.createDatabase('fresh');
      try {
        const report = await make().migrate.status({ tenants: ['m01', 'm02', 'fresh'] });
        assert.deepEqual(report.counts, { pending: 3 });
        assert.deepEqual(report.tenants[0]!.migrations, ['20250101000004_tags.js']);
        assert.deepEqual(report.tenants[0]!.completed, MIGRATION_NAMES);
        assert.deepEqual(report.tenants[2]!.completed, []);
        assert.equal(report.tenants[2]!.migrations.length, 4);
        assert.deepEqual(await tablesOf('fresh'), [], "unlike knex's migrate.list(), no migration table was created");
      } finally {
        files.removeMigration('20250101000004_tags.js');
      }
    });

    it('rollback undoes the last batch; latest applies it again', async () => {
      const tenancy = make();
      const back = await tenancy.migrate.rollback({ tenants: ['m01', 'm02'] });
      assert.deepEqual(back.counts, { 'rolled-back': 2 });
      assert.deepEqual([...back.tenants[0]!.migrations].sort(), MIGRATION_NAMES);
      assert.deepEqual(await tablesOf('m01'), ['knex_migrations']);
      const again = await tenancy.migrate.rollback({ tenants: ['m01'] });
      assert.deepEqual(again.counts, { current: 1 }, 'nothing left to roll back');
      const forward = await tenancy.migrate.latest({ tenants: ['m01', 'm02'] });
      assert.deepEqual(forward.counts, { applied: 2 });
    });

    it('abort: the running tenants finish, no new one starts, the rest are skipped', async () => {
      const tenancy = make();
      await tenancy.migrate.rollback({ tenants, all: true, concurrency: 8 });
      const controller = new AbortController();
      counters().delayMs = 100;
      const report = await tenancy.migrate.latest({
        concurrency: 2,
        signal: controller.signal,
        onResult: (_r, { done }) => done === 1 && controller.abort(),
      });
      counters().delayMs = 0;
      assert.equal(report.aborted, true);
      assert.equal(report.ok, false);
      assert.deepEqual(report.counts, { applied: 2, skipped: size - 2 }, 'the tenant running beside the first one finished');
      for (const t of report.tenants.slice(0, 2)) assert.deepEqual(t.migrations, MIGRATION_NAMES, 'never cut half-way');
      assert.deepEqual(await tablesOf(tenants[2]!), ['knex_migrations'], 'a skipped tenant was not touched');
      const rest = await tenancy.migrate.latest();
      assert.deepEqual(rest.counts, { current: 2, applied: size - 2 });
    });

    it('reports invalid, unknown and missing tenants as failed and goes on', async () => {
      const known = new Set(tenants);
      const tenancy = make({ tenantExists: (id) => known.has(id) || id === 'ghost' });
      const report = await tenancy.migrate.latest({ tenants: ['m03', '../etc', 'nobody', 'm03'] });
      assert.deepEqual(report.tenants.map((t) => [t.tenantId, t.status]), [['m03', 'current'], ['../etc', 'failed'], ['nobody', 'failed']], 'deduplicated');
      assert.ok(report.tenants[1]!.error instanceof InvalidTenantIdError);
      assert.ok(report.tenants[2]!.error instanceof UnknownTenantError);
      // A database that does not exist (on SQLite a missing file: neither status nor latest creates it).
      const ghost = await tenancy.migrate.status({ tenants: ['ghost'] });
      assert.ok(ghost.tenants[0]!.error instanceof UnknownTenantError, 'status: a database that does not exist');
      const latest = await tenancy.migrate.latest({ tenants: ['ghost'] });
      assert.ok(latest.tenants[0]!.error instanceof UnknownTenantError, 'latest: a database that does not exist');
      assert.equal(await backend.databaseExists('ghost'), false, 'the run created the database');
    });

    if (backend.name.startsWith('mysql')) {
      it('refuses migrations.schemaName on MySQL, where it would be one migration table for every tenant', async () => {
        const tenancy = make({ migrations: { directory: files.migrations, schemaName: 'ot_ops_central' } });
        const report = await tenancy.migrate.latest({ tenants: ['m03', 'm04'] });
        assert.deepEqual(report.tenants.map((t) => t.status), ['failed', 'failed']);
        assert.match(String((report.tenants[0]!.error as Error).message), /schemaName "ot_ops_central" would put one migration table for every tenant/);
      });
    }

    it('refuses to start without migrations config, tenants, or readable migration files', async () => {
      const bare = createTenancy(backend.connectionOptions());
      tenancies.push(bare);
      await assert.rejects(bare.migrate.latest({ tenants: ['m01'] }), /options\.migrations/);
      await assert.rejects(make({ listTenants: undefined }).migrate.latest(), /options\.tenants/);
      await assert.rejects(make().migrate.latest({ concurrency: 0 }), TypeError);
      const missing = make({ migrations: { directory: `${files.dir}/nope` } });
      await assert.rejects(missing.migrate.latest(), MigrationsUnreadableError);
      // No directory: knex's default ./migrations (often the central database's) is not assumed.
      const undirected = make({ migrations: { tableName: 'tenant_migrations' } });
      await assert.rejects(undirected.migrate.latest({ tenants: ['m01'] }), /options\.migrations must name its directory/);
      await assert.rejects(undirected.createTenant('m99'), /options\.migrations must name its directory/);
    });
  });
}
