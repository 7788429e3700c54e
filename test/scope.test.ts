/**
 * The tenant scope: nesting and restoring, fail-closed readers, thenables awaited inside the scope,
 * and two scopes forced to interleave with deferred promises (with its negative control).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  bindTenant,
  createTenancy,
  currentTenantId,
  defaultTenancy,
  runWithTenant,
  setDefaultTenancy,
  TenantContextMissingError,
  tryCurrentTenantId,
  type Tenancy,
} from '../lib/index';
import { sqliteBackend } from './helpers/databases';
import { Person, setUpTenants } from './helpers/fixtures';

const backend = sqliteBackend('scope');
let tenancy: Tenancy;

class HookedPerson extends Person {
  static seenInAfterFind: (string | undefined)[] = [];
  override $afterFind(): void {
    HookedPerson.seenInAfterFind.push(tryCurrentTenantId());
  }
}

before(async () => {
  tenancy = createTenancy({ knexConfig: backend.knexConfig, tenantExists: backend.databaseExists });
  setDefaultTenancy(tenancy);
  for (const t of ['a', 'b']) await backend.createDatabase(t);
  await setUpTenants(tenancy, ['a', 'b']);
});
after(async () => {
  await tenancy.destroy();
  await backend.close();
});

/** A promise with its resolve function outside, to force an interleaving. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

describe('scope', () => {
  it('currentTenantId() throws outside a scope; tryCurrentTenantId() returns undefined', () => {
    assert.throws(() => currentTenantId(), TenantContextMissingError);
    assert.equal(tryCurrentTenantId(), undefined);
  });

  it('nests, and the outer scope is back after the inner returns or throws', async () => {
    await runWithTenant('a', async () => {
      assert.equal(currentTenantId(), 'a');
      assert.equal(await runWithTenant('b', async () => currentTenantId()), 'b');
      assert.equal(currentTenantId(), 'a');
      await assert.rejects(
        runWithTenant('b', async () => {
          throw new Error('inner failed');
        }),
        /inner failed/,
      );
      assert.equal(currentTenantId(), 'a');
      assert.equal((await Person.query().findById(1))!.name, 'a-ada');
    });
    assert.equal(tryCurrentTenantId(), undefined);
  });

  it("a section with no scope stays without one after a scope nested in it (a function bound outside any scope, inside a tenant's)", async () => {
    const seen: (string | undefined)[] = [];
    const unscoped = bindTenant(() => {
      seen.push(tryCurrentTenantId());
      // Entered synchronously and left: a cached tenant's scope.
      void tenancy.runWithTenant('b', () => seen.push(tryCurrentTenantId()));
      seen.push(tryCurrentTenantId());
      return Person.query().findById(1);
    });
    await runWithTenant('a', async () => {
      await runWithTenant('b', () => 0);
      await assert.rejects(async () => unscoped(), TenantContextMissingError);
      assert.equal(currentTenantId(), 'a');
    });
    assert.deepEqual(seen, [undefined, 'b', undefined]);
  });

  it('returns fn’s result, and awaits a returned builder inside the scope so hooks see the tenant', async () => {
    HookedPerson.seenInAfterFind = [];
    const rows = await runWithTenant('b', () => HookedPerson.query().orderBy('id'));
    assert.deepEqual(rows.map((r) => r.name), ['b-ada', 'b-bob']);
    assert.deepEqual(HookedPerson.seenInAfterFind, ['b', 'b']);
    assert.equal(await runWithTenant('a', () => 42), 42);
  });

  it('settles every kind of result as await would, and gives the lease back each time', async () => {
    const leases = (): number => tenancy.stats().leases ?? -1;
    const before = leases();
    // A synchronous throw: a rejection, not a throw out of runWithTenant.
    const thrown = runWithTenant('a', () => {
      throw new Error('sync failure');
    });
    await assert.rejects(thrown, /sync failure/);
    // A thenable that rejects, one whose `then` throws, one whose `then` getter throws, one that
    // resolves twice and then throws, and one whose then is not a function (the object itself).
    await assert.rejects(runWithTenant('a', () => ({ then: (_ok: unknown, fail: (e: Error) => void) => fail(new Error('rejected')) })), /rejected/);
    await assert.rejects(
      runWithTenant('a', () => ({
        then() {
          throw new Error('then threw');
        },
      })),
      /then threw/,
    );
    const getterThrows = Object.defineProperty({}, 'then', {
      get() {
        throw new Error('getter threw');
      },
    });
    await assert.rejects(runWithTenant('a', () => getterThrows), /getter threw/);
    const twice = {
      then(ok: (v: number) => void) {
        ok(1);
        ok(2);
        throw new Error('ignored after settling');
      },
    };
    assert.equal(await runWithTenant('a', () => twice as unknown as PromiseLike<number>), 1);
    const notThenable = { then: 42 };
    assert.equal(await runWithTenant('a', () => notThenable), notThenable);
    // A thenable resolving to a builder: adopted, and run in the scope (as await does).
    const nested = await runWithTenant('b', () => ({ then: (ok: (v: unknown) => void) => ok(Person.query().findById(1)) }));
    assert.equal((nested as { name: string }).name, 'b-ada');
    // A native promise, and a plain value.
    assert.equal(await runWithTenant('b', () => Promise.resolve(currentTenantId())), 'b');
    assert.equal(await runWithTenant('b', () => undefined), undefined);
    assert.equal(leases(), before);
    // A thenable's then runs inside the scope.
    let seen: string | undefined;
    const observing = {
      then(ok: (v: undefined) => void) {
        seen = tryCurrentTenantId();
        ok(undefined);
      },
    };
    await runWithTenant('a', () => observing as unknown as PromiseLike<undefined>);
    assert.equal(seen, 'a');
  });

  it('the free runWithTenant uses the default tenancy', () => {
    assert.equal(defaultTenancy(), tenancy);
  });

  it('keeps two scopes apart when they are forced to interleave', async () => {
    const aStarted = deferred();
    const bDone = deferred();
    const seen: string[] = [];
    const a = runWithTenant('a', async () => {
      aStarted.resolve();
      await bDone.promise; // b enters, queries and leaves while a is suspended here
      seen.push(`a:${currentTenantId()}:${(await Person.query().findById(1))!.name}`);
    });
    const b = (async () => {
      await aStarted.promise;
      await runWithTenant('b', async () => {
        seen.push(`b:${currentTenantId()}:${(await Person.query().findById(1))!.name}`);
      });
      bDone.resolve();
    })();
    await Promise.all([a, b]);
    assert.deepEqual(seen, ['b:b:b-ada', 'a:a:a-ada']);
  });

  it('negative control: the same interleaving with a global "current tenant" variable crosses tenants', async () => {
    let current: string | undefined; // the broken design: one mutable slot per process
    const runWithGlobal = async <T>(id: string, fn: () => Promise<T>) => {
      current = id;
      return fn();
    };
    const aStarted = deferred();
    const bDone = deferred();
    const seen: string[] = [];
    const a = runWithGlobal('a', async () => {
      aStarted.resolve();
      await bDone.promise;
      seen.push(`a:${current}`);
    });
    const b = (async () => {
      await aStarted.promise;
      await runWithGlobal('b', async () => seen.push(`b:${current}`));
      bDone.resolve();
    })();
    await Promise.all([a, b]);
    assert.deepEqual(seen, ['b:b', 'a:b'], 'the check above would have caught this');
  });
});
