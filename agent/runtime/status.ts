// Status: what the agent reports to the coordinator (POST /v1/agent/status), and mirrors into
// <stateDir>/status.json so an operator (and the tests) can see it while the coordinator is down.
import pg from 'pg';
import type { AgentStatus, ApplyTimings, CertReport, Phase, ProbeResult } from '../../shared/contract/status.ts';
import type { ApplyResult } from '../apply/types.ts';
import { writeFileAtomic, type Owner } from './statefile.ts';
import { stateDirLayout } from '../../shared/pgconf/layout.ts';
import type { Problem } from '../../shared/contract/problem.ts';
import { PGACCORD_VERSION } from '../../shared/contract/version.ts';

export const AGENT_VERSION = PGACCORD_VERSION;

export interface StatusInput {
  /** The generation last applied and proved (0 before the first). */
  appliedGeneration: number;
  apply: ApplyResult | null;
  /** Errors of the runtime itself: refused desired states, certificate requests, enrolment... */
  runtimeErrors: Problem[];
  certificates: CertReport[];
  probes: ProbeResult[];
  coordinatorReachable: boolean;
  postgresVersion: string;
  /** The earliest instant something of this node expires without the coordinator. */
  survivesUntil?: string | null;
  /** The phases of the pass that applied appliedGeneration. */
  timings?: ApplyTimings;
}

/**
 * The status document. The phase is the apply engine's, except: 'stale' when the coordinator
 * cannot be reached (the node serves its last good state), 'failed' when the runtime itself could
 * not do its part, 'unknown' before anything was applied.
 */
export function buildStatus(s: StatusInput): AgentStatus {
  let phase: Phase = s.apply?.phase ?? 'unknown';
  // Runtime errors (codes E_*) mean the node is not where it should be; notes (e.g.
  // DRIFT_REPAIRED) and a renewal that can wait are reported without changing the phase.
  if (phase === 'converged' && s.runtimeErrors.some((e) => e.code.startsWith('E_') && e.code !== 'E_CERT_RENEWAL')) phase = 'failed';
  if (!s.coordinatorReachable) phase = 'stale';
  return {
    generation: s.appliedGeneration,
    phase,
    errors: [...s.runtimeErrors, ...(s.apply?.errors ?? [])].map((e) => ({ code: e.code, message: e.message })),
    files: s.apply?.files ?? [],
    servedCertificate: s.apply?.servedCertificate ?? null,
    certificates: s.certificates,
    probes: s.probes,
    pendingRestart: s.apply?.pendingRestart ?? [],
    coordinatorReachable: s.coordinatorReachable,
    ...(s.survivesUntil !== undefined ? { survivesUntil: s.survivesUntil } : {}),
    ...(s.apply?.checks !== undefined ? { checks: s.apply.checks.map((c) => ({ name: c.name, query: c.query, ok: c.ok, rows: c.rows, note: c.note })) } : {}),
    ...(s.timings !== undefined && s.timings.generation === s.appliedGeneration ? { timings: s.timings } : {}),
    versions: { agent: AGENT_VERSION, postgres: s.postgresVersion },
  };
}

/** `server_version` of the local server over its socket, or 'unknown'. */
export async function postgresVersion(conn: { host: string; port: number; user: string }): Promise<string> {
  const client = new pg.Client({ host: conn.host, port: conn.port, user: conn.user, database: 'postgres', connectionTimeoutMillis: 5000, application_name: 'pgaccord-agent' });
  try {
    await client.connect();
    const r = await client.query<{ server_version: string }>('SHOW server_version');
    return r.rows[0]?.server_version ?? 'unknown';
  } catch {
    return 'unknown';
  } finally {
    await client.end().catch(() => undefined);
  }
}

export const statusFile = (stateDir: string): string => stateDirLayout(stateDir).status;

/** Local mirror of the last status, with when it was made and whether it reached the coordinator. */
export async function writeLocalStatus(stateDir: string, status: AgentStatus, meta: { at: string; reported: boolean }, owner?: Owner): Promise<void> {
  await writeFileAtomic(statusFile(stateDir), `${JSON.stringify({ ...meta, status }, null, 2)}\n`, { mode: 0o644, ...(owner ? { owner } : {}) });
}
