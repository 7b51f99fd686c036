// The coordinator signs through its signing pool (coordinator/ca/signing-pool.ts): enrolments,
// CSRs and CRLs are checked and signed by worker threads; the queue depth is a metric; closing
// the coordinator stops the threads.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'undici';
import { ApiError } from '../../coordinator/errors.ts';
import { crlSignedBy } from '../../shared/crypto/crl.ts';
import { verifiesAgainst } from '../../shared/crypto/x509.ts';
import { createCsr, readCsrKey } from '../../shared/crypto/csr.ts';
import { generateRsaKey } from '../../shared/crypto/keys.ts';
import { enroll, pgdSpec, startHarness, type Harness } from '../helpers/coordinator-harness.ts';

let h: Harness;

before(async () => {
  h = await startHarness({ metricsListen: '127.0.0.1:0', signingWorkers: 2 });
});

after(async () => {
  await h.close();
});

test('enrolment, node CSRs and CRLs are signed by the pool\'s worker threads; the queue depth is exported', async () => {
  const pool = h.coord.signing;
  assert.equal(pool.size, 2, '--signing-workers is honoured');
  const before = pool.answered;
  const put = await h.admin.call('PUT', '/v1/clusters/sig', { body: pgdSpec('sig') });
  assert.equal(put.status, 200, put.text);
  const crl = await h.admin.call('GET', '/v1/clusters/sig/crl');
  assert.equal(crl.status, 200, crl.text);
  const clusterCa = (await h.admin.call('GET', '/v1/clusters/sig/ca.crt')).text;
  assert.ok(crlSignedBy(crl.text, clusterCa), 'the first CRL (signed in a worker) verifies');
  const afterPut = pool.answered;
  assert.ok(afterPut >= before + 1, `the cluster's first CRL went through the pool (${before} -> ${afterPut})`);
  const n = await enroll(h, 'sig', 'node-1');
  assert.ok(verifiesAgainst(n.certPem, h.caPem));
  const afterEnrol = pool.answered;
  assert.ok(afterEnrol >= afterPut + 2, `enrolment: CSR check and signature in the pool (${afterPut} -> ${afterEnrol})`);
  const { privateKeyPem } = await generateRsaKey();
  const r = await n.client.call('POST', '/v1/agent/csr', { body: { slot: 'server', csr: createCsr(privateKeyPem, 'x') } });
  assert.equal(r.status, 200, r.text);
  assert.ok(verifiesAgainst(r.body.certificate, clusterCa));
  assert.ok(pool.answered >= afterEnrol + 2, `node CSR: check and signature in the pool (${afterEnrol} -> ${pool.answered})`);
  assert.ok(pool.threads >= 1 && pool.threads <= 2, `threads running: ${pool.threads}`);
  const metrics = await (await request(h.coord.metricsUrl!)).body.text();
  assert.match(metrics, /^pgaccord_signing_queue_depth 0$/m);
  assert.match(metrics, /^pgaccord_signing_workers 2$/m);
});

test('a renewal storm is signed a few transactions at a time: the store\'s connections stay free for the long-polls beside it', async () => {
  const put = await h.admin.call('PUT', '/v1/clusters/storm', { body: pgdSpec('storm') });
  assert.equal(put.status, 200, put.text);
  const nodes = await Promise.all(['node-1', 'node-2', 'node-3'].map((n) => enroll(h, 'storm', n)));
  const csrs = await Promise.all(Array.from({ length: 30 }, async () => createCsr((await generateRsaKey()).privateKeyPem, 'x')));
  // Signatures in flight at once: each is made inside its CSR's transaction, which holds a store connection.
  const pool = h.coord.signing;
  const issue = pool.issue.bind(pool);
  let inFlight = 0;
  let most = 0;
  pool.issue = async (...args) => {
    most = Math.max(most, ++inFlight);
    try {
      // A loaded machine's signature: each transaction holds its connection the longer.
      await new Promise((r) => setTimeout(r, 30));
      return await issue(...args);
    } finally {
      inFlight--;
    }
  };
  try {
    const answers = await Promise.all(csrs.map((csr, i) => nodes[i % 3]!.client.call('POST', '/v1/agent/csr', { body: { slot: 'server', csr } })));
    assert.deepEqual(answers.map((a) => a.status), csrs.map(() => 200), answers.find((a) => a.status !== 200)?.text);
  } finally {
    pool.issue = issue;
  }
  assert.ok(most <= 4, `${most} CSR transactions held a store connection at once (the store has 10)`);
});

test('closing the coordinator stops the signing threads; the pool then refuses with E_SIGNING_UNAVAILABLE', async () => {
  const pool = h.coord.signing;
  const { publicKey } = readCsrKey(createCsr((await generateRsaKey()).privateKeyPem, 'x'));
  await pool.issue(h.coord.dataDir.ca, { publicKey, commonName: 'x', usage: 'client', lifetimeSeconds: 3600, now: new Date() });
  assert.ok(pool.threads >= 1);
  await h.coord.close();
  assert.equal(pool.threads, 0);
  await assert.rejects(pool.issue(h.coord.dataDir.ca, { publicKey, commonName: 'x', usage: 'client', lifetimeSeconds: 3600, now: new Date() }), (e: unknown) => e instanceof ApiError && e.code === 'E_SIGNING_UNAVAILABLE');
});
