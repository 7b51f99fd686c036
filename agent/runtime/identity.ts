// The agent identity kept in the state directory's identity/ (stateDirLayout): the pinned
// coordinator CA, the enrolment, and identity-<serial>.{crt,key} pairs. The key is made here,
// 0600 from the instant it exists, and only a CSR leaves the node.
import { createPrivateKey } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { EnrollResponse } from '../../shared/contract/api.ts';
import { certInfo, certMatchesKey, fingerprint256, splitPemBundle, verifiesAgainst } from '../../shared/crypto/x509.ts';
import { createCsr } from '../../shared/crypto/csr.ts';
import { generateKey } from '../../shared/crypto/keys.ts';
import { normaliseFingerprint } from '../../shared/contract/join-token.ts';
import { stateDirLayout } from '../../shared/pgconf/layout.ts';
import { removeFile } from '../../shared/system/atomic-file.ts';
import { ensurePrivateDir, readIfExists, writeFileAtomic } from './statefile.ts';
import { backoffDelay, sleep, type Random } from './backoff.ts';
import { CoordinatorClient, CoordinatorError, decodeJoinToken, fetchPinnedCa, type HttpOptions, type Identity } from './client.ts';

export interface Enrollment {
  cluster: string;
  node: string;
  coordinatorUrl: string;
}

export const identityDir = (stateDir: string): string => stateDirLayout(stateDir).identityDir;
const CA_FILE = 'coordinator-ca.crt';
const ENROLLMENT_FILE = 'enrollment.json';
const PENDING_KEY = 'pending.key';

export interface StoredIdentity {
  enrollment: Enrollment;
  caPem: string;
  identity: Identity;
}

/**
 * The identity stored by an earlier enrolment, or null when there is none. The newest pair whose
 * key matches and which chains to the pinned coordinator CA wins; an expired one is returned too
 * (the caller reports it), since only the coordinator can say whether it still works.
 */
export async function loadIdentity(stateDir: string): Promise<StoredIdentity | null> {
  const dir = identityDir(stateDir);
  const enrollmentText = await readIfExists(join(dir, ENROLLMENT_FILE));
  const caPem = await readIfExists(join(dir, CA_FILE));
  if (enrollmentText === null || caPem === null) return null;
  const enrollment = JSON.parse(enrollmentText) as Enrollment;
  let best: Identity | null = null;
  let bestMtime = 0;
  for (const name of await readdir(dir)) {
    const m = /^identity-([0-9a-f]+)\.crt$/.exec(name);
    if (!m) continue;
    const certPem = await readIfExists(join(dir, name));
    const keyPem = await readIfExists(join(dir, `identity-${m[1]}.key`));
    if (!certPem || !keyPem || !certMatchesKey(certPem, keyPem) || !verifiesAgainst(certPem, caPem)) continue;
    const info = certInfo(certPem);
    const mtime = (await stat(join(dir, name))).mtimeMs;
    // Newest notAfter wins; on a tie (same second), the pair written last.
    if (!best || newer(info, mtime, best.info, bestMtime)) {
      best = { keyPem, certPem, info };
      bestMtime = mtime;
    }
  }
  return best ? { enrollment, caPem, identity: best } : null;
}

/** Whether a certificate should be preferred over another: later notAfter, then later notBefore, then written later. */
export function newer(a: { notAfter: Date; notBefore: Date }, aMtime: number, b: { notAfter: Date; notBefore: Date }, bMtime: number): boolean {
  if (a.notAfter.getTime() !== b.notAfter.getTime()) return a.notAfter > b.notAfter;
  if (a.notBefore.getTime() !== b.notBefore.getTime()) return a.notBefore > b.notBefore;
  return aMtime > bMtime;
}

/**
 * Generate a key in the identity directory, 0600 from the instant it exists. ECDSA P-256: made
 * in microseconds, and cheaper for the agent's side of every mTLS handshake than RSA.
 */
async function newPendingKey(stateDir: string): Promise<string> {
  const { privateKeyPem } = await generateKey('ecdsa-p256');
  await writeFileAtomic(join(identityDir(stateDir), PENDING_KEY), privateKeyPem, { mode: 0o600 });
  return privateKeyPem;
}

/**
 * The enrolment key: the one a failed enrolment left (its answer may have been lost after the
 * coordinator spent the token, and only that key's CSR is answered again), else a new one. Only a
 * key still private (0600) and readable is taken again.
 */
async function enrolmentKey(stateDir: string): Promise<string> {
  const path = join(identityDir(stateDir), PENDING_KEY);
  const kept = await readIfExists(path);
  if (kept !== null && ((await stat(path)).mode & 0o077) === 0) {
    try {
      createPrivateKey(kept);
      return kept;
    } catch {
      // Unreadable (a torn write cannot happen with writeFileAtomic, but a hand edit can): a new key.
    }
  }
  return newPendingKey(stateDir);
}

/** Rounds of the enrolment (each one try of every coordinator) before it gives up; the key stays for the next start. */
const ENROLL_ROUNDS = 3;

/** A failure after which the same enrolment may be sent again: no answer, or a coordinator fault (5xx). */
const retryable = (e: unknown): boolean =>
  e instanceof CoordinatorError && (e.code === 'E_UNREACHABLE' || (e.code === 'E_HTTP' && e.status !== undefined && e.status >= 500));

/** Store a signed identity under its serial: certificate first, then the key moves into place. */
async function storeIdentity(stateDir: string, keyPem: string, certPem: string): Promise<Identity> {
  const dir = identityDir(stateDir);
  const info = certInfo(certPem);
  await writeFileAtomic(join(dir, `identity-${info.serial}.crt`), certPem, { mode: 0o644 });
  await writeFileAtomic(join(dir, `identity-${info.serial}.key`), keyPem, { mode: 0o600 });
  await removeFile(join(dir, PENDING_KEY));
  return { keyPem, certPem, info };
}

/** Remove every stored identity version except `keepSerial`. */
export async function pruneIdentities(stateDir: string, keepSerial: string): Promise<void> {
  const dir = identityDir(stateDir);
  for (const name of await readdir(dir)) {
    const m = /^identity-([0-9a-f]+)\.(crt|key)$/.exec(name);
    if (m && m[1] !== keepSerial) await removeFile(join(dir, name));
  }
}

function checkIssued(certPem: string, keyPem: string, caPem: string, now: number): void {
  if (!certMatchesKey(certPem, keyPem)) throw new CoordinatorError('E_RESPONSE', 'the identity certificate does not match the key this node generated');
  if (!verifiesAgainst(certPem, caPem)) throw new CoordinatorError('E_RESPONSE', 'the identity certificate does not chain to the pinned coordinator CA');
  const info = certInfo(certPem);
  if (now < info.notBefore.getTime() - 5 * 60_000 || now >= info.notAfter.getTime()) {
    throw new CoordinatorError('E_RESPONSE', `the identity certificate is not valid now (${info.notBefore.toISOString()} .. ${info.notAfter.toISOString()})`);
  }
}

export interface EnrollOptions {
  stateDir: string;
  /** One coordinator, or several (tried in order, see HttpOptions.baseUrl). */
  coordinatorUrl: string | readonly string[];
  random?: Random;
  onFailover?: HttpOptions['onFailover'];
  cluster: string;
  node: string;
  joinToken: string;
  now: () => number;
}

/** Enrol with a join token: pin the CA, make the identity key here, send only a CSR. */
export async function enroll(opts: EnrollOptions): Promise<StoredIdentity> {
  const payload = decodeJoinToken(opts.joinToken);
  if (payload.cluster !== opts.cluster || payload.node !== opts.node) {
    throw new CoordinatorError('E_TOKEN', `the join token is for ${payload.cluster}/${payload.node}, not ${opts.cluster}/${opts.node}`);
  }
  const caPem = await fetchPinnedCa(opts.coordinatorUrl, payload.caFingerprint);
  await ensurePrivateDir(identityDir(opts.stateDir));
  const keyPem = await enrolmentKey(opts.stateDir);
  const client = new CoordinatorClient({
    baseUrl: opts.coordinatorUrl,
    caPem,
    ...(opts.random ? { random: opts.random } : {}),
    ...(opts.onFailover ? { onFailover: opts.onFailover } : {}),
  });
  // One CSR for every retry: the same key, so that a coordinator answering after another one
  // spent the token and died gives the certificate issued then (coordinator/service/identities.ts).
  const req = { token: opts.joinToken, csr: createCsr(keyPem, `${opts.cluster}/${opts.node}`) };
  let resp: EnrollResponse;
  try {
    for (let round = 0; ; round++) {
      try {
        resp = await client.enroll(req);
        break;
      } catch (e) {
        if (!retryable(e) || round + 1 >= ENROLL_ROUNDS) throw e;
        await sleep(backoffDelay(round, opts.random ?? Math.random));
      }
    }
  } finally {
    await client.close();
  }
  const answered = splitPemBundle(resp.coordinatorCa)[0];
  if (answered === undefined || fingerprint256(answered) !== normaliseFingerprint(payload.caFingerprint)) {
    throw new CoordinatorError('E_PIN', 'the enrolment answer names a coordinator CA other than the pinned one');
  }
  checkIssued(resp.certificate, keyPem, caPem, opts.now());
  const dir = identityDir(opts.stateDir);
  await writeFileAtomic(join(dir, CA_FILE), caPem, { mode: 0o644 });
  const identity = await storeIdentity(opts.stateDir, keyPem, resp.certificate);
  const coordinatorUrl = typeof opts.coordinatorUrl === 'string' ? opts.coordinatorUrl : opts.coordinatorUrl[0]!;
  const enrollment: Enrollment = { cluster: opts.cluster, node: opts.node, coordinatorUrl };
  await writeFileAtomic(join(dir, ENROLLMENT_FILE), `${JSON.stringify(enrollment, null, 2)}\n`, { mode: 0o644 });
  return { enrollment, caPem, identity };
}

/** Renew the agent identity over mTLS with the current one; the caller switches the client. */
export async function renewIdentity(stateDir: string, client: CoordinatorClient, caPem: string, subject: string, now: () => number): Promise<Identity> {
  const keyPem = await newPendingKey(stateDir);
  const resp = await client.csr({ slot: 'identity', csr: createCsr(keyPem, subject) });
  checkIssued(resp.certificate, keyPem, caPem, now());
  return storeIdentity(stateDir, keyPem, resp.certificate);
}

