/**
 * `createTenant()` and `dropTenant()` with the built-in database helpers (MariaDB `CREATE DATABASE`,
 * SQLite files; MariaDB also under the shared strategy) and with app hooks: created, migrated, seeded, registered; refused without
 * confirmation; dropped with its pool evicted and unregistered; a failed creation undone.
 */
import assert from 'node:assert/strict';
import knexFactory, { type Knex } from 'knex';
import { after, before, describe, it } from 'node:test';
import {
  createTenancy,
  InvalidTenantIdError,
  TenantAlreadyExistsError,
  TenantDropNotConfirmedError,
  TenantError,
  TenantLifecycleError,
  UnknownTenantError,
  type Tenancy,
  type TenancyOptions,
} from '../lib/index';
import { allStrategies, createSeededTenant, mysqlConnection, skipMysql, sqliteBackend, withDirectKnex } from './helpers/databases';
import { MIGRATION_NAMES, writeMigrations } from './helpers/migrations';

for (const backend of allStrategies('ops')) {
  describe(`createTenant and dropTenant on ${backend.name}`, { skip: backend.skip }, () => {
    const files = writeMigrations();
    const ids = ['c1', 'c2', 'c2b', 'c3', 'c4', 'c4u', 'c5', 'c6l', 'c6o', 'c7', 'hooked', 'fw', 'kept', 'twice'];
    const tenancies: Tenancy[] = [];
    let catalog = new Set<string>();
    const make = (extra: Partial<TenancyOptions> = {}): Tenancy => {
      const tenancy = createTenancy({
        ...backend.connectionOptions(),
        tenantExists: (id) => catalog.has(id),
        migrations: { directory: files.migrations },
        seeds: { directory: files.seeds },
        registerTenant: (id) => void catalog.add(id),
        unregisterTenant: (id) => void catalog.delete(id),
        ...extra,
      } as TenancyOptions);
      tenancies.push(tenancy);
      return tenancy;
    };
    /** Tenants holding a pool (pool per tenant) or a handle on their server's pool (shared). */
    const cached = (tenancy: Tenancy) => {
      const stats = tenancy.stats();
      return stats.strategy === 'shared' ? stats.tenants : stats.pools;
    };
    const people = (tenancy: Tenancy, id: string) => tenancy.runWithTenant(id, () => tenancy.knex()('people').pluck('name'));

    before(async () => {
      for (const id of ids) await backend.dropDatabase(id);
    });
    after(async () => {
      for (const tenancy of tenancies) await tenancy.destroy();
      for (const id of ids) await backend.dropDatabase(id);
      await backend.close();
      files.cleanup();
    });

    it('creates the database, migrates, seeds and registers the tenant', async () => {
      catalog = new Set();
      const tenancy = make();
      await assert.rejects(tenancy.runWithTenant('c1', () => 1), UnknownTenantError, 'not there yet (and the miss is cached)');
      const result = await tenancy.createTenant('c1');
      assert.equal(result.tenantId, 'c1');
      assert.deepEqual(result.migrations, MIGRATION_NAMES);
      assert.deepEqual(result.seeds, ['01_people.js']);
      assert.ok(await backend.databaseExists('c1'));
      assert.ok(catalog.has('c1'), 'registered');
      assert.deepEqual(await people(tenancy, 'c1'), ['seeded'], 'served at once: the cached catalog miss was forgotten');
      const status = await tenancy.migrate.status({ tenants: ['c1'] });
      assert.equal(status.tenants[0]!.status, 'current');
    });

    it('refuses an existing tenant, an existing database and an invalid id, touching nothing', async () => {
      const tenancy = make();
      await assert.rejects(tenancy.createTenant('c1'), TenantAlreadyExistsError, 'the catalog has it');
      catalog.delete('c1');
      const error = await tenancy.createTenant('c1').catch((e: unknown) => e);
      assert.ok(error instanceof TenantAlreadyExistsError, 'its database exists');
      assert.equal(error.statusCode, 409);
      assert.ok(await backend.databaseExists('c1'), 'the existing database was not dropped by an undo');
      catalog.add('c1');
      await assert.rejects(tenancy.createTenant('../c1'), InvalidTenantIdError);
      await assert.rejects(tenancy.createTenant('c2; drop database c1'), InvalidTenantIdError);
      assert.equal(await backend.databaseExists('c2'), false);
      // A catalog that fails is a 503 to retry (as when serving), not the catalog's raw error.
      const down = make({ tenantExists: () => Promise.reject(new Error('catalog down')) });
      await assert.rejects(down.createTenant('c2'), (e: Error & { code?: string; statusCode?: number }) => e.code === 'TENANT_UNAVAILABLE' && e.statusCode === 503);
      assert.equal(await backend.databaseExists('c2'), false);
    });

    it('creates without seeds when asked, and without migrations when none are configured', async () => {
      const noSeed = await make().createTenant('c2', { seed: false });
      assert.deepEqual(noSeed.seeds, []);
      const bare = await make({ migrations: undefined, seeds: undefined }).createTenant('c3');
      assert.deepEqual(bare.migrations, []);
      assert.ok(await backend.databaseExists('c3'));
    });

    it('undoes a creation whose migration fails: database dropped, not registered, retryable', async () => {
      files.addMigration('20250101000009_broken.js', "exports.up = (k) => k.raw('select * from no_such_table'); exports.down = async () => {};");
      try {
        const error = await make().createTenant('c4').catch((e: unknown) => e);
        assert.ok(error instanceof TenantLifecycleError, String(error));
        assert.equal(error.code, 'TENANT_CREATE_FAILED');
        assert.equal(error.step, 'migrate');
        assert.equal((error.cause as { migration?: string }).migration, '20250101000009_broken.js');
        assert.equal(await backend.databaseExists('c4'), false, 'the half-made database was dropped');
        assert.equal(catalog.has('c4'), false);
      } finally {
        files.removeMigration('20250101000009_broken.js');
      }
      assert.deepEqual((await make().createTenant('c4')).migrations, MIGRATION_NAMES, 'a retry works');
    });

    it('undoing a failed creation also closes a pool a request opened on the half-made database meanwhile', async () => {
      files.addMigration('20250101000009_slow_broken.js', "exports.up = async (k) => { await new Promise((r) => setTimeout(r, 400)); await k.raw('select * from no_such_table'); }; exports.down = async () => {};");
      // A catalog that reads the database itself says yes as soon as the database is there.
      const tenancy = make({ tenantExists: (id) => backend.databaseExists(id), negativeCacheTtlMs: 1 });
      try {
        const creating = tenancy.createTenant('c4u').catch((e: unknown) => e);
        let served = false;
        for (let i = 0; i < 40 && !served; i++) {
          await new Promise((resolve) => setTimeout(resolve, 20));
          served = await tenancy.runWithTenant('c4u', () => tenancy.knex().raw('select 1')).then(() => true, () => false);
        }
        assert.equal(served, true, 'no request reached the half-made tenant (the test did not race)');
        assert.ok((await creating) instanceof TenantLifecycleError);
        assert.equal(cached(tenancy), 0, 'a pool of the undone tenant was left open');
        assert.equal(await backend.databaseExists('c4u'), false, 'the half-made database is there');
      } finally {
        files.removeMigration('20250101000009_slow_broken.js');
      }
      assert.deepEqual((await tenancy.createTenant('c4u')).migrations, MIGRATION_NAMES, 'a retry works');
      await tenancy.dropTenant('c4u', { confirm: 'c4u' });
    });

    it('refuses to drop without the confirmation, touching nothing', async () => {
      const tenancy = make();
      await people(tenancy, 'c1');
      await assert.rejects(tenancy.dropTenant('c1', undefined as never), TenantDropNotConfirmedError);
      await assert.rejects(tenancy.dropTenant('c1', { confirm: 'c2' }), TenantDropNotConfirmedError);
      assert.ok(await backend.databaseExists('c1'));
      assert.ok(catalog.has('c1'));
      assert.equal(cached(tenancy), 1, 'the pool is still open');
    });

    it('drops with the confirmation: pool evicted, database gone, unregistered', async () => {
      const tenancy = make();
      await people(tenancy, 'c1');
      assert.equal(cached(tenancy), 1);
      await tenancy.dropTenant('c1', { confirm: 'c1' });
      assert.equal(cached(tenancy), 0, 'the pool was evicted');
      assert.equal(await backend.databaseExists('c1'), false);
      assert.equal(catalog.has('c1'), false);
      await assert.rejects(tenancy.runWithTenant('c1', () => 1), UnknownTenantError);
      await tenancy.dropTenant('c1', { confirm: 'c1' }); // idempotent: a retry after a failed unregister works
    });

    it('drop waits for the scopes in flight on the tenant before dropping its database', async () => {
      const tenancy = make();
      await tenancy.createTenant('c2b', { seed: false });
      let inFlight = 0;
      const busy = tenancy.runWithTenant('c2b', async () => {
        inFlight++;
        await new Promise((resolve) => setTimeout(resolve, 150));
        return tenancy.knex()('people').count({ n: '*' });
      });
      while (inFlight === 0) await new Promise((resolve) => setTimeout(resolve, 5));
      const dropped = tenancy.dropTenant('c2b', { confirm: 'c2b' });
      try {
        assert.equal((await busy).length, 1, 'the scope in flight finished on its database');
      } finally {
        await dropped;
      }
      assert.equal(await backend.databaseExists('c2b'), false);
    });

    it('requests that come while the tenant is dropped get UnknownTenantError (404), never a driver error from the database gone under them', async () => {
      const tenancy = make();
      await tenancy.createTenant('c5', { seed: false });
      let dropping = true;
      const failures: unknown[] = [];
      let served = 0;
      const workers = Array.from({ length: 10 }, async () => {
        while (dropping) {
          try {
            await tenancy.runWithTenant('c5', async () => {
              await tenancy.knex()('people').count({ n: '*' });
              await new Promise((r) => setTimeout(r, 2));
              await tenancy.knex()('people').count({ n: '*' });
            });
            served++;
          } catch (error) {
            failures.push(error);
          }
          await new Promise((r) => setImmediate(r));
        }
      });
      await new Promise((r) => setTimeout(r, 50));
      await tenancy.dropTenant('c5', { confirm: 'c5' });
      // A little past the drop: the catalog says no by then.
      await new Promise((r) => setTimeout(r, 30));
      dropping = false;
      await Promise.all(workers);
      assert.ok(served > 0, 'requests were served before the drop');
      const untyped = failures.filter((error) => !(error instanceof UnknownTenantError)).map(String);
      assert.deepEqual(untyped.slice(0, 3), [], `${untyped.length} of ${failures.length} failures were not UnknownTenantError`);
      assert.equal(await backend.databaseExists('c5'), false);
    });

    for (const wait of ['catalog lookup', 'opening'] as const) {
      it(`a request whose ${wait} was in flight when dropTenant began is refused (404), not served while the database is dropped under it`, async () => {
        const id = wait === 'catalog lookup' ? 'c6l' : 'c6o';
        let slow = false;
        const pause = () => (slow ? new Promise((r) => setTimeout(r, 100)) : undefined);
        const options = backend.connectionOptions() as { locate?: (id: string) => unknown; knexConfig?: (id: string) => unknown };
        const slowOpening =
          options.locate !== undefined
            ? { locate: async (t: string) => (await pause(), options.locate!(t)) }
            : { knexConfig: async (t: string) => (await pause(), options.knexConfig!(t)) };
        const tenancy = make({
          ...(wait === 'catalog lookup' ? { tenantExists: async (t: string) => (await pause(), catalog.has(t)) } : slowOpening),
          // The drop takes a while: the request's wait ends while it runs.
          dropDatabase: async (t: string) => {
            await new Promise((r) => setTimeout(r, 300));
            await backend.dropDatabase(t);
          },
        } as Partial<TenancyOptions>);
        await tenancy.createTenant(id, { seed: false });
        await tenancy.forget(id);
        slow = true;
        let ranIn = false;
        const request = tenancy
          .runWithTenant(id, async () => {
            ranIn = true;
            await tenancy.knex()('people').count({ n: '*' });
            await new Promise((r) => setTimeout(r, 400));
            await tenancy.knex()('people').insert({ name: 'late' });
          })
          .then(
            () => 'served',
            (error: unknown) => error,
          );
        await new Promise((r) => setTimeout(r, 10));
        const drop = tenancy.dropTenant(id, { confirm: id });
        const outcome = await request;
        await drop;
        assert.ok(outcome instanceof UnknownTenantError, `refused with a 404: ${String(outcome)}`);
        assert.equal(ranIn, false, 'its code never ran in the tenant being dropped');
        assert.equal(await backend.databaseExists(id), false);
        assert.equal(cached(tenancy), 0, 'no pool or handle left for the dropped tenant');
      });
    }

    it('a request that comes while the database is dropped, before the tenant is unregistered, leaves no database behind: the id can be created again', async () => {
      let racing: Promise<unknown> | undefined;
      const tenancy = make({
        // The catalog still says yes while the database is gone: what a request in that window sees.
        unregisterTenant: async (id) => {
          racing = tenancy.runWithTenant(id, () => tenancy.knex()('people').pluck('name')).catch((error: unknown) => error);
          await racing;
          catalog.delete(id);
        },
      });
      await tenancy.createTenant('c2b', { seed: false });
      await tenancy.dropTenant('c2b', { confirm: 'c2b' });
      assert.ok((await racing) instanceof Error, 'the racing request was not served');
      assert.equal(await backend.databaseExists('c2b'), false, 'the racing request left a database behind');
      await tenancy.createTenant('c2b', { seed: false });
      await tenancy.dropTenant('c2b', { confirm: 'c2b' });
    });

    it('createTenant of an id being dropped is refused (409) until the drop is done, rather than undone by its last steps', async () => {
      let creating: Promise<unknown> | undefined;
      const tenancy = make({
        // No catalog check: the refusal must not depend on one (with it, the catalog still says yes).
        tenantExists: undefined,
        unregisterTenant: async (id) => {
          creating = tenancy.createTenant(id, { seed: false }).catch((error: unknown) => error);
          await creating;
          catalog.delete(id);
        },
      });
      await backend.dropDatabase('c2c');
      await tenancy.createTenant('c2c', { seed: false });
      await tenancy.dropTenant('c2c', { confirm: 'c2c' });
      const refused = (await creating) as { code?: string; statusCode?: number; message?: string };
      assert.equal(refused.code, 'TENANT_EXISTS');
      assert.equal(refused.statusCode, 409);
      assert.match(String(refused.message), /being dropped/);
      assert.equal(await backend.databaseExists('c2c'), false);
      // Once the drop is done, the id can be created again, and is registered.
      await tenancy.createTenant('c2c', { seed: false });
      assert.equal(await backend.databaseExists('c2c'), true);
      assert.ok(catalog.has('c2c'));
      await tenancy.dropTenant('c2c', { confirm: 'c2c' });
    });

    it('dropTenant of an id whose createTenant is still running is refused, nothing dropped: the creation completes', async () => {
      let dropping: Promise<unknown> | undefined;
      const tenancy = make({
        registerTenant: async (id) => {
          dropping = tenancy.dropTenant(id, { confirm: id }).catch((error: unknown) => error);
          await dropping;
          catalog.add(id);
        },
      });
      await backend.dropDatabase('c2d');
      await tenancy.createTenant('c2d', { seed: false });
      const refused = (await dropping) as TenantLifecycleError;
      assert.ok(refused instanceof TenantLifecycleError, String(refused));
      assert.equal(refused.step, 'drop-database');
      assert.equal(await backend.databaseExists('c2d'), true, 'the database is there');
      assert.ok(catalog.has('c2d'), 'and registered');
      assert.deepEqual(await tenancy.runWithTenant('c2d', () => tenancy.knex()('people').pluck('name')), []);
      await tenancy.dropTenant('c2d', { confirm: 'c2d' });
      assert.equal(await backend.databaseExists('c2d'), false);
    });

    it("forget() waits for the tenant's scopes in flight even when an earlier forget() evicted it first (an error handler's, say)", async () => {
      const tenancy = make();
      await tenancy.createTenant('fw', { seed: false });
      let inside!: () => void;
      const entered = new Promise<void>((resolve) => (inside = resolve));
      let finished = false;
      const long = tenancy.runWithTenant('fw', async () => {
        inside();
        await new Promise((resolve) => setTimeout(resolve, 300));
        await tenancy.knex().raw('select 1');
        finished = true;
      });
      await entered;
      void tenancy.forget('fw'); // not awaited, as the error handler's
      await tenancy.forget('fw');
      assert.equal(finished, true, "the second forget() returned while the tenant's scope was still in flight");
      await long;
      await tenancy.dropTenant('fw', { confirm: 'fw' });
    });

    it("inside the tenant's own scope, dropTenant() refuses at once, touching nothing, and forget()/evict() do not wait for the caller", async () => {
      const tenancy = make();
      await tenancy.createTenant('fw', { seed: false });
      const within = <T>(promise: Promise<T>) =>
        Promise.race([promise, new Promise<'hung'>((resolve) => setTimeout(() => resolve('hung'), 3000).unref())]);
      const outcome = await tenancy.runWithTenant('fw', async () => {
        const drop = await within(tenancy.dropTenant('fw', { confirm: 'fw' }).then(() => 'dropped', (error: unknown) => error));
        const forgot = await within(tenancy.forget('fw').then(() => 'forgot'));
        const evicted = await within(tenancy.evict('fw').then(() => 'evicted'));
        // The scope keeps its connection until it ends.
        return { drop, forgot, evicted, people: await tenancy.knex()('people').count({ n: '*' }) };
      });
      assert.ok(outcome.drop instanceof TenantError && outcome.drop.code === 'TENANT_DROP_IN_OWN_SCOPE', String(outcome.drop));
      assert.deepEqual([outcome.forgot, outcome.evicted], ['forgot', 'evicted']);
      assert.equal(outcome.people.length, 1);
      assert.ok(await backend.databaseExists('fw'), 'nothing was dropped');
      assert.ok(catalog.has('fw'));
      await tenancy.evict('fw');
      assert.equal(cached(tenancy), 0, 'the pool closed once the scope ended');
      await tenancy.dropTenant('fw', { confirm: 'fw' });
      assert.equal(await backend.databaseExists('fw'), false);
    });

    it("a TypeError from the app's own code (fetch failed) is the step's TenantLifecycleError; the library's own configuration TypeError is thrown as it is", async () => {
      const fetchFailed = () => Promise.reject(new TypeError('fetch failed'));
      const created = await make({ createDatabase: fetchFailed }).createTenant('tf', { seed: false }).catch((error: unknown) => error);
      assert.ok(created instanceof TenantLifecycleError, String(created));
      assert.equal(created.step, 'create-database');
      assert.equal((created.cause as Error).message, 'fetch failed');
      const dropped = await make({ dropDatabase: fetchFailed }).dropTenant('tf', { confirm: 'tf' }).catch((error: unknown) => error);
      assert.ok(dropped instanceof TenantLifecycleError, String(dropped));
      assert.equal(dropped.step, 'drop-database');
      // A client with no built-in create: a configuration mistake, a TypeError naming the options.
      const custom = createTenancy({ knexConfig: () => ({ client: 'pg', connection: {} }) });
      try {
        await assert.rejects(custom.createTenant('tf'), (error: unknown) => error instanceof TypeError && /options\.createDatabase/.test((error as Error).message));
      } finally {
        await custom.destroy();
      }
    });

    it('a transaction left open holds dropTenant only drainTimeoutMs: its connection is closed (rolled back), the database dropped', async () => {
      const tenancy = make();
      await tenancy.createTenant('ab', { seed: false });
      let trx: Knex.Transaction | undefined;
      await tenancy.runWithTenant('ab', async () => {
        trx = await tenancy.knex().transaction();
        await trx('people').insert({ name: 'abandoned' });
      });
      const started = Date.now();
      await tenancy.dropTenant('ab', { confirm: 'ab', drainTimeoutMs: 300 });
      assert.ok(Date.now() - started < 5_000, `dropTenant took ${Date.now() - started} ms`);
      assert.equal(await backend.databaseExists('ab'), false);
      assert.equal(catalog.has('ab'), false);
      await tenancy.createTenant('ab', { seed: false });
      assert.deepEqual(await tenancy.runWithTenant('ab', () => tenancy.knex()('people').pluck('name')), []);
      await tenancy.dropTenant('ab', { confirm: 'ab' });
      await trx?.rollback().catch(() => undefined);
      await assert.rejects(tenancy.dropTenant('ab', { confirm: 'ab', drainTimeoutMs: -1 }), TypeError);
    });

    // MySQL only (registered for its backends alone: no skipped test elsewhere).
    if (backend.knexConfig('x').client === 'mysql2') it('a lock on the database held elsewhere fails the drop after drainTimeoutMs (typed, nothing dropped), rather than a day', async () => {
      const tenancy = make();
      await tenancy.createTenant('lk', { seed: false });
      const other = knexFactory({ ...backend.knexConfig('lk'), pool: { min: 0, max: 1 } });
      const held = await other.transaction();
      try {
        await held('people').insert({ name: 'another process' });
        const started = Date.now();
        const outcome = await tenancy.dropTenant('lk', { confirm: 'lk', drainTimeoutMs: 1_000 }).catch((error: unknown) => error);
        assert.ok(outcome instanceof TenantLifecycleError, String(outcome));
        assert.equal(outcome.step, 'drop-database');
        assert.ok(Date.now() - started < 8_000, `dropTenant took ${Date.now() - started} ms`);
        assert.equal(await backend.databaseExists('lk'), true);
        assert.ok(catalog.has('lk'), 'still registered: the drop can be retried');
      } finally {
        await held.rollback().catch(() => undefined);
        await other.destroy();
      }
      await tenancy.dropTenant('lk', { confirm: 'lk' });
      assert.equal(await backend.databaseExists('lk'), false);
    });

    // MySQL only (registered for its backends alone: no skipped test elsewhere).
    if (backend.knexConfig('x').client === 'mysql2') it('an id whose database name the server refuses (too long with the prefix): migrate says UnknownTenantError, dropTenant unregisters it', async () => {
      const long = 'L'.repeat(63);
      catalog.add(long);
      const tenancy = make({ listTenants: () => [long] });
      const status = (await tenancy.migrate.status()).tenants[0]!;
      assert.equal(status.status, 'failed');
      assert.ok(status.error instanceof UnknownTenantError, String(status.error));
      await tenancy.dropTenant(long, { confirm: long });
      assert.equal(catalog.has(long), false);
    });

    it('stats().draining counts each forgotten pool or handle still serving a scope: two generations of one tenant are two', async () => {
      const tenancy = make();
      await tenancy.createTenant('c7', { seed: false });
      const gates: (() => void)[] = [];
      const hold = () => tenancy.runWithTenant('c7', () => new Promise<void>((resolve) => gates.push(resolve)));
      const first = hold();
      await new Promise((r) => setTimeout(r, 30));
      const forgotten = [tenancy.forget('c7')];
      const second = hold();
      await new Promise((r) => setTimeout(r, 30));
      forgotten.push(tenancy.forget('c7'));
      const during = tenancy.stats();
      assert.equal(during.leases, 2);
      assert.equal(during.draining, 2, JSON.stringify(during));
      for (const open of gates) open();
      await Promise.all([first, second, ...forgotten]);
      assert.equal(tenancy.stats().draining, 0);
      assert.equal(tenancy.stats().leases, 0);
    });

    it("an app createDatabase that succeeds on a database that is there (IF NOT EXISTS): refused with 409 before it runs, and a later step's undo cannot drop that database", async () => {
      catalog = new Set();
      const existing = await createSeededTenant(backend, 'kept');
      await existing.destroy();
      let hookCalls = 0;
      const tenancy = make({
        createDatabase: async (id) => {
          hookCalls++;
          if (!(await backend.databaseExists(id))) await backend.createDatabase(id);
        },
        // A failing later step: its undo drops the database.
        registerTenant: () => Promise.reject(new Error('the catalog refused')),
      });
      await assert.rejects(tenancy.createTenant('kept', { seed: false }), TenantAlreadyExistsError);
      assert.equal(hookCalls, 0);
      assert.ok(await backend.databaseExists('kept'), 'the database that was there is still there');
      const names = await withDirectKnex(backend, 'kept', async (knex) => (await knex('persons').orderBy('id')).map((r: { name: string }) => r.name));
      assert.deepEqual(names, ['kept-ada', 'kept-bob'], 'with its rows');
    });

    it("two createTenant() of one id at once with an app hook that succeeds on a database that is there (IF NOT EXISTS): the second is refused with 409, and the first's tenant keeps its database", async () => {
      catalog = new Set();
      let release: () => void = () => undefined;
      const slow = new Promise<void>((resolve) => (release = resolve));
      const tenancy = make({
        createDatabase: async (id) => {
          // A slow provisioning step before the create: both calls would pass the existence check first.
          await slow;
          if (!(await backend.databaseExists(id))) await backend.createDatabase(id);
        },
      });
      const first = tenancy.createTenant('twice', { seed: true });
      await new Promise((r) => setTimeout(r, 20));
      const refused = tenancy.createTenant('twice', { seed: true }).catch((error: unknown) => error);
      await new Promise((r) => setTimeout(r, 50));
      release();
      const [second, created] = await Promise.all([refused, first.catch((error: unknown) => error)]);
      assert.ok(second instanceof TenantAlreadyExistsError, String(second));
      assert.match((second as Error).message, /being created/);
      assert.equal(created instanceof Error, false, String(created));
      assert.ok(await backend.databaseExists('twice'), 'the created database is there');
      assert.ok(catalog.has('twice'));
      assert.ok((await people(tenancy, 'twice')).length > 0, 'seeded, not undone');
      await tenancy.dropTenant('twice', { confirm: 'twice' });
    });

    it('uses the app hooks for the database when given', async () => {
      const calls: string[] = [];
      const tenancy = make({
        createDatabase: async (id, config) => {
          calls.push(`create ${id} ${config.client}`);
          await backend.createDatabase(id);
        },
        dropDatabase: async (id) => {
          calls.push(`drop ${id}`);
          await backend.dropDatabase(id);
        },
      });
      await tenancy.createTenant('hooked', { seed: false });
      await tenancy.dropTenant('hooked', { confirm: 'hooked' });
      assert.deepEqual(calls, [`create hooked ${backend.knexConfig('x').client}`, 'drop hooked']);
      assert.equal(await backend.databaseExists('hooked'), false);
    });
  });
}

describe('createTenant with an app hook that creates the tenant database and its own user', { skip: skipMysql }, () => {
  /**
   * A tenancy whose tenant `id` connects as its own user, which the app's createDatabase hook makes
   * (with `ifNotExists`, the hook succeeds on a database that is there), and its clean-up.
   */
  const withOwnUser = (id: string, ifNotExists: boolean, extra: Partial<TenancyOptions> = {}) => {
    const files = writeMigrations();
    const { host, port } = mysqlConnection();
    const admin = knexFactory({ client: 'mysql2', connection: mysqlConnection(), pool: { min: 0, max: 1 } });
    const user = `ot_opsuser_${id}`;
    const database = `ot_opsuser_${id}`;
    const hosts = ['%', 'localhost', '127.0.0.1'];
    const cleanUp = async () => {
      await admin.raw('drop database if exists ??', [database]);
      for (const h of hosts) await admin.raw('drop user if exists ?@?', [user, h]);
    };
    const ifNot = ifNotExists ? 'if not exists ' : '';
    const tenancy = createTenancy({
      knexConfig: () => ({ client: 'mysql2', connection: { host, port, user, password: 'pw', database } }),
      acquireTimeoutMs: 3_000,
      migrations: { directory: files.migrations },
      seeds: { directory: files.seeds },
      createDatabase: async () => {
        await admin.raw(`create database ${ifNot}??`, [database]);
        for (const h of hosts) {
          await admin.raw(`create user ${ifNot}?@? identified by 'pw'`, [user, h]);
          await admin.raw('grant all on ??.* to ?@?', [database, user, h]);
        }
      },
      dropDatabase: cleanUp,
      ...extra,
    } as TenancyOptions);
    const close = async () => {
      await tenancy.destroy();
      await cleanUp();
      await admin.destroy();
      files.cleanup();
    };
    return { tenancy, admin, database, cleanUp, close };
  };

  it("the existence check, which cannot log in as the user yet, does not refuse it: the tenant is created, migrated and served as that user", async () => {
    const { tenancy, cleanUp, close } = withOwnUser('u1', false);
    try {
      await cleanUp();
      const result = await tenancy.createTenant('u1');
      assert.deepEqual(result.migrations, MIGRATION_NAMES);
      assert.deepEqual(await tenancy.runWithTenant('u1', () => tenancy.knex()('people').pluck('name')), ['seeded']);
    } finally {
      await close();
    }
  });

  it('when the check could not tell (the user is not there yet) and a later step fails, the database is left in place, with its data, and the error says so', async () => {
    const { tenancy, admin, database, cleanUp, close } = withOwnUser('u2', true, { registerTenant: () => Promise.reject(new Error('the catalog refused')) });
    try {
      await cleanUp();
      await admin.raw('create database ??', [database]);
      await admin.raw('create table ??.precious (v varchar(20))', [database]);
      await admin.raw("insert into ??.precious values ('kept')", [database]);
      const error = await tenancy.createTenant('u2', { seed: false }).catch((e: unknown) => e);
      assert.ok(error instanceof TenantLifecycleError, String(error));
      assert.equal(error.step, 'register');
      assert.match(error.message, /left in place/);
      assert.deepEqual(await admin(`${database}.precious`).pluck('v'), ['kept']);
    } finally {
      await close();
    }
  });
});

describe('createTenant, migrate and dropTenant on a shared server configured by a URL or a function', { skip: skipMysql }, () => {
  const { host, port, user, password } = mysqlConnection();
  const url = `mysql://${encodeURIComponent(user)}${password ? `:${encodeURIComponent(password)}` : ''}@${host}:${port}`;
  const connections: Record<string, unknown> = {
    url,
    function: () => ({ host, port, user, password }),
    'async function': async () => ({ host, port, user, password }),
  };
  for (const [form, connection] of Object.entries(connections)) for (const inlineSwitch of [false, true]) {
    it(`by ${form}${inlineSwitch ? ', inlineSwitch' : ''}: the tenant's database is created, migrated, served and dropped on that server`, async () => {
      const files = writeMigrations();
      const id = `byconf${form.length}${inlineSwitch ? 'i' : ''}`;
      const database = `ot_opsconf_${id}`;
      const catalog = new Set<string>();
      const tenancy = createTenancy({
        strategy: 'shared',
        ...(inlineSwitch ? { inlineSwitch: true, qualifyTables: false } : {}),
        servers: { main: { client: 'mysql2', connection: connection as never, pool: { max: 2 } } },
        locate: (tenant) => ({ server: 'main', database: `ot_opsconf_${tenant}` }),
        tenantExists: (tenant) => catalog.has(tenant),
        migrations: { directory: files.migrations },
        seeds: { directory: files.seeds },
        registerTenant: (tenant) => void catalog.add(tenant),
        unregisterTenant: (tenant) => void catalog.delete(tenant),
      });
      const admin = knexFactory({ client: 'mysql2', connection: mysqlConnection(), pool: { min: 0, max: 1 } });
      const exists = async () => ((await admin.raw('show databases like ?', [database])) as [unknown[]])[0].length === 1;
      try {
        await admin.raw('drop database if exists ??', [database]);
        const result = await tenancy.createTenant(id);
        assert.deepEqual(result.migrations, MIGRATION_NAMES);
        assert.equal(await exists(), true);
        for (let i = 0; i < 3; i++) assert.deepEqual(await tenancy.runWithTenant(id, () => tenancy.knex()('people').pluck('name')), ['seeded']);
        assert.equal((await tenancy.migrate.status({ tenants: [id] })).tenants[0]!.status, 'current');
        await tenancy.dropTenant(id, { confirm: id });
        assert.equal(await exists(), false);
      } finally {
        await tenancy.destroy();
        await admin.raw('drop database if exists ??', [database]);
        await admin.destroy();
        files.cleanup();
      }
    });
  }
});

describe("database names a URL writes alike (`a b`, `a%20b`) or knex's ?? splits (`a.b`): every operation names the database knex connects to", { skip: skipMysql }, () => {
  const { host, port, user, password } = mysqlConnection();
  const url = `mysql://${encodeURIComponent(user)}${password ? `:${encodeURIComponent(password)}` : ''}@${host}:${port}`;
  const admin = knexFactory({ client: 'mysql2', connection: mysqlConnection(), pool: { min: 0, max: 1 } });
  const tablesOf = async (database: string) =>
    ((await admin.raw('select table_name as t from information_schema.tables where table_schema = ? order by 1', [database])) as [{ t: string }[]])[0].map((r) => r.t);
  const exists = async (database: string) => ((await admin.raw('show databases like ?', [database.replace(/[%_\\]/g, '\\$&')])) as [unknown[]])[0].length === 1;
  const odd: Record<string, string> = { dot: 'ot_opsurl_a.b', alias: 'ot_opsurl_x as y', mark: 'ot_opsurl_a?b', tick: 'ot_opsurl_`t`' };
  const names = ['ot_opsurl_s p', 'ot_opsurl_s%20p', 'ot_opsurl_q p', 'ot_opsurl_q%20p', ...Object.values(odd)];
  const dropAll = async () => {
    // Quoted here: knex's ?? would split `a.b`.
    for (const name of names) await admin.raw(`drop database if exists \`${name.replace(/`/g, '``')}\``);
  };
  before(dropAll);
  after(async () => {
    await dropAll();
    await admin.destroy();
  });

  it("shared server by URL: each tenant is created, migrated and dropped in its own database, never the other's", async () => {
    const files = writeMigrations();
    const located: Record<string, string> = { sp: 'ot_opsurl_s p', pc: 'ot_opsurl_s%20p' };
    const catalog = new Set<string>();
    const tenancy = createTenancy({
      strategy: 'shared',
      servers: { main: { client: 'mysql2', connection: url, pool: { max: 2 } } },
      locate: (tenant) => ({ server: 'main', database: located[tenant]! }),
      tenantExists: (tenant) => catalog.has(tenant),
      migrations: { directory: files.migrations },
      seeds: { directory: files.seeds },
      registerTenant: (tenant) => void catalog.add(tenant),
      unregisterTenant: (tenant) => void catalog.delete(tenant),
    });
    try {
      await tenancy.createTenant('sp');
      assert.deepEqual(await tablesOf('ot_opsurl_s p'), ['knex_migrations', 'knex_migrations_lock', 'notes', 'people', 'pets']);
      assert.equal(await exists('ot_opsurl_s%20p'), false, "nothing made in the other tenant's database");
      await tenancy.createTenant('pc');
      await tenancy.runWithTenant('pc', () => tenancy.knex()('people').insert({ name: 'pc-only' }));
      assert.deepEqual(await tenancy.runWithTenant('sp', () => tenancy.knex()('people').pluck('name')), ['seeded']);
      await tenancy.dropTenant('pc', { confirm: 'pc' });
      assert.equal(await exists('ot_opsurl_s%20p'), false);
      assert.equal(await exists('ot_opsurl_s p'), true, "the other tenant's database is still there");
      assert.deepEqual(await tenancy.runWithTenant('sp', () => tenancy.knex()('people').pluck('name')), ['seeded']);
    } finally {
      await tenancy.destroy();
      files.cleanup();
    }
  });

  it('database names with a dot, " as ", "?" or a backtick are created, served and dropped as one name', async () => {
    const catalog = new Set<string>();
    const tenancy = createTenancy({
      strategy: 'shared',
      servers: { main: { client: 'mysql2', connection: { host, port, user, password }, pool: { max: 2 } } },
      locate: (tenant) => ({ server: 'main', database: odd[tenant]! }),
      tenantExists: (tenant) => catalog.has(tenant),
      registerTenant: (tenant) => void catalog.add(tenant),
      unregisterTenant: (tenant) => void catalog.delete(tenant),
    });
    try {
      for (const [tenant, database] of Object.entries(odd)) {
        await tenancy.createTenant(tenant);
        assert.equal(await exists(database), true, database);
        await tenancy.runWithTenant(tenant, async () => assert.equal((await tenancy.knex().raw('select database() as d'))[0][0].d, database));
      }
      for (const [tenant, database] of Object.entries(odd)) {
        await tenancy.dropTenant(tenant, { confirm: tenant });
        assert.equal(await exists(database), false, database);
      }
    } finally {
      await tenancy.destroy();
    }
  });

  it('pool per tenant, knexConfig returning a URL: dropTenant drops the database that URL connects to', async () => {
    await admin.raw('create database `ot_opsurl_q p`');
    await admin.raw('create table ??.?? (who varchar(20))', ['ot_opsurl_q p', 'owner']);
    const tenancy = createTenancy({ knexConfig: () => ({ client: 'mysql2', connection: `${url}/ot_opsurl_q%20p` }) });
    try {
      await tenancy.createTenant('qp', { seed: false });
      assert.equal(await exists('ot_opsurl_q%20p'), true, 'created where knex connects');
      await tenancy.runWithTenant('qp', async () => assert.equal((await tenancy.knex().raw('select database() as d'))[0][0].d, 'ot_opsurl_q%20p'));
      await tenancy.dropTenant('qp', { confirm: 'qp' });
      assert.equal(await exists('ot_opsurl_q%20p'), false);
      assert.deepEqual(await tablesOf('ot_opsurl_q p'), ['owner'], 'the database the decoded name would be is untouched');
    } finally {
      await tenancy.destroy();
    }
  });
});

describe('createTenant and dropTenant on SQLite files shared by two app processes', () => {
  const backend = sqliteBackend('ops2');
  const files = writeMigrations();
  const catalog = new Set<string>();
  const make = (): Tenancy =>
    createTenancy({
      knexConfig: backend.knexConfig,
      tenantExists: (id) => catalog.has(id),
      registerTenant: (id) => void catalog.add(id),
      unregisterTenant: (id) => void catalog.delete(id),
      migrations: { directory: files.migrations },
      seeds: { directory: files.seeds },
    });
  const a = make();
  const b = make();
  after(async () => {
    await a.destroy();
    await b.destroy();
    await backend.close();
    files.cleanup();
  });

  it("a request on the other process between the drop and its catalog's next answer gets a 404 and creates no file: the id can be created again", async () => {
    await a.createTenant('twice');
    assert.deepEqual(await b.runWithTenant('twice', () => b.knex()('people').pluck('name')), ['seeded']);
    await b.evict('twice'); // as maxPools or idleTimeoutMs would; b's catalog answer stays cached
    await a.dropTenant('twice', { confirm: 'twice' });
    await assert.rejects(b.runWithTenant('twice', () => b.knex()('people').pluck('name')), UnknownTenantError);
    assert.equal(await backend.databaseExists('twice'), false, "b's request created an empty file");
    assert.equal(b.stats().pools, 0);
    await a.createTenant('twice');
    await b.forget('twice');
    assert.deepEqual(await b.runWithTenant('twice', () => b.knex()('people').pluck('name')), ['seeded']);
  });

  it("a drop whose catalog answers slowly once it has unregistered the id: the other process creates the tenant again meanwhile, and the drop's last step leaves that tenant's file", async () => {
    const slow = createTenancy({
      knexConfig: backend.knexConfig,
      tenantExists: (id) => catalog.has(id),
      registerTenant: (id) => void catalog.add(id),
      // Removed from the catalog at once, answered 100 ms later (a remote catalog's reply).
      unregisterTenant: async (id) => {
        catalog.delete(id);
        await new Promise((r) => setTimeout(r, 100));
      },
      migrations: { directory: files.migrations },
      seeds: { directory: files.seeds },
    });
    try {
      await slow.createTenant('again');
      const dropped = slow.dropTenant('again', { confirm: 'again' });
      // The other process sees the id free and creates it again while the drop waits for its catalog.
      while (catalog.has('again')) await new Promise((r) => setTimeout(r, 5));
      await b.createTenant('again');
      await dropped;
      assert.ok(catalog.has('again'), 'registered by the other process');
      assert.equal(await backend.databaseExists('again'), true, "the drop's second delete removed the new tenant's file");
      await b.forget('again');
      assert.deepEqual(await b.runWithTenant('again', () => b.knex()('people').pluck('name')), ['seeded']);
      await b.dropTenant('again', { confirm: 'again' });
    } finally {
      await slow.destroy();
    }
  });
});
