// What each agent is told to apply: its node's desired state, compiled once per generation
// (DesiredCache), with the renewals asked of it now, handed out by long-poll; and the peer
// wakes (other nodes applied) the long-polls that ask for them.
import { EventEmitter } from 'node:events';
import type { PeerWake } from '../../shared/contract/api.ts';
import type { ClusterSpec, NodeDesired } from '../../shared/contract/schema.ts';
import { credentialRecord, rolesNeedingPasswords } from '../cluster/compile.ts';
import { DesiredCache, type ClusterDesired } from '../cluster/desired-cache.ts';
import { StoreUnavailableError } from '../store/store-hosts.ts';
import type { CaRotations } from './ca-rotation.ts';
import type { ClusterCas } from './cluster-cas.ts';
import type { AgentPrincipal, ServiceContext } from './context.ts';
import type { Crls } from './crls.ts';
import type { Passwords } from './passwords.ts';
import type { ClusterRow } from './stored-specs.ts';

export interface DesiredStateDeps {
  cas: ClusterCas;
  crls: Crls;
  passwords: Passwords;
  rotations: CaRotations;
}

/** What the agent's long-poll asks for beyond its desired state (see poll). */
export interface PollOptions {
  peersKnown?: number;
  passwordsAt?: boolean;
}

export class DesiredStates {
  readonly #ctx: ServiceContext;
  readonly #deps: DesiredStateDeps;
  /** Each node's desired state, compiled once per cluster generation (and trust files). */
  readonly #desired: DesiredCache;
  /**
   * Per cluster, each node's last reported applied generation (seeded from node_status on first
   * use), and an 'applied' event (cluster name) when one goes up: what wakes the long-polls that
   * asked for peer wakes. In process: with several coordinators, a report to another one wakes
   * nobody here, and the agents' probe retry timer covers it.
   */
  readonly #applied = new Map<string, Promise<Map<string, number>>>();
  readonly #peerEvents = new EventEmitter().setMaxListeners(0);

  constructor(ctx: ServiceContext, deps: DesiredStateDeps) {
    this.#ctx = ctx;
    this.#deps = deps;
    this.#desired = new DesiredCache({ compile: ctx.compileNode });
  }

  /**
   * Long-poll: the node's desired state as soon as its generation exceeds `after`; null when
   * nothing newer appears within the wait. Wakes on a change by this coordinator or (through
   * NOTIFY) another one sharing the database. With `peersKnown` (the agent asks for peer
   * wakes): a PeerWake as soon as more than that many other nodes have applied `after` or newer.
   * With `passwordsAt` (the agent understands it): a password rotation's switch instant.
   */
  async poll(agent: AgentPrincipal, after: number, signal: AbortSignal | undefined, waitMs: number, opts: PollOptions): Promise<NodeDesired | PeerWake | null> {
    const ctx = this.#ctx;
    const { peersKnown } = opts;
    const deadline = Date.now() + waitMs;
    for (;;) {
      let woke = false;
      const onEvent = (cluster: string) => {
        if (cluster === agent.cluster || cluster === '*') woke = true;
      };
      // Subscribe before reading, so a change between the read and the wait is not missed.
      ctx.store.events.on('cluster', onEvent);
      if (peersKnown !== undefined) this.#peerEvents.on('applied', onEvent);
      try {
        const row = await ctx.requireNode(agent);
        if (await this.#deps.crls.refresh(agent.cluster)) continue;
        if (row.generation > after) {
          const d = await this.#nodeDesired(row, agent.node);
          const at = opts.passwordsAt ? this.#deps.passwords.switchAt(agent.cluster, d.generation) : undefined;
          return at ? { ...d, passwordsAt: at.toISOString() } : d;
        }
        if (peersKnown !== undefined) {
          const applied = await this.#peersApplied(agent.cluster, row.spec, agent.node, after);
          if (applied.length > peersKnown) return { wake: 'peers-applied', applied };
        }
        const remaining = deadline - Date.now();
        if (remaining <= 0 || signal?.aborted) return null;
        if (!woke) await waitFor(peersKnown !== undefined ? [ctx.store.events, this.#peerEvents] : [ctx.store.events], agent.cluster, remaining, signal);
      } catch (e) {
        // The store failing over: the long-poll is held rather than failed (the agent would back
        // off); the store wakes every waiter ('*') once its LISTEN holds again. At the deadline, the 503.
        if (!(e instanceof StoreUnavailableError) || Date.now() >= deadline || signal?.aborted) throw e;
        if (!woke) await waitFor([ctx.store.events], agent.cluster, deadline - Date.now(), signal);
      } finally {
        ctx.store.events.off('cluster', onEvent);
        this.#peerEvents.off('applied', onEvent);
      }
    }
  }

  /** Every node's desired state of a cluster row (plan's "before"), through the cache. */
  async ofCluster(row: ClusterRow): Promise<Map<string, NodeDesired>> {
    const entry = await this.#entry(row);
    return new Map(await Promise.all(row.spec.nodes.map(async (n) => [n.name, await entry.node(n.name)] as const)));
  }

  /** A node reported the generation it applied: long-polls waiting for their peers wake when it went up. */
  async noteApplied(agent: AgentPrincipal, generation: number): Promise<void> {
    const applied = await this.#appliedOf(agent.cluster);
    const before = applied.get(agent.node);
    applied.set(agent.node, generation);
    if (before === undefined || generation > before) this.#peerEvents.emit('applied', agent.cluster);
  }

  forget(cluster: string): void {
    this.#desired.drop(cluster);
    this.#applied.delete(cluster);
  }

  /**
   * The cache entry of a cluster row's generation. The trust files are read each time (one
   * indexed read) and key the entry too; the credentials only when a node is first compiled.
   */
  async #entry(row: ClusterRow): Promise<ClusterDesired> {
    const inputs = { spec: row.spec, incarnation: row.incarnation, generation: row.generation, ...(await this.#deps.cas.trustFiles(row.name)) };
    // Only scram clusters have credentials to read (compile asks for none otherwise).
    const load = rolesNeedingPasswords(row.spec).length > 0 ? () => this.#deps.passwords.source(row.name) : async () => credentialRecord({});
    return this.#desired.entry(row.name, inputs, load);
  }

  /** One node's desired state: compiled at most once per generation, with the renewals asked of it now. */
  async #nodeDesired(row: ClusterRow, node: string): Promise<NodeDesired> {
    const [desired, renew] = await Promise.all([this.#entry(row).then((e) => e.node(node)), this.#renewSerials(row.name, node)]);
    // The cached state is shared: a copy carries this request's renewals.
    return renew.length > 0 ? { ...desired, renewSerials: renew } : desired;
  }

  /**
   * Serials the node is asked to renew now: requested and not yet replaced, and in phase
   * 'reissue' of a CA rotation, its leaves from the old CA. Level-triggered (a replaced or
   * expired certificate leaves the list without a new generation), so read per request: O(the
   * node's certificates), never cached.
   */
  async #renewSerials(cluster: string, node: string): Promise<string[]> {
    // One read: the requested ones not yet replaced (no newer certificate for the same node and
    // slot since), and whether a CA rotation is re-issuing (only then are the old CA's leaves read).
    const r = (await this.#ctx.store.query<{ renew: string[]; reissuing: boolean }>(
      `SELECT ARRAY(SELECT serial FROM certificates c WHERE cluster = $1 AND node = $3 AND renew_requested_at IS NOT NULL AND revoked_at IS NULL AND not_after > $2
                      AND NOT EXISTS (SELECT 1 FROM certificates n WHERE n.cluster = c.cluster AND n.node = c.node AND n.slot = c.slot AND n.serial <> c.serial
                                        AND n.not_before >= date_trunc('second', c.renew_requested_at) - interval '${5 * 60} seconds')) AS renew,
              EXISTS (SELECT 1 FROM ca_rotations WHERE cluster = $1 AND phase = 'reissue') AS reissuing`,
      [cluster, this.#ctx.now(), node],
    ))[0]!;
    const reissue = r.reissuing ? (await this.#deps.rotations.oldCaLeaves(cluster, node)).map((x) => x.serial) : [];
    return [...new Set([...r.renew, ...reissue])].sort();
  }

  /** The cluster's applied generations per node, read from node_status once per process. */
  #appliedOf(cluster: string): Promise<Map<string, number>> {
    let m = this.#applied.get(cluster);
    if (!m) {
      const sql = `SELECT node, (report->>'generation')::int AS generation FROM node_status WHERE cluster = $1`;
      m = this.#ctx.store.query<{ node: string; generation: number | null }>(sql, [cluster])
        .then((rows) => new Map(rows.filter((r) => r.generation !== null).map((r) => [r.node, r.generation!])));
      m.catch(() => this.#applied.delete(cluster));
      this.#applied.set(cluster, m);
    }
    return m;
  }

  /** The other nodes of the spec that reported `generation` or newer applied, by name. */
  async #peersApplied(cluster: string, spec: ClusterSpec, self: string, generation: number): Promise<PeerWake['applied']> {
    const applied = await this.#appliedOf(cluster);
    return spec.nodes.filter((n) => n.name !== self && (applied.get(n.name) ?? -1) >= generation).map((n) => ({ node: n.name, generation: applied.get(n.name)! }));
  }
}

function waitFor(emitters: NodeJS.EventEmitter[], cluster: string, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      for (const e of emitters) e.off('cluster', onEvent).off('applied', onEvent);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const onEvent = (c: string) => {
      if (c === cluster || c === '*') done();
    };
    const timer = setTimeout(done, ms);
    for (const e of emitters) e.on('cluster', onEvent).on('applied', onEvent);
    signal?.addEventListener('abort', done, { once: true });
  });
}
