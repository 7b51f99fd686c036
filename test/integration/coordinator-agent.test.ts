// The agent side of the coordinator, with the store in an external database (--database-url
// against a throwaway PostgreSQL): join tokens (single use under concurrency, expiry with an
// injected clock, bound to one node), enrollment, the allow/deny matrix over every route and
// principal, certificates checked by openssl, identity renewal, and what the raw store and the
// log hold. Long-poll, status and healthz: coordinator-longpoll.test.ts.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { crlInfo } from '../../shared/crypto/crl.ts';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CertificateAuthority } from '../../coordinator/ca/ca.ts';
import { MIGRATIONS } from '../../coordinator/store/store.ts';
import { encodeJoinToken, parseJoinToken } from '../../shared/contract/join-token.ts';

const decodeJoinToken = (t: string) => { const r = parseJoinToken(t); return r.ok ? r.payload : null; };
import type { NodeDesired } from '../../shared/contract/schema.ts';
import type { AgentStatus } from '../../shared/contract/status.ts';
import { certInfo, verifiesAgainst } from '../../shared/crypto/x509.ts';
import { createCsr, readCsrKey } from '../../shared/crypto/csr.ts';
import { generateRsaKey } from '../../shared/crypto/keys.ts';
import { query, throwawayStore } from '../helpers/pg.ts';
import { enroll, httpsClient, pgdSpec, startHarness, type EnrolledNode, type Harness } from '../helpers/coordinator-harness.ts';

const execFileAsync = promisify(execFile);
let h: Harness;
const keyPems: string[] = [];
// At the top level, so that throwawayPg's clean-up hook belongs to the file, not to before().
const { db, databaseUrl } = await throwawayStore();

before(async () => {
  h = await startHarness({ databaseUrl });
  const put = await h.admin.call('PUT', '/v1/clusters/sales', { body: pgdSpec('sales') });
  assert.equal(put.status, 200, put.text);
});
after(() => h?.close());

async function tokenFor(cluster: string, node: string, ttl?: string): Promise<string> {
  const r = await h.admin.call('POST', `/v1/clusters/${cluster}/nodes/${node}/tokens`, { body: ttl ? { ttl } : {} });
  assert.equal(r.status, 200, r.text);
  return r.body.token;
}

async function csr(cn = 'attacker-chosen'): Promise<{ keyPem: string; csrPem: string }> {
  const { privateKeyPem } = await generateRsaKey();
  keyPems.push(privateKeyPem);
  return { keyPem: privateKeyPem, csrPem: createCsr(privateKeyPem, cn) };
}

test('the store is the external database; no embedded instance', async () => {
  assert.equal(h.coord.pg, null);
  const rows = await query(db, 'SELECT version FROM schema_migrations', []).catch(() => null);
  assert.equal(rows, null, 'migrations are in the coord database, not postgres');
  const [row] = await h.coord.store.query<{ db: string; n: string }>('SELECT current_database() AS db, (SELECT count(*) FROM schema_migrations) AS n');
  assert.deepEqual(row, { db: 'coord', n: String(MIGRATIONS.length) });
});

test('join token: valid one hour unless told otherwise (SPEC), as asked with --ttl', async () => {
  const lifetime = async (body: object) => {
    const t0 = Date.now();
    const r = await h.admin.call('POST', '/v1/clusters/sales/nodes/node-2/tokens', { body });
    assert.equal(r.status, 200, r.text);
    return (Date.parse(r.body.expiresAt) - t0) / 1000;
  };
  const dflt = await lifetime({});
  assert.ok(dflt > 3590 && dflt <= 3601, `default lifetime ${dflt} s`);
  const ten = await lifetime({ ttl: '10m' });
  assert.ok(ten > 590 && ten <= 601, `10m lifetime ${ten} s`);
});

test('join token: carries the coordinator CA fingerprint; enrollment gives a pinned mTLS identity', async () => {
  const token = await tokenFor('sales', 'node-1');
  const payload = decodeJoinToken(token)!;
  assert.equal(payload.cluster, 'sales');
  assert.equal(payload.node, 'node-1');
  assert.equal(payload.url, h.coord.url);
  assert.equal(payload.caFingerprint, certInfo(h.caPem).fingerprint256);
  const ca = await h.anon.call('GET', '/v1/coordinator-ca.crt');
  assert.equal(certInfo(ca.text).fingerprint256, payload.caFingerprint);
  const { keyPem, csrPem } = await csr('admin');
  const res = await h.anon.call('POST', '/v1/agent/enroll', { body: { token, csr: csrPem } });
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(Object.keys(res.body).sort(), ['certificate', 'cluster', 'coordinatorCa', 'node']);
  const info = certInfo(res.body.certificate);
  assert.equal(info.commonName, 'pgaccord-agent');
  assert.deepEqual(info.uris, ['pgaccord://agent/sales/node-1']);
  assert.deepEqual(info.extKeyUsage, ['clientAuth']);
  assert.ok(verifiesAgainst(res.body.certificate, h.caPem));
  const days = (info.notAfter.getTime() - Date.now()) / 86400_000;
  assert.ok(days > 29 && days <= 30.01, `identity lifetime ${days}d`);
  const agent = httpsClient(h.coord.url, h.caPem, { certPem: res.body.certificate, keyPem });
  const desired = await agent.call('GET', '/v1/agent/desired?after=0');
  assert.equal(desired.status, 200);
  assert.equal(desired.body.node, 'node-1');
  // Used once: never again.
  const again = await h.anon.call('POST', '/v1/agent/enroll', { body: { token, csr: (await csr()).csrPem } });
  assert.equal(again.status, 401);
  assert.match(again.body.message, /already been used/);
});

test('20 concurrent uses of one join token: exactly one succeeds', async () => {
  const token = await tokenFor('sales', 'node-2');
  const csrs = await Promise.all(Array.from({ length: 20 }, () => csr()));
  const clients = Array.from({ length: 20 }, () => httpsClient(h.coord.url, h.caPem));
  const results = await Promise.all(csrs.map((c, i) => clients[i]!.call('POST', '/v1/agent/enroll', { body: { token, csr: c.csrPem } })));
  const statuses = results.map((r) => r.status).sort();
  assert.deepEqual(statuses, [200, ...Array(19).fill(401)], JSON.stringify(statuses));
  const issued = await h.coord.store.query<{ n: string }>(`SELECT count(*) AS n FROM certificates WHERE cluster = 'sales' AND node = 'node-2' AND slot = 'identity'`);
  assert.equal(issued[0]!.n, '1');
});

test('expired (injected clock), tampered, wrong-node and malformed tokens are refused and not consumed', async () => {
  const token = await tokenFor('sales', 'node-3', '10m');
  const payload = decodeJoinToken(token)!;
  h.setClockOffset(11 * 60_000);
  try {
    const expired = await h.anon.call('POST', '/v1/agent/enroll', { body: { token, csr: (await csr()).csrPem } });
    assert.equal(expired.status, 401);
    assert.match(expired.body.message, /expired/);
  } finally {
    h.setClockOffset(0);
  }
  // The same token claiming another node (its binding is in the store, not in the text).
  const wrongNode = await h.anon.call('POST', '/v1/agent/enroll', { body: { token: encodeJoinToken({ ...payload, node: 'node-1' }), csr: (await csr()).csrPem } });
  assert.equal(wrongNode.status, 401);
  assert.match(wrongNode.body.message, /another node/);
  const wrongCluster = await h.anon.call('POST', '/v1/agent/enroll', { body: { token: encodeJoinToken({ ...payload, cluster: 'other' }), csr: (await csr()).csrPem } });
  assert.equal(wrongCluster.status, 401);
  const wrongSecret = await h.anon.call('POST', '/v1/agent/enroll', { body: { token: encodeJoinToken({ ...payload, secret: 'x'.repeat(43) }), csr: (await csr()).csrPem } });
  assert.equal(wrongSecret.status, 401);
  assert.match(wrongSecret.body.message, /unknown token/);
  for (const bad of ['', 'pga1.', 'pga1.!!!', 'pga2.e30', `pga1.${Buffer.from('{"v":1}').toString('base64url')}`]) {
    assert.equal((await h.anon.call('POST', '/v1/agent/enroll', { body: { token: bad, csr: (await csr()).csrPem } })).status, 401, JSON.stringify(bad));
  }
  // A CSR whose signature does not verify: 400, and the token is not burnt.
  const good = await csr();
  const other = await csr();
  const tampered = createCsr(other.keyPem, 'x').replace(/-----BEGIN CERTIFICATE REQUEST-----[\s\S]*?-----END CERTIFICATE REQUEST-----/, () => mixCsr(good.csrPem, other.csrPem));
  const badCsr = await h.anon.call('POST', '/v1/agent/enroll', { body: { token, csr: tampered } });
  assert.equal(badCsr.status, 400, badCsr.text);
  assert.equal(badCsr.body.code, 'E_CSR_INVALID');
  // The genuine, unexpired token for node-3 still works after all that.
  const ok = await h.anon.call('POST', '/v1/agent/enroll', { body: { token, csr: good.csrPem } });
  assert.equal(ok.status, 200, ok.text);
  assert.equal(ok.body.node, 'node-3');
});

/** A CSR carrying one key but the signature made by another. */
function mixCsr(a: string, b: string): string {
  const der = (pem: string) => Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
  const da = der(a);
  const db2 = der(b);
  // Both are SEQUENCE { info, alg, BIT STRING sig }: swap the 256-byte signature tails.
  const mixed = Buffer.concat([da.subarray(0, da.length - 256), db2.subarray(db2.length - 256)]);
  return `-----BEGIN CERTIFICATE REQUEST-----\n${mixed.toString('base64').replace(/(.{64})/g, '$1\n')}\n-----END CERTIFICATE REQUEST-----\n`;
}

test('readCsr refuses the mixed CSR on its own', async () => {
  const a = await csr();
  const b = await csr();
  assert.throws(() => readCsrKey(mixCsr(a.csrPem, b.csrPem)), /does not verify/);
});

let node1: EnrolledNode;
let node2: EnrolledNode;

test('allow/deny matrix: every agent and admin route × every principal', async () => {
  await h.admin.call('PUT', '/v1/clusters/matrix', { body: pgdSpec('matrix') });
  node1 = await enroll(h, 'matrix', 'node-1');
  node2 = await enroll(h, 'matrix', 'node-2');
  // A superseded identity: node-3 enrolled before, then again (the old certificate is dead).
  const stale = await enroll(h, 'matrix', 'node-3');
  await enroll(h, 'matrix', 'node-3');
  // A revoked identity (renewed, then the renewal revoked) and its predecessor, which must not
  // survive it (issue 14): node-3 enrolled (R1), renewed (R2), R2 revoked; nothing after it.
  const r1 = await enroll(h, 'matrix', 'node-3');
  const r2Key = await csr();
  const r2 = await r1.client.call('POST', '/v1/agent/csr', { body: { slot: 'identity', csr: r2Key.csrPem } });
  assert.equal(r2.status, 200, r2.text);
  assert.equal((await h.admin.call('POST', `/v1/clusters/matrix/certificates/${r2.body.serial}/revoke`, { body: {} })).status, 200);
  // A certificate from another CA, naming node-1 exactly as a real identity would.
  const rogueCa = (await CertificateAuthority.create('pgaccord coordinator CA', new Date())).ca;
  const rogueKey = await csr();
  const rogueCert = rogueCa.issue({ publicKey: readCsrKey(rogueKey.csrPem).publicKey, commonName: 'pgaccord-agent', uris: ['pgaccord://agent/matrix/node-1'], usage: 'client', lifetimeSeconds: 86400, now: new Date() });
  // A cluster-CA client certificate (right CA family, wrong kind of certificate).
  const slotKey = await csr();
  const slotCert = await node1.client.call('POST', '/v1/agent/csr', { body: { slot: 'client-pgd_replication', csr: slotKey.csrPem } });
  assert.equal(slotCert.status, 200, slotCert.text);

  const principals = {
    'admin token': httpsClient(h.coord.url, h.caPem),
    'own node cert': node1.client,
    'other node cert': node2.client,
    'no cert, no token': httpsClient(h.coord.url, h.caPem),
    'cert from another CA': httpsClient(h.coord.url, h.caPem, { certPem: rogueCert.pem, keyPem: rogueKey.keyPem }),
    'superseded identity': stale.client,
    'revoked identity': httpsClient(h.coord.url, h.caPem, { certPem: r2.body.certificate, keyPem: r2Key.keyPem }),
    "revoked identity's predecessor": r1.client,
    'cluster client cert': httpsClient(h.coord.url, h.caPem, { certPem: slotCert.body.certificate, keyPem: slotKey.keyPem }),
    'wrong token': httpsClient(h.coord.url, h.caPem),
  } as const;
  type P = keyof typeof principals;
  const tokenOf = (p: P) => (p === 'admin token' ? h.token : p === 'wrong token' ? `${h.token}x` : null);
  const status: AgentStatus = { generation: 1, phase: 'converged', errors: [], files: [], servedCertificate: null, certificates: [], probes: [], pendingRestart: [], coordinatorReachable: true, versions: { agent: '0.1.0', postgres: '15' } };
  const csrPem = (await csr()).csrPem;
  const routes: { name: string; kind: 'agent' | 'admin'; method: string; path: string; body?: unknown }[] = [
    { name: 'desired', kind: 'agent', method: 'GET', path: '/v1/agent/desired?after=0&wait=0' },
    { name: 'csr', kind: 'agent', method: 'POST', path: '/v1/agent/csr', body: { slot: 'server', csr: csrPem } },
    { name: 'agent status', kind: 'agent', method: 'POST', path: '/v1/agent/status', body: status },
    { name: 'list clusters', kind: 'admin', method: 'GET', path: '/v1/clusters' },
    { name: 'put cluster', kind: 'admin', method: 'PUT', path: '/v1/clusters/matrix', body: pgdSpec('matrix') },
    { name: 'get cluster', kind: 'admin', method: 'GET', path: '/v1/clusters/matrix' },
    { name: 'delete cluster', kind: 'admin', method: 'DELETE', path: '/v1/clusters/no-such-cluster' },
    { name: 'plan', kind: 'admin', method: 'POST', path: '/v1/clusters/matrix/plan', body: pgdSpec('matrix') },
    { name: 'cluster status', kind: 'admin', method: 'GET', path: '/v1/clusters/matrix/status' },
    { name: 'token', kind: 'admin', method: 'POST', path: '/v1/clusters/matrix/nodes/node-1/tokens', body: {} },
    { name: 'certificates', kind: 'admin', method: 'GET', path: '/v1/clusters/matrix/certificates' },
    { name: 'revoke', kind: 'admin', method: 'POST', path: '/v1/clusters/matrix/certificates/0a/revoke' },
    { name: 'renew', kind: 'admin', method: 'POST', path: '/v1/clusters/matrix/renew' },
    { name: 'ca.crt', kind: 'admin', method: 'GET', path: '/v1/clusters/matrix/ca.crt' },
    { name: 'crl', kind: 'admin', method: 'GET', path: '/v1/clusters/matrix/crl' },
    { name: 'ca rotation', kind: 'admin', method: 'GET', path: '/v1/clusters/matrix/ca-rotation' },
    // The mutating ones on a cluster that does not exist: the admin gets 404, nothing rotates.
    { name: 'ca rotation start', kind: 'admin', method: 'POST', path: '/v1/clusters/no-such-cluster/ca-rotation/start' },
    { name: 'ca rotation finish', kind: 'admin', method: 'POST', path: '/v1/clusters/no-such-cluster/ca-rotation/finish' },
    { name: 'rotate passwords', kind: 'admin', method: 'POST', path: '/v1/clusters/no-such-cluster/rotate-passwords', body: {} },
  ];
  // Complete: every route the OpenAPI document says needs a principal is in the matrix.
  const doc = (await h.anon.call('GET', '/openapi.json')).body as { paths: Record<string, Record<string, { security: unknown[] }>> };
  for (const [template, methods] of Object.entries(doc.paths)) {
    const pattern = new RegExp(`^${template.replace(/\{\w+\}/g, '[^/?]+')}(\\?|$)`);
    for (const [method, op] of Object.entries(methods)) {
      if (op.security.length === 0) continue;
      assert.ok(routes.some((r) => r.method === method.toUpperCase() && pattern.test(r.path)), `${method.toUpperCase()} ${template} is in the matrix`);
    }
  }
  const allowed = (kind: 'agent' | 'admin', p: P) => (kind === 'admin' ? p === 'admin token' : p === 'own node cert' || p === 'other node cert');
  const matrix: string[] = [];
  for (const r of routes) {
    for (const p of Object.keys(principals) as P[]) {
      const res = await principals[p].call(r.method, r.path, { body: r.body, token: tokenOf(p) });
      const ok = res.status !== 401 && res.status !== 403;
      matrix.push(`${r.name} × ${p}: ${res.status}`);
      assert.equal(ok, allowed(r.kind, p), `${r.method} ${r.path} as ${p}: ${res.status} ${res.text.slice(0, 200)}`);
      if (!ok) assert.equal(res.body.code, 'E_UNAUTHENTICATED');
      if (ok) assert.ok(res.status < 300 || [404, 501].includes(res.status), `${r.name} × ${p}: ${res.status} ${res.text.slice(0, 200)}`);
      // An agent only ever gets its own node's share.
      if (ok && r.name === 'desired') assert.equal(res.body.node, p === 'own node cert' ? 'node-1' : 'node-2');
      if (ok && r.name === 'csr') assert.deepEqual(certInfo(res.body.certificate).dnsNames, [p === 'own node cert' ? 'db1.example.com' : 'db2.example.com']);
    }
  }
  const reported = await h.coord.store.query<{ node: string }>(`SELECT node FROM node_status WHERE cluster = 'matrix' AND report IS NOT NULL ORDER BY node`);
  assert.deepEqual(reported.map((r) => r.node), ['node-1', 'node-2']);
  assert.ok(matrix.length >= routes.length * 10);
});

async function opensslVerify(caPem: string, certPem: string, purpose: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'pgaccord-verify-'));
  try {
    await writeFile(join(dir, 'ca.crt'), caPem);
    await writeFile(join(dir, 'leaf.crt'), certPem);
    const { stdout } = await execFileAsync('openssl', ['verify', '-CAfile', join(dir, 'ca.crt'), '-purpose', purpose, join(dir, 'leaf.crt')]);
    const text = (await execFileAsync('openssl', ['x509', '-in', join(dir, 'leaf.crt'), '-noout', '-text'])).stdout;
    assert.match(stdout, /leaf\.crt: OK/);
    return text;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('issued certificates pass openssl verify with the CN/SAN/EKU of the slot, whatever the CSR asked', async () => {
  const caPem = (await h.admin.call('GET', '/v1/clusters/matrix/ca.crt')).text;
  assert.equal(certInfo(caPem).isCa, true);
  const { keyPem, csrPem } = await csr('evil.example.org'); // the CSR asks for another name
  const server = await node1.client.call('POST', '/v1/agent/csr', { body: { slot: 'server', csr: csrPem } });
  assert.equal(server.status, 200, server.text);
  const text = await opensslVerify(caPem, server.body.certificate, 'sslserver');
  assert.match(text, /Subject: CN ?= ?db1\.example\.com/);
  assert.match(text, /DNS:db1\.example\.com, IP Address:10\.0\.0\.11/);
  assert.match(text, /TLS Web Server Authentication/);
  assert.doesNotMatch(text, /evil/);
  assert.match(text, /CA:FALSE/);
  assert.match(text, /Digital Signature, Key Encipherment/);
  const info = certInfo(server.body.certificate);
  assert.equal(info.serial, server.body.serial);
  assert.equal(info.serial.length, 32);
  assert.ok(Number.parseInt(info.serial.slice(0, 2), 16) < 0x80);
  assert.ok(info.notBefore.getTime() < Date.now() - 4 * 60_000, 'backdated a few minutes');
  const days = (info.notAfter.getTime() - Date.now()) / 86400_000;
  assert.ok(days > 89.9 && days <= 90.01, `lifetime ${days}d`);
  const client = await node2.client.call('POST', '/v1/agent/csr', { body: { slot: 'client-pgd_replication', csr: (await csr('postgres')).csrPem } });
  assert.equal(client.status, 200, client.text);
  const ctext = await opensslVerify(caPem, client.body.certificate, 'sslclient');
  assert.match(ctext, /Subject: CN ?= ?pgd_replication/);
  assert.match(ctext, /TLS Web Client Authentication/);
  assert.doesNotMatch(ctext, /Subject Alternative Name/);
  // node-3's host is an IP: IP SAN only.
  const n3 = await enroll(h, 'matrix', 'node-3');
  const s3 = await n3.client.call('POST', '/v1/agent/csr', { body: { slot: 'server', csr: (await csr()).csrPem } });
  assert.deepEqual(certInfo(s3.body.certificate).ipAddresses, ['10.0.0.13']);
  assert.deepEqual(certInfo(s3.body.certificate).dnsNames, []);
  // Slots the node does not have are refused.
  const bad = await node1.client.call('POST', '/v1/agent/csr', { body: { slot: 'client-postgres', csr: (await csr()).csrPem } });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.code, 'E_SLOT');
  // Recorded in the store and listed.
  const list = await h.admin.call('GET', '/v1/clusters/matrix/certificates');
  const row = list.body.certificates.find((c: { serial: string }) => c.serial === server.body.serial);
  assert.deepEqual({ node: row.node, slot: row.slot, commonName: row.commonName, revoked: row.revoked }, { node: 'node-1', slot: 'server', commonName: 'db1.example.com', revoked: false });
  assert.ok(row.daysLeft > 89 && row.daysLeft <= 90);
  // The private key matches only its own certificate.
  assert.ok(keyPem.includes('PRIVATE KEY'));
});

test('revoking a certificate revokes its key: live certificates for the same key go with it, and the key is never certified again', async () => {
  const n3 = await enroll(h, 'matrix', 'node-3');
  const { csrPem } = await csr('postgres');
  // Two certificates for one key, as an agent renewing a fixed-name client pair makes them.
  const first = await n3.client.call('POST', '/v1/agent/csr', { body: { slot: 'client-pgd_replication', csr: csrPem } });
  const second = await n3.client.call('POST', '/v1/agent/csr', { body: { slot: 'client-pgd_replication', csr: csrPem } });
  const other = await n3.client.call('POST', '/v1/agent/csr', { body: { slot: 'client-pgd_replication', csr: (await csr('postgres')).csrPem } });
  for (const r of [first, second, other]) assert.equal(r.status, 200, r.text);
  const revoked = await h.admin.call('POST', `/v1/clusters/matrix/certificates/${first.body.serial}/revoke`, { body: {} });
  assert.equal(revoked.status, 200, revoked.text);
  assert.deepEqual(revoked.body.sameKey, [second.body.serial], 'the live certificate with the same key is revoked too; the one with another key is not');
  const list = (await h.admin.call('GET', '/v1/clusters/matrix/certificates')).body.certificates as { serial: string; revoked: boolean }[];
  assert.deepEqual([first, second, other].map((r) => list.find((c) => c.serial === r.body.serial)!.revoked), [true, true, false]);
  const crl = crlInfo((await h.admin.call('GET', '/v1/clusters/matrix/crl')).text);
  for (const r of [first, second]) assert.ok(crl.revoked.some((x) => x.serial === r.body.serial), `${r.body.serial} in the CRL`);
  const again = await n3.client.call('POST', '/v1/agent/csr', { body: { slot: 'client-pgd_replication', csr: csrPem } });
  assert.equal(again.status, 409);
  assert.equal(again.body.code, 'E_KEY_REVOKED');
  const fresh = await n3.client.call('POST', '/v1/agent/csr', { body: { slot: 'client-pgd_replication', csr: (await csr('postgres')).csrPem } });
  assert.equal(fresh.status, 200, 'a new key is certified');
});

test('identity renewal over mTLS: the new identity works, the one before the last is dead', async () => {
  const { keyPem, csrPem } = await csr();
  const renewed = await node2.client.call('POST', '/v1/agent/csr', { body: { slot: 'identity', csr: csrPem } });
  assert.equal(renewed.status, 200, renewed.text);
  assert.deepEqual(certInfo(renewed.body.certificate).uris, ['pgaccord://agent/matrix/node-2']);
  const fresh = httpsClient(h.coord.url, h.caPem, { certPem: renewed.body.certificate, keyPem });
  // Until the new identity is used the previous one is still accepted (the agent may not have saved the new one yet)...
  assert.equal((await node2.client.call('GET', '/v1/agent/desired?after=0&wait=0')).status, 200);
  assert.equal((await fresh.call('GET', '/v1/agent/desired?after=0&wait=0')).status, 200);
  // ...and not once it has been (issue 14).
  assert.equal((await node2.client.call('GET', '/v1/agent/desired?after=0&wait=0')).status, 401);
  const second = await fresh.call('POST', '/v1/agent/csr', { body: { slot: 'identity', csr: (await csr()).csrPem } });
  assert.equal(second.status, 200);
  assert.equal((await node2.client.call('GET', '/v1/agent/desired?after=0&wait=0')).status, 401);
});

test('the raw store holds no plaintext CA key, password, token or node key', async () => {
  await h.admin.call('PUT', '/v1/clusters/scram', { body: pgdSpec('scram', { auth: 'scram-sha-256', roles: [{ name: 'app_user' }] }) });
  const n = await enroll(h, 'scram', 'node-1');
  const desired: NodeDesired = (await n.client.call('GET', '/v1/agent/desired?after=0')).body;
  const passwords = desired.clientSecrets.map((s) => s.password);
  assert.ok(passwords.length >= 1 && passwords.every((p) => p.length === 32));
  assert.ok(desired.roles.every((r) => r.verifier?.startsWith('SCRAM-SHA-256$4096:')));
  const token = await tokenFor('scram', 'node-2');
  const secret = decodeJoinToken(token)!.secret;
  // Everything in every table of the store, as text.
  const tables = await h.coord.store.query<{ t: string }>(`SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public'`);
  let dump = '';
  for (const { t } of tables) {
    const rows = await h.coord.store.query<{ r: string }>(`SELECT t::text AS r FROM ${t} t`);
    dump += rows.map((r) => r.r).join('\n');
  }
  assert.ok(dump.length > 10_000, 'the dump has content');
  assert.ok(dump.includes('BEGIN CERTIFICATE'), 'certificates are there in the clear (they are public)');
  assert.doesNotMatch(dump, /PRIVATE KEY/, 'no PEM private key of any kind');
  for (const p of passwords) assert.ok(!dump.includes(p), 'no plaintext role password');
  assert.ok(!dump.includes(secret), 'no join token secret');
  assert.ok(!dump.includes(h.token), 'no admin token');
  const keyBodies = keyPems.map((k) => k.split('\n')[5]!);
  for (const body of keyBodies) assert.ok(!dump.includes(body), 'no node key material');
  const masterKey = await readFile(join(h.dir, 'master.key'));
  assert.ok(!dump.includes(masterKey.toString('base64')) && !dump.includes(masterKey.toString('hex')), 'no master key');
  // And the sealed CA key opens only with the master key, bound to its own cluster.
  const [ca] = await h.coord.store.query<{ key_sealed: string }>(`SELECT key_sealed FROM cluster_cas WHERE cluster = 'scram'`);
  assert.match(ca!.key_sealed, /^v1:/);
});

test('no secret reaches the log', async () => {
  const log = await readFile(h.logFile, 'utf8');
  assert.ok(log.includes('agent enrolled') && log.includes('join token created'), 'the log has the events');
  assert.ok(!log.includes(h.token), 'admin token');
  assert.doesNotMatch(log, /PRIVATE KEY|BEGIN CERTIFICATE REQUEST|pga1\./);
  assert.ok(!/"secret":"[A-Za-z0-9_-]{20,}/.test(log));
});
