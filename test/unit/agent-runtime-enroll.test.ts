// Join token decoding and coordinator CA pinning: the agent trusts only the CA whose
// fingerprint the token carries, fetched from a real local HTTPS server.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:https';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import forge from 'node-forge';
import { CertificateAuthority } from '../../coordinator/ca/ca.ts';
import { checkPinnedCa, CoordinatorClient, CoordinatorError, decodeJoinToken, fetchPinnedCa } from '../../agent/runtime/client.ts';
import { enroll, loadIdentity, pruneIdentities, renewIdentity } from '../../agent/runtime/identity.ts';
import { fingerprint256 } from '../../shared/crypto/x509.ts';
import { readCsrKey } from '../../shared/crypto/csr.ts';
import { generateRsaKey } from '../../shared/crypto/keys.ts';

const encode = (payload: unknown) => `pga1.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`;
const good = { v: 1, url: 'https://127.0.0.1:7432', cluster: 'sales', node: 'node-1', id: 'tid', secret: 's3cret', caFingerprint: 'ab'.repeat(32) };

const servers: Server[] = [];
const dirs: string[] = [];
after(async () => {
  for (const s of servers) s.close();
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function coordinatorCa() {
  const { ca } = await CertificateAuthority.create('test coordinator CA', new Date());
  const { privateKeyPem } = await generateRsaKey();
  const pub = forge.pki.publicKeyFromPem((await import('node:crypto')).createPublicKey(privateKeyPem).export({ type: 'spki', format: 'pem' }).toString());
  const server = ca.issue({ publicKey: pub, commonName: '127.0.0.1', ipAddresses: ['127.0.0.1'], usage: 'server', lifetimeSeconds: 3600, now: new Date() });
  return { ca, serverKey: privateKeyPem, serverCert: server.pem };
}

/** A tiny HTTPS endpoint that plays the coordinator's enrolment routes. */
async function fakeCoordinator(opts: { servedCa: string; serverKey: string; serverCert: string; sign?: (csrPem: string) => string; realCa: string }) {
  const requests: string[] = [];
  const srv = createServer({ key: opts.serverKey, cert: opts.serverCert, requestCert: true, rejectUnauthorized: false }, (req, res) => {
    requests.push(`${req.method} ${req.url}`);
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      if (req.url === '/v1/coordinator-ca.crt') {
        res.writeHead(200, { 'content-type': 'application/x-pem-file' }).end(opts.servedCa);
      } else if (req.url === '/v1/agent/csr' && opts.sign) {
        const { csr, slot } = JSON.parse(body) as { csr: string; slot: string };
        const peer = (req.socket as import('node:tls').TLSSocket).getPeerCertificate();
        const certificate = opts.sign(csr);
        res.writeHead(slot === 'identity' && peer && peer.serialNumber ? 200 : 401, { 'content-type': 'application/json' }).end(JSON.stringify({ certificate, serial: 'x', notAfter: new Date().toISOString() }));
      } else if (req.url === '/v1/agent/enroll' && opts.sign) {
        const { csr } = JSON.parse(body) as { csr: string };
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ cluster: 'sales', node: 'node-1', certificate: opts.sign(csr), coordinatorCa: opts.realCa }));
      } else res.writeHead(404).end('{}');
    });
  });
  servers.push(srv);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return { url: `https://127.0.0.1:${(srv.address() as { port: number }).port}`, requests };
}

test('join token: decodes the pga1 format and refuses anything else without echoing it', () => {
  assert.deepEqual(decodeJoinToken(encode(good)), good);
  const cases: [string, RegExp][] = [
    ['nope', /must start with "pga1."/],
    ['pga1.***', /not base64url/],
    [`pga1.${Buffer.from('not json').toString('base64url')}`, /does not decode to JSON/],
    [encode({ ...good, v: 2 }), /payload is invalid at \/v/],
    [encode({ ...good, secret: undefined }), /payload is invalid/],
    [encode({ ...good, caFingerprint: 'xyz' }), /not a sha256 hex digest/],
  ];
  for (const [token, msg] of cases) {
    assert.throws(() => decodeJoinToken(token), (e: unknown) => e instanceof CoordinatorError && e.code === 'E_TOKEN' && msg.test(e.message) && !e.message.includes('s3cret'));
  }
});

test('pinning: the CA is accepted only with the fingerprint from the token', async () => {
  const { ca } = await coordinatorCa();
  const fp = fingerprint256(ca.certPem);
  assert.equal(fingerprint256(ca.certPem), fp);
  assert.equal(fingerprint256(checkPinnedCa(ca.certPem, fp.toUpperCase().match(/../g)!.join(':'))), fp);
  assert.throws(() => checkPinnedCa(ca.certPem, 'cd'.repeat(32)), (e: unknown) => e instanceof CoordinatorError && e.code === 'E_PIN' && /refusing/.test(e.message));
  assert.throws(() => checkPinnedCa(ca.certPem + ca.certPem, fp), /expected one coordinator CA certificate, got 2/);
  assert.throws(() => checkPinnedCa('garbage', fp), /got 0/);
});

test('pinning over HTTPS: an impostor CA is refused and no key or identity is stored', async () => {
  const real = await coordinatorCa();
  const impostor = await coordinatorCa();
  // The impostor serves its own CA; the token pins the real one.
  const fake = await fakeCoordinator({ servedCa: impostor.ca.certPem, serverKey: impostor.serverKey, serverCert: impostor.serverCert, realCa: real.ca.certPem });
  await assert.rejects(fetchPinnedCa(fake.url, fingerprint256(real.ca.certPem)), (e: unknown) => e instanceof CoordinatorError && e.code === 'E_PIN');
  const stateDir = await mkdtemp(join(tmpdir(), 'pgaccord-agent-unit-'));
  dirs.push(stateDir);
  const token = encode({ ...good, url: fake.url, caFingerprint: fingerprint256(real.ca.certPem) });
  await assert.rejects(enroll({ stateDir, coordinatorUrl: fake.url, cluster: 'sales', node: 'node-1', joinToken: token, now: Date.now }), /does not match the join token/);
  assert.deepEqual(fake.requests, ['GET /v1/coordinator-ca.crt', 'GET /v1/coordinator-ca.crt'], 'the token must never be sent to an unpinned coordinator');
  assert.deepEqual(await readdir(stateDir), []);
  assert.equal(await loadIdentity(stateDir), null);
});

test('enrolment: key made here 0600, only a CSR leaves, identity stored and reloadable', async () => {
  const real = await coordinatorCa();
  let sentCsr = '';
  const fake = await fakeCoordinator({
    servedCa: real.ca.certPem,
    serverKey: real.serverKey,
    serverCert: real.serverCert,
    realCa: real.ca.certPem,
    sign: (csrPem) => {
      sentCsr = csrPem;
      // As the coordinator does: the checked CSR's key (the agent's identity key is P-256).
      return real.ca.issue({ publicKey: readCsrKey(csrPem).publicKey, commonName: 'agent sales/node-1', usage: 'client', lifetimeSeconds: 3600, now: new Date() }).pem;
    },
  });
  const stateDir = await mkdtemp(join(tmpdir(), 'pgaccord-agent-unit-'));
  dirs.push(stateDir);
  const token = encode({ ...good, url: fake.url, caFingerprint: fingerprint256(real.ca.certPem) });
  await assert.rejects(enroll({ stateDir, coordinatorUrl: fake.url, cluster: 'sales', node: 'node-2', joinToken: token, now: Date.now }), /is for sales\/node-1, not sales\/node-2/);
  const stored = await enroll({ stateDir, coordinatorUrl: fake.url, cluster: 'sales', node: 'node-1', joinToken: token, now: Date.now });
  assert.match(sentCsr, /BEGIN CERTIFICATE REQUEST/);
  assert.doesNotMatch(sentCsr, /PRIVATE KEY/);
  const files = await readdir(join(stateDir, 'identity'));
  const keyFile = files.find((f) => f.endsWith('.key'))!;
  assert.equal(keyFile, `identity-${stored.identity.info.serial}.key`);
  assert.equal((await stat(join(stateDir, 'identity', keyFile))).mode & 0o777, 0o600);
  assert.equal((await stat(join(stateDir, 'identity'))).mode & 0o777, 0o700);
  assert.ok(!files.includes('pending.key'));
  const again = await loadIdentity(stateDir);
  assert.equal(again?.identity.info.serial, stored.identity.info.serial);
  assert.equal(again?.enrollment.node, 'node-1');
});

test('identity renewal over mTLS: new key here, new pair stored, the newest wins, old versions pruned', async () => {
  const real = await coordinatorCa();
  const fake = await fakeCoordinator({
    servedCa: real.ca.certPem,
    serverKey: real.serverKey,
    serverCert: real.serverCert,
    realCa: real.ca.certPem,
    sign: (csrPem) => real.ca.issue({ publicKey: readCsrKey(csrPem).publicKey, commonName: 'pgaccord-agent', usage: 'client', lifetimeSeconds: 7200, now: new Date() }).pem,
  });
  const stateDir = await mkdtemp(join(tmpdir(), 'pgaccord-agent-unit-'));
  dirs.push(stateDir);
  const token = encode({ ...good, url: fake.url, caFingerprint: fingerprint256(real.ca.certPem) });
  const stored = await enroll({ stateDir, coordinatorUrl: fake.url, cluster: 'sales', node: 'node-1', joinToken: token, now: Date.now });
  const client = new CoordinatorClient({ baseUrl: fake.url, caPem: stored.caPem, identity: stored.identity });
  try {
    const fresh = await renewIdentity(stateDir, client, stored.caPem, 'sales/node-1', Date.now);
    assert.notEqual(fresh.info.serial, stored.identity.info.serial);
    assert.notEqual(fresh.keyPem, stored.identity.keyPem, 'a new key for every renewal');
    assert.equal((await loadIdentity(stateDir))?.identity.info.serial, fresh.info.serial, 'the later notAfter wins');
    await pruneIdentities(stateDir, fresh.info.serial);
    const left = (await readdir(join(stateDir, 'identity'))).filter((f) => f.startsWith('identity-')).sort();
    assert.deepEqual(left, [`identity-${fresh.info.serial}.crt`, `identity-${fresh.info.serial}.key`]);
    assert.equal((await stat(join(stateDir, 'identity', `identity-${fresh.info.serial}.key`))).mode & 0o777, 0o600);
  } finally {
    await client.close();
  }
});
