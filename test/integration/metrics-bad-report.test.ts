// A stored status report the fleet query cannot read (an older coordinator's report shape, a
// hand-edited row, a value over int range) must not hide the fleet: the scrape answers 200 with
// store_up 1 and every other node's series, and the bad row's unreadable fields have no sample
// (not a 0 that reads as "nothing applied yet"). Rows go into node_status directly by SQL: the
// report route would refuse them.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { CoordinatorMetrics } from '../../coordinator/http/metrics.ts';
import { pgdSpec, startHarness, type Harness } from '../helpers/coordinator-harness.ts';
import { putStoredReport, RawJson } from '../helpers/stored-report.ts';

let h: Harness;
before(async () => {
  h = await startHarness({ metricsListen: '127.0.0.1:0' });
});
after(async () => h?.close());

const sample = (body: string, line: string) => body.split('\n').find((l) => l.startsWith(line));
const at = new Date().toISOString();
const good = (over: Record<string, unknown> = {}) => ({
  generation: 1, phase: 'converged', pendingRestart: ['shared_buffers'], servedCertificate: null, certificates: [],
  probes: [{ to: 'node-2', role: 'replicator', ok: true }],
  timings: { generation: 1, startedAt: at, phases: { render: 3 }, totalMs: 40, probePass: { startedAt: at, reason: 'retry', edges: 2, ms: 500, passes: 1 } },
  ...over,
});
const putReport = (cluster: string, node: string, report: unknown) => putStoredReport(h.coord.store, cluster, node, report);

/** node-1's series, read whatever its peer's row holds. */
function assertGoodNode(body: string, cluster: string) {
  const id = `{cluster="${cluster}",node="node-1"}`;
  assert.equal(sample(body, 'pgaccord_store_up '), 'pgaccord_store_up 1', 'the store read did not fail');
  assert.equal(sample(body, `pgaccord_node_applied_generation${id}`), `pgaccord_node_applied_generation${id} 1`);
  assert.equal(sample(body, `pgaccord_node_pending_restarts${id}`), `pgaccord_node_pending_restarts${id} 1`);
  assert.equal(sample(body, `pgaccord_probe_pass_seconds${id}`), `pgaccord_probe_pass_seconds${id} 0.5`);
  assert.ok(sample(body, `pgaccord_probe_success{cluster="${cluster}",from="node-1",to="node-2",role="replicator"} 1`));
}

test('GET /metrics answers 200 with the fleet when one stored report has a non-integer generation and timings', async () => {
  await h.coord.service.putCluster('scrape', pgdSpec('scrape'));
  await putReport('scrape', 'node-1', good());
  await putReport('scrape', 'node-2', good({ generation: 'seven', timings: { generation: 1.5, probePass: { ms: 'fast' } } }));
  await putReport('scrape', 'node-3', good({ generation: 2 ** 40 }));
  const res = await fetch(h.coord.metricsUrl!);
  const body = await res.text();
  await h.coord.store.query(`DELETE FROM node_status WHERE cluster = 'scrape'`);
  assert.equal(res.status, 200);
  assertGoodNode(body, 'scrape');
  for (const node of ['node-2', 'node-3']) {
    const id = `{cluster="scrape",node="${node}"}`;
    assert.equal(sample(body, `pgaccord_node_applied_generation${id}`), undefined, `${node}: an unreadable generation is no sample, not 0`);
    assert.equal(sample(body, `pgaccord_probe_pass_seconds${id}`), undefined);
    assert.equal(sample(body, `pgaccord_node_desired_generation${id}`), `pgaccord_node_desired_generation${id} 1`);
    assert.equal(sample(body, `pgaccord_node_phase${id.slice(0, -1)},phase="converged"}`), `pgaccord_node_phase${id.slice(0, -1)},phase="converged"} 1`);
    assert.equal(sample(body, `pgaccord_node_pending_restarts${id}`), `pgaccord_node_pending_restarts${id} 1`, 'its readable fields still count');
  }
});

// Each shape alone, in a cluster of its own (removed after, so one shape's failure is its own).
const shapes: { name: string; report: unknown; absent: string[] }[] = [
  { name: 'generation over int range', report: good({ generation: 3_000_000_000 }), absent: ['pgaccord_node_applied_generation', 'pgaccord_probe_pass_seconds'] },
  { name: 'negative generation', report: good({ generation: -1 }), absent: ['pgaccord_node_applied_generation', 'pgaccord_probe_pass_seconds'] },
  { name: 'timings generation a string', report: good({ timings: { generation: 'one', probePass: { ms: 5 } } }), absent: ['pgaccord_probe_pass_seconds'] },
  { name: 'probe pass ms beyond float8', report: new RawJson(JSON.stringify(good()).replace('"ms":500', '"ms":1e400')), absent: ['pgaccord_probe_pass_seconds'] },
  { name: 'probe pass ms a string', report: good({ timings: { generation: 1, probePass: { ms: 'fast' } } }), absent: ['pgaccord_probe_pass_seconds'] },
  { name: 'pendingRestart a string', report: good({ pendingRestart: 'all' }), absent: ['pgaccord_node_pending_restarts'] },
  { name: 'probes an object', report: good({ probes: { to: 'node-1', role: 'replicator', ok: true } }), absent: ['pgaccord_probe_success'] },
  { name: 'probe ok not a boolean', report: good({ probes: [{ to: 'node-1', role: 'replicator', ok: 'maybe' }] }), absent: ['pgaccord_probe_success'] },
  { name: 'probe to not a string', report: good({ probes: [{ to: { n: 1 }, role: 'replicator', ok: true }] }), absent: ['pgaccord_probe_success'] },
  { name: 'certificates an object', report: good({ certificates: { id: 'server' } }), absent: ['pgaccord_certificate_expiration_timestamp_seconds'] },
  { name: 'certificate fields not strings', report: good({ certificates: [5, { id: 1, serial: { x: 1 }, notAfter: at }] }), absent: ['pgaccord_certificate_expiration_timestamp_seconds'] },
  { name: 'report a JSON string', report: 'converged', absent: ['pgaccord_node_applied_generation', 'pgaccord_node_pending_restarts'] },
];

for (const [i, shape] of shapes.entries()) {
  test(`a stored report with ${shape.name}: the other nodes' series stay, its field has no sample`, async () => {
    const cluster = `shape-${i}`;
    await h.coord.service.putCluster(cluster, pgdSpec(cluster));
    try {
      await putReport(cluster, 'node-1', good());
      await putReport(cluster, 'node-2', shape.report);
      const { body } = await new CoordinatorMetrics({ store: h.coord.store, log: h.coord.log, cacheMs: 0 }).render();
      assertGoodNode(body, cluster);
      for (const metric of shape.absent) {
        const bad = body.split('\n').filter((l) => l.startsWith(`${metric}{`) && l.includes(`cluster="${cluster}"`)
          && (l.includes('node="node-2"') || l.includes('from="node-2"')));
        assert.deepEqual(bad, [], `${metric} of the bad row`);
      }
      const id = `{cluster="${cluster}",node="node-2"}`;
      assert.equal(sample(body, `pgaccord_node_desired_generation${id}`), `pgaccord_node_desired_generation${id} 1`, 'the bad row\'s node is still listed');
    } finally {
      await h.coord.store.query(`DELETE FROM node_status WHERE cluster = $1`, [cluster]);
    }
  });
}

test('a hand-edited spec whose node list is not a list of named nodes: the other clusters\' series stay', async () => {
  await h.coord.service.putCluster('edited', pgdSpec('edited'));
  await h.coord.service.putCluster('intact', pgdSpec('intact'));
  await putReport('intact', 'node-1', good());
  try {
    for (const nodes of ['"node-1"', '[{"name": 5}, "node-2", null]']) {
      await h.coord.store.query(`UPDATE clusters SET spec = jsonb_set(spec, '{nodes}', $1::jsonb) WHERE name = 'edited'`, [nodes]);
      const { body } = await new CoordinatorMetrics({ store: h.coord.store, log: h.coord.log, cacheMs: 0 }).render();
      assertGoodNode(body, 'intact');
      assert.equal(body.includes('pgaccord_node_desired_generation{cluster="edited"'), false, `nodes ${nodes}: no node of it is named`);
      assert.ok(sample(body, 'pgaccord_crl_next_update_timestamp_seconds{cluster="edited"}'), 'its CRL is still read');
    }
  } finally {
    await h.coord.store.query(`DELETE FROM clusters WHERE name IN ('edited', 'intact')`);
  }
});

test('an edge awaiting its peer, read through the store, has no probe sample (not a failed probe)', async () => {
  await h.coord.service.putCluster('waiting', pgdSpec('waiting'));
  try {
    await putReport('waiting', 'node-1', good({ probes: [{ to: 'node-2', role: 'replicator', ok: true }, { to: 'node-3', role: 'replicator', ok: false, reason: 'awaiting-peer' }] }));
    const { body } = await new CoordinatorMetrics({ store: h.coord.store, log: h.coord.log, cacheMs: 0 }).render();
    assertGoodNode(body, 'waiting');
    assert.equal(sample(body, 'pgaccord_probe_success{cluster="waiting",from="node-1",to="node-3"'), undefined);
  } finally {
    await h.coord.store.query(`DELETE FROM clusters WHERE name = 'waiting'`);
  }
});
