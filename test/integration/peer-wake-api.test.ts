// The long-poll's peer wake and rotation instant over the real HTTPS API (mTLS agent identities,
// embedded store): an agent that asks (?peers=N) gets 202 {wake: peers-applied} as soon as more
// than N other nodes reported the generation applied, at once when they already have, and when
// one reports while it waits; an agent that does not ask (an older agent) never gets a 202; the
// rotation instant (passwordsAt) goes only to an agent that says it understands it
// (features=passwords-at): an older one would refuse the unknown field.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { enroll, longPollsHeld, pgdSpec, startHarness } from '../helpers/coordinator-harness.ts';
import { waitFor } from '../helpers/wait.ts';
import type { AgentStatus } from '../../shared/contract/status.ts';

const h = await startHarness({ longPollMs: 3000 });
after(() => h.close());

const report = (generation: number): AgentStatus => ({ generation, phase: 'converged', errors: [], files: [], servedCertificate: null, certificates: [], probes: [], pendingRestart: [], coordinatorReachable: true, versions: { agent: '0.1.0', postgres: '15' } });

test('peer wake: 202 for agents that ask, once more peers than they know applied; never for agents that do not ask', async () => {
  assert.equal((await h.admin.call('PUT', '/v1/clusters/wake', { body: pgdSpec('wake', { auth: 'scram-sha-256' }) })).status, 200);
  const [n1, n2, n3] = await Promise.all(['node-1', 'node-2', 'node-3'].map((n) => enroll(h, 'wake', n)));
  assert.equal((await n2!.client.call('POST', '/v1/agent/status', { body: report(1) })).status, 204);

  // An older agent: no peers parameter, nothing newer: 204 after the wait, never a 202.
  assert.equal((await n1!.client.call('GET', '/v1/agent/desired?after=1&wait=1')).status, 204);
  // Asking, knowing none: node-2 applied already, so at once.
  const first = await n1!.client.call('GET', '/v1/agent/desired?after=1&peers=0&wait=3');
  assert.equal(first.status, 202, first.text);
  assert.deepEqual(first.body, { wake: 'peers-applied', applied: [{ node: 'node-2', generation: 1 }] });
  // Knowing node-2: held until node-3 reports, then woken with both.
  const t0 = Date.now();
  const polls = longPollsHeld(h);
  const waiting = n1!.client.call('GET', '/v1/agent/desired?after=1&peers=1&wait=30');
  await waitFor('the long-poll held', () => longPollsHeld(h) > polls, 30_000, 10);
  assert.equal((await n3!.client.call('POST', '/v1/agent/status', { body: report(1) })).status, 204);
  const second = await waiting;
  assert.equal(second.status, 202, second.text);
  assert.deepEqual(second.body.applied.map((a: { node: string }) => a.node), ['node-2', 'node-3']);
  assert.ok(Date.now() - t0 < 30_000, 'woken by the report, not by the end of the wait');
  // A heartbeat report of the same generation wakes nobody: held to the end of its wait.
  const quiet = n1!.client.call('GET', '/v1/agent/desired?after=1&peers=2&wait=1');
  assert.equal((await n3!.client.call('POST', '/v1/agent/status', { body: report(1) })).status, 204);
  assert.equal((await quiet).status, 204);
});

test('rotation instant: passwordsAt only for agents that understand it, a little ahead of the rotation', async () => {
  const [a] = [await enroll(h, 'wake', 'node-1')];
  const r = await h.admin.call('POST', '/v1/clusters/wake/rotate-passwords', { body: {} });
  assert.equal(r.status, 200, r.text);
  const older = await a!.client.call('GET', `/v1/agent/desired?after=${r.body.generation - 1}&wait=0`);
  assert.equal(older.status, 200);
  assert.equal(older.body.generation, r.body.generation);
  assert.equal('passwordsAt' in older.body, false, 'an agent that does not say it understands the field never gets it');
  const newer = await a!.client.call('GET', `/v1/agent/desired?after=${r.body.generation - 1}&wait=0&features=passwords-at`);
  assert.equal(newer.status, 200);
  const at = Date.parse(newer.body.passwordsAt);
  assert.ok(!Number.isNaN(at), newer.text.slice(0, 200));
  assert.ok(at > Date.now() - 60_000 && at < Date.now() + 3100, `the instant ${newer.body.passwordsAt} is at most 3 s ahead`);
  // The next generation (not a rotation) carries no instant.
  const spec = (await h.admin.call('GET', '/v1/clusters/wake')).body.spec;
  assert.equal((await h.admin.call('PUT', '/v1/clusters/wake', { body: { ...spec, roles: [{ name: 'app' }] } })).status, 200);
  const next = await a!.client.call('GET', `/v1/agent/desired?after=${r.body.generation}&wait=0&features=passwords-at`);
  assert.equal(next.status, 200);
  assert.equal('passwordsAt' in next.body, false);
});
