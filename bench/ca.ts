// npm run bench:ca: issue certificates from CSRs for a few seconds (CSR parse + signature
// check + certificate build + signature, exactly the coordinator's path) and print the rate.
// Last line: JSON with certs_per_s. Workers (one per CPU) sign in parallel, as the coordinator can.
import { availableParallelism } from 'node:os';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { CertificateAuthority } from '../coordinator/ca.ts';
import { createCsr, generateRsaKey, readCsrKey } from '../shared/x509.ts';

interface Job { caCert: string; caKey: string; csrs: string[]; seconds: number }

function issueLoop(job: Job): { n: number; seconds: number } {
  const ca = new CertificateAuthority(job.caCert, job.caKey);
  const start = Date.now();
  const end = start + job.seconds * 1000;
  let n = 0;
  while (Date.now() < end) {
    const { publicKey } = readCsrKey(job.csrs[n % job.csrs.length]!);
    ca.issue({ publicKey, commonName: 'node-1.example.com', dnsNames: ['node-1.example.com'], ipAddresses: ['10.0.0.1'], usage: 'server', lifetimeSeconds: 90 * 86400, now: new Date() });
    n++;
  }
  return { n, seconds: (Date.now() - start) / 1000 };
}

if (!isMainThread) {
  parentPort!.postMessage(issueLoop(workerData as Job));
} else {
  const seconds = Number(process.env.BENCH_SECONDS ?? 4);
  const threads = Number(process.env.BENCH_THREADS ?? availableParallelism());
  const created = await CertificateAuthority.create('bench CA', new Date());
  const csrs = await Promise.all(Array.from({ length: 8 }, async (_, i) => createCsr((await generateRsaKey()).privateKeyPem, `asks-for-${i}`)));
  const job: Job = { caCert: created.ca.certPem, caKey: created.keyPem, csrs, seconds };
  issueLoop({ ...job, seconds: 0.5 }); // warm-up (JIT)
  const one = issueLoop(job);
  const single = one.n / one.seconds;
  // Workers start together; each measures its own loop, so thread start-up is not counted.
  const results = await Promise.all(Array.from({ length: threads }, () => new Promise<{ n: number; seconds: number }>((resolve, reject) => {
    // A worker does not inherit tsx from --import: register it, then load this file.
    const boot = `import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(import.meta.url)}); })`;
    const w = new Worker(boot, { eval: true, workerData: job });
    w.once('message', resolve);
    w.once('error', reject);
  })));
  const parallel = results.reduce((a, r) => a + r.n / r.seconds, 0);
  const total = results.reduce((a, r) => a + r.n, 0) + one.n;
  console.log(`single thread: ${Math.round(single)} certs/s; ${threads} worker threads: ${Math.round(parallel)} certs/s`);
  console.log(JSON.stringify({ certs_per_s: Math.round(Math.max(single, parallel)), single_thread_certs_per_s: Math.round(single), parallel_certs_per_s: Math.round(parallel), threads, seconds_per_run: seconds, certs: total }));
}
