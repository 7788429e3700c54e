/**
 * The shared pool's wait queue (lib/wait-queue.ts): arrival order, the preference for a released
 * connection's database, a tenant's waiters past its cap parked, cancels, and searches whose cost
 * does not grow with the number of waiters. Pure data structure: the pool's behaviour on real servers
 * is in scale.test.ts and cold-switch.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { WaitQueue, type QueuedAcquire } from '../lib/wait-queue';

interface W extends QueuedAcquire {
  readonly name: string;
}
const waiter = (tenantId: string, name: string, db = `db_${tenantId}`): W => ({ tenantId, db, name, place: 'out', ticket: undefined });
const any = (): boolean => true;
const takeAll = (queue: WaitQueue<W>, eligible: (w: W) => boolean = any): string[] => {
  const names: string[] = [];
  for (let w = queue.take(undefined, eligible); w !== undefined; w = queue.take(undefined, eligible)) names.push(w.name);
  return names;
};

describe('wait queue', () => {
  it('serves in arrival order; a waiter put back goes to the front', () => {
    const queue = new WaitQueue<W>(10, 256, 32);
    for (const [t, n] of [['a', 'a1'], ['b', 'b1'], ['c', 'c1']]) queue.add(waiter(t!, n!));
    const first = queue.take(undefined, any)!;
    assert.equal(first.name, 'a1');
    queue.add(first, true);
    assert.equal(queue.size, 3);
    assert.deepEqual(takeAll(queue), ['a1', 'b1', 'c1']);
    assert.equal(queue.size, 0);
  });

  it('prefers a waiter on the released connection’s database within the lookahead, not past it', () => {
    const queue = new WaitQueue<W>(10, 256, 2);
    queue.add(waiter('a', 'a1'));
    queue.add(waiter('b', 'b1'));
    queue.add(waiter('c', 'c1'));
    queue.add(waiter('b', 'b2'));
    // b1 is within the first two: taken before a1.
    assert.equal(queue.take('db_b', any)!.name, 'b1');
    // a1, c1, b2: b2 is third, past the lookahead of two: the head goes first.
    assert.equal(queue.take('db_b', any)!.name, 'a1');
    // c1, b2: b2 is within it again.
    assert.equal(queue.take('db_b', any)!.name, 'b2');
    assert.equal(queue.take('db_b', any)!.name, 'c1');
    assert.equal(queue.size, 0);
  });

  it('passes the first waiter over for one on the released connection’s database twice at most, then serves it', () => {
    const queue = new WaitQueue<W>(10, 256, 32);
    queue.add(waiter('c', 'c1'));
    for (let i = 1; i <= 4; i++) queue.add(waiter('a', `a${i}`));
    // Connections of tenant a come back one by one: a's own waiters go first, twice, then c1.
    assert.deepEqual([1, 2, 3, 4].map(() => queue.take('db_a', any)!.name), ['a1', 'a2', 'c1', 'a3']);
  });

  it('skips waiters that may not take the connection and returns undefined when none may', () => {
    const queue = new WaitQueue<W>(10, 256, 32);
    queue.add(waiter('cold', 'cold1'));
    queue.add(waiter('warm', 'warm1'));
    assert.equal(queue.take(undefined, (w) => w.tenantId === 'warm')!.name, 'warm1');
    assert.equal(queue.take(undefined, (w) => w.tenantId === 'warm'), undefined);
    assert.equal(queue.size, 1);
  });

  it('parks a tenant’s waiters past its cap; each one leaving lets the next enter at the back', () => {
    const queue = new WaitQueue<W>(2, 256, 32);
    for (let i = 1; i <= 4; i++) queue.add(waiter('a', `a${i}`));
    queue.add(waiter('b', 'b1'));
    assert.equal(queue.size, 5);
    // Searchable: a1, a2, b1; a3 enters behind b1 once a1 leaves, a4 once a2 does.
    assert.deepEqual(takeAll(queue), ['a1', 'a2', 'b1', 'a3', 'a4']);
  });

  it('cancels queued and parked waiters without serving them; a cancelled queued one lets a parked one in', () => {
    const queue = new WaitQueue<W>(1, 256, 32);
    const a1 = waiter('a', 'a1');
    const a2 = waiter('a', 'a2');
    const a3 = waiter('a', 'a3');
    for (const w of [a1, a2, a3]) queue.add(w);
    queue.add(waiter('b', 'b1'));
    queue.cancel(a2);
    assert.equal(a2.place, 'out');
    queue.cancel(a1);
    queue.cancel(a1);
    assert.equal(queue.size, 2);
    assert.deepEqual(takeAll(queue), ['b1', 'a3']);
  });

  it('looks `depth` waiters deep at most', () => {
    const queue = new WaitQueue<W>(10, 4, 2);
    for (let i = 1; i <= 4; i++) queue.add(waiter(`cold${i}`, `cold${i}`));
    queue.add(waiter('warm', 'warm1'));
    const warmOnly = (w: W): boolean => w.tenantId === 'warm';
    assert.equal(queue.take(undefined, warmOnly), undefined);
    queue.take(undefined, any);
    assert.equal(queue.take(undefined, warmOnly)!.name, 'warm1');
  });

  it('past the depth, takes the first of those that came warm that may go (warm tenants behind a stall of cold ones)', () => {
    const queue = new WaitQueue<W>(10, 4, 2);
    for (let i = 1; i <= 6; i++) queue.add(waiter(`cold${i}`, `cold${i}`));
    queue.add(waiter('late', 'late1'));
    queue.add(waiter('full', 'full1'), false, true);
    queue.add(waiter('warm', 'warm1'), false, true);
    queue.add(waiter('warm', 'warm2'), false, true);
    // cold*: no permit; late: may go, but neither within the depth nor warm; full: at its cap.
    const mayGo = (w: W): boolean => w.tenantId === 'warm' || w.tenantId === 'late';
    assert.equal(queue.take(undefined, mayGo)!.name, 'warm1');
    // Put back at the front after it could not be served: one live copy of it, no duplicate.
    const again = queue.take(undefined, mayGo)!;
    assert.equal(again.name, 'warm2');
    queue.add(again, true, true);
    assert.equal(queue.size, 9);
    assert.deepEqual(takeAll(queue), ['warm2', 'cold1', 'cold2', 'cold3', 'cold4', 'cold5', 'cold6', 'late1', 'full1']);
    assert.equal(queue.size, 0);
  });

  it('20,000 waiters served behind one that stays at the front: the searches stay linear in all', () => {
    const queue = new WaitQueue<W>(10, 256, 32);
    const stuck = waiter('stuck', 'stuck');
    queue.add(stuck);
    for (let i = 0; i < 20_000; i++) queue.add(waiter(`t${i}`, `w${i}`));
    let looks = 0;
    const notStuck = (w: W): boolean => {
      looks++;
      return w !== stuck;
    };
    let served = 0;
    while (queue.take(undefined, notStuck) !== undefined) served++;
    assert.equal(served, 20_000);
    assert.ok(looks <= 3 * 20_000, `looked at ${looks} waiters`);
    assert.equal(queue.take(undefined, any), stuck);
  });

  it('a tenant at its cap with 100,000 waiters costs a search a handful of looks, not one per waiter', () => {
    const perTenant = 10;
    const queue = new WaitQueue<W>(perTenant, 256, 32);
    for (let i = 0; i < 100_000; i++) queue.add(waiter('flood', `f${i}`));
    queue.add(waiter('other', 'o1'));
    let looks = 0;
    // The flooding tenant holds its cap: none of its waiters may take a connection.
    const served = queue.take(undefined, (w) => {
      looks++;
      return w.tenantId !== 'flood';
    });
    assert.equal(served?.name, 'o1');
    assert.ok(looks <= perTenant + 1, `looked at ${looks} waiters`);
    assert.equal(queue.size, 100_000);
  });

  it('100,000 cancels (a burst timing out) and the searches after them stay linear in all', () => {
    const queue = new WaitQueue<W>(10, 256, 32);
    const all = Array.from({ length: 100_000 }, (_, i) => waiter(`t${i}`, `w${i}`));
    for (const w of all) queue.add(w);
    queue.add(waiter('late', 'late1'));
    let looks = 0;
    for (const w of all) queue.cancel(w);
    const served = queue.take(undefined, () => {
      looks++;
      return true;
    });
    assert.equal(served?.name, 'late1');
    assert.equal(looks, 1);
    assert.equal(queue.size, 0);
  });

  it('drain hands back every live waiter, parked ones included, and empties the queue', () => {
    const queue = new WaitQueue<W>(1, 256, 32);
    const a2 = waiter('a', 'a2');
    queue.add(waiter('a', 'a1'));
    queue.add(a2);
    queue.add(waiter('a', 'a3'));
    queue.cancel(a2);
    const drained = queue.drain().map((w) => w.name).sort();
    assert.deepEqual(drained, ['a1', 'a3']);
    assert.equal(queue.size, 0);
    assert.equal(queue.take(undefined, any), undefined);
  });
});
