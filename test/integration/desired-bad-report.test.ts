// A node's desired state and status report read its peers' applied generations from node_status
// (which peers have applied a generation, for the event-driven re-probe). One peer's stored report
// that is not today's shape (an older coordinator's, a hand-edited row) must not fail those calls
// for every node of its cluster: that peer reads as not having applied anything. Rows go into
// node_status by SQL: the report route refuses them.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { enroll, pgdSpec, startHarness, type EnrolledNode, type Harness } from '../helpers/coordinator-harness.ts';
import { minimalReport, putStoredReport, RawJson } from '../helpers/stored-report.ts';

let h: Harness;
let node1: EnrolledNode;
before(async () => {
  h = await startHarness();
  await h.coord.service.putCluster('bad', pgdSpec('bad'));
  node1 = await enroll(h, 'bad', 'node-1');
});
after(async () => {
  await node1?.client.close();
  await h?.close();
});

const report = (generation: unknown) => minimalReport(generation);

test("a peer's stored report whose generation is no int (a string, over int range) fails neither a node's desired state nor its status report", async () => {
  await putStoredReport(h.coord.store, 'bad', 'node-2', report('seven'));
  await putStoredReport(h.coord.store, 'bad', 'node-3', new RawJson(JSON.stringify(report(1)).replace('"generation":1,', '"generation":1e400,')));
  const desired = await node1.client.call('GET', '/v1/agent/desired?peers=0');
  assert.equal(desired.status, 200, desired.text);
  const posted = await node1.client.call('POST', '/v1/agent/status', { body: report(desired.body.generation) });
  assert.equal(posted.status, 204, posted.text);
});
