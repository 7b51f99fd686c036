// What the agents report and what the admin sees of it: each node's status, the expiry of every
// certificate it holds, the cluster CA's, and whether the cluster is converged.
import type { CertExpiry, ClusterStatusResponse, NodeStatusView } from '../../shared/contract/api.ts';
import type { AgentStatus } from '../../shared/contract/status.ts';
import { certInfo, splitPemBundle } from '../../shared/crypto/x509.ts';
import { certLifetimeSeconds, trustWarnings } from '../cluster/compile.ts';
import { caLevel, daysLeft, expiryLevel } from '../cluster/lifecycle.ts';
import { probePending } from '../cluster/probe-matrix.ts';
import { ApiError, badRequest } from '../errors.ts';
import type { CaRotations } from './ca-rotation.ts';
import type { ClusterCas } from './cluster-cas.ts';
import type { AgentPrincipal, ServiceContext } from './context.ts';
import type { DesiredStates } from './desired-state.ts';
import type { Passwords } from './passwords.ts';
import { readStoredReport, STORED_REPORT_UNREADABLE, unparsableInstants, unreadableMessage } from './stored-report.ts';

export interface StatusDeps {
  cas: ClusterCas;
  desired: DesiredStates;
  passwords: Passwords;
  rotations: CaRotations;
}

export class StatusReports {
  readonly #ctx: ServiceContext;
  readonly #deps: StatusDeps;

  constructor(ctx: ServiceContext, deps: StatusDeps) {
    this.#ctx = ctx;
    this.#deps = deps;
  }

  /** An agent's report: stored, then what it tells the rest (apply timings, peer wakes, a CA rotation's next step). */
  async report(agent: AgentPrincipal, report: AgentStatus): Promise<void> {
    const ctx = this.#ctx;
    const badInstants = unparsableInstants(report);
    if (badInstants.length > 0) throw badRequest('E_STATUS_INVALID', `${badInstants.map((e) => e.field).join(', ')}: not a date and time`, badInstants);
    // Stored only while the node is part of its cluster's spec, checked by the write itself (one
    // query, the spec not shipped: issue 13); nothing is compiled. Not stored: requireNode says
    // why (410), or, should the node be back meanwhile, a retry stores it. The write also says
    // whether a CA rotation waits in phase 'trust' (one index probe of a table empty but while an
    // operator rotates), so its next step is read only then: read from the store each time, a
    // rotation started through any coordinator is seen by every one.
    const now = ctx.now();
    const stored = await ctx.store.query<{ rotating: boolean }>(
      `INSERT INTO node_status (cluster, node, report, reported_at, last_contact)
       SELECT $1, $2, $3, $4, $4 FROM clusters WHERE name = $1 AND spec->'nodes' @> jsonb_build_array(jsonb_build_object('name', $2::text))
       ON CONFLICT (cluster, node) DO UPDATE SET report = EXCLUDED.report, reported_at = EXCLUDED.reported_at, last_contact = EXCLUDED.last_contact
       RETURNING EXISTS (SELECT 1 FROM ca_rotations WHERE cluster = $1 AND phase = 'trust') AS rotating`,
      [agent.cluster, agent.node, JSON.stringify(report), now],
    );
    if (stored.length === 0) {
      await ctx.requireNode(agent);
      throw new ApiError(503, 'E_RETRY', `the status of node "${agent.node}" was not stored: its cluster changed meanwhile; report again`);
    }
    this.#deps.passwords.noteTimings(agent, report.timings);
    await this.#deps.desired.noteApplied(agent, report.generation);
    if (stored[0]!.rotating) await this.#deps.rotations.advance(agent.cluster).catch((e) => ctx.log.error({ cluster: agent.cluster, err: e }, 'CA rotation step failed'));
  }

  async status(name: string): Promise<ClusterStatusResponse> {
    const ctx = this.#ctx;
    const row = await ctx.requireCluster(name);
    const statuses = await ctx.store.query<{ node: string; report: unknown; reported_at: Date | null; last_contact: Date }>(
      `SELECT node, report, reported_at, last_contact FROM node_status WHERE cluster = $1`,
      [name],
    );
    const enrolled = new Set((await ctx.store.query<{ node: string }>(`SELECT node FROM agents WHERE cluster = $1`, [name])).map((r) => r.node));
    const byNode = new Map(statuses.map((s) => [s.node, s]));
    const now = ctx.now().getTime();
    const known = new Map((await ctx.store.query<{ serial: string; not_before: Date; not_after: Date }>(
      `SELECT serial, not_before, not_after FROM certificates WHERE cluster = $1 AND not_after > $2`,
      [name, new Date(now - 86400_000)],
    )).map((r) => [r.serial, r]));
    const identities = new Map((await ctx.store.query<{ node: string; serial: string; not_before: Date; not_after: Date }>(
      `SELECT a.node, c.serial, c.not_before, c.not_after FROM agents a JOIN certificates c ON c.serial = a.identity_serial WHERE a.cluster = $1`,
      [name],
    )).map((r) => [r.node, r]));
    const crl = (await ctx.store.query<{ next_update: Date }>(`SELECT next_update FROM cluster_crls WHERE cluster = $1`, [name]))[0];
    const warnings: string[] = [];
    const expiryOf = (id: string, serial: string, notAfterText: string, source: CertExpiry['source']): CertExpiry => {
      const notAfter = new Date(notAfterText);
      const k = known.get(serial);
      // Lifetime from the coordinator's records; a certificate it does not know counts as 90 days.
      const notBefore = k ? k.not_before : new Date(notAfter.getTime() - 90 * 86400_000);
      return { id, serial, notAfter: notAfter.toISOString(), daysLeft: daysLeft(notAfter, now), level: expiryLevel({ notBefore, notAfter }, now), source };
    };
    const nodes: NodeStatusView[] = row.spec.nodes.map((n) => {
      const s = byNode.get(n.name);
      // A stored report not of today's shape (readStoredReport) shows as unknown, with why; the
      // other nodes, and what the coordinator itself knows of this one (its identity
      // certificate, contact times), as usual.
      const { report, unreadable } = readStoredReport(s?.report);
      const phase = report?.phase ?? 'unknown';
      const expiry: CertExpiry[] = [];
      if (report?.servedCertificate) expiry.push(expiryOf('server', report.servedCertificate.serial, report.servedCertificate.notAfter, 'served'));
      for (const c of report?.certificates ?? []) expiry.push(expiryOf(c.id, c.serial, c.notAfter, 'installed'));
      const ident = identities.get(n.name);
      if (ident) expiry.push(expiryOf('identity', ident.serial, ident.not_after.toISOString(), 'identity'));
      for (const e of expiry) {
        if (e.level !== 'ok') warnings.push(`${n.name}: ${e.source} certificate ${e.id} (serial ${e.serial}) is ${e.level}: ${e.daysLeft} days left`);
      }
      // What the agent says; without it, what the coordinator knows (certificates, CRL).
      let survivesUntil: string | null = report?.survivesUntil ?? null;
      if (!survivesUntil && expiry.length > 0) {
        const ends = expiry.map((e) => new Date(e.notAfter).getTime());
        if (crl) ends.push(crl.next_update.getTime());
        survivesUntil = new Date(Math.min(...ends)).toISOString();
      }
      return {
        expiry,
        survivesUntil,
        node: n.name,
        desiredGeneration: row.generation,
        appliedGeneration: report?.generation ?? 0,
        phase,
        enrolled: enrolled.has(n.name),
        lastContact: s ? s.last_contact.toISOString() : null,
        reportedAt: s?.reported_at ? s.reported_at.toISOString() : null,
        stale: ctx.isStale(phase, s?.last_contact, now),
        errors: unreadable !== null ? [{ code: STORED_REPORT_UNREADABLE, message: unreadableMessage(unreadable) }] : report?.errors ?? [],
        servedCertificate: report?.servedCertificate ?? null,
        certificates: report?.certificates ?? [],
        probes: report?.probes ?? [],
        pendingRestart: report?.pendingRestart ?? [],
        ...(report?.checks !== undefined ? { checks: report.checks } : {}),
        ...(report?.timings !== undefined ? { timings: report.timings } : {}),
      };
    });
    const caPem = await this.#deps.cas.bundle(name);
    const ca = splitPemBundle(caPem).map((pem) => {
      const info = certInfo(pem);
      const level = caLevel(info, certLifetimeSeconds(row.spec), now);
      if (level !== 'ok') {
        warnings.unshift(`the cluster CA (serial ${info.serial}) ends ${info.notAfter.toISOString()}: ${level}; rotate it (pgaccord cert rotate-ca)`);
      }
      return { serial: info.serial, notAfter: info.notAfter.toISOString(), daysLeft: daysLeft(info.notAfter, now), level };
    });
    return {
      ca,
      warnings,
      cluster: name,
      generation: row.generation,
      auth: row.spec.auth,
      sslmode: row.spec.tls.sslmode,
      insecure: trustWarnings(row.spec).length > 0,
      converged: clusterConverged(nodes, row.generation),
      nodes,
    };
  }
}

/**
 * Converged means proved end to end: every node applied this generation and every inter-node
 * connection it makes works with the credentials it was given, against its peer's configuration
 * of this generation.
 */
export function clusterConverged(nodes: NodeStatusView[], generation: number): boolean {
  return nodes.every((n) => n.appliedGeneration === generation && n.phase === 'converged' && !n.stale && n.probes.every((p) => p.ok && !probePending(p, generation)));
}
