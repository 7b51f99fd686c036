// What each agent is told to apply: its node's desired state, compiled once per generation
// (DesiredCache), with the renewals asked of it now, handed out by long-poll; and the peer
// wakes (other nodes applied) the long-polls that ask for them.
import type { PeerWake } from '../../shared/contract/api.ts';
import type { ClusterSpec, NodeDesired } from '../../shared/contract/schema.ts';
import { credentialRecord, rolesNeedingPasswords } from '../cluster/compile.ts';
import { DesiredCache, type ClusterDesired } from '../cluster/desired-cache.ts';
import { jsonInt } from '../store/json-sql.ts';
import { StoreBusyError, StoreUnavailableError } from '../store/store-hosts.ts';
import type { CaRotations } from './ca-rotation.ts';
import { trustFilesOf, trustFilesSql, type TrustFiles, type TrustRow } from './cluster-cas.ts';
import { Coalescer, ownError } from './coalesce.ts';
import { nodeGone, type AgentPrincipal, type ServiceContext } from './context.ts';
import type { Crls } from './crls.ts';
import { contactId, contactsSql, latestContacts, type ContactKey } from './identities.ts';
import type { Passwords } from './passwords.ts';
import type { ClusterRow } from './stored-specs.ts';

export interface DesiredStateDeps {
  crls: Crls;
  passwords: Passwords;
  rotations: CaRotations;
  /** The node's last_contact, alone (Identities.recordContact): a long-poll with nothing to answer yet. */
  recordContact: (agent: AgentPrincipal) => Promise<void>;
}

/** What the agent's long-poll asks for beyond its desired state (see poll). */
export interface PollOptions {
  peersKnown?: number;
  passwordsAt?: boolean;
  /** Write the node's last_contact once, with the poll's first read (the route's served request). */
  contact?: boolean;
}

/**
 * Columns added to trustFilesSql (expressions of the cluster, the instant and the node): the
 * serials the node is asked to renew now (requested and not yet replaced: no newer certificate
 * for the same node and slot since), and whether a CA rotation is in phase 'reissue'.
 */
const renewalColumns = (cluster: string, now: string, node: string) => `, r.phase IS NOT DISTINCT FROM 'reissue' AS reissuing,
  ARRAY(SELECT serial FROM certificates c WHERE c.cluster = ${cluster} AND c.node = ${node} AND renew_requested_at IS NOT NULL AND revoked_at IS NULL AND not_after > ${now}
          AND NOT EXISTS (SELECT 1 FROM certificates n WHERE n.cluster = c.cluster AND n.node = c.node AND n.slot = c.slot AND n.serial <> c.serial
                            AND n.not_before >= date_trunc('second', c.renew_requested_at) - interval '${5 * 60} seconds')) AS renew`;
/**
 * The reads of many nodes ($1, $2 arrays; a node NULL: its cluster's trust files, no renewals) at
 * $3, by their index; a cluster without a CA gives a row of nulls.
 */
const NODE_READS_SQL = `SELECT k.i, t.* FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(cluster, node, i)
  LEFT JOIN LATERAL (${trustFilesSql(renewalColumns('k.cluster', '$3', 'k.node'), 'k.cluster')}) t ON true`;
/**
 * The last_contact of a batch of nodes (contactsSql's $1..$3), each row written returning the
 * node's read ($4 now) as JSON, null when its cluster has no CA: a first desired request's
 * contact and read in one statement, shared with the requests arriving together.
 */
const CONTACT_READ_SQL = contactsSql(
  `, (SELECT row_to_json(t) FROM (${trustFilesSql(renewalColumns('node_status.cluster', '$4', 'node_status.node'), 'node_status.cluster')}) t) AS read`);
type NodeRead = TrustRow & { renew: string[]; reissuing: boolean };

export class DesiredStates {
  readonly #ctx: ServiceContext;
  readonly #deps: DesiredStateDeps;
  /** Each node's desired state, compiled once per cluster generation (and trust files). */
  readonly #desired: DesiredCache;
  /**
   * Per cluster, each node's last reported applied generation (seeded from node_status on first
   * use); when one goes up, the cluster's long-polls that asked for peer wakes wake. In process:
   * with several coordinators, a report to another one wakes nobody here, and the agents' probe
   * retry timer covers it.
   */
  readonly #applied = new Map<string, Promise<Map<string, number>>>();
  /**
   * The held long-polls by cluster. One listener on the store's change events hands each change
   * to its own cluster's polls: a listener per poll made every change call every poll of the
   * fleet, and every poll's end search them all (O(fleet) per change; issue 13).
   */
  readonly #waiting = new Map<string, Set<Wake>>();
  #held = 0;
  /**
   * First desired requests arriving together: one statement writes their last_contact and reads
   * their trust files and renewals (issue 13: the store's round trips were ~a third of the
   * coordinator's busy time for 2,500 agents' first cycles, each query a write to its socket).
   */
  readonly #contactReads: Coalescer<ContactKey, NodeRead | undefined>;
  /** The other reads of nodes passing together (the polls a change woke, a plan's): one query. */
  readonly #reads: Coalescer<{ cluster: string; node: string | null }, NodeRead | undefined>;
  /** Per cluster, the row read its polls passing in this tick share (#sharedRow). */
  readonly #rowReads = new Map<string, Promise<ClusterRow | null>>();

  constructor(ctx: ServiceContext, deps: DesiredStateDeps) {
    this.#ctx = ctx;
    this.#deps = deps;
    this.#desired = new DesiredCache({ compile: ctx.compileNode });
    this.#contactReads = new Coalescer(async (keys) => {
      const rows = latestContacts(keys);
      const read = new Map((await ctx.store.query<{ cluster: string; node: string; read: NodeRead | null }>(
        CONTACT_READ_SQL, [rows.map((k) => k.cluster), rows.map((k) => k.node), rows.map((k) => k.at), ctx.now()],
      )).map((r) => [contactId(r), r.read ?? undefined]));
      // Not written: the cluster is gone (as Identities.recordContact says it).
      return keys.map((k) => (read.has(contactId(k)) ? { ok: true, value: read.get(contactId(k)) } : { ok: false, error: nodeGone(k.cluster, k.node) }));
    }, { full: () => new StoreBusyError('too many agent requests waiting for it') });
    // Bounded by the polls held (each waits once), never refused: a woken poll is not turned into a 503.
    this.#reads = new Coalescer(async (keys) => {
      const rows = await ctx.store.query<{ i: string } & NodeRead>(NODE_READS_SQL, [keys.map((k) => k.cluster), keys.map((k) => k.node), ctx.now()]);
      const read = new Map(rows.map((r) => [Number(r.i) - 1, r.cert_pem === null ? undefined : r]));
      return keys.map((_, i) => ({ ok: true, value: read.get(i) }));
    }, { maxWaiting: Number.MAX_SAFE_INTEGER });
    ctx.store.events.on('cluster', (cluster: string) => this.#wake(cluster, false));
  }

  /** Long-polls subscribed now (each subscribes before it reads, so a change is never missed). */
  get held(): number {
    return this.#held;
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
    // The contact is written once, with the first pass's read (again on a pass after a failed one).
    let contact = opts.contact === true;
    for (;;) {
      // Subscribe before reading, so a change between the read and the wait is not missed.
      const wake = this.#subscribe(agent.cluster, peersKnown !== undefined);
      try {
        const row = ctx.nodeRow(agent, await this.#sharedRow(agent.cluster));
        if (await this.#deps.crls.refresh(agent.cluster, { recentRead: true })) continue;
        if (row.generation > after) {
          const d = await this.#nodeDesired(row, agent.node, contact);
          const at = opts.passwordsAt ? this.#deps.passwords.switchAt(agent.cluster, d.generation) : undefined;
          return at ? { ...d, passwordsAt: at.toISOString() } : d;
        }
        if (contact) {
          await this.#deps.recordContact(agent);
          contact = false;
        }
        if (peersKnown !== undefined) {
          const applied = await this.#peersApplied(agent.cluster, row.spec, agent.node, after);
          if (applied.length > peersKnown) return { wake: 'peers-applied', applied };
        }
        const remaining = deadline - Date.now();
        if (remaining <= 0 || signal?.aborted) return null;
        await wake.until(remaining, signal);
      } catch (e) {
        // The store failing over: the long-poll is held rather than failed (the agent would back
        // off); the store wakes every waiter ('*') once its LISTEN holds again. At the deadline, the 503.
        if (!(e instanceof StoreUnavailableError) || Date.now() >= deadline || signal?.aborted) throw e;
        await wake.until(deadline - Date.now(), signal);
      } finally {
        this.#unsubscribe(agent.cluster, wake);
      }
    }
  }

  /** Every node's desired state of a cluster row (plan's "before"), through the cache. */
  async ofCluster(row: ClusterRow): Promise<Map<string, NodeDesired>> {
    const entry = this.#entry(row, (await this.#trustAndRenewals(row.name, null)).trust);
    return new Map(await Promise.all(row.spec.nodes.map(async (n) => [n.name, await entry.node(n.name)] as const)));
  }

  /** A node reported the generation it applied: long-polls waiting for their peers wake when it went up. */
  async noteApplied(agent: AgentPrincipal, generation: number): Promise<void> {
    const applied = await this.#appliedOf(agent.cluster);
    const before = applied.get(agent.node);
    applied.set(agent.node, generation);
    if (before === undefined || generation > before) this.#wake(agent.cluster, true);
  }

  #subscribe(cluster: string, peers: boolean): Wake {
    const wake = new Wake(peers);
    let set = this.#waiting.get(cluster);
    if (!set) this.#waiting.set(cluster, (set = new Set()));
    set.add(wake);
    this.#held += 1;
    return wake;
  }

  #unsubscribe(cluster: string, wake: Wake): void {
    const set = this.#waiting.get(cluster);
    if (!set?.delete(wake)) return;
    this.#held -= 1;
    if (set.size === 0) this.#waiting.delete(cluster);
  }

  /** A change of the cluster ('*': of every cluster, the store's LISTEN regained), or a peer of it applied (only polls that asked). */
  #wake(cluster: string, peerApplied: boolean): void {
    const sets = cluster === '*' ? [...this.#waiting.values()] : [this.#waiting.get(cluster)];
    for (const set of sets) for (const w of set ?? []) if (!peerApplied || w.peers) w.wake();
  }

  forget(cluster: string): void {
    this.#desired.drop(cluster);
    this.#applied.delete(cluster);
  }

  /**
   * The row of a cluster, read once for the polls of the cluster that ask for it in the same tick
   * (a change wakes them together: one read, not one per node), issued after each of them asked,
   * so that each sees what a read of its own would; the read is every pass's (StoredSpecs.read).
   * Each caller gets an error of its own (ownError).
   */
  #sharedRow(cluster: string): Promise<ClusterRow | null> {
    let read = this.#rowReads.get(cluster);
    if (!read) {
      read = new Promise((resolve) => queueMicrotask(() => {
        this.#rowReads.delete(cluster);
        resolve(this.#ctx.cluster(cluster));
      }));
      this.#rowReads.set(cluster, read);
    }
    return read.catch((e: unknown) => {
      throw ownError(e);
    });
  }

  /**
   * The cache entry of a cluster row's generation. The trust files are read each time (with the
   * renewals, #trustAndRenewals) and key the entry too; the credentials only when a node is first compiled.
   */
  #entry(row: ClusterRow, trust: TrustFiles): ClusterDesired {
    const inputs = { spec: row.spec, incarnation: row.incarnation, generation: row.generation, ...trust };
    // Only scram clusters have credentials to read (compile asks for none otherwise).
    const load = rolesNeedingPasswords(row.spec).length > 0 ? () => this.#deps.passwords.source(row.name) : async () => credentialRecord({});
    return this.#desired.entry(row.name, inputs, load);
  }

  /** One node's desired state: compiled at most once per generation, with the renewals asked of it now. */
  async #nodeDesired(row: ClusterRow, node: string, contact: boolean): Promise<NodeDesired> {
    const { trust, renew } = await this.#trustAndRenewals(row.name, node, contact);
    const desired = await this.#entry(row, trust).node(node);
    // The cached state is shared: a copy carries this request's renewals.
    return renew.length > 0 ? { ...desired, renewSerials: renew } : desired;
  }

  /**
   * The one read of a node's trust files (trustFilesSql's row, by trustFilesOf's rule) and, in the
   * same query, the serials it is asked to renew now (renewalColumns; `node` null: none, the
   * cluster's trust files alone), and in phase 'reissue' of a CA rotation its leaves from the
   * old CA (only then read); one query for the nodes read together (NODE_READS_SQL). With
   * `contact`: in the statement that writes the node's last_contact, shared with the requests
   * arriving together (CONTACT_READ_SQL). Level-triggered (a replaced or
   * expired certificate leaves the list without a new generation), so read per request: O(the
   * node's certificates), never cached.
   */
  async #trustAndRenewals(cluster: string, node: string | null, contact = false): Promise<{ trust: TrustFiles; renew: string[] }> {
    const ctx = this.#ctx;
    const r = contact && node !== null ? await this.#contactReads.call({ cluster, node, at: ctx.now() }) : await this.#reads.call({ cluster, node });
    const trust = trustFilesOf(cluster, r); // no row: it threw (404)
    const reissue = node !== null && r!.reissuing ? (await this.#deps.rotations.oldCaLeaves(cluster, node)).map((x) => x.serial) : [];
    return { trust, renew: [...new Set([...r!.renew, ...reissue])].sort() };
  }

  /** The cluster's applied generations per node, read from node_status once per process. */
  #appliedOf(cluster: string): Promise<Map<string, number>> {
    let m = this.#applied.get(cluster);
    if (!m) {
      // guarded: one peer's unreadable report reads as nothing applied, not as every node's 500
      const sql = `SELECT node, ${jsonInt(`report->'generation'`)} AS generation FROM node_status WHERE cluster = $1`;
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

/** One pass of a held long-poll: woken by a change of its cluster (or a peer applying, when it asked for that). */
class Wake {
  woke = false;
  #resolve: (() => void) | null = null;

  constructor(readonly peers: boolean) {}

  wake(): void {
    this.woke = true;
    this.#resolve?.();
  }

  /** Until woken (at once when it already was), `ms` have passed or the signal aborts. */
  until(ms: number, signal?: AbortSignal): Promise<void> {
    if (this.woke) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', done);
        this.#resolve = null;
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal?.addEventListener('abort', done, { once: true });
      this.#resolve = done;
    });
  }
}
