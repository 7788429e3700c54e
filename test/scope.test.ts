/**
 * The tenant scope: nesting and restoring, fail-closed readers, thenables awaited inside the scope,
 * and two scopes forced to interleave with deferred promises (with its negative control).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
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

  it('returns fn’s result, and awaits a returned builder inside the scope so hooks see the tenant', async () => {
    HookedPerson.seenInAfterFind = [];
    const rows = await runWithTenant('b', () => HookedPerson.query().orderBy('id'));
    assert.deepEqual(rows.map((r) => r.name), ['b-ada', 'b-bob']);
    assert.deepEqual(HookedPerson.seenInAfterFind, ['b', 'b']);
    assert.equal(await runWithTenant('a', () => 42), 42);
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
