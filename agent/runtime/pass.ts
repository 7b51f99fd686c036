// The effectful half of one proving pass, apart from the loop that schedules it: certificate
// pairs ensured, the desired state applied and proved; once proved, the old pairs pruned and
// the live sessions of revoked certificates ended.
import type { NodeDesired } from '../../shared/contract/schema.ts';
import type { Problem } from '../../shared/contract/problem.ts';
import { withSession } from '../apply/pgconf.ts';
import { terminateRevokedSessions } from '../probe/revocation.ts';
import type { EnsureResult } from './certs.ts';
import { errMessage } from './judge.ts';
import type { FileReportT, LoopDeps } from './loop-deps.ts';
import type { ApplyResult, NodeContext } from '../apply/types.ts';

export interface Applied {
  result: ApplyResult;
  /** Converged or pending a restart: the generation is applied. */
  proved: boolean;
  certs: EnsureResult;
  certsMs: number;
}

/** Pairs first (`online`: new ones may be requested), then the apply; a thrown apply is a failed one. */
export async function ensureAndApply(
  deps: Pick<LoopDeps, 'certs' | 'apply'>,
  ctx: NodeContext,
  desired: NodeDesired,
  online: boolean,
  lastFiles: FileReportT[],
): Promise<Applied> {
  const t0 = performance.now();
  const certs = await deps.certs.ensure(desired, { online }).catch((e): EnsureResult => ({
    installed: [],
    issued: [],
    errors: [{ code: 'E_CERT', message: errMessage(e) }],
  }));
  const certsMs = performance.now() - t0;
  let result: ApplyResult;
  try {
    result = await deps.apply(ctx, { desired, certificates: certs.installed });
  } catch (e) {
    const errors = [{ code: 'E_APPLY', message: errMessage(e) }];
    result = { phase: 'failed', changed: false, errors, files: lastFiles, pendingRestart: [], servedCertificate: null, clientConnections: [] };
  }
  return { result, proved: result.phase === 'converged' || result.phase === 'pending-restart', certs, certsMs };
}

/** After the proof: old pair versions go, and (the new CRL is loaded) revoked sessions end. Returns new problems. */
export async function afterProof(
  deps: Pick<LoopDeps, 'certs' | 'log' | 'terminateRevoked'>,
  ctx: NodeContext,
  desired: NodeDesired,
  certs: EnsureResult,
): Promise<Problem[]> {
  const { log } = deps;
  const slots = desired.certificates.map((c) => c.id);
  await deps.certs.prune(certs.installed, slots).catch((e) => log.warn({ err: errMessage(e) }, 'pruning old certificate versions failed'));
  if (desired.crl === null) return [];
  const terminate = deps.terminateRevoked ?? ((c: NodeContext, crl: string) => withSession(c, (s) => terminateRevokedSessions(s, crl)));
  try {
    const ended = await terminate(ctx, desired.crl);
    if (ended.length > 0) log.warn({ sessions: ended }, 'ended sessions that authenticated with a revoked certificate');
    return [];
  } catch (e) {
    return [{ code: 'E_REVOKED_SESSIONS', message: `could not end the sessions of revoked certificates: ${errMessage(e)}` }];
  }
}
