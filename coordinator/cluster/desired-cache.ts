// Each node's desired state, computed at most once per cluster generation and trust files, and
// only for the nodes that ask: a request costs O(that node's connections), not O(cluster).
// Pure: the coordinator reads the inputs (one row, the CA bundle, the CRL) and hands them in.
import { compileNode, indexSpec, type CredentialSource, type NodeCompileInput, type SpecIndex } from './compile.ts';
import type { ClusterSpec, NodeDesired } from '../../shared/contract/schema.ts';

export type NodeCompiler = (input: NodeCompileInput, node: string) => NodeDesired;

/**
 * What a cluster's desired states are made of, as read for one request. Every change of the spec,
 * of a credential, of the CRL and of the CA bundle comes with a new generation (putCluster,
 * ServiceContext.bump); the CA bundle and the CRL are compared too, so a trust file changed without one (or by
 * a coordinator of an older version sharing the store) is never served from an older entry.
 */
export interface ClusterInputs {
  spec: ClusterSpec;
  /** The row's incarnation: a cluster deleted and created again under the same name starts over. */
  incarnation: string;
  generation: number;
  caBundle: string;
  crl: string | null;
}

/** The desired states of one cluster generation, compiled node by node when first asked for. */
export class ClusterDesired {
  readonly inputs: ClusterInputs;
  readonly index: SpecIndex;
  readonly #compile: NodeCompiler;
  readonly #loadCredentials: () => Promise<CredentialSource>;
  #credentials: Promise<CredentialSource> | null = null;
  readonly #nodes = new Map<string, NodeDesired>();

  constructor(inputs: ClusterInputs, loadCredentials: () => Promise<CredentialSource>, compile: NodeCompiler) {
    this.inputs = inputs;
    this.index = indexSpec(inputs.spec);
    this.#loadCredentials = loadCredentials;
    this.#compile = compile;
  }

  matches(i: ClusterInputs): boolean {
    const o = this.inputs;
    return o.incarnation === i.incarnation && o.generation === i.generation && o.caBundle === i.caBundle && o.crl === i.crl;
  }

  /** The node's desired state (shared and frozen: callers copy before adding to it). */
  async node(name: string): Promise<NodeDesired> {
    const hit = this.#nodes.get(name);
    if (hit) return hit;
    const credentials = await this.#credentialSource();
    // Another request may have compiled it while this one waited for the credentials.
    const again = this.#nodes.get(name);
    if (again) return again;
    // Frozen: shared by every request of the generation, so a caller adds to a copy (renewSerials).
    const d = Object.freeze(this.#compile({ index: this.index, generation: this.inputs.generation, credentials, caBundle: this.inputs.caBundle, crl: this.inputs.crl }, name));
    this.#nodes.set(name, d);
    return d;
  }

  /** How many nodes have been compiled (tests, metrics). */
  get compiled(): number {
    return this.#nodes.size;
  }

  #credentialSource(): Promise<CredentialSource> {
    if (!this.#credentials) {
      this.#credentials = this.#loadCredentials();
      // A failed read is not kept: the next request tries again.
      this.#credentials.catch(() => (this.#credentials = null));
    }
    return this.#credentials;
  }
}

export const DEFAULT_MAX_CLUSTERS = 10_000;

/**
 * One entry per cluster, for its latest inputs only: a new generation replaces the entry (the old
 * one is garbage once no request holds it). At most maxClusters entries, least recently used out.
 */
export class DesiredCache {
  readonly #compile: NodeCompiler;
  readonly #max: number;
  readonly #entries = new Map<string, ClusterDesired>();

  constructor(opts: { compile?: NodeCompiler; maxClusters?: number } = {}) {
    this.#compile = opts.compile ?? compileNode;
    this.#max = Math.max(1, opts.maxClusters ?? DEFAULT_MAX_CLUSTERS);
  }

  /** The cluster's entry for these inputs: the cached one when they match, else a new one in its place. */
  entry(cluster: string, inputs: ClusterInputs, loadCredentials: () => Promise<CredentialSource>): ClusterDesired {
    const e = this.#entries.get(cluster);
    if (e?.matches(inputs)) {
      this.#touch(cluster, e);
      return e;
    }
    const fresh = new ClusterDesired(inputs, loadCredentials, this.#compile);
    // A slow read of an older generation is served, uncached: it does not push out the newer entry.
    if (e && e.inputs.incarnation === inputs.incarnation && e.inputs.generation > inputs.generation) return fresh;
    this.#touch(cluster, fresh);
    while (this.#entries.size > this.#max) this.#entries.delete(this.#entries.keys().next().value!);
    return fresh;
  }

  /** Map order is the LRU order: the entry used goes last. */
  #touch(cluster: string, e: ClusterDesired): void {
    this.#entries.delete(cluster);
    this.#entries.set(cluster, e);
  }

  drop(cluster: string): void {
    this.#entries.delete(cluster);
  }

  get size(): number {
    return this.#entries.size;
  }
}
