// Token buckets per key (an agent's cluster/node), in process; pure, the clock is a parameter.
// An agent calls desired (long-poll), status after each reconcile, and csr when a certificate is
// due. During a change it polls again and reports once per peer wake (up to one per peer: ten
// nodes, ~20 requests a change), so the bucket holds a run of back-to-back changes; it is there
// to stop a looping agent, not to pace a healthy one (a refused report delays convergence).

export interface RateLimit {
  /** Requests allowed at once (the bucket's size). */
  burst: number;
  /** Tokens added per second. */
  perSecond: number;
}

export const AGENT_RATE_LIMIT: RateLimit = { burst: 120, perSecond: 10 };
/** Buckets kept before full ones (idle keys) are dropped. */
const MAX_KEYS = 10_000;

export class RateLimiter {
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  #prunedAt = -Infinity;

  constructor(readonly limit: RateLimit) {
    if (!(limit.burst >= 1 && limit.perSecond > 0)) throw new Error('rate limit: burst must be >= 1 and perSecond > 0');
  }

  /** Take one token for `key` at `nowMs`: 0 when allowed, else the milliseconds until one is. */
  take(key: string, nowMs: number): number {
    // A full scan, so at most once a second: a flood of new keys does not make every take O(n).
    if (this.#buckets.size >= MAX_KEYS && nowMs - this.#prunedAt >= 1000) this.#prune(nowMs);
    const b = this.#buckets.get(key) ?? { tokens: this.limit.burst, at: nowMs };
    b.tokens = Math.min(this.limit.burst, b.tokens + (Math.max(0, nowMs - b.at) / 1000) * this.limit.perSecond);
    b.at = nowMs;
    this.#buckets.set(key, b);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - b.tokens) / this.limit.perSecond) * 1000);
  }

  /** Buckets held (idle ones are dropped past the cap). */
  get size(): number {
    return this.#buckets.size;
  }

  #prune(nowMs: number): void {
    this.#prunedAt = nowMs;
    for (const [k, b] of this.#buckets) {
      if (b.tokens + ((nowMs - b.at) / 1000) * this.limit.perSecond >= this.limit.burst) this.#buckets.delete(k);
    }
  }
}
