// What every part of the coordinator's service shares: its options, the store, and the helpers
// each concern would otherwise write again (look up a cluster or a node, a new generation that
// wakes every agent, staleness, the one writer of issued certificates, the once-only task lock).
import type { Logger } from 'pino';
import { compileNode } from '../cluster/compile.ts';
import type { NodeCompiler } from '../cluster/desired-cache.ts';
import type { CertificateAuthority } from '../ca/ca.ts';
import type { SigningPool } from '../ca/signing-pool.ts';
import { ApiError, badRequest, gone, notFound } from '../errors.ts';
import type { SecretBox } from '../store/secrets.ts';
import type { Queryable, Store } from '../store/store.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import { fingerprint256, X509Error } from '../../shared/crypto/x509.ts';
import type { SubjectPublicKey } from '../../shared/crypto/csr.ts';
import { canonicalJson, CLUSTER_COLUMNS, StoredSpecs, type ClusterRow } from './stored-specs.ts';

export const IDENTITY_LIFETIME_S = 30 * 86400;
/** Validity of an issued CRL; it is re-issued once less than half of it is left. */
export const CRL_LIFETIME_S = 7 * 86400;

/**
 * Take the cluster row's lock, first in every transaction that touches what belongs to the
 * cluster, so that all of them queue in one order (no deadlock between coordinators). FOR UPDATE
 * where the transaction changes the cluster (revocation, CRL, rotation), FOR SHARE where it only
 * must not race one (a certificate or identity issued: a revocation waits, or is seen).
 */
export async function lockCluster(c: Queryable, cluster: string, mode: 'update' | 'share'): Promise<void> {
  await c.query(mode === 'update' ? `SELECT 1 FROM clusters WHERE name = $1 FOR UPDATE` : `SELECT 1 FROM clusters WHERE name = $1 FOR SHARE`, [cluster]);
}

export interface ServiceOptions {
  store: Store;
  box: SecretBox;
  coordinatorCa: CertificateAuthority;
  /** Checks CSRs and signs certificates and CRLs off the event loop. */
  signing: SigningPool;
  /** URL put into join tokens. */
  publicUrl: string;
  log: Logger;
  now?: () => Date;
  /** How long GET /v1/agent/desired holds a request when nothing is newer (ms). */
  longPollMs?: number;
  /** Lifetime of agent identity certificates (s); default 30 days. */
  identityLifetimeSeconds?: number;
  /** Validity of each CRL (s); default 7 days. */
  crlLifetimeSeconds?: number;
  /** How one node's desired state is compiled (tests count the calls); default compileNode. */
  compileNode?: NodeCompiler;
}

export interface AgentPrincipal {
  cluster: string;
  node: string;
  serial: string;
}

/** One row of the certificates table: every certificate the coordinator issues is recorded so. */
export interface IssuedRecord {
  cluster: string;
  node: string;
  slot: string;
  issuer: 'cluster' | 'coordinator';
  commonName: string;
  serial: string;
  notBefore: Date;
  notAfter: Date;
  pem: string;
}

export const hasNode = (spec: ClusterSpec, node: string): boolean => spec.nodes.some((n) => n.name === node);

/** The 410 an agent of a removed node gets (it stops), whether its request or its identity finds the node gone. */
export const nodeGone = (cluster: string, node: string): ApiError => gone(`node "${node}" is no longer part of cluster "${cluster}"`);

export class ServiceContext {
  readonly store: Store;
  readonly box: SecretBox;
  readonly log: Logger;
  readonly signing: SigningPool;
  readonly coordinatorCa: CertificateAuthority;
  readonly caFingerprint: string;
  /** URL written into join tokens (the coordinator sets it once it listens, when not given). */
  publicUrl: string;
  readonly now: () => Date;
  readonly longPollMs: number;
  readonly identityLifetimeSeconds: number;
  readonly crlLifetimeSeconds: number;
  readonly compileNode: NodeCompiler;
  readonly specs: StoredSpecs;

  constructor(opts: ServiceOptions) {
    this.store = opts.store;
    this.box = opts.box;
    this.log = opts.log;
    this.signing = opts.signing;
    this.coordinatorCa = opts.coordinatorCa;
    this.caFingerprint = fingerprint256(opts.coordinatorCa.certPem);
    this.publicUrl = opts.publicUrl;
    this.now = opts.now ?? (() => new Date());
    this.longPollMs = opts.longPollMs ?? 30_000;
    this.identityLifetimeSeconds = opts.identityLifetimeSeconds ?? IDENTITY_LIFETIME_S;
    this.crlLifetimeSeconds = opts.crlLifetimeSeconds ?? CRL_LIFETIME_S;
    this.compileNode = opts.compileNode ?? compileNode;
    this.specs = new StoredSpecs(opts.store, opts.box, opts.log);
  }

  /** The checked row of a cluster (StoredSpecs.read), or null. */
  cluster(name: string, c?: Queryable): Promise<ClusterRow | null> {
    return this.specs.read(name, c);
  }

  async requireCluster(name: string): Promise<ClusterRow> {
    const row = await this.cluster(name);
    if (!row) throw notFound(`no cluster "${name}"`);
    return row;
  }

  /** An admin request's node of a cluster row (404 otherwise). */
  requireSpecNode(row: ClusterRow, node: string): void {
    if (!hasNode(row.spec, node)) throw notFound(`cluster "${row.name}" has no node "${node}"`);
  }

  /** The row of an agent's cluster, when its node is still part of it (410 otherwise: the agent stops). */
  async requireNode(agent: { cluster: string; node: string }): Promise<ClusterRow> {
    return this.nodeRow(agent, await this.cluster(agent.cluster));
  }

  /** requireNode's verdict on a row of the agent's cluster already read (null: none). */
  nodeRow(agent: { cluster: string; node: string }, row: ClusterRow | null): ClusterRow {
    if (!row) throw gone(`cluster "${agent.cluster}" no longer exists`);
    if (!hasNode(row.spec, agent.node)) throw nodeGone(agent.cluster, agent.node);
    return row;
  }

  /**
   * A new generation without a spec change (new CRL, renewal request, revocation, rotations):
   * wakes every agent. The seal names the generation, so it is made again here, under the row
   * lock, and only when the current one holds: a bump never blesses a row changed behind the API.
   */
  async bump(c: Queryable, cluster: string, now: Date): Promise<number> {
    const row = (await c.query<ClusterRow>(`SELECT ${CLUSTER_COLUMNS} FROM clusters WHERE name = $1 FOR UPDATE`, [cluster])).rows[0];
    // Deleted since the caller looked it up (a CA rotation start spends its key generation outside the transaction).
    if (!row) throw notFound(`no cluster "${cluster}"`);
    const generation = row.generation + 1;
    const seal = this.specs.sealHolds(row) ? this.specs.seal({ ...row, generation }, canonicalJson(row.spec)) : row.spec_seal;
    await c.query(`UPDATE clusters SET generation = $2, updated_at = $3, spec_seal = $4 WHERE name = $1`, [cluster, generation, now, seal]);
    await this.store.notify(c, cluster);
    return generation;
  }

  /**
   * One transaction that changes a cluster; once it has committed (and did change something: a
   * result other than null), this coordinator's long-polls of that cluster wake. Other
   * coordinators learn of it through the NOTIFY the transaction sent (bump, store.notify).
   */
  async change<T>(cluster: string, work: (c: Queryable) => Promise<T | null>): Promise<T | null> {
    const result = await this.store.tx(work);
    if (result !== null) this.store.events.emit('cluster', cluster);
    return result;
  }

  /** A node not heard from for three long-polls, or one whose agent says so, is stale. */
  isStale(phase: string | undefined, lastContact: Date | undefined, nowMs: number): boolean {
    return phase === 'stale' || (lastContact !== undefined && nowMs - lastContact.getTime() > 3 * this.longPollMs);
  }

  /** The one writer of the certificates table. */
  async recordCert(c: Queryable, r: IssuedRecord): Promise<void> {
    await c.query(
      `INSERT INTO certificates (serial, cluster, node, slot, issuer, common_name, not_before, not_after, pem) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
      [r.serial, r.cluster, r.node, r.slot, r.issuer, r.commonName, r.notBefore, r.notAfter, r.pem],
    );
  }

  /**
   * The public key of a CSR whose signature verifies and whose key meets the policy (400
   * E_CSR_KEY_POLICY otherwise), checked by a signing worker; anything else is the client's
   * error too (E_CSR_INVALID).
   */
  async csrPublicKey(csrPem: string): Promise<SubjectPublicKey> {
    try {
      return (await this.signing.readCsrKey(csrPem)).publicKey;
    } catch (e) {
      if (e instanceof ApiError) throw e; // the pool's own refusal (busy, stopping): not the CSR's fault
      throw badRequest(e instanceof X509Error && e.code === 'E_CSR_KEY_POLICY' ? 'E_CSR_KEY_POLICY' : 'E_CSR_INVALID', (e as Error).message);
    }
  }
}

/**
 * Tasks that must be done once, by one coordinator, whichever sees them due first: a CRL refresh
 * and a CA-rotation step. Each takes a transaction-scoped advisory lock keyed on (task, cluster)
 * with pg_try_advisory_xact_lock. Chosen over a lease because it needs no clock and no expiry:
 * PostgreSQL releases it when the transaction ends or its connection dies, so a coordinator
 * SIGKILLed mid-step holds nothing for anyone to wait out. Chosen over FOR UPDATE SKIP LOCKED on
 * the cluster row because that row is locked by other work too (signing holds it FOR SHARE):
 * skipping on it would postpone a refresh during a renewal storm. A coordinator that does not get
 * the lock skips (another one is doing it); the step's own row lock and re-check, inside the
 * lock, stay what makes it correct; the advisory lock only keeps the others from queueing.
 */
export const TASK_CRL_REFRESH = 0x70676131; // "pga1"
export const TASK_CA_ROTATION = 0x70676132; // "pga2"

export async function tryClusterTask(c: Queryable, task: number, cluster: string): Promise<boolean> {
  // hashtext collisions between two cluster names only make one skip a round (it is retried).
  const r = await c.query<{ got: boolean }>(`SELECT pg_try_advisory_xact_lock($1::int, hashtext($2)) AS got`, [task, cluster]);
  return r.rows[0]!.got;
}
