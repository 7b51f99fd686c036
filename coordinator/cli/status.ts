// pgaccord status: per-node generation, phase, certificates, probes; --wait until converged.
import type { Static } from '@sinclair/typebox';
import type { ClusterStatusResponse, NodeStatusView } from '../../shared/contract/api.ts';
import { parseCommand, UsageError } from '../../shared/system/cli.ts';
import { formatProbeMatrix, probeFailed, probeMatrix, probePending } from '../cluster/probe-matrix.ts';
import { ago, applyTime } from '../cluster/lifecycle.ts';
import { call, CONNECTION_HELP, CONNECTION_OPTIONS, withConn } from './http.ts';
import { table } from './table.ts';

const STATUS = {
  usage: 'pgaccord status [CLUSTER] [--json] [--wait] [--timeout SECONDS] [connection options]',
  summary: 'Per node: desired and applied generation, phase, certificate expiry, last contact, inter-node probes, errors. Without CLUSTER: every cluster.',
  details: `
options:
  --json              print ClusterStatusResponse documents (an array without CLUSTER)
  --wait              wait until every node has applied and proved the current generation,
                      every probe passed, and every node has reported since the wait began
                      (so a report from before a failover cannot pass it): exit 0; exit 1 at
                      the timeout. Agents report at least every long-poll cycle (~30 s), so
                      give it more than that; --timeout 0 is one look, on the reports there are.
  --timeout SECONDS   how long --wait waits (default 300)
${CONNECTION_HELP}`,
  options: { json: { type: 'boolean' }, wait: { type: 'boolean' }, timeout: { type: 'string' }, ...CONNECTION_OPTIONS },
  positionals: { min: 0, max: 1 },
} as const;

type ClusterStatus = Static<typeof ClusterStatusResponse>;

export async function runStatus(argv: string[]): Promise<number> {
  const parsed = parseCommand(STATUS, argv);
  if (!parsed) return 0;
  const v = parsed.values;
  if (v.timeout !== undefined && !/^\d+(\.\d+)?$/.test(v.timeout)) throw new UsageError(`--timeout: "${v.timeout}" is not a number of seconds`);
  const timeoutS = v.timeout !== undefined ? Number(v.timeout) : 300;
  const only = parsed.positionals[0];
  return withConn(v, async (conn) => {
    const deadline = Date.now() + timeoutS * 1000;
    // --wait: each node's report time at the first look; only a later report counts.
    const firstSeen = new Map<string, string | null>();
    const stale = (s: ClusterStatus) =>
      s.nodes.filter((n) => {
        const key = `${s.cluster}/${n.node}`;
        if (!firstSeen.has(key)) firstSeen.set(key, n.reportedAt);
        const before = firstSeen.get(key) ?? null;
        return n.reportedAt === null || (before !== null && Date.parse(n.reportedAt) <= Date.parse(before));
      }).map((n) => `${s.cluster}/${n.node}`);
    for (;;) {
      const names = only ? [only] : (await call<{ clusters: { name: string }[] }>(conn, 'GET', '/v1/clusters')).clusters.map((c) => c.name);
      const statuses = await Promise.all(names.map((n) => call<ClusterStatus>(conn, 'GET', `/v1/clusters/${encodeURIComponent(n)}/status`)));
      const converged = statuses.every((s) => s.converged);
      // --timeout 0 is one look: converged now, on the reports there are.
      const notReported = v.wait && timeoutS > 0 ? statuses.flatMap(stale) : [];
      const done = converged && notReported.length === 0;
      if (!v.wait || done || Date.now() >= deadline) {
        if (v.json) process.stdout.write(`${JSON.stringify(only ? statuses[0] : statuses, null, 2)}\n`);
        else process.stdout.write(statuses.length ? statuses.map(formatStatus).join('\n') : 'no clusters\n');
        if (v.wait && !done) {
          process.stderr.write(converged
            ? `no report since the wait began from ${notReported.join(', ')} after ${timeoutS}s\n`
            : `not converged after ${timeoutS}s: ${statuses.flatMap(notConverged).join(', ')}\n`);
          return 1;
        }
        return 0;
      }
      // A status read is cheap (no compile): look four times a second, so --wait ends when the
      // cluster converges, not up to a second later (convergence takes about that long).
      await new Promise((r) => setTimeout(r, Math.min(250, Math.max(0, deadline - Date.now()))));
    }
  });
}

/** Each node holding its cluster back, with why (the same conditions as the coordinator's `converged`). */
function notConverged(s: ClusterStatus): string[] {
  return s.nodes.flatMap((n) => {
    const why = [
      ...(n.appliedGeneration !== s.generation ? [`generation ${n.appliedGeneration} of ${s.generation}`] : []),
      ...(n.phase !== 'converged' ? [n.phase] : []),
      ...(n.stale ? ['stale'] : []),
      ...(n.probes.some(probeFailed) ? ['probe failing'] : []),
      ...(n.probes.some((p) => probePending(p, s.generation)) ? ['probe pending (made before its peer applied)'] : []),
    ];
    return why.length ? [`${s.cluster}/${n.node} (${why.join(', ')})`] : [];
  });
}

const pendingOf = (n: NodeStatusView, generation: number): string => {
  const k = n.probes.filter((p) => probePending(p, generation)).length;
  return k > 0 ? `, ${k} pending` : '';
};

function certExpiry(n: NodeStatusView): string {
  const c = n.servedCertificate ?? n.certificates[0];
  if (!c) return '-';
  const days = (Date.parse(c.notAfter) - Date.now()) / 86400_000;
  return days < 0 ? 'EXPIRED' : `${days.toFixed(days < 10 ? 1 : 0)}d`;
}

export function formatStatus(s: ClusterStatus): string {
  const auth = `auth ${s.auth}${s.insecure ? ' (INSECURE: trust rules)' : ''}`;
  const head = `cluster ${s.cluster}  generation ${s.generation}  ${auth}  sslmode ${s.sslmode}  ${s.converged ? 'CONVERGED' : 'NOT CONVERGED'}`;
  const rows = [['NODE', 'DESIRED', 'APPLIED', 'PHASE', 'CERT', 'CONTACT', 'PROBES', 'APPLY', 'ERRORS']];
  for (const n of s.nodes) {
    const ok = n.probes.filter((p) => p.ok).length;
    rows.push([
      n.node,
      String(n.desiredGeneration),
      String(n.appliedGeneration),
      `${n.phase}${n.stale ? ' (stale)' : ''}${n.enrolled ? '' : ' (not enrolled)'}`,
      certExpiry(n),
      ago(n.lastContact, new Date()),
      n.probes.length ? `${ok}/${n.probes.length} ok${pendingOf(n, s.generation)}` : '-',
      applyTime(n),
      n.errors.length ? n.errors.map((e) => `${e.code}: ${e.message}`).join('; ') : '-',
    ]);
  }
  const failed = s.nodes.flatMap((n) => [
    ...n.probes.filter(probeFailed).map((p) => `  probe ${n.node} -> ${p.to} as ${p.role}: ${p.error ?? 'failed'}`),
    // the profile's verification queries: the failed ones, and the ones with a note (pgd without bdr: "bdr not installed")
    ...(n.checks ?? []).filter((c) => !c.ok || c.note !== null)
      .map((c) => `  check ${n.node} ${c.name}: ${c.ok ? 'ok' : 'FAILED'}${c.note ? ` (${c.note})` : ''}`),
  ]);
  // the matrix only says something once there are two nodes
  const grid = s.nodes.length > 1 ? formatProbeMatrix(probeMatrix(s)) : '';
  return `${head}\n${table(rows)}\n${grid}${failed.length ? `${failed.join('\n')}\n` : ''}`;
}
