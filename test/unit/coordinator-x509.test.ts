// X.509 helpers (shared/crypto/x509.ts, keys.ts, csr.ts), the CA built on them, secrets at rest and join token text.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CertificateAuthority, randomSerial } from '../../coordinator/ca/ca.ts';
import { SecretBox } from '../../coordinator/store/secrets.ts';
import { canonicalJson, parseIdentityUri } from '../../coordinator/service.ts';
import { encodeJoinToken, parseJoinToken } from '../../shared/contract/join-token.ts';

const decodeJoinToken = (t: string) => { const r = parseJoinToken(t); return r.ok ? r.payload : null; };
import { certInfo, certMatchesKey, normaliseIp, splitPemBundle, verifiesAgainst } from '../../shared/crypto/x509.ts';
import { createCsr, readCsr } from '../../shared/crypto/csr.ts';
import { generateRsaKey } from '../../shared/crypto/keys.ts';

const now = new Date('2030-01-01T00:00:00Z');
const caP = CertificateAuthority.create('unit CA', new Date());
const otherP = CertificateAuthority.create('unit CA', new Date()); // same name, another key

function openssl(args: string[], files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'pgaccord-x509-'));
  try {
    for (const [name, content] of Object.entries(files)) writeFileSync(join(dir, name), content);
    return execFileSync('openssl', args, { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('createCsr makes a CSR openssl verifies; readCsr returns its key and CN', async () => {
  const { privateKeyPem } = await generateRsaKey();
  assert.ok(privateKeyPem.startsWith(`-----BEGIN ${'PRIVATE'} KEY-----`), 'PKCS#8 PEM');
  const csr = createCsr(privateKeyPem, 'node_1, "quoted"');
  openssl(['req', '-in', 'r.csr', '-verify', '-noout'], { 'r.csr': csr }); // throws if openssl refuses it
  const info = readCsr(csr);
  assert.equal(info.commonName, 'node_1, "quoted"');
  assert.match(info.publicKeyPem, /^-----BEGIN PUBLIC KEY-----/);
  assert.throws(() => readCsr('not a csr'), /CSR cannot be parsed/);
  assert.doesNotMatch(csr, /\r/);
  const der = Buffer.from(csr.replace(/-----[^-]+-----|\s/g, ''), 'base64');
  der[der.length - 1]! ^= 0x01; // one bit of the signature
  const tampered = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
  assert.throws(() => readCsr(tampered), /does not verify/);
});

test('the CA issues what its caller decides; openssl agrees; certInfo reads it back', async () => {
  const { ca } = await caP;
  const { privateKeyPem } = await generateRsaKey();
  const csr = readCsr(createCsr(privateKeyPem, 'evil'));
  const { publicKey } = await import('../../shared/crypto/csr.ts').then((m) => m.readCsrKey(createCsr(privateKeyPem, 'evil')));
  assert.ok(csr.publicKeyPem);
  const issued = ca.issue({ publicKey, commonName: 'db1.example.com', dnsNames: ['db1.example.com'], ipAddresses: ['10.0.0.1', '::1'], usage: 'server', lifetimeSeconds: 90 * 86400, now: new Date() });
  const text = openssl(['x509', '-in', 'c.crt', '-noout', '-text'], { 'c.crt': issued.pem });
  assert.match(text, /DNS:db1\.example\.com, IP Address:10\.0\.0\.1, IP Address:0:0:0:0:0:0:0:1/);
  assert.match(text, /X509v3 Authority Key Identifier/);
  assert.match(text, /X509v3 Subject Key Identifier/);
  const verified = openssl(['verify', '-CAfile', 'ca.crt', '-purpose', 'sslserver', 'c.crt'], { 'ca.crt': ca.certPem, 'c.crt': issued.pem });
  assert.match(verified, /c\.crt: OK/);
  const info = certInfo(issued.pem);
  assert.equal(info.commonName, 'db1.example.com');
  assert.deepEqual(info.dnsNames, ['db1.example.com']);
  assert.deepEqual(info.ipAddresses, ['10.0.0.1', '::1']);
  assert.equal(info.issuerCommonName, 'unit CA');
  assert.equal(info.serial, issued.serial);
  assert.deepEqual(info.extKeyUsage, ['serverAuth']);
  assert.equal(info.isCa, false);
  assert.match(info.fingerprint256, /^[0-9a-f]{64}$/);
  assert.ok(certMatchesKey(issued.pem, privateKeyPem));
  assert.ok(!certMatchesKey(issued.pem, (await generateRsaKey()).privateKeyPem));
  assert.ok(verifiesAgainst(issued.pem, ca.certPem));
  const { ca: other } = await otherP;
  assert.ok(!verifiesAgainst(issued.pem, other.certPem), 'same CA name, another key');
  assert.ok(verifiesAgainst(issued.pem, other.certPem + ca.certPem), 'found in a bundle');
  assert.deepEqual(splitPemBundle(other.certPem + '\n' + ca.certPem), [other.certPem, ca.certPem]);
});

test('no leaf outlives its CA; notBefore is backdated five minutes; serials are positive 16 bytes', async () => {
  const { privateKeyPem } = await generateRsaKey();
  const { readCsrKey } = await import('../../shared/crypto/csr.ts');
  const { publicKey } = readCsrKey(createCsr(privateKeyPem, 'x'));
  const short = await CertificateAuthority.create('short CA', now, 86400);
  const leaf = short.ca.issue({ publicKey, commonName: 'pgd_replication', usage: 'client', lifetimeSeconds: 90 * 86400, now });
  assert.equal(leaf.notAfter.getTime(), short.ca.notAfter.getTime());
  assert.equal(leaf.notBefore.getTime(), now.getTime() - 300_000);
  assert.deepEqual(certInfo(leaf.pem).extKeyUsage, ['clientAuth']);
  assert.throws(() => short.ca.issue({ publicKey, commonName: 'x', usage: 'client', lifetimeSeconds: 60, now: new Date(now.getTime() + 2 * 86400_000) }), /expired/);
  for (let i = 0; i < 200; i++) {
    const s = randomSerial();
    assert.match(s, /^[0-9a-f]{32}$/);
    const first = Number.parseInt(s.slice(0, 2), 16);
    assert.ok(first >= 1 && first < 0x80);
  }
  assert.equal(randomSerial(() => Buffer.alloc(16)).slice(0, 2), '01');
  assert.equal(randomSerial(() => Buffer.alloc(16, 0xff)).slice(0, 2), '7f');
});

test('normaliseIp gives one text per address', () => {
  assert.equal(normaliseIp('0:0:0:0:0:0:0:1'), '::1');
  assert.equal(normaliseIp('FE80:0:0:0:0:0:0:1'), 'fe80::1');
  assert.equal(normaliseIp('10.1.2.3'), '10.1.2.3');
});

test('SecretBox: round trip, bound to its context, refuses another key or a tampered text', () => {
  const key = Buffer.alloc(32, 7);
  const box = new SecretBox(key);
  const sealed = box.seal('hunter2', 'role-password:sales/app');
  assert.ok(!sealed.includes('hunter2'));
  assert.notEqual(box.seal('hunter2', 'x'), box.seal('hunter2', 'x'), 'random IV');
  assert.equal(box.open(sealed, 'role-password:sales/app'), 'hunter2');
  assert.throws(() => box.open(sealed, 'role-password:other/app'), /does not decrypt/);
  assert.throws(() => new SecretBox(Buffer.alloc(32, 8)).open(sealed, 'role-password:sales/app'), /does not decrypt/);
  const raw = Buffer.from(sealed.slice(3), 'base64');
  raw[raw.length - 1]! ^= 1;
  assert.throws(() => box.open(`v1:${raw.toString('base64')}`, 'role-password:sales/app'), /does not decrypt/);
  assert.throws(() => new SecretBox(Buffer.alloc(16)), /32 bytes/);
  assert.equal(JSON.stringify({ box }), '{"box":"[SecretBox]"}');
});

test('join token text and identity URIs parse back exactly; junk does not', () => {
  const payload = { v: 1 as const, url: 'https://c:7432', cluster: 'sales', node: 'node-1', id: 'abc', secret: 's3cret', caFingerprint: 'ff'.repeat(32) };
  const token = encodeJoinToken(payload);
  assert.match(token, /^pga1\.[A-Za-z0-9_-]+$/);
  assert.deepEqual(decodeJoinToken(token), payload);
  for (const junk of ['', 'pga1.', 'pga1.e30', 'xxx', `pga1.${Buffer.from('{"v":2}').toString('base64url')}`, `pga1.${Buffer.from(JSON.stringify({ ...payload, node: 5 })).toString('base64url')}`]) {
    assert.equal(decodeJoinToken(junk), null, junk);
  }
  assert.deepEqual(parseIdentityUri('pgaccord://agent/sales/node-1'), { cluster: 'sales', node: 'node-1' });
  for (const bad of ['pgaccord://agent/sales/node-1/x', 'pgaccord://agent/sales', 'pgaccord://agent/Sales/n', 'https://agent/sales/n', 'pgaccord://agent/a,b/n']) {
    assert.equal(parseIdentityUri(bad), null, bad);
  }
  assert.equal(canonicalJson({ b: 1, a: [{ d: 2, c: undefined }] }), '{"a":[{"d":2}],"b":1}');
});

// --- issue 14: CA path length, key policy on CSRs ------------------------------------------------

test('a new CA is basicConstraints critical, CA:TRUE, pathlen:0: openssl refuses an intermediate signed by it', async () => {
  const { ca, keyPem } = await CertificateAuthority.create('pathlen CA', new Date());
  const text = openssl(['x509', '-in', 'ca.crt', '-noout', '-text'], { 'ca.crt': ca.certPem });
  assert.match(text, /X509v3 Basic Constraints: critical\s+CA:TRUE, pathlen:0/);
  // An intermediate CA certified by it (as a stolen CA key or a signing bug would make one), and a
  // leaf under that intermediate: the chain must not verify.
  const { generateKeyPairSync } = await import('node:crypto');
  const pem = (k: import('node:crypto').KeyObject) => k.export({ type: 'pkcs8', format: 'pem' }).toString();
  const interKey = pem(generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey);
  const leafKey = pem(generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey);
  const dir = mkdtempSync(join(tmpdir(), 'pgaccord-pathlen-'));
  try {
    const files: Record<string, string> = { 'ca.crt': ca.certPem, 'ca.key': keyPem, 'inter.key': interKey, 'leaf.key': leafKey, 'inter.ext': 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n', 'leaf.ext': 'basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n' };
    for (const [name, content] of Object.entries(files)) writeFileSync(join(dir, name), content, { mode: 0o600 });
    const run = (args: string[]) => execFileSync('openssl', args, { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    run(['req', '-new', '-key', 'inter.key', '-subj', '/CN=rogue intermediate', '-out', 'inter.csr']);
    run(['x509', '-req', '-in', 'inter.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '1', '-extfile', 'inter.ext', '-out', 'inter.crt']);
    run(['req', '-new', '-key', 'leaf.key', '-subj', '/CN=replicator', '-out', 'leaf.csr']);
    run(['x509', '-req', '-in', 'leaf.csr', '-CA', 'inter.crt', '-CAkey', 'inter.key', '-CAcreateserial', '-days', '1', '-extfile', 'leaf.ext', '-out', 'leaf.crt']);
    let out = '';
    try {
      out = run(['verify', '-CAfile', 'ca.crt', '-untrusted', 'inter.crt', 'leaf.crt']);
    } catch (e) {
      out = String((e as { stdout?: string }).stdout ?? '') + String((e as { stderr?: string }).stderr ?? '');
    }
    assert.match(out, /path length constraint exceeded/, out);
    assert.doesNotMatch(out, /leaf\.crt: OK/);
    // A leaf the CA signs directly still verifies.
    assert.match(run(['verify', '-CAfile', 'ca.crt', 'inter.crt']), /inter\.crt: OK/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('CSR key policy: RSA >= 2048 with e = 65537 or EC P-256/P-384; anything else refused with E_CSR_KEY_POLICY', async () => {
  const { generateKeyPairSync } = await import('node:crypto');
  const { readCsrKey } = await import('../../shared/crypto/csr.ts');
  const rsa = (bits: number, e = 65537) => generateKeyPairSync('rsa', { modulusLength: bits, publicExponent: e }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const ec = (curve: string) => generateKeyPairSync('ec', { namedCurve: curve }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const ecCsr = (keyPem: string) => openssl(['req', '-new', '-key', 'k.pem', '-subj', '/CN=x', '-sha256'], { 'k.pem': keyPem });
  const refused: [string, string][] = [
    ['RSA 512', createCsr(rsa(512), 'x')],
    ['RSA 1024', createCsr(rsa(1024), 'x')],
    ['RSA 2048, e = 3', createCsr(rsa(2048, 3), 'x')],
    ['RSA 2048, e = 65539', createCsr(rsa(2048, 65539), 'x')],
    ['EC secp256k1', ecCsr(ec('secp256k1'))],
    ['EC P-521', ecCsr(ec('P-521'))],
    ['Ed25519', openssl(['req', '-new', '-key', 'k.pem', '-subj', '/CN=x'], { 'k.pem': generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() })],
  ];
  for (const [name, csr] of refused) {
    assert.throws(() => readCsrKey(csr), (e: Error & { code?: string }) => e.code === 'E_CSR_KEY_POLICY' && /RSA of at least 2048 bits with exponent 65537, or EC P-256\/P-384/.test(e.message), name);
  }
  const { ca } = await caP;
  for (const [name, keyPem, csr] of [['RSA 2048', rsa(2048), null], ['RSA 3072', rsa(3072), null], ['EC P-256', ec('P-256'), null], ['EC P-384', ec('P-384'), null]] as [string, string, null][]) {
    const csrPem = csr ?? (name.startsWith('RSA') ? createCsr(keyPem, 'x') : ecCsr(keyPem));
    const info = readCsrKey(csrPem);
    const leaf = ca.issue({ publicKey: info.publicKey, commonName: 'db1.example.com', dnsNames: ['db1.example.com'], usage: 'server', lifetimeSeconds: 86400, now: new Date() });
    assert.match(openssl(['verify', '-CAfile', 'ca.crt', '-purpose', 'sslserver', 'c.crt'], { 'ca.crt': ca.certPem, 'c.crt': leaf.pem }), /c\.crt: OK/, name);
    assert.ok(certMatchesKey(leaf.pem, keyPem), `${name}: the certificate carries the CSR's key`);
    const text = openssl(['x509', '-in', 'c.crt', '-noout', '-text'], { 'c.crt': leaf.pem });
    // keyEncipherment is an RSA usage (RFC 5480): an EC leaf only signs.
    assert.match(text, name.startsWith('RSA') ? /Digital Signature, Key Encipherment/ : /X509v3 Key Usage: critical\s+Digital Signature\n/, name);
    assert.match(text, /X509v3 Subject Key Identifier/);
  }
  // An EC CSR whose signature was made by another key does not verify.
  const a = ecCsr(ec('P-256'));
  const b = ecCsr(ec('P-256'));
  const der = (pem: string) => Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
  const forge = (await import('node-forge')).default;
  const seqA = forge.asn1.fromDer(der(a).toString('binary'));
  const seqB = forge.asn1.fromDer(der(b).toString('binary'));
  (seqA.value as unknown[])[2] = (seqB.value as unknown[])[2];
  const mixed = `-----BEGIN CERTIFICATE REQUEST-----\n${Buffer.from(forge.asn1.toDer(seqA).getBytes(), 'binary').toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
  assert.throws(() => readCsrKey(mixed), /does not verify/);
});
