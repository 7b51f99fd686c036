// The signing pool (coordinator/ca/signing-pool.ts): CSR checks, certificates and CRLs signed in
// worker threads with what the main thread decided (serial, CRL number); the event loop stays
// free while a batch is signed; failures are coded; close() drains and stops the threads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { threadId } from 'node:worker_threads';
import { CertificateAuthority, randomSerial } from '../../coordinator/ca/ca.ts';
import { ApiError } from '../../coordinator/errors.ts';
import { SigningPool } from '../../coordinator/ca/signing-pool.ts';
import { crlInfo, crlSignedBy } from '../../shared/crypto/crl.ts';
import { certInfo, certMatchesKey, verifiesAgainst, X509Error } from '../../shared/crypto/x509.ts';
import { createCsr, readCsrKey } from '../../shared/crypto/csr.ts';
import { generateRsaKey } from '../../shared/crypto/keys.ts';

const caP = CertificateAuthority.create('pool CA', new Date());
const leaf = (publicKey: ReturnType<typeof readCsrKey>['publicKey'], serial?: string) => ({
  publicKey, serial, commonName: 'db1.example.com', dnsNames: ['db1.example.com'], ipAddresses: ['10.0.0.1'], usage: 'server' as const, lifetimeSeconds: 86400, now: new Date(),
});

/**
 * While `work` runs: the longest gap between 1 ms timer ticks, and the CPU time of this (the
 * event loop's) thread. The gap is what a long-poll would wait, but on a loaded machine the OS
 * also delays a thread that is not blocked; the thread's own CPU time is not inflated by that.
 */
// Node >= 23.9 (CI runs 24); @types/node 20 does not declare it.
const threadCpuUsage = (prev?: NodeJS.CpuUsage) => (process as unknown as { threadCpuUsage(p?: NodeJS.CpuUsage): NodeJS.CpuUsage }).threadCpuUsage(prev);

async function loopCost(work: () => Promise<unknown>): Promise<{ lagMs: number; cpuMs: number }> {
  let last = performance.now();
  let worst = 0;
  const t = setInterval(() => {
    const n = performance.now();
    worst = Math.max(worst, n - last);
    last = n;
  }, 1);
  await new Promise((r) => setTimeout(r, 20));
  last = performance.now();
  worst = 0;
  const cpu0 = threadCpuUsage();
  await work();
  const cpu = threadCpuUsage(cpu0);
  await new Promise((r) => setTimeout(r, 5));
  clearInterval(t);
  return { lagMs: worst, cpuMs: (cpu.user + cpu.system) / 1000 };
}

test('signing runs in a worker thread, with the serial chosen by the caller; results are what the CA signs inline', async () => {
  const { ca } = await caP;
  const pool = new SigningPool({ size: 2 });
  try {
    const tid = await pool.workerThreadId();
    assert.notEqual(tid, threadId, 'the job ran on another thread');
    const { privateKeyPem } = await generateRsaKey();
    const csr = createCsr(privateKeyPem, 'x');
    const checked = await pool.readCsrKey(csr);
    assert.deepEqual(checked.publicKey, readCsrKey(csr).publicKey, 'the worker parses the CSR as the main thread does');
    const serial = randomSerial();
    // One request for both issues: built twice, its `now` could fall either side of a second.
    const request = leaf(checked.publicKey, serial);
    const issued = await pool.issue(ca, request);
    assert.equal(issued.serial, serial);
    assert.equal(certInfo(issued.pem).serial, serial);
    assert.ok(issued.notAfter instanceof Date && issued.notBefore instanceof Date);
    assert.ok(verifiesAgainst(issued.pem, ca.certPem) && certMatchesKey(issued.pem, privateKeyPem));
    const inline = ca.issue(request);
    assert.deepEqual({ ...certInfo(issued.pem), fingerprint256: '' }, { ...certInfo(inline.pem), fingerprint256: '' }, 'same fields as an inline issue');
    const crl = await pool.issueCrl(ca, { revoked: [{ serial, revokedAt: new Date() }], number: 7, thisUpdate: new Date(Date.now() - 60_000), nextUpdate: new Date(Date.now() + 86400_000) });
    assert.ok(crlSignedBy(crl, ca.certPem));
    assert.equal(crlInfo(crl).number, 7n);
    assert.deepEqual(crlInfo(crl).revoked.map((r) => r.serial), [serial]);
  } finally {
    await pool.close();
  }
});

test('the event loop stays responsive while 200 CSRs are checked and signed through the pool (vs inline)', async () => {
  const { ca } = await caP;
  const keys = await Promise.all(Array.from({ length: 4 }, () => generateRsaKey()));
  const csrs = Array.from({ length: 200 }, (_, i) => createCsr(keys[i % keys.length]!.privateKeyPem, `n${i}`));
  const pool = new SigningPool({ size: 2 });
  try {
    await pool.issue(ca, leaf(readCsrKey(csrs[0]!).publicKey)); // threads started, CA sent
    await pool.issue(ca, leaf(readCsrKey(csrs[0]!).publicKey));
    // Inline, as the coordinator signed before the pool: 200 requests queued behind each other
    // each parse, verify and sign on the loop, and a timer waits for all of them.
    const inline = await loopCost(async () => {
      for (const csr of csrs) ca.issue(leaf(readCsrKey(csr).publicKey));
    });
    let done = 0;
    const pooled = await loopCost(() => Promise.all(csrs.map(async (csr) => {
      const { publicKey } = await pool.readCsrKey(csr);
      await pool.issue(ca, leaf(publicKey));
      done++;
    })));
    console.log(`signing 200 CSRs: event-loop thread CPU inline ${inline.cpuMs.toFixed(0)} ms, pool ${pooled.cpuMs.toFixed(0)} ms; longest timer gap inline ${inline.lagMs.toFixed(0)} ms, pool ${pooled.lagMs.toFixed(0)} ms`);
    assert.equal(done, 200);
    // Three quarters, not a half: the pool's messages cost the loop 0.25-0.5 ms a CSR, inline ~1 ms;
    // fresh-clone CI saw 103 ms against 204 (a half failed by a millisecond), idle runs 50 against 165.
    assert.ok(pooled.cpuMs < inline.cpuMs * 0.75, `the event loop's thread spent ${pooled.cpuMs.toFixed(0)} ms of CPU with the pool, not well under the ${inline.cpuMs.toFixed(0)} ms inline`);
  } finally {
    await pool.close();
  }
});

test('pool failures are coded: a full queue E_SIGNING_BUSY (503), a refused CSR keeps its X509 code, a CA that cannot sign E_SIGNING_FAILED', async () => {
  const { ca } = await caP;
  const { privateKeyPem } = await generateRsaKey();
  const { publicKey } = readCsrKey(createCsr(privateKeyPem, 'x'));
  const pool = new SigningPool({ size: 1, maxQueue: 3 });
  try {
    const results = await Promise.allSettled(Array.from({ length: 8 }, () => pool.issue(ca, leaf(publicKey))));
    const refused = results.filter((r) => r.status === 'rejected').map((r) => (r as PromiseRejectedResult).reason as ApiError);
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 3);
    assert.equal(refused.length, 5);
    for (const e of refused) assert.ok(e instanceof ApiError && e.status === 503 && e.code === 'E_SIGNING_BUSY', String(e));
    assert.equal(pool.queueDepth, 0);
    const weak = createCsr((await generateRsaKey(1024)).privateKeyPem, 'x');
    await assert.rejects(pool.readCsrKey(weak), (e: unknown) => e instanceof X509Error && e.code === 'E_CSR_KEY_POLICY');
    await assert.rejects(pool.readCsrKey('not a csr'), (e: unknown) => e instanceof X509Error && e.code === 'E_X509');
    const short = await CertificateAuthority.create('short CA', new Date(), 1);
    await assert.rejects(pool.issue(short.ca, { ...leaf(publicKey), now: new Date(Date.now() + 5000) }), (e: unknown) => e instanceof ApiError && e.status === 500 && e.code === 'E_SIGNING_FAILED' && /expired/.test(e.message));
  } finally {
    await pool.close();
  }
});

test('close() lets submitted jobs finish, stops every thread, and later jobs fail with E_SIGNING_UNAVAILABLE', async () => {
  const { ca } = await caP;
  const { publicKey } = readCsrKey(createCsr((await generateRsaKey()).privateKeyPem, 'x'));
  const pool = new SigningPool({ size: 2 });
  const jobs = Array.from({ length: 50 }, () => pool.issue(ca, leaf(publicKey)));
  assert.equal(pool.queueDepth, 50);
  assert.equal(pool.threads, 2);
  await pool.close();
  assert.equal((await Promise.allSettled(jobs)).filter((r) => r.status === 'fulfilled').length, 50, 'every submitted job was answered');
  assert.equal(pool.threads, 0);
  assert.equal(pool.queueDepth, 0);
  await assert.rejects(pool.issue(ca, leaf(publicKey)), (e: unknown) => e instanceof ApiError && e.status === 503 && e.code === 'E_SIGNING_UNAVAILABLE');
});

test('a signature does not wait behind queued CSR checks: its caller holds a transaction and a cluster lock', async () => {
  const { ca } = await caP;
  const { privateKeyPem } = await generateRsaKey();
  const csr = createCsr(privateKeyPem, 'x');
  const { publicKey } = readCsrKey(csr);
  const pool = new SigningPool({ size: 1 });
  try {
    await pool.issue(ca, leaf(publicKey)); // the thread started, the CA sent
    // A renewal storm: every CSR is checked first, then each is signed inside its transaction.
    let checked = 0;
    const checks = Array.from({ length: 40 }, () => pool.readCsrKey(csr).then(() => checked++));
    const checkedBeforeIssue = await pool.issue(ca, leaf(publicKey)).then(() => checked);
    await Promise.all(checks);
    assert.ok(checkedBeforeIssue <= 4, `the signature was answered after ${checkedBeforeIssue} of the 40 CSR checks submitted before it`);
  } finally {
    await pool.close();
  }
});
