// The per-agent token bucket: a burst, then the refill rate; keys independent; the wait it
// answers is when the next token is there. The clock is a parameter.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AGENT_RATE_LIMIT, RateLimiter } from '../../coordinator/http/rate-limit.ts';

test('burst, then one token per 1/perSecond; keys do not share a bucket', () => {
  const l = new RateLimiter({ burst: 3, perSecond: 2 });
  assert.deepEqual([0, 1, 2].map(() => l.take('a', 0)), [0, 0, 0]);
  assert.equal(l.take('a', 0), 500, 'the next token in 500 ms');
  assert.equal(l.take('b', 0), 0, 'another key has its own bucket');
  assert.equal(l.take('a', 250), 250);
  assert.equal(l.take('a', 500), 0);
  assert.equal(l.take('a', 60_000), 0);
  assert.deepEqual([0, 1].map(() => l.take('a', 60_000)), [0, 0], 'refilled to the burst, not beyond');
  assert.ok(l.take('a', 60_000) > 0);
});

test('the default lets an agent through its busiest ten minutes (a poll a second, a status per reconcile, CSRs)', () => {
  const l = new RateLimiter(AGENT_RATE_LIMIT);
  // Start-up: enrol-time burst of 10 CSRs, a poll, a status; then 2 requests a second for 10 minutes.
  for (let i = 0; i < 12; i++) assert.equal(l.take('n', 0), 0);
  for (let t = 0; t < 600_000; t += 500) assert.equal(l.take('n', t + 500), 0, `at ${t} ms`);
});

test('the default lets every agent of a ten-node cluster through 20 back-to-back changes (a poll and a report per peer wake)', () => {
  // Since an apply probes only the peers known to hold its generation, an agent polls again and
  // reports once per wake batch: at worst one per peer. One change every 2 s, for 20 changes:
  // the answer to the poll, the desired fetch, the apply's report, then 9 wakes x (poll + report).
  const l = new RateLimiter(AGENT_RATE_LIMIT);
  const perChange = 3 + 9 * 2;
  for (let change = 0; change < 20; change++) {
    for (let i = 0; i < perChange; i++) {
      const at = change * 2000 + Math.floor((i * 2000) / perChange);
      assert.equal(l.take('n', at), 0, `change ${change + 1}, request ${i + 1} refused`);
    }
  }
});

test('refuses a limit that would let nothing through', () => {
  assert.throws(() => new RateLimiter({ burst: 0, perSecond: 1 }));
  assert.throws(() => new RateLimiter({ burst: 1, perSecond: 0 }));
});

test('past the bucket cap, idle buckets are pruned at most once a second, not on every take', () => {
  // Refilled within 1 ms: every bucket is idle (full) at the next millisecond.
  const l = new RateLimiter({ burst: 1, perSecond: 1000 });
  const fill = (prefix: string, at: number) => {
    for (let i = 0; i <= 10_000; i++) l.take(`${prefix}${i}`, at);
  };
  fill('a', 0);
  assert.equal(l.size, 10_001, 'nothing idle yet at t = 0');
  l.take('probe', 1000);
  assert.ok(l.size <= 1, `pruned at t = 1 s: ${l.size} left`);
  fill('b', 1000);
  l.take('probe', 1500);
  assert.equal(l.size, 10_002, 'no second scan within the second');
  l.take('probe', 2000);
  assert.ok(l.size <= 1, `pruned again at t = 2 s: ${l.size} left`);
});
