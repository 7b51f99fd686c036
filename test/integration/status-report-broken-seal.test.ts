// A status report while the cluster's stored spec is refused (changed behind the API, or its seal
// swapped): since acfecb2 the report's write checks only that the node is still in the stored
// node list, so the report is stored (204) and nothing is compiled from the spec; everything
// that serves the spec (the admin's status and spec, the agent's desired state) still refuses it
// with E_STORED_SPEC_INVALID. Once the spec is applied again through the API, the status view
// shows what was reported meanwhile. A node taken out of the stored list is not stored
// (desired-store-queries 'a report of a node its stored spec no longer has').
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { enroll, pgdSpec, startHarness, type Harness } from '../helpers/coordinator-harness.ts';

let h: Harness;
before(async () => {
  h = await startHarness();
});
after(async () => h?.close());

const report = (generation: number) => ({
  generation, phase: 'converged', errors: [], files: [], servedCertificate: null, certificates: [], probes: [], pendingRestart: [],
  coordinatorReachable: true, versions: { agent: 'test', postgres: '15' },
});

const breaks: { name: string; sql: string }[] = [
  { name: 'spec changed under its seal (auth: trust)', sql: `UPDATE clusters SET spec = jsonb_set(spec, '{auth}', '"trust"') WHERE name = $1` },
  { name: 'seal of another cluster', sql: `UPDATE clusters SET spec_seal = (SELECT spec_seal FROM clusters WHERE name = 'other') WHERE name = $1` },
];

test('setup: a second cluster whose seal can be swapped in', async () => {
  assert.equal((await h.admin.call('PUT', '/v1/clusters/other', { body: pgdSpec('other') })).status, 200);
});

for (const [i, broken] of breaks.entries()) {
  test(`a report while the stored spec is refused (${broken.name}) is stored; the spec is served to no one`, async () => {
    const cluster = `broken-${i}`;
    assert.equal((await h.admin.call('PUT', `/v1/clusters/${cluster}`, { body: pgdSpec(cluster) })).status, 200);
    const n = await enroll(h, cluster, 'node-1');
    try {
      await h.coord.store.query(broken.sql, [cluster]);
      const posted = await n.client.call('POST', '/v1/agent/status', { body: report(1) });
      assert.equal(posted.status, 204, posted.text);
      const stored = await h.coord.store.query<{ generation: string }>(`SELECT report->>'generation' AS generation FROM node_status WHERE cluster = $1 AND node = 'node-1'`, [cluster]);
      assert.deepEqual(stored, [{ generation: '1' }]);
      for (const [what, r] of [
        ['admin status', await h.admin.call('GET', `/v1/clusters/${cluster}/status`)],
        ['admin spec', await h.admin.call('GET', `/v1/clusters/${cluster}`)],
        ['agent desired', await n.client.call('GET', '/v1/agent/desired?after=0')],
      ] as const) {
        assert.equal(r.status, 500, `${what}: ${r.text}`);
        assert.equal(r.body.code, 'E_STORED_SPEC_INVALID', `${what}: ${r.text}`);
        assert.doesNotMatch(r.text, /trust/, `${what}: nothing of the refused spec is shown`);
      }
      // Applied again through the API: the report made meanwhile is what the status view shows.
      assert.equal((await h.admin.call('PUT', `/v1/clusters/${cluster}`, { body: pgdSpec(cluster) })).status, 200);
      const view = await h.admin.call('GET', `/v1/clusters/${cluster}/status`);
      assert.equal(view.status, 200, view.text);
      const node = (view.body.nodes as { node: string; appliedGeneration: number; phase: string }[]).find((x) => x.node === 'node-1');
      assert.equal(node?.appliedGeneration, 1, view.text);
    } finally {
      await n.client.close();
    }
  });
}
