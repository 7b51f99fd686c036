// The coordinator's converged rule: a probe made before its peer applied the cluster's generation
// (peerGeneration lower) proves nothing yet; a report without the field (an older agent) is judged as before.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clusterConverged } from '../../coordinator/service/status.ts';
import { probePending } from '../../coordinator/cluster/probe-matrix.ts';
import type { NodeStatusView } from '../../shared/contract/api.ts';
import type { ProbeResult } from '../../shared/contract/status.ts';

const probe = (over: Partial<ProbeResult>): ProbeResult => ({ to: 'node-2', role: 'pgd_replication', ok: true, conninfo: 'host=node-2', tlsVersion: null, cipher: null, error: null, at: '2026-01-01T00:00:00Z', ...over });
const node = (probes: ProbeResult[]): NodeStatusView => ({
  node: 'node-1', desiredGeneration: 5, appliedGeneration: 5, phase: 'converged', enrolled: true, lastContact: null, reportedAt: null, stale: false,
  errors: [], servedCertificate: null, certificates: [], probes, pendingRestart: [], expiry: [], survivesUntil: null,
});

test('converged: every probe passed against its peer at the current generation; a report without peerGeneration as before', () => {
  assert.equal(clusterConverged([node([probe({ peerGeneration: 5 })])], 5), true);
  assert.equal(clusterConverged([node([probe({ peerGeneration: 4 })])], 5), false, 'proved against the peer\'s old configuration');
  assert.equal(clusterConverged([node([probe({ peerGeneration: 0 })])], 5), false, 'peer not known to have applied');
  assert.equal(clusterConverged([node([probe({})])], 5), true, 'an older agent: as today');
  assert.equal(clusterConverged([node([probe({ ok: false })])], 5), false);
  assert.equal(clusterConverged([{ ...node([]), appliedGeneration: 4 }], 5), false);
  assert.equal(probePending(probe({ peerGeneration: 4 }), 5), true);
  assert.equal(probePending(probe({ peerGeneration: 5 }), 5), false);
  assert.equal(probePending(probe({}), 5), false);
});

test('status output: a probe made before its peer applied shows as pending', async () => {
  const { formatStatus } = await import('../../coordinator/cli/status.ts');
  const view = { cluster: 'c', generation: 5, auth: 'cert', sslmode: 'verify-full', insecure: false, converged: false, ca: [], warnings: [], nodes: [node([probe({ peerGeneration: 4 })])] } as never;
  assert.match(formatStatus(view), /1\/1 ok, 1 pending/);
  const older = { cluster: 'c', generation: 5, auth: 'cert', sslmode: 'verify-full', insecure: false, converged: true, ca: [], warnings: [], nodes: [node([probe({})])] } as never;
  assert.doesNotMatch(formatStatus(older), /pending/);
});
