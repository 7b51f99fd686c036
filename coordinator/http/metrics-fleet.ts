// The fleet gauges' samples, read from the store when scraped: three queries whatever the number
// of clusters and nodes (readFleet), then a pure mapping of their rows to samples (fleetSeries).
import { RENEW_AT_FRACTION } from '../../shared/contract/renewal.ts';
import type { Phase } from '../../shared/contract/status.ts';
import { awaitingPeer } from '../../shared/contract/awaiting-peer.ts';
import type { Store } from '../store/store.ts';
import { jsonInt } from '../store/json-sql.ts';

/** Every phase gets a 0/1 series, so `pgaccord_node_phase{phase="failed"} == 1` needs no absent(). */
export const PHASES: readonly Phase[] = ['converged', 'applying', 'failed', 'pending-restart', 'stale', 'unknown'];

/** One node as the store holds it: the spec's node list joined with its status, identity and CRL. */
export interface NodeRow {
  cluster: string;
  generation: number;
  node: string;
  /** A report is stored: its applied and pending restarts read as NULL were unreadable (no sample), not absent (0). */
  has_report?: boolean;
  applied: number | null;
  phase: string | null;
  reported_at: Date | null;
  last_contact: Date | null;
  pending_restarts: number | null;
  probes: { to: string; role: string; ok: boolean; reason?: string }[] | null;
  /** served + installed certificates as reported: {id, serial, notAfter} */
  certificates: { id: string; serial: string; notAfter: string }[] | null;
  identity_serial: string | null;
  /** The last probe-only pass of the applied generation (its timings' probePass), ms; null or absent: none reported. */
  probe_pass_ms?: number | null;
}

export interface CertRow {
  serial: string;
  not_before: Date;
  not_after: Date;
  renew_requested_at: Date | null;
}

export interface CrlRow {
  cluster: string;
  this_update: Date;
  next_update: Date;
}

export interface Sample {
  labels: Record<string, string>;
  value: number;
}

export interface FleetSeries {
  certExpiration: Sample[];
  certNotBefore: Sample[];
  certRenewal: Sample[];
  crlNextUpdate: Sample[];
  crlThisUpdate: Sample[];
  clusterGeneration: Sample[];
  desired: Sample[];
  applied: Sample[];
  phase: Sample[];
  lastReport: Sample[];
  lastContact: Sample[];
  pendingRestarts: Sample[];
  probe: Sample[];
  probePass: Sample[];
}

const seconds = (d: Date) => d.getTime() / 1000;

const noSeries = (): FleetSeries => ({
  certExpiration: [], certNotBefore: [], certRenewal: [], crlNextUpdate: [], crlThisUpdate: [], clusterGeneration: [],
  desired: [], applied: [], phase: [], lastReport: [], lastContact: [], pendingRestarts: [], probe: [], probePass: [],
});

/**
 * The gauges' samples from the store's rows (pure). A node's certificates are the ones it uses,
 * as status() counts them: the served and installed ones it reports, and its agent identity. Not
 * before and renewal come from the coordinator's records of the serial; the renewal instant is
 * the agent's schedule (RENEW_AT_FRACTION of the lifetime; its jitter can only bring it earlier)
 * or, when a renewal was requested and the certificate is still in use, that request.
 */
export function fleetSeries(nodes: NodeRow[], certs: CertRow[], crls: CrlRow[]): FleetSeries {
  const out = noSeries();
  const known = new Map(certs.map((c) => [c.serial, c]));
  const clusters = new Map<string, number>();
  for (const n of nodes) {
    clusters.set(n.cluster, n.generation);
    const id = { cluster: n.cluster, node: n.node };
    out.desired.push({ labels: id, value: n.generation });
    // Nothing reported yet is 0; a stored report whose field the query could not read has no sample.
    const orNone = (v: number | null) => (v === null && n.has_report ? [] : [{ labels: id, value: v ?? 0 }]);
    out.applied.push(...orNone(n.applied));
    const phase = n.phase ?? 'unknown';
    for (const p of PHASES) out.phase.push({ labels: { ...id, phase: p }, value: p === phase ? 1 : 0 });
    if (n.reported_at) out.lastReport.push({ labels: id, value: seconds(n.reported_at) });
    if (n.last_contact) out.lastContact.push({ labels: id, value: seconds(n.last_contact) });
    out.pendingRestarts.push(...orNone(n.pending_restarts));
    if (typeof n.probe_pass_ms === 'number') out.probePass.push({ labels: id, value: n.probe_pass_ms / 1000 });
    // One series per edge and role (a node may reach the same peer as several roles); two
    // probes of the same edge and role (two addresses) count as failed if either failed. An edge
    // awaiting its peer (not probed yet at this generation) has no verdict: no sample, not a 0.
    const edges = new Map<string, Sample>();
    for (const p of (n.probes ?? []).filter((p) => !awaitingPeer(p))) {
      const key = `${p.to}\0${p.role}`;
      const seen = edges.get(key);
      if (seen) seen.value = Math.min(seen.value, p.ok ? 1 : 0);
      else edges.set(key, { labels: { cluster: n.cluster, from: n.node, to: p.to, role: p.role }, value: p.ok ? 1 : 0 });
    }
    out.probe.push(...edges.values());
    const used = new Map<string, { slot: string; serial: string; notAfter: number }>();
    for (const c of n.certificates ?? []) {
      const at = Date.parse(c.notAfter);
      if (!Number.isNaN(at)) used.set(`${c.id}\0${c.serial}`, { slot: c.id, serial: c.serial, notAfter: at / 1000 });
    }
    const ident = n.identity_serial ? known.get(n.identity_serial) : undefined;
    if (ident) used.set(`identity\0${ident.serial}`, { slot: 'identity', serial: ident.serial, notAfter: seconds(ident.not_after) });
    for (const u of used.values()) {
      const labels = { ...id, slot: u.slot, serial: u.serial };
      out.certExpiration.push({ labels, value: u.notAfter });
      const k = known.get(u.serial);
      if (!k) continue;
      const nb = seconds(k.not_before);
      out.certNotBefore.push({ labels, value: nb });
      const planned = nb + (u.notAfter - nb) * RENEW_AT_FRACTION;
      out.certRenewal.push({ labels, value: k.renew_requested_at ? Math.min(planned, seconds(k.renew_requested_at)) : planned });
    }
  }
  for (const [cluster, generation] of clusters) out.clusterGeneration.push({ labels: { cluster }, value: generation });
  for (const r of crls) {
    out.crlNextUpdate.push({ labels: { cluster: r.cluster }, value: seconds(r.next_update) });
    out.crlThisUpdate.push({ labels: { cluster: r.cluster }, value: seconds(r.this_update) });
  }
  return out;
}

// The spec's node list drives the rows (a node never enrolled shows applied 0; a removed node's
// leftover status row shows nothing). Only names are read from the spec, never compiled.
//
// Every read of a report is guarded in SQL (as store/json-sql.ts says why): one unreadable row
// must not fail the query and with it every series of the scrape. A field of the wrong JSON type
// or out of range reads as NULL (no sample); a list that is not an array reads as none, and its
// elements of the wrong shape are left out.
const int = jsonInt;
const array = (j: string) => `CASE WHEN jsonb_typeof(${j}) = 'array' THEN ${j} ELSE '[]'::jsonb END`;
const text = (j: string) => `jsonb_typeof(${j}) = 'string'`;
const float = (j: string) => `CASE WHEN jsonb_typeof(${j}) = 'number' THEN CASE WHEN abs((${j})::numeric) < 1e15 THEN (${j})::numeric::float8 END END`;
const NODES_SQL = `
  SELECT k.name AS cluster, k.generation, n.name AS node, s.report IS NOT NULL AS has_report,
         ${int(`s.report->'generation'`)} AS applied,
         CASE WHEN ${text(`s.report->'phase'`)} THEN s.report->>'phase' END AS phase, s.reported_at, s.last_contact,
         CASE WHEN jsonb_typeof(s.report->'pendingRestart') = 'array' THEN jsonb_array_length(s.report->'pendingRestart') END AS pending_restarts,
         (SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object('to', p->'to', 'role', p->'role', 'ok', p->'ok', 'reason', CASE WHEN ${text(`p->'reason'`)} THEN p->'reason' END)))
            FROM jsonb_array_elements(${array(`s.report->'probes'`)}) p
           WHERE ${text(`p->'to'`)} AND ${text(`p->'role'`)} AND jsonb_typeof(p->'ok') = 'boolean') AS probes,
         (SELECT jsonb_agg(jsonb_build_object('id', c->'id', 'serial', c->'serial', 'notAfter', c->'notAfter'))
            FROM (SELECT s.report->'servedCertificate' AS c UNION ALL SELECT jsonb_array_elements(${array(`s.report->'certificates'`)})) x
           WHERE ${text(`c->'id'`)} AND ${text(`c->'serial'`)} AND ${text(`c->'notAfter'`)}) AS certificates,
         a.identity_serial,
         CASE WHEN ${int(`s.report->'timings'->'generation'`)} = ${int(`s.report->'generation'`)}
              THEN ${float(`s.report->'timings'->'probePass'->'ms'`)} END AS probe_pass_ms
    FROM clusters k
    CROSS JOIN LATERAL (SELECT e->>'name' AS name FROM jsonb_array_elements(${array(`k.spec->'nodes'`)}) e WHERE ${text(`e->'name'`)}) n
    LEFT JOIN node_status s ON s.cluster = k.name AND s.node = n.name
    LEFT JOIN agents a ON a.cluster = k.name AND a.node = n.name
   ORDER BY k.name, n.name`;
const CERTS_SQL = `SELECT serial, not_before, not_after, renew_requested_at FROM certificates WHERE serial = ANY($1)`;
const CRLS_SQL = `SELECT cluster, this_update, next_update FROM cluster_crls`;

/** Read the fleet from the store: three queries, whatever the number of clusters and nodes. */
export async function readFleet(store: Pick<Store, 'query'>): Promise<FleetSeries> {
  const nodes = await store.query<NodeRow & { generation: number }>(NODES_SQL);
  const serials = new Set<string>();
  for (const n of nodes) {
    for (const c of n.certificates ?? []) serials.add(c.serial);
    if (n.identity_serial) serials.add(n.identity_serial);
  }
  const [certs, crls] = await Promise.all([store.query<CertRow>(CERTS_SQL, [[...serials]]), store.query<CrlRow>(CRLS_SQL)]);
  return fleetSeries(nodes, certs, crls);
}
