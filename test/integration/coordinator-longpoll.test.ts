// The coordinator serving agents over time, with the store in an external database
// (--database-url against a throwaway PostgreSQL): the long-poll (answers at once when newer,
// wakes on a change, also through NOTIFY from a second coordinator on the same database, 410
// once the node is removed), status (converged, stale) and healthz while the database is down.
// Join tokens, enrolment and the route matrix: coordinator-agent.test.ts.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import type { AgentStatus } from '../../shared/contract/status.ts';
import { createCsr } from '../../shared/crypto/csr.ts';
import { generateRsaKey } from '../../shared/crypto/keys.ts';
import { throwawayStore } from '../helpers/pg.ts';
import { enroll, httpsClient, longPollsHeld, pgdSpec, startHarness, type EnrolledNode, type Harness } from '../helpers/coordinator-harness.ts';
import { waitFor } from '../helpers/wait.ts';

let h: Harness;
let node1: EnrolledNode;
// At the top level, so that throwawayPg's clean-up hook belongs to the file, not to before().
const { db, databaseUrl } = await throwawayStore();

before(async () => {
  h = await startHarness({ databaseUrl });
  const put = await h.admin.call('PUT', '/v1/clusters/matrix', { body: pgdSpec('matrix') });
  assert.equal(put.status, 200, put.text);
  node1 = await enroll(h, 'matrix', 'node-1');
});
after(() => h?.close());

test('long-poll: answers at once when newer, wakes the moment a generation is stored, 204 after the wait, 410 when removed', async () => {
  const current = (await h.admin.call('GET', '/v1/clusters/matrix')).body;
  const gen = current.generation as number;
  const immediate = await node1.client.call('GET', `/v1/agent/desired?after=${gen - 1}`);
  assert.equal(immediate.status, 200);
  assert.equal(immediate.body.generation, gen);
  let t = Date.now();
  const empty = await node1.client.call('GET', `/v1/agent/desired?after=${gen}`);
  assert.equal(empty.status, 204);
  assert.ok(Date.now() - t >= 2500, `held ${Date.now() - t}ms`);
  // A change stored while the poll is held wakes it at once.
  t = Date.now();
  let polls = longPollsHeld(h);
  const pending = node1.client.call('GET', `/v1/agent/desired?after=${gen}`);
  await waitFor('the long-poll held', () => longPollsHeld(h) > polls, 30_000, 10);
  const changedSpec = { ...current.spec, roles: [{ name: 'poll_role' }] };
  const changedAt = Date.now();
  assert.equal((await h.admin.call('PUT', '/v1/clusters/matrix', { body: changedSpec })).body.generation, gen + 1);
  const woke = await pending;
  assert.equal(woke.status, 200);
  assert.equal(woke.body.generation, gen + 1);
  assert.ok(Date.now() - changedAt < 1000, `woke ${Date.now() - changedAt}ms after the change`);
  // Removing the node: 410 for its agent, held poll included.
  const n2 = await enroll(h, 'matrix', 'node-2');
  polls = longPollsHeld(h);
  const held = n2.client.call('GET', `/v1/agent/desired?after=${gen + 1}`);
  await waitFor('the long-poll held', () => longPollsHeld(h) > polls, 30_000, 10);
  const without = { ...changedSpec, nodes: changedSpec.nodes.filter((n: { name: string }) => n.name !== 'node-2') };
  assert.equal((await h.admin.call('PUT', '/v1/clusters/matrix', { body: without })).status, 200);
  // The same refusal whether the node's removal is seen by the request (requireNode) or by its identity, revoked with it (authenticate).
  const gone = { code: 'E_GONE', message: 'node "node-2" is no longer part of cluster "matrix"' };
  const heldReply = await held;
  assert.equal(heldReply.status, 410);
  assert.deepEqual({ code: heldReply.body.code, message: heldReply.body.message }, gone);
  const csr = await n2.client.call('POST', '/v1/agent/csr', { body: { slot: 'server', csr: createCsr((await generateRsaKey()).privateKeyPem, 'node-2') } });
  assert.equal(csr.status, 410);
  assert.deepEqual({ code: csr.body.code, message: csr.body.message }, gone);
  assert.equal((await h.admin.call('POST', '/v1/clusters/matrix/nodes/node-2/tokens', { body: {} })).status, 404);
});

test('a second coordinator on the same database: its long-polls wake on the first one\'s writes (NOTIFY)', async () => {
  const second = await startHarness({ databaseUrl, dir: h.dir });
  try {
    assert.equal(second.caPem, h.caPem);
    const viaSecond = httpsClient(second.coord.url, h.caPem, { certPem: node1.certPem, keyPem: node1.keyPem });
    const gen = (await h.admin.call('GET', '/v1/clusters/matrix')).body.generation as number;
    const polls = longPollsHeld(second);
    const pending = viaSecond.call('GET', `/v1/agent/desired?after=${gen}`);
    await waitFor('the long-poll held by the second coordinator', () => longPollsHeld(second) > polls, 30_000, 10);
    const spec = (await h.admin.call('GET', '/v1/clusters/matrix')).body.spec;
    const changedAt = Date.now();
    await h.admin.call('PUT', '/v1/clusters/matrix', { body: { ...spec, roles: [{ name: 'notify_role' }] } });
    const res = await pending;
    assert.equal(res.status, 200);
    assert.equal(res.body.generation, gen + 1);
    assert.ok(Date.now() - changedAt < 1500, `woke ${Date.now() - changedAt}ms after the change`);
  } finally {
    await second.coord.close();
  }
});

test('held long-polls wait per cluster: a change calls its own cluster\'s polls, not one listener per poll of the fleet (issue 13)', async () => {
  // With a listener per held poll on the store's events, every change called every poll of the
  // fleet (and each poll's end searched them all): O(fleet) per change, O(fleet^2) per round of changes.
  await h.admin.call('PUT', '/v1/clusters/quiet', { body: pgdSpec('quiet', { nodes: pgdSpec('quiet').nodes.slice(0, 2) }) });
  await h.admin.call('PUT', '/v1/clusters/busy', { body: pgdSpec('busy', { nodes: pgdSpec('busy').nodes.slice(0, 1) }) });
  const quiet = [await enroll(h, 'quiet', 'node-1'), await enroll(h, 'quiet', 'node-2')];
  const busy = await enroll(h, 'busy', 'node-1');
  const genOf = async (c: string) => (await h.admin.call('GET', `/v1/clusters/${c}`)).body.generation as number;
  const listenersBefore = h.coord.store.events.listenerCount('cluster');
  const polls = longPollsHeld(h);
  const qGen = await genOf('quiet');
  const quietPolls = quiet.map((n) => n.client.call('GET', `/v1/agent/desired?after=${qGen}&wait=20`));
  const bGen = await genOf('busy');
  const busyPoll = busy.client.call('GET', `/v1/agent/desired?after=${bGen}&wait=20`);
  await waitFor('three long-polls held', () => longPollsHeld(h) >= polls + 3, 30_000, 10);
  assert.ok(h.coord.store.events.listenerCount('cluster') <= Math.max(1, listenersBefore),
    `${h.coord.store.events.listenerCount('cluster')} listeners on the store's change events for ${longPollsHeld(h)} held polls (${listenersBefore} before)`);
  const spec = (await h.admin.call('GET', '/v1/clusters/busy')).body.spec;
  const changedAt = Date.now();
  assert.equal((await h.admin.call('PUT', '/v1/clusters/busy', { body: { ...spec, roles: [{ name: 'wake_role' }] } })).status, 200);
  const woke = await busyPoll;
  assert.equal(woke.status, 200);
  assert.equal(woke.body.generation, bGen + 1);
  assert.ok(Date.now() - changedAt < 1000, `woke ${Date.now() - changedAt}ms after the change`);
  // The other cluster's polls are still held (not answered by the change), then answered by theirs.
  await waitFor('only the busy poll answered', () => longPollsHeld(h) === polls + 2, 10_000, 10);
  const qSpec = (await h.admin.call('GET', '/v1/clusters/quiet')).body.spec;
  assert.equal((await h.admin.call('PUT', '/v1/clusters/quiet', { body: { ...qSpec, roles: [{ name: 'wake_role' }] } })).status, 200);
  for (const r of await Promise.all(quietPolls)) assert.deepEqual([r.status, r.body.generation], [200, qGen + 1]);
  assert.equal(longPollsHeld(h), polls);
});

test('status: reports make a node converged; silence makes it stale', async () => {
  await h.admin.call('PUT', '/v1/clusters/conv', { body: pgdSpec('conv', { nodes: pgdSpec('conv').nodes.slice(0, 2) }) });
  const a = await enroll(h, 'conv', 'node-1');
  const b = await enroll(h, 'conv', 'node-2');
  const gen = (await h.admin.call('GET', '/v1/clusters/conv')).body.generation;
  const report = (phase: AgentStatus['phase'], generation: number): AgentStatus => ({
    generation, phase, errors: phase === 'failed' ? [{ code: 'E_HBA', message: 'line 3: invalid' }] : [], files: [], servedCertificate: { id: 'server', serial: '0a', notAfter: new Date(Date.now() + 80 * 86400_000).toISOString() }, certificates: [],
    probes: [{ to: 'node-2', role: 'pgd_replication', ok: true, conninfo: 'host=db2.example.com port=5432 dbname=postgres user=pgd_replication sslmode=verify-full', tlsVersion: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384', error: null, at: new Date().toISOString() }],
    pendingRestart: [], coordinatorReachable: true, versions: { agent: '0.1.0', postgres: '15.18' },
  });
  assert.equal((await a.client.call('POST', '/v1/agent/status', { body: report('converged', gen) })).status, 204);
  assert.equal((await b.client.call('POST', '/v1/agent/status', { body: report('failed', gen) })).status, 204);
  let st = (await h.admin.call('GET', '/v1/clusters/conv/status')).body;
  assert.equal(st.converged, false);
  assert.deepEqual(st.nodes[1].errors, [{ code: 'E_HBA', message: 'line 3: invalid' }]);
  assert.equal((await b.client.call('POST', '/v1/agent/status', { body: report('converged', gen) })).status, 204);
  st = (await h.admin.call('GET', '/v1/clusters/conv/status')).body;
  assert.equal(st.converged, true);
  assert.deepEqual(st.nodes.map((n: { appliedGeneration: number; enrolled: boolean; stale: boolean }) => [n.appliedGeneration, n.enrolled, n.stale]), [[gen, true, false], [gen, true, false]]);
  assert.equal(st.nodes[0].probes[0].tlsVersion, 'TLSv1.3');
  // An invalid report is refused (schema), a report with extra fields too.
  assert.equal((await a.client.call('POST', '/v1/agent/status', { body: { ...report('converged', gen), phase: 'great' } })).status, 400);
  // Time passes without contact: stale, no longer converged.
  h.setClockOffset(3 * h.coord.service.longPollMs + 5000);
  try {
    st = (await h.admin.call('GET', '/v1/clusters/conv/status')).body;
    assert.equal(st.converged, false);
    assert.ok(st.nodes.every((n: { stale: boolean }) => n.stale));
  } finally {
    h.setClockOffset(0);
  }
});

test('healthz: 503 naming the store while the database is down (the detail only in the log), 200 again once it is back', async () => {
  assert.equal((await h.anon.call('GET', '/healthz')).status, 200);
  await db.stop('fast');
  try {
    const down = await h.anon.call('GET', '/healthz');
    assert.equal(down.status, 503, down.text);
    assert.equal(down.body.code, 'E_STORE_UNAVAILABLE');
    // Public route: the store's error (socket path, server message) is logged, not answered.
    assert.deepEqual(Object.keys(down.body).sort(), ['code', 'message']);
    assert.doesNotMatch(down.text, /ECONNREFUSED|ENOENT|PGSQL|terminating|administrator|socket|\//);
    const log = await readFile(h.logFile, 'utf8');
    assert.match(log.split('\n').filter((l) => l.includes('store does not answer')).join('\n'), /ECONNREFUSED|ENOENT|terminating|PGSQL|Connection terminated/);
  } finally {
    await db.start();
  }
  await waitFor('healthz 200 once the store is back', async () => (await h.anon.call('GET', '/healthz')).status === 200, 30_000, 250);
});
