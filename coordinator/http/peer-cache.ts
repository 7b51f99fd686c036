// Parsed client certificates, keyed by the sha256 of the DER (coordinator/http/auth.ts): the parse,
// never the verdict. Keyed by the certificate, not the connection: an agent's CSR or report
// beside its held long-poll comes on a connection of its own, and in a renewal storm parsing each
// one again was ~0.3 ms of the event loop per agent (issue 13). At most `max` entries, the least
// recently used out (a Map keeps insertion order: a hit moves its entry to the end). A digest,
// not the DER: 44 characters a key instead of ~1,500 (~30 MB at 20,000 entries).
import { createHash } from 'node:crypto';

export class PeerCache<V> {
  readonly #entries = new Map<string, V>();

  constructor(readonly max: number) {}

  /** The value cached for the certificate `der`, or `parse()`'s (a throw caches nothing). */
  get(der: Buffer, parse: () => V): V {
    const key = createHash('sha256').update(der).digest('base64');
    let value = this.#entries.get(key);
    if (value !== undefined) this.#entries.delete(key);
    else value = parse();
    this.#entries.set(key, value);
    if (this.#entries.size > this.max) this.#entries.delete(this.#entries.keys().next().value!);
    return value;
  }

  /** Characters held in keys, all entries together (what the cache costs beyond its values). */
  keyChars(): number {
    let n = 0;
    for (const k of this.#entries.keys()) n += k.length;
    return n;
  }

  get size(): number {
    return this.#entries.size;
  }
}
