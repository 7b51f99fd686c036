// Status reports written straight into node_status by SQL, for the tests of rows the report route
// would refuse (an older or newer coordinator's shape, a hand-edited row).
import type { Store } from '../../coordinator/store/store.ts';

/** A report given as JSON text, as it is (e.g. a number JSON.stringify cannot write). */
export class RawJson {
  constructor(readonly json: string) {}
}

/** Upsert a node's stored report (reported and contacted now). */
export function putStoredReport(store: Pick<Store, 'query'>, cluster: string, node: string, report: unknown): Promise<unknown> {
  return store.query(
    `INSERT INTO node_status (cluster, node, report, reported_at, last_contact) VALUES ($1, $2, $3::jsonb, now(), now())
     ON CONFLICT (cluster, node) DO UPDATE SET report = EXCLUDED.report, reported_at = now(), last_contact = now()`,
    [cluster, node, report instanceof RawJson ? report.json : JSON.stringify(report)]);
}

/** The smallest report of today's shape: converged at `generation`, nothing else to say. */
export const minimalReport = (generation: unknown, over: Record<string, unknown> = {}) => ({
  generation, phase: 'converged', errors: [], files: [], servedCertificate: null, certificates: [], probes: [],
  pendingRestart: [], coordinatorReachable: true, versions: { agent: 'test', postgres: '16' }, ...over,
});
