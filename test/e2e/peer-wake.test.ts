// End to end, event-driven convergence on two pgd peers (scram-sha-256 over verify-full, real
// PostgreSQL 15 servers, real agent processes, the real coordinator): node-2's agent is stopped
// and the passwords rotated, so node-1 applies the new generation and does not probe node-2 (not
// known to have applied it: node-2 still has the old verifier), the edge stands as not probed yet.
// Once node-2's agent is back and has applied, its status report wakes node-1's long-poll (202,
// peer wake) and node-1 probes node-2 at once, without applying anything: the passing probe says
// it ran because the peer applied (reason "peer-applied"). node-1's safety timer is set to 120 s (--probe-retry), so it cannot be what
// re-probes within the test; the long-poll is held 300 s, so no poll cycle ends while node-2
// restarts and applies (with 30 s, one ending in that window re-probed with reason "apply": a rare
// failure). Asserted on that reason and on the order of events, never on a wall-clock bound; the
// latency is printed.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import { LocalCluster } from '../../bin/local-cluster.ts';
import { waitFor } from '../helpers/wait.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';

test('peer wake: a peer that applies the generation wakes the node whose probe to it failed, which probes it again (reason peer-applied)', async () => {
  const cluster = await LocalCluster.create({ dir: await mkdtemp('/tmp/pgaccord-e2e-wake-') });
  after(() => cluster.close());
  await cluster.startCoordinator(['--long-poll', '300']);
  const nodes = [await cluster.addNode('node-1', '127.0.0.81'), await cluster.addNode('node-2', '127.0.0.82')];
  const spec: ClusterSpec = {
    name: 'wake', profile: 'pgd', auth: 'scram-sha-256', tls: { sslmode: 'verify-full', certLifetime: '1h' },
    nodes: nodes.map((n) => ({ name: n.name, host: n.host, address: '127.0.0.1', port: n.pg.port, kind: 'peer' })),
  };
  assert.equal((await cluster.apply(spec)).code, 0);
  const n1 = nodes[0]!;
  await cluster.spawnAgent('wake', n1.name, { stateDir: n1.stateDir, args: ['--pgdata', n1.pg.dataDir, '--pg-host', n1.pg.socketDir, '--pg-port', String(n1.pg.port), '--probe-retry', '120'] });
  await cluster.startAgent('wake', 'node-2');
  await cluster.waitConverged('wake', 120_000);

  await cluster.stopAgent('node-2');
  const r = await cluster.cli(['cert', 'rotate-passwords', 'wake', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const generation = (JSON.parse(r.stdout) as { generation: number }).generation;
  // node-1 applied the new generation; its edge to node-2 is not probed (node-2 not seen at it).
  await waitFor(`node-1 applying generation ${generation} with its edge not probed yet`, async () => {
    const row = (await cluster.status('wake')).nodes.find((n) => n.node === 'node-1')!;
    if (row.appliedGeneration === generation && row.probes.length === 1 && !row.probes[0]!.ok && /not probed yet/.test(row.probes[0]!.error ?? '')) return true;
    throw new Error(JSON.stringify(row));
  }, 60_000, 250);

  await cluster.startAgent('wake', 'node-2');
  const s = await cluster.waitConverged('wake', 60_000);
  const [v1, n2] = ['node-1', 'node-2'].map((name) => s.nodes.find((n) => n.node === name)!);
  const p = v1!.probes[0]!;
  assert.equal(p.ok, true);
  assert.equal(p.reason, 'peer-applied', `node-1's passing probe to node-2 ran because node-2 applied, not on a timer: ${JSON.stringify(p)}`);
  // Order: node-2's apply of the generation began before node-1's re-probe ended.
  assert.equal(n2!.timings?.generation, generation);
  const peerApplied = Date.parse(n2!.timings!.startedAt) + n2!.timings!.totalMs;
  assert.ok(Date.parse(n2!.timings!.startedAt) < Date.parse(p.at), `node-2 applied (${n2!.timings!.startedAt}) before node-1 re-probed (${p.at})`);
  console.log(`# peer-wake e2e: ${JSON.stringify({ generation, peerAppliedAndProbed: new Date(peerApplied).toISOString(), reprobeAt: p.at, latencyMs: Date.parse(p.at) - peerApplied, peerTimings: n2!.timings })}`);

  // A change that leaves node-1's edge passing while node-2 still runs the old generation. node-1,
  // restarted with a 1 s safety timer, probes node-2 on it (after 5 periods waiting for a wake):
  // that probe passes against node-2's old configuration and proves nothing of the new one, so
  // converged waits until node-1 probed node-2 again once node-2 applied (peer-applied).
  await cluster.stopAgent('node-2');
  await cluster.stopAgent('node-1');
  const changed = { ...spec, tls: { ...spec.tls, certLifetime: '2h' } };
  assert.equal((await cluster.apply(changed)).code, 0);
  const g2 = (await cluster.status('wake')).generation;
  assert.ok(g2 > generation);
  await cluster.spawnAgent('wake', n1.name, { stateDir: n1.stateDir, args: ['--pgdata', n1.pg.dataDir, '--pg-host', n1.pg.socketDir, '--pg-port', String(n1.pg.port), '--probe-retry', '1'] });
  const early = await waitFor(`node-1 applying generation ${g2} with a passing probe made before node-2 applied`, async () => {
    const st = await cluster.status('wake');
    const row = st.nodes.find((n) => n.node === 'node-1')!;
    if (row.appliedGeneration === g2 && row.probes.length === 1 && row.probes[0]!.ok) return row.probes[0]!;
    throw new Error(JSON.stringify(row));
  }, 60_000, 250);
  assert.equal(early.reason, 'retry', 'the safety timer, not the apply, probed a peer not seen at the generation');
  assert.ok((early.peerGeneration ?? -1) < g2, `probed before node-2 was seen at ${g2}: ${JSON.stringify(early)}`);
  await cluster.startAgent('wake', 'node-2');
  const s2 = await cluster.waitConverged('wake', 60_000);
  const [w1, w2] = ['node-1', 'node-2'].map((name) => s2.nodes.find((n) => n.node === name)!);
  const q = w1!.probes[0]!;
  assert.equal(q.reason, 'peer-applied', `converged only once node-1 probed node-2 again after node-2 applied ${g2}: ${JSON.stringify(q)}`);
  assert.ok((q.peerGeneration ?? 0) >= g2, JSON.stringify(q));
  assert.equal(w2!.timings?.generation, g2);
  assert.ok(Date.parse(w2!.timings!.startedAt) < Date.parse(q.at), `node-2 applied (${w2!.timings!.startedAt}) before node-1 re-probed (${q.at})`);
  for (const n of s2.nodes) for (const pr of n.probes) assert.ok((pr.peerGeneration ?? 0) >= g2, `${n.node}: ${JSON.stringify(pr)}`);
});
