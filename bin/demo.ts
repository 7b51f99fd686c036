// `pgaccord demo`: the whole system on one machine. A coordinator with its own store, three
// PostgreSQL 15 nodes on loopback (127.0.0.11-13), an agent process per node, and a `pgd`
// cluster with certificate auth and verify-full, applied and proved.
import { mkdtemp } from 'node:fs/promises';
import { basename, isAbsolute, relative, resolve } from 'node:path';
import { parseCommand, UsageError } from '../shared/system/cli.ts';
import type { ClusterStatusResponse } from '../shared/contract/api.ts';
import type { ClusterSpec } from '../shared/contract/schema.ts';
import { LocalCluster } from './local-cluster.ts';

const COMMAND = {
  usage: 'pgaccord demo [--dir DIR] [--keep] [--exit] [--timeout SECONDS]',
  summary:
    'Runs the whole system on this machine: a coordinator, three PostgreSQL 15 nodes on loopback,\n' +
    'their agents, and a pgd cluster with certificate authentication (verify-full). Waits until every\n' +
    'node has applied and proved it, prints the status and how to connect, then runs until Ctrl-C.',
  details: `
options:
  --dir DIR          working directory (default: a new one under /tmp)
  --keep             keep the working directory (servers, keys, logs) after stopping
  --exit             stop as soon as the cluster has converged and the status is printed
  --timeout S        give up if the cluster has not converged after S seconds (default 180)

Needs Node.js >= 22 and the PostgreSQL 15 server binaries (/usr/lib/postgresql/15/bin).
As root, the servers run as the postgres OS user.
`,
  options: {
    dir: { type: 'string' },
    keep: { type: 'boolean' },
    exit: { type: 'boolean' },
    timeout: { type: 'string' },
  },
} as const;

export const DEMO_CLUSTER = 'demo';

export function demoSpec(ports: Record<string, number>): ClusterSpec {
  return {
    name: DEMO_CLUSTER,
    profile: 'pgd',
    auth: 'cert',
    tls: { sslmode: 'verify-full', certLifetime: '90d' },
    // Every loopback connection comes from 127.0.0.1, whichever 127.x address it goes to.
    nodes: Object.entries(ports).map(([name, port], i) => ({ name, host: `127.0.0.${11 + i}`, address: '127.0.0.1', port, kind: 'peer' })),
  };
}

export async function runDemo(argv: string[]): Promise<number> {
  const args = parseCommand(COMMAND, argv);
  if (!args) return 0;
  const timeout = Number(args.values.timeout ?? '180');
  if (!Number.isFinite(timeout) || timeout <= 0) throw new UsageError(`--timeout must be a positive number of seconds, not "${args.values.timeout}"`);
  const dir = args.values.dir ? resolve(args.values.dir) : await mkdtemp('/tmp/pgaccord-demo-');
  const started = Date.now();
  const step = (msg: string) => console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s] ${msg}`);

  const cluster = await LocalCluster.create({ dir });
  let stopping = false;
  const stop = async (code: number) => {
    if (stopping) return;
    stopping = true;
    step(args.values.keep ? `stopping; keeping ${dir}` : 'stopping and removing everything the demo made');
    await cluster.close({ keep: args.values.keep });
    process.exit(code);
  };
  process.once('SIGINT', () => void stop(0));
  process.once('SIGTERM', () => void stop(0));

  try {
    step(`working directory ${dir}`);
    step('starting the coordinator (its own PostgreSQL store, CA, admin token)');
    await cluster.startCoordinator();
    const ports: Record<string, number> = {};
    for (const [i, name] of ['node-1', 'node-2', 'node-3'].entries()) {
      const node = await cluster.addNode(name, `127.0.0.${11 + i}`);
      ports[name] = node.pg.port;
      step(`PostgreSQL 15 ${name} listening on ${node.host}:${node.pg.port}`);
    }
    const applied = await cluster.apply(demoSpec(ports));
    if (applied.code !== 0) throw new Error(`apply failed: ${applied.stderr || applied.stdout}`);
    step(`applied cluster "${DEMO_CLUSTER}": profile pgd, auth cert, sslmode verify-full`);
    for (const name of Object.keys(ports)) {
      await cluster.startAgent(DEMO_CLUSTER, name);
      step(`agent for ${name} started with a single-use join token`);
    }
    let lastLine = '';
    const status = await cluster.waitConverged(DEMO_CLUSTER, timeout * 1000, (s) => {
      const line = s.nodes.map((n) => `${n.node}:${n.phase}@${n.appliedGeneration}/${n.desiredGeneration}`).join('  ');
      if (line !== lastLine) step(`waiting: ${line}`);
      lastLine = line;
    });
    step(`converged in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    const table = await cluster.cli(['status', DEMO_CLUSTER]);
    console.log(`\n${table.stdout}`);
    printHowToConnect(status, cluster);
  } catch (e) {
    console.error(`demo failed: ${(e as Error).message}\nlogs are in ${dir} (kept)`);
    await cluster.close({ keep: true });
    return 1;
  }
  if (args.values.exit) {
    await stop(0);
    return 0;
  }
  console.log('Running. Press Ctrl-C to stop everything.');
  await new Promise(() => undefined);
  return 0;
}

/**
 * The status command to suggest, from the script that started this process (process.argv[1]):
 * a checkout's launcher is run with node (by a path relative to `cwd` when under it); an
 * installed copy (a PATH symlink, or the launcher inside node_modules) is `pgaccord`.
 */
export function statusHint(script: string | undefined, cwd: string): string {
  if (script === undefined || basename(script) !== 'pgaccord.mjs' || script.split('/').includes('node_modules')) return `pgaccord status ${DEMO_CLUSTER}`;
  const rel = relative(cwd, script);
  return `node ${rel !== '' && !rel.startsWith('..') && !isAbsolute(rel) ? rel : script} status ${DEMO_CLUSTER}`;
}

function printHowToConnect(status: ClusterStatusResponse, cluster: LocalCluster): void {
  const edge = status.nodes.flatMap((n) => n.probes.map((p) => ({ from: n.node, ...p }))).find((p) => p.ok);
  console.log('Admin commands against this coordinator:');
  console.log(`  export PGACCORD_URL=${cluster.adminEnv.PGACCORD_URL} PGACCORD_CA=${cluster.adminEnv.PGACCORD_CA} PGACCORD_TOKEN=$(cat ${cluster.coordinatorDir}/admin.token)`);
  console.log(`  ${statusHint(process.argv[1], process.cwd())}`);
  if (edge) {
    const asUser = process.getuid?.() === 0 ? 'runuser -u postgres -- ' : '';
    console.log(`\nConnect from ${edge.from} to ${edge.to} with the certificate its agent installed:`);
    console.log(`  ${asUser}psql "${edge.conninfo}" -c 'SELECT ssl, version, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()'`);
  }
  console.log('');
}
