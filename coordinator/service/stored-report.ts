// Agents' status reports as stored (node_status.report): checked against AgentStatus when posted,
// and again each time they are read. A stored row may still not be of today's shape: one written
// by an older or newer coordinator sharing the store during a rolling upgrade, or a hand-edited
// row. Such a report is unreadable: the status view shows its node as unknown with why, and a CA
// rotation never takes it as proof. Every reader of stored reports goes through readStoredReport.
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';
import { AgentStatus } from '../../shared/contract/status.ts';

/** The code of the error the status view shows for a node whose stored report is unreadable. */
export const STORED_REPORT_UNREADABLE = 'E_STORED_REPORT_UNREADABLE';

/** A stored report as read: the report, or why it is not (both null: the node never reported). */
export type StoredReport = { report: AgentStatus; unreadable: null } | { report: null; unreadable: string | null };

const WHY_MAX = 200;
// Compiled once, on first use (a cluster of 200 nodes reads 200 reports per status view); the
// errors are walked only for a report that fails.
let checker: TypeCheck<typeof AgentStatus> | undefined;
const agentStatus = () => (checker ??= TypeCompiler.Compile(AgentStatus));

/**
 * The one check of a stored report: the AgentStatus schema, and the instants the status view
 * computes days left from (unparsableInstants, refused when posted). `stored` is the jsonb as
 * the driver parsed it; null (no row, no report) is "not reported", not unreadable.
 */
export function readStoredReport(stored: unknown): StoredReport {
  if (stored === null || stored === undefined) return { report: null, unreadable: null };
  const check = agentStatus();
  if (!check.Check(stored)) {
    const e = check.Errors(stored).First();
    return { report: null, unreadable: (e ? `${e.path || '/'}: ${e.message}` : 'not a status report').slice(0, WHY_MAX) };
  }
  const bad = unparsableInstants(stored);
  if (bad.length > 0) return { report: null, unreadable: `${bad.map((b) => b.field).join(', ')}: not a date and time`.slice(0, WHY_MAX) };
  return { report: stored, unreadable: null };
}

/** Why a node's report cannot be used, as the status view and a CA rotation word it. */
export function unreadableMessage(why: string): string {
  return `its stored status report is unreadable (${why}): nothing of it is used until the node reports again`;
}

/** The instants status() computes days left from: one that does not parse is refused when reported, and unreadable when stored. */
export function unparsableInstants(report: AgentStatus): { field: string; message: string }[] {
  const instants: [string, string][] = [
    ...(report.servedCertificate ? [['servedCertificate.notAfter', report.servedCertificate.notAfter] as [string, string]] : []),
    ...report.certificates.map((c, i): [string, string] => [`certificates[${i}].notAfter`, c.notAfter]),
  ];
  return instants.filter(([, v]) => Number.isNaN(Date.parse(v))).map(([field]) => ({ field, message: 'not a date and time (ISO 8601)' }));
}
