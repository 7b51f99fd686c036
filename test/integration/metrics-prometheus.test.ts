// A real Prometheus server (Debian's `prometheus`) scrapes a real coordinator's metrics listener
// while two real PostgreSQL nodes, each with its real agent, converge; PromQL then answers
// questions about a real node's certificate (the one on disk that the server serves), the
// probe between the nodes, and the API requests by route pattern.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { Agent, request } from 'undici';
import { startCoordinator, type RunningCoordinator } from '../../coordinator/main.ts';
import { freePort } from '../../shared/system/pgserver.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import { certInfo } from '../../shared/crypto/x509.ts';
import { throwawayPg } from '../helpers/pg.ts';
import { startAgent, waitFor, type AgentProcess } from '../helpers/agent-process.ts';

const hasPrometheus = spawnSync('prometheus', ['--version']).status === 0;
const cleanup: string[] = [];
const agents: AgentProcess[] = [];
let coord: RunningCoordinator | undefined;
let prom: ChildProcess | undefined;
let promLog = '';

after(async () => {
  await Promise.all(agents.map((a) => a.stop('SIGKILL')));
  if (prom && prom.exitCode === null) {
    const exited = new Promise((r) => prom!.once('exit', r));
    prom.kill('SIGTERM');
    await exited;
  }
  await coord?.close().catch(() => undefined);
  for (const d of cleanup) await rm(d, { recursive: true, force: true });
});

interface PromSample {
  metric: Record<string, string>;
  value: [number, string];
}

async function promQuery(base: string, q: string): Promise<PromSample[]> {
  const res = await request(`${base}/api/v1/query?query=${encodeURIComponent(q)}`);
  const body = (await res.body.json()) as { status: string; data?: { resultType: string; result: PromSample[] }; error?: string };
  if (body.status !== 'success') throw new Error(`query ${q}: ${body.error}`);
  return body.data!.result;
}

test('a real Prometheus scrapes the coordinator and answers PromQL about a real node certificate', { skip: hasPrometheus ? false : 'prometheus not installed (Debian package prometheus; .ci/setup installs it)' }, async () => {
  // The coordinator's data directory itself (its embedded store runs as another OS user), and one for Prometheus.
  const dir = await mkdtemp(join(tmpdir(), 'pgaccord-metrics-'));
  const promDir = await mkdtemp(join(tmpdir(), 'pgaccord-prometheus-'));
  cleanup.push(dir, promDir);
  const [pg1, pg2] = await Promise.all([throwawayPg(), throwawayPg()]);
  coord = await startCoordinator({ dataDir: dir, listen: '127.0.0.1:0', metricsListen: '127.0.0.1:0', longPollMs: 2000, logLevel: 'warn', logDestination: pino.destination({ dest: join(dir, 'coordinator.log'), sync: true }) });
  assert.match(coord.metricsUrl ?? '', /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
  const metricsTarget = new URL(coord.metricsUrl!).host;

  const spec: ClusterSpec = {
    name: 'sales',
    profile: 'streaming',
    auth: 'scram-sha-256',
    tls: { sslmode: 'verify-full', certLifetime: '1d' },
    nodes: [
      { name: 'node-1', host: '127.0.0.1', port: pg1.port, kind: 'primary' },
      { name: 'node-2', host: '127.0.0.1', port: pg2.port, kind: 'standby' },
    ],
  };
  const put = await coord.service.putCluster('sales', spec);
  const stateDirs: Record<string, string> = {};
  for (const [node, pg] of [['node-1', pg1], ['node-2', pg2]] as const) {
    stateDirs[node] = await mkdtemp(join(tmpdir(), `pgaccord-metrics-${node}-`));
    cleanup.push(stateDirs[node]!);
    const token = (await coord.service.createToken('sales', node)).token;
    agents.push(startAgent(['--coordinator', coord.url, '--node', `sales/${node}`, '--pgdata', pg.dataDir, '--state-dir', stateDirs[node]!, '--join-token', token]));
  }

  // Prometheus, scraping every second.
  const port = await freePort();
  const config = join(promDir, 'prometheus.yml');
  await writeFile(config, `global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: pgaccord-coordinator\n    metrics_path: /metrics\n    scheme: http\n    static_configs:\n      - targets: ['${metricsTarget}']\n`);
  prom = spawn('prometheus', [`--config.file=${config}`, `--storage.tsdb.path=${join(promDir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  prom.stdout!.on('data', (d: Buffer) => (promLog += d.toString()));
  prom.stderr!.on('data', (d: Buffer) => (promLog += d.toString()));
  const base = `http://127.0.0.1:${port}`;
  await waitFor('prometheus ready', async () => {
    if (prom!.exitCode !== null) throw new Error(`prometheus exited ${prom!.exitCode}:\n${promLog.slice(-2000)}`);
    return (await request(`${base}/-/ready`).then(async (r) => (await r.body.text(), r.statusCode), () => 0)) === 200;
  }, 60_000, 250);

  // Both nodes converged, probes passing (what the coordinator itself says).
  const status = await waitFor(`both nodes converged at generation ${put.generation}`, async () => {
    const s = await coord!.service.status('sales');
    return s.nodes.every((n) => n.appliedGeneration === put.generation && n.phase === 'converged' && (n.node !== 'node-2' || n.probes.length > 0) && n.probes.every((p) => p.ok)) ? s : null;
  }, 120_000, 500);
  const served = status.nodes.find((n) => n.node === 'node-1')!.servedCertificate!;
  // The real certificate: the file the agent installed and the server serves.
  const onDisk = certInfo(await readFile(join(stateDirs['node-1']!, 'tls', `server-${served.serial}.crt`), 'utf8'));
  assert.equal(onDisk.serial, served.serial);

  const q = `pgaccord_certificate_expiration_timestamp_seconds{cluster="sales",node="node-1",slot="server"}`;
  const cert = await waitFor(`Prometheus answers ${q} for serial ${served.serial}`, async () => {
    const r = await promQuery(base, q);
    return r.length === 1 && r[0]!.metric.serial === served.serial ? r[0]! : null;
  }, 60_000, 500);
  assert.equal(Number(cert.value[1]), onDisk.notAfter.getTime() / 1000, 'the scraped notAfter is the real certificate\'s');
  assert.equal(cert.metric.job, 'pgaccord-coordinator');

  // Renewal planned at two thirds of the lifetime (1 day here), after notBefore.
  const renewal = await promQuery(base, `pgaccord_certificate_renewal_timestamp_seconds{cluster="sales",node="node-1",slot="server"} - pgaccord_certificate_not_before_timestamp_seconds{cluster="sales",node="node-1",slot="server"}`);
  assert.equal(renewal.length, 1);
  assert.ok(Math.abs(Number(renewal[0]!.value[1]) - ((onDisk.notAfter.getTime() - onDisk.notBefore.getTime()) / 1000) * (2 / 3)) < 1);

  // The same answer as the alert expressions need it: both nodes converged, the edge probed, the
  // CRL's next update, the agents' identities, the API requests by route pattern.
  // Prometheus answers from its last scrape: wait until it holds what is now true.
  const until = (expr: string, holds: (r: PromSample[]) => boolean) => waitFor(`Prometheus answers ${expr} as expected`, async () => {
    const r = await promQuery(base, expr);
    return holds(r) ? r : null;
  }, 60_000, 500);
  const values = (r: PromSample[], label: string) => r.map((s) => [s.metric[label], Number(s.value[1])]).sort();
  await until(`pgaccord_node_desired_generation{cluster="sales"} - pgaccord_node_applied_generation{cluster="sales"}`, (r) => JSON.stringify(values(r, 'node')) === JSON.stringify([['node-1', 0], ['node-2', 0]]));
  await until(`pgaccord_node_phase{cluster="sales",phase="converged"} == 1`, (r) => r.length === 2);
  await until(`pgaccord_probe_success{cluster="sales",from="node-2",to="node-1"}`, (r) => r.length === 1 && r[0]!.value[1] === '1');
  await until(`pgaccord_crl_next_update_timestamp_seconds{cluster="sales"} - time()`, (r) => r.length === 1 && Number(r[0]!.value[1]) > 86400);
  await until(`pgaccord_certificate_expiration_timestamp_seconds{cluster="sales",slot="identity"}`, (r) => r.length === 2);
  await until(`sum by (route, code) (pgaccord_api_requests_total{route="/v1/agent/status"})`, (r) => r.some((s) => s.metric.code === '204' && Number(s.value[1]) >= 2));
  await until(`pgaccord_convergence_latency_seconds_count{cluster="sales"}`, (r) => r.length === 1 && Number(r[0]!.value[1]) >= 2);
  await until(`pgaccord_apply_duration_seconds_count{cluster="sales"}`, (r) => r.length === 1 && Number(r[0]!.value[1]) >= 2);
  assert.equal((await promQuery(base, `pgaccord_api_requests_total{route=~".*node-1.*|.*after=.*"}`)).length, 0, 'route labels are patterns, never raw URLs');
  assert.equal((await promQuery(base, `pgaccord_api_requests_total{route="/v1/agent/desired"}`)).length > 0, true);

  // Only GET /metrics on the metrics listener; the HTTPS API has no /metrics (no token to hand to Prometheus).
  assert.equal((await request(`${new URL(coord.metricsUrl!).origin}/other`)).statusCode, 404);
  assert.equal((await request(coord.metricsUrl!, { method: 'POST' })).statusCode, 405);
  const https = new Agent({ connect: { ca: coord.dataDir.caPem } });
  try {
    assert.equal((await request(`${coord.url}/metrics`, { dispatcher: https })).statusCode, 404);
  } finally {
    await https.close();
  }
});
