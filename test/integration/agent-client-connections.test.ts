// How many connections an agent holds on the coordinator (issue 13, fleet scale: each is a file
// descriptor of the coordinator, whose open-files limit bounds the fleet): its long-poll's, and a
// second one only while a report (or CSR) is made beside the held long-poll, closed once it is
// answered rather than kept idle for the coordinator's keep-alive. The real agent client
// (agent/runtime/client.ts) against a real coordinator over real TLS; the connections counted on
// the coordinator's port in /proc/net/tcp (this process is both ends: one side is enough).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import type { AgentStatus } from '../../shared/contract/status.ts';
import { certInfo } from '../../shared/crypto/x509.ts';
import { CoordinatorClient } from '../../agent/runtime/client.ts';
import { enroll, longPollsHeld, pgdSpec, startHarness, type Harness } from '../helpers/coordinator-harness.ts';
import { waitFor } from '../helpers/wait.ts';

let h: Harness;
before(async () => {
  // A long-poll longer than the test, so that it is held throughout.
  h = await startHarness({ longPollMs: 60_000 });
});
after(() => h?.close());

/** Established TCP connections whose local port is the coordinator's: its end of each one. */
function coordinatorConnections(port: number): number {
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  return ['/proc/net/tcp', '/proc/net/tcp6']
    .flatMap((f) => readFileSync(f, 'utf8').split('\n').slice(1))
    .map((l) => l.trim().split(/\s+/))
    .filter((c) => c.length > 3 && c[1]!.endsWith(`:${hex}`) && c[3] === '01').length;
}

const report = (generation: number): AgentStatus => ({
  generation, phase: 'converged', errors: [], files: [], servedCertificate: null, certificates: [], probes: [], pendingRestart: [],
  coordinatorReachable: true, versions: { agent: '0.1.0', postgres: '15.18' },
});

test('a report made beside the held long-poll: its connection is closed once it is answered, the long-poll\'s stays and answers', async () => {
  assert.equal((await h.admin.call('PUT', '/v1/clusters/conns', { body: pgdSpec('conns') })).status, 200);
  const n = await enroll(h, 'conns', 'node-1');
  // The test's own admin and anonymous connections closed: what remains is the agent's.
  await n.client.close();
  await h.admin.close();
  await h.anon.close();
  const port = h.coord.port;
  await waitFor('no connection left but the agent\'s', () => coordinatorConnections(port) === 0, 30_000, 20);
  const client = new CoordinatorClient({ baseUrl: h.coord.url, caPem: h.caPem, identity: { keyPem: n.keyPem, certPem: n.certPem, info: certInfo(n.certPem) } });
  try {
    const first = await client.desired(0, undefined, 0);
    assert.equal(first.kind, 'newer');
    const gen = (first as { body: { generation: number } }).body.generation;
    // Reported in turn (nothing held): the same connection.
    await client.status(report(gen));
    assert.equal(coordinatorConnections(port), 1);

    const polls = longPollsHeld(h);
    const held = client.desired(gen);
    await waitFor('the long-poll held', () => longPollsHeld(h) > polls, 30_000, 10);
    assert.equal(coordinatorConnections(port), 1, 'the long-poll on the connection it had');
    // Beside it: a second connection, for as long as the report takes.
    await client.status(report(gen));
    // The coordinator keeps an idle connection 10 s and undici its end 8 s: 3 s is neither.
    await waitFor('the report\'s connection closed', () => coordinatorConnections(port) === 1, 3000, 20);
    assert.equal(longPollsHeld(h), polls + 1, 'the long-poll still held');

    // The long-poll's connection still serves it: a change wakes it, nothing new is opened.
    const spec = { ...pgdSpec('conns'), roles: [{ name: 'conn_role' }] };
    const put = await fetchPut(spec);
    assert.equal(put, 200);
    const woke = await held;
    assert.equal(woke.kind, 'newer');
    await client.status(report(gen + 1));
    // (The PUT's own connection, closed by its client, is gone from the coordinator's side too.)
    await waitFor('one connection: the long-poll\'s, reused for the report in turn', () => coordinatorConnections(port) === 1, 3000, 20);
  } finally {
    await client.close();
  }
});

/** A PUT on a connection of its own, closed after (not to be counted as the agent's). */
async function fetchPut(spec: unknown): Promise<number> {
  const { Agent, request } = await import('undici');
  const d = new Agent({ connect: { ca: h.caPem } });
  try {
    const r = await request(`${h.coord.url}/v1/clusters/conns`, { method: 'PUT', dispatcher: d, headers: { authorization: `Bearer ${h.token}`, 'content-type': 'application/json' }, body: JSON.stringify(spec) });
    await r.body.text();
    return r.statusCode;
  } finally {
    await d.destroy();
  }
}
