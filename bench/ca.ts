// npm run bench:ca: issue certificates from CSRs for a few seconds (CSR parse + signature
// check + certificate build + signature, exactly the coordinator's path) and print the rate.
// Last line: JSON with certs_per_s. Workers (one per CPU) sign in parallel, as the coordinator can.
import { availableParallelism } from 'node:os';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { CertificateAuthority } from '../coordinator/ca.ts';
import { createCsr, generateRsaKey, readCsrKey } from '../shared/x509.ts';

interface Job { caCert: string; caKey: string; csrs: string[]; seconds: number }

function issueLoop(job: Job): number {
  const ca = new CertificateAuthority(job.caCert, job.caKey);
  const end = Date.now() + job.seconds * 1000;
  let n = 0;
  while (Date.now() < end) {
    const { publicKey } = readCsrKey(job.csrs[n % job.csrs.length]!);
    ca.issue({ publicKey, commonName: 'node-1.example.com', dnsNames: ['node-1.example.com'], ipAddresses: ['10.0.0.1'], usage: 'server', lifetimeSeconds: 90 * 86400, now: new Date() });
    n++;
  }
  return n;
}

if (!isMainThread) {
  parentPort!.postMessage(issueLoop(workerData as Job));
} else {
  const seconds = Number(process.env.BENCH_SECONDS ?? 4);
  const threads = Number(process.env.BENCH_THREADS ?? availableParallelism());
  const created = await CertificateAuthority.create('bench CA', new Date());
  const csrs = await Promise.all(Array.from({ length: 8 }, async (_, i) => createCsr((await generateRsaKey()).privateKeyPem, `asks-for-${i}`)));
  const job: Job = { caCert: created.ca.certPem, caKey: created.keyPem, csrs, seconds };
  const single = issueLoop({ ...job, seconds: Math.min(2, seconds) }) / Math.min(2, seconds);
  const started = Date.now();
  const counts = await Promise.all(Array.from({ length: threads }, () => new Promise<number>((resolve, reject) => {
    // A worker does not inherit tsx from --import: register it, then load this file.
    const boot = `import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(import.meta.url)}); })`;
    const w = new Worker(boot, { eval: true, workerData: job });
    w.once('message', resolve);
    w.once('error', reject);
  })));
  const elapsed = (Date.now() - started) / 1000;
  const total = counts.reduce((a, b) => a + b, 0);
  console.log(JSON.stringify({ certs_per_s: Math.round(total / elapsed), single_thread_certs_per_s: Math.round(single), threads, seconds: Number(elapsed.toFixed(2)), certs: total }));
}
