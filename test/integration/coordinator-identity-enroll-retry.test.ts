// Enrolment whose answer was lost (issue 11): the agent sends its join token again with a CSR of
// the same key and gets its identity certificate; any other key is refused as before, and so is
// the same key once that identity has been renewed, re-enrolled or revoked. Real coordinator and store.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { certMatchesKey, certInfo } from '../../shared/crypto/x509.ts';
import { createCsr } from '../../shared/crypto/csr.ts';
import { generateKey } from '../../shared/crypto/keys.ts';
import { throwawayStore } from '../helpers/pg.ts';
import { httpsClient, pgdSpec, startHarness, type Harness } from '../helpers/coordinator-harness.ts';

let h: Harness;
const { databaseUrl } = await throwawayStore();

before(async () => {
  h = await startHarness({ databaseUrl });
  const put = await h.admin.call('PUT', '/v1/clusters/retry', { body: pgdSpec('retry') });
  assert.equal(put.status, 200, put.text);
});
after(() => h?.close());

async function tokenFor(node: string, ttl?: string): Promise<string> {
  const r = await h.admin.call('POST', `/v1/clusters/retry/nodes/${node}/tokens`, { body: ttl ? { ttl } : {} });
  assert.equal(r.status, 200, r.text);
  return r.body.token;
}

const key = async () => (await generateKey('ecdsa-p256')).privateKeyPem;
const enrol = (token: string, keyPem: string) => h.anon.call('POST', '/v1/agent/enroll', { body: { token, csr: createCsr(keyPem, 'retry') } });
const identities = async (node: string) => (await h.coord.store.query<{ n: number }>(
  `SELECT count(*)::int AS n FROM certificates WHERE cluster = 'retry' AND node = $1 AND slot = 'identity'`, [node]))[0]!.n;

test('the same token with a new CSR of the same key gets the identity again; another key is refused as a spent token', async () => {
  const token = await tokenFor('node-1');
  const k = await key();
  const first = await enrol(token, k);
  assert.equal(first.status, 200, first.text);
  // The answer is lost; the agent still has K and sends a fresh CSR of it (a new signature).
  const again = await enrol(token, k);
  assert.equal(again.status, 200, `retry with the same key: ${again.status} ${again.text}`);
  assert.ok(certMatchesKey(again.body.certificate, k), 'a certificate for K');
  assert.deepEqual(certInfo(again.body.certificate).uris, ['pgaccord://agent/retry/node-1']);
  assert.equal(certInfo(again.body.certificate).serial, certInfo(first.body.certificate).serial, 'the certificate issued at the spend, not a second one');
  assert.equal(await identities('node-1'), 1, 'one identity certificate issued');
  const agent = httpsClient(h.coord.url, h.caPem, { certPem: again.body.certificate, keyPem: k });
  assert.equal((await agent.call('GET', '/v1/agent/desired?after=0&wait=0')).status, 200, 'and it authenticates');
  // The negative case: whoever holds the token but not K.
  const other = await enrol(token, await key());
  assert.equal(other.status, 401, other.text);
  assert.equal(other.body.code, 'E_UNAUTHENTICATED');
  assert.match(other.body.message, /join token refused: the token has already been used/);
  assert.equal(await identities('node-1'), 1);
});

test('the same key no longer enrols once the identity it got has been renewed', async () => {
  const token = await tokenFor('node-2');
  const k = await key();
  const first = await enrol(token, k);
  assert.equal(first.status, 200, first.text);
  const agent = httpsClient(h.coord.url, h.caPem, { certPem: first.body.certificate, keyPem: k });
  const renewed = await agent.call('POST', '/v1/agent/csr', { body: { slot: 'identity', csr: createCsr(await key(), 'x') } });
  assert.equal(renewed.status, 200, renewed.text);
  // The answer was delivered (the agent renewed with it): a replay of the old key must not push out the new identity.
  const replay = await enrol(token, k);
  assert.equal(replay.status, 401, replay.text);
  assert.match(replay.body.message, /already been used/);
  const [row] = await h.coord.store.query<{ identity_serial: string }>(`SELECT identity_serial FROM agents WHERE cluster = 'retry' AND node = 'node-2'`);
  assert.equal(row!.identity_serial, renewed.body.serial);
});

test('the same key no longer enrols with an old token once the node enrolled with a newer one, nor once its identity is revoked', async () => {
  const t1 = await tokenFor('node-3');
  const k1 = await key();
  assert.equal((await enrol(t1, k1)).status, 200);
  const t2 = await tokenFor('node-3');
  const k2 = await key();
  const second = await enrol(t2, k2);
  assert.equal(second.status, 200, second.text);
  assert.equal((await enrol(t1, k1)).status, 401, 'the old token certified an identity that is no longer the node\'s');
  assert.equal((await enrol(t2, k2)).status, 200, 'the newer one still answers its own key');
  const revoked = await h.admin.call('POST', `/v1/clusters/retry/certificates/${certInfo(second.body.certificate).serial}/revoke`, { body: {} });
  assert.equal(revoked.status, 200, revoked.text);
  const after = await enrol(t2, k2);
  assert.equal(after.status, 401, `a revoked identity is not handed out again: ${after.text}`);
  assert.match(after.body.message, /already been used/);
});

test('a spent token past its expiry is refused even with the same key', async () => {
  const token = await tokenFor('node-1', '1m');
  const k = await key();
  assert.equal((await enrol(token, k)).status, 200);
  h.setClockOffset(2 * 60_000);
  try {
    const late = await enrol(token, k);
    assert.equal(late.status, 401, late.text);
    assert.match(late.body.message, /join token refused/);
  } finally {
    h.setClockOffset(0);
  }
});
