// A whole pgaccord system on one machine: a coordinator, PostgreSQL nodes on loopback and an
// agent process per node, driven through the same `pgaccord` commands a user types. The demo
// and the end-to-end tests both stand on this.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { chown, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ClusterStatusResponse } from '../shared/contract/api.ts';
import type { ClusterSpec } from '../shared/contract/schema.ts';
import { createPgInstance, freePort, ownedDir, serverOsUser, type OsUser, type PgInstance } from '../shared/system/pgserver.ts';
import { PACKAGE_ROOT } from '../shared/contract/version.ts';

// The executable, wherever this file runs from (the sources or their compiled copy in dist/).
const PGACCORD = join(PACKAGE_ROOT, 'bin', 'pgaccord.mjs');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface LocalNode {
  name: string;
  /** Loopback address the server listens on and peers connect to. */
  host: string;
  pg: PgInstance;
  stateDir: string;
  agent: ChildProcess | null;
}

export interface LocalClusterOptions {
  /** Working directory; everything the system makes lives under it. */
  dir: string;
  /** Where process output goes (a file per process under dir when absent). */
  onLine?: (source: string, line: string) => void;
}

async function run(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  const child = spawn(process.execPath, [PGACCORD, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const [code] = (await once(child, 'close')) as [number | null];
  return { code: code ?? 1, stdout, stderr };
}

export class LocalCluster {
  readonly nodes = new Map<string, LocalNode>();
  /** Every running agent process, by node name. */
  private readonly agents = new Map<string, ChildProcess>();
  private coordinator: ChildProcess | null = null;
  coordinatorUrl = '';

  private constructor(readonly dir: string, private readonly opts: LocalClusterOptions) {}

  get coordinatorDir(): string {
    return join(this.dir, 'coordinator');
  }

  /** Environment that points the admin commands at this coordinator. */
  get adminEnv(): NodeJS.ProcessEnv {
    return { PGACCORD_URL: this.coordinatorUrl, PGACCORD_CA: join(this.coordinatorDir, 'ca.crt') };
  }

  static async create(opts: LocalClusterOptions): Promise<LocalCluster> {
    await mkdir(opts.dir, { recursive: true });
    // The servers run as the postgres OS user when we are root: they must be able to reach their dirs.
    await ownedDir(opts.dir, { ...(await serverOsUser()), uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 }, 0o711);
    return new LocalCluster(opts.dir, opts);
  }

  private pipe(source: string, child: ChildProcess): void {
    const logFile = join(this.dir, `${source}.log`);
    for (const stream of [child.stdout, child.stderr]) {
      stream?.on('data', (d: Buffer) => {
        void writeFile(logFile, d, { flag: 'a' });
        if (this.opts.onLine) for (const line of d.toString().split('\n').filter(Boolean)) this.opts.onLine(source, line);
      });
    }
  }

  /** `extraArgs`: more `pgaccord coordinator` options (a test's --long-poll, for example). */
  async startCoordinator(extraArgs: string[] = []): Promise<void> {
    const port = this.coordinatorUrl ? Number(new URL(this.coordinatorUrl).port) : await freePort();
    this.coordinatorUrl = `https://127.0.0.1:${port}`;
    const child = spawn(process.execPath, [PGACCORD, 'coordinator', '--data-dir', this.coordinatorDir, '--listen', `127.0.0.1:${port}`, ...extraArgs], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.coordinator = child;
    this.pipe('coordinator', child);
    const deadline = Date.now() + 90_000;
    while (Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`coordinator exited with ${child.exitCode}; see ${join(this.dir, 'coordinator.log')}`);
      if (existsSync(join(this.coordinatorDir, 'admin.token'))) {
        const r = await this.cli(['status', '--json']).catch(() => null);
        if (r && r.code === 0) return;
      }
      await new Promise((r) => setTimeout(r, 300));
    }
    throw new Error('coordinator did not become ready in 90 s');
  }

  async stopCoordinator(): Promise<void> {
    await stopProcess(this.coordinator);
    this.coordinator = null;
  }

  /** A PostgreSQL node listening on its own loopback address. */
  async addNode(name: string, host: string): Promise<LocalNode> {
    // Also on ::1, so that tests can connect from an address no HBA rule admits.
    const pg = await createPgInstance({ baseDir: join(this.dir, name), listen: `${host},::1`, port: await freePort(host) });
    const node: LocalNode = { name, host, pg, stateDir: join(this.dir, `${name}-agent`), agent: null };
    this.nodes.set(name, node);
    return node;
  }

  /** Run a `pgaccord` admin command against this coordinator. */
  async cli(args: string[]): Promise<CliResult> {
    return run(args, { ...this.adminEnv, PGACCORD_TOKEN: (await readFile(join(this.coordinatorDir, 'admin.token'), 'utf8')).trim() });
  }

  async apply(spec: ClusterSpec): Promise<CliResult> {
    const file = join(this.dir, `${spec.name}.json`);
    await writeFile(file, JSON.stringify(spec, null, 2));
    return this.cli(['apply', '-f', file]);
  }

  /** `extraArgs`: more `pgaccord agent` options (a test's --prove-every, for example). */
  async startAgent(cluster: string, name: string, extraArgs: string[] = []): Promise<void> {
    const node = this.nodes.get(name);
    if (!node) throw new Error(`no node ${name}`);
    node.agent = await this.spawnAgent(cluster, name, {
      stateDir: node.stateDir,
      args: ['--pgdata', node.pg.dataDir, '--pg-host', node.pg.socketDir, '--pg-port', String(node.pg.port), ...extraArgs],
    });
  }

  /**
   * An agent process for any node, including one whose server this class does not start
   * (pg_autoctl creates it): `args` carry --pgdata and the rest; the join token goes in a file
   * readable only by `user` (the agent runs as that OS user when given, as pgaccord's unit does).
   */
  async spawnAgent(cluster: string, name: string, opts: { stateDir: string; args: string[]; user?: OsUser; env?: NodeJS.ProcessEnv }): Promise<ChildProcess> {
    const args = ['agent', '--coordinator', this.coordinatorUrl, '--node', `${cluster}/${name}`, '--state-dir', opts.stateDir, ...opts.args];
    if (!existsSync(join(opts.stateDir, 'identity.crt'))) {
      const token = await this.cli(['token', 'create', cluster, name]);
      if (token.code !== 0) throw new Error(`token create failed: ${token.stderr}`);
      const tokenFile = join(this.dir, `${name}.token`);
      await writeFile(tokenFile, token.stdout.trim(), { mode: 0o600 });
      if (opts.user && process.getuid?.() === 0) await chown(tokenFile, opts.user.uid, opts.user.gid);
      args.push('--join-token-file', tokenFile);
    }
    const asUser = opts.user && process.getuid?.() === 0 ? { uid: opts.user.uid, gid: opts.user.gid } : {};
    const child = spawn(process.execPath, [PGACCORD, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...asUser, ...(opts.env ? { env: opts.env } : {}) });
    this.agents.set(name, child);
    this.pipe(`agent-${name}`, child);
    return child;
  }

  /** Process ids of the coordinator and of every running agent (for measurements). */
  pids(): Record<string, number> {
    const out: Record<string, number> = {};
    if (this.coordinator?.pid !== undefined) out.coordinator = this.coordinator.pid;
    for (const [name, child] of this.agents) if (child.pid !== undefined) out[`agent-${name}`] = child.pid;
    return out;
  }

  async stopAgent(name: string, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    await stopProcess(this.agents.get(name) ?? null, signal);
    this.agents.delete(name);
    const node = this.nodes.get(name);
    if (node) node.agent = null;
  }

  async status(cluster: string): Promise<ClusterStatusResponse> {
    const r = await this.cli(['status', cluster, '--json']);
    if (r.code !== 0) throw new Error(`status failed: ${r.stderr}`);
    return JSON.parse(r.stdout) as ClusterStatusResponse;
  }

  /** Wait until every node has applied and proved the current generation. */
  async waitConverged(cluster: string, timeoutMs: number, onProgress?: (s: ClusterStatusResponse) => void): Promise<ClusterStatusResponse> {
    const deadline = Date.now() + timeoutMs;
    let last: ClusterStatusResponse | null = null;
    while (Date.now() < deadline) {
      last = await this.status(cluster).catch(() => last);
      if (last) {
        onProgress?.(last);
        if (last.converged) return last;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
    throw new Error(`cluster ${cluster} did not converge in ${timeoutMs / 1000} s: ${JSON.stringify(last?.nodes.map((n) => ({ node: n.node, phase: n.phase, applied: n.appliedGeneration, stale: n.stale, errors: n.errors, failedProbes: n.probes.filter((p) => !p.ok) })))}`);
  }

  /** Wait until one node has applied and proved the cluster's current generation (its probes may still fail). */
  async waitNodeConverged(cluster: string, node: string, timeoutMs: number): Promise<ClusterStatusResponse['nodes'][number]> {
    const deadline = Date.now() + timeoutMs;
    let row: ClusterStatusResponse['nodes'][number] | undefined;
    while (Date.now() < deadline) {
      row = (await this.status(cluster).catch(() => null))?.nodes.find((n) => n.node === node) ?? row;
      if (row && row.phase === 'converged' && row.appliedGeneration === row.desiredGeneration) return row;
      await new Promise((r) => setTimeout(r, 500));
    }
    throw new Error(`${cluster}/${node} did not converge in ${timeoutMs / 1000} s: ${JSON.stringify(row && { phase: row.phase, applied: row.appliedGeneration, desired: row.desiredGeneration, errors: row.errors })}`);
  }

  /** Stop every process and server; remove the working directory unless kept. */
  async close(opts: { keep?: boolean } = {}): Promise<void> {
    await Promise.all([...this.agents.keys()].map((n) => this.stopAgent(n)));
    await this.stopCoordinator();
    await Promise.all([...this.nodes.values()].map((n) => n.pg.stop('fast').catch(() => undefined)));
    if (!opts.keep) await rm(this.dir, { recursive: true, force: true });
  }
}

async function stopProcess(child: ChildProcess | null, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(timer);
}
