// A cluster CA's rotation in three phases: 'trust' (a new CA joins every bundle), 'reissue' (the
// coordinator moves on by itself once every node proved it: the new CA issues and every old leaf
// is renewed), then finish (the old CA leaves every bundle, refused until every node is ready).
import type { CaRotationStatus } from '../../shared/contract/api.ts';
import { certInfo, verifiesAgainst } from '../../shared/crypto/x509.ts';
import { CertificateAuthority } from '../ca/ca.ts';
import { notProved, notReissued, type NodeEvidence } from '../ca/rotation.ts';
import { conflict } from '../errors.ts';
import type { Queryable } from '../store/store.ts';
import type { ClusterCas } from './cluster-cas.ts';
import { lockCluster, TASK_CA_ROTATION, tryClusterTask, type ServiceContext } from './context.ts';
import type { Crls } from './crls.ts';
import type { ClusterRow } from './stored-specs.ts';
import { readStoredReport, unreadableMessage } from './stored-report.ts';

/** A node's evidence; `unreadable`: why its stored report could not be read (then `report` is null). */
type Evidence = NodeEvidence & { unreadable: string | null };

/** What a node still waits for: an unreadable stored report is never proof of anything. */
const waitsFor = (n: Evidence, gate: (n: NodeEvidence) => string[]): string[] => (n.unreadable !== null ? [unreadableMessage(n.unreadable)] : gate(n));

interface RotationRow {
  phase: 'trust' | 'reissue';
  other_cert_pem: string;
  started_at: Date;
  trust_generation: number;
  reissue_generation: number | null;
}

export class CaRotations {
  readonly #ctx: ServiceContext;
  readonly #cas: ClusterCas;
  readonly #crls: Crls;

  constructor(ctx: ServiceContext, cas: ClusterCas, crls: Crls) {
    this.#ctx = ctx;
    this.#cas = cas;
    this.#crls = crls;
  }

  /**
   * In phase 'reissue': every live, unrevoked cluster leaf of the node not issued by the (new)
   * issuing CA, named for renewal in its node's desired state until it expires. Level-triggered:
   * a leaf leaves the list by being replaced (the agent stops using it) or by expiring.
   */
  async oldCaLeaves(cluster: string, node: string): Promise<{ serial: string }[]> {
    const ctx = this.#ctx;
    const rot = (await ctx.store.query<{ phase: string }>(`SELECT phase FROM ca_rotations WHERE cluster = $1`, [cluster]))[0];
    if (rot?.phase !== 'reissue') return [];
    const issuing = (await this.#cas.issuing(cluster)).certPem;
    const rows = await ctx.store.query<{ node: string; serial: string; pem: string }>(
      `SELECT serial, pem FROM certificates WHERE cluster = $1 AND node = $3 AND issuer = 'cluster' AND revoked_at IS NULL AND not_after > $2`,
      [cluster, ctx.now(), node],
    );
    return rows.filter((r) => !verifiesAgainst(r.pem, issuing)).map((r) => ({ serial: r.serial }));
  }

  async #rotationRow(cluster: string, c: Queryable = this.#ctx.store.pool): Promise<RotationRow | null> {
    return (await c.query<RotationRow>(
      `SELECT phase, other_cert_pem, started_at, trust_generation, reissue_generation FROM ca_rotations WHERE cluster = $1`,
      [cluster],
    )).rows[0] ?? null;
  }

  /** What each node of the spec last reported (or why its stored report is unreadable), and whether that report is stale. */
  async #evidence(row: ClusterRow): Promise<Evidence[]> {
    const ctx = this.#ctx;
    const statuses = await ctx.store.query<{ node: string; report: unknown; last_contact: Date }>(
      `SELECT node, report, last_contact FROM node_status WHERE cluster = $1`,
      [row.name],
    );
    const byNode = new Map(statuses.map((x) => [x.node, x]));
    const now = ctx.now().getTime();
    return row.spec.nodes.map((n) => {
      const st = byNode.get(n.name);
      const { report, unreadable } = readStoredReport(st?.report);
      return { node: n.name, report, unreadable, stale: ctx.isStale(report?.phase, st?.last_contact, now) };
    });
  }

  /** Serials the (new) issuing CA issued for this cluster. */
  async #issuedByCurrent(cluster: string): Promise<Set<string>> {
    const issuing = (await this.#cas.issuing(cluster)).certPem;
    const rows = await this.#ctx.store.query<{ serial: string; pem: string }>(
      `SELECT serial, pem FROM certificates WHERE cluster = $1 AND issuer = 'cluster' AND not_after > $2`,
      [cluster, this.#ctx.now()],
    );
    return new Set(rows.filter((r) => verifiesAgainst(r.pem, issuing)).map((r) => r.serial));
  }

  /**
   * Phase 1: a new CA joins every node's bundle (and its CRL the published CRLs, when the cluster
   * has one), with a new generation. The old CA keeps issuing until every node has proved the
   * bundle; then the coordinator moves on by itself (advance).
   */
  async start(cluster: string): Promise<CaRotationStatus> {
    const ctx = this.#ctx;
    await ctx.requireCluster(cluster);
    const now = ctx.now();
    // Distinct subject: two CAs with one name would make OpenSSL's issuer and CRL lookups guess.
    const fresh = await CertificateAuthority.create(`pgaccord ${cluster} CA ${now.toISOString().replace(/\.\d+Z$/, 'Z')}`, now);
    await ctx.change(cluster, async (c) => {
      await lockCluster(c, cluster, 'update');
      const existing = await this.#rotationRow(cluster, c);
      if (existing) {
        const since = `phase ${existing.phase}, started ${existing.started_at.toISOString()}`;
        throw conflict('E_ROTATION_IN_PROGRESS', `cluster "${cluster}" is already rotating its CA (${since}); finish it first`);
      }
      const generation = await ctx.bump(c, cluster, now);
      await c.query(
        `INSERT INTO ca_rotations (cluster, phase, other_cert_pem, other_key_sealed, started_at, trust_generation) VALUES ($1, 'trust', $2, $3, $4, $5)`,
        [cluster, fresh.ca.certPem, ctx.box.seal(fresh.keyPem, `cluster-ca:${cluster}`), now, generation],
      );
      await this.#crls.issue(c, cluster, now);
      return true;
    });
    ctx.log.warn({ cluster, newCa: certInfo(fresh.ca.certPem).serial }, 'CA rotation started: both CAs trusted');
    return this.status(cluster);
  }

  /**
   * Phase 2, taken by the coordinator as soon as every node has proved the two-CA bundle: the new
   * CA issues from now on and every leaf of the old one is named for renewal (renewSerials).
   * No leaf of the new CA exists before that moment, so no node can be shown one it cannot check.
   */
  async advance(cluster: string): Promise<void> {
    const ctx = this.#ctx;
    // A status report asks only when its write saw a rotation in phase 'trust' (status.ts), the
    // rotation's status view each time. The rotation row first: the spec row is read (and its
    // seal checked) only while a rotation waits in phase 'trust'.
    const rot = await this.#rotationRow(cluster);
    if (rot?.phase !== 'trust') return;
    const row = await ctx.cluster(cluster);
    if (!row) return;
    if ((await this.#evidence(row)).some((n) => waitsFor(n, (e) => notProved(e, rot.trust_generation)).length > 0)) return;
    const now = ctx.now();
    const generation = await ctx.change(cluster, async (c) => {
      // One coordinator takes the step (every agent's report, on any coordinator, asks for it);
      // the others skip at once. Then the cluster row first, as every writer of a CRL or a
      // generation does: taken after ca_rotations and the CRL counter, it deadlocked with a
      // revocation (cluster row, then the counter).
      if (!(await tryClusterTask(c, TASK_CA_ROTATION, cluster))) return null;
      await lockCluster(c, cluster, 'update');
      const locked = (await c.query<{ phase: string }>(`SELECT phase FROM ca_rotations WHERE cluster = $1 FOR UPDATE`, [cluster])).rows[0];
      if (locked?.phase !== 'trust') return null; // another report or coordinator did it
      // Swap: the new CA becomes the issuing one (cluster_cas), the old one is kept as "other".
      const old = (await c.query<{ cert_pem: string; key_sealed: string }>(
        `SELECT cert_pem, key_sealed FROM cluster_cas WHERE cluster = $1 FOR UPDATE`,
        [cluster],
      )).rows[0]!;
      const fresh = (await c.query<{ other_cert_pem: string; other_key_sealed: string }>(
        `SELECT other_cert_pem, other_key_sealed FROM ca_rotations WHERE cluster = $1`,
        [cluster],
      )).rows[0]!;
      await c.query(`UPDATE cluster_cas SET cert_pem = $2, key_sealed = $3 WHERE cluster = $1`, [cluster, fresh.other_cert_pem, fresh.other_key_sealed]);
      await c.query(
        `UPDATE ca_rotations SET phase = 'reissue', other_cert_pem = $2, other_key_sealed = $3, reissued_at = $4 WHERE cluster = $1`,
        [cluster, old.cert_pem, old.key_sealed, now],
      );
      this.#cas.forget(cluster);
      await this.#crls.issue(c, cluster, now);
      const g = await ctx.bump(c, cluster, now);
      await c.query(`UPDATE ca_rotations SET reissue_generation = $2 WHERE cluster = $1`, [cluster, g]);
      return g;
    });
    if (generation === null) return;
    this.#cas.forget(cluster);
    ctx.log.warn({ cluster, generation }, 'CA rotation: every node proved the two-CA bundle; the new CA issues, old leaves are being replaced');
  }

  /** Where the rotation stands and what each node still waits for. */
  async status(cluster: string): Promise<CaRotationStatus> {
    await this.advance(cluster);
    const row = await this.#ctx.requireCluster(cluster);
    const rot = await this.#rotationRow(cluster);
    const issuingPem = (await this.#cas.issuing(cluster)).certPem;
    const describe = (pem: string, role: 'issuing' | 'old' | 'new') => {
      const i = certInfo(pem);
      return { role, serial: i.serial, commonName: i.commonName ?? '', notAfter: i.notAfter.toISOString() };
    };
    const cas = [describe(issuingPem, 'issuing')];
    if (rot) cas.push(describe(rot.other_cert_pem, rot.phase === 'trust' ? 'new' : 'old'));
    let nodes: CaRotationStatus['nodes'] = [];
    let canFinish = false;
    if (rot) {
      const evidence = await this.#evidence(row);
      if (rot.phase === 'trust') {
        nodes = evidence.map((n) => ({ node: n.node, waiting: waitsFor(n, (e) => notProved(e, rot.trust_generation)).map((w) => `bundle with both CAs not proved: ${w}`) }));
      } else {
        const fromNew = await this.#issuedByCurrent(cluster);
        nodes = evidence.map((n) => ({ node: n.node, waiting: waitsFor(n, (e) => notReissued(e, rot.reissue_generation!, (serial) => fromNew.has(serial))) }));
        canFinish = nodes.every((n) => n.waiting.length === 0);
      }
    }
    return {
      cluster,
      phase: rot?.phase ?? 'none',
      generation: row.generation,
      startedAt: rot ? rot.started_at.toISOString() : null,
      trustGeneration: rot?.trust_generation ?? null,
      reissueGeneration: rot?.reissue_generation ?? null,
      cas,
      nodes,
      canFinish,
    };
  }

  /**
   * Phase 3: the old CA leaves every bundle (and its CRL the published CRLs). Refused (409,
   * nothing changed) unless every node has proved leaves from the new CA only: applied the
   * generation that started the re-issue, converged, every probe ok, and its served certificate
   * and every installed one issued by the new CA.
   */
  async finish(cluster: string): Promise<CaRotationStatus> {
    const ctx = this.#ctx;
    const st = await this.status(cluster);
    if (st.phase === 'none') {
      throw conflict('E_NO_ROTATION', `cluster "${cluster}" has no CA rotation in progress (start one with pgaccord cert rotate-ca ${cluster} --start)`);
    }
    if (!st.canFinish) {
      const why = st.nodes.filter((n) => n.waiting.length > 0).map((n) => `${n.node}: ${n.waiting.join('; ')}`).join(' | ');
      const phase = st.phase === 'trust'
        ? 'the new CA is not issuing yet (not every node has proved the two-CA bundle)'
        : 'not every node has proved leaves from the new CA';
      throw conflict('E_ROTATION_NOT_READY', `refusing to drop the old CA of cluster "${cluster}": ${phase}. Waiting for: ${why}`);
    }
    const now = ctx.now();
    await ctx.change(cluster, async (c) => {
      // The cluster row first (lock order of every CRL and generation writer: see advance).
      await lockCluster(c, cluster, 'update');
      const locked = (await c.query<{ phase: string }>(`SELECT phase FROM ca_rotations WHERE cluster = $1 FOR UPDATE`, [cluster])).rows[0];
      if (locked?.phase !== 'reissue') throw conflict('E_ROTATION_NOT_READY', `cluster "${cluster}": the rotation changed meanwhile; look again`);
      await c.query(`DELETE FROM ca_rotations WHERE cluster = $1`, [cluster]);
      await this.#crls.issue(c, cluster, now);
      await ctx.bump(c, cluster, now);
      return true;
    });
    ctx.log.warn({ cluster }, 'CA rotation finished: the old CA left every bundle');
    return this.status(cluster);
  }
}
