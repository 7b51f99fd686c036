// The proof of an apply: what PostgreSQL's validation views say about the files on disk against
// what was rendered, a new session's configuration hash, and the certificate the server's TLS
// handshake presents against the one on disk.
import { lstat, readFile } from 'node:fs/promises';
import type pg from 'pg';
import type { CertReport } from '../../shared/contract/status.ts';
import type { Problem } from '../../shared/contract/problem.ts';
import { certInfo } from '../../shared/crypto/x509.ts';
import type { Layout } from '../../shared/pgconf/layout.ts';
import type { Plan } from '../../shared/pgconf/plan.ts';
import { fileSettings, hbaFileRules, identFileMappings, servedCertificate, tcpHostFor, waitForConfigHash, type ServerInfo } from './pgconf.ts';
import { checkFileSettings, checkHbaRows, checkIdentRows, keyModeProblem } from './verify.ts';
import type { NodeContext } from './types.ts';

/** What a proof looks at: the node, its session and server, the layout and the plan applied. */
export interface ProofTarget {
  ctx: NodeContext;
  session: pg.Client;
  info: ServerInfo;
  layout: Layout;
  plan: Plan;
}

/** What PostgreSQL's validation views say about the files on disk, against what we rendered. */
export async function validationProblems(run: ProofTarget): Promise<{ problems: Problem[]; needRestart: string[] }> {
  const { session, plan, layout } = run;
  const sslTurningOn = plan.settings.ssl === 'on' && !run.info.ssl;
  const problems: Problem[] = [];
  problems.push(...checkHbaRows(await hbaFileRules(session), plan.hbaBlock, { sslTurningOn, file: layout.hbaFile }));
  problems.push(...checkIdentRows(await identFileMappings(session), plan.identBlock, layout.identFile));
  const settings = checkFileSettings(await fileSettings(session), layout.includeFile, [...Object.keys(plan.settings), 'pgaccord.config_hash']);
  problems.push(...settings.problems);
  return { problems, needRestart: settings.needRestart };
}

async function servedFor(run: ProofTarget): Promise<{ served: Awaited<ReturnType<typeof servedCertificate>>; problem: Problem | null }> {
  const host = tcpHostFor(run.info.listenAddresses);
  if (host === null) return { served: null, problem: { code: 'E_TLS_NOT_PROVED', message: 'listen_addresses is empty: no TCP address to prove the served certificate on' } };
  try {
    return { served: await servedCertificate(host, run.ctx.pgPort), problem: null };
  } catch (e) {
    return { served: null, problem: { code: 'E_TLS_NOT_PROVED', message: `TLS handshake with ${host}:${run.ctx.pgPort} failed: ${(e as Error).message}` } };
  }
}

export async function proofProblems(run: ProofTarget, timeoutMs: number): Promise<{ problems: Problem[]; served: CertReport | null }> {
  const problems: Problem[] = [];
  const hash = await waitForConfigHash(run.ctx, run.plan.hash, timeoutMs);
  if (!hash.ok) {
    problems.push({ code: 'E_RELOAD_NOT_PROVED', message: `a new session sees configuration hash ${hash.seen ?? '(none)'} instead of ${run.plan.hash}: PostgreSQL did not load the new configuration` });
  }
  const cert = run.plan.serverCertificate;
  if (cert === null) return { problems, served: null };
  const expected = certInfo(await readFile(cert.certPath, 'utf8'));
  // The SSL context is rebuilt in the same SIGHUP as the settings: once the new hash is seen, an
  // old certificate is final (PostgreSQL refused the new SSL files); allow a short grace only.
  const deadline = Date.now() + (hash.ok ? Math.min(timeoutMs, 1000) : timeoutMs);
  for (;;) {
    const { served, problem } = await servedFor(run);
    if (problem === null && served !== null && served.fingerprint256 === expected.fingerprint256) {
      return { problems, served: { id: 'server', serial: served.serial, notAfter: served.notAfter } };
    }
    if (Date.now() >= deadline) {
      if (problem) problems.push(problem);
      else if (served === null) problems.push({ code: 'E_TLS_NOT_PROVED', message: 'the server answers the SSLRequest with N: ssl is not on' });
      else {
        const keyHint = keyModeProblem(cert.keyPath, await lstat(cert.keyPath), run.ctx.serverOsUser.uid);
        problems.push({
          code: 'E_TLS_NOT_PROVED',
          message: `the server still presents certificate serial ${served.serial} instead of ${expected.serial} (${cert.certPath}): PostgreSQL did not load the new SSL configuration ("SSL configuration was not reloaded" in its log)${keyHint ? `; ${keyHint.message}` : ''}`,
        });
      }
      return { problems, served: served ? { id: 'server', serial: served.serial, notAfter: served.notAfter } : null };
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}
