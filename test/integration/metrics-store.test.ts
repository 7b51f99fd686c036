// The fleet gauges against a real store: one read (three queries) per scrape however many gauges
// and clusters, a node in the spec that never enrolled shows applied 0 and phase unknown, and a
// store that does not answer gives store_up 0 and a scrape that still answers.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { CoordinatorMetrics } from '../../coordinator/http/metrics.ts';
import { Store } from '../../coordinator/store/store.ts';
import { pgdSpec, startHarness, type Harness } from '../helpers/coordinator-harness.ts';

let h: Harness;
before(async () => {
  h = await startHarness();
});
after(async () => h?.close());

const sample = (body: string, line: string) => body.split('\n').find((l) => l.startsWith(line));

test('one store read per scrape, shared by every fleet gauge; nodes never heard from are visible', async () => {
  await h.coord.service.putCluster('alpha', pgdSpec('alpha'));
  await h.coord.service.putCluster('beta', pgdSpec('beta'));
  let queries = 0;
  const counting = { query: ((sql: string, params?: unknown[]) => (queries++, h.coord.store.query(sql, params))) as Store['query'] };
  const m = new CoordinatorMetrics({ store: counting, log: h.coord.log, cacheMs: 0 });
  const { body, contentType } = await m.render();
  assert.match(contentType, /^text\/plain; version=0\.0\.4/);
  assert.equal(queries, 3, 'node list, certificate records, CRLs: once for all 14 fleet gauges');
  assert.equal(sample(body, 'pgaccord_store_up '), 'pgaccord_store_up 1');
  assert.equal(sample(body, 'pgaccord_node_applied_generation{cluster="alpha",node="node-3"}'), 'pgaccord_node_applied_generation{cluster="alpha",node="node-3"} 0');
  assert.equal(sample(body, 'pgaccord_node_desired_generation{cluster="beta",node="node-1"}'), 'pgaccord_node_desired_generation{cluster="beta",node="node-1"} 1');
  assert.equal(sample(body, 'pgaccord_node_phase{cluster="alpha",node="node-1",phase="unknown"}'), 'pgaccord_node_phase{cluster="alpha",node="node-1",phase="unknown"} 1');
  assert.ok(sample(body, 'pgaccord_crl_next_update_timestamp_seconds{cluster="alpha"}'), 'every cluster has a CRL from its creation');
  assert.equal(body.includes('pgaccord_node_last_contact_timestamp_seconds{'), false, 'no contact, no timestamp (not 0)');
  assert.equal(body.includes('pgaccord_probe_pass_seconds{'), false, 'no probe pass reported, no sample');
  // Within cacheMs a second scrape reads nothing.
  const cached = new CoordinatorMetrics({ store: counting, log: h.coord.log, cacheMs: 60_000 });
  queries = 0;
  await cached.render();
  await cached.render();
  assert.equal(queries, 3);
});

test('a node\'s reported probe-only pass is pgaccord_probe_pass_seconds{cluster,node}', async () => {
  await h.coord.service.putCluster('gamma', pgdSpec('gamma'));
  const timings = { generation: 1, startedAt: new Date().toISOString(), phases: { render: 3, probe: 1 }, totalMs: 40, probePass: { startedAt: new Date().toISOString(), reason: 'peer-applied', edges: 9, ms: 950, passes: 2 } };
  await h.coord.store.query(`INSERT INTO node_status (cluster, node, report, reported_at, last_contact) VALUES ('gamma', 'node-2', $1, now(), now())`, [{ generation: 1, phase: 'converged', probes: [], timings }]);
  const { body } = await new CoordinatorMetrics({ store: h.coord.store, log: h.coord.log, cacheMs: 0 }).render();
  assert.match(body, /# HELP pgaccord_probe_pass_seconds .*probe-only pass/);
  assert.match(body, /# TYPE pgaccord_probe_pass_seconds gauge/);
  assert.equal(sample(body, 'pgaccord_probe_pass_seconds{cluster="gamma",node="node-2"}'), 'pgaccord_probe_pass_seconds{cluster="gamma",node="node-2"} 0.95');
  assert.equal(sample(body, 'pgaccord_probe_pass_seconds{cluster="gamma",node="node-1"}'), undefined);
});

test('a store that does not answer: store_up 0, no fleet series, the scrape still answers', async () => {
  const store = await Store.open({ ...(h.coord.pg!.socketConfig('pgaccord')) }, h.coord.log);
  await store.close();
  const m = new CoordinatorMetrics({ store, log: h.coord.log });
  const { body } = await m.render();
  assert.equal(sample(body, 'pgaccord_store_up '), 'pgaccord_store_up 0');
  assert.equal(body.includes('pgaccord_node_desired_generation{'), false);
  assert.ok(body.includes('process_cpu_seconds_total'));
});
