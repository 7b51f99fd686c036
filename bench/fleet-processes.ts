// The processes bench:fleet runs and what it reads of them from /proc: the coordinator
// (`pgaccord coordinator` from dist/, as the product starts it), started with the open-file limit
// raised, until /healthz answers; its memory, its CPU seconds and its embedded store's.
// And the flags a run passes to it (coordinatorFlags).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Agent, request, type Dispatcher } from 'undici';
import { PACKAGE_ROOT } from '../shared/contract/version.ts';
import { wallMs } from './fleet-agent-worker.ts';
import { log } from './fleet-figures.ts';
import { AGENTS, LOG_LEVEL, PROBES, PROCS, STATUS_CONCURRENCY } from './fleet-shape.ts';

const PGACCORD = join(PACKAGE_ROOT, 'bin', 'pgaccord.mjs');

/** dist/ is what `pgaccord` runs: rebuilt first when a source is newer (as bin/run-tests.mjs does). */
export function ensureBuilt(): void {
  const newest = (p: string): number => {
    if (!existsSync(p)) return 0;
    const st = statSync(p);
    return st.isDirectory() ? Math.max(0, ...readdirSync(p).map((f) => newest(join(p, f)))) : p.endsWith('.ts') ? st.mtimeMs : 0;
  };
  const main = join(PACKAGE_ROOT, 'dist', 'bin', 'main.js');
  const built = existsSync(main) ? statSync(main).mtimeMs : 0;
  if (built >= Math.max(...['agent', 'coordinator', 'shared', 'bin'].map((d) => newest(join(PACKAGE_ROOT, d))))) return;
  log('dist/ is older than the sources: npm run build');
  const b = spawnSync('npm', ['run', '--silent', 'build'], { cwd: PACKAGE_ROOT, stdio: ['ignore', 2, 2] });
  if (b.status !== 0 && !existsSync(main)) throw new Error('npm run build failed');
}

/** Open files allowed (soft, hard) from /proc/self/limits: Node has no getrlimit. */
export function nofile(): { soft: number; hard: number } {
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  const n = (s: string | undefined) => (s === 'unlimited' ? Infinity : Number(s));
  return { soft: n(m?.[1]), hard: n(m?.[2]) };
}

/** Children run with the soft open-file limit raised to the hard one (sh's ulimit; Node has no setrlimit). */
export function spawnRaised(args: string[], stdio: ('ignore' | 'inherit' | 'ipc' | number)[], env: NodeJS.ProcessEnv = process.env): ChildProcess {
  return spawn('/bin/sh', ['-c', 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"', 'sh', process.execPath, ...args], { stdio, cwd: PACKAGE_ROOT, env });
}

/**
 * FLEET_COORDINATOR_ENV: VAR=value pairs, space-separated, for the coordinator process (and its
 * embedded store) only, not the agent processes: e.g. an allocator setting the unit would ship
 * (GLIBC_TUNABLES=..., LD_PRELOAD=...), measured on the coordinator alone.
 */
export function coordinatorEnv(text = process.env.FLEET_COORDINATOR_ENV ?? ''): Record<string, string> {
  const pairs = text.split(' ').filter(Boolean).map((a) => /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(a));
  if (pairs.some((m) => !m)) throw new Error(`FLEET_COORDINATOR_ENV: "${text}" is not VAR=value pairs, space-separated`);
  return Object.fromEntries(pairs.map((m) => [m![1]!, m![2]!]));
}

export function coordinatorHelp(): string {
  const r = spawnSync(process.execPath, [PGACCORD, 'coordinator', '--help'], { encoding: 'utf8' });
  return `${r.stdout}${r.stderr}`;
}

export interface Coordinator {
  child: ChildProcess;
  pid: number;
  startedAt: number;
  exited: Promise<unknown>;
}

export async function startCoordinatorProcess(dataDir: string, port: number, flags: string[], logFile: string): Promise<Coordinator> {
  const fd = openSync(logFile, 'a');
  const startedAt = wallMs();
  // FLEET_CPU_PROF=DIR: a V8 CPU profile of each coordinator process, written when it exits.
  const prof = process.env.FLEET_CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.FLEET_CPU_PROF] : [];
  // FLEET_NODE_FLAGS: node/V8 flags for the coordinator process (e.g. heap limits), space-separated.
  const nodeFlags = (process.env.FLEET_NODE_FLAGS ?? '').split(' ').filter(Boolean);
  const args = [...nodeFlags, ...prof, PGACCORD, 'coordinator', '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, '--log-level', LOG_LEVEL, ...flags];
  const env = coordinatorEnv();
  if (Object.keys(env).length) log(`coordinator environment: ${Object.entries(env).map(([k, v]) => `${k}=${v}`).join(' ')}`);
  const child = spawnRaised(args, ['ignore', fd, fd], { ...process.env, ...env });
  closeSync(fd);
  const exited = once(child, 'exit');
  return { child, pid: child.pid!, startedAt, exited };
}

/** Until /healthz answers over TLS (the CA is on disk once the data dir is made). */
export async function waitReady(c: Coordinator, dataDir: string, url: string): Promise<number> {
  const deadline = Date.now() + 120_000;
  let d: Dispatcher | null = null;
  try {
    while (Date.now() < deadline) {
      if (c.child.exitCode !== null) throw new Error(`coordinator exited with ${c.child.exitCode}: see its log`);
      if (!d && existsSync(join(dataDir, 'ca.crt'))) d = new Agent({ connect: { ca: readFileSync(join(dataDir, 'ca.crt'), 'utf8') } });
      if (d) {
        const ok = await request(`${url}/healthz`, { dispatcher: d }).then(async (r) => (await r.body.text(), r.statusCode === 200), () => false);
        if (ok) return wallMs();
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  } finally {
    await d?.destroy();
  }
  throw new Error('coordinator not ready in 120 s');
}

export function procStatus(pid: number): { rssMb: number; hwmMb: number } {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB$`, 'm').exec(s)?.[1] ?? NaN);
  return { rssMb: Math.round(kb('VmRSS') / 102.4) / 10, hwmMb: Math.round(kb('VmHWM') / 102.4) / 10 };
}

const TICK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;
/** User + system CPU seconds of a process (/proc/PID/stat utime + stime). */
export function cpuSeconds(pid: number): number {
  const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / TICK;
}

/** CPU seconds of the embedded store: its postmaster, its live backends and the ones it reaped. */
export function storeCpuSeconds(dataDir: string): number | null {
  let postmaster: number;
  try {
    postmaster = Number(readFileSync(join(dataDir, 'pg', 'data', 'postmaster.pid'), 'utf8').split('\n')[0]);
  } catch {
    return null;
  }
  let total = 0;
  for (const p of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    try {
      const s = readFileSync(`/proc/${p}/stat`, 'utf8');
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      if (Number(p) === postmaster) total += (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / TICK;
      else if (Number(f[1]) === postmaster) total += (Number(f[11]) + Number(f[12])) / TICK;
    } catch {
      // gone meanwhile
    }
  }
  return Math.round(total * 100) / 100;
}

/**
 * The kernel's TCP counters of the whole machine (/proc/net/netstat TcpExt): ListenOverflows (a
 * connection the accept queue had no room for: its SYN or final ACK dropped) and TCPSynRetrans.
 */
export function tcpCounters(): { listenOverflows: number; synRetrans: number } {
  const lines = readFileSync('/proc/net/netstat', 'utf8').split('\n').filter((l) => l.startsWith('TcpExt:'));
  const names = lines[0]?.split(/\s+/) ?? [];
  const values = lines[1]?.split(/\s+/) ?? [];
  const of = (k: string) => Number(values[names.indexOf(k)] ?? NaN);
  return { listenOverflows: of('ListenOverflows'), synRetrans: of('TCPSynRetrans') };
}

/**
 * The coordinator's flags for this shape (those its --help offers) and the warnings of a run
 * that would measure refusals: its connection limit, the open-file limits.
 */
export function coordinatorFlags(): { flags: string[]; notes: string[] } {
  const help = coordinatorHelp();
  const has = (flag: string) => help.includes(flag);
  const flags: string[] = [];
  const notes: string[] = [];
  if (process.env.FLEET_TLS_KEY) {
    if (!has('--tls-key-type')) throw new Error('FLEET_TLS_KEY: this coordinator has no --tls-key-type');
    flags.push('--tls-key-type', process.env.FLEET_TLS_KEY);
  }
  // One kept connection per agent (its long-poll and the calls in turn with it, as
  // agent/runtime/client.ts), a second only for a call beside the held long-poll, closed once
  // answered: the status phase (STATUS_CONCURRENCY agents at a time) and the renewal storm (every
  // agent at once: the peak, two per agent). And the probes.
  const connections = 2 * AGENTS + 100;
  if (has('--max-connections')) flags.push('--max-connections', String(connections));
  else if (AGENTS + PROBES + 10 > 1000) {
    // Beyond its connection limit the coordinator closes new connections at once: the run would
    // measure refusals. Raising it takes a coordinator option this one does not have.
    throw new Error(`${AGENTS} agents hold more long-polls than the coordinator's 1000 connections (coordinator/http/connection-limits.ts `
      + `DEFAULT_MAX_CONNECTIONS) and \`pgaccord coordinator\` has no --max-connections to raise it`);
  } else if (2 * AGENTS + PROBES + 10 > 1000) notes.push(`up to ${2 * AGENTS} connections at once (a long-poll and a report or CSR per agent) against `
    + `the coordinator's limit of 1000: some may be refused`);
  if (has('--agent-rate-limit') && process.env.FLEET_RATE_LIMIT) flags.push('--agent-rate-limit', process.env.FLEET_RATE_LIMIT);
  const files = nofile();
  const perWorker = Math.ceil((2 * AGENTS) / PROCS) + 200;
  if (files.hard < connections + 200 || files.hard < perWorker) {
    notes.push(`open files: hard limit ${files.hard}, the coordinator needs about ${connections + 200} in the renewal storm (`
      + `${AGENTS + STATUS_CONCURRENCY + 300} before it) and each agent process ${perWorker}: raise it `
      + `first (as root: ulimit -Hn ${2 * (connections + 200)}; ulimit -n ${2 * (connections + 200)})`);
  }
  return { flags, notes };
}
