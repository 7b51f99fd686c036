// The certificate manager: for every certificate slot of the desired state, make sure a valid
// key and certificate pair is on disk under versioned names (<stateDir>/tls/<slot>-<serial>.key
// and .crt), the key generated here (0600, owned by the PGDATA owner) and never sent anywhere.
// New pairs are requested with a CSR when a slot has none, when its names changed, or when the
// renewal schedule says so. Old versions stay until the apply engine has proved the new ones.
//
// A new key is made for every pair, except on a routine renewal of a client slot that the
// profile's client finds under fixed names (see fixedNameClientSlots): that one is certified
// again for the key it already has, so a reader that opens the old certificate and the new key
// (two files, two renames) still sees a matching pair. See keyReuse for when it re-keys anyway.
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { CsrRequest, CsrResponse } from '../../shared/contract/api.ts';
import type { CertificateSlot, NodeDesired } from '../../shared/contract/schema.ts';
import type { CertReport } from '../../shared/contract/status.ts';
import { createPrivateKey } from 'node:crypto';
import { certInfo, certMatchesKey, keyTypeOf, normaliseIp, verifiesAgainst, type CertInfo } from '../../shared/crypto/x509.ts';
import { createCsr } from '../../shared/crypto/csr.ts';
import type { KeyType } from '../../shared/crypto/key-types.ts';
import { generateKey } from '../../shared/crypto/keys.ts';
import { normaliseSerial, revokedSerials } from '../../shared/crypto/crl.ts';
import { RenewalSchedule, type Clock } from './backoff.ts';
import { ensurePrivateDir, readIfExists, writeFileAtomic, type Owner } from './statefile.ts';
import { fsyncDir, removeFile } from '../../shared/system/atomic-file.ts';
import { stateDirLayout } from '../../shared/pgconf/layout.ts';
import type { Problem } from '../../shared/contract/problem.ts';
import type { InstalledCertificate } from '../../shared/pgconf/types.ts';
import { rename, stat, utimes } from 'node:fs/promises';
import { CoordinatorError } from './client.ts';
import { newer } from './identity.ts';

export const tlsDir = (stateDir: string): string => stateDirLayout(stateDir).tlsDir;
const SLOT_ID = /^[a-z0-9][a-z0-9_-]{0,80}$/;
const VERSIONED = /^(.+)-([0-9a-f]+)\.(crt|key)$/;

/**
 * Why a pair cannot be used for a slot, or null when it can: the certificate matches the key,
 * chains to the cluster CA bundle, is within its validity now, and names this node as the slot
 * says (CN, every DNS name and IP address, and the right extended key usage when it has one).
 */
export function checkPair(args: { certPem: string; keyPem: string; slot: CertificateSlot; caBundle: string; now: number }): string | null {
  const { certPem, keyPem, slot, caBundle, now } = args;
  let info: CertInfo;
  try {
    info = certInfo(certPem);
  } catch (e) {
    return `not a certificate: ${(e as Error).message}`;
  }
  if (!certMatchesKey(certPem, keyPem)) return 'the certificate does not match its key';
  if (!verifiesAgainst(certPem, caBundle)) return 'the certificate does not chain to the cluster CA bundle';
  if (now < info.notBefore.getTime()) return `the certificate is not valid before ${info.notBefore.toISOString()}`;
  if (now >= info.notAfter.getTime()) return `the certificate expired at ${info.notAfter.toISOString()}`;
  if (info.commonName !== slot.commonName) return `the certificate names CN=${JSON.stringify(info.commonName)}, the slot wants ${JSON.stringify(slot.commonName)}`;
  const dns = new Set(info.dnsNames.map((d) => d.toLowerCase()));
  const missingDns = slot.dnsNames.filter((d) => !dns.has(d.toLowerCase()));
  if (missingDns.length > 0) return `the certificate lacks DNS name(s) ${missingDns.join(', ')}`;
  const ips = new Set(info.ipAddresses);
  const missingIp = slot.ipAddresses.filter((ip) => !ips.has(normaliseIp(ip)));
  if (missingIp.length > 0) return `the certificate lacks IP address(es) ${missingIp.join(', ')}`;
  const want = slot.usage === 'server' ? 'serverAuth' : 'clientAuth';
  if (info.extKeyUsage.length > 0 && !info.extKeyUsage.includes(want)) return `the certificate is not for ${want}`;
  return null;
}

export interface CertManagerDeps {
  stateDir: string;
  /** Owner of PGDATA: keys and certificates belong to it (the server and its clients read them). */
  owner: Owner;
  /** Ask the coordinator to sign a CSR for a slot. */
  requestCertificate: (req: CsrRequest) => Promise<CsrResponse>;
  now: Clock;
  schedule: RenewalSchedule;
  log: Logger;
  /** Key generator (tests may inject a faster one). */
  generateKey?: (type: KeyType) => Promise<string>;
}

export interface EnsureResult {
  installed: InstalledCertificate[];
  /** Slots without a usable pair, or whose renewal failed (the old pair is still installed). */
  errors: Problem[];
  /** Slots that got a new pair in this call. */
  issued: string[];
}

/** A key certified again at most this long after it was made (key file mtime); then a new key. */
export const KEY_MAX_AGE_MS = 365 * 86400_000;

/**
 * Client slots whose pair the apply engine also copies under fixed names (the profile's client
 * layout: bdr_client.{crt,key}, ~/.postgresql/postgresql.{crt,key}, <md5(role)>.{crt,key}),
 * exactly the slots planNode writes as `client-cert`/`client-key`. A reader of those opens the
 * certificate and the key one after the other, so their renewals keep the key.
 */
export function fixedNameClientSlots(desired: NodeDesired): Set<string> {
  const cl = desired.clientLayout;
  if (cl === undefined || cl.cert === null || cl.key === null) return new Set();
  return new Set((desired.edges ?? []).flatMap((e) => (e.clientCertificate === null ? [] : [e.clientCertificate])));
}

/**
 * Whether a routine renewal of a fixed-name client slot may certify its current key again: only
 * while the key is younger than KEY_MAX_AGE_MS (by its file's mtime, set when the key was made
 * and carried over to every version that reuses it). Everything else
 * (a revoked pair, an operator's renewal, which is also how a CA rotation re-issues old leaves,
 * a missing, expired, mismatched or renamed pair) never reaches here and gets a new key.
 */
function keyReuse(keyMtime: number, now: number): { reuse: true } | { reuse: false; why: string } {
  if (keyMtime > now + 86400_000) return { reuse: false, why: 'the key file is dated in the future; its age is unknown' };
  if (now - keyMtime >= KEY_MAX_AGE_MS) return { reuse: false, why: `the key is older than ${KEY_MAX_AGE_MS / 86400_000} days` };
  return { reuse: true };
}

interface Candidate {
  mtime: number;
  serial: string;
  certPath: string;
  keyPath: string;
  info: CertInfo;
}

export class CertificateManager {
  /** Earliest scheduled renewal among the pairs in use after the last ensure (ms), or null. */
  nextRenewalAt: number | null = null;
  /** Earliest notAfter among the pairs in use after the last ensure (ms), or null. */
  earliestExpiry: number | null = null;

  constructor(private readonly deps: CertManagerDeps) {}

  private get dir(): string {
    return tlsDir(this.deps.stateDir);
  }

  /**
   * Make sure every slot of `desired` has a usable pair. `online` false means the coordinator
   * is unreachable: existing pairs are used (even past their renewal time), nothing is requested.
   */
  async ensure(desired: NodeDesired, opts: { online: boolean }): Promise<EnsureResult> {
    await ensurePrivateDir(this.dir, this.deps.owner);
    const result: EnsureResult = { installed: [], errors: [], issued: [] };
    const now = this.deps.now();
    // A revoked pair is never used again; one the operator asked to renew is replaced early.
    let revoked = new Set<string>();
    try {
      revoked = revokedSerials(desired.crl);
    } catch (e) {
      result.errors.push({ code: 'E_CRL_INVALID', message: `the desired CRL cannot be read: ${(e as Error).message}` });
    }
    const renewRequested = new Set((desired.renewSerials ?? []).map(normaliseSerial));
    const fixedName = fixedNameClientSlots(desired);
    // New keys are of the cluster's type (tls.keyType); a pair of another type is replaced.
    const keyType: KeyType = desired.keyType ?? 'rsa-2048';
    let nextRenewal: number | null = null;
    let earliest: number | null = null;
    for (const slot of desired.certificates) {
      if (!SLOT_ID.test(slot.id)) {
        result.errors.push({ code: 'E_CERT_SLOT', message: `certificate slot id ${JSON.stringify(slot.id)} is not a safe file name; refused` });
        continue;
      }
      const { best, rejected, revokedBest } = await this.bestPair(slot, desired.caBundle, now, revoked);
      let use = best ?? revokedBest;
      let reason: string | null = null;
      // The pair whose key a routine renewal of a fixed-name client slot certifies again.
      let sameKeyAs: Candidate | null = null;
      if (!best) {
        reason = revokedBest ? `the certificate in use (serial ${revokedBest.serial}) is revoked` : rejected.length > 0 ? `no usable pair (${rejected.join('; ')})` : 'no pair yet';
      } else if (renewRequested.has(best.serial)) {
        reason = `renewal requested by the operator (serial ${best.serial})`;
      } else if (best.info.keyType !== keyType) {
        reason = `the cluster's node keys are now ${keyType}`;
      } else {
        const d = this.deps.schedule.decide(best.serial, best.info, now);
        if (d.renew) {
          reason = `renewal ${d.reason} (scheduled ${d.at.toISOString()})`;
          if (slot.usage === 'client' && fixedName.has(slot.id)) sameKeyAs = best;
        }
      }
      if (reason !== null && opts.online) {
        try {
          let fresh: Candidate;
          try {
            fresh = await this.issue(slot, desired.caBundle, reason, keyType, sameKeyAs);
          } catch (e) {
            // The coordinator knows this key as revoked (a CRL we have not seen yet): new key.
            if (sameKeyAs === null || !(e instanceof CoordinatorError && e.apiCode === 'E_KEY_REVOKED')) throw e;
            this.deps.log.warn({ slot: slot.id }, 'the coordinator refused the key as revoked; making a new one');
            fresh = await this.issue(slot, desired.caBundle, `${reason}; the key was revoked`, keyType, null);
          }
          result.issued.push(slot.id);
          use = fresh;
        } catch (e) {
          const message = `certificate ${slot.id}: ${reason}; request failed: ${(e as Error).message}`;
          result.errors.push({ code: best ? 'E_CERT_RENEWAL' : 'E_CERT_MISSING', message });
          this.deps.log.warn({ slot: slot.id, err: (e as Error).message }, best ? 'renewal failed; keeping the current pair' : 'no usable certificate');
        }
      } else if (reason !== null && !best) {
        result.errors.push({ code: 'E_CERT_MISSING', message: `certificate ${slot.id}: ${reason}; coordinator unreachable, cannot request one` });
      }
      if (use) {
        result.installed.push({ slot: slot.id, certPath: use.certPath, keyPath: use.keyPath, serial: use.serial, notAfter: use.info.notAfter.toISOString() });
        const at = this.deps.schedule.renewAt(use.serial, use.info).getTime();
        nextRenewal = nextRenewal === null ? at : Math.min(nextRenewal, at);
        earliest = earliest === null ? use.info.notAfter.getTime() : Math.min(earliest, use.info.notAfter.getTime());
      }
    }
    this.nextRenewalAt = nextRenewal;
    this.earliestExpiry = earliest;
    return result;
  }

  /** Every version of a slot on disk, checked; the usable one with the latest notAfter wins. */
  private async bestPair(slot: CertificateSlot, caBundle: string, now: number, revoked: Set<string> = new Set()): Promise<{ best: Candidate | null; rejected: string[]; revokedBest: Candidate | null }> {
    let best: Candidate | null = null;
    let revokedBest: Candidate | null = null;
    const rejected: string[] = [];
    for (const serial of await this.versions(slot.id)) {
      const certPath = join(this.dir, `${slot.id}-${serial}.crt`);
      const keyPath = join(this.dir, `${slot.id}-${serial}.key`);
      const certPem = await readIfExists(certPath);
      const keyPem = await readIfExists(keyPath);
      if (certPem === null || keyPem === null) continue;
      const problem = checkPair({ certPem, keyPem, slot, caBundle, now });
      if (problem) {
        rejected.push(`${serial}: ${problem}`);
        continue;
      }
      const info = certInfo(certPem);
      const mtime = (await stat(certPath)).mtimeMs;
      if (revoked.has(info.serial)) {
        // Kept only as a last resort while no other pair can be had (the CRL refuses it anyway).
        if (!revokedBest || newer(info, mtime, revokedBest.info, revokedBest.mtime)) revokedBest = { serial, certPath, keyPath, info, mtime };
        rejected.push(`${serial}: revoked`);
        continue;
      }
      if (!best || newer(info, mtime, best.info, best.mtime)) best = { serial, certPath, keyPath, info, mtime };
    }
    return { best, rejected, revokedBest };
  }

  private async versions(slotId: string): Promise<string[]> {
    const out = new Set<string>();
    for (const name of await readdir(this.dir)) {
      const m = VERSIONED.exec(name);
      if (m && m[1] === slotId && m[3] === 'crt') out.add(m[2]!);
    }
    return [...out].sort();
  }

  /**
   * The key a new pair of `slot` will use: the one of `sameKeyAs` when keyReuse allows it and it
   * can still be read and still matches its certificate, else a new one made here. Either way it
   * is written to the slot's pending key (0600 from creation, owned by the PGDATA owner), with
   * the mtime of the key's making (what keyReuse reads). Never logged, never sent.
   */
  private async pendingKey(slot: CertificateSlot, reason: string, keyType: KeyType, sameKeyAs: Candidate | null): Promise<{ keyPem: string; csr: string; pendingPath: string }> {
    const pendingPath = join(this.dir, `${slot.id}.pending.key`);
    const now = this.deps.now();
    let keyPem: string | null = null;
    let csr: string | null = null;
    let bornAt = now;
    let newKeyBecause: string | undefined;
    if (sameKeyAs !== null) {
      try {
        const st = await stat(sameKeyAs.keyPath);
        const r = keyReuse(st.mtimeMs, now);
        if (!r.reuse) newKeyBecause = r.why;
        else {
          const pem = await readIfExists(sameKeyAs.keyPath);
          const certPem = await readIfExists(sameKeyAs.certPath);
          if (pem === null || certPem === null || !certMatchesKey(certPem, pem)) newKeyBecause = 'the current key cannot be read or no longer matches its certificate';
          else if (keyTypeOf(createPrivateKey(pem)) !== keyType) newKeyBecause = `the cluster's node keys are now ${keyType}`;
          else {
            csr = createCsr(pem, slot.commonName);
            keyPem = pem;
            bornAt = st.mtimeMs;
          }
        }
      } catch (e) {
        newKeyBecause = `the current key cannot be used (${(e as Error).message})`;
      }
    }
    const reused = keyPem !== null && csr !== null;
    if (keyPem === null || csr === null) {
      keyPem = this.deps.generateKey ? await this.deps.generateKey(keyType) : (await generateKey(keyType)).privateKeyPem;
      csr = createCsr(keyPem, slot.commonName);
    }
    this.deps.log.info({ slot: slot.id, reason, key: reused ? 'same' : 'new', ...(newKeyBecause ? { newKeyBecause } : {}) }, 'requesting a certificate');
    await writeFileAtomic(pendingPath, keyPem, { mode: 0o600, owner: this.deps.owner });
    await utimes(pendingPath, bornAt / 1000, bornAt / 1000);
    return { keyPem, csr, pendingPath };
  }

  /** Key (new, or the current one for a routine fixed-name client renewal), CSR out, certificate back. */
  private async issue(slot: CertificateSlot, caBundle: string, reason: string, keyType: KeyType, sameKeyAs: Candidate | null = null): Promise<Candidate> {
    const { keyPem, csr, pendingPath } = await this.pendingKey(slot, reason, keyType, sameKeyAs);
    const resp = await this.deps.requestCertificate({ slot: slot.id, csr });
    const problem = checkPair({ certPem: resp.certificate, keyPem, slot, caBundle, now: this.deps.now() });
    if (problem) {
      await removeFile(pendingPath);
      throw new Error(`the coordinator's certificate is refused: ${problem}`);
    }
    const info = certInfo(resp.certificate);
    const certPath = join(this.dir, `${slot.id}-${info.serial}.crt`);
    const keyPath = join(this.dir, `${slot.id}-${info.serial}.key`);
    // Certificate first, then the key moves into place: a version is only seen once both exist.
    await writeFileAtomic(certPath, resp.certificate, { mode: 0o644, owner: this.deps.owner });
    await rename(pendingPath, keyPath);
    await fsyncDir(this.dir);
    this.deps.log.info({ slot: slot.id, serial: info.serial, notAfter: info.notAfter.toISOString() }, 'certificate installed');
    return { serial: info.serial, certPath, keyPath, info, mtime: Date.now() };
  }

  /**
   * After the apply engine has proved `applied`, remove every other version of the managed slots
   * (and slots no longer desired), and leftover pending keys.
   */
  async prune(applied: InstalledCertificate[], desiredSlots: string[]): Promise<string[]> {
    const keep = new Set(applied.map((c) => `${c.slot}-${c.serial}`));
    const managed = new Set([...desiredSlots, ...applied.map((c) => c.slot)]);
    const removed: string[] = [];
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch {
      return removed;
    }
    for (const name of names) {
      const m = VERSIONED.exec(name);
      const pending = /^(.+)\.pending\.key$/.exec(name);
      if (pending) {
        await removeFile(join(this.dir, name));
        continue;
      }
      if (!m) continue;
      const slot = m[1]!;
      const isManagedName = managed.has(slot) || slot === 'server' || slot.startsWith('client-');
      if (!isManagedName || keep.has(`${slot}-${m[2]}`)) continue;
      await removeFile(join(this.dir, name));
      removed.push(name);
    }
    if (removed.length > 0) this.deps.log.info({ removed }, 'old certificate versions removed');
    this.deps.schedule.retain(applied.map((c) => c.serial));
    return removed;
  }
}

export function certReports(installed: InstalledCertificate[]): CertReport[] {
  return installed.map((c) => ({ id: c.slot, serial: c.serial, notAfter: c.notAfter }));
}
