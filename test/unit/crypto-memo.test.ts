// Certificates and CRLs are parsed and checked once per distinct input (shared/crypto/memo.ts):
// an agent's pass over unchanged files parses nothing again, every caller gets its own copy, and
// a different input is judged on its own.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CertificateAuthority } from '../../coordinator/ca/ca.ts';
import { createCsr, readCsrKey } from '../../shared/crypto/csr.ts';
import { generateRsaKey } from '../../shared/crypto/keys.ts';
import { certInfo, certMatchesKey, verifiesAgainst, x509Memo } from '../../shared/crypto/x509.ts';
import { crlInfo, crlMemo, crlSignedBy } from '../../shared/crypto/crl.ts';
import { Memo } from '../../shared/crypto/memo.ts';
import { checkPair } from '../../agent/runtime/certs.ts';

const now = new Date();
const caP = CertificateAuthority.create('memo CA', now);
const otherP = CertificateAuthority.create('memo CA', now);

async function leaf(ca: CertificateAuthority, cn: string) {
  const { privateKeyPem } = await generateRsaKey();
  const { publicKey } = readCsrKey(createCsr(privateKeyPem, cn));
  const issued = ca.issue({ publicKey, commonName: cn, dnsNames: [cn], ipAddresses: ['127.0.0.1'], usage: 'server', lifetimeSeconds: 86400, now });
  return { certPem: issued.pem, keyPem: privateKeyPem, serial: issued.serial };
}

const misses = () => [x509Memo.info.misses, x509Memo.pairs.misses, x509Memo.chains.misses];

test('checking an unchanged pair again parses and verifies nothing again', async () => {
  const { ca } = await caP;
  const pair = await leaf(ca, 'node-1');
  const slot = { id: 'server', commonName: 'node-1', dnsNames: ['node-1'], ipAddresses: ['127.0.0.1'], usage: 'server' as const };
  const args = { ...pair, slot, caBundle: ca.certPem, now: Date.now() };
  assert.equal(checkPair(args as Parameters<typeof checkPair>[0]), null);
  const before = misses();
  for (let i = 0; i < 3; i++) assert.equal(checkPair(args as Parameters<typeof checkPair>[0]), null);
  certInfo(pair.certPem);
  assert.deepEqual(misses(), before, 'no certificate parsed, no key or chain checked again');
});

test('each caller gets its own copy of what a certificate says', async () => {
  const { ca } = await caP;
  const { certPem } = await leaf(ca, 'node-2');
  const a = certInfo(certPem);
  const expected = structuredClone(a);
  a.dnsNames.push('evil');
  a.ipAddresses.length = 0;
  a.extKeyUsage.push('codeSigning');
  a.notAfter.setTime(0);
  a.commonName = 'evil';
  assert.deepEqual(certInfo(certPem), expected);
});

test('another key, another CA, another certificate: each judged on its own', async () => {
  const { ca } = await caP;
  const { ca: other } = await otherP;
  const p = await leaf(ca, 'node-3');
  const q = await leaf(ca, 'node-4');
  const foreign = await leaf(other, 'node-3');
  assert.equal(certMatchesKey(p.certPem, p.keyPem), true);
  assert.equal(certMatchesKey(p.certPem, q.keyPem), false);
  assert.equal(certMatchesKey(q.certPem, q.keyPem), true);
  assert.equal(verifiesAgainst(p.certPem, ca.certPem), true);
  assert.equal(verifiesAgainst(p.certPem, other.certPem), false, 'same CA name, another key');
  assert.equal(verifiesAgainst(foreign.certPem, ca.certPem), false);
  assert.equal(verifiesAgainst(foreign.certPem, `${ca.certPem}${other.certPem}`), true);
  assert.equal(certInfo(p.certPem).commonName, 'node-3');
  assert.equal(certInfo(q.certPem).commonName, 'node-4');
  assert.notEqual(certInfo(p.certPem).serial, certInfo(foreign.certPem).serial);
  assert.throws(() => certInfo('not a certificate'), /not a valid certificate/);
  assert.throws(() => certInfo('not a certificate'), /not a valid certificate/, 'an error is not kept as a result');
});

test('a CRL is read and its signature checked once; each caller gets its own copy', async () => {
  const { ca } = await caP;
  const { ca: other } = await otherP;
  const crl = ca.issueCrl({ revoked: [{ serial: '0a1b', revokedAt: now }], number: 7, thisUpdate: new Date(now.getTime() - 60_000), nextUpdate: new Date(now.getTime() + 86400_000) });
  const first = crlInfo(crl);
  assert.equal(crlSignedBy(crl, ca.certPem), true);
  assert.equal(crlSignedBy(crl, other.certPem), false);
  const before = [crlMemo.info.misses, crlMemo.signatures.misses];
  first.revoked.push({ serial: 'ff', revokedAt: now });
  first.thisUpdate.setTime(0);
  const again = crlInfo(crl);
  assert.deepEqual(again.revoked.map((r) => r.serial), ['0a1b']);
  assert.equal(again.number, 7n);
  assert.ok(again.thisUpdate.getTime() > 0);
  assert.equal(crlSignedBy(crl, ca.certPem), true);
  assert.equal(crlSignedBy(crl, other.certPem), false);
  assert.deepEqual([crlMemo.info.misses, crlMemo.signatures.misses], before);
});

test('the memo keeps at most its limit, the least recently used evicted', () => {
  const m = new Memo<number>(2);
  let runs = 0;
  const f = (k: string) => m.get([k], () => ++runs);
  f('a'); f('b'); f('a'); f('c'); // b is the least recently used
  assert.equal(m.size, 2);
  assert.equal(runs, 3);
  f('a'); assert.equal(runs, 3, 'a kept');
  f('b'); assert.equal(runs, 4, 'b evicted');
  assert.notEqual(m.get(['ab', 'c'], () => -1), m.get(['a', 'bc'], () => -2), 'inputs framed by length');
});
