/**
 * The catalog cache in front of `tenantExists`: TTLs, a bounded negative cache that survives a flood
 * of 100,000 unknown ids, one catalog call per id, `forget()`, and a failing catalog.
 */
import assert from 'node:assert/strict';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { after, before, describe, it } from 'node:test';
import { createTenancy, TenantUnavailableError, UnknownTenantError, type Tenancy, type PoolPerTenantOptions, type TenancyCommonOptions } from '../lib/index';
import { CATALOG_DEFAULTS, CatalogCache, POSITIVE_MAX } from '../lib/catalog-cache';
import { sqliteBackend } from './helpers/databases';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const backend = sqliteBackend('catalog');
const tenancies: Tenancy[] = [];
before(() => backend.createDatabase('real'));
after(async () => {
  for (const t of tenancies) await t.destroy();
  await backend.close();
});

function make(extra: Partial<PoolPerTenantOptions & TenancyCommonOptions> = {}): { tenancy: Tenancy; asked: Map<string, number> } {
  const asked = new Map<string, number>();
  const tenancy = createTenancy({
    knexConfig: backend.knexConfig,
    tenantExists: async (id) => {
      asked.set(id, (asked.get(id) ?? 0) + 1);
      await new Promise((r) => setImmediate(r));
      return backend.databaseExists(id);
    },
    ...extra,
  });
  tenancies.push(tenancy);
  return { tenancy, asked };
}

const unknown = (tenancy: Tenancy, id: string) =>
  tenancy.runWithTenant(id, () => 'reached').then(
    () => assert.fail(`${id} was served`),
    (error: unknown) => assert.ok(error instanceof UnknownTenantError, String(error)),
  );

describe('catalog cache', () => {
  it('100,000 distinct unknown ids: under 20 MB of growth and one catalog call per id', async () => {
    const { tenancy, asked } = make();
    const ids = Array.from({ length: 100_000 }, (_, i) => `ghost-${i.toString(36)}`);
    const step = 2_000;
    for (let i = 0; i < step; i++) await unknown(tenancy, ids[i]!); // warm the code paths
    gc();
    const baseline = process.memoryUsage().heapUsed;
    for (let i = step; i < ids.length; i += step) {
      await Promise.all(ids.slice(i, i + step).map((id) => unknown(tenancy, id)));
    }
    gc();
    const grown = process.memoryUsage().heapUsed - baseline;
    assert.ok(grown < 20 * 1024 * 1024, `heap grew by ${(grown / 1048576).toFixed(1)} MB`);
    assert.equal(asked.size, ids.length);
    assert.ok([...asked.values()].every((n) => n === 1), 'each id was asked once');
    assert.equal(tenancy.stats().catalog!.unknown, 10_000, 'the negative cache is bounded');
    assert.equal(tenancy.stats().pools, 0);
    // The most recent 5,000 are still cached: asking again costs no catalog call.
    await Promise.all(ids.slice(-5_000).map((id) => unknown(tenancy, id)));
    assert.equal(tenancy.stats().catalog!.lookups, ids.length);
  });

  it('200 concurrent requests for one new id make one catalog call', async () => {
    const { tenancy, asked } = make();
    await Promise.all(Array.from({ length: 200 }, () => unknown(tenancy, 'stampede')));
    assert.equal(asked.get('stampede'), 1);
    await Promise.all(Array.from({ length: 200 }, () => tenancy.runWithTenant('real', () => 1)));
    assert.equal(asked.get('real'), 1);
  });

  it('answers expire after their TTL, and forget() drops them at once', async () => {
    const { tenancy, asked } = make({ catalogTtlMs: 100, negativeCacheTtlMs: 100 });
    await unknown(tenancy, 'later');
    await tenancy.runWithTenant('real', () => 1);
    await unknown(tenancy, 'later');
    await tenancy.runWithTenant('real', () => 1);
    assert.deepEqual([asked.get('later'), asked.get('real')], [1, 1]);
    await new Promise((r) => setTimeout(r, 150));
    await unknown(tenancy, 'later');
    await tenancy.runWithTenant('real', () => 1);
    assert.deepEqual([asked.get('later'), asked.get('real')], [2, 2]);
    await backend.createDatabase('later');
    await unknown(tenancy, 'later'); // still cached as unknown
    await tenancy.forget('later');
    assert.equal(await tenancy.runWithTenant('later', () => 'now served'), 'now served');
    assert.equal(asked.get('later'), 3);
  });

  it('"exists" answers do not outlive their TTL in memory: expired ones are swept, and at most 100,000 are kept', async () => {
    // A catalog that says yes to many ids (every spelling of a name, with a case-insensitive one),
    // all served by one real database.
    const tenancy = createTenancy({
      knexConfig: () => backend.knexConfig('real'),
      tenantExists: (id) => id.toLowerCase().startsWith('real'),
      catalogTtlMs: 1_500,
      maxPools: 5,
    });
    tenancies.push(tenancy);
    const ids = Array.from({ length: 60 }, (_, i) => `Real-${i}`);
    for (const id of ids) assert.equal(await tenancy.runWithTenant(id, () => 1), 1);
    assert.equal(tenancy.stats().catalog!.known, 60);
    await new Promise((r) => setTimeout(r, 1_600));
    // Nothing asked since: the expired answers are gone all the same.
    assert.equal(tenancy.stats().catalog!.known, 0);
    assert.equal(await tenancy.runWithTenant('REAL-again', () => 2), 2);
    assert.equal(tenancy.stats().catalog!.known, 1);

    // The bound, on the cache itself (100,001 tenant pools would take minutes to open): the oldest
    // answer goes first, and is asked again.
    const asked = new Map<string, number>();
    const cache = new CatalogCache((id) => {
      asked.set(id, (asked.get(id) ?? 0) + 1);
      return true;
    }, { ...CATALOG_DEFAULTS, ttlMs: 3_600_000 });
    for (let i = 0; i <= POSITIVE_MAX; i++) assert.equal(await cache.exists(`t${i}`), true);
    assert.equal(cache.stats().known, POSITIVE_MAX);
    assert.equal(cache.exists(`t${POSITIVE_MAX}`), true, 'the newest answer is cached (no promise)');
    assert.ok(cache.exists('t0') instanceof Promise, 'the oldest was dropped and is asked again');
    assert.equal(asked.get('t0'), 2);
  });

  /** A `tenantExists` on the backend whose first lookup reads the answer, then waits for `letGo()`. */
  const heldFirstLookup = () => {
    let calls = 0;
    let looked!: () => void;
    const lookedUp = new Promise<void>((resolve) => (looked = resolve));
    let letGo!: () => void;
    const held = new Promise<void>((resolve) => (letGo = resolve));
    const tenantExists = async (id: string) => {
      const exists = await backend.databaseExists(id);
      if (++calls === 1) {
        looked();
        await held;
      }
      return exists;
    };
    return { tenantExists, lookedUp, letGo, calls: () => calls };
  };

  it('forget() during a lookup in flight: its answer is not cached, and later requests ask again', async () => {
    // The first lookup reads "no such tenant", then waits while the tenant is created.
    const { tenantExists, lookedUp, letGo, calls } = heldFirstLookup();
    const tenancy = createTenancy({ knexConfig: backend.knexConfig, tenantExists });
    tenancies.push(tenancy);
    const early = tenancy.runWithTenant('racer', () => 'served'); // its lookup reads "no", before the create
    await lookedUp;
    await backend.createDatabase('racer');
    await tenancy.forget('racer');
    const after = tenancy.runWithTenant('racer', () => 'served');
    letGo();
    assert.equal(await early, 'served', 'the request whose lookup began before forget() used that stale "no"');
    assert.equal(await after, 'served', 'a request after forget() joined the lookup begun before it');
    assert.equal(await tenancy.runWithTenant('racer', () => 'served'), 'served', 'the answer begun before forget() was cached');
    // The early request asked again and joined the lookup the later one had begun.
    assert.equal(calls(), 2);
  });

  it('a lookup begun before a drop answers no tenant once forget() ran: no pool is opened for the dropped tenant', async () => {
    await backend.createDatabase('dropped');
    // The first lookup reads "exists", then waits while the tenant is dropped.
    const { tenantExists, lookedUp, letGo, calls } = heldFirstLookup();
    let opened = 0;
    const tenancy = createTenancy({ knexConfig: (id) => (opened++, backend.knexConfig(id)), tenantExists });
    tenancies.push(tenancy);
    const early = unknown(tenancy, 'dropped');
    await lookedUp;
    await backend.dropDatabase('dropped');
    await tenancy.forget('dropped');
    letGo();
    await early;
    assert.equal(opened, 0, 'a pool was opened for the dropped tenant');
    assert.equal(await backend.databaseExists('dropped'), false, 'opening it created the database again');
    assert.equal(calls(), 2);
  });

  it("a catalog that says no for a tenant with a cached pool closes that pool: a later yes opens the tenant afresh", async () => {
    // Another process dropped the tenant (and may create it again): this one's pool still holds the old database.
    await backend.createDatabase('dropped-elsewhere');
    let exists = true;
    const tenancy = createTenancy({ knexConfig: backend.knexConfig, tenantExists: () => exists, catalogTtlMs: 20, negativeCacheTtlMs: 20 });
    tenancies.push(tenancy);
    const first = await tenancy.runWithTenant('dropped-elsewhere', () => tenancy.knex());
    exists = false;
    await new Promise((r) => setTimeout(r, 40));
    await unknown(tenancy, 'dropped-elsewhere');
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(tenancy.stats().pools, 0, 'the pool of a tenant the catalog says is gone stayed open');
    exists = true;
    await new Promise((r) => setTimeout(r, 40));
    const second = await tenancy.runWithTenant('dropped-elsewhere', () => tenancy.knex());
    assert.notEqual(second, first, 'the old pool was served again');
    await backend.dropDatabase('dropped-elsewhere');
  });

  it('a failing catalog answers TenantUnavailableError (503) and is not cached', async () => {
    let down = true;
    const tenancy = createTenancy({
      knexConfig: backend.knexConfig,
      tenantExists: (id) => {
        if (down) throw new Error('catalog connection refused (password=hunter2)');
        return backend.databaseExists(id);
      },
    });
    tenancies.push(tenancy);
    const error = await tenancy.runWithTenant('real', () => 1).catch((e: unknown) => e);
    assert.ok(error instanceof TenantUnavailableError);
    assert.equal(error.statusCode, 503);
    assert.doesNotMatch(error.message, /hunter2/);
    down = false;
    assert.equal(await tenancy.runWithTenant('real', () => 'ok'), 'ok');
  });

  it('a lookup that never answers (tenantExists, knexConfig) fails with a 503 after acquireTimeoutMs instead of hanging its requests', async () => {
    const hanging = new Set(['real']);
    let configHangs = false;
    const tenancy = createTenancy({
      knexConfig: (id) => (configHangs ? new Promise<never>(() => undefined) : backend.knexConfig(id)),
      tenantExists: (id) => (hanging.has(id) ? new Promise<boolean>(() => undefined) : backend.databaseExists(id)),
      acquireTimeoutMs: 300,
    });
    tenancies.push(tenancy);
    const started = Date.now();
    // Before stop 22 these waited forever.
    const answers = await Promise.all([1, 2, 3].map(() => tenancy.runWithTenant('real', () => 1).catch((e: unknown) => e)));
    for (const error of answers) assert.ok(error instanceof TenantUnavailableError, String(error));
    assert.ok(Date.now() - started < 3_000, `answered after ${Date.now() - started} ms`);
    hanging.clear();
    configHangs = true;
    await assert.rejects(tenancy.runWithTenant('real', () => 1), TenantUnavailableError);
    configHangs = false;
    assert.equal(await tenancy.runWithTenant('real', () => 'ok'), 'ok');
  });
});
