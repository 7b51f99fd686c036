// npm run bench:footprint (as root: a real PostgreSQL server): what pgaccord costs a host.
//   version_ms        wall time of `pgaccord --version` (median of BENCH_RUNS)
//   status_help_ms    wall time of `pgaccord status --help` (median), status_help_max_rss_mb its peak RSS
//   agent_help_ms / coordinator_help_ms   the same for `pgaccord agent --help` and `pgaccord coordinator --help`
//   status_ms         wall time of `pgaccord status demo` against a local coordinator (median)
//   agent_idle_rss_mb / agent_idle_cpu_pct   one agent, converged, nothing changing, over BENCH_IDLE_S
//   coordinator_idle_rss_mb / coordinator_idle_cpu_pct   the coordinator over the same window
//   node_bare_ms      `node -e 0`, the floor every figure above stands on
// PGACCORD_BIN (default bin/pgaccord.mjs of this checkout) measures another copy, e.g. an installed one.
// The agent runs as its unit runs it: settings from a YAML file (--config), and the unit's
// NODE_OPTIONS (systemd/pgaccord-agent.service); BENCH_AGENT_NODE_OPTIONS overrides them ('' for none).
// agent_node_flags: the node flags on its command line (those `pgaccord agent` re-executes itself with).
// Last line: JSON with the figures.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { demoSpec } from '../bin/demo.ts';
import { LocalCluster } from '../bin/local-cluster.ts';

const RUNS = Number(process.env.BENCH_RUNS ?? 10);
const IDLE_S = Number(process.env.BENCH_IDLE_S ?? 60);
const BIN = process.env.PGACCORD_BIN ?? join(import.meta.dirname, '..', 'bin', 'pgaccord.mjs');
const CLUSTER = 'demo';

/** The NODE_OPTIONS the agent's unit sets (Environment=NODE_OPTIONS=...), or ''. */
async function unitNodeOptions(): Promise<string> {
  const unit = await readFile(join(import.meta.dirname, '..', 'systemd', 'pgaccord-agent.service'), 'utf8');
  return /^Environment="?NODE_OPTIONS=([^"\n]*)"?$/m.exec(unit)?.[1]?.trim() ?? '';
}
const AGENT_NODE_OPTIONS = process.env.BENCH_AGENT_NODE_OPTIONS ?? (await unitNodeOptions());

interface Timed {
  ms: number;
  maxRssKb: number;
  code: number;
}

/** One run under GNU time, which reports the child's peak RSS; wall time measured here. */
async function timed(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Timed> {
  const t0 = process.hrtime.bigint();
  const child = spawn('/usr/bin/time', ['-f', '%M', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const [code] = (await once(child, 'close')) as [number | null];
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const maxRssKb = Number(stderr.trim().split('\n').at(-1));
  if (code !== 0) throw new Error(`${args.join(' ')} exited ${code}: ${stderr.slice(-500)}`);
  return { ms, maxRssKb, code: code ?? 1 };
}

async function median(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ ms: number; maxRssMb: number }> {
  await timed(args, env); // warm the page cache
  const runs: Timed[] = [];
  for (let i = 0; i < RUNS; i++) runs.push(await timed(args, env));
  const ms = runs.map((r) => r.ms).sort((a, b) => a - b);
  const mid = ms.length % 2 ? ms[(ms.length - 1) / 2]! : (ms[ms.length / 2 - 1]! + ms[ms.length / 2]!) / 2;
  return { ms: round(mid, 0), maxRssMb: round(Math.max(...runs.map((r) => r.maxRssKb)) / 1024, 1) };
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

async function proc(pid: number): Promise<{ rssMb: number; anonMb: number; cpuTicks: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(status)?.[1] ?? NaN);
  const rssKb = kb('VmRSS');
  // Fields after the command name (which may hold spaces): utime and stime are the 14th and 15th.
  const stat = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]!.split(' ');
  return { rssMb: round(rssKb / 1024, 1), anonMb: round(kb('RssAnon') / 1024, 1), cpuTicks: Number(stat[11]) + Number(stat[12]) };
}

const CLK_TCK = 100; // Linux's USER_HZ on every architecture Node ships for

const bare = await median([process.execPath, '-e', '0']);
const version = await median([process.execPath, BIN, '--version']);
const help = await median([process.execPath, BIN, 'status', '--help']);
const agentHelp = await median([process.execPath, BIN, 'agent', '--help']);
const coordinatorHelp = await median([process.execPath, BIN, 'coordinator', '--help']);

const cluster = await LocalCluster.create({ dir: await mkdtemp('/tmp/pgaccord-footprint-') });
try {
  await cluster.startCoordinator();
  const node = await cluster.addNode('node-1', '127.0.0.11');
  const applied = await cluster.apply(demoSpec({ 'node-1': node.pg.port }));
  if (applied.code !== 0) throw new Error(applied.stderr);
  const config = join(cluster.dir, 'agent.yaml');
  await writeFile(config, `pgdata: ${node.pg.dataDir}\npgHost: ${node.pg.socketDir}\npgPort: ${node.pg.port}\nlogLevel: info\n`);
  const agentEnv: NodeJS.ProcessEnv = { ...process.env, NODE_OPTIONS: AGENT_NODE_OPTIONS };
  if (AGENT_NODE_OPTIONS === '') delete agentEnv.NODE_OPTIONS;
  await cluster.spawnAgent(CLUSTER, 'node-1', { stateDir: node.stateDir, args: ['--config', config], env: agentEnv });
  await cluster.waitConverged(CLUSTER, 180_000);
  const env = { ...cluster.adminEnv, PGACCORD_TOKEN: (await readFile(join(cluster.coordinatorDir, 'admin.token'), 'utf8')).trim() };
  const status = await median([process.execPath, BIN, 'status', CLUSTER], env);

  const pids = cluster.pids();
  // The node flags the agent runs with: the unit's NODE_OPTIONS and the ones `pgaccord agent`
  // re-executes itself with (bin/pgaccord.mjs).
  const agentArgv = (await readFile(`/proc/${pids['agent-node-1']!}/cmdline`, 'utf8')).split('\0');
  const agentFlags = agentArgv.slice(1, agentArgv.findIndex((a, i) => i > 0 && !a.startsWith('--')));
  const before = { agent: await proc(pids['agent-node-1']!), coordinator: await proc(pids.coordinator!) };
  await new Promise((r) => setTimeout(r, IDLE_S * 1000));
  const after = { agent: await proc(pids['agent-node-1']!), coordinator: await proc(pids.coordinator!) };
  const cpuPct = (k: 'agent' | 'coordinator') => round(((after[k].cpuTicks - before[k].cpuTicks) / CLK_TCK / IDLE_S) * 100, 3);

  const figures = {
    node: process.version,
    bin: BIN,
    runs: RUNS,
    idle_s: IDLE_S,
    agent_node_options: AGENT_NODE_OPTIONS,
    agent_node_flags: agentFlags.join(' '),
    node_bare_ms: bare.ms,
    version_ms: version.ms,
    version_max_rss_mb: version.maxRssMb,
    status_help_ms: help.ms,
    status_help_max_rss_mb: help.maxRssMb,
    agent_help_ms: agentHelp.ms,
    agent_help_max_rss_mb: agentHelp.maxRssMb,
    coordinator_help_ms: coordinatorHelp.ms,
    coordinator_help_max_rss_mb: coordinatorHelp.maxRssMb,
    status_ms: status.ms,
    status_max_rss_mb: status.maxRssMb,
    agent_idle_rss_mb: after.agent.rssMb,
    // Without the node binary's and libraries' file pages (shared with every node process).
    agent_idle_rss_anon_mb: after.agent.anonMb,
    agent_idle_cpu_pct: cpuPct('agent'),
    coordinator_idle_rss_mb: after.coordinator.rssMb,
    coordinator_idle_cpu_pct: cpuPct('coordinator'),
  };
  console.log(JSON.stringify(figures));
} finally {
  await cluster.close();
}
