// Results of pure parses and checks of certificates and CRLs, kept by the sha256 of their inputs.
// An agent checks the same few files on every pass (each version of each slot, the installed
// pairs, the served certificate, the CRL), and without V8's optimising compilers a parse costs
// several times what it does in the coordinator: a result is computed once per distinct input.
// Keys are digests, never the inputs (a private key is not kept here). Bounded, least recently
// used evicted. Only results are kept, never a thrown error (a bad input is judged again).
import { createHash } from 'node:crypto';

export class Memo<T> {
  private readonly entries = new Map<string, T>();
  /** How many times the function behind this memo ran (a miss): for tests and benches. */
  misses = 0;
  constructor(private readonly limit = 256) {}

  /** The value for `inputs`, computed by `compute` when not known. */
  get(inputs: readonly string[], compute: () => T): T {
    const key = digest(inputs);
    const hit = this.entries.get(key);
    if (hit !== undefined) {
      this.entries.delete(key);
      this.entries.set(key, hit);
      return hit;
    }
    this.misses++;
    const value = compute();
    this.entries.set(key, value);
    if (this.entries.size > this.limit) this.entries.delete(this.entries.keys().next().value!);
    return value;
  }

  get size(): number {
    return this.entries.size;
  }
}

/** sha256 over the inputs (PEM text), each prefixed with its length in bytes: no two lists of inputs share the framing. */
function digest(inputs: readonly string[]): string {
  const h = createHash('sha256');
  for (const s of inputs) h.update(`${Buffer.byteLength(s)}:`).update(s);
  return h.digest('base64');
}
