// node --import tsx bench/desired.ts: what one agent request costs the coordinator in a big
// cluster (default one pgd cluster of 200 nodes, cert auth, verify-full: a full mesh).
//   desired_ms        GET /v1/agent/desired?after=0 over HTTPS (mTLS) for one agent, mean of BENCH_RUNS
//   desired_inproc_ms service.desired(after=0) for every node in turn, mean (no TLS, no JSON)
//   fanout_ms         every node's desired(after=0) at once (what a change's wake-up costs)
//   status_ms         POST /v1/agent/status over HTTPS, mean
//   csr_ms            POST /v1/agent/csr (slot server) over HTTPS, mean
//   *_cpu_ms          the CPU time of this process for the same (less noisy than wall time on a busy machine)
//   rss_mb            this process (coordinator in-process), after setup and peak during the fan-out
// BENCH_NODES sets the cluster size. Last line: JSON with the figures.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { Agent, request } from 'undici';
import { startCoordinator } from '../coordinator/main.ts';
import type { ClusterSpec } from '../shared/contract/schema.ts';
import type { AgentStatus } from '../shared/contract/status.ts';
import { createCsr } from '../shared/crypto/csr.ts';
import { generateRsaKey } from '../shared/crypto/keys.ts';

const N = Number(process.env.BENCH_NODES ?? 200);
const RUNS = Number(process.env.BENCH_RUNS ?? 20);
const CLUSTER = 'big';

const rssMb = () => Math.round(process.memoryUsage().rss / 1048576);
const round = (x: number) => Math.round(x * 10) / 10;

const spec: ClusterSpec = {
  name: CLUSTER,
  profile: 'pgd',
  auth: 'cert',
  tls: { sslmode: 'verify-full', certLifetime: '90d' },
  nodes: Array.from({ length: N }, (_, i) => ({ name: `node-${i + 1}`, host: `db${i + 1}.example.com`, address: `10.0.${Math.floor(i / 250)}.${(i % 250) + 1}`, kind: 'peer' })),
};

const dir = await mkdtemp(join(tmpdir(), 'pgaccord-bench-desired-'));
const coord = await startCoordinator({ dataDir: dir, listen: '127.0.0.1:0', longPollMs: 30_000, logLevel: 'warn', logDestination: pino.destination({ dest: '/dev/null', sync: false }) });
try {
  const dispatcher = (identity?: { cert: string; key: string }) => new Agent({ connect: { ca: coord.dataDir.caPem, rejectUnauthorized: true, ...identity } });
  const adminD = dispatcher();
  const call = async (d: Agent, method: string, path: string, body?: unknown, token?: string) => {
    const res = await request(`${coord.url}${path}`, {
      method: method as 'GET',
      dispatcher: d,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
    const text = await res.body.text();
    if (res.statusCode >= 300) throw new Error(`${method} ${path}: ${res.statusCode} ${text.slice(0, 300)}`);
    return text ? JSON.parse(text) : null;
  };
  const admin = (method: string, path: string, body?: unknown) => call(adminD, method, path, body, coord.dataDir.adminToken);
  await admin('PUT', `/v1/clusters/${CLUSTER}`, spec);
  const { privateKeyPem } = await generateRsaKey();
  const tok = await admin('POST', `/v1/clusters/${CLUSTER}/nodes/node-1/tokens`, {});
  const enrolled = await call(dispatcher(), 'POST', '/v1/agent/enroll', { token: tok.token, csr: createCsr(privateKeyPem, 'bench') });
  const agentD = dispatcher({ cert: enrolled.certificate, key: privateKeyPem });
  const agent = (method: string, path: string, body?: unknown) => call(agentD, method, path, body);
  const cpu: Record<string, number> = {};
  /** Mean wall time of f; its mean CPU time of this process (the coordinator's and the client's) goes in cpu[name]. */
  const timeMean = async (name: string, runs: number, f: (i: number) => Promise<unknown>) => {
    await f(0); // warm-up
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    for (let i = 0; i < runs; i++) await f(i);
    const c = process.cpuUsage(c0);
    cpu[`${name}_cpu_ms`] = round((c.user + c.system) / 1000 / runs);
    return round((performance.now() - t0) / runs);
  };

  const rssSetup = rssMb();
  const desiredMs = await timeMean('desired', RUNS, () => agent('GET', '/v1/agent/desired?after=0&wait=0'));
  const principal = (node: string) => ({ cluster: CLUSTER, node, serial: 'bench' });
  const desiredInprocMs = await timeMean('desired_inproc', Math.min(N, RUNS * 5), (i) => coord.service.desired(principal(`node-${(i % N) + 1}`), 0, undefined, 0));
  const report: AgentStatus = {
    generation: 1, phase: 'converged', errors: [], files: [], servedCertificate: null, certificates: [], probes: [], pendingRestart: [], coordinatorReachable: true, versions: { agent: '0.1.0', postgres: '15' },
  };
  const statusMs = await timeMean('status', RUNS, () => agent('POST', '/v1/agent/status', report));
  const csr = createCsr(privateKeyPem, 'db1.example.com');
  const csrMs = await timeMean('csr', RUNS, () => agent('POST', '/v1/agent/csr', { slot: 'server', csr }));

  // Fan-out: a new generation, then every node asks at once (as their long-polls would).
  await admin('PUT', `/v1/clusters/${CLUSTER}`, { ...spec, database: 'bench' });
  let peak = rssMb();
  const sampler = setInterval(() => (peak = Math.max(peak, rssMb())), 20);
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(spec.nodes.map((n) => coord.service.desired(principal(n.name), 1, undefined, 0)));
  const fanoutMs = Math.round(performance.now() - t0);
  const fc = process.cpuUsage(c0);
  cpu.fanout_cpu_ms = Math.round((fc.user + fc.system) / 1000);
  clearInterval(sampler);
  peak = Math.max(peak, rssMb());

  const figures = { nodes: N, desired_ms: desiredMs, desired_inproc_ms: desiredInprocMs, status_ms: statusMs, csr_ms: csrMs, fanout_ms: fanoutMs, ...cpu, rss_mb_setup: rssSetup, rss_mb_peak: peak };
  console.log(`pgd cluster of ${N} nodes: desired ${desiredMs} ms (HTTPS), ${desiredInprocMs} ms (in process); status ${statusMs} ms; csr ${csrMs} ms; all ${N} desired at once ${fanoutMs} ms; RSS ${rssSetup} MB, peak ${peak} MB`);
  console.log(JSON.stringify(figures));
  await Promise.all([adminD.close(), agentD.close()]);
} finally {
  await coord.close();
  await rm(dir, { recursive: true, force: true });
}
