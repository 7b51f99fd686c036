// A CA rotation reads every node's stored report to decide whether the node trusts the new CA
// (phase 'trust') or holds only its leaves (before finish). A stored report it cannot read (an
// older or newer coordinator's shape, a hand-edited row) is never proof: the node waits with
// "stored status report unreadable", the rotation does not move on, its status view still answers
// (200) and finish is refused (409). Rows go into node_status by SQL: the report route refuses them.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { enroll, pgdSpec, startHarness, type EnrolledNode, type Harness } from '../helpers/coordinator-harness.ts';
import { minimalReport, putStoredReport } from '../helpers/stored-report.ts';

let h: Harness;
let node1: EnrolledNode;
before(async () => {
  h = await startHarness();
  await h.coord.service.putCluster('rot', pgdSpec('rot'));
  node1 = await enroll(h, 'rot', 'node-1');
});
after(async () => {
  await node1?.client.close();
  await h?.close();
});

const report = minimalReport;
const putReport = (node: string, r: unknown) => putStoredReport(h.coord.store, 'rot', node, r);
const phase = async () => (await h.coord.store.query<{ phase: string }>(`SELECT phase FROM ca_rotations WHERE cluster = 'rot'`))[0]?.phase;

/** Shapes of node-2's report at generation g that are not proof (the first two read as proof before). */
const shapes = (g: number): { name: string; report: unknown }[] => [
  { name: 'generation a string above it', report: report(g, { generation: `${g}0` }) },
  { name: 'a probe whose ok is a string', report: report(g, { probes: [{ to: 'node-1', role: 'replicator', ok: 'no', conninfo: 'x', tlsVersion: null, cipher: null, error: 'refused', at: 'now' }] }) },
  { name: 'probes a string', report: report(g, { probes: 'none' }) },
  { name: 'certificates an object', report: report(g, { certificates: { id: 'server', serial: '01', notAfter: 'x' } }) },
  { name: 'the report a JSON string', report: 'converged' },
  { name: 'no versions (another shape)', report: (({ versions: _v, ...rest }) => rest)(report(g)) },
];

function assertWaitsUnreadable(body: any, what: string) { // eslint-disable-line @typescript-eslint/no-explicit-any
  const byNode = new Map((body.nodes as { node: string; waiting: string[] }[]).map((n) => [n.node, n.waiting]));
  assert.equal(byNode.get('node-2')?.length, 1, `${what}: ${JSON.stringify(body.nodes)}`);
  assert.match(byNode.get('node-2')![0]!, /stored status report .*unreadable/, what);
  assert.deepEqual([byNode.get('node-1'), byNode.get('node-3')], [[], []], `${what}: the others have proved it`);
}

test('an unreadable stored report is never proof: the rotation waits in trust, then in reissue finish is refused', async () => {
  const started = await h.admin.call('POST', '/v1/clusters/rot/ca-rotation/start', { body: {} });
  assert.equal(started.status, 200, started.text);
  const g = started.body.trustGeneration as number;
  await putReport('node-3', report(g));
  for (const shape of shapes(g)) {
    await putReport('node-2', shape.report);
    // node-1's own report, through the API, asks for the rotation's next step (status.ts).
    const posted = await node1.client.call('POST', '/v1/agent/status', { body: report(g) });
    assert.equal(posted.status, 204, `${shape.name}: ${posted.text}`);
    assert.equal(await phase(), 'trust', `${shape.name}: the new CA must not issue on an unreadable report`);
    const st = await h.admin.call('GET', '/v1/clusters/rot/ca-rotation');
    assert.equal(st.status, 200, `${shape.name}: ${st.text}`);
    assert.equal(st.body.phase, 'trust', shape.name);
    assertWaitsUnreadable(st.body, shape.name);
  }
  // node-2 reads again: nothing else held the rotation back.
  await putReport('node-2', report(g));
  const moved = await h.admin.call('GET', '/v1/clusters/rot/ca-rotation');
  assert.equal(moved.status, 200, moved.text);
  assert.equal(moved.body.phase, 'reissue');
  const r = moved.body.reissueGeneration as number;

  for (const node of ['node-1', 'node-3']) await putReport(node, report(r));
  for (const shape of shapes(r)) {
    await putReport('node-2', shape.report);
    const st = await h.admin.call('GET', '/v1/clusters/rot/ca-rotation');
    assert.equal(st.status, 200, `${shape.name}: ${st.text}`);
    assert.equal(st.body.canFinish, false, shape.name);
    assertWaitsUnreadable(st.body, shape.name);
    const finish = await h.admin.call('POST', '/v1/clusters/rot/ca-rotation/finish', { body: {} });
    assert.equal(finish.status, 409, `${shape.name}: ${finish.text}`);
    assert.equal(finish.body.code, 'E_ROTATION_NOT_READY');
    assert.match(finish.body.message, /node-2: its stored status report is unreadable/);
    assert.equal(await phase(), 'reissue', shape.name);
  }
  await putReport('node-2', report(r));
  const ready = await h.admin.call('GET', '/v1/clusters/rot/ca-rotation');
  assert.equal(ready.body.canFinish, true, ready.text);
});
