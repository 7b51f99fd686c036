// Calls that arrive while a batch is being served go out together as the next one (group
// commit): a burst of N agent requests costs a few store queries, not N, and a caller alone goes
// at once. One batch at a time, on one store connection: in bench:fleet's renewal storm (1,000
// CSRs, 250 x 4) no checkout waited more than 11 ms and no query queued for the pool, with one
// batch in flight or two, so a second had nothing to gain (issue 13). Pure: what a batch does is
// the caller's `run`.

/** What one batch of keys gives: each key's value or its own error, in the keys' order. */
export type BatchOutcome<V> = ({ ok: true; value: V } | { ok: false; error: unknown })[];

export interface CoalescerOptions {
  /** Keys in one batch at most (1000). */
  maxBatch?: number;
  /** Callers waiting for a batch at most (10 batches' worth); beyond it a call is refused at once with `full()`. */
  maxWaiting?: number;
  /** The error a refused caller gets (a new one each call). */
  full?: () => unknown;
}

interface Waiter<K, V> {
  key: K;
  resolve(v: V): void;
  reject(e: unknown): void;
}

/**
 * An error of its own for one caller of a failed batch: the shared one's kind (prototype) and
 * fields, the shared one as its cause; what one caller does to its error reaches no other.
 */
export function ownError(shared: unknown): unknown {
  if (!(shared instanceof Error)) return shared;
  const own = Object.create(Object.getPrototypeOf(shared) as object) as Error;
  Object.defineProperties(own, Object.getOwnPropertyDescriptors(shared));
  // V8's `stack` may be an accessor bound to the original: a plain copy of its text instead.
  Object.defineProperty(own, 'stack', { value: shared.stack, writable: true, configurable: true, enumerable: false });
  Object.defineProperty(own, 'cause', { value: shared, writable: true, configurable: true, enumerable: false });
  return own;
}

const positive = (n: number) => Number.isInteger(n) && n >= 1;

export class Coalescer<K, V> {
  readonly #run: (keys: K[]) => Promise<BatchOutcome<V>>;
  readonly #maxBatch: number;
  readonly #maxWaiting: number;
  readonly #full: () => unknown;
  #waiting: Waiter<K, V>[] = [];
  #running = false;
  #scheduled = false;

  /**
   * `run` serves one batch: its rejection fails every caller of the batch (each with an error of
   * its own, see ownError), an outcome's error only its own caller.
   */
  constructor(run: (keys: K[]) => Promise<BatchOutcome<V>>, opts: CoalescerOptions = {}) {
    const { maxBatch = 1000, maxWaiting = 10 * maxBatch } = opts;
    if (!positive(maxBatch)) throw new Error(`coalescer: batch size ${maxBatch} is not a positive integer`);
    if (!positive(maxWaiting)) throw new Error(`coalescer: waiting bound ${maxWaiting} is not a positive integer`);
    this.#run = run;
    this.#maxBatch = maxBatch;
    this.#maxWaiting = maxWaiting;
    this.#full = opts.full ?? (() => new Error(`coalescer: ${maxWaiting} callers already waiting`));
  }

  call(key: K): Promise<V> {
    if (this.#waiting.length >= this.#maxWaiting) return Promise.reject(this.#full());
    return new Promise<V>((resolve, reject) => {
      this.#waiting.push({ key, resolve, reject });
      this.#schedule();
    });
  }

  #schedule(): void {
    if (this.#scheduled || this.#running || this.#waiting.length === 0) return;
    this.#scheduled = true;
    // On the next microtask: the calls made in the same tick as this one go with it.
    queueMicrotask(() => {
      this.#scheduled = false;
      if (!this.#running && this.#waiting.length > 0) this.#serve(this.#waiting.splice(0, this.#maxBatch));
    });
  }

  #serve(batch: Waiter<K, V>[]): void {
    this.#running = true;
    let served: Promise<BatchOutcome<V>>;
    try {
      served = this.#run(batch.map((w) => w.key));
    } catch (e) {
      served = Promise.reject(e);
    }
    served.then(
      (outcomes) => batch.forEach((w, i) => {
        const o = outcomes[i];
        if (!o) w.reject(new Error(`coalescer: no outcome for key ${i} of a batch of ${batch.length}`));
        else if (o.ok) w.resolve(o.value);
        else w.reject(o.error);
      }),
      (e: unknown) => batch.forEach((w) => w.reject(ownError(e))),
    ).finally(() => {
      this.#running = false;
      this.#schedule();
    });
  }
}
