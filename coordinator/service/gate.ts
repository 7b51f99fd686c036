// A gate: at most `limit` callers run their work at once, the others wait their turn (FIFO), and
// beyond `maxWaiting` waiting a caller is refused at once (what refuses it is the caller's).
export class Gate {
  #running = 0;
  readonly #waiting: (() => void)[] = [];

  constructor(readonly limit: number, readonly maxWaiting: number, readonly refuse: (waiting: number) => Error) {
    if (!Number.isInteger(limit) || limit < 1) throw new Error(`gate: limit ${limit} is not a positive integer`);
  }

  /** Callers running now. */
  get running(): number {
    return this.#running;
  }

  async run<T>(work: () => Promise<T>): Promise<T> {
    if (this.#running >= this.limit) {
      if (this.#waiting.length >= this.maxWaiting) throw this.refuse(this.#waiting.length);
      // The slot is handed over by the caller that leaves it: #running stays counted meanwhile.
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
    } else {
      this.#running++;
    }
    try {
      return await work();
    } finally {
      const next = this.#waiting.shift();
      if (next) next();
      else this.#running--;
    }
  }
}
