// Calls that arrive while one is being served go out together as the next one (group commit):
// a burst of N agent requests costs a few store queries, not N, and a caller alone goes at once.
// Pure: what a batch does is the caller's `run`.

/** What one batch of keys gives: each key's value or its own error, in the keys' order. */
export type BatchOutcome<V> = ({ ok: true; value: V } | { ok: false; error: unknown })[];

interface Waiter<K, V> {
  key: K;
  resolve(v: V): void;
  reject(e: unknown): void;
}

export class Coalescer<K, V> {
  readonly #run: (keys: K[]) => Promise<BatchOutcome<V>>;
  readonly #maxBatch: number;
  #waiting: Waiter<K, V>[] = [];
  #busy = false;

  /**
   * `run` serves one batch (at most `maxBatch` keys; one batch at a time): its rejection fails
   * every caller of the batch, an outcome's error only its own.
   */
  constructor(run: (keys: K[]) => Promise<BatchOutcome<V>>, maxBatch = 1000) {
    if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new Error(`coalescer: batch size ${maxBatch} is not a positive integer`);
    this.#run = run;
    this.#maxBatch = maxBatch;
  }

  call(key: K): Promise<V> {
    return new Promise<V>((resolve, reject) => {
      this.#waiting.push({ key, resolve, reject });
      this.#next();
    });
  }

  #next(): void {
    if (this.#busy || this.#waiting.length === 0) return;
    this.#busy = true;
    // On the next microtask: the calls made in the same tick as this one go with it.
    queueMicrotask(() => {
      const batch = this.#waiting.splice(0, this.#maxBatch);
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
        (e: unknown) => batch.forEach((w) => w.reject(e)),
      ).finally(() => {
        this.#busy = false;
        this.#next();
      });
    });
  }
}
