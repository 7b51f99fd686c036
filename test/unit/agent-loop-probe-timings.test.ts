// Issue 13 item 6, "the slow phase is visible": most of a generation's edges are probed in
// probe-only passes (a peer's wake, the safety timer), after the apply whose `probe` phase covers
// only the peers known to hold the generation. The status carries the last such pass (when, why,
// how many edges, how long) in its timings, and `pgaccord status` shows it beside the apply.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { Value } from '@sinclair/typebox/value';
import { compileCluster } from '../../coordinator/cluster/compile.ts';
import { applyTime } from '../../coordinator/cluster/lifecycle.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import { AgentStatus } from '../../shared/contract/status.ts';
import { ReconcileLoop } from '../../agent/runtime/loop.ts';
import type { CoordinatorApi } from '../../agent/runtime/loop-deps.ts';
import { CertificateManager } from '../../agent/runtime/certs.ts';
import { RenewalSchedule, seededRandom } from '../../agent/runtime/backoff.ts';
import type { ApplyResult, NodeContext } from '../../agent/apply/types.ts';
import { writeStandInPsql } from '../helpers/stand-in-psql.ts';

const spec: ClusterSpec = {
  name: 'mesh', profile: 'pgd', auth: 'trust', tls: { sslmode: 'disable' },
  nodes: ['node-1', 'node-2', 'node-3'].map((name, i) => ({ name, host: `10.0.0.${i + 1}`, kind: 'peer' as const })),
};
const g1 = compileCluster({ spec, generation: 1, credentials: {}, caBundle: '', crl: null }).get('node-1')!;

const dirs: string[] = [];
after(async () => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

test('a probe-only pass (a peer wake) reports its start, reason, edges and duration in the status timings; the CLI shows it beside the apply', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'pgaccord-loop-probe-timings-'));
  dirs.push(dir);
  // The stand-in psql: each run takes 50 ms (what the pass's duration must account for), every
  // edge connecting.
  const psql = await writeStandInPsql(dir, { delayMs: 50 });
  const reported: AgentStatus[] = [];
  let n = 0;
  let loop: ReconcileLoop;
  const client: CoordinatorApi = {
    async desired() {
      n += 1;
      if (n === 1) return { kind: 'newer', body: g1 };
      // Both peers applied generation 1: one wake, one probe-only pass over their two edges.
      if (n === 2) return { kind: 'peers', body: { wake: 'peers-applied', applied: ['node-2', 'node-3'].map((node) => ({ node, generation: 1 })) } };
      loop.stop();
      return { kind: 'unchanged' };
    },
    async status(s) {
      reported.push(structuredClone(s));
    },
  };
  const log = pino({ level: 'silent' });
  const apply = async (): Promise<ApplyResult> => ({
    phase: 'converged', changed: true, errors: [], files: [], pendingRestart: [], servedCertificate: null, phases: { render: 1 },
    clientConnections: ['node-2', 'node-3'].map((to) => ({ to, role: 'pgd_replication', conninfo: `host=${to} dbname=postgres`, replication: false })),
  });
  const certs = new CertificateManager({ stateDir: dir, owner: { uid: process.getuid!(), gid: process.getgid!() }, requestCertificate: async () => assert.fail('no certificate expected'), now: Date.now, schedule: new RenewalSchedule(seededRandom(1)), log });
  const me = { name: 'me', uid: process.getuid!(), gid: process.getgid!(), home: dir };
  loop = new ReconcileLoop({
    ctx: { stateDir: dir, log } as unknown as NodeContext, cluster: 'mesh', node: 'node-1', client, apply, certs, probe: { osUser: me, psql },
    reprobeMs: 600_000, now: Date.now, random: seededRandom(3), minCycleMs: 1, resyncMs: 600_000, log,
    postgresVersion: async () => '15.18',
  });
  assert.equal(await loop.run(), 'stopped');
  assert.deepEqual(loop.probePasses, { apply: 0, retry: 0, 'peer-applied': 1 });
  assert.equal(reported[0]!.timings?.probePass, undefined, 'the apply\'s report: no probe pass yet');
  const last = reported.at(-1)!;
  assert.ok(Value.Check(AgentStatus, last), 'the report matches the contract the coordinator checks');
  const p = last.timings?.probePass;
  assert.ok(p, `the probe pass is in the timings: ${JSON.stringify(last.timings)}`);
  assert.deepEqual([p.reason, p.edges, p.passes], ['peer-applied', 2, 1]);
  assert.ok(p.ms >= 45, `${p.ms} ms: the stand-in's 50 ms`);
  assert.ok(Date.parse(p.startedAt) >= Date.parse(last.timings!.startedAt));
  assert.ok(last.timings!.phases.probe! < 45, 'the apply itself probed nothing');
  assert.match(applyTime(last), new RegExp(`, probed 2 in ${Math.round(p.ms)}ms$`));
});
