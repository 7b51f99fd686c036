// pgaccord token create: a single-use join token bound to one node.
import { parseCommand, UsageError } from '../../shared/system/cli.ts';
import { parseDuration } from '../cluster/duration.ts';
import { call, CONNECTION_HELP, CONNECTION_OPTIONS, withConn } from './http.ts';

const TOKEN = {
  usage: 'pgaccord token create CLUSTER NODE [--ttl DURATION] [connection options]',
  summary: 'Print a single-use join token bound to one node. It carries the coordinator CA fingerprint for the agent to pin.',
  details: `
options:
  --ttl DURATION      lifetime of the token (default 1h; e.g. 30m, 2h, 1d; at most 30d)
${CONNECTION_HELP}

The token is printed alone on standard output; its expiry goes to standard error.`,
  options: { ttl: { type: 'string' }, ...CONNECTION_OPTIONS },
  positionals: { min: 3, max: 3 },
} as const;

export async function runToken(argv: string[]): Promise<number> {
  const help = argv.includes('--help') || argv.includes('-h');
  if (argv[0] !== 'create' && !help) throw new UsageError(`unknown or missing subcommand${argv[0] ? ` "${argv[0]}"` : ''}\nusage: ${TOKEN.usage}`);
  const parsed = parseCommand(TOKEN, argv);
  if (!parsed) return 0;
  const [, cluster, node] = parsed.positionals as [string, string, string];
  const v = parsed.values;
  if (v.ttl !== undefined && parseDuration(v.ttl) === null) throw new UsageError(`--ttl: "${v.ttl}" is not a duration (e.g. 30m, 1h, 1d)`);
  return withConn(v, async (conn) => {
    const path = `/v1/clusters/${encodeURIComponent(cluster)}/nodes/${encodeURIComponent(node)}/tokens`;
    const res = await call<{ token: string; expiresAt: string }>(conn, 'POST', path, v.ttl ? { ttl: v.ttl } : {});
    process.stdout.write(`${res.token}\n`);
    process.stderr.write(`single-use join token for ${cluster}/${node}, expires ${res.expiresAt}\n`);
    return 0;
  });
}
