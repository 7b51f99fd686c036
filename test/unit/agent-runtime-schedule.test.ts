// The agent's timing decisions, with an injected clock and seeded randomness.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { backoffDelay, renewalDecision, renewalTime, RenewalSchedule, seededRandom, sleep } from '../../agent/runtime/backoff.ts';

const MIN = 60_000;
const DAY = 86_400_000;

test('backoff: ceiling doubles per attempt, delay in [ceiling/2, ceiling), capped', () => {
  const policy = { baseMs: 1000, capMs: 60_000 };
  assert.equal(backoffDelay(0, () => 0, policy), 500);
  assert.equal(backoffDelay(1, () => 0, policy), 1000);
  assert.equal(backoffDelay(3, () => 0, policy), 4000);
  assert.equal(backoffDelay(3, () => 0.999999, policy), 7999);
  assert.equal(backoffDelay(10, () => 0, policy), 30_000);
  assert.equal(backoffDelay(10_000, () => 0.5, policy), 45_000);
  fc.assert(
    fc.property(fc.nat(2000), fc.integer({ min: 0, max: 2 ** 31 }), (attempt, seed) => {
      const d = backoffDelay(attempt, seededRandom(seed), policy);
      const ceiling = Math.min(policy.capMs, policy.baseMs * 2 ** Math.min(attempt, 1024));
      return d >= ceiling / 2 && d < ceiling && d <= policy.capMs;
    }),
  );
  assert.throws(() => backoffDelay(-1, Math.random), RangeError);
});

test('backoff: a seeded generator gives the same sequence twice, and jitter spreads agents apart', () => {
  const seq = (seed: number) => Array.from({ length: 8 }, (_, i) => backoffDelay(i, seededRandom(seed)));
  assert.deepEqual(seq(42), seq(42));
  const fleet = new Set(Array.from({ length: 50 }, (_, seed) => backoffDelay(6, seededRandom(seed))));
  assert.ok(fleet.size > 40, `50 agents should mostly pick different delays, got ${fleet.size}`);
});

test('renewal: at 2/3 of the lifetime minus up to 1/20 of it, for lifetimes from 1 minute to years', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 60, max: 10 * 365 * 86400 }),
      fc.integer({ min: 0, max: 2 ** 31 }),
      fc.integer({ min: 1_600_000_000_000, max: 1_900_000_000_000 }),
      (lifetimeS, seed, start) => {
        const notBefore = new Date(start);
        const notAfter = new Date(start + lifetimeS * 1000);
        const at = renewalTime({ notBefore, notAfter }, seededRandom(seed)).getTime();
        const lifetime = lifetimeS * 1000;
        return at <= start + (lifetime * 2) / 3 && at >= start + (lifetime * 2) / 3 - lifetime / 20 - 1;
      },
    ),
  );
  // Extremes of the random source.
  const v = { notBefore: new Date(0), notAfter: new Date(90 * DAY) };
  assert.equal(renewalTime(v, () => 0).getTime(), 60 * DAY);
  assert.equal(renewalTime(v, () => 0.999999999).getTime(), Math.floor(60 * DAY - 0.999999999 * 4.5 * DAY));
});

test('renewal: decisions follow the injected clock (1-minute certificate)', () => {
  const v = { notBefore: new Date(1_000_000), notAfter: new Date(1_000_000 + MIN) };
  const schedule = new RenewalSchedule(seededRandom(7));
  const at = schedule.renewAt('ab01', v).getTime();
  assert.ok(at > 1_000_000 + 37_000 && at <= 1_000_000 + 40_000, `renewal at ${at - 1_000_000} ms into a 60 s lifetime`);
  assert.equal(schedule.decide('ab01', v, 1_000_000 + 10_000).renew, false);
  assert.deepEqual(schedule.decide('ab01', v, at - 1).renew, false);
  const due = schedule.decide('ab01', v, at);
  assert.equal(due.renew, true);
  assert.equal(due.renew && due.reason, 'due');
  const expired = schedule.decide('ab01', v, 1_000_000 + MIN);
  assert.equal(expired.renew && expired.reason, 'expired');
  const early = renewalDecision(v, new Date(at), 999_999);
  assert.equal(early.renew && early.reason, 'not-yet-valid');
});

test('renewal: the jitter is drawn once per certificate, so the schedule does not creep earlier', () => {
  let draws = 0;
  const random = () => {
    draws += 1;
    return draws === 1 ? 0.1 : 0.99;
  };
  const schedule = new RenewalSchedule(random);
  const v = { notBefore: new Date(0), notAfter: new Date(30 * DAY) };
  const first = schedule.renewAt('01', v).getTime();
  for (let i = 0; i < 10; i++) assert.equal(schedule.renewAt('01', v).getTime(), first);
  assert.equal(draws, 1);
  // A new certificate draws its own jitter; forgetting removed ones frees them.
  assert.notEqual(schedule.renewAt('02', v).getTime(), first);
  schedule.retain(['02']);
  assert.notEqual(schedule.renewAt('01', v).getTime(), first);
});

test('sleep: an abort cuts it short', async () => {
  const ac = new AbortController();
  const t0 = Date.now();
  setTimeout(() => ac.abort(), 20);
  await sleep(10_000, ac.signal);
  assert.ok(Date.now() - t0 < 2000);
});
