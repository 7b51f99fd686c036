// Pure timing decisions of the agent: retry backoff and certificate renewal. The clock and the
// random source are always parameters, so the schedule is tested with an injected clock and a
// seeded generator (FIELD-NOTES: "the clock and randomness are parameters").
import { RENEW_AT_FRACTION, RENEW_JITTER_FRACTION } from '../../shared/contract/renewal.ts';

/** A source of uniformly distributed numbers in [0, 1), like Math.random. */
export type Random = () => number;
/** Milliseconds since the epoch, like Date.now. */
export type Clock = () => number;

export interface BackoffPolicy {
  /** First delay (attempt 0), ms. */
  baseMs: number;
  /** No delay exceeds this, ms. */
  capMs: number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = { baseMs: 1000, capMs: 60_000 };

/**
 * Capped exponential backoff with "equal jitter": the ceiling doubles with every failed attempt
 * up to the cap, and the delay is drawn from [ceiling/2, ceiling). Half the ceiling is always
 * waited (no hammering), the other half spreads a fleet of agents apart after an outage.
 * `attempt` counts consecutive failures, 0 for the first; the caller resets it on success.
 */
export function backoffDelay(attempt: number, random: Random, policy: BackoffPolicy = DEFAULT_BACKOFF): number {
  if (!Number.isInteger(attempt) || attempt < 0) throw new RangeError(`attempt must be a non-negative integer, got ${attempt}`);
  if (!(policy.baseMs > 0) || !(policy.capMs >= policy.baseMs)) throw new RangeError('backoff policy needs 0 < baseMs <= capMs');
  // 2 ** attempt overflows to Infinity for huge attempts; Math.min keeps it at the cap.
  const ceiling = Math.min(policy.capMs, policy.baseMs * 2 ** Math.min(attempt, 1024));
  const r = clampUnit(random());
  return Math.floor(ceiling / 2 + r * (ceiling / 2));
}

/** No Retry-After is waited longer than this: a wrong or hostile header must not park a node for hours. */
export const RETRY_AFTER_MAX_MS = 300_000;

/**
 * The wait a Retry-After header asks for (RFC 9110 10.2.3: delay-seconds, or an HTTP date), in
 * ms from `now`, bounded to [0, maxMs]; null when there is none or it is neither form.
 */
export function retryAfterMs(value: string | undefined, now: number, maxMs = RETRY_AFTER_MAX_MS): number | null {
  const v = value?.trim();
  if (!v) return null;
  let ms: number;
  if (/^\d+$/.test(v)) ms = Number(v) * 1000;
  else {
    // An HTTP date names its day of the week; a bare number or word is not one.
    const at = /^[A-Za-z]{3}, /.test(v) ? Date.parse(v) : NaN;
    if (Number.isNaN(at)) return null;
    ms = at - now;
  }
  return Math.min(maxMs, Math.max(0, ms));
}

/** Pause before moving to the next coordinator: the first move within [0, 1 s), then capped at 5 s. */
export const FAILOVER_BACKOFF: BackoffPolicy = { baseMs: 1000, capMs: 5000 };

/**
 * How long to wait before trying the next coordinator after the `move`-th (0 first) failed one in
 * one call: "full jitter", uniform in [0, ceiling), the ceiling doubling per move up to the cap.
 * When a coordinator dies every agent on it moves at once: full jitter spreads their arrival at
 * the next one over a second instead of one burst of TLS handshakes, and the first move is
 * often near-immediate (a single agent loses almost nothing). A round in which every coordinator
 * failed ends the call; the caller's own backoff (backoffDelay) then applies.
 */
export function failoverDelay(move: number, random: Random, policy: BackoffPolicy = FAILOVER_BACKOFF): number {
  if (!Number.isInteger(move) || move < 0) throw new RangeError(`move must be a non-negative integer, got ${move}`);
  const ceiling = Math.min(policy.capMs, policy.baseMs * 2 ** Math.min(move, 1024));
  return Math.floor(clampUnit(random()) * ceiling);
}

export interface Validity {
  notBefore: Date;
  notAfter: Date;
}

/**
 * When a certificate should be renewed: notBefore + 2/3 of its lifetime - jitter, the jitter
 * uniform in [0, lifetime/20). Draw it once per certificate (see RenewalSchedule) rather than at
 * every check, or repeated draws would drag renewal towards the earliest possible instant.
 * Works for any lifetime from seconds to years.
 */
export function renewalTime(validity: Validity, random: Random): Date {
  const start = validity.notBefore.getTime();
  const lifetime = validity.notAfter.getTime() - start;
  if (!(lifetime > 0)) return new Date(start);
  const jitter = clampUnit(random()) * lifetime * RENEW_JITTER_FRACTION;
  return new Date(Math.floor(start + lifetime * RENEW_AT_FRACTION - jitter));
}

export type RenewalDecision =
  | { renew: false; at: Date }
  /** `reason` says why: due (the schedule says so), expired, or not-yet-valid. */
  | { renew: true; at: Date; reason: 'due' | 'expired' | 'not-yet-valid' };

/** Whether a certificate needs a new one now, given its scheduled renewal instant. */
export function renewalDecision(validity: Validity, renewAt: Date, now: number): RenewalDecision {
  if (now >= validity.notAfter.getTime()) return { renew: true, at: renewAt, reason: 'expired' };
  if (now < validity.notBefore.getTime()) return { renew: true, at: renewAt, reason: 'not-yet-valid' };
  if (now >= renewAt.getTime()) return { renew: true, at: renewAt, reason: 'due' };
  return { renew: false, at: renewAt };
}

/**
 * Remembers the renewal instant drawn for each certificate (by serial), so that the jitter is
 * drawn once per certificate and the schedule stays put between checks.
 */
export class RenewalSchedule {
  private readonly drawn = new Map<string, Date>();
  constructor(private readonly random: Random) {}

  renewAt(serial: string, validity: Validity): Date {
    let at = this.drawn.get(serial);
    if (!at) {
      at = renewalTime(validity, this.random);
      this.drawn.set(serial, at);
    }
    return at;
  }

  decide(serial: string, validity: Validity, now: number): RenewalDecision {
    return renewalDecision(validity, this.renewAt(serial, validity), now);
  }

  /** Drop entries for certificates that no longer exist. */
  retain(serials: Iterable<string>): void {
    const keep = new Set(serials);
    for (const s of [...this.drawn.keys()]) if (!keep.has(s)) this.drawn.delete(s);
  }
}

/** A small seeded generator (mulberry32) for tests and reproducible simulations. */
export function seededRandom(seed: number): Random {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function clampUnit(x: number): number {
  if (!Number.isFinite(x) || x < 0) return 0;
  return x >= 1 ? 1 - Number.EPSILON : x;
}

/** Sleep that an AbortSignal cuts short (resolves, never rejects). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
