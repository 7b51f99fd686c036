// The agent runtime against the real coordinator (HTTPS, mTLS, embedded store) and real
// PostgreSQL 15 nodes, as root: enrol with a token, converge scram then cert, report status the
// coordinator shows; restart after the token is spent; coordinator stopped → node keeps serving,
// status stale; coordinator back → converges.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chown, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { startCoordinator, type RunningCoordinator } from '../../coordinator/main.ts';
import type { ClusterSpec, NodeDesired } from '../../shared/contract/schema.ts';
import type { AgentStatus } from '../../shared/contract/status.ts';
import type { PgInstance } from '../../shared/system/pgserver.ts';
import { throwawayPg, query } from '../helpers/pg.ts';
import { startAgent, waitFor, type AgentProcess } from '../helpers/agent-process.ts';

let coord: RunningCoordinator;
let coordDir: string;
let coordPort: number;
let pg1: PgInstance;
let pg2: PgInstance;
const stateDirs: Record<string, string> = {};
const agents: Record<string, AgentProcess> = {};
const tokens: Record<string, string> = {};
const cleanup: string[] = [];

const specFor = (auth: ClusterSpec['auth'], roles: string[] = []): ClusterSpec => ({
  name: 'sales',
  profile: 'streaming',
  auth,
  tls: { sslmode: 'verify-full', certLifetime: '1d' },
  nodes: [
    { name: 'node-1', host: '127.0.0.1', port: pg1.port, kind: 'primary' },
    { name: 'node-2', host: '127.0.0.1', port: pg2.port, kind: 'standby' },
  ],
  roles: roles.map((name) => ({ name })),
});

async function startCoord(port = 0): Promise<RunningCoordinator> {
  return startCoordinator({ dataDir: coordDir, listen: `127.0.0.1:${port}`, longPollMs: 2000, logLevel: 'warn', logDestination: pino.destination({ dest: join(coordDir, 'coordinator.log'), sync: true }) });
}

const agentArgs = (node: string, pg: PgInstance, token?: string) => [
  '--coordinator', coord.url,
  '--node', `sales/${node}`,
  '--pgdata', pg.dataDir,
  '--state-dir', stateDirs[node]!,
  ...(token ? ['--join-token', token] : []),
  // --pg-host/--pg-port deliberately omitted: they come from PGDATA/postmaster.pid.
];

async function clusterStatus() {
  return coord.service.status('sales');
}

/** Wait until every node has applied `generation`, converged, and (when wanted) its probes pass. */
async function converged(generation: number, timeoutMs = 90_000) {
  try {
    return await waitFor(`both nodes converged at generation ${generation}`, async () => {
      const s = await clusterStatus();
      // The coordinator's verdict too: every probe made against its peer's current generation.
      const ok = s.converged && s.nodes.every((n) => n.appliedGeneration === generation && n.phase === 'converged' && n.probes.every((p) => p.ok));
      return ok && s.nodes.length === 2 ? s : null;
    }, timeoutMs, 500);
  } catch (e) {
    // Say why: what the coordinator shows and what the agents said last.
    const s = await clusterStatus().catch(() => null);
    const tails = Object.entries(agents).map(([n, a]) => `--- ${n} (exit ${a.proc.exitCode})\n${a.lines.filter((l) => !l.includes('applied and proved')).slice(-15).join('\n')}`);
    throw new Error(`${(e as Error).message}\n${JSON.stringify(s?.nodes.map((n) => ({ node: n.node, gen: n.appliedGeneration, phase: n.phase, errors: n.errors, probes: n.probes })), null, 1)}\n${tails.join('\n')}`);
  }
}

const localStatus = async (node: string) => JSON.parse(await readFile(join(stateDirs[node]!, 'status.json'), 'utf8')) as { at: string; reported: boolean; status: AgentStatus };

// Set up at the top level: throwawayPg registers its own after() hook for the file.
coordDir = await mkdtemp(join(tmpdir(), 'pgaccord-coord-'));
cleanup.push(coordDir);
pg1 = await throwawayPg();
pg2 = await throwawayPg();
for (const n of ['node-1', 'node-2']) {
  stateDirs[n] = await mkdtemp(join(tmpdir(), `pgaccord-agent-${n}-`));
  cleanup.push(stateDirs[n]!);
}
coord = await startCoord();
coordPort = coord.port;

after(async () => {
  await Promise.all(Object.values(agents).map((a) => a.stop('SIGKILL')));
  await coord?.close().catch(() => undefined);
  for (const d of cleanup) await rm(d, { recursive: true, force: true });
});

test('enrol with a join token and converge scram-sha-256 with verify-full; the coordinator shows it', async () => {
  const put = await coord.service.putCluster('sales', specFor('scram-sha-256'));
  for (const n of ['node-1', 'node-2']) tokens[n] = (await coord.service.createToken('sales', n)).token;
  agents['node-1'] = startAgent(agentArgs('node-1', pg1, tokens['node-1']));
  agents['node-2'] = startAgent(agentArgs('node-2', pg2, tokens['node-2']));
  const s = await converged(put.generation);
  const n1 = s.nodes.find((n) => n.node === 'node-1')!;
  const n2 = s.nodes.find((n) => n.node === 'node-2')!;
  assert.equal(n1.enrolled && n2.enrolled, true);
  assert.equal(n1.stale, false);
  // The primary serves the certificate the agent installed, and node-2 really connected over TLS.
  assert.ok(n1.servedCertificate, 'primary reports its served certificate');
  assert.ok(n1.certificates.some((c) => c.id === 'server' && c.serial === n1.servedCertificate!.serial));
  assert.equal(n2.probes.length, 1);
  assert.equal(n2.probes[0]!.to, 'node-1');
  assert.match(n2.probes[0]!.tlsVersion ?? '', /^TLSv1\.[23]$/);
  assert.ok(n2.probes[0]!.cipher);
  assert.doesNotMatch(n2.probes[0]!.conninfo, /password/);
  // Keys on the node, 0600 and owned by the PGDATA owner; the last good state 0600.
  for (const [node, dir] of Object.entries(stateDirs)) {
    const desired = JSON.parse(await readFile(join(dir, 'desired.json'), 'utf8')) as NodeDesired;
    assert.equal(desired.generation, put.generation);
    assert.equal((await stat(join(dir, 'desired.json'))).mode & 0o777, 0o600);
    const st = await stat(join(dir, 'tls', `server-${(await localStatus(node)).status.certificates.find((c) => c.id === 'server')!.serial}.key`));
    assert.equal(st.mode & 0o777, 0o600);
    assert.equal(st.uid, pg1.osUser.uid);
  }
  // Versions reported.
  const local = await localStatus('node-1');
  assert.equal(local.reported, true);
  assert.match(local.status.versions.postgres, /^15\./);
  assert.equal(local.status.versions.agent, '0.1.0');
  // The readiness line, and no secret in any log line.
  assert.ok(agents['node-1']!.records().some((r) => r.msg === 'agent ready: first reconcile succeeded'));
  const passwords = (JSON.parse(await readFile(join(stateDirs['node-2']!, 'desired.json'), 'utf8')) as NodeDesired).clientSecrets.map((c) => c.password);
  assert.ok(passwords.length > 0);
  for (const a of Object.values(agents)) {
    const text = a.lines.join('\n');
    for (const secret of [...passwords, ...Object.values(tokens), 'PRIVATE KEY']) assert.ok(!text.includes(secret), 'no secret in the agent log');
  }
});

test('change to cert auth: client certificates made on the node, converged and probed', async () => {
  const put = await coord.service.putCluster('sales', specFor('cert'));
  const s = await converged(put.generation);
  const n2 = s.nodes.find((n) => n.node === 'node-2')!;
  assert.ok(n2.certificates.some((c) => c.id === 'client-replicator'), 'node-2 holds its client certificate');
  assert.equal(n2.probes[0]!.ok, true);
  assert.match(n2.probes[0]!.conninfo, /sslcert=/);
  // pg_ctl restart succeeds after the apply (the files on disk are valid for a fresh start).
  await pg1.restart();
  const rules = await query(pg1, 'SELECT count(*)::int AS n FROM pg_hba_file_rules WHERE error IS NOT NULL');
  assert.equal(rules[0]!.n, 0);
});

test('status --wait passes on reports sent after it began, never on the ones before', async () => {
  const before = await clusterStatus();
  assert.ok(before.converged && before.nodes.every((n) => n.reportedAt !== null));
  const { execFile } = await import('node:child_process');
  const { promisify } = await import('node:util');
  const cli = join(import.meta.dirname, '..', '..', 'bin', 'pgaccord.mjs');
  const run = (timeout: string) => promisify(execFile)(process.execPath, [cli, 'status', 'sales', '--wait', '--json', '--timeout', timeout, '--coordinator', coord.url, '--data-dir', coordDir]);
  // node-2's agent frozen: the cluster still looks converged (not stale yet), but no new report comes.
  agents['node-2']!.proc.kill('SIGSTOP');
  try {
    // Either refusal names the frozen node: no new report, or (once the wait outlasts the stale
    // threshold, as on a loaded machine) named as stale or behind.
    await assert.rejects(run('3'), (e: { code: number; stderr: string }) => e.code === 1 && /no report since the wait began from sales\/node-2 |not converged after 3s: .*sales\/node-2 \(/.test(e.stderr));
  } finally {
    agents['node-2']!.proc.kill('SIGCONT');
  }
  const r = await run('60');
  const out = JSON.parse(r.stdout) as Awaited<ReturnType<typeof clusterStatus>>;
  assert.equal(out.converged, true);
  for (const n of out.nodes) {
    const was = before.nodes.find((x) => x.node === n.node)!.reportedAt!;
    assert.ok(Date.parse(n.reportedAt!) > Date.parse(was), `${n.node}: reported at ${n.reportedAt}, after ${was}`);
  }
});

test('restarted after the token is spent: the stored identity carries on; the spent token enrols nobody', async () => {
  const a = agents['node-1']!;
  const t0 = Date.now();
  assert.equal(await a.stop('SIGTERM'), 0, 'SIGTERM exits 0');
  assert.ok(Date.now() - t0 < 15_000, 'and promptly');
  assert.ok(a.records().some((r) => r.msg === 'agent stopped'));
  // The same settings, spent token included, now from a YAML config file (as the systemd unit
  // runs it; camelCase and kebab-case keys both work).
  const configFile = join(stateDirs['node-1']!, '..', `pgaccord-agent-test-${process.pid}.yaml`);
  cleanup.push(configFile);
  const yaml = (level: string) => `coordinator: ${coord.url}\nnode: sales/node-1\npgdata: ${pg1.dataDir}\nstateDir: ${stateDirs['node-1']}\njoin-token: ${tokens['node-1']}\nlogLevel: ${level}\n`;
  // 0640 root:postgres, as the systemd unit has it: the agent started as root reads it before it
  // drops to the PGDATA owner, and again on SIGHUP as that owner.
  await writeFile(configFile, yaml('info'), { mode: 0o640 });
  await chown(configFile, 0, pg1.osUser.gid);
  const again = startAgent(['--config', configFile]);
  agents['node-1'] = again;
  await waitFor('the restarted agent to be ready', () => again.records().some((r) => r.msg === 'agent ready: first reconcile succeeded'), 60_000);
  assert.ok(again.records().some((r) => r.msg === 'already enrolled: using the stored identity, the join token is not needed any more'));
  assert.ok(!again.records().some((r) => r.msg === 'enrolling with the join token'));
  assert.ok(!again.records().some((r) => r.level === 20), 'no debug lines at info');
  // SIGHUP re-reads the file: debug logging starts without a restart.
  await writeFile(configFile, yaml('debug'));
  again.proc.kill('SIGHUP');
  await waitFor('SIGHUP re-read', () => again.records().some((r) => r.msg === 'SIGHUP: configuration re-read' && r.logLevel === 'debug'), 10_000, 100);
  await waitFor('debug lines after SIGHUP', () => again.records().some((r) => r.level === 20), 15_000, 200);
  assert.equal(again.proc.exitCode, null, 'still running');
  const before = (await clusterStatus()).nodes.find((n) => n.node === 'node-1')!.lastContact!;
  await waitFor('a new status report from node-1', async () => (await clusterStatus()).nodes.find((n) => n.node === 'node-1')!.lastContact! > before, 20_000);
  // The spent token does not enrol a second agent.
  const fresh = await mkdtemp(join(tmpdir(), 'pgaccord-agent-spent-'));
  cleanup.push(fresh);
  const thief = startAgent(['--coordinator', coord.url, '--node', 'sales/node-1', '--pgdata', pg1.dataDir, '--state-dir', fresh, '--join-token', tokens['node-1']!]);
  assert.equal(await thief.exited, 1);
  assert.match(thief.lines.join('\n'), /pgaccord agent: POST \/v1\/agent\/enroll: /);
});

test('drift: a hand edit of the managed block is seen and repaired within seconds, and reported', async () => {
  const hbaFile = (await query<{ hba_file: string }>(pg1, 'SHOW hba_file'))[0]!.hba_file;
  const good = await readFile(hbaFile, 'utf8');
  const { chmod } = await import('node:fs/promises');
  const seen = agents['node-1']!.lines.length;
  // Inside the managed block: a broad trust rule slipped in by hand.
  await writeFile(hbaFile, good.replace(/(# BEGIN pgaccord[^\n]*\n)/, '$1host all all 0.0.0.0/0 trust\n'));
  await chmod(hbaFile, 0o644);
  await waitFor('pg_hba.conf repaired', async () => (await readFile(hbaFile, 'utf8')) === good && ((await stat(hbaFile)).mode & 0o777) === 0o600, 20_000, 200);
  // The file and the log line travel separately (a file, a pipe): wait for the line too.
  await waitFor('the drift log line', () => agents['node-1']!.records().some((r) => r.msg === 'drift in a managed file: repairing' && r.path === hbaFile), 10_000, 100);
  assert.ok(agents['node-1']!.lines.length > seen);
  const trust = await query(pg1, "SELECT 1 FROM pg_hba_file_rules WHERE auth_method = 'trust' AND type = 'host'");
  assert.equal(trust.length, 0);
});

test('coordinator stopped: the node keeps serving, status goes stale; it converges when the coordinator returns', async () => {
  const hbaBefore = await readFile((await query<{ hba_file: string }>(pg1, 'SHOW hba_file'))[0]!.hba_file, 'utf8');
  const probeConninfo = (await localStatus('node-2')).status.probes[0]!.conninfo;
  await coord.close();
  await waitFor('node-2 to report stale locally', async () => (await localStatus('node-2')).status.phase === 'stale', 60_000);
  // The status file and the log line travel separately (a file, a pipe): wait for each.
  const stale = await waitFor('node-1 to report stale locally, naming the unreachable coordinator', async () => {
    const local = await localStatus('node-1');
    return local.status.phase === 'stale' && local.status.errors.some((e) => e.code === 'E_COORDINATOR_UNREACHABLE') ? local : null;
  }, 60_000);
  assert.equal(stale.reported, false);
  assert.equal(stale.status.coordinatorReachable, false);
  await waitFor('the stale log line', () => agents['node-1']!.records().some((r) => r.msg === 'coordinator unreachable: serving the last good state (stale)'), 10_000);
  // The node keeps serving: nothing was wiped, and node-2's client still gets in with its certificate.
  assert.equal(await readFile((await query<{ hba_file: string }>(pg1, 'SHOW hba_file'))[0]!.hba_file, 'utf8'), hbaBefore);
  const psql = spawnSync('psql', [probeConninfo, '-X', '-A', '-t', '-c', 'IDENTIFY_SYSTEM'], { uid: pg1.osUser.uid, gid: pg1.osUser.gid, env: { PATH: process.env.PATH, HOME: pg1.osUser.home, PGCONNECT_TIMEOUT: '5' }, encoding: 'utf8' });
  assert.equal(psql.status, 0, psql.stderr);
  // Retries back off (capped exponential with jitter) rather than hammering.
  const retryDelays = () => agents['node-1']!.records().filter((r) => r.msg === 'retrying the coordinator after a delay').map((r) => r.retryInMs as number);
  const retries = await waitFor('two logged retries', () => { const d = retryDelays(); return d.length >= 2 ? d : null; }, 60_000);
  assert.ok(retries.at(-1)! > retries[0]!, 'delays grow');

  // Back on the same address; a change made now reaches both nodes.
  coord = await startCoord(coordPort);
  const put = await coord.service.putCluster('sales', specFor('cert', ['app_reader']));
  const s = await converged(put.generation, 120_000);
  for (const n of s.nodes) {
    assert.equal(n.stale, false);
    assert.deepEqual(n.errors, []);
  }
  assert.equal((await localStatus('node-1')).status.phase, 'converged');
  assert.ok(agents['node-1']!.records().some((r) => r.msg === 'coordinator reachable again'));
  assert.equal((await query(pg1, "SELECT 1 FROM pg_roles WHERE rolname = 'app_reader'")).length, 1);
});
