// A gate: at most `limit` callers run their work at once, the others wait their turn (FIFO). A
// waiter holds a place in the caller's budget (the signing pool's, for CSRs) until its turn comes;
// when the budget has none left it is refused at once, with the budget's error.

/** Where a gate's waiters are counted: reserveWait() takes a place or throws; what it returns gives the place back. */
export interface WaitBudget {
  reserveWait(): () => void;
}

export class Gate {
  #running = 0;
  readonly #waiting: (() => void)[] = [];

  constructor(readonly limit: number, readonly budget: WaitBudget) {
    if (!Number.isInteger(limit) || limit < 1) throw new Error(`gate: limit ${limit} is not a positive integer`);
  }

  /** Callers running now. */
  get running(): number {
    return this.#running;
  }

  async run<T>(work: () => Promise<T>): Promise<T> {
    if (this.#running >= this.limit) {
      const giveBack = this.budget.reserveWait();
      // The slot is handed over by the caller that leaves it: #running stays counted meanwhile.
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
      giveBack(); // no longer waiting: what the work submits is counted as it goes
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
