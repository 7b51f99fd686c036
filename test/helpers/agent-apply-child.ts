// Child process for the SIGKILL test: applies the given desired states in turn, forever, until
// it is killed. Usage: node --import tsx test/helpers/agent-apply-child.ts <job.json>
// Prints "ready" once loaded, then "applied <n> <phase>" after each apply.
import { readFileSync } from 'node:fs';
import pino from 'pino';
import { applyDesired } from '../../agent/apply/apply.ts';
import type { ApplyInput, NodeContext } from '../../agent/apply/types.ts';

export interface ChildJob {
  ctx: Omit<NodeContext, 'log'>;
  states: ApplyInput[];
  /** Index of the state to start with. */
  start: number;
}

const job = JSON.parse(readFileSync(process.argv[2]!, 'utf8')) as ChildJob;
const ctx: NodeContext = { ...job.ctx, log: pino({ level: 'silent' }) };
process.stdout.write('ready\n');
for (let n = 0; ; n++) {
  const input = job.states[(job.start + n) % job.states.length]!;
  const r = await applyDesired(ctx, input);
  process.stdout.write(`applied ${n} ${r.phase} ${r.errors.map((e) => e.code).join(',')}\n`);
}
