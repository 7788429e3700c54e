/**
 * Implicit transactions and the cross-tenant instance guard, on SQLite files and MariaDB (InnoDB).
 */
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import knexFactory, { type Knex } from 'knex';
import type { QueryContext } from 'objection';
import {
  bindTenant,
  createTenancy,
  currentTenantId,
  onCommit,
  onRollback,
  TenantMismatchError,
  TransactionAbortedError,
  instanceTenantId,
  toHttpError,
  type Tenancy,
} from '../lib/index';
import { allStrategies } from './helpers/databases';
import { Audit, createSchema, Movie, Person, Pet, reseed } from './helpers/fixtures';

const TENANTS = ['x1', 'x2'] as const;

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

/** A Person whose inserts register onCommit/onRollback callbacks that log their outcome. */
function outcomeLogged(): { log: string[]; HookedPerson: typeof Person } {
  const log: string[] = [];
  class HookedPerson extends Person {
    override async $afterInsert(): Promise<void> {
      onCommit(() => log.push(`commit ${this.name}`));
      onRollback(() => log.push(`rollback ${this.name}`));
    }
  }
  return { log, HookedPerson };
}

for (const backend of allStrategies('trx', { inlineSwitch: true })) {
  describe(`transactions on ${backend.name}`, { skip: backend.skip }, () => {
    let tenancy: Tenancy;
    const direct = new Map<string, Knex>();
    const hookErrors: unknown[] = [];
    const names = async (t: string) => (await direct.get(t)!('persons').orderBy('id')).map((r: { name: string }) => r.name);
    /** A transaction that awaits `work` (a query built elsewhere) and then rolls back. */
    const undoneAfter = (work: PromiseLike<unknown>) =>
      assert.rejects(
        tenancy.transaction(async () => {
          await work;
          throw new Error('undo');
        }),
        /undo/,
      );

    before(async () => {
      for (const t of TENANTS) {
        await backend.createDatabase(t);
        direct.set(t, knexFactory(backend.knexConfig(t)));
        await createSchema(direct.get(t)!, t);
      }
      tenancy = createTenancy({ ...backend.connectionOptions(), tenantExists: backend.databaseExists, onHookError: (e) => hookErrors.push(e) });
    });
    beforeEach(async () => {
      for (const t of TENANTS) {
        await reseed(direct.get(t)!, t);
      }
    });
    after(async () => {
      await tenancy.destroy();
      for (const knex of direct.values()) await knex.destroy();
      for (const t of TENANTS) await backend.dropDatabase(t);
      await backend.close();
    });

    it('tenancy.transaction: queries without trx join it, its result is returned, a throw rolls back', async () => {
      const result = await tenancy.runWithTenant('x1', () =>
        tenancy.transaction(async (trx) => {
          assert.equal(tenancy.knex(), trx);
          assert.equal(Person.knex(), trx);
          await Person.query().insert({ name: 'kept' });
          return 'done';
        }),
      );
      assert.equal(result, 'done');
      await assert.rejects(
        tenancy.runWithTenant('x1', () =>
          tenancy.transaction(async () => {
            await Person.query().insert({ name: 'undone' });
            await tenancy.knex()('movies').insert({ title: 'undone' });
            throw new Error('boom');
          }),
        ),
        /boom/,
      );
      assert.deepEqual(await names('x1'), ['x1-ada', 'x1-bob', 'kept']);
      assert.equal((await direct.get('x1')!('movies').where({ title: 'undone' })).length, 0);
    });

    it('tenancy.transaction(fn) returning a query builder resolves to its rows, and is typed so (not as a builder)', async () => {
      // `.then((person) => person?.name)` compiles only when the result is typed as the row: typed
      // Promise<QueryBuilder> before, it did not, though the rows came at run time.
      const name = await tenancy.runWithTenant('x1', () =>
        tenancy.transaction(() => Person.query().findOne({ name: 'x1-ada' })).then((person) => person?.name),
      );
      assert.equal(name, 'x1-ada');
    });

    it('a nested transaction is a savepoint: its rollback keeps the outer work', async () => {
      await tenancy.runWithTenant('x2', () =>
        tenancy.transaction(async () => {
          await Person.query().insert({ name: 'outer' });
          await assert.rejects(
            tenancy.transaction(async () => {
              await Person.query().insert({ name: 'inner' });
              throw new Error('inner fails');
            }),
            /inner fails/,
          );
          await Person.transaction(async () => Person.query().insert({ name: 'inner-ok' }));
        }),
      );
      assert.deepEqual(await names('x2'), ['x2-ada', 'x2-bob', 'outer', 'inner-ok']);
    });

    it('Promise.all of queries inside one transaction', async () => {
      const counts = await tenancy.runWithTenant('x1', () =>
        tenancy.transaction(() =>
          Promise.all([
            Person.query().insert({ name: 'p1' }),
            Pet.query().insert({ name: 'pet', owner_id: 1 }),
            Movie.query().insert({ title: 'm' }),
            Person.query().resultSize(),
          ]),
        ),
      );
      assert.equal(counts.length, 4);
      assert.ok((await names('x1')).includes('p1'));
    });

    it('transactions of two tenants run concurrently without touching each other', async () => {
      const bothOpen = [deferred(), deferred()];
      const run = (t: string, i: number, fail: boolean) =>
        tenancy.runWithTenant(t, () =>
          tenancy.transaction(async () => {
            await Person.query().insert({ name: `${t}-concurrent` });
            bothOpen[i]!.resolve();
            await Promise.all(bothOpen.map((d) => d.promise));
            assert.deepEqual((await Person.query().where('name', 'like', '%concurrent')).map((p) => p.name), [`${t}-concurrent`]);
            if (fail) throw new Error(`${t} rolls back`);
          }),
        );
      const [ok, failed] = await Promise.allSettled([run('x1', 0, false), run('x2', 1, true)]);
      assert.equal(ok.status, 'fulfilled');
      assert.equal(failed.status, 'rejected');
      assert.ok((await names('x1')).includes('x1-concurrent'));
      assert.ok(!(await names('x2')).includes('x2-concurrent'));
    });

    it('a nested runWithTenant to another tenant inside a transaction uses that tenant’s own connection', async () => {
      await assert.rejects(
        tenancy.runWithTenant('x1', () =>
          tenancy.transaction(async () => {
            await Person.query().insert({ name: 'x1-rolled-back' });
            await tenancy.runWithTenant('x2', async () => {
              assert.equal(currentTenantId(), 'x2');
              await Person.query().insert({ name: 'x2-independent' });
            });
            throw new Error('x1 rolls back');
          }),
        ),
        /x1 rolls back/,
      );
      assert.ok(!(await names('x1')).includes('x1-rolled-back'));
      assert.ok((await names('x2')).includes('x2-independent'));
    });

    it('onCommit and onRollback run after the outcome, in the tenant scope, outside the transaction', async () => {
      const events: string[] = [];
      await tenancy.runWithTenant('x1', async () => {
        await tenancy.transaction(async (trx) => {
          void onCommit(async () => {
            events.push(`commit:${currentTenantId()}:${Person.knex() === trx ? 'in-trx' : 'after'}`);
            events.push(`visible:${(await Person.query().where({ name: 'c' })).length}`);
          });
          onRollback(() => events.push('never'));
          await Person.query().insert({ name: 'c' });
          await assert.rejects(
            tenancy.transaction(async () => {
              onCommit(() => events.push('dropped: savepoint rolled back'));
              onRollback(() => events.push(`savepoint-rollback:${currentTenantId()}`));
              throw new Error('sp');
            }),
          );
          await tenancy.transaction(async () => {
            onCommit(() => events.push('savepoint-commit-waits-for-outer'));
          });
          events.push('body-end');
        });
        await assert.rejects(
          tenancy.transaction(async () => {
            onCommit(() => events.push('never'));
            onRollback(() => events.push(`rollback:${currentTenantId()}`));
            onRollback(() => {
              throw new Error('hook failure is reported, not thrown');
            });
            throw new Error('rb');
          }),
          /rb/,
        );
        await onCommit(() => events.push('no-trx:runs-at-once'));
      });
      assert.deepEqual(events, [
        'savepoint-rollback:x1',
        'body-end',
        'commit:x1:after',
        'visible:1',
        'savepoint-commit-waits-for-outer',
        'rollback:x1',
        'no-trx:runs-at-once',
      ]);
      assert.equal(hookErrors.length, 1);
    });

    it("an outer statement that writes beside a savepoint that then rolls back (its ROLLBACK TO SAVEPOINT undid it): the whole transaction rolls back with TransactionAbortedError, not a commit without it", async () => {
      const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
      const savepoint = () =>
        tenancy
          .transaction(async () => {
            await Person.query().insert({ name: 'x1-in-savepoint' });
            await pause(50);
            throw new Error('savepoint fails');
          })
          .catch((error: Error) => error.message);
      const outer = (name: string, delay: number) => async () => {
        if (delay > 0) await pause(delay);
        await Person.query().insert({ name });
        return 'outer insert done';
      };
      for (const [label, order] of [
        ['outer write while the savepoint runs', (name: string) => [outer(name, 20)(), savepoint()]],
        ['savepoint first, outer write at once (sent before the SAVEPOINT is answered)', (name: string) => [savepoint(), outer(name, 0)()]],
        ['outer write first, at once', (name: string) => [outer(name, 0)(), savepoint()]],
      ] as const) {
        const name = `x1-beside-${label.length}`;
        const outcome = await tenancy.runWithTenant('x1', () => tenancy.transaction(() => Promise.all(order(name)))).then((value) => value, (error: unknown) => error);
        const after = await names('x1');
        assert.ok(!after.includes('x1-in-savepoint'), label);
        // Either the write went out before the SAVEPOINT (kept, committed) or after it (undone: the
        // transaction fails). Before: resolved, committed, and the write was gone.
        if (outcome instanceof TransactionAbortedError) {
          assert.match(outcome.message, /savepoint/);
          assert.ok(!after.includes(name), `${label}: rolled back, yet the write is there`);
        } else {
          assert.ok(after.includes(name), `${label}: ${String(outcome)}, committed without its write: ${after.join(', ')}`);
          await tenancy.runWithTenant('x1', () => Person.query().where({ name }).delete());
        }
        if (label.startsWith('outer write while')) assert.ok(outcome instanceof TransactionAbortedError, `${label}: ${String(outcome)}`);
      }
      // Raw SQL that names no database: under qualifyTables refused on a clean connection (a new
      // tenancy's) and sent again after a USE, behind the SAVEPOINT (knex reported it before).
      // Before: committed without it.
      const clean = createTenancy({ ...backend.connectionOptions(), tenantExists: backend.databaseExists });
      const raw = await clean
        .runWithTenant('x1', () =>
          clean.transaction(async (trx) =>
            Promise.all([
              trx.raw('insert into persons (name) values (?)', ['x1-raw-beside']).then(() => 'done'),
              clean
                .transaction(async (inner) => {
                  await inner.raw('select 1');
                  await pause(50);
                  throw new Error('savepoint fails');
                })
                .catch((error: Error) => error.message),
            ]),
          ),
        )
        .then((value) => value, (error: unknown) => error)
        .finally(() => clean.destroy());
      const rawKept = (await names('x1')).includes('x1-raw-beside');
      assert.ok(raw instanceof TransactionAbortedError ? !rawKept : rawKept, `${String(raw)}; the raw insert ${rawKept ? 'is there' : 'is gone'}`);
      if (rawKept) await tenancy.runWithTenant('x1', () => Person.query().where({ name: 'x1-raw-beside' }).delete());
      // A write of the outer level streamed inside the savepoint (INSERT ... RETURNING): undone by
      // its rollback too. Before: not attributed to any level, the transaction committed without it.
      const streamed = await tenancy
        .runWithTenant('x1', () =>
          tenancy.transaction(async (trx) => {
            const message = await tenancy
              .transaction(async () => {
                for await (const row of trx.raw("insert into persons (name) values ('x1-streamed') returning id").stream()) void row;
                throw new Error('savepoint fails');
              })
              .catch((error: Error) => error.message);
            await trx('persons').insert({ name: 'x1-after-streamed' });
            return message;
          }),
        )
        .then((value) => value, (error: unknown) => error);
      assert.ok(streamed instanceof TransactionAbortedError, String(streamed));
      assert.ok(!(await names('x1')).some((n) => n === 'x1-streamed' || n === 'x1-after-streamed'));
      // Sent as the SAVEPOINT goes out, before its answer (and before the savepoint's callback runs):
      // undone by its rollback. Before the fix of this case: committed without it.
      const asSent = await tenancy
        .runWithTenant('x1', () =>
          tenancy.transaction(async (trx) => {
            let written: Promise<unknown> | undefined;
            trx.on('query', (query: { sql?: string }) => {
              if (written === undefined && /^SAVEPOINT/i.test(String(query.sql))) written = trx('persons').insert({ name: 'x1-as-savepoint-sent' }).then(() => 'done');
            });
            const message = await savepoint();
            return [message, await written];
          }),
        )
        .then((value) => value, (error: unknown) => error);
      assert.ok(asSent instanceof TransactionAbortedError, String(asSent));
      assert.ok(!(await names('x1')).includes('x1-as-savepoint-sent'));
      // The tenant's next transaction is a clean one.
      await tenancy.runWithTenant('x1', () => tenancy.transaction(() => Person.query().insert({ name: 'x1-next' })));
      assert.ok((await names('x1')).includes('x1-next'));
      await tenancy.runWithTenant('x1', () => Person.query().where('name', 'x1-next').delete());
    });

    it("an outer write sent after the savepoint's ROLLBACK TO SAVEPOINT went out, and a CTE read beside it, are not undone: the transaction commits", async () => {
      await tenancy.runWithTenant('x1', () =>
        tenancy.transaction(async (trx) => {
          // Sent while the ROLLBACK TO SAVEPOINT is on the wire: after it, so not undone.
          let afterRollback: Promise<unknown> | undefined;
          // A read sent while the savepoint is open: a CTE's, which starts with WITH, not SELECT.
          let read: Promise<unknown> | undefined;
          trx.on('query', (query: { sql?: string }) => {
            const sql = String(query.sql);
            if (read === undefined && /^SAVEPOINT/i.test(sql)) read = trx.with('p', (qb) => qb.select('name').from('persons')).select('name').from('p').then((rows) => rows);
            if (afterRollback === undefined && /^ROLLBACK TO/i.test(sql)) afterRollback = trx('persons').insert({ name: 'x1-after-rollback-sent' }).then(() => 'done');
          });
          await Promise.allSettled([
            tenancy.transaction(async () => {
              await Person.query().insert({ name: 'x1-in-savepoint' });
              await new Promise((resolve) => setTimeout(resolve, 40));
              throw new Error('savepoint fails');
            }),
          ]);
          await Promise.all([read, afterRollback]);
          await Person.query().insert({ name: 'x1-later' });
        }),
      );
      const after = await names('x1');
      assert.ok(after.includes('x1-after-rollback-sent') && after.includes('x1-later') && !after.includes('x1-in-savepoint'), after.join(', '));
      await tenancy.runWithTenant('x1', () => Person.query().whereIn('name', ['x1-after-rollback-sent', 'x1-later']).delete());
    });

    it('what a savepoint rollback does not undo still commits: an outer read beside it, an outer write beside a savepoint that is released, a rolled-back savepoint\'s onRollback query, an outer-level bindTenant helper called inside a savepoint', async () => {
      const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
      await tenancy.runWithTenant('x1', () =>
        tenancy.transaction(async () => {
          const audit = bindTenant(async (name: string) => {
            await Person.query().insert({ name });
          });
          await Promise.all([
            (async () => {
              await pause(30);
              return Person.query().select('name');
            })(),
            tenancy
              .transaction(async () => {
                onRollback(async () => {
                  await Person.query().insert({ name: 'x1-compensation' });
                });
                await pause(100);
                throw new Error('savepoint fails');
              })
              .catch(() => undefined),
          ]);
          await Promise.all([
            (async () => {
              await pause(30);
              await Person.query().insert({ name: 'x1-beside-released' });
            })(),
            tenancy.transaction(async () => {
              await audit('x1-helper-in-savepoint');
              await pause(100);
            }),
          ]);
        }),
      );
      const after = await names('x1');
      for (const name of ['x1-compensation', 'x1-beside-released', 'x1-helper-in-savepoint']) assert.ok(after.includes(name), `${name}: ${after.join(', ')}`);
      await tenancy.runWithTenant('x1', () => Person.query().whereIn('name', ['x1-compensation', 'x1-beside-released', 'x1-helper-in-savepoint']).delete());
    });

    it('a function bound at a transaction\'s top level and called inside one of its savepoints runs in the savepoint: its rollback takes the write back, the transaction commits the rest', async () => {
      await tenancy.runWithTenant('x1', () =>
        tenancy.transaction(async () => {
          const audit = bindTenant(async (name: string) => {
            await Person.query().insert({ name });
          });
          await Person.query().insert({ name: 'x1-top' });
          await tenancy
            .transaction(async () => {
              await audit('x1-helper-in-failed-savepoint');
              throw new Error('savepoint fails');
            })
            .catch(() => undefined);
          // Called at the top level again: it runs there.
          await audit('x1-helper-after');
        }),
      );
      const after = await names('x1');
      // Before: the helper wrote at the top level while the savepoint was open; its rollback undid
      // that write and the transaction failed (TransactionAbortedError).
      assert.ok(after.includes('x1-top') && after.includes('x1-helper-after'), after.join(', '));
      assert.ok(!after.includes('x1-helper-in-failed-savepoint'), after.join(', '));
      await tenancy.runWithTenant('x1', () => Person.query().whereIn('name', ['x1-top', 'x1-helper-after']).delete());
    });

    it('onCommit: a savepoint\'s callbacks keep the place where it began, ahead of what the outer level registers while it runs', async () => {
      const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
      const order: string[] = [];
      await tenancy.runWithTenant('x1', () =>
        tenancy.transaction(async () => {
          onCommit(() => void order.push('1 outer, before the savepoint'));
          await Promise.all([
            tenancy.transaction(async () => {
              onCommit(() => void order.push('2 savepoint'));
              await pause(80);
            }),
            (async () => {
              await pause(20);
              onCommit(() => void order.push('3 outer, while the savepoint ran'));
            })(),
          ]);
          onCommit(() => void order.push('4 outer, after'));
        }),
      );
      assert.deepEqual(order, ['1 outer, before the savepoint', '2 savepoint', '3 outer, while the savepoint ran', '4 outer, after']);
    });

    it("trx.rollback() called by the callback is a rollback: onRollback runs, onCommit does not, for a savepoint too", async () => {
      const ran: string[] = [];
      await tenancy.runWithTenant('x1', async () => {
        const result = await tenancy.transaction(async (trx) => {
          await Person.query().insert({ name: 'undone' });
          onCommit(() => void ran.push('commit'));
          onRollback(() => void ran.push('rollback'));
          await trx.rollback();
        });
        assert.equal(result, undefined);
        await tenancy.transaction(async () => {
          await Person.query().insert({ name: 'outer-kept' });
          await tenancy.transaction(async (sp) => {
            await Person.query().insert({ name: 'savepoint-undone' });
            onCommit(() => void ran.push('savepoint commit'));
            onRollback(() => void ran.push('savepoint rollback'));
            await sp.rollback();
          });
          onCommit(() => void ran.push('outer commit'));
        });
      });
      assert.deepEqual(ran, ['rollback', 'savepoint rollback', 'outer commit']);
      assert.deepEqual(await names('x1'), ['x1-ada', 'x1-bob', 'outer-kept']);
    });

    it('work started in a transaction that runs after it ended uses the tenant connection, not the finished transaction; its onCommit/onRollback follow the outcome', async () => {
      const ran: string[] = [];
      const later = deferred();
      const done: Promise<unknown>[] = [];
      await tenancy.runWithTenant('x1', async () => {
        await tenancy.transaction(async () => {
          await Person.query().insert({ name: 'in-trx' });
          done.push(
            later.promise.then(async () => {
              await Person.query().insert({ name: 'after-commit' });
              await tenancy.knex()('persons').insert({ name: 'after-commit-knex' });
              await tenancy.transaction(async () => Person.query().insert({ name: 'after-commit-trx' }));
              onCommit(() => void ran.push('late commit after commit'));
              onRollback(() => void ran.push('late rollback after commit'));
            }),
          );
        });
        await tenancy
          .transaction(async () => {
            done.push(
              later.promise.then(async () => {
                onCommit(() => void ran.push('late commit after rollback'));
                onRollback(() => void ran.push('late rollback after rollback'));
                await Person.query().insert({ name: 'after-rollback' });
              }),
            );
            throw new Error('roll back');
          })
          .catch(() => undefined);
      });
      later.resolve();
      await Promise.all(done);
      await new Promise((resolve) => setImmediate(resolve));
      assert.deepEqual(ran.sort(), ['late commit after commit', 'late rollback after rollback']);
      assert.deepEqual((await names('x1')).slice(2).sort(), ['after-commit', 'after-commit-knex', 'after-commit-trx', 'after-rollback', 'in-trx']);
    });

    it('a query built before tenancy.transaction() and awaited inside it runs in the transaction, and is rolled back with it', async () => {
      await tenancy.runWithTenant('x1', async () => {
        const insert = Person.query().insert({ name: 'x1-built-before' });
        await undoneAfter(insert);
      });
      assert.ok(!(await names('x1')).includes('x1-built-before'), 'a model query built before the transaction was committed outside it');
    });

    it("a query built before the transaction and awaited inside it gives its hooks the transaction (ctx.transaction), and is rolled back with them", async () => {
      class HookedPerson extends Person {
        override async $beforeInsert(context?: QueryContext): Promise<void> {
          await Audit.query(context!.transaction).insert({ message: `hooked ${this.name}` });
        }
      }
      await tenancy.runWithTenant('x1', async () => {
        const insert = HookedPerson.query().insert({ name: 'x1-hooked-before' });
        await undoneAfter(insert);
      });
      assert.ok(!(await names('x1')).includes('x1-hooked-before'));
      assert.deepEqual(await direct.get('x1')!('audit').where('message', 'like', 'hooked %').pluck('message'), [], "the hook's audit row was committed outside the transaction");
    });

    it('a model query built inside a transaction and awaited after it ended runs on the tenant\'s connection, as other work started in it does', async () => {
      const later: PromiseLike<unknown>[] = [];
      await tenancy.runWithTenant('x1', async () => {
        await tenancy.transaction(async () => {
          later.push(Person.query().insert({ name: 'x1-kept-past-commit' }));
        });
        await Promise.all(later);
      });
      assert.ok((await names('x1')).includes('x1-kept-past-commit'), "knex's untyped \"Transaction query already complete\", the row lost");
      // Counted and built the same way; and awaited inside a later transaction, it joins that one.
      const seen = await tenancy.runWithTenant('x1', async () => {
        let kept!: ReturnType<typeof Person.query>;
        await tenancy.transaction(async () => {
          kept = Person.query().where('name', 'like', 'x1-%').orderBy('id');
        });
        const size = await kept.resultSize();
        const built = (await kept.toKnexQuery()) as unknown[];
        let later!: ReturnType<typeof Person.query>;
        await tenancy.transaction(async () => {
          later = Person.query().insert({ name: 'x1-built-in-t1' }) as never;
        });
        await assert.rejects(
          tenancy.transaction(async () => {
            await later;
            throw new Error('undo t2');
          }),
          /undo t2/,
        );
        return [size, built.length];
      });
      assert.deepEqual(seen, [3, 3]);
      assert.ok(!(await names('x1')).includes('x1-built-in-t1'), 'awaited inside a later transaction, it ran outside it (autocommit)');
    });

    it('a query awaited inside a transaction (joining it) and at the same time outside it: the outside run is not part of the transaction', async () => {
      await tenancy.runWithTenant('x1', async () => {
        const insert = Person.query().insert({ name: 'x1-both' });
        let release!: () => void;
        const gate = new Promise<void>((resolve) => (release = resolve));
        const outside = gate.then(() => insert);
        await assert.rejects(
          tenancy.transaction(async () => {
            const inside = insert.then((row) => row);
            release();
            await inside;
            throw new Error('undo');
          }),
          /undo/,
        );
        await outside;
      });
      assert.deepEqual((await names('x1')).filter((n) => n === 'x1-both'), ['x1-both'], 'the outside insert ran in the transaction and was rolled back');
    });

    it('resultSize() and toKnexQuery() of a query built before the transaction run in it too; its hooks keep the query\'s context values, symbol-keyed ones included', async () => {
      const TRACE = Symbol('trace');
      const seen: unknown[] = [];
      class TracedPerson extends Person {
        override async $beforeInsert(context?: QueryContext): Promise<void> {
          seen.push((context as unknown as Record<symbol, unknown>)[TRACE], (context as unknown as { tag?: unknown }).tag);
        }
      }
      await tenancy.runWithTenant('x1', async () => {
        const all = Person.query();
        const traced = TracedPerson.query().context({ [TRACE]: 'span-1', tag: 'audit' }).insert({ name: 'x1-traced' });
        await assert.rejects(
          tenancy.transaction(async () => {
            await Person.query().insert({ name: 'x1-in-trx' });
            assert.equal(await all.resultSize(), 3);
            assert.equal(((await all.toKnexQuery()) as unknown[]).length, 3);
            await traced;
            throw new Error('undo');
          }),
          /undo/,
        );
      });
      assert.deepEqual(seen, ['span-1', 'audit']);
      assert.deepEqual((await names('x1')).filter((n) => n.startsWith('x1-in') || n === 'x1-traced'), []);
    });

    it('a query that joined a transaction stays the tenant\'s: awaited or cloned again after it committed, it runs on the tenant\'s connection', async () => {
      const seen = await tenancy.runWithTenant('x1', async () => {
        const query = Person.query().orderBy('id');
        const inside = await tenancy.transaction(async () => (await query).length);
        const again = await query;
        const cloned = await query.clone();
        return [inside, again.length, cloned.length];
      });
      assert.deepEqual(seen, [2, 2, 2]);
    });

    it('onCommit outside a transaction: a failing callback goes to onHookError, never an unhandled rejection', async () => {
      const unhandled: unknown[] = [];
      const onUnhandled = (reason: unknown) => unhandled.push(reason);
      process.on('unhandledRejection', onUnhandled);
      const before = hookErrors.length;
      try {
        await tenancy.runWithTenant('x1', async () => {
          // Not awaited, as in the README's `onCommit(() => queue.add(...))`.
          void onCommit(() => {
            throw new Error('queue down');
          });
          await onCommit(async () => {
            throw new Error('queue down, awaited');
          });
        });
        await new Promise((resolve) => setTimeout(resolve, 50));
        assert.deepEqual(unhandled, [], 'a failing onCommit callback outside a transaction was an unhandled rejection');
        assert.deepEqual(hookErrors.slice(before).map((e) => (e as Error).message), ['queue down', 'queue down, awaited']);
      } finally {
        process.off('unhandledRejection', onUnhandled);
      }
    });

    it('instance guard: an instance of one tenant used in another scope rejects with TenantMismatchError', async () => {
      const ada = await tenancy.runWithTenant('x1', () => Person.query().findById(1));
      assert.ok(ada);
      assert.equal(instanceTenantId(ada), 'x1');
      const inserted = await tenancy.runWithTenant('x1', () => Person.query().insert({ name: 'x1-new' }));
      assert.equal(instanceTenantId(inserted), 'x1');
      await tenancy.runWithTenant('x2', async () => {
        await assert.rejects(async () => ada.$query(), TenantMismatchError);
        await assert.rejects(async () => ada.$query().patch({ name: 'hacked' }), TenantMismatchError);
        await assert.rejects(async () => ada.$relatedQuery('pets'), TenantMismatchError);
        await assert.rejects(async () => ada.$relatedQuery('movies').relate(2), TenantMismatchError);
        await assert.rejects(async () => ada.$fetchGraph('pets'), TenantMismatchError);
        await assert.rejects(async () => inserted.$query().delete(), TenantMismatchError);
        // The static forms that take instances: refused too, alone or among this tenant's own.
        const own = await Person.query().findById(2);
        await assert.rejects(async () => Person.fetchGraph(ada, 'pets'), TenantMismatchError);
        await assert.rejects(async () => Person.fetchGraph([own!, ada], 'pets'), TenantMismatchError);
        await assert.rejects(async () => Person.relatedQuery('pets').for(ada as never), TenantMismatchError);
        await assert.rejects(async () => Person.relatedQuery('pets').for([own!, ada] as never), TenantMismatchError);
        // Its own instances and plain ids go on as before.
        assert.equal((await Person.fetchGraph(own!, 'pets')).pets!.length, 1);
        assert.equal((await Person.relatedQuery('pets').for(own! as never)).length, 1);
        assert.equal((await Person.relatedQuery('pets').for(1)).length, 1);
      });
      assert.deepEqual(await names('x2'), ['x2-ada', 'x2-bob'], 'nothing was written in x2');
      await tenancy.runWithTenant('x1', async () => {
        assert.equal((await ada.$query()).name, 'x1-ada');
        await ada.$query().patch({ name: 'x1-ada2' });
        assert.equal((await ada.$relatedQuery('pets')).length, 1);
        assert.equal((await ada.$fetchGraph('movies')).movies!.length, 1);
        assert.equal((await Person.fetchGraph(ada, 'movies')).movies!.length, 1);
        assert.equal((await Person.relatedQuery('pets').for(ada as never)).length, 1);
      });
      assert.ok((await names('x1')).includes('x1-ada2'));
    });

    it('instance guard: fromJson outside any scope takes the tenant of the first scope it is used in', async () => {
      const bob = Person.fromJson({ id: 2, name: 'x?-bob' });
      assert.equal(instanceTenantId(bob), undefined);
      assert.equal((await tenancy.runWithTenant('x2', () => bob.$query())).name, 'x2-bob');
      assert.equal(instanceTenantId(bob), 'x2');
      await assert.rejects(tenancy.runWithTenant('x1', async () => bob.$query()), TenantMismatchError);
    });

    it('A, B, A, then B again: each tenant\'s queries join its own transaction open further out; so does a function bound in B called from A\'s transaction', async () => {
      await assert.rejects(
        tenancy.runWithTenant('x1', () =>
          tenancy.transaction(async () =>
            tenancy.runWithTenant('x2', () =>
              tenancy.transaction(async () => {
                await Person.query().insert({ name: 'x2-own' });
                await tenancy.runWithTenant('x1', () => tenancy.runWithTenant('x2', () => Person.query().insert({ name: 'x2-again' })));
                throw new Error('roll back both');
              }),
            ),
          ),
        ),
        /roll back both/,
      );
      await assert.rejects(
        tenancy.runWithTenant('x1', () =>
          tenancy.transaction(async () => {
            const bound = await tenancy.runWithTenant('x2', async () => bindTenant(() => tenancy.runWithTenant('x1', () => Person.query().insert({ name: 'x1-via-bound' }))));
            await bound();
            throw new Error('roll back x1');
          }),
        ),
        /roll back x1/,
      );
      assert.deepEqual((await names('x2')).filter((n) => !n.endsWith('-ada') && !n.endsWith('-bob')), []);
      assert.deepEqual((await names('x1')).filter((n) => !n.endsWith('-ada') && !n.endsWith('-bob')), []);
    });

    it("a function bound in its own tenant outside any transaction, or in one that has ended, called inside that tenant's transaction (directly or from another tenant's scope within it) joins it", async () => {
      const insertAs = () => bindTenant(async (name: string) => {
        await Person.query().insert({ name });
      });
      const outside = await tenancy.runWithTenant('x1', async () => insertAs());
      const inEnded = await tenancy.runWithTenant('x1', () => tenancy.transaction(async () => insertAs()));
      for (const [label, bound] of [['outside', outside], ['ended', inEnded]] as const) {
        // Before: the write committed on its own (MariaDB), or waited for the transaction's one
        // connection until the acquire timeout (SQLite).
        await assert.rejects(
          tenancy.runWithTenant('x1', () =>
            tenancy.transaction(async () => {
              await bound(`x1-bound-${label}`);
              await tenancy.runWithTenant('x2', () => bound(`x1-bound-${label}-via-x2`));
              throw new Error('roll back x1');
            }),
          ),
          /roll back x1/,
          label,
        );
      }
      // A sync generator bound the same way: its steps join the transaction too. Before: its query ran
      // on the tenant's own connection (committed apart, or waited for the acquire timeout).
      const steps = await tenancy.runWithTenant('x1', async () =>
        bindTenant(function* () {
          yield Person.query().insert({ name: 'x1-bound-generator' }).then(() => 0);
        }),
      );
      await assert.rejects(
        tenancy.runWithTenant('x1', () =>
          tenancy.transaction(async () => {
            for (const step of steps()) await step;
            throw new Error('roll back x1');
          }),
        ),
        /roll back x1/,
      );
      assert.deepEqual((await names('x1')).filter((n) => n.includes('-bound-')), []);
      assert.deepEqual((await names('x2')).filter((n) => n.includes('-bound-')), []);
      // A call that joins the transaction holds a lease until it settles, as one that enters the
      // tenant does: work of it that outlives the transaction finds its pool open after an evict.
      let late!: Promise<unknown>;
      const slow = await tenancy.runWithTenant('x1', async () =>
        bindTenant(async () => {
          await new Promise((resolve) => setTimeout(resolve, 200));
          await Person.query().insert({ name: 'x1-bound-late' });
        }),
      );
      await tenancy.runWithTenant('x1', () =>
        tenancy.transaction(async () => {
          late = slow();
        }),
      );
      await tenancy.evict('x1');
      await late;
      assert.ok((await names('x1')).includes('x1-bound-late'));
      await tenancy.runWithTenant('x1', () => Person.query().where('name', 'x1-bound-late').delete());
      // Outside any transaction it still runs, and commits, in its tenant.
      await tenancy.runWithTenant('x2', () => outside('x1-bound-committed'));
      assert.ok((await names('x1')).includes('x1-bound-committed'));
      await tenancy.runWithTenant('x1', () => Person.query().where('name', 'x1-bound-committed').delete());
    });

    it("a query built in A before A's transaction and awaited inside B's scope within it joins A's transaction", async () => {
      await assert.rejects(
        tenancy.runWithTenant('x1', async () => {
          const insert = Person.query().insert({ name: 'x1-via-b' });
          await tenancy.transaction(async () => {
            await tenancy.runWithTenant('x2', async () => {
              await insert;
            });
            throw new Error('roll back x1');
          });
        }),
        /roll back x1/,
      );
      assert.ok(!(await names('x1')).includes('x1-via-b'), 'it committed apart from the transaction (or waited for its connection)');
    });

    it("a query built at a transaction's top level, awaited in another tenant's scope inside a savepoint that rolls back: it runs in the savepoint, its onCommit does not run", async () => {
      const { log, HookedPerson } = outcomeLogged();
      await tenancy.runWithTenant('x1', () =>
        tenancy.transaction(async () => {
          const insert = HookedPerson.query().insert({ name: 'x1-via-b-savepoint' });
          await tenancy
            .transaction(async () => {
              await tenancy.runWithTenant('x2', async () => {
                await insert;
              });
              throw new Error('undo savepoint');
            })
            .catch(() => undefined);
        }),
      );
      assert.deepEqual(log, ['rollback x1-via-b-savepoint']);
    });

    it('a query built in a savepoint that was released, awaited in a later savepoint that rolls back (directly or through another tenant): its onCommit does not run', async () => {
      const { log, HookedPerson } = outcomeLogged();
      for (const via of ['direct', 'via-b'] as const) {
        await tenancy.runWithTenant('x1', () =>
          tenancy.transaction(async () => {
            let insert!: ReturnType<typeof HookedPerson.query>;
            await tenancy.transaction(async () => {
              insert = HookedPerson.query().insert({ name: `x1-sibling-${via}` }) as never;
            });
            await tenancy
              .transaction(async () => {
                if (via === 'direct') await insert;
                else await tenancy.runWithTenant('x2', async () => void (await insert));
                throw new Error('undo');
              })
              .catch(() => undefined);
          }),
        );
      }
      assert.deepEqual(log, ['rollback x1-sibling-direct', 'rollback x1-sibling-via-b']);
    });

    it("the app's own rollback or commit, awaited or not, then a return or a throw: the outcome is the app's call, every later throw is reported once, nothing untyped", async () => {
      const seen: unknown[] = [];
      const run = async (label: string, fn: (trx: Knex.Transaction) => Promise<unknown>) => {
        const before = hookErrors.length;
        const outcome = await tenancy.runWithTenant('x1', () => tenancy.transaction(fn)).then(
          (value) => `resolved ${String(value)}`,
          (error: Error) => `rejected ${error.message}`,
        );
        await new Promise((r) => setTimeout(r, 30));
        seen.push([label, outcome, hookErrors.slice(before).map((e) => (e as Error).message)]);
      };
      await run('rollback not awaited, return', async (trx) => {
        void trx.rollback();
        return 'x';
      });
      await run('rollback not awaited, throw', async (trx) => {
        void trx.rollback();
        throw new Error('F1');
      });
      await run('rollback(E) not awaited, throw', async (trx) => {
        void trx.rollback(new Error('E2')).catch(() => undefined);
        throw new Error('F2');
      });
      await run('commit, throw', async (trx) => {
        await Person.query().insert({ name: 'x1-committed-then-threw' });
        await trx.commit();
        throw new Error('F3');
      });
      await tenancy.runWithTenant('x1', () =>
        tenancy.transaction(async () => {
          await run('savepoint released, not awaited, return', async (savepoint) => {
            onCommit(() => void seen.push('savepoint onCommit'));
            onRollback(() => void seen.push('savepoint onRollback'));
            await Person.query().insert({ name: 'x1-released' });
            void savepoint.commit();
            return 'x';
          });
        }),
      );
      assert.deepEqual(seen, [
        ['rollback not awaited, return', 'resolved undefined', []],
        ['rollback not awaited, throw', 'resolved undefined', ['F1']],
        ['rollback(E) not awaited, throw', 'rejected E2', ['F2']],
        ['commit, throw', 'resolved undefined', ['F3']],
        ['savepoint released, not awaited, return', 'resolved undefined', []],
        'savepoint onCommit',
      ]);
      assert.ok((await names('x1')).includes('x1-committed-then-threw'));
      assert.ok((await names('x1')).includes('x1-released'));
    });

    it('an onHookError that throws itself falls back to the default warning, never an unhandled rejection', async () => {
      const throwing = createTenancy({
        ...backend.connectionOptions(),
        tenantExists: backend.databaseExists,
        onHookError: () => {
          throw new Error('handler broke');
        },
      });
      const unhandled: unknown[] = [];
      const onUnhandled = (reason: unknown) => unhandled.push(reason);
      const warnings: string[] = [];
      const onWarning = (w: Error) => w.name === 'TenantTransactionHookWarning' && warnings.push(w.message);
      process.on('unhandledRejection', onUnhandled);
      process.on('warning', onWarning);
      try {
        await throwing.runWithTenant('x1', () =>
          throwing.transaction(async (trx) => {
            await trx.rollback();
            throw new Error('after my own rollback');
          }),
        );
        await throwing.runWithTenant('x1', () => onCommit(() => Promise.reject(new Error('callback broke'))));
        // In a transaction: a failing onCommit callback does not turn the commit into a rejection, and
        // the callbacks after it still run.
        const ran: string[] = [];
        const committed = await throwing.runWithTenant('x1', () =>
          throwing.transaction(async () => {
            onCommit(() => Promise.reject(new Error('first callback broke')));
            onCommit(() => void ran.push('second'));
            return 'committed';
          }),
        );
        assert.equal(committed, 'committed');
        assert.deepEqual(ran, ['second']);
        await new Promise((r) => setTimeout(r, 50));
      } finally {
        process.off('unhandledRejection', onUnhandled);
        process.off('warning', onWarning);
        await throwing.destroy();
      }
      assert.deepEqual(unhandled, []);
      assert.equal(warnings.length, 3, warnings.join('\n'));
    });

    it('a callback that rejects with no reason: the transaction (and a savepoint) rejects, nothing is saved, no onHookError', async () => {
      const before = hookErrors.length;
      const top = await tenancy
        .runWithTenant('x1', () =>
          tenancy.transaction(async () => {
            await Person.query().insert({ name: 'x1-no-reason' });
            return Promise.reject(undefined);
          }),
        )
        .then(
          () => 'resolved',
          (error: unknown) => ['rejected', error],
        );
      const nested = await tenancy.runWithTenant('x1', () =>
        tenancy.transaction(async () =>
          tenancy
            .transaction(async () => {
              await Person.query().insert({ name: 'x1-no-reason-savepoint' });
              return Promise.reject(undefined);
            })
            .then(
              () => 'resolved',
              (error: unknown) => ['rejected', error],
            ),
        ),
      );
      assert.deepEqual([top, nested], [['rejected', undefined], ['rejected', undefined]]);
      assert.equal(hookErrors.length, before);
      assert.deepEqual((await names('x1')).filter((n) => n.startsWith('x1-no-reason')), []);
    });

    it('a query built in a transaction\'s scope after it ended (on the tenant\'s knex), awaited in a later transaction, joins that one', async () => {
      await tenancy.runWithTenant('x1', async () => {
        let later!: ReturnType<typeof Person.query>;
        let built!: Promise<void>;
        await tenancy.transaction(async () => {
          built = new Promise<void>((resolve) => setTimeout(() => resolve(void (later = Person.query().insert({ name: 'x1-c9' }) as never)), 10));
        });
        await built;
        await undoneAfter(later);
      });
      assert.ok(!(await names('x1')).includes('x1-c9'));
    });

    it("a query built at a transaction's top level and awaited in a savepoint that rolls back: its hooks' onCommit does not run, its onRollback does", async () => {
      const { log, HookedPerson } = outcomeLogged();
      await tenancy.runWithTenant('x1', () =>
        tenancy.transaction(async () => {
          const insert = HookedPerson.query().insert({ name: 'x1-in-savepoint' });
          await tenancy.transaction(async () => {
            await insert;
            throw new Error('undo savepoint');
          }).catch(() => undefined);
        }),
      );
      assert.deepEqual(log, ['rollback x1-in-savepoint']);
      assert.ok(!(await names('x1')).includes('x1-in-savepoint'));
    });

    it('a query built in a savepoint\'s scope after it ended, awaited after the whole transaction ended, runs on the tenant\'s connection', async () => {
      await tenancy.runWithTenant('x1', async () => {
        let later!: ReturnType<typeof Person.query>;
        let built!: Promise<void>;
        await tenancy.transaction(async () => {
          await tenancy.transaction(async () => {
            // Work the savepoint started, run once it has ended: built on the outer transaction.
            built = new Promise<void>((resolve) => setTimeout(() => resolve(void (later = Person.query().where('name', 'like', 'x1-%'))), 10));
          });
          await built;
        });
        assert.equal((await later).length, 2);
      });
    });

    it("the app's own trx.commit()/rollback(), then the callback waits for the outcome's callbacks (or the outer transaction): it settles; a later throw after its own rollback goes to onHookError", async () => {
      const within = <T>(work: Promise<T>) => Promise.race([work, new Promise<string>((r) => setTimeout(() => r('hung'), 3_000))]);
      // Commit, then wait for an onCommit effect.
      assert.equal(
        await within(
          tenancy.runWithTenant('x1', () =>
            tenancy.transaction(async (trx) => {
              const committed = new Promise<void>((resolve) => void onCommit(() => resolve()));
              await Person.query().insert({ name: 'x1-h1' });
              await trx.commit();
              await committed;
              return 'h1';
            }),
          ),
        ),
        undefined,
      );
      // A savepoint released by its callback, which then waits for the outer transaction.
      let outerDone!: Promise<unknown>;
      assert.equal(
        await within(
          tenancy.runWithTenant('x1', () =>
            (outerDone = tenancy.transaction(async () => {
              await tenancy.transaction(async (savepoint) => {
                await Person.query().insert({ name: 'x1-h2' });
                await savepoint.commit();
                await outerDone;
              });
              return 'h2';
            })),
          ),
        ),
        'h2',
      );
      // Rollback, then wait for an onRollback effect; a throw after it is reported.
      const before = hookErrors.length;
      assert.equal(
        await within(
          tenancy.runWithTenant('x1', () =>
            Person.transaction(async (trx: Knex.Transaction) => {
              const rolled = new Promise<void>((resolve) => onRollback(() => resolve()));
              await Person.query().insert({ name: 'x1-h3' });
              await trx.rollback();
              await rolled;
              throw new Error('after my own rollback');
            }),
          ),
        ),
        undefined,
      );
      await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(hookErrors.slice(before).map((e) => (e as Error).message), ['after my own rollback']);
      assert.deepEqual((await names('x1')).filter((n) => n.startsWith('x1-h')), ['x1-h1', 'x1-h2']);
    });

    it('statements on a transaction after it committed fail with knex\'s "already complete", never as a transaction the database rolled back', async () => {
      let kept!: Knex.Transaction;
      await tenancy.runWithTenant('x1', () =>
        tenancy.transaction(async (trx) => {
          kept = trx;
          await Person.query().insert({ name: 'committed' });
        }),
      );
      for (let i = 0; i < 2; i++) await assert.rejects(Promise.resolve(kept('persons').select('id')), /Transaction query already complete/);
      assert.ok((await names('x1')).includes('committed'));
    });

    it("back in a tenant whose transaction is open further out (A, then B, then A): A's queries join that transaction", async () => {
      let later!: () => Promise<unknown>;
      await assert.rejects(
        tenancy.runWithTenant('x1', () =>
          tenancy.transaction(async (trx) => {
            await Person.query().insert({ name: 'x1-outer' });
            await tenancy.runWithTenant('x2', async () => {
              await Person.query().insert({ name: 'x2-own' });
              await tenancy.runWithTenant('x1', async () => {
                assert.equal(tenancy.knex(), trx);
                await Person.query().insert({ name: 'x1-back' });
                await tenancy.runWithTenant('x2', () => Person.query().insert({ name: 'x2-again' }));
              });
              // Run after the transaction ended: the tenant's own connection then.
              later = () => tenancy.runWithTenant('x1', () => Person.query().insert({ name: 'x1-later' }));
            });
            throw new Error('roll back x1');
          }),
        ),
        /roll back x1/,
      );
      await later();
      assert.deepEqual((await names('x1')).filter((n) => !n.endsWith('-ada') && !n.endsWith('-bob')), ['x1-later']);
      assert.deepEqual((await names('x2')).filter((n) => !n.endsWith('-ada') && !n.endsWith('-bob')), ['x2-own', 'x2-again']);
    });

    it('an error that leaves the transaction open (a duplicate key) does not abort it: the work goes on and commits', async () => {
      await tenancy.runWithTenant('x1', () =>
        tenancy.transaction(async () => {
          await Audit.query().insert({ message: 'before' });
          await assert.rejects(async () => Person.query().insert({ id: 1, name: 'duplicate' }), /Duplicate entry|UNIQUE constraint failed/);
          await tenancy.transaction(async () => {
            await assert.rejects(async () => Person.query().insert({ id: 1, name: 'duplicate' }), /Duplicate entry|UNIQUE constraint failed/);
            await Audit.query().insert({ message: 'in savepoint' });
          });
          await Audit.query().insert({ message: 'after' });
        }),
      );
      assert.deepEqual((await direct.get('x1')!('audit').orderBy('id')).map((r: { message: string }) => r.message), ['before', 'in savepoint', 'after']);
    });

    if (backend.name !== 'sqlite') {
      /**
       * Makes the tenancy's transaction (in `victim`, which must take row 1's lock and then ask for row
       * 2's when `ready` resolves) the victim of a deadlock: a heavier transaction beside it holds row 2
       * and then asks for row 1. InnoDB rolls the lighter one back whole.
       */
      async function deadlock(victim: (ready: Promise<void>, locked: () => void) => Promise<unknown>): Promise<PromiseSettledResult<unknown>> {
        const held = deferred();
        const first = deferred();
        const other = direct.get('x1')!.transaction(async (trx) => {
          for (let i = 0; i < 20; i++) await trx('audit').insert({ message: `heavy-${i}` });
          await first.promise;
          await trx('persons').update({ note: 'other' }).where('id', 2);
          held.resolve();
          await new Promise((r) => setTimeout(r, 300));
          await trx('persons').update({ note: 'other' }).where('id', 1);
        });
        const [outcome] = await Promise.allSettled([tenancy.runWithTenant('x1', () => victim(held.promise, first.resolve)), other]);
        await direct.get('x1')!('audit').where('message', 'like', 'heavy-%').delete();
        return outcome;
      }
      const audit = async () => (await direct.get('x1')!('audit').orderBy('id')).map((r: { message: string }) => r.message);
      /** The victim's work before the statement that deadlocks: a write, then row 1's lock. */
      const beforeTheVictimStatement = async (ready: Promise<void>, locked: () => void) => {
        await Audit.query().insert({ message: 'before' });
        await Person.query().patch({ note: 'victim' }).where('id', 1);
        locked();
        await ready;
      };

      it('a deadlock inside a savepoint rolled the whole transaction back: the outer work after it is refused, not autocommitted, and the transaction rolls back', async () => {
        const log: string[] = [];
        const outcome = await deadlock((ready, locked) =>
          tenancy.transaction(async () => {
            await Audit.query().insert({ message: 'before' });
            onCommit(() => log.push('commit'));
            onRollback(() => log.push('rollback'));
            const savepoint = await tenancy
              .transaction(async () => {
                await Person.query().patch({ note: 'victim' }).where('id', 1);
                locked();
                await ready;
                await Person.query().patch({ note: 'victim' }).where('id', 2);
              })
              .then(
                () => 'released',
                (error: { nativeError?: { errno?: number } }) => error.nativeError?.errno,
              );
            log.push(`savepoint: ${savepoint}`);
            await Audit.query().insert({ message: 'after' });
            return 'done';
          }),
        );
        assert.equal(outcome.status, 'rejected');
        const reason = (outcome as PromiseRejectedResult).reason as TransactionAbortedError;
        assert.ok(reason instanceof TransactionAbortedError, String(reason));
        assert.equal((reason.cause as { errno?: number }).errno, 1213, 'the cause is the deadlock');
        assert.deepEqual(log, ['savepoint: 1213', 'rollback']);
        assert.deepEqual(await audit(), [], 'nothing of the rolled-back transaction was saved');
        assert.deepEqual(toHttpError(reason), { status: 503, code: 'TENANT_TRANSACTION_ABORTED', message: 'Service unavailable. Retry later.', retryAfter: 1 });
      });

      it('a deadlock on a statement that looks like DDL but commits nothing (CREATE TEMPORARY TABLE ... SELECT ... FOR UPDATE) is an abort too', async () => {
        const outcome = await deadlock((ready, locked) =>
          tenancy.transaction(async () => {
            await beforeTheVictimStatement(ready, locked);
            const deadlocked = await tenancy
              .knex()
              .raw('create\n  temporary table tmp_victim as select * from persons where id = 2 for update')
              .catch((error: { errno?: number; nativeError?: { errno?: number } }) => error.nativeError?.errno ?? error.errno);
            assert.equal(deadlocked, 1213);
            await Audit.query().insert({ message: 'after' });
          }),
        );
        assert.equal(((outcome as PromiseRejectedResult).reason as { code?: string })?.code, 'TENANT_TRANSACTION_ABORTED');
        assert.deepEqual(await audit(), []);
      });

      it('a lock wait timeout (1205) with innodb_rollback_on_timeout off, and a failing DDL statement, leave no transaction to refuse: the work goes on', async () => {
        const held = deferred();
        const release = deferred();
        const holder = direct.get('x1')!.transaction(async (trx) => {
          await trx('persons').update({ note: 'held' }).where('id', 1);
          held.resolve();
          await release.promise;
        });
        await held.promise;
        try {
          await tenancy.runWithTenant('x1', () =>
            tenancy.transaction(async () => {
              await tenancy.knex().raw('set session innodb_lock_wait_timeout = 1');
              await Audit.query().insert({ message: 'before' });
              const waited = await Person.query()
                .patch({ note: 'waited' })
                .where('id', 1)
                .catch((error: { nativeError?: { errno?: number } }) => error.nativeError?.errno);
              assert.equal(waited, 1205);
              await Audit.query().insert({ message: 'after the timeout' });
            }),
          );
        } finally {
          release.resolve();
          await holder;
        }
        assert.deepEqual(await audit(), ['before', 'after the timeout']);
        await direct.get('x1')!('audit').delete();
        // MySQL commits the transaction before a DDL statement, which fails here: no rollback (knex #805).
        await tenancy.runWithTenant('x1', () =>
          tenancy.transaction(async () => {
            await Audit.query().insert({ message: 'before the DDL' });
            await assert.rejects(tenancy.knex().raw('create table persons (id int)'), /already exists/);
            await Audit.query().insert({ message: 'after the DDL' });
          }),
        );
        assert.deepEqual(await audit(), ['before the DDL', 'after the DDL']);
      });

      if (backend.name === 'mysql') {
        it('a read view conflict (1020, innodb_snapshot_isolation) rolls the transaction back too: the later work is refused, nothing is saved', async () => {
          const isolated = createTenancy({
            knexConfig: (id) => ({
              ...backend.knexConfig(id),
              pool: { min: 0, max: 2, afterCreate: (conn: { query(sql: string, done: (error: unknown) => void): void }, done: (error: unknown, conn: unknown) => void) => conn.query('set session innodb_snapshot_isolation = ON', (error) => done(error, conn)) },
            }),
          });
          try {
            const outcome = await isolated
              .runWithTenant('x1', () =>
                isolated.transaction(async () => {
                  await Person.query();
                  await Audit.query().insert({ message: 'before' });
                  await direct.get('x1')!('persons').update({ note: 'changed beside' }).where('id', 1);
                  const conflict = await Person.query()
                    .patch({ note: 'mine' })
                    .where('id', 1)
                    .catch((error: { nativeError?: { errno?: number } }) => error.nativeError?.errno);
                  assert.equal(conflict, 1020);
                  await Audit.query().insert({ message: 'after' });
                }),
              )
              .then(
                () => 'committed',
                (error: { code?: string }) => error.code,
              );
            assert.equal(outcome, 'TENANT_TRANSACTION_ABORTED');
            assert.deepEqual(await audit(), []);
          } finally {
            await isolated.destroy();
          }
        });
      }

      it('a deadlock the app catches at the top level: the later statements and the COMMIT are refused, nothing is saved', async () => {
        const refused: unknown[] = [];
        const outcome = await deadlock((ready, locked) =>
          tenancy.transaction(async () => {
            await beforeTheVictimStatement(ready, locked);
            const deadlocked = await Person.query()
              .patch({ note: 'victim' })
              .where('id', 2)
              .catch((error: unknown) => error);
            assert.deepEqual([toHttpError(deadlocked)?.status, toHttpError(deadlocked)?.code], [503, 'TENANT_LOCK_CONFLICT'], 'a deadlock is answered 503, retry');
            await Audit.query()
              .insert({ message: 'after' })
              .catch((error: unknown) => refused.push(error));
            await tenancy
              .knex()
              .raw('insert into audit (message) values (?)', ['raw after'])
              .catch((error: unknown) => refused.push(error));
            return 'done';
          }),
        );
        assert.deepEqual(
          refused.map((e) => (e as TransactionAbortedError).code),
          ['TENANT_TRANSACTION_ABORTED', 'TENANT_TRANSACTION_ABORTED'],
        );
        assert.equal(outcome.status, 'rejected');
        assert.equal(((outcome as PromiseRejectedResult).reason as TransactionAbortedError).code, 'TENANT_TRANSACTION_ABORTED');
        assert.deepEqual(await audit(), []);
      });

    }

    if (backend.name === 'mysql') {
      it('warns once per statement when the bare tenant knex runs a query while a transaction is open', async () => {
        const warnings: string[] = [];
        const listener = (w: Error) => w.name === 'TenantTransactionWarning' && warnings.push(w.message);
        process.on('warning', listener);
        try {
          await tenancy.runWithTenant('x1', async () => {
            const bare = tenancy.knex();
            await tenancy.transaction(async () => {
              for (let i = 0; i < 3; i++) await bare('persons').count({ n: '*' });
              await bare('movies').count({ n: '*' });
              await tenancy.knex()('pets').count({ n: '*' });
            });
          });
          await new Promise((r) => setImmediate(r));
        } finally {
          process.off('warning', listener);
        }
        assert.equal(warnings.length, 2, warnings.join('\n'));
        assert.match(warnings[0]!, /x1.*persons/);
        assert.match(warnings[1]!, /movies/);
      });

      it('does not warn about a query a timer started inside a transaction runs after it committed (it runs on the tenant\'s knex, as it should)', async () => {
        const warnings: string[] = [];
        const listener = (w: Error) => w.name === 'TenantTransactionWarning' && warnings.push(w.message);
        process.on('warning', listener);
        try {
          let fired!: Promise<unknown>;
          await tenancy.runWithTenant('x1', () =>
            tenancy.transaction(async () => {
              fired = new Promise((resolve) => setTimeout(resolve, 30)).then(() => Person.query().where('name', 'like', 'timer-after-commit-%'));
            }),
          );
          await fired;
          await new Promise((r) => setImmediate(r));
        } finally {
          process.off('warning', listener);
        }
        assert.deepEqual(warnings, []);
      });

      it('does not warn about the transaction\'s own statements after a savepoint inside it ended', async () => {
        const warnings: string[] = [];
        const listener = (w: Error) => w.name === 'TenantTransactionWarning' && warnings.push(w.message);
        process.on('warning', listener);
        try {
          await tenancy.runWithTenant('x1', () =>
            tenancy.transaction(async () => {
              await tenancy.transaction(() => tenancy.knex()('pets').count({ n: '*' }));
              // knex dropped the connection's transaction mark when the savepoint ended.
              await tenancy.knex()('audit').count({ n: 'id' });
              await Person.query().where('name', 'like', 'savepoint-%');
            }),
          );
          await new Promise((r) => setImmediate(r));
        } finally {
          process.off('warning', listener);
        }
        assert.deepEqual(warnings, []);
      });
    }
  });
}
