// The agent started as root (issue 14, High 1 and 2), a real `pgaccord agent` process against a
// real coordinator and PostgreSQL 15: it drops to the PGDATA owner before it touches any path,
// so what the `postgres` OS user plants in the state directory or in PGDATA (a symlink to a
// root-only directory or file) reaches nothing of root's. Each victim is shown unchanged.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { startCoordinator, type RunningCoordinator } from '../../coordinator/main.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import type { AgentStatus } from '../../shared/contract/status.ts';
import type { PgInstance } from '../../shared/system/pgserver.ts';
import { throwawayPg } from '../helpers/pg.ts';
import { startAgent, waitFor, type AgentProcess } from '../helpers/agent-process.ts';

if (process.getuid?.() !== 0) throw new Error('these tests start the agent as root: run them as root');

const cleanup: string[] = [];
const coordDir = await mkdtemp(join(tmpdir(), 'pgaccord-coord-root-'));
cleanup.push(coordDir);
const pg: PgInstance = await throwawayPg();
// Root-made, as an operator (or mkdtemp) makes it: the agent hands it to the PGDATA owner.
const stateDir = await mkdtemp(join(tmpdir(), 'pgaccord-agent-root-'));
cleanup.push(stateDir);
const coordLog = join(coordDir, 'coordinator.log');
const coord: RunningCoordinator = await startCoordinator({ dataDir: coordDir, listen: '127.0.0.1:0', longPollMs: 2000, logLevel: 'info', logDestination: pino.destination({ dest: coordLog, sync: true }) });
const spec: ClusterSpec = { name: 'rootcase', profile: 'streaming', auth: 'scram-sha-256', tls: { sslmode: 'verify-full', certLifetime: '1d' }, nodes: [{ name: 'node-1', host: '127.0.0.1', port: pg.port, kind: 'primary' }] };
await coord.service.putCluster('rootcase', spec);
const token = (await coord.service.createToken('rootcase', 'node-1')).token;
let agent: AgentProcess | null = null;

after(async () => {
  await agent?.stop('SIGKILL');
  await coord.close().catch(() => undefined);
  for (const d of cleanup) await rm(d, { recursive: true, force: true });
});

const args = (withToken: boolean) => ['--coordinator', coord.url, '--node', 'rootcase/node-1', '--pgdata', pg.dataDir, '--state-dir', stateDir, ...(withToken ? ['--join-token', token] : [])];

/** A shell command as the PGDATA owner: what the `postgres` OS user can do on its own. */
function asPostgres(script: string): void {
  const r = spawnSync('sh', ['-c', script], { uid: pg.osUser.uid, gid: pg.osUser.gid, cwd: '/', encoding: 'utf8' });
  assert.equal(r.status, 0, `as postgres: ${script}: ${r.stderr}`);
}

const localStatus = async () => JSON.parse(await readFile(join(stateDir, 'status.json'), 'utf8')) as { at: string; status: AgentStatus };

/**
 * Start the agent as root, wait until it has finished a pass (its status written, or a failed
 * apply logged: those are retried fast before the status is written), stop it. The errors are
 * the status's and every logged error list.
 */
async function runOnePass(withToken = false): Promise<{ status: AgentStatus | null; errors: { code: string; message: string }[]; lines: string[] }> {
  const t0 = new Date().toISOString();
  agent = startAgent(args(withToken));
  const a = agent;
  const fresh = async () => {
    const s = await localStatus().catch(() => null);
    return s && s.at > t0 && s.status.generation > 0 ? s.status : null;
  };
  await waitFor('a reconcile pass after the start', async () => {
    if (a.proc.exitCode !== null) throw new Error(`agent exited ${a.proc.exitCode}: ${a.lines.slice(-10).join('\n')}`);
    return (await fresh()) !== null || a.records().some((r) => r.msg === 'apply did not converge');
  }, 60_000).catch((e: Error) => {
    throw new Error(`${e.message}\n${a.lines.slice(-8).join('\n')}`);
  });
  await a.stop('SIGTERM');
  agent = null;
  const status = await fresh();
  const logged = a.records().flatMap((r) => (Array.isArray(r.errors) ? (r.errors as { code: string; message: string }[]) : []));
  return { status, errors: [...(status?.errors ?? []), ...logged], lines: a.lines };
}

interface Seen { uid: number; gid: number; mode: number; entries: Record<string, string> }
async function seeDir(dir: string): Promise<Seen> {
  const st = await stat(dir);
  const entries: Record<string, string> = {};
  for (const name of (await readdir(dir)).sort()) {
    const s = await stat(join(dir, name));
    entries[name] = `${s.uid}:${s.gid}:${(s.mode & 0o7777).toString(8)}:${(await readFile(join(dir, name))).toString('base64')}`;
  }
  return { uid: st.uid, gid: st.gid, mode: st.mode & 0o7777, entries };
}

test('started as root: drops to the PGDATA owner and converges; every state file is the owner\'s', async () => {
  const first = await runOnePass(true);
  assert.deepEqual(first.errors, [], first.lines.slice(-10).join('\n'));
  assert.equal(first.status?.phase, 'converged');
  assert.ok(first.lines.some((l) => l.includes('started as root: dropped to the uid/gid of the PGDATA owner')), 'says it dropped');
  const st = await stat(stateDir);
  assert.equal(st.uid, pg.osUser.uid);
  for (const name of await readdir(stateDir)) assert.equal((await stat(join(stateDir, name))).uid, pg.osUser.uid, `${name} is the PGDATA owner's`);
});

test('High 1: <state>/tls replaced by a symlink to a root-only directory: the directory is unchanged', async () => {
  const victim = await mkdtemp(join(tmpdir(), 'pgaccord-victim-dir-'));
  cleanup.push(victim);
  await writeFile(join(victim, 'keep.txt'), `root only ${randomBytes(8).toString('hex')}\n`, { mode: 0o600 });
  const before = await seeDir(victim);
  assert.equal(before.uid, 0);
  assert.equal(before.mode, 0o700);
  const tls = join(stateDir, 'tls');
  asPostgres(`mv '${tls}' '${tls}.real' && ln -s '${victim}' '${tls}'`);
  try {
    const pass = await runOnePass();
    assert.deepEqual(await seeDir(victim), before, 'victim directory: owner, mode and contents unchanged');
    assert.ok(pass.errors.some((e) => e.code === 'E_NOT_A_DIRECTORY' && e.message.includes(`${tls} is a symlink`)), `the agent reports the symlink: ${JSON.stringify(pass.errors)}`);
  } finally {
    asPostgres(`rm -f '${tls}' && mv '${tls}.real' '${tls}'`);
  }
});

test('High 2: $PGDATA/pg_hba.conf replaced by a symlink to a root-only file: unchanged, its text nowhere, a clear error', async () => {
  const victimDir = await mkdtemp(join(tmpdir(), 'pgaccord-victim-file-'));
  cleanup.push(victimDir);
  const { chmod } = await import('node:fs/promises');
  await chmod(victimDir, 0o755); // the file alone is root-only: realpath and lstat reach it, nothing else does
  const secret = `rootsecret${randomBytes(8).toString('hex')}`;
  const victim = join(victimDir, 'shadow.conf');
  const bytes = Buffer.from(`# comment\n${secret} all all 0.0.0.0/0 trust\n`);
  await writeFile(victim, bytes, { mode: 0o600 });
  const hba = join(pg.dataDir, 'pg_hba.conf');
  asPostgres(`mv '${hba}' '${hba}.real' && ln -s '${victim}' '${hba}'`);
  try {
    const pass = await runOnePass();
    const st = await stat(victim);
    assert.equal(st.uid, 0);
    assert.equal(st.gid, 0);
    assert.equal(st.mode & 0o7777, 0o600);
    assert.deepEqual(await readFile(victim), bytes, 'victim bytes unchanged');
    const remote = await coord.service.status('rootcase');
    for (const [where, text] of [['local status', JSON.stringify(await localStatus())], ['agent log', pass.lines.join('\n')], ['coordinator status', JSON.stringify(remote)], ['coordinator log', await readFile(coordLog, 'utf8')]]) {
      assert.ok(!text!.includes(secret), `the victim's contents appear nowhere: ${where}`);
    }
    const err = pass.errors.find((e) => e.code === 'E_SERVER_FILE');
    assert.ok(err, `E_SERVER_FILE reported: ${JSON.stringify(pass.errors)}`);
    assert.match(err.message, /pg_hba\.conf/);
  } finally {
    asPostgres(`rm -f '${hba}' && mv '${hba}.real' '${hba}'`);
  }
});

test('refused before anything is touched: PGDATA a symlink or root\'s (E_PGDATA), the state directory a symlink (E_STATE_DIR)', async () => {
  const scratch = await mkdtemp(join(tmpdir(), 'pgaccord-root-refuse-'));
  cleanup.push(scratch);
  const { symlink } = await import('node:fs/promises');
  const linkedPgdata = join(scratch, 'pgdata-link');
  await symlink(pg.dataDir, linkedPgdata);
  const rootDir = await mkdtemp(join(tmpdir(), 'pgaccord-root-pgdata-'));
  cleanup.push(rootDir);
  const linkedState = join(scratch, 'state-link');
  await symlink(stateDir, linkedState);
  const cases: [string[], RegExp][] = [
    [['--pgdata', linkedPgdata, '--state-dir', join(scratch, 's1')], /E_PGDATA: --pgdata \S+ is a symlink/],
    [['--pgdata', rootDir, '--state-dir', join(scratch, 's2')], /E_PGDATA: --pgdata \S+ is owned by root/],
    [['--pgdata', pg.dataDir, '--state-dir', linkedState], /E_STATE_DIR: --state-dir \S+ is a symlink/],
  ];
  for (const [extra, why] of cases) {
    const a = startAgent(['--coordinator', coord.url, '--node', 'rootcase/node-1', ...extra]);
    assert.equal(await a.exited, 1, a.lines.join('\n'));
    assert.match(a.lines.join('\n'), why);
  }
  assert.deepEqual((await readdir(scratch)).sort(), ['pgdata-link', 'state-link'], 'no state directory made');
});

test('which directories root trusts on a path (pure)', async () => {
  const { untrustedDir, ancestors } = await import('../../agent/apply/privileges.ts');
  assert.deepEqual(ancestors('/var/lib/postgresql/15/main'), ['/', '/var', '/var/lib', '/var/lib/postgresql', '/var/lib/postgresql/15']);
  assert.equal(untrustedDir('/tmp', { uid: 0, mode: 0o41777 }, 101), null, 'sticky /tmp');
  assert.equal(untrustedDir('/var/lib/postgresql', { uid: 101, mode: 0o40755 }, 101), null, "the owner's own");
  assert.match(untrustedDir('/srv', { uid: 0, mode: 0o40775 }, 101) ?? '', /writable by its group/);
  assert.match(untrustedDir('/home/alice', { uid: 1000, mode: 0o40700 }, 101) ?? '', /owned by uid 1000/);
});
