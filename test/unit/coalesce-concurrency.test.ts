// The Coalescer's one batch in flight, its bound on waiters and its per-caller errors
// (coordinator/service/coalesce.ts; note 7, left): a second batch in flight measured no better in
// the renewal storm (issue 13), a failed batch handed one error object to all of its callers, and
// the waiting list had no bound of its own.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Coalescer, type BatchOutcome } from '../../coordinator/service/coalesce.ts';

/** A batch function whose batches are held until released, one by one, in the order they came. */
function held() {
  const batches: number[][] = [];
  const pending: (() => void)[] = [];
  let running = 0;
  let most = 0;
  const run = async (keys: number[]): Promise<BatchOutcome<number>> => {
    batches.push(keys);
    most = Math.max(most, ++running);
    await new Promise<void>((r) => pending.push(r));
    running -= 1;
    return keys.map((k) => ({ ok: true, value: k * 10 }));
  };
  return { batches, run, release: () => pending.shift()?.(), get running() { return running; }, get most() { return most; } };
}
const turn = () => new Promise((resolve) => setImmediate(resolve));

test('one batch at a time: calls made while a batch is held (waiting for a store connection) wait for it, then go together', async () => {
  const r = held();
  const c = new Coalescer(r.run);
  const first = c.call(1);
  await turn();
  const rest = [c.call(2), c.call(3)];
  await turn();
  assert.deepEqual(r.batches, [[1]], 'the calls after it wait for the held batch');
  r.release();
  await turn();
  assert.deepEqual(r.batches, [[1], [2, 3]], 'the waiting calls went as one batch');
  r.release();
  assert.deepEqual(await Promise.all([first, ...rest]), [10, 20, 30]);
  assert.equal(r.most, 1);
});

test('beyond maxWaiting callers waiting, a call is refused at once with the `full` error, a new one each time', async () => {
  const r = held();
  const full = () => Object.assign(new Error('the store is busy'), { code: 'E_STORE_BUSY' });
  const c = new Coalescer(r.run, { maxWaiting: 2, full });
  const first = c.call(1);
  await turn();
  const waiting = [c.call(2), c.call(3)];
  const refused = await Promise.allSettled([c.call(4), c.call(5)]);
  const reasons = refused.map((g) => (g.status === 'rejected' ? (g.reason as Error & { code: string }) : null));
  assert.deepEqual(reasons.map((e) => e?.code), ['E_STORE_BUSY', 'E_STORE_BUSY']);
  assert.notEqual(reasons[0], reasons[1]);
  r.release();
  await turn();
  r.release();
  assert.deepEqual(await Promise.all([first, ...waiting]), [10, 20, 30]);
  const again = c.call(6);
  await turn();
  r.release();
  assert.equal(await again, 60, 'served again once the waiters went');
});

test('a batch that fails gives each of its callers an error of its own, of the same kind, with the shared one as its cause', async () => {
  class StoreAway extends Error {
    readonly code = 'E_STORE_UNAVAILABLE';
    detail = 'host a: connection refused';
  }
  const shared = new StoreAway('the store is unavailable');
  const c = new Coalescer<number, number>(async () => {
    throw shared;
  });
  const got = await Promise.allSettled([1, 2, 3].map((k) => c.call(k)));
  const errors = got.map((g) => (g.status === 'rejected' ? (g.reason as StoreAway) : assert.fail('fulfilled')));
  assert.equal(new Set(errors).size, 3, 'three callers, three error objects');
  for (const e of errors) {
    assert.ok(e instanceof StoreAway, 'the kind is kept (callers test instanceof)');
    assert.notEqual(e, shared);
    assert.equal(e.cause, shared);
    assert.deepEqual([e.message, e.code, e.detail], ['the store is unavailable', 'E_STORE_UNAVAILABLE', 'host a: connection refused']);
    assert.equal(typeof e.stack, 'string');
  }
  errors[0]!.message = 'rewritten by one caller';
  errors[0]!.detail = 'changed';
  errors[0]!.stack = 'mine';
  assert.deepEqual([errors[1]!.message, errors[1]!.detail, shared.message, shared.detail], ['the store is unavailable', 'host a: connection refused', 'the store is unavailable', 'host a: connection refused']);
  assert.notEqual(errors[1]!.stack, 'mine');
  assert.notEqual(shared.stack, 'mine');
});
