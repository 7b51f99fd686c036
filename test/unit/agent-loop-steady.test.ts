// The steady state (docs/lifecycle.md): once a generation is applied and proved with every probe
// passing, a long-poll cycle with nothing new checks only what is cheap to check (the managed
// files against the last proof, the server's postmaster.pid, the address it runs on) and
// reports the last proof as the heartbeat; it proves again (apply, SQL checks, probes) every
// proofEveryMs, at once when a file drifted or the server restarted, and the resync timer
// re-proves nothing while steady.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { compileCluster } from '../../coordinator/cluster/compile.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import type { AgentStatus } from '../../shared/contract/status.ts';
import { ReconcileLoop } from '../../agent/runtime/loop.ts';
import type { CoordinatorApi, DriftHook } from '../../agent/runtime/loop-deps.ts';
import { CertificateManager } from '../../agent/runtime/certs.ts';
import { RenewalSchedule, seededRandom } from '../../agent/runtime/backoff.ts';
import { waitFor } from '../helpers/wait.ts';
import { writeStandInPsql } from '../helpers/stand-in-psql.ts';
import type { ApplyResult, NodeContext } from '../../agent/apply/types.ts';

const spec: ClusterSpec = {
  name: 'mesh',
  profile: 'pgd',
  auth: 'trust',
  tls: { sslmode: 'disable' },
  nodes: [
    { name: 'node-1', host: '10.0.0.1', kind: 'peer' },
    { name: 'node-2', host: '10.0.0.2', kind: 'peer' },
  ],
};
const g1 = compileCluster({ spec, generation: 1, credentials: {}, caBundle: '', crl: null }).get('node-1')!;
const PROOF_EVERY_MS = 300_000;

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

type Answer = Awaited<ReturnType<CoordinatorApi['desired']>>;

async function harness(script: (n: number) => Promise<Answer | null>, opts: { resyncMs?: number } = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'pgaccord-loop-steady-'));
  dirs.push(dir);
  const psql = await writeStandInPsql(dir); // every edge connects
  const state = { clock: 1_000_000, drifted: false, server: 'pid 100 started 1', applies: 0, versions: 0 };
  const reported: AgentStatus[] = [];
  let loop: ReconcileLoop;
  let n = 0;
  const client: CoordinatorApi = {
    async desired(after, _signal, _wait, peers) {
      // node-2 holds every generation node-1 asks about: a coordinator answers a wake at once (no script step).
      if (peers === 0) return { kind: 'peers', body: { wake: 'peers-applied', applied: [{ node: 'node-2', generation: after }] } };
      const a = await script(++n);
      if (a === null) {
        loop.stop();
        return { kind: 'unchanged' };
      }
      return a;
    },
    async status(s) {
      reported.push(structuredClone(s));
    },
  };
  let onDrift: Parameters<DriftHook['resume']>[1] | null = null;
  const drift: DriftHook = {
    pause() {},
    resume(_files, cb) {
      onDrift = cb;
      state.drifted = false; // the apply restored the file
    },
    async check() {
      if (!state.drifted) return 0;
      onDrift?.({ path: '/pgdata/pg_hba.conf', kinds: ['content'] });
      return 1;
    },
    async close() {},
  };
  const log = pino({ level: process.env.DBG ? 'debug' : 'silent' });
  const ctx = { stateDir: dir, log, pgHost: '/run/postgresql', pgPort: 5432 } as unknown as NodeContext;
  const apply = async (): Promise<ApplyResult> => {
    state.applies += 1;
    return {
      phase: 'converged', changed: false, errors: [], files: [{ path: '/pgdata/pg_hba.conf', sha256: 'a'.repeat(64), owner: 'postgres', mode: '0600' }], pendingRestart: [], servedCertificate: null,
      clientConnections: [{ to: 'node-2', role: 'pgd_replication', conninfo: 'host=node-2 dbname=postgres', replication: false }],
    };
  };
  const certs = new CertificateManager({ stateDir: dir, owner: { uid: process.getuid!(), gid: process.getgid!() }, requestCertificate: async () => assert.fail('no certificate expected'), now: () => state.clock, schedule: new RenewalSchedule(seededRandom(1)), log });
  const me = { name: 'me', uid: process.getuid!(), gid: process.getgid!(), home: dir };
  loop = new ReconcileLoop({
    ctx, cluster: 'mesh', node: 'node-1', client, apply, certs, probe: { osUser: me, psql }, drift,
    now: () => state.clock, random: seededRandom(3), minCycleMs: 1, resyncMs: opts.resyncMs ?? 600_000, reprobeMs: 600_000, log,
    proofEveryMs: PROOF_EVERY_MS,
    serverFingerprint: () => state.server,
    postgresVersion: async () => {
      state.versions += 1;
      return '15.18';
    },
  });
  return { loop, reported, state };
}

test('steady: unchanged cycles report the last proof without applying, probing or asking the server; proofEveryMs later it proves again; the resync proves nothing', async () => {
  // Steady from the first unchanged cycle on: the apply left node-2's edge to node-2's wake, and
  // until the wake's probe passed the 5 ms resync may have proved again (not steady yet).
  let steadyAt = { applies: 0, proved: 0, apply: 0, reports: 0 };
  const h = await harness(async (n) => {
    if (n === 1) return { kind: 'newer', body: g1 };
    if (n === 3) {
      steadyAt = { applies: h.state.applies, proved: h.loop.cycles.proved, apply: h.loop.probePasses.apply, reports: h.reported.length };
      // The 5 ms resync timer runs several cycles meanwhile (the long-poll holds): each proves nothing.
      const resyncs = h.loop.resyncs;
      await waitFor('three resync cycles while steady', () => h.loop.resyncs >= resyncs + 3, 10_000, 5);
    }
    if (n === 6) h.state.clock += PROOF_EVERY_MS;
    return n <= 6 ? { kind: 'unchanged' } : null;
  }, { resyncMs: 5 });
  assert.equal(await h.loop.run(), 'stopped');
  assert.equal(h.state.applies - steadyAt.applies, 1, 'while steady, only the proof due after proofEveryMs');
  assert.equal(h.loop.cycles.proved - steadyAt.proved, 1);
  assert.equal(h.loop.probePasses.apply - steadyAt.apply, 1, 'the due proof probes node-2 (seen at the generation)');
  assert.equal(h.loop.probePasses['peer-applied'], 1, 'the wake probed node-2');
  assert.equal(h.loop.cycles.heartbeat, 4);
  assert.equal(h.state.versions, h.reported.length - h.loop.cycles.heartbeat - 1, 'server_version asked by no heartbeat, nor by the wake\'s probe-only pass');
  // (The resync may report once before the first desired state arrives: 'unknown', generation 0.)
  assert.deepEqual(h.reported.find((s) => s.generation === 1)!.probes.map((p) => [p.to, p.ok]), [['node-2', false]], 'the apply\'s report: not probed yet');
  // A report per cycle while steady (the heartbeat), each the last proof, then the due proof.
  const proofs = h.reported.slice(steadyAt.reports);
  assert.equal(proofs.length, 4);
  for (const s of proofs) {
    assert.equal(s.phase, 'converged');
    assert.deepEqual(s.probes.map((p) => [p.to, p.ok]), [['node-2', true]]);
    assert.equal(s.versions.postgres, '15.18');
  }
});

test('steady: a drifted file or a restarted server is proved again at once', async () => {
  const h = await harness(async (n) => {
    if (n === 1) return { kind: 'newer', body: g1 };
    if (n === 3) h.state.drifted = true; // edited by hand (the watcher's inotify event was missed)
    if (n === 5) h.state.server = 'pid 200 started 2'; // the server restarted
    return n <= 6 ? { kind: 'unchanged' } : null;
  });
  await h.loop.run();
  // n=1 generation; n=2 heartbeat; n=3 drift: repaired; n=4 heartbeat; n=5 restart: proved; n=6 heartbeat.
  assert.equal(h.state.applies, 3);
  assert.deepEqual(h.loop.cycles, { proved: 3, heartbeat: 3 });
  assert.ok(h.reported.some((s) => s.errors.some((e) => e.code === 'DRIFT_REPAIRED')), 'the repair is reported');
});

test('--prove-every: the steady proof cadence, 300 s by default, from a flag or the config file; anything but 1-86400 seconds is refused naming the option', async () => {
  const { resolveConfig } = await import('../../agent/config.ts');
  const pgdata = await mkdtemp(join(tmpdir(), 'pgaccord-pgdata-'));
  try {
    const base = { coordinator: 'https://c', node: 'a/b', pgdata };
    assert.equal(resolveConfig({}, base).proveEveryMs, 300_000);
    assert.equal(resolveConfig({ 'prove-every': '10' }, base).proveEveryMs, 10_000);
    assert.equal(resolveConfig({}, { ...base, 'prove-every': '60' }).proveEveryMs, 60_000, 'from the config file');
    for (const bad of ['0', 'often', '-5', '100000', '1.5']) assert.throws(() => resolveConfig({ 'prove-every': bad }, base), /--prove-every/);
  } finally {
    await rm(pgdata, { recursive: true, force: true });
  }
});
