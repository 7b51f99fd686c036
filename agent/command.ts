// `pgaccord agent`'s command line, apart from the runtime (agent/main.ts) so that
// `pgaccord agent --help` and a usage error load only this and agent/options.ts (the runtime's
// packages are tens of MB and ~100 ms: undici, pg, node-forge, pino, typebox).
import { parseCommand } from '../shared/system/cli.ts';
import { AGENT_COMMAND } from './options.ts';

/** Help and usage errors from here; the runtime is loaded only to run. */
export async function runAgentCommand(argv: string[]): Promise<number> {
  if (!parseCommand(AGENT_COMMAND, argv)) return 0;
  return (await import('./main.ts')).runAgent(argv);
}
