// pgaccord: one executable, one subcommand per job. Each command module is loaded only when used.
import { UsageError } from '../shared/system/cli.ts';
import { PGACCORD_VERSION } from '../shared/contract/version.ts';

type Runner = (argv: string[]) => Promise<number>;

const COMMANDS: Record<string, { summary: string; load: () => Promise<Runner> }> = {
  coordinator: { summary: 'run the coordinator (REST API, per-cluster CA, state store)', load: async () => (await import('../coordinator/command.ts')).runCoordinatorCommand },
  agent: { summary: 'run the node agent (pull, write, reload, prove, report)', load: async () => (await import('../agent/command.ts')).runAgentCommand },
  apply: { summary: 'create or update a cluster from a spec file (--dry-run to preview)', load: async () => (await import('../coordinator/cli/apply.ts')).runApply },
  status: { summary: 'show per-node generation, state, certificates and probes', load: async () => (await import('../coordinator/cli/status.ts')).runStatus },
  token: { summary: 'create a single-use join token for a node', load: async () => (await import('../coordinator/cli/token.ts')).runToken },
  cert: { summary: 'list, renew or revoke certificates; rotate the cluster CA', load: async () => (await import('../coordinator/cli/cert.ts')).runCert },
  demo: { summary: 'run the whole system on this machine (coordinator, 3 nodes, 3 agents)', load: async () => (await import('./demo.ts')).runDemo },
};

function help(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  return [
    'usage: pgaccord <command> [options]',
    '',
    'pgaccord keeps the inter-node authentication of PostgreSQL clusters correct and current.',
    '',
    'commands:',
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`),
    '',
    'Run `pgaccord <command> --help` for the options of each.',
  ].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    console.log(help());
    return name === undefined ? 2 : 0;
  }
  if (name === '--version') {
    console.log(`pgaccord ${PGACCORD_VERSION}`);
    return 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    console.error(`pgaccord: unknown command "${name}"\n\n${help()}`);
    return 2;
  }
  try {
    return await (await command.load())(rest);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`pgaccord ${name}: ${e.message}`);
      return 2;
    }
    console.error(`pgaccord ${name}: ${(e as Error).message}`);
    return 1;
  }
}
