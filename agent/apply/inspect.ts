// The reads behind the apply's checks: the installed pairs from disk (bytes and the key's
// owner and mode), judged by the pure checks of agent/apply/verify.ts, and the seed's
// verification queries run over the session.
import { lstat, readFile } from 'node:fs/promises';
import type { Problem } from '../../shared/contract/problem.ts';
import type { ApplyInput } from './types.ts';
import { keyModeProblem, pairProblems, PGD_CHECKS, type SeedCheck } from './verify.ts';

export interface CertCheckInput {
  certificates: ApplyInput['certificates'];
  /** Slots the desired state needs (server first when TLS is on). */
  neededSlots: string[];
  caBundle: string;
  ownerUid: number;
  now: Date;
}

/** Each needed key/certificate pair: on disk, key matches, chains to the CA, valid now, key mode. */
export async function checkCertificates(input: CertCheckInput): Promise<Problem[]> {
  const problems: Problem[] = [];
  for (const slot of input.neededSlots) {
    const c = input.certificates.find((x) => x.slot === slot);
    if (!c) {
      problems.push({ code: 'E_CERT_MISSING', message: `certificate ${slot} is not installed` });
      continue;
    }
    let certPem: string;
    let keyPem: string;
    try {
      certPem = await readFile(c.certPath, 'utf8');
      keyPem = await readFile(c.keyPath, 'utf8');
    } catch (e) {
      problems.push({ code: 'E_CERT_MISSING', message: `certificate ${slot}: ${(e as Error).message}` });
      continue;
    }
    const pair = pairProblems(c, certPem, keyPem, input.caBundle, input.now);
    problems.push(...pair.problems);
    if (!pair.parsed) continue;
    const p = keyModeProblem(c.keyPath, await lstat(c.keyPath), input.ownerUid);
    if (p) problems.push(p);
  }
  return problems;
}

type Queryable = { query: (q: string, v?: unknown[]) => Promise<{ rows: Record<string, unknown>[] }> };

export async function runSeedChecks(session: Queryable, checks = PGD_CHECKS): Promise<SeedCheck[]> {
  const out: SeedCheck[] = [];
  for (const c of checks) {
    if (c.needs !== undefined) {
      const { rows } = await session.query('SELECT to_regclass($1) IS NOT NULL AS present', [c.needs]);
      if (rows[0]?.present !== true) {
        out.push({ name: c.name, query: c.query, ok: true, rows: [], note: 'bdr not installed' });
        continue;
      }
    }
    try {
      const { rows } = await session.query(c.query);
      out.push({ name: c.name, query: c.query, ok: true, rows, note: null });
    } catch (e) {
      out.push({ name: c.name, query: c.query, ok: false, rows: [], note: (e as Error).message });
    }
  }
  return out;
}
