// ECDSA P-256 keys (issue 13 item 7; issue 11 item 4): CSRs made for P-256 keys as for RSA, a
// cluster's node certificates of the key type its spec names (tls.keyType), the agent's
// certificate manager making keys of that type, the coordinator's own HTTPS key type.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { CertificateManager } from '../../agent/runtime/certs.ts';
import { RenewalSchedule } from '../../agent/runtime/backoff.ts';
import { CertificateAuthority } from '../../coordinator/ca/ca.ts';
import { FILES, openDataDir } from '../../coordinator/store/datadir.ts';
import { compileCluster } from '../../coordinator/cluster/compile.ts';
import type { ClusterSpec, NodeDesired } from '../../shared/contract/schema.ts';
import { validateSpec } from '../../coordinator/cluster/spec.ts';
import { certInfo } from '../../shared/crypto/x509.ts';
import { createCsr, readCsrKey } from '../../shared/crypto/csr.ts';
import { generateKey } from '../../shared/crypto/keys.ts';

const dirs: string[] = [];
after(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

const keyKind = (pem: string) => {
  const k = createPrivateKey(pem);
  return k.asymmetricKeyType === 'ec' ? `ec ${k.asymmetricKeyDetails?.namedCurve}` : `${k.asymmetricKeyType} ${k.asymmetricKeyDetails?.modulusLength}`;
};

function opensslVerifyCsr(csr: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'pgaccord-csr-'));
  try {
    writeFileSync(join(dir, 'r.csr'), csr);
    return execFileSync('openssl', ['req', '-in', 'r.csr', '-noout', '-verify', '-text'], { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('generateKey makes RSA 2048 and P-256 keys; createCsr makes a CSR for either that openssl verifies and the key policy accepts', async () => {
  for (const [type, kind, sigAlg] of [['rsa-2048', 'rsa 2048', /sha256WithRSAEncryption/], ['ecdsa-p256', 'ec prime256v1', /ecdsa-with-SHA256/]] as const) {
    const { privateKeyPem } = await generateKey(type);
    assert.equal(keyKind(privateKeyPem), kind);
    const csr = createCsr(privateKeyPem, 'node-1 ünïcode');
    const text = opensslVerifyCsr(csr);
    assert.match(text, sigAlg, type);
    assert.match(text, /Subject: CN\s?=\s?node-1 ünïcode|Subject: CN\s?=\s?node-1 \\C3\\BC/, type);
    const info = readCsrKey(csr);
    assert.equal(info.publicKey.type, type === 'rsa-2048' ? 'rsa' : 'ec');
    assert.equal(info.commonName, 'node-1 ünïcode');
  }
  // A key the policy refuses still gets no CSR of its own making past the coordinator.
  const p521 = (await import('node:crypto')).generateKeyPairSync('ec', { namedCurve: 'P-521' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  assert.throws(() => readCsrKey(createCsr(p521, 'x')), (e: Error & { code?: string }) => e.code === 'E_CSR_KEY_POLICY');
});

const spec = (tls: Record<string, unknown>): unknown => ({
  name: 'ec', profile: 'pgd', auth: 'cert', tls,
  nodes: [
    { name: 'node-1', host: 'db1.example.com', address: '10.0.0.11', kind: 'peer' },
    { name: 'node-2', host: 'db2.example.com', address: '10.0.0.12', kind: 'peer' },
  ],
});

test('tls.keyType: ecdsa-p256 or rsa-2048 (the default); anything else refused; the nodes are told ecdsa-p256, the default is not written', () => {
  for (const keyType of ['ecdsa-p256', 'rsa-2048', undefined]) {
    const r = validateSpec(spec({ sslmode: 'verify-full', ...(keyType ? { keyType } : {}) }));
    assert.ok(r.ok, `${keyType}: ${JSON.stringify(!r.ok && r.errors)}`);
    const d = compileCluster({ spec: r.spec as ClusterSpec, generation: 1, credentials: {}, caBundle: '', crl: null }).get('node-1')!;
    if (keyType === 'ecdsa-p256') assert.equal(d.keyType, 'ecdsa-p256');
    else assert.equal('keyType' in d, false, 'an rsa-2048 cluster hands the same desired state as before');
  }
  for (const keyType of ['ecdsa-p384', 'rsa-1024', 'ed25519', 3]) {
    const r = validateSpec(spec({ sslmode: 'verify-full', keyType }));
    assert.equal(r.ok, false, String(keyType));
    assert.ok(!r.ok && r.errors.some((e) => e.field.startsWith('tls')), JSON.stringify(!r.ok && r.errors));
  }
});

test('the certificate manager makes keys of the cluster\'s type, and re-keys a pair of another type', async () => {
  const clock = Date.now();
  const { ca } = await CertificateAuthority.create('cluster CA', new Date(clock - 3600_000));
  const stateDir = await mkdtemp(join(tmpdir(), 'pgaccord-ec-'));
  dirs.push(stateDir);
  const slot = { id: 'server', usage: 'server' as const, commonName: 'db1.example.com', dnsNames: ['db1.example.com'], ipAddresses: [] };
  const manager = new CertificateManager({
    stateDir,
    owner: { uid: process.getuid!(), gid: process.getgid!() },
    now: () => clock,
    schedule: new RenewalSchedule(() => 0.5),
    log: pino({ level: 'silent' }),
    // As the coordinator does: the key from the checked CSR, everything else from the slot.
    requestCertificate: async (req) => {
      const issued = ca.issue({ publicKey: readCsrKey(req.csr).publicKey, commonName: slot.commonName, dnsNames: slot.dnsNames, usage: 'server', lifetimeSeconds: 86400, now: new Date(clock) });
      return { certificate: issued.pem, serial: issued.serial, notAfter: issued.notAfter.toISOString() };
    },
  });
  const desired = (keyType?: 'ecdsa-p256') => ({ certificates: [slot], caBundle: ca.certPem, crl: null, ...(keyType ? { keyType } : {}) }) as unknown as NodeDesired;
  const first = await manager.ensure(desired('ecdsa-p256'), { online: true });
  assert.deepEqual(first.errors, []);
  assert.equal(keyKind(await readFile(first.installed[0]!.keyPath, 'utf8')), 'ec prime256v1');
  assert.equal(new X509Certificate(await readFile(first.installed[0]!.certPath, 'utf8')).publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  // Same type: the pair stays.
  assert.deepEqual((await manager.ensure(desired('ecdsa-p256'), { online: true })).issued, []);
  // The cluster goes back to RSA: a new pair with an RSA 2048 key.
  const back = await manager.ensure(desired(), { online: true });
  assert.deepEqual(back.issued, ['server']);
  assert.equal(keyKind(await readFile(back.installed[0]!.keyPath, 'utf8')), 'rsa 2048');
});

test('the coordinator\'s HTTPS key: ECDSA P-256 by default, RSA 2048 when asked; a change of type makes a new key and certificate', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'pgaccord-dd-ec-'));
  dirs.push(dir);
  const first = await openDataDir(dir, ['127.0.0.1'], new Date());
  assert.equal(keyKind(first.serverKeyPem), 'ec prime256v1');
  assert.equal(new X509Certificate(first.serverCertPem).publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  assert.ok(new X509Certificate(first.serverCertPem).checkPrivateKey(createPrivateKey(first.serverKeyPem)));
  const again = await openDataDir(dir, ['127.0.0.1'], new Date());
  assert.equal(again.serverKeyPem, first.serverKeyPem, 'kept across restarts');
  const rsa = await openDataDir(dir, ['127.0.0.1'], new Date(), { tlsKeyType: 'rsa-2048' });
  assert.equal(keyKind(rsa.serverKeyPem), 'rsa 2048');
  assert.ok(new X509Certificate(rsa.serverCertPem).checkPrivateKey(createPrivateKey(rsa.serverKeyPem)), 'the certificate was made again for the new key');
  assert.equal(await readFile(join(dir, FILES.serverKey), 'utf8'), rsa.serverKeyPem);
  assert.equal(certInfo(rsa.serverCertPem).issuerCommonName, certInfo(first.caPem).commonName);
  assert.equal(rsa.caPem, first.caPem, 'the coordinator CA is untouched');
});
