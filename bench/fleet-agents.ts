// bench:fleet's side of its agent processes (bench/fleet-agent-worker.ts): forks them, keeps what
// their events say of each agent (its generation, whether its long-poll is out, when) in flat
// arrays a fleet of ten thousand can be scanned in, and waits for their answers.
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { PACKAGE_ROOT } from '../shared/contract/version.ts';
import { wallMs, type AgentAssignment, type FleetEvent, type FromWorker, type ToWorker } from './fleet-agent-worker.ts';
import { log } from './fleet-figures.ts';
import { spawnRaised } from './fleet-processes.ts';

/** Until done() holds, looked at every 10 ms: the wall-clock time it held at. */
export async function until(what: string, done: () => boolean, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 10));
  }
  return wallMs();
}

export class AgentFleet {
  /** Per agent: the generation it holds, and since when. */
  readonly gen: Int32Array;
  readonly genAt: Float64Array;
  /** Per agent: 1 while its long-poll is out, when it went out, when contact was lost. */
  readonly up: Uint8Array;
  readonly upAt: Float64Array;
  readonly downAt: Float64Array;
  readonly workers: { child: ChildProcess; agents: AgentAssignment[] }[] = [];
  private readonly inbox: FromWorker[][] = [];

  constructor(
    agents: number,
    private readonly timeoutMs: number,
  ) {
    this.gen = new Int32Array(agents);
    this.genAt = new Float64Array(agents);
    this.up = new Uint8Array(agents);
    this.upAt = new Float64Array(agents);
    this.downAt = new Float64Array(agents);
  }

  /** One process for every `procs`-th agent. */
  spawn(assignments: AgentAssignment[], procs: number): void {
    for (let w = 0; w < procs; w++) {
      const mine = assignments.filter((a) => a.i % procs === w);
      const worker = join(PACKAGE_ROOT, 'bench', 'fleet-agent-worker.ts');
      const child = spawnRaised(['--max-old-space-size=8192', '--import', 'tsx', worker], ['ignore', 'inherit', 'inherit', 'ipc']);
      this.inbox.push([]);
      child.on('message', (m: FromWorker) => (m.type === 'ev' ? this.onEvents(m.ev) : this.inbox[w]!.push(m)));
      child.on('exit', (code) => {
        if (code !== 0 && code !== null) log(`agent process ${w} exited with ${code}`);
      });
      this.workers.push({ child, agents: mine });
    }
  }

  private onEvents(ev: FleetEvent[]): void {
    for (const [kind, i, g, at] of ev) {
      if (kind === 'gen') {
        this.gen[i] = g;
        this.genAt[i] = at;
      } else if (kind === 'up') {
        this.up[i] = 1;
        this.upAt[i] = at;
      } else {
        this.up[i] = 0;
        this.downAt[i] = at;
      }
    }
  }

  broadcast(m: ToWorker): void {
    this.workers.forEach((w) => w.child.send(m));
  }

  /** The next answer of this type from every process, one each. */
  async gather<K extends FromWorker['type']>(type: K): Promise<Extract<FromWorker, { type: K }>[]> {
    const deadline = Date.now() + this.timeoutMs;
    for (;;) {
      if (this.inbox.every((q) => q.some((m) => m.type === type))) {
        return this.inbox.map((q) => q.splice(q.findIndex((m) => m.type === type), 1)[0] as Extract<FromWorker, { type: K }>);
      }
      if (this.workers.some((w) => w.child.exitCode !== null)) throw new Error(`an agent process exited while waiting for "${type}"`);
      if (Date.now() > deadline) throw new Error(`agent processes: no "${type}" in ${this.timeoutMs / 1000} s`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** SIGTERM to every process still running. */
  kill(): void {
    for (const w of this.workers) if (w.child.exitCode === null) w.child.kill('SIGTERM');
  }
}
