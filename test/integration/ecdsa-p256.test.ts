// ECDSA P-256 end to end (issue 13 item 7), as root: the agent's own enrolment and identity
// renewal with P-256 keys against the real coordinator (itself on a P-256 HTTPS key), and a
// cluster with tls.keyType ecdsa-p256 whose server and client certificates, made by the agent's
// certificate manager and signed by the coordinator, are applied to a real PostgreSQL 15: libpq
// connects with sslmode=verify-full and a P-256 client certificate. Weak keys stay refused.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createPrivateKey, generateKeyPairSync } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { applyDesired } from '../../agent/apply/apply.ts';
import { RenewalSchedule } from '../../agent/runtime/backoff.ts';
import { CertificateManager } from '../../agent/runtime/certs.ts';
import { CoordinatorClient } from '../../agent/runtime/client.ts';
import { enroll, renewIdentity, type StoredIdentity } from '../../agent/runtime/identity.ts';
import type { ClusterSpec, NodeDesired } from '../../shared/contract/schema.ts';
import { certInfo } from '../../shared/crypto/x509.ts';
import { createCsr } from '../../shared/crypto/csr.ts';
import { agentFixture, psqlAs, ROLE, silentLogger } from '../helpers/agent-fixture.ts';
import { startHarness, type Harness } from '../helpers/coordinator-harness.ts';

const f = await agentFixture();
let h: Harness;
let identityDir: string;
let stored: StoredIdentity;

const keyKind = (pem: string) => {
  const k = createPrivateKey(pem);
  return k.asymmetricKeyType === 'ec' ? `ec ${k.asymmetricKeyDetails?.namedCurve}` : `${k.asymmetricKeyType} ${k.asymmetricKeyDetails?.modulusLength}`;
};

before(async () => {
  h = await startHarness();
  identityDir = await mkdtemp(join(tmpdir(), 'pgaccord-ec-agent-'));
  // Both peers are this one server (as in the apply-engine tests), under two names: node-1's
  // edge to node-2 (127.0.0.1) reaches it, and node-1's server certificate (localhost, IP
  // 127.0.0.1) is what answers there.
  const spec: ClusterSpec = {
    name: 'ec', profile: 'pgd', auth: 'cert',
    tls: { sslmode: 'verify-full', keyType: 'ecdsa-p256' },
    nodes: [
      { name: 'node-1', host: 'localhost', address: '127.0.0.1', port: f.pg.port, kind: 'peer' },
      { name: 'node-2', host: '127.0.0.1', port: f.pg.port, kind: 'peer' },
    ],
  };
  const put = await h.admin.call('PUT', '/v1/clusters/ec', { body: spec });
  assert.equal(put.status, 200, put.text);
});

after(async () => {
  await h.close();
  await rm(identityDir, { recursive: true, force: true });
});

test('the agent enrols and renews its identity with ECDSA P-256 keys against the real coordinator (P-256 HTTPS key); weak keys stay refused', async () => {
  assert.equal(certInfo(h.coord.dataDir.serverCertPem).keyType, 'ecdsa-p256', 'the coordinator serves HTTPS with a P-256 key by default');
  const tok = await h.admin.call('POST', '/v1/clusters/ec/nodes/node-1/tokens', { body: {} });
  assert.equal(tok.status, 200, tok.text);
  stored = await enroll({ stateDir: identityDir, coordinatorUrl: h.coord.url, cluster: 'ec', node: 'node-1', joinToken: tok.body.token, now: Date.now });
  assert.equal(keyKind(stored.identity.keyPem), 'ec prime256v1');
  assert.equal(stored.identity.info.keyType, 'ecdsa-p256');
  const client = new CoordinatorClient({ baseUrl: h.coord.url, caPem: stored.caPem, identity: stored.identity });
  const renewed = await renewIdentity(identityDir, client, stored.caPem, 'ec/node-1', Date.now);
  await client.close();
  assert.equal(keyKind(renewed.keyPem), 'ec prime256v1');
  assert.notEqual(renewed.info.serial, stored.identity.info.serial);
  stored = { ...stored, identity: renewed };
  // The key policy is unchanged: P-521 and RSA 1024 are refused on enrolment, the token not spent.
  const tok2 = await h.admin.call('POST', '/v1/clusters/ec/nodes/node-2/tokens', { body: {} });
  for (const [name, keyPem] of [
    ['EC P-521', generateKeyPairSync('ec', { namedCurve: 'P-521' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()],
    ['RSA 1024', generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()],
  ]) {
    const r = await h.anon.call('POST', '/v1/agent/enroll', { body: { token: tok2.body.token, csr: createCsr(keyPem!, 'x') } });
    assert.equal(r.status, 400, `${name}: ${r.text}`);
    assert.equal(r.body.code, 'E_CSR_KEY_POLICY', `${name}: ${r.text}`);
  }
});

test('tls.keyType ecdsa-p256: P-256 server and client certificates applied to PostgreSQL 15; libpq connects with verify-full and a P-256 client certificate', async () => {
  assert.ok(stored, 'the enrolment test ran');
  const client = new CoordinatorClient({ baseUrl: h.coord.url, caPem: stored.caPem, identity: stored.identity });
  try {
    const answer = await client.desired(0);
    assert.equal(answer.kind, 'newer');
    const desired = (answer as { body: unknown }).body as NodeDesired;
    assert.equal(desired.keyType, 'ecdsa-p256');
    const manager = new CertificateManager({
      stateDir: f.ctx.stateDir,
      owner: f.pg.osUser,
      requestCertificate: (req) => client.csr(req),
      now: Date.now,
      schedule: new RenewalSchedule(Math.random),
      log: silentLogger(),
    });
    const certs = await manager.ensure(desired, { online: true });
    assert.deepEqual(certs.errors, []);
    assert.deepEqual(certs.installed.map((c) => c.slot).sort(), [`client-${ROLE}`, 'server']);
    for (const c of certs.installed) {
      assert.equal(keyKind(await readFile(c.keyPath, 'utf8')), 'ec prime256v1', c.slot);
      assert.equal(certInfo(await readFile(c.certPath, 'utf8')).keyType, 'ecdsa-p256', c.slot);
    }
    // The apply engine proves the state itself with libpq (verify-full, the client certificate).
    const r = await applyDesired(f.ctx, { desired, certificates: certs.installed });
    assert.deepEqual(r.errors, []);
    assert.equal(r.phase, 'converged');
    const server = certs.installed.find((c) => c.slot === 'server')!;
    assert.equal(r.servedCertificate?.serial.replace(/^0+/, ''), server.serial.replace(/^0+/, ''), 'the server presents the P-256 certificate');
    const conn = r.clientConnections[0]!;
    assert.match(conn.conninfo, /sslmode=verify-full/);
    assert.match(conn.conninfo, /sslcert=/);
    // And once more here, as the profile's client: the server presents its P-256 certificate,
    // libpq checks it against the cluster CA and host, and logs in with the P-256 client one.
    assert.equal(await psqlAs(f.pg, conn.conninfo, `SELECT current_user || ' ' || ssl || ' ' || client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()`), `${ROLE} true /CN=${ROLE}`);
  } finally {
    await client.close();
  }
});
