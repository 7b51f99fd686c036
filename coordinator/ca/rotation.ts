// CA rotation in phases, the checks that gate each step (pure: the service feeds them the agents'
// reports). Phase 'trust': the new CA is in every node's bundle (and
// its CRL next to the old one), the old CA still issues. The coordinator moves to 'reissue' only
// when every node has proved that bundle (applied generation >= the one that introduced it,
// converged, every probe ok, not stale): only then does the new CA issue, and every leaf from the
// old CA is named for renewal. 'finish' (the old CA leaves the bundles) is refused until every
// node serves and holds only leaves from the new CA, proved the same way.
import type { AgentStatus } from '../../shared/contract/status.ts';

export interface NodeEvidence {
  node: string;
  report: AgentStatus | null;
  stale: boolean;
}

/** Why a node has not proved generation `generation` yet (empty when it has). */
export function notProved(n: NodeEvidence, generation: number): string[] {
  const r = n.report;
  if (!r) return ['has not reported yet'];
  const out: string[] = [];
  if (n.stale) out.push('its status is stale');
  if (r.generation < generation) out.push(`applied generation ${r.generation} < ${generation}`);
  if (r.phase !== 'converged') out.push(`phase ${r.phase}`);
  const bad = r.probes.filter((p) => !p.ok);
  if (bad.length > 0) out.push(`failed probe(s) to ${bad.map((p) => p.to).join(', ')}`);
  return out;
}

/**
 * Why a node does not yet prove leaves from the new CA: `fromNewCa(serial)` says whether the
 * coordinator issued that serial with the new CA.
 */
export function notReissued(n: NodeEvidence, generation: number, fromNewCa: (serial: string) => boolean): string[] {
  const out = notProved(n, generation);
  const r = n.report;
  if (!r) return out;
  if (r.servedCertificate && !fromNewCa(r.servedCertificate.serial)) out.push(`serves certificate ${r.servedCertificate.serial} from the old CA`);
  const old = r.certificates.filter((c) => !fromNewCa(c.serial));
  if (old.length > 0) out.push(`holds certificate(s) from the old CA: ${old.map((c) => `${c.id} ${c.serial}`).join(', ')}`);
  return out;
}
