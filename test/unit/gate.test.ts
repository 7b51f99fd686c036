// The gate (coordinator/service/gate.ts) that lets a renewal storm's CSRs into their store work a
// few at a time: at most `limit` run, the others wait in order, beyond `maxWaiting` one is refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Gate } from '../../coordinator/service/gate.ts';

test('at most limit callers run at once, the others in arrival order; a slot is freed by a failure too', async () => {
  const gate = new Gate(2, 10, () => new Error('full'));
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

test('beyond maxWaiting a caller is refused at once with the caller\'s error', async () => {
  const gate = new Gate(1, 1, (waiting) => new Error(`full: ${waiting} waiting`));
  let release!: () => void;
  const first = gate.run(() => new Promise<void>((r) => (release = r)));
  const second = gate.run(async () => 'second');
  await assert.rejects(gate.run(async () => 'third'), /full: 1 waiting/);
  release();
  await first;
  assert.equal(await second, 'second');
});
