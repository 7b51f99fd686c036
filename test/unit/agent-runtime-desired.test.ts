// The reconcile loop never lets a bad answer wipe or roll back a node: empty, garbled, foreign,
// older and shrunken desired states are refused; the last good state keeps being applied; an
// unreachable coordinator makes the node 'stale', not empty. Real files in a temp state dir; the
// coordinator and the apply engine are fakes here (the integration tests use the real ones).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { compileCluster } from '../../coordinator/cluster/compile.ts';
import type { ClusterSpec, NodeDesired } from '../../shared/contract/schema.ts';
import type { AgentStatus } from '../../shared/contract/status.ts';
import { ReconcileLoop } from '../../agent/runtime/loop.ts';
import { judgeDesired } from '../../agent/runtime/judge.ts';
import { loadLastGood, saveLastGood, desiredFile } from '../../agent/runtime/last-good.ts';
import type { CoordinatorApi } from '../../agent/runtime/loop-deps.ts';
import { CertificateManager } from '../../agent/runtime/certs.ts';
import { RenewalSchedule, seededRandom } from '../../agent/runtime/backoff.ts';
import { CoordinatorError } from '../../agent/runtime/client.ts';
import { statusFile } from '../../agent/runtime/status.ts';
import type { ApplyInput, ApplyResult, NodeContext } from '../../agent/apply/types.ts';

const spec: ClusterSpec = {
  name: 'sales',
  profile: 'streaming',
  auth: 'trust',
  tls: { sslmode: 'disable' },
  nodes: [
    { name: 'node-1', host: '10.0.0.1', kind: 'primary' },
    { name: 'node-2', host: '10.0.0.2', kind: 'standby' },
  ],
};
const desiredAt = (generation: number, patch: Partial<ClusterSpec> = {}): NodeDesired =>
  compileCluster({ spec: { ...spec, ...patch }, generation, credentials: {}, caBundle: '', crl: null }).get('node-1')!;
const expect = { cluster: 'sales', node: 'node-1' };

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

test('judge: accepts a newer valid state; refuses empty, garbled, foreign, older and shrunken ones', () => {
  const g1 = desiredAt(1);
  assert.ok(g1.hba.length > 0 && g1.roles.length > 0, 'fixture has rules and roles');
  assert.equal(judgeDesired(g1, null, expect).ok, true);
  assert.equal(judgeDesired(desiredAt(2), g1, expect).ok, true);
  const refused = (answer: unknown, last: NodeDesired | null, code: string) => {
    const j = judgeDesired(answer, last, expect);
    assert.equal(j.ok, false, `expected refusal ${code}`);
    if (!j.ok) {
      assert.equal(j.error.code, code);
      assert.match(j.error.message, /keeping the last good state/);
    }
  };
  refused(null, g1, 'E_DESIRED_EMPTY');
  refused('', g1, 'E_DESIRED_EMPTY');
  refused({}, g1, 'E_DESIRED_EMPTY');
  refused({ ...desiredAt(2), hba: 'lol' }, g1, 'E_DESIRED_GARBLED');
  refused({ ...desiredAt(2), extra: true }, g1, 'E_DESIRED_GARBLED');
  refused([desiredAt(2)], g1, 'E_DESIRED_GARBLED');
  refused('<html>502 Bad Gateway</html>', g1, 'E_DESIRED_GARBLED');
  refused({ ...desiredAt(2), node: 'node-2' }, g1, 'E_DESIRED_FOREIGN');
  refused(desiredAt(1), g1, 'E_DESIRED_OLDER');
  refused(desiredAt(3), desiredAt(5), 'E_DESIRED_OLDER');
  refused({ ...desiredAt(2), hba: [] }, g1, 'E_DESIRED_SHRUNK');
  // The last standby removed: the primary is alone, and no rules is right.
  const alone = desiredAt(2, { nodes: [spec.nodes[0]!] });
  assert.deepEqual([alone.hba, alone.alone], [[], true]);
  assert.equal(judgeDesired(alone, g1, expect).ok, true, 'no rules accepted once the node is alone');
  assert.equal('alone' in g1, false, 'only sent when alone: agents that predate the field refuse unknown fields');
  refused({ ...desiredAt(2), roles: [] }, g1, 'E_DESIRED_SHRUNK');
  refused({ ...desiredAt(2), tls: true, caBundle: '' }, g1, 'E_DESIRED_SHRUNK');
  const scramEdge = { ...desiredAt(2), edges: [{ ...g1.edges[0] ?? { to: 'node-1', role: 'replicator', host: 'h', port: 5432, dbname: 'postgres', replication: true, sslmode: 'disable' as const, clientCertificate: null }, usesPassfile: true }], clientSecrets: [] };
  refused(scramEdge, g1, 'E_DESIRED_SHRUNK');
});

test('last good state: saved atomically 0600, reloaded, a corrupt file is ignored and reported', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'pgaccord-agent-unit-'));
  dirs.push(dir);
  assert.deepEqual(await loadLastGood(dir, expect), { desired: null, error: null });
  await saveLastGood(dir, desiredAt(4));
  assert.equal((await stat(desiredFile(dir))).mode & 0o777, 0o600);
  assert.equal((await loadLastGood(dir, expect)).desired?.generation, 4);
  await writeFile(desiredFile(dir), '{"apiVersion":1,');
  const broken = await loadLastGood(dir, expect);
  assert.equal(broken.desired, null);
  assert.equal(broken.error?.code, 'E_STATE_CORRUPT');
});

type Answer = Awaited<ReturnType<CoordinatorApi['desired']>> | Error;

function harness(stateDir: string, answers: Answer[]) {
  const applied: ApplyInput[] = [];
  const reported: AgentStatus[] = [];
  const afters: number[] = [];
  let loop: ReconcileLoop;
  const client: CoordinatorApi = {
    async desired(after) {
      afters.push(after);
      const next = answers.shift();
      if (next === undefined) {
        loop.stop();
        return { kind: 'unchanged' };
      }
      if (next instanceof Error) throw next;
      return next;
    },
    async status(s) {
      reported.push(s);
    },
  };
  const log = pino({ level: 'silent' });
  const ctx = { stateDir, log } as unknown as NodeContext;
  const apply = async (_ctx: NodeContext, input: ApplyInput): Promise<ApplyResult> => {
    applied.push(input);
    return { phase: 'converged', changed: applied.length === 1, errors: [], files: [], pendingRestart: [], servedCertificate: null, clientConnections: [] };
  };
  const certs = new CertificateManager({ stateDir, owner: { uid: process.getuid!(), gid: process.getgid!() }, requestCertificate: async () => assert.fail('no certificate expected'), now: Date.now, schedule: new RenewalSchedule(seededRandom(1)), log });
  loop = new ReconcileLoop({
    ctx, cluster: 'sales', node: 'node-1', client, apply, certs, probe: { osUser: { name: 'x', uid: 0, gid: 0, home: '/' } },
    now: Date.now, random: seededRandom(3), backoff: { baseMs: 1, capMs: 4 }, minCycleMs: 1, resyncMs: 60_000, log,
    postgresVersion: async () => '15.18',
  });
  return { loop, applied, reported, afters };
}

test('loop: bad answers after a good one change nothing on disk and keep applying the last good state', async () => {
  const stateDir = await mkdtemp(join(tmpdir(), 'pgaccord-agent-unit-'));
  dirs.push(stateDir);
  const g1 = desiredAt(1);
  const h = harness(stateDir, [
    { kind: 'newer', body: g1 },
    { kind: 'newer', body: {} },
    { kind: 'newer', body: '<<garbled>>' },
    { kind: 'newer', body: { ...desiredAt(2), hba: [] } },
    { kind: 'newer', body: desiredAt(1) },
  ]);
  let savedAfterFirst = '';
  const exit = await h.loop.run();
  savedAfterFirst = await readFile(desiredFile(stateDir), 'utf8');
  assert.equal(exit, 'stopped');
  assert.deepEqual(JSON.parse(savedAfterFirst), g1, 'the saved state is still generation 1, byte for byte');
  assert.ok(h.applied.length >= 5);
  for (const a of h.applied) assert.deepEqual(a.desired, g1, 'only the last good state is ever applied');
  assert.deepEqual(h.afters.slice(1), Array(h.afters.length - 1).fill(1), 'every later poll asks for newer than generation 1');
  const codes = h.reported.map((s) => s.errors.map((e) => e.code).join(','));
  for (const c of ['E_DESIRED_EMPTY', 'E_DESIRED_GARBLED', 'E_DESIRED_SHRUNK', 'E_DESIRED_OLDER']) assert.ok(codes.some((x) => x.includes(c)), `status reported ${c}`);
  for (const s of h.reported) assert.equal(s.generation, 1);
});

test('loop: coordinator unreachable → keeps reconciling the last good state locally, status stale; restart starts from disk', async () => {
  const stateDir = await mkdtemp(join(tmpdir(), 'pgaccord-agent-unit-'));
  dirs.push(stateDir);
  const g1 = desiredAt(1);
  const first = harness(stateDir, [{ kind: 'newer', body: g1 }]);
  await first.loop.run();
  const down = () => new CoordinatorError('E_UNREACHABLE', 'GET /v1/agent/desired?after=1: ECONNREFUSED');
  const second = harness(stateDir, [down(), down(), down()]);
  await second.loop.run();
  // Started from disk before any answer, then reconciled locally after every failed poll.
  assert.ok(second.applied.length >= 4, `applied ${second.applied.length} times`);
  for (const a of second.applied) assert.deepEqual(a.desired, g1);
  // Only the start-up reconcile (before the first poll) could report; nothing after the outage was seen.
  assert.equal(second.reported.length, 1);
  assert.equal(second.loop.lastStatus?.phase, 'stale');
  assert.equal(second.loop.lastStatus?.coordinatorReachable, false);
  assert.equal(second.loop.lastStatus?.generation, 1);
  assert.ok(second.loop.lastStatus?.errors.some((e) => e.code === 'E_COORDINATOR_UNREACHABLE' && /ECONNREFUSED/.test(e.message)));
  const local = JSON.parse(await readFile(statusFile(stateDir), 'utf8')) as { status: AgentStatus; reported: boolean };
  assert.equal(local.status.phase, 'stale');
  assert.equal(local.reported, false);
  assert.deepEqual(JSON.parse(await readFile(desiredFile(stateDir), 'utf8')), g1, 'the last good state survives the outage');
  // The coordinator returns: the next cycle reports converged again.
  const third = harness(stateDir, [{ kind: 'unchanged' }]);
  await third.loop.run();
  const last = third.reported.at(-1)!;
  assert.equal(last.phase, 'converged');
  assert.equal(last.coordinatorReachable, true);
  assert.deepEqual(last.errors, []);
});

test('loop: 410 (node removed) stops the loop and leaves the node as it is', async () => {
  const stateDir = await mkdtemp(join(tmpdir(), 'pgaccord-agent-unit-'));
  dirs.push(stateDir);
  const g1 = desiredAt(1);
  const h = harness(stateDir, [{ kind: 'newer', body: g1 }, { kind: 'removed' }, { kind: 'newer', body: desiredAt(2) }]);
  assert.equal(await h.loop.run(), 'removed');
  assert.deepEqual(JSON.parse(await readFile(desiredFile(stateDir), 'utf8')), g1);
  assert.ok(h.applied.every((a) => a.desired.generation === 1));
});
