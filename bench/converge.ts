// npm run bench:converge (as root: real PostgreSQL servers): a coordinator, N PostgreSQL 15 nodes
// on loopback and an agent process per node (pgd full mesh, cert auth, verify-full: N*(N-1)
// edges), then
//   first_converge_s  apply + join tokens + agents started -> every node converged, every probe ok
//   changes           CHANGES (default 20) successive changes of five kinds, in turn: auth switch
//                     (cert -> scram-sha-256), password rotation, new role, new HBA rule, auth
//                     switch back (scram -> cert), revocation of a client certificate. Each is timed
//                     from the admin's PUT/POST (sent from here, over HTTPS, as the CLI sends it)
//                     to what `pgaccord status --wait` waits for: every node applied and proved the
//                     generation, every probe passed, every node reported since the change began.
//                     Polled every 25 ms (the CLI looks once a second, too coarse for this).
//   phases_ms         per phase of the agents' applies (shared/contract/status.ts ApplyTimings), p50 and
//                     p99 over every node and change: where the time goes
//   probe_reasons     the proving probes of every change by what ran them (apply, peer-applied, retry)
//   probes_per_change edges the agents probed per change, every probe run counted (agents at --log-level debug)
//   rotation          during each password rotation, new connections over a ring of edges every
//                     100 ms (bench/rotation-window.ts): per rotation its failures (probes started
//                     between its command and its convergence) and its window, first to last
//                     failure (resolution: probe_period_ms); how many rotations had none;
//                     failures outside every rotation
//   cpu_s_per_change  CPU seconds per change over the changes: the PostgreSQL servers (backends
//                     included), the agents (their psql runs included; agents_node: their node
//                     processes alone), the coordinator, this
//                     bench, and the whole machine (other work on it included)
//   rss_mb            resident memory of the coordinator and of each agent (VmRSS), idle, after
// Last line: JSON with the figures. BENCH_NODES (default 3) sets N, BENCH_KEY_TYPE the node certificates' key type.
import { readFile, mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { demoSpec } from '../bin/demo.ts';
import { LocalCluster } from '../bin/local-cluster.ts';
import type { ClusterStatusResponse } from '../shared/contract/api.ts';
import type { ClusterSpec, NodeKeyType } from '../shared/contract/schema.ts';
import { machineBusyS, postmasterPid, processCpuS, treeCpuS } from './cpu-time.ts';
import { probePeriodMs, ringEdges, rotationWindows, watchEdges, type Rotation, type WindowProbe } from './rotation-window.ts';

const N = Number(process.env.BENCH_NODES ?? 3);
const CHANGES = Number(process.env.CHANGES ?? 20);
/** BENCH_KEY_TYPE=ecdsa-p256: node certificates with P-256 keys (cheaper TLS handshakes); default the cluster's rsa-2048. */
const KEY_TYPE = process.env.BENCH_KEY_TYPE as NodeKeyType | undefined;
const CLUSTER = 'demo';
const POLL_MS = 25;

async function rssMb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1] ?? NaN);
  return Math.round(kb / 102.4) / 10;
}

const quantile = (xs: number[], q: number): number => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
};
const r1 = (x: number) => Math.round(x * 10) / 10;

// Edges the agents probed (their debug line per probe run, agent/runtime/reconciler.ts probeStamped).
let probed = 0;
const probedFor: Record<string, number> = {};
const countProbes = (source: string, line: string) => {
  if (!source.startsWith('agent-') || !line.includes('"probed edges"')) return;
  try {
    const l = JSON.parse(line) as { edges?: number; reason?: string };
    probed += Number(l.edges ?? 0);
    probedFor[l.reason ?? 'unknown'] = (probedFor[l.reason ?? 'unknown'] ?? 0) + Number(l.edges ?? 0);
  } catch {
    // not a log line of ours
  }
};
const cluster = await LocalCluster.create({ dir: await mkdtemp('/tmp/pgaccord-bench-'), onLine: countProbes });
try {
  await cluster.startCoordinator();
  const token = (await readFile(join(cluster.coordinatorDir, 'admin.token'), 'utf8')).trim();
  const dispatcher = new Agent({ connect: { ca: await readFile(join(cluster.coordinatorDir, 'ca.crt'), 'utf8') } });
  const admin = async <T>(method: 'GET' | 'PUT' | 'POST', path: string, body?: unknown): Promise<T> => {
    const res = await request(`${cluster.coordinatorUrl}${path}`, {
      method, dispatcher,
      headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const text = await res.body.text();
    if (res.statusCode >= 300) throw new Error(`${method} ${path}: HTTP ${res.statusCode} ${text}`);
    return JSON.parse(text) as T;
  };
  const status = () => admin<ClusterStatusResponse>('GET', `/v1/clusters/${CLUSTER}/status`);

  /** Until what `status --wait` waits for: converged at >= generation, every node reported after `before`. */
  const until = async (generation: number, before: Map<string, number>, t0: number): Promise<{ ms: number; s: ClusterStatusResponse }> => {
    for (;;) {
      const s = await status();
      const reported = s.nodes.every((n) => n.reportedAt !== null && Date.parse(n.reportedAt) > (before.get(n.node) ?? -Infinity));
      if (s.converged && reported && s.generation >= generation) return { ms: performance.now() - t0, s };
      if (performance.now() - t0 > 300_000) throw new Error(`not converged in 300 s at generation ${generation}: ${JSON.stringify(s.nodes.map((n) => ({ node: n.node, applied: n.appliedGeneration, phase: n.phase, failed: n.probes.filter((p) => !p.ok).map((p) => `${p.to}: ${p.error}`) })))}`);
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  };
  const reportTimes = async () => new Map((await status()).nodes.map((n) => [n.node, n.reportedAt ? Date.parse(n.reportedAt) : -Infinity]));

  const ports: Record<string, number> = {};
  const nodes: { name: string; stateDir: string }[] = [];
  const dataDirs: string[] = [];
  for (let i = 0; i < N; i++) {
    const n = await cluster.addNode(`node-${i + 1}`, `127.0.0.${11 + i}`);
    ports[n.name] = n.pg.port;
    nodes.push(n);
    dataDirs.push(n.pg.dataDir);
  }
  /** CPU seconds so far, by who spent them. */
  const cpuNow = async () => {
    const sum = async (pids: (number | null)[]) => (await Promise.all(pids.map((p) => (p === null ? 0 : treeCpuS(p))))).reduce((a, b) => a + b, 0);
    const pids = cluster.pids();
    const { user, system } = process.cpuUsage();
    return {
      postgres: await sum(await Promise.all(dataDirs.map(postmasterPid))),
      agents: await sum(Object.entries(pids).filter(([k]) => k.startsWith('agent-')).map(([, v]) => v)),
      // The agents' node processes alone: agents minus this is their psql runs (probes, rotation checks).
      agents_node: (await Promise.all(Object.entries(pids).filter(([k]) => k.startsWith('agent-')).map(([, v]) => (v === null ? 0 : processCpuS(v, true))))).reduce((a, b) => a + b, 0),
      coordinator: await sum(Object.entries(pids).filter(([k]) => k === 'coordinator').map(([, v]) => v)),
      bench: (user + system) / 1e6,
      machine: await machineBusyS(),
    };
  };
  let spec: ClusterSpec = demoSpec(ports);
  if (KEY_TYPE) spec = { ...spec, tls: { ...spec.tls, keyType: KEY_TYPE } };

  let t0 = performance.now();
  const first = await admin<{ generation: number }>('PUT', `/v1/clusters/${CLUSTER}`, spec);
  for (const name of Object.keys(ports)) await cluster.startAgent(CLUSTER, name, ['--log-level', 'debug']);
  const firstConverge = (await until(first.generation, new Map(), t0)).ms / 1000;

  // One change of each kind, in an order that keeps each possible: revocation needs client
  // certificates (cert auth), a password rotation needs password roles (scram-sha-256).
  type Kind = 'auth_switch' | 'password_rotation' | 'new_role' | 'hba_rule' | 'revocation';
  const cycle: Kind[] = ['auth_switch', 'password_rotation', 'new_role', 'hba_rule', 'auth_switch', 'revocation'];
  const results: { kind: Kind; ms: number; generation: number }[] = [];
  // Edges probed from each change's command to the next one's (the last: to the end of the idle wait).
  const probesPerChange: number[] = [];
  let probedAt = probed;
  const closeProbeCount = () => {
    if (results.length > probesPerChange.length) probesPerChange.push(probed - probedAt);
    probedAt = probed;
  };
  const phases = new Map<string, number[]>();
  const rotations: Rotation[] = [];
  const windowProbes: WindowProbe[] = [];
  // What ran the probes that proved each change: the pass that applied, a peer's wake, the 2 s timer.
  const reasons: Record<string, number> = {};
  const noteTimings = (s: ClusterStatusResponse, generation: number) => {
    for (const p of s.nodes.flatMap((n) => n.probes)) reasons[p.reason ?? 'unknown'] = (reasons[p.reason ?? 'unknown'] ?? 0) + 1;
    for (const n of s.nodes) {
      if (n.timings?.generation !== generation) continue;
      for (const [p, v] of Object.entries(n.timings.phases)) phases.set(p, [...(phases.get(p) ?? []), v]);
      phases.set('total', [...(phases.get('total') ?? []), n.timings.totalMs]);
    }
  };
  const cpu0 = await cpuNow();
  for (let i = 0; i < CHANGES; i++) {
    const kind = cycle[i % cycle.length]!;
    const before = await reportTimes();
    closeProbeCount();
    let generation: number;
    if (kind === 'revocation') {
      const victim = (await status()).nodes[i % N]!.certificates.find((c) => c.id.startsWith('client-'));
      if (!victim) throw new Error('no client certificate to revoke');
      t0 = performance.now();
      generation = (await admin<{ generation: number }>('POST', `/v1/clusters/${CLUSTER}/certificates/${victim.serial}/revoke`)).generation;
    } else if (kind === 'password_rotation') {
      const ring = await ringEdges(nodes);
      // From the first probe on: a probe begun just before the command may meet the switch (a
      // connection takes seconds on a loaded machine), and belongs to this rotation.
      const wall0 = Date.now();
      const watch = watchEdges(ring);
      t0 = performance.now();
      generation = (await admin<{ generation: number }>('POST', `/v1/clusters/${CLUSTER}/rotate-passwords`, {})).generation;
      const done = await until(generation, before, t0);
      rotations.push({ t0: wall0, convergedAt: Date.now() });
      await watch.stop();
      windowProbes.push(...watch.probes);
      results.push({ kind, ms: done.ms, generation });
      noteTimings(done.s, generation);
      console.log(`change ${i + 1}/${CHANGES} ${kind}: generation ${generation} proved everywhere in ${Math.round(done.ms)} ms`);
      continue;
    } else {
      if (kind === 'auth_switch') spec = { ...spec, auth: spec.auth === 'cert' ? 'scram-sha-256' : 'cert' };
      if (kind === 'new_role') spec = { ...spec, roles: [...(spec.roles ?? []), { name: `bench_role_${i}` }] };
      if (kind === 'hba_rule') spec = { ...spec, hba: [...(spec.hba ?? []), { type: 'hostssl', database: 'postgres', user: `bench_role_${i - 1}`, address: `10.${i}.0.0/16`, method: 'reject' }] };
      t0 = performance.now();
      generation = (await admin<{ generation: number }>('PUT', `/v1/clusters/${CLUSTER}`, spec)).generation;
    }
    const { ms, s } = await until(generation, before, t0);
    results.push({ kind, ms, generation });
    noteTimings(s, generation);
    console.log(`change ${i + 1}/${CHANGES} ${kind}: generation ${generation} proved everywhere in ${Math.round(ms)} ms`);
  }

  const cpu1 = await cpuNow();
  await new Promise((r) => setTimeout(r, 3000)); // idle
  closeProbeCount();
  const rss: Record<string, number> = {};
  for (const [name, pid] of Object.entries(cluster.pids())) rss[name] = await rssMb(pid);
  const all = results.map((r) => r.ms);
  const perKind = Object.fromEntries([...new Set(results.map((r) => r.kind))].map((k) => {
    const xs = results.filter((r) => r.kind === k).map((r) => r.ms);
    return [k, { n: xs.length, p50_ms: Math.round(quantile(xs, 0.5)), max_ms: Math.round(Math.max(...xs)) }];
  }));
  const figures = {
    nodes: N,
    key_type: KEY_TYPE ?? 'rsa-2048',
    edges: N * (N - 1),
    first_converge_s: r1(firstConverge),
    changes: results.length,
    p50_ms: Math.round(quantile(all, 0.5)),
    p99_ms: Math.round(quantile(all, 0.99)),
    max_ms: Math.round(Math.max(...all)),
    per_kind: perKind,
    probe_reasons: reasons,
    probes_per_change: { p50: quantile(probesPerChange, 0.5), max: Math.max(...probesPerChange), total: probesPerChange.reduce((a, b) => a + b, 0) },
    // Every edge probed, first convergence included, by what ran the probe.
    probed_by_reason: probedFor,
    rotation: (() => {
      const { windows, unattributed } = rotationWindows(windowProbes, rotations);
      const ms = windows.map((w) => w.windowMs ?? 0);
      return {
        n: windows.length,
        without_failure: windows.filter((w) => w.failures === 0).length,
        window_p50_ms: quantile(ms, 0.5),
        window_p99_ms: quantile(ms, 0.99),
        windows_ms: windows.map((w) => w.windowMs),
        failures: windows.map((w) => w.failures),
        probes: windowProbes.length,
        probe_period_ms: probePeriodMs(windowProbes),
        unattributed: unattributed.length,
      };
    })(),
    phases_ms: Object.fromEntries([...phases].map(([p, xs]) => [p, { p50: r1(quantile(xs, 0.5)), p99: r1(quantile(xs, 0.99)) }])),
    cpu_s_per_change: Object.fromEntries(Object.entries(cpu1).map(([k, v]) => [k, Math.round(((v - cpu0[k as keyof typeof cpu0]) / Math.max(1, results.length)) * 100) / 100])),
    rss_mb: rss,
  };
  console.log(`nodes ${N}: first converge ${figures.first_converge_s} s; ${results.length} changes proved everywhere p50 ${figures.p50_ms} ms, p99 ${figures.p99_ms} ms`);
  const rot = figures.rotation;
  console.log(`password rotations: ${rot.without_failure} of ${rot.n} without a failed connection; window p50 ${rot.window_p50_ms} ms, p99 ${rot.window_p99_ms} ms (${rot.probes} probes, one per edge every ${rot.probe_period_ms} ms, ${rot.unattributed} failures outside a rotation)`);
  console.log(`resident memory (MB): ${Object.entries(rss).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  await dispatcher.close();
  console.log(JSON.stringify(figures));
} finally {
  // BENCH_KEEP=1: the working directory stays (every process's log, the agents' at debug level).
  await cluster.close({ keep: process.env.BENCH_KEEP === '1' });
  if (process.env.BENCH_KEEP === '1') console.error(`kept ${cluster.dir}`);
}
