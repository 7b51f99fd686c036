// The coalescer behind the shared identity reads and contact writes (coordinator/service/coalesce.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Coalescer, type BatchOutcome } from '../../coordinator/service/coalesce.ts';

function recorder(opts: { fail?: (k: number) => boolean; reject?: boolean } = {}) {
  const batches: number[][] = [];
  let release: (() => void) | null = null;
  const held = { hold: false };
  const run = async (keys: number[]): Promise<BatchOutcome<number>> => {
    batches.push(keys);
    if (held.hold) await new Promise<void>((r) => (release = r));
    if (opts.reject) throw new Error('store away');
    return keys.map((k) => (opts.fail?.(k) ? { ok: false, error: new Error(`no ${k}`) } : { ok: true, value: k * 10 }));
  };
  return { batches, run, held, release: () => release?.() };
}

test('a call alone is one batch; calls made while a batch is served go together as the next one', async () => {
  const r = recorder();
  const c = new Coalescer(r.run);
  assert.equal(await c.call(1), 10);
  r.held.hold = true;
  const first = c.call(2);
  await new Promise((resolve) => setImmediate(resolve)); // the first batch is being served
  r.held.hold = false;
  const rest = [3, 4, 5].map((k) => c.call(k));
  r.release();
  assert.deepEqual(await Promise.all([first, ...rest]), [20, 30, 40, 50]);
  assert.deepEqual(r.batches, [[1], [2], [3, 4, 5]]);
});

test('calls of the same tick go in one batch, at most maxBatch keys each', async () => {
  const r = recorder();
  const c = new Coalescer(r.run, { maxBatch: 2 });
  assert.deepEqual(await Promise.all([1, 2, 3].map((k) => c.call(k))), [10, 20, 30]);
  assert.deepEqual(r.batches, [[1, 2], [3]]);
});

test('an outcome\'s error fails its caller alone; a batch that throws fails all of its callers, and the next batch runs', async () => {
  const one = recorder({ fail: (k) => k === 2 });
  const c = new Coalescer(one.run);
  const got = await Promise.allSettled([1, 2, 3].map((k) => c.call(k)));
  assert.deepEqual(got.map((g) => g.status), ['fulfilled', 'rejected', 'fulfilled']);
  const all = recorder({ reject: true });
  const d = new Coalescer(all.run);
  const failed = await Promise.allSettled([1, 2].map((k) => d.call(k)));
  assert.deepEqual(failed.map((g) => (g.status === 'rejected' ? (g.reason as Error).message : 'ok')), ['store away', 'store away']);
  await assert.rejects(d.call(3), /store away/);
  assert.deepEqual(all.batches, [[1, 2], [3]]);
});
