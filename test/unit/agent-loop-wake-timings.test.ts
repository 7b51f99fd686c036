// The reconcile loop's peer wakes and phase timings, with a scripted coordinator and a stand-in
// psql (a script that connects when a flag file exists): a peer wake (202 from the long-poll)
// re-probes the failing edges to the peers it names, at once and without applying, while the probe
// safety timer is far away; and the status carries the phases of the pass that applied the
// generation, adding up to its total, with the report's own post in the next report; refused reports.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { compileCluster } from '../../coordinator/cluster/compile.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import type { AgentStatus } from '../../shared/contract/status.ts';
import { ReconcileLoop } from '../../agent/runtime/loop.ts';
import { PeerWatch, peersToReprobe, probeReason } from '../../agent/runtime/judge.ts';
import type { CoordinatorApi } from '../../agent/runtime/loop-deps.ts';
import { PhaseClock } from '../../agent/apply/apply.ts';
import { waitFor } from '../helpers/wait.ts';
import { writeStandInPsql } from '../helpers/stand-in-psql.ts';
import { applyTime } from '../../coordinator/cluster/lifecycle.ts';
import { CertificateManager } from '../../agent/runtime/certs.ts';
import { CoordinatorError } from '../../agent/runtime/client.ts';
import { RenewalSchedule, seededRandom } from '../../agent/runtime/backoff.ts';
import type { ApplyInput, ApplyResult, NodeContext } from '../../agent/apply/types.ts';

const spec: ClusterSpec = {
  name: 'mesh',
  profile: 'pgd',
  auth: 'trust',
  tls: { sslmode: 'disable' },
  nodes: [
    { name: 'node-1', host: '10.0.0.1', kind: 'peer' },
    { name: 'node-2', host: '10.0.0.2', kind: 'peer' },
    { name: 'node-3', host: '10.0.0.3', kind: 'peer' },
  ],
};
const g1 = compileCluster({ spec, generation: 1, credentials: {}, caBundle: '', crl: null }).get('node-1')!;

const dirs: string[] = [];
after(async () => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Answer = Awaited<ReturnType<CoordinatorApi['desired']>>;

/** A loop whose apply takes measurable phases and whose edges go to node-2 and node-3. */
async function harness(script: (call: { after: number; peers: number | undefined; n: number }) => Promise<Answer | null>, opts: { reprobeMs?: number; edges?: string[]; now?: () => number; refuseReports?: number; refuseStatus?: number } = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'pgaccord-loop-wake-'));
  dirs.push(dir);
  // The stand-in psql: connects to a node once its flag file exists, noting each host it is asked for.
  const psql = await writeStandInPsql(dir, { upFlags: true });
  const reported: AgentStatus[] = [];
  const calls: { after: number; peers: number | undefined }[] = [];
  let applies = 0;
  let versions = 0;
  let refused = 0;
  let loop: ReconcileLoop;
  const client: CoordinatorApi = {
    async desired(after, _signal, _wait, peers) {
      calls.push({ after, peers });
      const a = await script({ after, peers, n: calls.length });
      if (a === null) {
        loop.stop();
        return { kind: 'unchanged' };
      }
      return a;
    },
    async status(s) {
      await sleep(3);
      if (opts.refuseReports && opts.refuseReports > refused) {
        refused += 1;
        throw new CoordinatorError('E_HTTP', 'POST /v1/agent/status: refused', opts.refuseStatus ?? 429, { apiCode: opts.refuseStatus ? 'E_BAD_REQUEST' : 'E_RATE_LIMITED' });
      }
      reported.push(structuredClone(s));
    },
  };
  const log = pino({ level: 'silent' });
  const ctx = { stateDir: dir, log } as unknown as NodeContext;
  const apply = async (_ctx: NodeContext, _input: ApplyInput): Promise<ApplyResult> => {
    applies += 1;
    const clock = new PhaseClock();
    // 20 ms a phase: long beside what a loaded machine adds between the pass's own laps, so the
    // 80 % the phases must account for measures the agent's bookkeeping, not the scheduler.
    for (const phase of ['render', 'install', 'validate', 'reload', 'prove', 'finish']) {
      await sleep(20);
      clock.lap(phase);
    }
    return {
      phase: 'converged', changed: true, errors: [], files: [], pendingRestart: [], servedCertificate: null, phases: clock.phases,
      clientConnections: (opts.edges ?? ['node-2', 'node-3']).map((to) => ({ to, role: 'pgd_replication', conninfo: `host=${to} dbname=postgres`, replication: false })),
    };
  };
  const certs = new CertificateManager({ stateDir: dir, owner: { uid: process.getuid!(), gid: process.getgid!() }, requestCertificate: async () => assert.fail('no certificate expected'), now: Date.now, schedule: new RenewalSchedule(seededRandom(1)), log });
  const me = { name: 'me', uid: process.getuid!(), gid: process.getgid!(), home: dir };
  loop = new ReconcileLoop({
    ctx, cluster: 'mesh', node: 'node-1', client, apply, certs, probe: { osUser: me, psql },
    // The safety timer is out of the picture: only a wake can bring a re-probe in this test.
    reprobeMs: opts.reprobeMs ?? 600_000, now: opts.now ?? Date.now, random: seededRandom(3), minCycleMs: 1, resyncMs: 600_000, log,
    postgresVersion: async () => {
      versions += 1;
      return '15.18';
    },
  });
  const up = (node: string) => writeFile(join(dir, `up-${node}`), '');
  // The edges the stand-in psql was asked to connect, in order.
  const probed = async () => (existsSync(join(dir, 'probed')) ? (await readFile(join(dir, 'probed'), 'utf8')).split('\n').filter(Boolean) : []);
  return { loop, reported, calls, up, applies: () => applies, versions: () => versions, refusedCount: () => refused, dir, probed };
}

test('peer wake: the failing edges to the peers a 202 names are probed again at once, nothing re-applied, and the wakes stop once every probe passes', async () => {
  const h = await harness(async ({ n }) => {
    if (n === 1) return { kind: 'newer', body: g1 };
    if (n === 2) {
      // node-2 applies generation 1: its report wakes node-1.
      await h.up('node-2');
      return { kind: 'peers', body: { wake: 'peers-applied', applied: [{ node: 'node-2', generation: 1 }] } };
    }
    if (n === 3) {
      await h.up('node-3');
      return { kind: 'peers', body: { wake: 'peers-applied', applied: [{ node: 'node-2', generation: 1 }, { node: 'node-3', generation: 1 }] } };
    }
    return null;
  });
  assert.equal(await h.loop.run(), 'stopped');
  // 1st poll: no wakes asked (nothing applied); 2nd: none seen yet; 3rd: node-2 seen; 4th: every probe passes, none asked.
  assert.deepEqual(h.calls.map((c) => c.peers), [undefined, 0, 1, undefined]);
  assert.equal(h.applies(), 1, 'a wake applies nothing');
  // The apply probed nothing: no peer was known to hold generation 1 yet.
  assert.deepEqual(h.loop.probePasses, { apply: 0, retry: 0, 'peer-applied': 2 });
  const last = h.reported.at(-1)!;
  assert.deepEqual(last.probes.map((p) => [p.to, p.ok, p.reason]), [['node-2', true, 'peer-applied'], ['node-3', true, 'peer-applied']]);
  const first = h.reported[0]!;
  assert.deepEqual(first.probes.map((p) => [p.to, p.ok, p.reason]), [['node-2', false, 'awaiting-peer'], ['node-3', false, 'awaiting-peer']]);
  // The wake for node-2 probed node-2 only: node-3 still failed in that report.
  assert.deepEqual(h.reported[1]!.probes.map((p) => [p.to, p.ok]), [['node-2', true], ['node-3', false]]);
});

test('safety timer: a failed probe is probed again on the timer without applying, until it passes', async () => {
  let passed: () => void;
  const allPass = new Promise<void>((r) => (passed = r));
  const h = await harness(async ({ n }) => {
    if (n === 1) return { kind: 'newer', body: g1 };
    if (n === 2) {
      // No peer wake comes (an older coordinator, or one restarted): only the timer helps.
      await h.up('node-2');
      await h.up('node-3');
      await allPass;
      return { kind: 'unchanged' };
    }
    return null;
  }, { reprobeMs: 30 });
  const watching = setInterval(() => {
    if (h.reported.at(-1)?.probes.every((p) => p.ok)) passed();
  }, 10);
  await h.loop.run();
  clearInterval(watching);
  assert.equal(h.applies(), 2, 'one apply for the generation, one for the long-poll cycle: none for the retries');
  assert.ok(h.loop.probePasses.retry >= 1, JSON.stringify(h.loop.probePasses));
  const ok = h.reported.find((s) => s.probes.every((p) => p.ok))!;
  assert.deepEqual(ok.probes.map((p) => p.reason), ['retry', 'retry']);
});

test('peer wake: only failing edges to peers not seen before are probed again', () => {
  const seen = new Set(['node-2']);
  assert.deepEqual(peersToReprobe(['node-2'], seen, new Set(['node-2', 'node-3'])), { fresh: [], reprobe: new Set() }, 'nothing new: nothing probed');
  assert.deepEqual(peersToReprobe(['node-2', 'node-3', 'node-4'], seen, new Set(['node-3'])), { fresh: ['node-3', 'node-4'], reprobe: new Set(['node-3']) });
  assert.deepEqual(peersToReprobe(['node-3'], new Set(), new Set()), { fresh: ['node-3'], reprobe: new Set() }, 'a passing edge is not probed again');
  assert.equal(probeReason('probing again after a failed probe'), 'retry');
  assert.equal(probeReason('generation 7'), 'apply');
});

test('phase timings: the status carries every phase of the pass that applied the generation, adding up to its total; the report phase follows in the next report', async () => {
  const h = await harness(async ({ n }) => {
    if (n === 1) {
      await h.up('node-2');
      await h.up('node-3');
      return { kind: 'newer', body: g1 };
    }
    return n <= 3 ? { kind: 'unchanged' } : null;
  });
  await h.loop.run();
  const first = h.reported[0]!;
  assert.ok(first.timings, 'timings reported');
  const t = first.timings;
  assert.equal(t.generation, 1);
  assert.ok(!Number.isNaN(Date.parse(t.startedAt)));
  for (const phase of ['certs', 'render', 'install', 'validate', 'reload', 'prove', 'finish', 'probe']) assert.equal(typeof t.phases[phase], 'number', `phase ${phase}`);
  for (const phase of ['render', 'install', 'validate', 'reload', 'prove', 'finish']) assert.ok(t.phases[phase]! >= 19, `${phase} ${t.phases[phase]} ms: the apply's own 20 ms`);
  assert.equal(t.phases.report, undefined, 'the post that carries the pass cannot carry its own length');
  const sum = Object.values(t.phases).reduce((a, b) => a + b, 0);
  assert.ok(sum <= t.totalMs + 0.5, `phases ${sum} ms <= total ${t.totalMs} ms`);
  assert.ok(sum >= 0.8 * t.totalMs, `phases ${sum} ms account for the total ${t.totalMs} ms`);
  const next = h.reported[1]!;
  assert.equal(next.timings?.generation, 1, 'later reports keep the timings of the pass that applied the generation');
  assert.ok(next.timings!.phases.report! >= 2, `report ${next.timings!.phases.report} ms (the post takes 3 ms here)`);
  assert.equal(next.timings!.totalMs, t.totalMs);
  assert.ok(existsSync(join(h.dir, 'status.json')));
});

test('PhaseClock: each lap charges the time since the previous one; a phase run twice adds up', async () => {
  const c = new PhaseClock();
  await sleep(5);
  c.lap('render');
  await sleep(5);
  c.lap('install');
  await sleep(5);
  c.lap('render');
  assert.ok(c.phases.render! >= 8 && c.phases.install! >= 4, JSON.stringify(c.phases));
  assert.deepEqual(Object.keys(c.phases), ['render', 'install']);
});

test('status output: each node\'s apply time and its slowest phase; none before an agent reports timings', () => {
  const t = { generation: 4, startedAt: new Date().toISOString(), phases: { certs: 1, render: 12, install: 20, validate: 30, reload: 4, prove: 210.4, finish: 9, probe: 120, report: 25 }, totalMs: 412.2 };
  assert.equal(applyTime({ timings: t }), '412ms (prove 210)');
  assert.equal(applyTime({}), '-');
});

test('probes run the newest versioned psql directly when PATH has Debian\'s pg_wrapper (no Perl start per probe), any other psql as it is', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'pgaccord-psql-'));
  dirs.push(dir);
  const { mkdir, symlink } = await import('node:fs/promises');
  const { resolvePsql } = await import('../../agent/probe/probes.ts');
  const root = join(dir, 'lib');
  for (const v of ['13', '15', '9.6']) {
    await mkdir(join(root, v, 'bin'), { recursive: true });
    await writeFile(join(root, v, 'bin', 'psql'), '');
  }
  await mkdir(join(dir, 'common'));
  await writeFile(join(dir, 'common', 'pg_wrapper'), '');
  await mkdir(join(dir, 'wrapped'));
  await symlink(join(dir, 'common', 'pg_wrapper'), join(dir, 'wrapped', 'psql'));
  await mkdir(join(dir, 'plain'));
  await writeFile(join(dir, 'plain', 'psql'), '');
  assert.equal(resolvePsql(`${join(dir, 'empty')}:${join(dir, 'wrapped')}`, root), join(root, '15', 'bin', 'psql'));
  assert.equal(resolvePsql(`${join(dir, 'plain')}:${join(dir, 'wrapped')}`, root), join(dir, 'plain', 'psql'));
  assert.equal(resolvePsql(join(dir, 'wrapped'), join(dir, 'nothing')), join(dir, 'wrapped', 'psql'), 'no versioned client: the wrapper chooses');
  assert.equal(resolvePsql(join(dir, 'empty'), root), 'psql');
});

test('--probe-retry: the safety timer, 2 s by default; a value that is not a number of seconds is refused naming the option', async () => {
  const { resolveConfig } = await import('../../agent/config.ts');
  const base = { coordinator: 'https://c', node: 'a/b', pgdata: await mkdtemp(join(tmpdir(), 'pgaccord-pgdata-')) };
  dirs.push(base.pgdata);
  assert.equal(resolveConfig({}, base).probeRetryMs, 2000);
  assert.equal(resolveConfig({ 'probe-retry': '0.5' }, base).probeRetryMs, 500);
  assert.equal(resolveConfig({}, { ...base, 'probe-retry': '120' }).probeRetryMs, 120_000, 'from the config file');
  for (const bad of ['0', 'soon', '-1', '99999']) assert.throws(() => resolveConfig({ 'probe-retry': bad }, base), /--probe-retry/);
});

test('peer wake: an edge whose peer is not seen at the generation is not probed by the apply, but once the peer is seen, and says against which generation', async () => {
  // One edge, to node-2, which answers from the start (still on its old configuration): a probe
  // by the apply would pass before node-2 applied and prove nothing.
  const h = await harness(async ({ n }) => {
    if (n === 1) {
      await h.up('node-2');
      return { kind: 'newer', body: g1 };
    }
    if (n === 2) return { kind: 'peers', body: { wake: 'peers-applied', applied: [{ node: 'node-2', generation: 1 }] } };
    return null;
  }, { edges: ['node-2'] });
  assert.equal(await h.loop.run(), 'stopped');
  // Wakes are asked while an edge's peer is not seen at the generation, passing or not.
  assert.deepEqual(h.calls.map((c) => c.peers), [undefined, 0, undefined]);
  assert.deepEqual(h.loop.probePasses, { apply: 0, retry: 0, 'peer-applied': 1 });
  assert.deepEqual(h.reported.map((s) => s.probes.map((p) => [p.to, p.ok, p.reason, p.peerGeneration])), [
    [['node-2', false, 'awaiting-peer', 0]],
    [['node-2', true, 'peer-applied', 1]],
  ], 'not probed before node-2 was seen, then probed against its generation 1');
  assert.deepEqual(await h.probed(), ['node-2'], 'one probe');
});

test('peer wake: the peers to probe again are the fresh ones whose edges were probed before they were seen', () => {
  // node-2's passing edge was probed before node-2 was seen: probed again.
  assert.deepEqual(peersToReprobe(['node-2'], new Set(), new Set(['node-2'])), { fresh: ['node-2'], reprobe: new Set(['node-2']) });
  const w = new PeerWatch();
  const edges = new Set(['node-2', 'node-3']);
  assert.equal(w.known(1, edges), 0, 'wakes are asked while an edge\'s peer is not seen, failing or not');
  assert.equal(w.generationOf(1, 'node-2'), 0);
  assert.deepEqual(w.wake(1, [{ node: 'node-2', generation: 1 }], edges).reprobe, new Set(['node-2']));
  assert.equal(w.generationOf(1, 'node-2'), 1);
  assert.equal(w.known(1, new Set(['node-3'])), 1);
  assert.equal(w.known(1, new Set()), undefined, 'every edge proved against its peer\'s generation: no wakes');
  assert.equal(w.generationOf(2, 'node-2'), 0, 'forgotten with a new generation');
});

test('an edge to the node itself (Patroni members probe every member) is proved by its own apply: no wake asked, not pending', async () => {
  const h = await harness(async ({ n }) => {
    if (n === 1) {
      await h.up('node-1');
      return { kind: 'newer', body: g1 };
    }
    return null;
  }, { edges: ['node-1'] });
  assert.equal(await h.loop.run(), 'stopped');
  assert.deepEqual(h.calls.map((c) => c.peers), [undefined, undefined], 'no peer wake waited for: the node is its own peer');
  assert.deepEqual(h.reported.map((s) => s.probes.map((p) => [p.to, p.ok, p.peerGeneration])), [[['node-1', true, 1]]]);
});

test('an apply probes no edge whose peer is not known to hold its generation: each edge is probed once, as its peer\'s wake arrives, wakes close together in one pass', async () => {
  // Every peer answers from the start (on its old configuration): a probe now would pass and prove nothing.
  const h = await harness(async ({ n }) => {
    if (n === 1) {
      for (const p of ['node-2', 'node-3', 'node-4']) await h.up(p);
      return { kind: 'newer', body: g1 };
    }
    if (n === 2) return { kind: 'peers', body: { wake: 'peers-applied', applied: [{ node: 'node-2', generation: 1 }] } };
    // node-3 and node-4 applied while node-2's edge was probed: one pass probes both.
    if (n === 3) return { kind: 'peers', body: { wake: 'peers-applied', applied: ['node-2', 'node-3', 'node-4'].map((node) => ({ node, generation: 1 })) } };
    return null;
  }, { edges: ['node-2', 'node-3', 'node-4'] });
  assert.equal(await h.loop.run(), 'stopped');
  assert.deepEqual((await h.probed()).sort(), ['node-2', 'node-3', 'node-4'], 'each edge probed once, none before its peer applied');
  assert.deepEqual(h.calls.map((c) => c.peers), [undefined, 0, 1, undefined]);
  assert.deepEqual(h.loop.probePasses, { apply: 0, retry: 0, 'peer-applied': 2 });
  // The apply's report: no edge proved yet, each standing as not probed (failing, pending its peer).
  const first = h.reported[0]!;
  assert.deepEqual(first.probes.map((p) => [p.to, p.ok, p.peerGeneration]), [['node-2', false, 0], ['node-3', false, 0], ['node-4', false, 0]]);
  assert.match(first.probes[0]!.error ?? '', /not probed yet/);
  assert.equal(first.timings?.generation, 1, 'the apply is reported at once, before any peer is probed');
  // A probe-only pass reports the server version its apply read (a restart brings a full pass): no session for it.
  assert.equal(h.reported.length, 3);
  assert.equal(h.versions(), 1, 'server_version asked by the apply\'s report only');
  assert.ok(h.reported.every((s) => s.versions.postgres === '15.18'));
  assert.deepEqual(h.reported.at(-1)!.probes.map((p) => [p.to, p.ok, p.reason, p.peerGeneration]), [
    ['node-2', true, 'peer-applied', 1], ['node-3', true, 'peer-applied', 1], ['node-4', true, 'peer-applied', 1],
  ]);
});

test('safety timer: an edge not probed yet (its peer not seen at the generation) is probed on it only after waiting 5 periods for a wake; a failed probe every period', async () => {
  let clock = 1_000_000;
  let node3BeforeWait = -1;
  const count = async (node: string) => (await h.probed()).filter((x) => x === node).length;
  const h = await harness(async ({ n }) => {
    if (n === 1) {
      await h.up('node-3'); // answers, on its old configuration: not seen at generation 1
      return { kind: 'newer', body: g1 };
    }
    // node-2 applied (seen) but its server refuses: its edge fails and is retried every period.
    if (n === 2) return { kind: 'peers', body: { wake: 'peers-applied', applied: [{ node: 'node-2', generation: 1 }] } };
    if (n === 3) {
      // No wake for node-3 comes (a lost wake, several coordinators). The clock stands still:
      // node-2's edge is retried, node-3's waits.
      await waitFor('node-2 retried twice', async () => (await count('node-2')) >= 3, 10_000, 10);
      node3BeforeWait = await count('node-3');
      clock += 5 * 30;
      await waitFor('node-3 probed by the safety timer', async () => (await count('node-3')) >= 1, 10_000, 10);
      return null;
    }
    return null;
  }, { reprobeMs: 30, now: () => clock });
  assert.equal(await h.loop.run(), 'stopped');
  assert.equal(node3BeforeWait, 0, 'node-3 not probed before it waited 5 periods');
  const last = h.reported.at(-1)!;
  assert.deepEqual(last.probes.map((p) => [p.to, p.ok, p.reason, p.peerGeneration]), [['node-2', false, 'retry', 1], ['node-3', true, 'retry', 0]]);
});

test('a status report the coordinator refused (429, rate limited) is sent again soon, not at the next long-poll cycle', async () => {
  let delivered = false;
  const h = await harness(async ({ n }) => {
    if (n === 1) return h.up('node-1').then(() => ({ kind: 'newer', body: g1 }) as const);
    // The long-poll that follows holds (30 s in a real coordinator): only a resend can bring the report.
    if (n === 2) delivered = await waitFor('the refused report sent again', () => h.reported.some((s) => s.generation === 1), 5_000, 10).catch(() => false);
    return null;
  }, { edges: ['node-1'], reprobeMs: 30, refuseReports: 1 });
  assert.equal(await h.loop.run(), 'stopped');
  assert.equal(delivered, true, 'the report reached the coordinator while the long-poll held');
  assert.equal(h.applies(), 1, 'sent again, nothing re-applied');
});

test('a status report the coordinator rejected (400: it will not take it again) is not re-sent on a timer', async () => {
  let attempts = -1; // counted after twenty resend periods: a resend would have come many times over
  const h = await harness(async ({ n }) => {
    if (n === 1) return h.up('node-1').then(() => ({ kind: 'newer', body: g1 }) as const);
    if (n === 2) await waitFor('the rejected report', () => h.refusedCount() >= 1, 5_000, 10).then(() => sleep(20 * 30)).then(() => (attempts = h.refusedCount() + h.reported.length));
    return null;
  }, { edges: ['node-1'], reprobeMs: 30, refuseReports: 1000, refuseStatus: 400 });
  assert.equal(await h.loop.run(), 'stopped');
  assert.equal(attempts, 1, 'one attempt, no resend loop');
});
