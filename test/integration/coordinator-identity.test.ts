// Agent identities and CSRs against a real coordinator and store (external database): revoking
// an identity revokes every live identity of its node, the previous identity dies once the new
// one has authenticated, the key policy on CSRs (RSA >= 2048 with e = 65537, EC P-256/P-384) on
// every route that signs, and the enrol route checks the join token before any public-key work.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { certInfo } from '../../shared/crypto/x509.ts';
import { createCsr } from '../../shared/crypto/csr.ts';
import { generateRsaKey } from '../../shared/crypto/keys.ts';
import { throwawayStore } from '../helpers/pg.ts';
import { enroll, httpsClient, pgdSpec, startHarness, type Client, type Harness } from '../helpers/coordinator-harness.ts';
import { waitFor } from '../helpers/wait.ts';

let h: Harness;
// At the top level, so that throwawayPg's clean-up hook belongs to the file, not to before().
const { databaseUrl } = await throwawayStore();

before(async () => {
  h = await startHarness({ databaseUrl });
  const put = await h.admin.call('PUT', '/v1/clusters/ids', { body: pgdSpec('ids') });
  assert.equal(put.status, 200, put.text);
});
after(() => h?.close());

const DESIRED = '/v1/agent/desired?after=0&wait=0';

async function tokenFor(node: string): Promise<string> {
  const r = await h.admin.call('POST', `/v1/clusters/ids/nodes/${node}/tokens`, { body: {} });
  assert.equal(r.status, 200, r.text);
  return r.body.token;
}

/** Renew the identity of `client` with a new RSA key; a client presenting the new identity. */
async function renewIdentity(client: Client): Promise<{ serial: string; client: Client }> {
  const { privateKeyPem } = await generateRsaKey();
  const r = await client.call('POST', '/v1/agent/csr', { body: { slot: 'identity', csr: createCsr(privateKeyPem, 'x') } });
  assert.equal(r.status, 200, r.text);
  return { serial: r.body.serial, client: httpsClient(h.coord.url, h.caPem, { certPem: r.body.certificate, keyPem: privateKeyPem }) };
}

test('revoking the renewed identity (S2) revokes its predecessor (S1) too: S1 is refused and cannot renew', async () => {
  const n = await enroll(h, 'ids', 'node-1'); // S1
  const s1 = certInfo(n.certPem).serial;
  const s2 = await renewIdentity(n.client);
  const revoked = await h.admin.call('POST', `/v1/clusters/ids/certificates/${s2.serial}/revoke`, { body: {} });
  assert.equal(revoked.status, 200, revoked.text);
  for (const [who, c] of [['S2', s2.client], ['S1', n.client]] as const) {
    const r = await c.call('GET', DESIRED);
    assert.equal(r.status, 401, `${who} after revoking S2: ${r.status} ${r.text}`);
    assert.equal(r.body.code, 'E_UNAUTHENTICATED');
  }
  const renew = await n.client.call('POST', '/v1/agent/csr', { body: { slot: 'identity', csr: createCsr((await generateRsaKey()).privateKeyPem, 'x') } });
  assert.equal(renew.status, 401, `S1 renewing itself: ${renew.status} ${renew.text}`);
  const list = (await h.admin.call('GET', '/v1/clusters/ids/certificates')).body.certificates as { serial: string; revoked: boolean }[];
  assert.deepEqual([s1, s2.serial].map((s) => list.find((c) => c.serial === s)?.revoked), [true, true], 'both identities listed as revoked');
  // A new join token is the way back.
  const again = await enroll(h, 'ids', 'node-1');
  assert.equal((await again.client.call('GET', DESIRED)).status, 200);
});

test('revoking the first identity (S1) after a renewal revokes S2 as well', async () => {
  const n = await enroll(h, 'ids', 'node-2');
  const s2 = await renewIdentity(n.client);
  const revoked = await h.admin.call('POST', `/v1/clusters/ids/certificates/${certInfo(n.certPem).serial}/revoke`, { body: {} });
  assert.equal(revoked.status, 200, revoked.text);
  assert.equal((await s2.client.call('GET', DESIRED)).status, 401);
  assert.equal((await n.client.call('GET', DESIRED)).status, 401);
});

test('the previous identity stops working once the new one has authenticated', async () => {
  const n = await enroll(h, 'ids', 'node-3'); // S1
  const s2 = await renewIdentity(n.client);
  // Until S2 is used, S1 still works: the agent may not have stored S2 yet.
  assert.equal((await n.client.call('GET', DESIRED)).status, 200, 'S1 before S2 was used');
  assert.equal((await s2.client.call('GET', DESIRED)).status, 200, 'S2');
  const old = await n.client.call('GET', DESIRED);
  assert.equal(old.status, 401, `S1 after S2 authenticated: ${old.status} ${old.text}`);
  assert.equal((await n.client.call('POST', '/v1/agent/csr', { body: { slot: 'identity', csr: createCsr((await generateRsaKey()).privateKeyPem, 'x') } })).status, 401, 'S1 cannot renew');
  const [row] = await h.coord.store.query<{ identity_serial: string; previous_serial: string | null }>(`SELECT identity_serial, previous_serial FROM agents WHERE cluster = 'ids' AND node = 'node-3'`);
  assert.deepEqual(row, { identity_serial: s2.serial, previous_serial: null });
  assert.equal((await s2.client.call('GET', DESIRED)).status, 200, 'S2 keeps working');
});

test('the previous identity cannot renew with another key: S2 stays the node\'s identity; a retry with S2\'s key (answer lost) passes', async () => {
  const n = await enroll(h, 'ids', 'node-2'); // S1
  const s2 = await renewIdentity(n.client);
  // Whoever holds S1 renews right after the agent did, with a key of its own: refused.
  const thief = await n.client.call('POST', '/v1/agent/csr', { body: { slot: 'identity', csr: createCsr((await generateRsaKey()).privateKeyPem, 'x') } });
  assert.equal(thief.status, 409, `S1 renewing with another key: ${thief.status} ${thief.text}`);
  assert.equal(thief.body.code, 'E_IDENTITY_SUPERSEDED', thief.text);
  const [row] = await h.coord.store.query<{ identity_serial: string }>(`SELECT identity_serial FROM agents WHERE cluster = 'ids' AND node = 'node-2'`);
  assert.equal(row!.identity_serial, s2.serial);
  assert.equal((await s2.client.call('GET', DESIRED)).status, 200, 'S2 still works');

  // The agent keeps its pending key before the CSR: a retry after a lost answer sends S2's key.
  const m = await enroll(h, 'ids', 'node-1'); // S1
  const { privateKeyPem } = await generateRsaKey();
  const csr = createCsr(privateKeyPem, 'x');
  assert.equal((await m.client.call('POST', '/v1/agent/csr', { body: { slot: 'identity', csr } })).status, 200, 'renewal to S2');
  const retry = await m.client.call('POST', '/v1/agent/csr', { body: { slot: 'identity', csr } });
  assert.equal(retry.status, 200, `the retry with S2's key: ${retry.text}`);
  const renewed = httpsClient(h.coord.url, h.caPem, { certPem: retry.body.certificate, keyPem: privateKeyPem });
  assert.equal((await renewed.call('GET', DESIRED)).status, 200, 'the identity of the retry works');
});

test('a slot CSR authenticated just before its identity\'s revocation committed gets no certificate', async () => {
  const n = await enroll(h, 'ids', 'node-3');
  // A revocation in progress: the cluster row locked (revoke holds it FOR UPDATE) while the CSR
  // has authenticated and waits for it in the issuing transaction (FOR SHARE); the revocation
  // commits, the CSR goes on. FOR NO KEY UPDATE here, so that the request's own writes (the
  // foreign key check of node_status takes FOR KEY SHARE) pass and it stops exactly there.
  const revoker = await h.coord.store.pool.connect();
  try {
    await revoker.query('BEGIN');
    await revoker.query(`SELECT 1 FROM clusters WHERE name = 'ids' FOR NO KEY UPDATE`);
    const csr = n.client.call('POST', '/v1/agent/csr', { body: { slot: 'server', csr: createCsr((await generateRsaKey()).privateKeyPem, 'x') } });
    await waitFor('the CSR waiting for the cluster row', async () => {
      // From another connection: inside the revoker's transaction pg_stat_activity is one snapshot.
      const [w] = await h.coord.store.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%FROM clusters WHERE name = $1 FOR SHARE%'`,
      );
      return w!.n > 0;
    }, 10_000, 20, { throwEnds: true });
    await revoker.query(`UPDATE certificates SET revoked_at = now() WHERE cluster = 'ids' AND node = 'node-3' AND slot = 'identity' AND revoked_at IS NULL`);
    await revoker.query('COMMIT');
    const r = await csr;
    assert.equal(r.status, 401, `slot CSR of an identity revoked meanwhile: ${r.status} ${r.text.slice(0, 200)}`);
  } finally {
    revoker.release();
  }
});

// --- key policy -------------------------------------------------------------------------------

function opensslCsr(keyPem: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'pgaccord-csr-'));
  try {
    writeFileSync(join(dir, 'k.pem'), keyPem, { mode: 0o600 });
    return execFileSync('openssl', ['req', '-new', '-key', 'k.pem', '-subj', '/CN=asks-for-anything', '-sha256'], { cwd: dir, encoding: 'utf8' });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const rsa = (bits: number, e = 65537) => generateKeyPairSync('rsa', { modulusLength: bits, publicExponent: e }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
const ec = (curve: string) => generateKeyPairSync('ec', { namedCurve: curve }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();

const WEAK: [string, () => string][] = [
  ['RSA 512', () => createCsr(rsa(512), 'x')],
  ['RSA 1024', () => createCsr(rsa(1024), 'x')],
  ['RSA 2048, e = 3', () => createCsr(rsa(2048, 3), 'x')],
  ['EC secp256k1', () => opensslCsr(ec('secp256k1'))],
  ['EC P-521', () => opensslCsr(ec('P-521'))],
];

test('weak CSR keys are refused with E_CSR_KEY_POLICY on enrol, identity renewal and every slot (token not burnt)', async () => {
  const n = await enroll(h, 'ids', 'node-2');
  const token = await tokenFor('node-1');
  const seen: string[] = [];
  for (const [name, make] of WEAK) {
    const csrPem = make();
    for (const [route, call] of [
      ['enroll', () => h.anon.call('POST', '/v1/agent/enroll', { body: { token, csr: csrPem } })],
      ['csr identity', () => n.client.call('POST', '/v1/agent/csr', { body: { slot: 'identity', csr: csrPem } })],
      ['csr server', () => n.client.call('POST', '/v1/agent/csr', { body: { slot: 'server', csr: csrPem } })],
      ['csr client', () => n.client.call('POST', '/v1/agent/csr', { body: { slot: 'client-pgd_replication', csr: csrPem } })],
    ] as const) {
      const r = await call();
      seen.push(`${name} × ${route}: ${r.status} ${r.body?.code}`);
      assert.equal(r.status, 400, `${name} on ${route}: ${r.status} ${r.text}`);
      assert.equal(r.body.code, 'E_CSR_KEY_POLICY', `${name} on ${route}: ${r.text}`);
      assert.match(r.body.message, /RSA of at least 2048 bits with exponent 65537, or EC P-256\/P-384/);
    }
  }
  console.log(seen.join('\n'));
  // Nothing was issued for any of them, and the token still works.
  const ok = await h.anon.call('POST', '/v1/agent/enroll', { body: { token, csr: createCsr(rsa(2048), 'x') } });
  assert.equal(ok.status, 200, ok.text);
});

test('RSA 2048 (e = 65537), EC P-256 and EC P-384 keys are accepted: enrol, authenticate, renew, server slot; openssl verifies', async () => {
  const clusterCa = (await h.admin.call('GET', '/v1/clusters/ids/ca.crt')).text;
  for (const [name, keyPem, csrPem] of [
    ['RSA 2048', rsa(2048), null],
    ['EC P-256', ec('P-256'), null],
    ['EC P-384', ec('P-384'), null],
  ] as [string, string, string | null][]) {
    const csr = csrPem ?? (name.startsWith('RSA') ? createCsr(keyPem, 'x') : opensslCsr(keyPem));
    const r = await h.anon.call('POST', '/v1/agent/enroll', { body: { token: await tokenFor('node-3'), csr } });
    assert.equal(r.status, 200, `${name} enrol: ${r.text}`);
    const agent = httpsClient(h.coord.url, h.caPem, { certPem: r.body.certificate, keyPem });
    assert.equal((await agent.call('GET', DESIRED)).status, 200, `${name} identity authenticates over mTLS`);
    const renewed = await agent.call('POST', '/v1/agent/csr', { body: { slot: 'identity', csr } });
    assert.equal(renewed.status, 200, `${name} identity renewal: ${renewed.text}`);
    const server = await agent.call('POST', '/v1/agent/csr', { body: { slot: 'server', csr } });
    assert.equal(server.status, 200, `${name} server slot: ${server.text}`);
    const dir = mkdtempSync(join(tmpdir(), 'pgaccord-verify-'));
    try {
      writeFileSync(join(dir, 'ca.crt'), clusterCa);
      writeFileSync(join(dir, 'leaf.crt'), server.body.certificate);
      writeFileSync(join(dir, 'coord.crt'), h.caPem);
      writeFileSync(join(dir, 'id.crt'), renewed.body.certificate);
      assert.match(execFileSync('openssl', ['verify', '-CAfile', 'ca.crt', '-purpose', 'sslserver', 'leaf.crt'], { cwd: dir, encoding: 'utf8' }), /leaf\.crt: OK/);
      assert.match(execFileSync('openssl', ['verify', '-CAfile', 'coord.crt', '-purpose', 'sslclient', 'id.crt'], { cwd: dir, encoding: 'utf8' }), /id\.crt: OK/);
      const text = execFileSync('openssl', ['x509', '-in', 'leaf.crt', '-noout', '-text'], { cwd: dir, encoding: 'utf8' });
      assert.match(text, name.startsWith('RSA') ? /rsaEncryption/ : /id-ecPublicKey/);
      assert.match(text, /Subject: CN ?= ?10\.0\.0\.13/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
});

// --- enrol: the token before the CSR ------------------------------------------------------------

test('enrol with a bad token and a huge garbage or weak CSR: refused as a token error, the CSR is never parsed', async () => {
  const real = await tokenFor('node-1');
  const wrongSecret = `pga1.${Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(real.slice(5), 'base64url').toString()), secret: 'x'.repeat(43) })).toString('base64url')}`;
  const garbage = `-----BEGIN CERTIFICATE REQUEST-----\n${'A'.repeat(1024 * 1024)}\n-----END CERTIFICATE REQUEST-----\n`;
  for (const [what, csr] of [['1 MiB garbage CSR', garbage], ['not PEM at all', 'x'.repeat(100_000)], ['RSA 512 CSR', createCsr(rsa(512), 'x')]] as const) {
    const r = await h.anon.call('POST', '/v1/agent/enroll', { body: { token: wrongSecret, csr } });
    assert.equal(r.status, 401, `${what}: ${r.status} ${r.text.slice(0, 200)}`);
    assert.equal(r.body.code, 'E_UNAUTHENTICATED', `${what}: the token error, not a CSR error`);
    assert.match(r.body.message, /join token refused: unknown token/);
  }
  // With the real token, the same garbage is the CSR's error, and the token is not burnt.
  const bad = await h.anon.call('POST', '/v1/agent/enroll', { body: { token: real, csr: garbage } });
  assert.equal(bad.status, 400, bad.text.slice(0, 200));
  assert.equal(bad.body.code, 'E_CSR_INVALID');
  assert.equal((await h.anon.call('POST', '/v1/agent/enroll', { body: { token: real, csr: createCsr(rsa(2048), 'x') } })).status, 200);
});

test('the cluster CA a coordinator makes is basicConstraints critical, CA:TRUE, pathlen:0; so is its own CA', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'pgaccord-ca-'));
  try {
    writeFileSync(join(dir, 'cluster.crt'), (await h.admin.call('GET', '/v1/clusters/ids/ca.crt')).text);
    writeFileSync(join(dir, 'coord.crt'), h.caPem);
    for (const f of ['cluster.crt', 'coord.crt']) {
      const text = execFileSync('openssl', ['x509', '-in', f, '-noout', '-text'], { cwd: dir, encoding: 'utf8' });
      assert.match(text, /X509v3 Basic Constraints: critical\s+CA:TRUE, pathlen:0/, f);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
