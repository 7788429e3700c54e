/**
 * The edges of `tenancy.migrate` beyond the happy path, on SQLite files and MariaDB: an async
 * `onResult` that rejects, a migration table with rows whose files are gone, a tenant knexfile with
 * its own `migrations.tableName`, what a failed tenant had applied, a file that cannot be loaded,
 * an unreachable catalog, config or server, and rollback's per-tenant batches against `to`.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Knex } from 'knex';
import {
  createTenancy,
  MigrationsUnreadableError,
  TenantMigrationError,
  TenantUnavailableError,
  type Tenancy,
  type TenancyOptions,
} from '../lib/index';
import { backends, tablesIn, withDirectKnex } from './helpers/databases';
import { knexWithStatementHook } from './helpers/statement-hook';

const T = ['001_t1.js', '002_t2.js', '003_t3.js'];
const body = (table: string) =>
  `exports.up = (k) => k.schema.createTable('${table}', (t) => t.increments('id'));\nexports.down = (k) => k.schema.dropTable('${table}');\n`;

/** A migrations directory holding the given files of `T` (and more added later). */
function migrationsDir(files: readonly string[] = T) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ot-mplan-'));
  const add = (name: string, text = body(name.replace(/^\d+_|\.js$/g, ''))) => fs.writeFileSync(path.join(dir, name), text);
  for (const name of files) add(name);
  return { dir, add, remove: (name: string) => fs.rmSync(path.join(dir, name)), cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

for (const backend of backends('mplan')) {
  describe(`tenancy.migrate edges on ${backend.name}`, { skip: backend.skip }, () => {
    const ids = ['a', 'b', 'c'];
    const tenancies: Tenancy[] = [];
    const dirs: { cleanup(): void }[] = [];
    const make = (dir: string, extra: Partial<TenancyOptions> = {}): Tenancy => {
      const tenancy = createTenancy({ ...backend.connectionOptions(), migrations: { directory: dir }, listTenants: () => ids, ...extra } as TenancyOptions);
      tenancies.push(tenancy);
      return tenancy;
    };
    const files = (list: readonly string[] = T) => {
      const d = migrationsDir(list);
      dirs.push(d);
      return d;
    };
    const withDb = <R>(id: string, fn: (knex: Knex) => Promise<R>) => withDirectKnex(backend, id, fn);
    const tables = (id: string) => tablesIn(backend, id, ['t1', 't2', 't3', 't4', 'knex_migrations', 'tenant_migrations']);
    const fresh = async () => {
      for (const id of ids) await backend.createDatabase(id);
    };

    before(fresh);
    after(async () => {
      for (const tenancy of tenancies) await tenancy.destroy();
      for (const id of [...ids, 'new']) await backend.dropDatabase(id);
      await backend.close();
      for (const d of dirs) d.cleanup();
    });

    it('a config whose loadExtensions is undefined (an unset environment variable) lists the files as knex does, not none', async () => {
      await fresh();
      const { dir } = files();
      const unset = make(dir, { migrations: { directory: dir, loadExtensions: undefined } } as Partial<TenancyOptions>);
      const status = (await unset.migrate.status({ tenants: ['a'] })).tenants[0]!;
      // Before: 'current' with no migration, and latest applied nothing (knex itself applies all three).
      assert.equal(status.status, 'pending');
      assert.deepEqual(status.migrations, T);
      const report = (await unset.migrate.latest({ tenants: ['a'] })).tenants[0]!;
      assert.equal(report.status, 'applied', String(report.error?.message));
      assert.deepEqual(report.migrations, T);
    });

    if (backend.name === 'mysql') {
      it("a run that finds knex's migration lock taken reports no migration of its own, not what the other run recorded meanwhile", async () => {
        await fresh();
        await withDb('a', async (knex) => {
          await knex.schema.createTable('knex_migrations', (t) => {
            t.increments('id');
            t.string('name');
            t.integer('batch');
            t.timestamp('migration_time');
          });
          await knex.schema.createTable('knex_migrations_lock', (t) => {
            t.increments('index');
            t.integer('is_locked');
          });
          // Another run holds the lock...
          await knex('knex_migrations_lock').insert({ is_locked: 1 });
        });
        let recorded = false;
        const tenancy = make(files().dir, {
          // ...and records 001_t1.js just before this run's attempt to take the lock fails.
          createKnex: knexWithStatementHook(() => (send, sql, rest) => {
            const text = typeof sql === 'string' ? sql : String((sql as { sql?: unknown }).sql);
            if (recorded || !/^update `knex_migrations_lock`/.test(text)) return send(sql, ...rest);
            recorded = true;
            void withDb('a', (knex) => knex('knex_migrations').insert({ name: '001_t1.js', batch: 1, migration_time: new Date() })).then(() => {
              send(sql, ...rest);
            });
            return undefined;
          }),
        } as Partial<TenancyOptions>);
        const [result] = (await tenancy.migrate.latest({ tenants: ['a'] })).tenants;
        assert.ok(recorded, 'the lock was tried');
        assert.equal(result!.status, 'failed');
        assert.match(String(result!.error?.message), /locked/);
        // Before: ['001_t1.js'], the other run's.
        assert.deepEqual(result!.migrations, []);
      });
    }

    it("the tenancy's listTenants(): one that fails (a catalog out of reach) fails the operation with its error as cause, not a TypeError; a Set is a list", async () => {
      await fresh();
      const { dir } = files();
      const down = make(dir, { listTenants: () => Promise.reject(new TypeError('fetch failed')) } as Partial<TenancyOptions>);
      const error = await down.migrate.status().then(() => undefined, (e: unknown) => e);
      assert.ok(error instanceof Error && !(error instanceof TypeError), String(error));
      assert.match(error.message, /listTenants\(\) of the tenancy failed: fetch failed/);
      assert.ok((error as Error & { cause?: unknown }).cause instanceof TypeError);
      const set = make(dir, { listTenants: () => new Set(['a', 'b']) } as Partial<TenancyOptions>);
      assert.deepEqual((await set.migrate.status()).tenants.map((t) => [t.tenantId, t.status]), [['a', 'pending'], ['b', 'pending']]);
    });

    it('an async onResult that rejects is a warning, not an unhandled rejection; the report waits for it', async () => {
      await fresh();
      const unhandled: unknown[] = [];
      const warnings: string[] = [];
      const onUnhandled = (reason: unknown) => unhandled.push(reason);
      const onWarning = (warning: Error) => warnings.push(warning.message);
      process.on('unhandledRejection', onUnhandled);
      process.on('warning', onWarning);
      const settled: string[] = [];
      try {
        const report = await make(files().dir).migrate.latest({
          concurrency: 2,
          onResult: async (result) => {
            await new Promise((resolve) => setTimeout(resolve, 30));
            settled.push(result.tenantId);
            throw new Error('printer broke');
          },
        });
        assert.deepEqual([...settled].sort(), ids, 'every onResult had settled when the report resolved');
        assert.deepEqual(report.counts, { applied: 3 });
        await new Promise((resolve) => setTimeout(resolve, 20));
        assert.deepEqual(unhandled, [], 'no unhandled rejection (it ends the process mid-run)');
        assert.equal(warnings.filter((w) => /onResult threw: printer broke/.test(w)).length, 3);
      } finally {
        process.off('unhandledRejection', onUnhandled);
        process.off('warning', onWarning);
      }
    });

    it('two migration directories holding a file of the same name: each file runs once, as knex runs them', async () => {
      const first = files([]);
      const second = files([]);
      first.add('001_init.js', body('t1'));
      second.add('001_init.js', body('t2'));
      for (const id of ids) await backend.dropDatabase(id);
      await fresh();
      const tenancy = make(first.dir, { migrations: { directory: [first.dir, second.dir] } });
      const report = await tenancy.migrate.latest({ tenants: ['a'] });
      assert.equal(report.tenants[0]!.status, 'applied', String(report.tenants[0]!.error?.message));
      assert.deepEqual(await tablesIn(backend, 'a', ['t1', 't2']), ['t1', 't2']);
      for (const id of ids) await backend.dropDatabase(id);
      await fresh();
    });

    it('a recorded migration whose file is gone: status, latest and rollback all report it failed, naming it', async () => {
      await fresh();
      const d = files();
      const tenancy = make(d.dir);
      assert.deepEqual((await tenancy.migrate.latest()).counts, { applied: 3 });
      d.remove(T[2]!); // squashed away: every file left is recorded, the table has one more
      for (const operation of ['status', 'latest', 'rollback'] as const) {
        const report = await tenancy.migrate[operation]({ tenants: ['a'] });
        assert.equal(report.ok, false, operation);
        const [result] = report.tenants;
        assert.equal(result!.status, 'failed', operation);
        assert.ok(result!.error instanceof TenantMigrationError, operation);
        assert.deepEqual(result!.error.missing, [T[2]], operation);
        assert.match(result!.error.message, /003_t3\.js[\s\S]*Restore the missing files/, operation);
      }
      assert.deepEqual(await tables('a'), ['t1', 't2', 't3', 'knex_migrations'], 'nothing touched');
      // knex's own switch for it is honoured: knex would not complain, so neither does status.
      const lax = make(d.dir, { migrations: { directory: d.dir, disableMigrationsListValidation: true } });
      assert.equal((await lax.migrate.status({ tenants: ['a'] })).tenants[0]!.status, 'current');
    });

    it("the tenant knexfile's own migrations.tableName is the table status, latest and rollback read", async () => {
      await fresh();
      const d = files();
      const knexConfig = (id: string): Knex.Config => ({ ...backend.knexConfig(id), migrations: { tableName: 'tenant_migrations' } });
      const tenancy = make(d.dir, { knexConfig });
      assert.deepEqual((await tenancy.migrate.latest({ tenants: ['a'] })).counts, { applied: 1 });
      assert.deepEqual(await tables('a'), ['t1', 't2', 't3', 'tenant_migrations'], "knex's migrator wrote tenant_migrations");
      const status = await tenancy.migrate.status({ tenants: ['a'] });
      assert.equal(status.tenants[0]!.status, 'current');
      assert.deepEqual(status.tenants[0]!.completed, T);
      assert.deepEqual((await tenancy.migrate.latest({ tenants: ['a'] })).counts, { current: 1 });
      const back = await tenancy.migrate.rollback({ tenants: ['a'] });
      assert.equal(back.tenants[0]!.status, 'rolled-back');
      assert.deepEqual(await tables('a'), ['tenant_migrations']);
      // options.migrations overrides the tenant's, as knex merges them.
      const overridden = make(d.dir, { knexConfig, migrations: { directory: d.dir, tableName: 'knex_migrations' } });
      await overridden.migrate.latest({ tenants: ['a'] });
      assert.deepEqual(await tables('a'), ['t1', 't2', 't3', 'knex_migrations', 'tenant_migrations']);
    });

    it('a failed tenant lists the migrations it applied before the failure (MySQL DDL, or no transaction)', async () => {
      await fresh();
      const d = files();
      await withDb('b', (knex) => knex.schema.createTable('t2', (t) => t.string('in_the_way')));
      const report = await make(d.dir).migrate.latest({ tenants: ['b'] });
      const [b] = report.tenants;
      assert.equal(b!.status, 'failed');
      assert.equal((b!.error as TenantMigrationError).migration, T[1]);
      // SQLite wraps the batch in a transaction: nothing stays. MySQL commits each DDL: t1 stays.
      assert.deepEqual(b!.migrations, backend.name === 'sqlite' ? [] : [T[0]]);
      const status = await make(d.dir).migrate.status({ tenants: ['b'] });
      assert.deepEqual(status.tenants[0]!.completed, b!.migrations, 'the report matches the table');

      // Without a wrapping transaction SQLite keeps them too (the README no longer says otherwise).
      await fresh();
      await withDb('c', (knex) => knex.schema.createTable('t2', (t) => t.string('in_the_way')));
      const loose = make(d.dir, { migrations: { directory: d.dir, disableTransactions: true } });
      const [c] = (await loose.migrate.latest({ tenants: ['c'] })).tenants;
      assert.equal(c!.status, 'failed');
      assert.deepEqual(c!.migrations, [T[0]]);
      assert.deepEqual((await loose.migrate.status({ tenants: ['c'] })).tenants[0]!.completed, [T[0]]);
    });

    it('a migration file that cannot be loaded stops the run before any tenant is touched, and createTenant before its database exists', async () => {
      await fresh();
      const d = files();
      d.add('004_t4.js', 'exports.up = (k) => { this is not javascript };');
      const tenancy = make(d.dir);
      const rejected = await tenancy.migrate.latest().then(
        (report) => assert.fail(`resolved: ${JSON.stringify(report.counts)}`),
        (error: unknown) => error,
      );
      assert.ok(rejected instanceof MigrationsUnreadableError);
      assert.equal(rejected.migration, '004_t4.js');
      assert.match(rejected.message, /004_t4\.js could not be loaded/);
      for (const id of ids) assert.deepEqual(await tables(id), [], `${id} untouched`);
      await assert.rejects(tenancy.createTenant('new'), MigrationsUnreadableError);
      assert.equal(await backend.databaseExists('new'), false, 'no database created (then dropped)');
      d.add('004_t4.js', "exports.up = (k) => k.schema.createTable('t4', (t) => t.increments('id'));"); // no down
      await assert.rejects(tenancy.migrate.status(), (e: unknown) => e instanceof MigrationsUnreadableError && /up and a down/.test(e.message));
    });

    it('a catalog, a config or a server out of reach is TenantUnavailableError, not a migration to fix', async () => {
      await fresh();
      const d = files();
      const catalogDown = make(d.dir, { tenantExists: () => Promise.reject(new Error('catalog down')) });
      const [one] = (await catalogDown.migrate.latest({ tenants: ['a'] })).tenants;
      assert.ok(one!.error instanceof TenantUnavailableError, String(one!.error));
      assert.equal(one!.error.statusCode, 503);
      const configBroken = make(d.dir, { knexConfig: () => { throw new Error('vault sealed'); } });
      const [two] = (await configBroken.migrate.status({ tenants: ['a'] })).tenants;
      assert.ok(two!.error instanceof TenantUnavailableError, String(two!.error));
      const serverDown = make(d.dir, {
        knexConfig: (id) => ({ client: 'mysql2', connection: { host: '127.0.0.1', port: 1, user: 'root', database: id }, acquireConnectionTimeout: 2_000 }),
      });
      for (const operation of ['latest', 'status', 'rollback'] as const) {
        const [three] = (await serverDown.migrate[operation]({ tenants: ['a'] })).tenants;
        assert.equal(three!.status, 'failed');
        assert.ok(three!.error instanceof TenantUnavailableError, `${operation}: ${String(three!.error)}`);
      }
    });

    it('rollback: each tenant its own last batch (a tenant created after the deploy loses everything); `to` undoes the same migrations everywhere', async () => {
      await fresh();
      const d = files(T.slice(0, 2));
      const tenancy = make(d.dir);
      await tenancy.migrate.latest({ tenants: ['a'] }); // deploy 1 on a: t1, t2
      d.add(T[2]!);
      await tenancy.migrate.latest({ tenants: ['a', 'b'] }); // deploy 2: a gets t3; b (new) gets all three in one batch
      const batches = await tenancy.migrate.rollback({ tenants: ['a', 'b'] });
      assert.deepEqual(batches.tenants.map((t) => [t.tenantId, t.status, t.migrations]), [
        ['a', 'rolled-back', [T[2]]],
        ['b', 'rolled-back', [...T].reverse()],
      ]);
      assert.deepEqual(await tables('b'), ['knex_migrations'], "b's last batch was its whole schema");

      await tenancy.migrate.latest({ tenants: ['a', 'b'] });
      const to = await tenancy.migrate.rollback({ tenants: ['a', 'b', 'c'], to: T[1] });
      assert.deepEqual(to.tenants.map((t) => [t.tenantId, t.status, t.migrations]), [
        ['a', 'rolled-back', [T[2]]],
        ['b', 'rolled-back', [T[2]]],
        ['c', 'current', []],
      ]);
      assert.deepEqual(await tables('b'), ['t1', 't2', 'knex_migrations']);
      assert.deepEqual((await tenancy.migrate.rollback({ tenants: ['a'], to: T[1] })).counts, { current: 1 });
      await assert.rejects(tenancy.migrate.rollback({ to: 'nope.js' }), /options\.to must name a migration file/);
      await assert.rejects(tenancy.migrate.rollback({ to: T[0], all: true }), /not both/);
    });
  });
}
