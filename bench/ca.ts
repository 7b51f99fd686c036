// npm run bench:ca: issue certificates from CSRs for a few seconds (CSR parse + signature
// check + certificate build + signature, exactly the coordinator's path) and print the rate:
// inline on one thread, then through the coordinator's signing pool (coordinator/ca/signing-pool.ts,
// one worker per CPU unless BENCH_THREADS says otherwise). Last line: JSON with certs_per_s
// (the pool's rate). BENCH_KEY=ec-p256 makes the CSRs with P-256 keys (default rsa-2048).
import { availableParallelism } from 'node:os';
import { CertificateAuthority, type LeafRequest } from '../coordinator/ca/ca.ts';
import { SigningPool } from '../coordinator/ca/signing-pool.ts';
import { createCsr, readCsrKey } from '../shared/crypto/csr.ts';
import type { KeyType } from '../shared/crypto/key-types.ts';
import { generateKey } from '../shared/crypto/keys.ts';

const seconds = Number(process.env.BENCH_SECONDS ?? 4);
const threads = Number(process.env.BENCH_THREADS ?? availableParallelism());
const keyType = (process.env.BENCH_KEY ?? 'rsa-2048') as KeyType;
/** Jobs kept submitted at once: enough to keep every worker busy, as concurrent requests do. */
const window = Number(process.env.BENCH_WINDOW ?? 64);

const created = await CertificateAuthority.create('bench CA', new Date());
const ca = created.ca;
const csrs = await Promise.all(Array.from({ length: 8 }, async (_, i) => createCsr((await generateKey(keyType)).privateKeyPem, `asks-for-${i}`)));
const leaf = (publicKey: LeafRequest['publicKey']): LeafRequest => ({ publicKey, commonName: 'node-1.example.com', dnsNames: ['node-1.example.com'], ipAddresses: ['10.0.0.1'], usage: 'server', lifetimeSeconds: 90 * 86400, now: new Date() });

function inline(forSeconds: number): { n: number; seconds: number } {
  const start = Date.now();
  const end = start + forSeconds * 1000;
  let n = 0;
  while (Date.now() < end) {
    ca.issue(leaf(readCsrKey(csrs[n % csrs.length]!).publicKey));
    n++;
  }
  return { n, seconds: (Date.now() - start) / 1000 };
}

/** As the coordinator does per request: the CSR checked by a worker, then signed by one. */
async function pooled(pool: SigningPool, forSeconds: number): Promise<{ n: number; seconds: number }> {
  const start = Date.now();
  const end = start + forSeconds * 1000;
  let n = 0;
  await Promise.all(Array.from({ length: window }, async (_, lane) => {
    for (let i = lane; Date.now() < end; i += window) {
      const { publicKey } = await pool.readCsrKey(csrs[i % csrs.length]!);
      await pool.issue(ca, leaf(publicKey));
      n++;
    }
  }));
  return { n, seconds: (Date.now() - start) / 1000 };
}

inline(0.5); // warm-up (JIT)
const one = inline(seconds);
const single = one.n / one.seconds;
const pool = new SigningPool({ size: threads, maxQueue: 2 * window });
try {
  await pooled(pool, 0.5); // threads started, CA handed to each, JIT warm
  const p = await pooled(pool, seconds);
  const throughPool = p.n / p.seconds;
  console.log(`${keyType} CSRs: inline on one thread ${Math.round(single)} certs/s; signing pool of ${threads} worker threads ${Math.round(throughPool)} certs/s`);
  console.log(JSON.stringify({ certs_per_s: Math.round(throughPool), single_thread_certs_per_s: Math.round(single), pool_certs_per_s: Math.round(throughPool), threads, key: keyType, seconds_per_run: seconds, certs: one.n + p.n }));
} finally {
  await pool.close();
}
