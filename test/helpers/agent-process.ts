// Helpers for the agent runtime integration tests: agents as real child processes
// (`pgaccord agent ...`), their JSON log lines, and polling.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

const ROOT = join(import.meta.dirname, '..', '..');

export interface AgentProcess {
  proc: ChildProcess;
  /** Every stdout/stderr line so far. */
  lines: string[];
  /** Parsed JSON log records. */
  records(): Record<string, unknown>[];
  exited: Promise<number | null>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export function startAgent(args: string[], env: NodeJS.ProcessEnv = {}): AgentProcess {
  const proc = spawn(process.execPath, [join(ROOT, 'bin', 'pgaccord.mjs'), 'agent', ...args], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  let buf = '';
  const onData = (d: Buffer) => {
    buf += d.toString();
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      lines.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  };
  proc.stdout!.on('data', onData);
  proc.stderr!.on('data', onData);
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => {
    if (buf) lines.push(buf);
    resolve(code);
  }));
  return {
    proc,
    lines,
    records: () => lines.flatMap((l) => {
      try {
        return [JSON.parse(l) as Record<string, unknown>];
      } catch {
        return [];
      }
    }),
    exited,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return exited;
    },
  };
}

export { waitFor } from './wait.ts';
