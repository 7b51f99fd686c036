// The gate (coordinator/service/gate.ts) that lets a renewal storm's CSRs into their store work a
// few at a time: at most `limit` run, the others wait in order, each holding a place in a budget; with none left one is refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Gate, type WaitBudget } from '../../coordinator/service/gate.ts';

/** A budget of `max` waiting places, refused with `refuse` (the CSR gate's is the signing pool). */
function places(max: number, refuse: (waiting: number) => Error): WaitBudget & { taken: number } {
  const b = {
    taken: 0,
    reserveWait() {
      if (b.taken >= max) throw refuse(b.taken);
      b.taken++;
      return () => void b.taken--;
    },
  };
  return b;
}

test('at most limit callers run at once, the others in arrival order; a slot is freed by a failure too', async () => {
  const gate = new Gate(2, places(10, () => new Error('full')));
  let running = 0;
  let most = 0;
  const order: number[] = [];
  const results = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => gate.run(async () => {
    most = Math.max(most, ++running);
    order.push(i);
    await new Promise((r) => setTimeout(r, 5));
    running--;
    if (i === 1) throw new Error('boom');
    return i;
  })));
  assert.equal(most, 2);
  assert.deepEqual(order, [0, 1, 2, 3, 4, 5]);
  assert.equal(results.filter((r) => r.status === 'fulfilled').length, 5);
  assert.equal(gate.running, 0);
});

test('a waiter holds a place in the budget until its turn; with none left a caller is refused at once with the budget\'s error', async () => {
  const budget = places(1, (waiting) => new Error(`full: ${waiting} waiting`));
  const gate = new Gate(1, budget);
  let release!: () => void;
  const first = gate.run(() => new Promise<void>((r) => (release = r)));
  const second = gate.run(async () => 'second');
  await assert.rejects(gate.run(async () => 'third'), /full: 1 waiting/);
  assert.equal(budget.taken, 1);
  release();
  await first;
  assert.equal(await second, 'second');
  assert.equal(budget.taken, 0);
});
