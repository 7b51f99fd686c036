// CPU seconds spent, read from /proc, to say where a benchmark's time goes on a machine its
// processes share: a process with its children, live or reaped (an agent's psql runs, a
// postmaster's backends), and the whole machine (other work on it included).
import { readFile } from 'node:fs/promises';

/** USER_HZ: Linux reports /proc times in 1/100 s on every architecture pgaccord runs on. */
const TICK_S = 0.01;

/** utime + stime + cutime + cstime of a process, seconds (0 when it is gone); `own`: utime + stime only (its reaped children not counted). */
export async function processCpuS(pid: number, own = false): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null);
  if (stat === null) return 0;
  // Fields after the command name in parentheses (which may hold spaces): state is field 3, utime 14.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (own ? [11, 12] : [11, 12, 13, 14]).reduce((s, i) => s + Number(f[i]), 0) * TICK_S;
}

/** processCpuS of a process and of its live descendants (a re-exec'd coordinator runs as the child). */
export async function treeCpuS(pid: number): Promise<number> {
  const children = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '');
  const kids = children.split(' ').filter(Boolean).map(Number);
  return (await processCpuS(pid)) + (await Promise.all(kids.map(treeCpuS))).reduce((a, b) => a + b, 0);
}

/** Busy CPU seconds of the whole machine since boot (every core; idle and iowait excluded). */
export async function machineBusyS(): Promise<number> {
  const cpu = (await readFile('/proc/stat', 'utf8')).split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = cpu;
  return (user! + nice! + system! + irq! + softirq! + steal!) * TICK_S;
}

/** The postmaster's pid of a data directory (first line of postmaster.pid), or null. */
export async function postmasterPid(dataDir: string): Promise<number | null> {
  const text = await readFile(`${dataDir}/postmaster.pid`, 'utf8').catch(() => null);
  const pid = Number(text?.split('\n')[0]);
  return Number.isInteger(pid) && pid > 0 ? pid : null;
}
