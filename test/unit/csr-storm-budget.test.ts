// One bound for a CSR storm (review of issue 13): a CSR waits for its check in the signing pool,
// then at the gate in front of its store work (coordinator/service/certificates.ts csrGate), then
// for its signature. The gate's waiters count against the pool's maxQueue with its jobs, so at
// most maxQueue requests wait, wherever they wait, before E_SIGNING_BUSY.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate as tick } from 'node:timers/promises';
import { CertificateAuthority } from '../../coordinator/ca/ca.ts';
import { SigningPool } from '../../coordinator/ca/signing-pool.ts';
import { ApiError } from '../../coordinator/errors.ts';
import { csrGate } from '../../coordinator/service/certificates.ts';
import { createCsr, readCsrKey } from '../../shared/crypto/csr.ts';
import { generateRsaKey } from '../../shared/crypto/keys.ts';

const MAX_QUEUE = 8;
const keyP = generateRsaKey();
const caP = CertificateAuthority.create('storm CA', new Date());
const isBusy = (e: unknown) => e instanceof ApiError && e.status === 503 && e.code === 'E_SIGNING_BUSY';

/** Start each of `n` requests now; after one turn of the loop, how many were let in to wait (not refused E_SIGNING_BUSY at once). */
function burst(n: number, start: () => Promise<unknown>) {
  let refused = 0;
  const all = Array.from({ length: n }, () => start().catch((e: unknown) => {
    if (!isBusy(e)) throw e;
    refused++;
  }));
  return { all: Promise.all(all), admitted: async () => (await tick(), n - refused) };
}

for (const order of ['gate first', 'pool first'] as const) {
  test(`a CSR storm, ${order}: at most maxQueue requests wait (gate and pool together) before E_SIGNING_BUSY${order === 'gate first' ? '; a signature still goes in' : ''}`, async () => {
    const csr = createCsr((await keyP).privateKeyPem, 'storm');
    const { ca } = await caP;
    const pool = new SigningPool({ size: 1, maxQueue: MAX_QUEUE });
    try {
      const gate = csrGate(pool);
      // CSRs in their store work, holding every slot of the gate: the next ones wait there.
      let release!: () => void;
      const held = new Promise<void>((r) => (release = r));
      const running = Array.from({ length: gate.limit }, () => gate.run(() => held));
      // Submitted in one synchronous burst: no job is answered before all are counted.
      const atGate = () => burst(2 * MAX_QUEUE, () => gate.run(async () => undefined));
      const checks = () => burst(2 * MAX_QUEUE, () => pool.readCsrKey(csr));
      const [a, b] = order === 'gate first' ? [atGate(), checks()] : [checks(), atGate()];
      const waiting = (await a.admitted()) + (await b.admitted());
      assert.equal(waiting, MAX_QUEUE, `requests let in to wait (gate ${order === 'gate first' ? 'then' : 'after'} pool checks), maxQueue ${MAX_QUEUE}`);
      if (order === 'gate first') {
        // A signature's caller holds a transaction, past the gate: those waiting there do not refuse it.
        const cert = await pool.issue(ca, { publicKey: readCsrKey(csr).publicKey, commonName: 'db1', dnsNames: ['db1'], ipAddresses: [], usage: 'server', lifetimeSeconds: 3600, now: new Date() });
        assert.match(cert.pem, /BEGIN CERTIFICATE/);
      }
      release();
      await Promise.all([...running, a.all, b.all]);
      assert.equal(gate.running, 0);
      // Every waiter gave its place back: the whole budget is there again.
      assert.equal(pool.queueDepth, 0);
      const again = burst(2 * MAX_QUEUE, () => pool.readCsrKey(csr));
      assert.equal(await again.admitted(), MAX_QUEUE);
      await again.all;
    } finally {
      await pool.close();
    }
  });
}
