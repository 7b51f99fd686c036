// What one desired request and one status report cost the store (issue 13): at 10,000 agents the
// store's CPU is spent per query, so an agent's cycle runs as few as hold. A warm desired request
// (its cluster's state compiled, its CRL not due) runs three: the identity check (shared with the
// requests arriving together), the cluster row, and one write of last_contact that returns the
// trust files and the renewals asked of the node (shared too). A status report two: the identity check and the
// report's write, which checks that the node is still in its cluster's spec and says whether a
// CA rotation waits in phase 'trust' (only then is its next step read).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { enroll, pgdSpec, startHarness, storeQueries, type Harness } from '../helpers/coordinator-harness.ts';

let h: Harness;
before(async () => {
  h = await startHarness();
  const put = await h.admin.call('PUT', '/v1/clusters/q', { body: pgdSpec('q') });
  assert.equal(put.status, 200, put.text);
});
after(() => h?.close());

const queries = (work: () => Promise<void>) => storeQueries(h, work);

test('a warm desired request makes three store queries, renewals asked included', async () => {
  const n = await enroll(h, 'q', 'node-1');
  const first = await n.client.call('GET', '/v1/agent/desired?after=0&wait=0');
  assert.equal(first.status, 200, first.text);
  const seen = await queries(async () => {
    const r = await n.client.call('GET', '/v1/agent/desired?after=0&wait=0');
    assert.equal(r.status, 200, r.text);
  });
  assert.equal(seen.length, 3, `store queries of one desired request:\n${seen.join('\n')}`);
  // A renewal asked of the node still reaches it in that answer.
  const cert = (await h.coord.store.query<{ serial: string }>(`SELECT serial FROM certificates WHERE cluster = 'q' AND node = 'node-1' AND slot = 'identity'`))[0]!;
  await h.coord.store.query(`UPDATE certificates SET renew_requested_at = now() WHERE serial = $1`, [cert.serial]);
  const asked = await n.client.call('GET', '/v1/agent/desired?after=0&wait=0');
  assert.equal(asked.status, 200, asked.text);
  assert.deepEqual(asked.body.renewSerials, [cert.serial]);
});

test('a status report makes two store queries: the node\'s existence and a CA rotation are checked by the write itself', async () => {
  const n = await enroll(h, 'q', 'node-2');
  const report = (generation: number) => ({
    generation, phase: 'converged', errors: [], files: [], servedCertificate: null, certificates: [], probes: [], pendingRestart: [], coordinatorReachable: true, versions: { agent: 'test', postgres: '15' },
  });
  const first = await n.client.call('POST', '/v1/agent/status', { body: report(1) });
  assert.equal(first.status, 204, first.text);
  const seen = await queries(async () => {
    const r = await n.client.call('POST', '/v1/agent/status', { body: report(2) });
    assert.equal(r.status, 204, r.text);
  });
  assert.equal(seen.length, 2, `store queries of one status report:\n${seen.join('\n')}`);
  const stored = await h.coord.store.query<{ generation: number }>(`SELECT (report->>'generation')::int AS generation FROM node_status WHERE cluster = 'q' AND node = 'node-2'`);
  assert.deepEqual(stored, [{ generation: 2 }]);
});

test('during a CA rotation in phase \'trust\', the report that completes the proof takes the step to \'reissue\'', async () => {
  assert.equal((await h.admin.call('PUT', '/v1/clusters/rot', { body: pgdSpec('rot') })).status, 200);
  const nodes = [await enroll(h, 'rot', 'node-1'), await enroll(h, 'rot', 'node-2'), await enroll(h, 'rot', 'node-3')];
  const started = await h.admin.call('POST', '/v1/clusters/rot/ca-rotation/start');
  assert.equal(started.status, 200, started.text);
  const generation = started.body.trustGeneration as number;
  const phase = async () => (await h.coord.store.query<{ phase: string }>(`SELECT phase FROM ca_rotations WHERE cluster = 'rot'`))[0]?.phase;
  const report = (n: (typeof nodes)[number]) => n.client.call('POST', '/v1/agent/status', { body: {
    generation, phase: 'converged', errors: [], files: [], servedCertificate: null, certificates: [], probes: [], pendingRestart: [], coordinatorReachable: true, versions: { agent: 'test', postgres: '15' },
  } });
  for (const n of nodes.slice(0, 2)) assert.equal((await report(n)).status, 204);
  assert.equal(await phase(), 'trust', 'not every node has proved the bundle yet');
  const seen = await queries(async () => assert.equal((await report(nodes[2]!)).status, 204));
  assert.equal(await phase(), 'reissue', `the last proof took the step; its report's queries:\n${seen.join('\n')}`);
  assert.ok(seen.length > 2, 'the rotation was read');
});

test('a report of a node its stored spec no longer has is not stored, and says why', async () => {
  assert.equal((await h.admin.call('PUT', '/v1/clusters/r', { body: pgdSpec('r') })).status, 200);
  const n = await enroll(h, 'r', 'node-3');
  // The node taken out of the stored row behind the API (its identity stays valid).
  await h.coord.store.query(`UPDATE clusters SET spec = jsonb_set(spec, '{nodes}', (spec->'nodes') - 2) WHERE name = 'r'`);
  const r = await n.client.call('POST', '/v1/agent/status', { body: {
    generation: 1, phase: 'converged', errors: [], files: [], servedCertificate: null, certificates: [], probes: [], pendingRestart: [], coordinatorReachable: true, versions: { agent: 'test', postgres: '15' },
  } });
  assert.equal(r.status, 500, r.text);
  assert.equal(r.body.code, 'E_STORED_SPEC_INVALID');
  assert.deepEqual(await h.coord.store.query(`SELECT report FROM node_status WHERE cluster = 'r' AND node = 'node-3' AND report IS NOT NULL`), []);
});
