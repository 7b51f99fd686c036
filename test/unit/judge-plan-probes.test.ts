// planProbes: what a full pass probes and what stands for the edges it leaves to their peer's wake.
// What it carries over from an earlier pass of the same generation must not claim more than that
// pass proved: a re-apply may have changed this node's client files (a renewed client certificate).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { planProbes } from '../../agent/runtime/judge.ts';
import type { ProbeResult } from '../../shared/contract/status.ts';
import type { ClientConnection } from '../../shared/pgconf/types.ts';

const conn = (to: string): ClientConnection => ({ to, role: 'pgd_replication', conninfo: `host=${to} dbname=postgres`, replication: false });
const result = (to: string, over: Partial<ProbeResult>): ProbeResult => ({
  to, role: 'pgd_replication', conninfo: `host=${to} dbname=postgres`, ok: true, tlsVersion: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384', error: null,
  at: '2026-12-01T00:00:00.000Z', reason: 'retry', peerGeneration: 0, ...over,
});
const desired = { node: 'node-1', generation: 7 };
const NOW = '2026-12-01T00:01:00.000Z';

test('planProbes: an ok result the safety timer made against a peer not seen at the generation does not stand after a re-apply: the edge is probed again', () => {
  // node-2's wake never came; the timer probed it (passing, peerGeneration 0). Then the node
  // re-applied the same generation (a renewed client certificate): that pass proved nothing yet.
  const carried = [result('node-2', { ok: true, reason: 'retry', peerGeneration: 0 })];
  const plan = planProbes([conn('node-2')], desired, () => false, carried, NOW);
  assert.deepEqual(plan.probe, [0], 'probed by the re-apply (the timer already waited out its wake)');
  assert.notEqual(plan.results[0]!.ok, true, 'no ok stands for it before the probe');
});

test('planProbes: a carried failure stands (a peer that is down keeps its real error; an edge awaiting its peer keeps when it began waiting)', () => {
  const down = result('node-2', { ok: false, error: 'connection refused', tlsVersion: null, cipher: null });
  const awaiting = result('node-3', { ok: false, error: 'not probed yet', reason: 'awaiting-peer', tlsVersion: null, cipher: null, at: '2026-12-01T00:00:30.000Z' });
  const plan = planProbes([conn('node-2'), conn('node-3'), conn('node-4')], desired, () => false, [down, awaiting], NOW);
  assert.deepEqual(plan.probe, []);
  assert.deepEqual(plan.results[0], down);
  assert.deepEqual(plan.results[1], awaiting);
  assert.deepEqual([plan.results[2]!.ok, plan.results[2]!.reason, plan.results[2]!.at], [false, 'awaiting-peer', NOW], 'nothing carried: not probed yet, from now');
});

test('planProbes: edges to the node itself and to peers known at the generation are probed, whatever was carried', () => {
  const carried = [result('node-1', { ok: false, error: 'x', tlsVersion: null, cipher: null }), result('node-2', { ok: true, peerGeneration: 7, reason: 'peer-applied' })];
  const plan = planProbes([conn('node-1'), conn('node-2'), conn('node-3')], desired, (to) => to === 'node-2', carried, NOW);
  assert.deepEqual(plan.probe, [0, 1]);
});
