// npm run bench:fleet: a real coordinator process (`pgaccord coordinator`, embedded store, as
// the product starts it) and N simulated agents in FLEET_PROCS processes (bench/fleet-agent-
// worker.ts), each agent with its own key, its own join token and its own mTLS connections.
// Measures, in order:
//   enrol       every agent enrols with its join token at once (FLEET_ENROLL_CONCURRENCY in
//               flight per process): agents/s
//   first       the agents start their loops: every first desired state, every long-poll held
//               (at most FLEET_START_WINDOW (512) agents between their start and first answer at
//               once, over the agent processes: their own CPU is not the coordinator's queue); the
//               coordinator's, store's and agent processes' CPU seconds, the machine's TCP
//               accept-queue drops, the loops' failed calls by error code
//   fanout      FLEET_CHANGES rounds of a PUT to every cluster (an HBA rule): from each PUT to
//               each of that cluster's agents holding the new generation, p50/p99/max, and from
//               the PUT's answer; the coordinator's CPU per change, the cores each process kept
//               busy; then FLEET_SINGLE (20) changes one at a time (a change alone, no queue)
//   status      every agent posts FLEET_REPORTS status reports back to back, beside its held
//               long-poll, FLEET_STATUS_CONCURRENCY (200) agents at a time: accepted reports/s
//   storm       every agent posts a CSR (its first slot; FLEET_STORM_SLOT=identity for the
//               identity) at once: CSR latency, a probe agent's desired round trip (wait=0)
//               on its kept connection and on a new one (TCP, TLS, answer: fleet-probes.ts)
//               and the fan-out of one PUT made while it is signed (FLEET_STORM=0 skips it)
//   restart     SIGTERM the coordinator, start it again on the same data dir: until every
//               agent holds a long-poll again, and the coordinator's CPU seconds meanwhile
//   rss         the coordinator's VmRSS idle (clusters made, no agent), with every long-poll
//               held, after the changes, after the storm; VmHWM (peak) of each process
// Shapes: FLEET_CLUSTERS x FLEET_NODES (default 50 x 4), FLEET_PROFILE (pgd,
// timescaledb-multinode, streaming, pg-auto-failover). FLEET_KEY=ec|rsa (agents' keys),
// FLEET_TLS_KEY (the coordinator's --tls-key-type, when it has the flag). Last line: JSON.
// Beside it: fleet-shape.ts (the variables, the specs), fleet-processes.ts (the coordinator
// process, /proc readings), fleet-agents.ts (the agent processes), fleet-figures.ts.
import { once } from 'node:events';
import { chmod, mkdtemp, readFile, rm } from 'node:fs/promises';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { freePort } from '../shared/system/pgserver.ts';
import { Probes } from './fleet-probes.ts';
import { wallMs, type AgentAssignment, type ToWorker } from './fleet-agent-worker.ts';
import { AgentFleet, until as untilWithin } from './fleet-agents.ts';
import { adminApi, type AdminApi } from './fleet-admin.ts';
import { codes, log, parallel, pct, secs } from './fleet-figures.ts';
import {
  coordinatorFlags, cpuSeconds, ensureBuilt, procStatus, startCoordinatorProcess, storeCpuSeconds, tcpCounters, waitReady, type Coordinator,
} from './fleet-processes.ts';
import {
  AGENTS, CHANGES, CLUSTERS, ENROLL_CONCURRENCY, KEY, LOG_LEVEL, NODES, PROBES, PROCS, PROFILE, PUT_CONCURRENCY, REPORTS, RESTART, SINGLE, SOURCES, spec, START_WINDOW,
  STORM, STATUS_CONCURRENCY, TIMEOUT_MS,
} from './fleet-shape.ts';

const base = await mkdtemp(join(tmpdir(), 'pgaccord-fleet-'));
// As root the embedded store runs as its own OS user, which must reach its directory below this.
await chmod(base, 0o711);
const dataDir = join(base, 'coordinator');
const logFile = join(base, 'coordinator.log');
const fleet = new AgentFleet(AGENTS, TIMEOUT_MS);
let coordinator: Coordinator | null = null;
let admin: AdminApi | null = null;
let probes: Probes | null = null;

try {
  ensureBuilt();
  const { flags, notes } = coordinatorFlags();
  for (const n of notes) log(`WARNING: ${n}`);

  const port = await freePort();
  const url = `https://127.0.0.1:${port}`;
  coordinator = await startCoordinatorProcess(dataDir, port, flags, logFile);
  await waitReady(coordinator, dataDir, url);
  const caPem = await readFile(join(dataDir, 'ca.crt'), 'utf8');
  const serverKey = new X509Certificate(await readFile(join(dataDir, 'server.crt'), 'utf8')).publicKey;
  const tlsKey = serverKey.asymmetricKeyType === 'ec'
    ? `ec-${serverKey.asymmetricKeyDetails?.namedCurve}`
    : `${serverKey.asymmetricKeyType}-${serverKey.asymmetricKeyDetails?.modulusLength}`;
  const token = (await readFile(join(dataDir, 'admin.token'), 'utf8')).trim();
  admin = adminApi(url, token, caPem, PUT_CONCURRENCY + 2);
  const api = admin.call;
  const rss: Record<string, number> = { started: procStatus(coordinator.pid).rssMb };
  log(`coordinator ${coordinator.pid} at ${url} (TLS key ${tlsKey}); ${CLUSTERS} x ${NODES} ${PROFILE}, ${AGENTS} agents in ${PROCS} processes, ${KEY} keys`);

  // Clusters and join tokens through the admin API.
  const clusterNames = Array.from({ length: CLUSTERS }, (_, c) => `c${c}`);
  const generation = new Map<string, number>();
  let t = wallMs();
  await parallel(clusterNames.map((n, c) => [n, c] as const), PUT_CONCURRENCY, async ([n, c]) => {
    generation.set(n, (await api('PUT', `/v1/clusters/${n}`, spec(n, c, NODES, PROFILE, 0))).generation);
  });
  await api('PUT', '/v1/clusters/fleet-probe', { ...spec('fleet-probe', 65535, PROBES, 'streaming', 0) });
  const assignments: AgentAssignment[] = [];
  const slots = clusterNames.flatMap((cluster) => Array.from({ length: NODES }, (_, i) => ({ cluster, node: `n${i}` })));
  await parallel(slots.map((s, i) => ({ ...s, i })), PUT_CONCURRENCY, async (s) => {
    const tok = await api('POST', `/v1/clusters/${s.cluster}/nodes/${s.node}/tokens`, {});
    assignments[s.i] = { i: s.i, cluster: s.cluster, node: s.node, token: tok.token, localAddress: SOURCES > 1 ? `127.0.0.${2 + (s.i % SOURCES)}` : '' };
  });
  const setupS = secs(wallMs() - t);
  rss.idle = procStatus(coordinator.pid).rssMb;
  log(`clusters and ${AGENTS} join tokens made in ${setupS} s; coordinator idle ${rss.idle} MB`);

  // Probe agents: a cluster of their own, enrolled here; they ask desired with wait=0 (a round trip).
  probes = new Probes(url, caPem);
  for (let i = 0; i < PROBES; i++) await probes.enrol((await api('POST', `/v1/clusters/fleet-probe/nodes/n${i}/tokens`, {})).token, KEY);
  const probeOnce = () => probes!.once();
  for (let i = 0; i < PROBES; i++) await probeOnce(); // each learns its generation
  const probeIdle: number[] = [];
  for (let i = 0; i < 20; i++) probeIdle.push(await probeOnce());

  // Agent processes.
  fleet.spawn(assignments, PROCS);
  const { gen, genAt, up, upAt, downAt, workers } = fleet;
  const broadcast = (m: ToWorker) => fleet.broadcast(m);
  const gather = <K extends Parameters<AgentFleet['gather']>[0]>(type: K) => {
    if (type === 'lag') broadcast({ type: 'lag' }); // asked, not pushed: each process answers at once
    return fleet.gather(type);
  };
  const until = (what: string, done: () => boolean) => untilWithin(what, done, TIMEOUT_MS);
  const allAgents = Array.from({ length: AGENTS }, (_, i) => i);

  workers.forEach((w) => w.child.send({ type: 'init', url, caPem, key: KEY, agents: w.agents } satisfies ToWorker));
  const ready = await gather('ready');
  log(`${AGENTS} ${KEY} keys made in ${secs(Math.max(...ready.map((r) => r.keygenMs)))} s`);

  // Enrolment.
  broadcast({ type: 'enroll', concurrency: ENROLL_CONCURRENCY });
  const enrolled = await gather('enrolled');
  const failures = enrolled.flatMap((e) => e.failures);
  if (failures.length > 0) throw new Error(`${failures.length} enrolments failed, e.g. ${failures.slice(0, 3).join('; ')}`);
  const enrolS = (Math.max(...enrolled.map((e) => e.end)) - Math.min(...enrolled.map((e) => e.start))) / 1000;
  const enrol = { agents_per_s: Math.round(AGENTS / enrolS), wall_s: Math.round(enrolS * 100) / 100, latency_ms: pct(enrolled.flatMap((e) => e.latencies)) };
  log(`enrolment: ${enrol.agents_per_s} agents/s (${enrol.wall_s} s), latency p50 ${enrol.latency_ms.p50} ms p99 ${enrol.latency_ms.p99} ms`);

  // The loops: every first desired state, every long-poll held.
  // And what it cost: the coordinator's and its store's CPU seconds, the machine's TCP counters.
  const agentCpu = () => workers.map((w) => cpuSeconds(w.child.pid!));
  await gather('lag'); // resets each process's delay histogram
  const before = { cpu: cpuSeconds(coordinator.pid), store: storeCpuSeconds(dataDir) ?? NaN, agents: agentCpu(), tcp: tcpCounters() };
  t = wallMs();
  broadcast({ type: 'run', window: Math.max(1, Math.ceil(START_WINDOW / PROCS)) });
  const firstAll = await until('first desired states', () => allAgents.every((i) => gen[i]! >= 1));
  // Held: each has sent its long-poll after the first answer (and its report).
  const heldAll = await until('long-polls held', () => allAgents.every((i) => up[i] === 1 && upAt[i]! > genAt[i]!));
  const tcp = tcpCounters();
  const firstAgentCpu = agentCpu();
  const firstLags = await gather('lag');
  broadcast({ type: 'failures' });
  const failed = await gather('failures');
  const beforeFirst = failed.flatMap((f) => f.before_first);
  const first = {
    first_desired_s: secs(firstAll - t), first_desired_ms: pct(allAgents.map((i) => genAt[i]! - t)), all_long_polls_s: secs(heldAll - t),
    coordinator_cpu_s: Math.round((cpuSeconds(coordinator.pid) - before.cpu) * 100) / 100,
    store_cpu_s: Math.round(((storeCpuSeconds(dataDir) ?? NaN) - before.store) * 100) / 100,
    // The agent processes' own CPU seconds and event-loop delay: a busy simulator delays what it measures.
    agents_cpu_s: firstAgentCpu.map((c, k) => Math.round((c - before.agents[k]!) * 100) / 100),
    agent_loop_delay_ms: firstLags.map(({ p50, p99, max }) => ({ p50, p99, max })),
    // Machine-wide (other work's connections count too): SYNs or ACKs dropped for a full accept queue, SYNs sent again.
    listen_overflows: tcp.listenOverflows - before.tcp.listenOverflows, syn_retransmits: tcp.synRetrans - before.tcp.synRetrans,
    // The loops' calls that got no answer meanwhile, by error code, and how many agents had to connect again.
    failures: codes(failed), agents_retried: beforeFirst.filter((n) => n > 0).length, retries_before_first: pct(beforeFirst),
    load_average: loadavg().map((x) => Math.round(x * 100) / 100),
  };
  await new Promise((r) => setTimeout(r, 2000)); // let the reports after the first answers drain
  rss.long_polls = procStatus(coordinator.pid).rssMb;
  log(`first desired states: all in ${first.first_desired_s} s (p50 ${first.first_desired_ms.p50} ms), all long-polls held at `
    + `${first.all_long_polls_s} s; coordinator ${rss.long_polls} MB`);

  // Fan-out of changes.
  const byCluster = new Map<string, number[]>(clusterNames.map((n) => [n, []]));
  assignments.forEach((a) => byCluster.get(a.cluster)!.push(a.i));
  const fanout: number[] = [];
  const delivery: number[] = [];
  const putMs: number[] = [];
  const fanoutWall: number[] = [];
  // What the machine spent meanwhile: with the agents on the same cores, a saturated machine
  // measures its own queue (CPU seconds per process over the rounds, the agent processes' loop delay).
  const cpu0 = { coordinator: cpuSeconds(coordinator.pid), store: storeCpuSeconds(dataDir) ?? NaN, agents: agentCpu() };
  await gather('lag'); // resets each process's delay histogram
  // An agent is ready for the next change once its long-poll is out again (a cycle lasts >= 1 s).
  const settled = () => until('agents back on long-poll', () => allAgents.every((i) => up[i] === 1 && upAt[i]! > genAt[i]!));
  for (let round = 1; round <= CHANGES; round++) {
    await settled();
    const r0 = wallMs();
    const waits: Promise<unknown>[] = [];
    await parallel(clusterNames.map((n, c) => [n, c] as const), PUT_CONCURRENCY, async ([n, c]) => {
      const t0 = wallMs();
      const g = (await api('PUT', `/v1/clusters/${n}`, spec(n, c, NODES, PROFILE, round))).generation as number;
      const t1 = wallMs();
      putMs.push(t1 - t0);
      generation.set(n, g);
      const members = byCluster.get(n)!;
      // From the PUT (its own queue at the coordinator included), and from its answer (the wake and delivery alone).
      const done = until(`fan-out of ${n} generation ${g}`, () => members.every((i) => gen[i]! >= g))
        .then(() => members.forEach((i) => (fanout.push(genAt[i]! - t0), delivery.push(genAt[i]! - t1))));
      done.catch(() => undefined); // awaited below: not an unhandled rejection meanwhile
      waits.push(done);
    });
    await Promise.all(waits);
    fanoutWall.push(wallMs() - r0);
  }
  const coordinatorCpuS = cpuSeconds(coordinator.pid) - cpu0.coordinator;
  const cpu1 = { store: storeCpuSeconds(dataDir) ?? NaN, agents: agentCpu() };
  const lags = await gather('lag');
  // The rounds above change every cluster at once (PUT_CONCURRENCY in flight): each change waits
  // behind the others and their fan-outs, so they measure the coordinator's throughput. One change
  // alone: FLEET_SINGLE clusters (default 20), one PUT at a time, each once its fan-out is done.
  const single: number[] = [];
  await settled();
  for (const [c, n] of clusterNames.slice(0, SINGLE).entries()) {
    const t0 = wallMs();
    const g = (await api('PUT', `/v1/clusters/${n}`, spec(n, c, NODES, PROFILE, CHANGES + 2))).generation as number;
    const members = byCluster.get(n)!;
    await until(`fan-out of ${n} alone`, () => members.every((i) => gen[i]! >= g));
    members.forEach((i) => single.push(genAt[i]! - t0));
  }
  rss.after_change = procStatus(coordinator.pid).rssMb;
  const wallS = fanoutWall.reduce((a, b) => a + b, 0) / 1000;
  const spent = (a: number, b: number) => Math.round(((b - a) / wallS) * 100) / 100;
  const fan = {
    changes: CHANGES * CLUSTERS, latency_ms: pct(fanout), delivery_ms: pct(delivery), put_ms: pct(putMs), round_s: fanoutWall.map(secs),
    // What a change costs the coordinator, its fan-out included: its CPU over the rounds per change (whatever share of the cores it got).
    coordinator_cpu_ms_per_change: Math.round((coordinatorCpuS * 1000 * 10) / (CHANGES * CLUSTERS)) / 10,
    single_change_ms: pct(single),
    // Cores busy over the rounds (CPU seconds / wall seconds), of 2 on this machine with others' work beside.
    cores_busy: {
      coordinator: spent(0, coordinatorCpuS), store: spent(cpu0.store, cpu1.store), agents: cpu1.agents.map((c, k) => spent(cpu0.agents[k]!, c)),
    },
    agent_loop_delay_ms: lags.map(({ p50, p99, max }) => ({ p50, p99, max })),
    load_average: loadavg().map((x) => Math.round(x * 100) / 100),
  };
  log(`fan-out: p50 ${fan.latency_ms.p50} ms, p99 ${fan.latency_ms.p99} ms, max ${fan.latency_ms.max} ms (PUT p50 ${fan.put_ms.p50} ms; from its answer `
    + `p50 ${fan.delivery_ms.p50} ms, p99 ${fan.delivery_ms.p99} ms); ${fan.coordinator_cpu_ms_per_change} ms of coordinator CPU per change; one change alone `
    + `p50 ${fan.single_change_ms.p50} ms, p99 ${fan.single_change_ms.p99} ms; cores busy ${JSON.stringify(fan.cores_busy)}; `
    + `coordinator ${rss.after_change} MB`);

  // Status report throughput.
  await settled();
  broadcast({ type: 'status', reports: REPORTS, concurrency: Math.max(1, Math.ceil(STATUS_CONCURRENCY / PROCS)) });
  const st = await gather('status-done');
  const stS = (Math.max(...st.map((s) => s.end)) - Math.min(...st.map((s) => s.start))) / 1000;
  const stCodes = codes(st);
  const status = {
    reports: AGENTS * REPORTS, concurrency: Math.min(AGENTS, STATUS_CONCURRENCY), reports_per_s: Math.round((stCodes['204'] ?? 0) / stS),
    latency_ms: pct(st.flatMap((s) => s.latencies)), codes: stCodes,
  };
  log(`status reports: ${status.reports_per_s}/s, p99 ${status.latency_ms.p99} ms, codes ${JSON.stringify(status.codes)}`);

  // Renewal storm, with a probe's round trips and one PUT while it is signed (FLEET_STORM=0 skips it).
  let renewal: Record<string, unknown> | null = null;
  if (STORM) {
    await settled();
    broadcast({ type: 'storm-prepare' });
    await gather('storm-ready');
    await settled();
    // Every probe agent's kept connection made again first (undici closes one idle for 4 s): the
    // kept round trips are an agent's on a connection it holds; `fresh` ones each make a new one.
    await probes.warm();
    const stormProbe: number[] = [];
    const freshProbe: number[] = [];
    let storming = true;
    const probing = (out: number[], ask: () => Promise<number>, gapMs: number) => (async () => {
      while (storming) {
        out.push(await ask());
        await new Promise((r) => setTimeout(r, gapMs));
      }
    })();
    const prober = Promise.all([probing(stormProbe, probeOnce, 50), probing(freshProbe, () => probes!.fresh(), 100)]);
    prober.catch(() => undefined); // awaited below
    const tStorm = wallMs();
    broadcast({ type: 'storm' });
    await new Promise((r) => setTimeout(r, 20));
    const midCluster = clusterNames[0]!;
    const tPut = wallMs();
    const midGen = (await api('PUT', `/v1/clusters/${midCluster}`, spec(midCluster, 0, NODES, PROFILE, CHANGES + 1))).generation as number;
    const midPutMs = wallMs() - tPut;
    const midMembers = byCluster.get(midCluster)!;
    const storm = await gather('storm-done');
    const stormEnd = Math.max(...storm.map((s) => s.end));
    await until('fan-out during the storm', () => midMembers.every((i) => gen[i]! >= midGen));
    storming = false;
    await prober;
    rss.after_storm = procStatus(coordinator.pid).rssMb;
    const stormS = (stormEnd - tStorm) / 1000;
    const rs = {
      csrs: AGENTS,
      slot: process.env.FLEET_STORM_SLOT ?? 'first slot of the node',
      wall_s: Math.round(stormS * 100) / 100,
      csr_per_s: Math.round(AGENTS / stormS),
      csr_latency_ms: pct(storm.flatMap((s) => s.latencies)),
      codes: codes(storm),
      probe_round_trip_ms: pct(stormProbe.filter((x) => x >= 0)),
      probes_throttled: stormProbe.filter((x) => Number.isNaN(x)).length,
      probes_failed: stormProbe.filter((x) => x < 0).length,
      probe_round_trip_idle_ms: pct(probeIdle.filter((x) => x >= 0)),
      probe_new_connection_ms: pct(freshProbe.filter((x) => x >= 0)),
      probe_new_connection_tcp_ms: pct(probes.freshPhases.map((f) => f.tcp).filter((x) => x >= 0)),
      probe_new_connection_tls_ms: pct(probes.freshPhases.map((f) => f.tls).filter((x) => x >= 0)),
      put_during_ms: Math.round(midPutMs),
      fanout_during_ms: pct(midMembers.map((i) => genAt[i]! - tPut)),
    };
    renewal = rs;
    log(`renewal storm: ${AGENTS} CSRs in ${rs.wall_s} s (${rs.csr_per_s}/s), CSR p99 ${rs.csr_latency_ms.p99} ms; probe p99 `
      + `${rs.probe_round_trip_ms.p99} ms (idle ${rs.probe_round_trip_idle_ms.p99}; on a new connection ${rs.probe_new_connection_ms.p99}); PUT during ${rs.put_during_ms} ms, fan-out max `
      + `${rs.fanout_during_ms.max} ms`);
  }

  // Restart storm (FLEET_RESTART=0 skips it).
  await settled();
  const hwmFirst = procStatus(coordinator.pid).hwmMb;
  let restart: Record<string, unknown> | null = null;
  if (RESTART) {
    const tTerm = wallMs();
    coordinator.child.kill('SIGTERM');
    const tExit = await coordinator.exited.then(wallMs);
    coordinator = await startCoordinatorProcess(dataDir, port, flags, logFile);
    const tReady = await waitReady(coordinator, dataDir, url);
    const cpuReady = cpuSeconds(coordinator.pid);
    const backAll = await until('every agent back on long-poll', () => allAgents.every((i) => downAt[i]! > tTerm && up[i] === 1 && upAt[i]! > downAt[i]!));
    const [cpuBack, storeCpu1] = [cpuSeconds(coordinator.pid), storeCpuSeconds(dataDir)];
    const back = allAgents.map((i) => upAt[i]! - coordinator!.startedAt);
    await new Promise((r) => setTimeout(r, 2000));
    rss.after_restart = procStatus(coordinator.pid).rssMb;
    restart = {
      stop_s: secs(tExit - tTerm),
      start_to_ready_s: secs(tReady - coordinator.startedAt),
      all_long_polls_s: secs(backAll - coordinator.startedAt),
      all_long_polls_since_sigterm_s: secs(backAll - tTerm),
      back_ms: pct(back),
      cpu_s_to_ready: Math.round(cpuReady * 100) / 100,
      cpu_s_to_all_back: Math.round(cpuBack * 100) / 100,
      store_cpu_s_to_all_back: storeCpu1,
    };
    log(`restart: stopped in ${restart.stop_s} s, ready ${restart.start_to_ready_s} s after start, every agent back on long-poll ${restart.all_long_polls_s} `
      + `s after start (${restart.all_long_polls_since_sigterm_s} s after SIGTERM); CPU ${restart.cpu_s_to_all_back} s (${restart.cpu_s_to_ready} s to ready)`);
  }

  // Agent processes' own memory, then stop them.
  const workerRss = workers.map((w) => procStatus(w.child.pid!).rssMb);
  broadcast({ type: 'stop' });
  const loopCodes = codes(await gather('counters'));
  await Promise.all(workers.map((w) => (w.child.exitCode !== null ? null : once(w.child, 'exit'))));
  const hwmSecond = procStatus(coordinator.pid).hwmMb;

  const figures = {
    shape: {
      clusters: CLUSTERS, nodes: NODES, profile: PROFILE, agents: AGENTS, processes: PROCS, agent_key: KEY, coordinator_tls_key: tlsKey,
      source_addresses: SOURCES, long_poll_s: 'default', log_level: LOG_LEVEL,
    },
    machine: { cores: availableParallelism(), node: process.version },
    setup_s: setupS,
    enrol,
    first,
    fanout: fan,
    status,
    renewal_storm: renewal,
    restart,
    coordinator_rss_mb: { ...rss, hwm_first_process: hwmFirst, hwm_after_restart: hwmSecond },
    agent_process_rss_mb: workerRss,
    loop_answers: loopCodes,
    admin_retries: admin.retries,
    notes,
  };
  console.log(JSON.stringify(figures));
} finally {
  fleet.kill();
  await probes?.close();
  await admin?.destroy().catch(() => undefined);
  if (coordinator && coordinator.child.exitCode === null) {
    coordinator.child.kill('SIGTERM');
    await coordinator.exited;
  }
  if (process.env.FLEET_KEEP) log(`kept ${base} (coordinator log: ${logFile})`);
  else await rm(base, { recursive: true, force: true });
}
