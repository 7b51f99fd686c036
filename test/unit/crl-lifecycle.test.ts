// The cluster CRL as the coordinator builds it (node-forge ASN.1 + node:crypto signature), read
// back by OpenSSL and by our parser; an expired CRL refused by the agent's check (injected clock);
// a revoked pair or one the operator asked to renew replaced with a new key; expiry levels.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createPublicKey } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import forge from 'node-forge';
import pino from 'pino';
import { CertificateAuthority } from '../../coordinator/ca/ca.ts';
import { crlInfo, crlSignedBy, normaliseSerial } from '../../shared/crypto/crl.ts';
import { caLevel, expiryLevel } from '../../coordinator/cluster/lifecycle.ts';
import { checkCrl } from '../../agent/apply/verify.ts';
import { decimalSerialToHex } from '../../agent/probe/revocation.ts';
import { CertificateManager } from '../../agent/runtime/certs.ts';
import { RenewalSchedule, seededRandom } from '../../agent/runtime/backoff.ts';
import { readCsr } from '../../shared/crypto/csr.ts';
import type { CertificateSlot, NodeDesired } from '../../shared/contract/schema.ts';

const run = promisify(execFile);
const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
async function tmp(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'pgaccord-crl-'));
  dirs.push(d);
  return d;
}
const pub = (pem: string) => forge.pki.publicKeyFromPem(createPublicKey(pem).export({ type: 'spki', format: 'pem' }).toString());
const T0 = Date.parse('2031-03-01T00:00:00Z');

test('CRL: v2, sha256WithRSA, issuer = CA subject, CRL number and AKI; OpenSSL verifies it and refuses the revoked leaf', async () => {
  const { ca, keyPem } = await CertificateAuthority.create('pgaccord crl CA', new Date());
  const now = new Date();
  const { privateKeyPem: leafKey } = await import('../../shared/crypto/keys.ts').then((m) => m.generateRsaKey());
  const leaf = ca.issue({ publicKey: pub(leafKey), commonName: 'replicator', usage: 'client', lifetimeSeconds: 3600, now });
  const other = ca.issue({ publicKey: pub(leafKey), commonName: 'other', usage: 'client', lifetimeSeconds: 3600, now });
  const pem = ca.issueCrl({ revoked: [{ serial: leaf.serial, revokedAt: now }], number: 42, thisUpdate: new Date(now.getTime() - 60_000), nextUpdate: new Date(now.getTime() + 7 * 86400_000) });
  const d = await tmp();
  await writeFile(join(d, 'ca.crt'), ca.certPem);
  await writeFile(join(d, 'crl.pem'), pem);
  await writeFile(join(d, 'leaf.crt'), leaf.pem);
  await writeFile(join(d, 'other.crt'), other.pem);
  const text = await run('openssl', ['crl', '-in', join(d, 'crl.pem'), '-CAfile', join(d, 'ca.crt'), '-noout', '-text']);
  assert.match(text.stderr + text.stdout, /verify OK/);
  assert.match(text.stdout, /Version 2/);
  assert.match(text.stdout, /Signature Algorithm: sha256WithRSAEncryption/);
  assert.match(text.stdout, /Issuer: CN = pgaccord crl CA/);
  assert.match(text.stdout, /X509v3 CRL Number: \n\s+42/);
  assert.match(text.stdout, /X509v3 Authority Key Identifier/);
  assert.match(text.stdout, new RegExp(`Serial Number: ${leaf.serial.toUpperCase()}`));
  // OpenSSL's own chain check with the CRL: the revoked leaf is refused, the other one passes.
  const verify = (cert: string) => run('openssl', ['verify', '-crl_check', '-CAfile', join(d, 'ca.crt'), '-CRLfile', join(d, 'crl.pem'), '-purpose', 'sslclient', join(d, cert)]).then(() => 'ok', (e: { stdout: string; stderr: string }) => e.stdout + e.stderr);
  assert.match(await verify('leaf.crt'), /certificate revoked/);
  assert.equal(await verify('other.crt'), 'ok');
  // Our parser reads the same thing back; the signature checks against the CA, not another.
  const info = crlInfo(pem);
  assert.equal(info.number, 42n);
  assert.deepEqual(info.revoked.map((r) => r.serial), [leaf.serial]);
  assert.equal(info.nextUpdate!.getTime(), Math.floor((now.getTime() + 7 * 86400_000) / 1000) * 1000);
  assert.equal(crlSignedBy(pem, ca.certPem), true);
  const { ca: stranger } = await CertificateAuthority.create('stranger', new Date());
  assert.equal(crlSignedBy(pem, stranger.certPem), false);
  assert.ok(keyPem.includes('PRIVATE KEY'));
  // An empty CRL has no revokedCertificates field at all (RFC 5280: omitted when empty).
  const empty = ca.issueCrl({ revoked: [], number: 1, thisUpdate: now, nextUpdate: new Date(now.getTime() + 60_000) });
  await writeFile(join(d, 'empty.pem'), empty);
  const e = await run('openssl', ['crl', '-in', join(d, 'empty.pem'), '-CAfile', join(d, 'ca.crt'), '-noout', '-text']);
  assert.match(e.stdout, /No Revoked Certificates/);
});

test('an expired CRL is refused by the agent (injected clock), a fresh one is accepted', async () => {
  const { ca } = await CertificateAuthority.create('pgaccord crl CA', new Date(T0 - 86400_000));
  const pem = ca.issueCrl({ revoked: [], number: 3, thisUpdate: new Date(T0), nextUpdate: new Date(T0 + 7 * 86400_000) });
  assert.deepEqual(checkCrl(pem, ca.certPem, new Date(T0 + 86400_000)), []);
  assert.deepEqual(checkCrl(pem, ca.certPem, new Date(T0 + 7 * 86400_000 - 1000)), []);
  const late = checkCrl(pem, ca.certPem, new Date(T0 + 7 * 86400_000 + 1000));
  assert.deepEqual(late.map((p) => p.code), ['E_CRL_EXPIRED']);
  assert.match(late[0]!.message, /nextUpdate/);
  // A CRL from the future (clock skew beyond 5 minutes) is not installed either.
  assert.deepEqual(checkCrl(pem, ca.certPem, new Date(T0 - 3600_000)).map((p) => p.code), ['E_CRL_NOT_YET_VALID']);
});

test('serials: pg_stat_ssl decimal to hex, hex normalised', () => {
  assert.equal(decimalSerialToHex('255'), 'ff');
  assert.equal(decimalSerialToHex(BigInt('0x7fabcdef0123456789abcdef01234567').toString()), '7fabcdef0123456789abcdef01234567');
  assert.equal(normaliseSerial('00:AB:CD'), 'abcd');
  assert.equal(normaliseSerial('abc'), '0abc');
});

test('expiry levels: warning below 1/3 of the lifetime, critical below 1/10; a CA also against the leaf lifetime', () => {
  const v = { notBefore: new Date(0), notAfter: new Date(90_000) };
  assert.equal(expiryLevel(v, 0), 'ok');
  assert.equal(expiryLevel(v, 59_999), 'ok');
  assert.equal(expiryLevel(v, 60_001), 'warning');
  assert.equal(expiryLevel(v, 81_001), 'critical');
  assert.equal(expiryLevel(v, 90_000), 'expired');
  const day = 86400_000;
  const ca = { notBefore: new Date(0), notAfter: new Date(100 * day) };
  assert.equal(caLevel(ca, 30 * 86400, 0), 'ok');
  assert.equal(caLevel(ca, 30 * 86400, 45 * day), 'warning', 'less than two leaf lifetimes left');
  assert.equal(caLevel(ca, 30 * 86400, 75 * day), 'critical', 'leaves are already cut short');
  const tenYears = { notBefore: new Date(0), notAfter: new Date(3650 * day) };
  assert.equal(caLevel(tenYears, 90 * 86400, 2000 * day), 'ok');
  assert.equal(caLevel(tenYears, 90 * 86400, 2500 * day), 'warning', 'a 10-year CA warns with 3.3 years left');
});

test('certificate manager: a revoked pair and a pair the operator asked to renew are replaced with new keys', async () => {
  let clock = T0;
  const { ca } = await CertificateAuthority.create('cluster CA', new Date(clock - 3600_000));
  const stateDir = await tmp();
  const slot: CertificateSlot = { id: 'client-replicator', usage: 'client', commonName: 'replicator', dnsNames: [], ipAddresses: [] };
  const keys: string[] = [];
  const manager = new CertificateManager({
    stateDir,
    owner: { uid: process.getuid!(), gid: process.getgid!() },
    now: () => clock,
    schedule: new RenewalSchedule(seededRandom(5)),
    log: pino({ level: 'silent' }),
    requestCertificate: async (req) => {
      const csr = readCsr(req.csr);
      keys.push(csr.publicKeyPem);
      const issued = ca.issue({ publicKey: pub(csr.publicKeyPem), commonName: slot.commonName, usage: 'client', lifetimeSeconds: 3600, now: new Date(clock) });
      return { certificate: issued.pem, serial: issued.serial, notAfter: issued.notAfter.toISOString() };
    },
  });
  const desired = { certificates: [slot], caBundle: ca.certPem, crl: null } as unknown as NodeDesired;
  const first = await manager.ensure(desired, { online: true });
  const s1 = first.installed[0]!.serial;
  assert.equal(manager.nextRenewalAt! > clock && manager.nextRenewalAt! <= clock + 2400_000, true, 'renewal scheduled at about 2/3 of the hour');
  assert.equal(manager.earliestExpiry, first.installed[0] && Date.parse(first.installed[0].notAfter));
  clock += 1000;
  // Revoked: not used any more, a new key is made and a new certificate requested.
  const crl = ca.issueCrl({ revoked: [{ serial: s1, revokedAt: new Date(clock) }], number: 1, thisUpdate: new Date(clock - 60_000), nextUpdate: new Date(clock + 86400_000) });
  const second = await manager.ensure({ ...desired, crl }, { online: true });
  const s2 = second.installed[0]!.serial;
  assert.notEqual(s2, s1);
  assert.deepEqual(second.issued, ['client-replicator']);
  // Offline with only the revoked pair left would still use it (nothing better); here s2 is used.
  assert.equal((await manager.ensure({ ...desired, crl }, { online: false })).installed[0]!.serial, s2);
  // Renewal requested by the operator: replaced once, then left alone.
  clock += 1000;
  const third = await manager.ensure({ ...desired, crl, renewSerials: [s2.toUpperCase()] }, { online: true });
  const s3 = third.installed[0]!.serial;
  assert.notEqual(s3, s2);
  const fourth = await manager.ensure({ ...desired, crl, renewSerials: [s2] }, { online: true });
  assert.equal(fourth.installed[0]!.serial, s3);
  assert.deepEqual(fourth.issued, []);
  assert.equal(new Set(keys).size, 3, 'a new key every time');
  const key3 = await readFile(third.installed[0]!.keyPath, 'utf8');
  assert.ok(key3.includes('PRIVATE KEY'));
});

test('short lifetimes: a 2-minute certificate is back-dated 6 s, not 5 min, so its renewal falls after its issue', async () => {
  const { ca } = await CertificateAuthority.create('short CA', new Date(T0 - 3600_000));
  const { generateRsaKey } = await import('../../shared/crypto/keys.ts');
  const key = (await generateRsaKey()).privateKeyPem;
  const issued = ca.issue({ publicKey: pub(key), commonName: 'x', usage: 'client', lifetimeSeconds: 120, now: new Date(T0) });
  assert.equal(issued.notBefore.getTime(), T0 - 6000);
  assert.equal(issued.notAfter.getTime(), T0 + 120_000);
  const schedule = new RenewalSchedule(seededRandom(1));
  const at = schedule.renewAt(issued.serial, issued).getTime();
  assert.ok(at > T0 + 60_000 && at < T0 + 80_000, `renewal ${(at - T0) / 1000}s after issue`);
  const long = ca.issue({ publicKey: pub(key), commonName: 'x', usage: 'client', lifetimeSeconds: 90 * 86400, now: new Date(T0) });
  assert.equal(long.notBefore.getTime(), T0 - 300_000, 'long lifetimes keep the 5-minute back-dating');
  // No leaf outlives its CA.
  const { ca: old } = await CertificateAuthority.create('old CA', new Date(T0 - 3600_000), 7200);
  assert.equal(old.issue({ publicKey: pub(key), commonName: 'x', usage: 'client', lifetimeSeconds: 86400, now: new Date(T0) }).notAfter.getTime(), old.notAfter.getTime());
});
