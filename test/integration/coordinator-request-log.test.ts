// What the coordinator logs per request (issue 13: two synchronous lines per request at info were
// a fifth of its busy main thread): at info, no line per request, lifecycle lines and errors
// still; at debug, the request lines.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { enroll, pgdSpec, startHarness, type Harness } from '../helpers/coordinator-harness.ts';

let h: Harness;
before(async () => {
  h = await startHarness({ logLevel: 'info' });
});
after(async () => {
  await h?.close();
});

const records = async () => (await readFile(h.logFile, 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { msg: string; level: number; err?: unknown });
const PER_REQUEST = /^(incoming request|request completed)$/;

test('at info: no line per request (admin, enrolment, agent long-poll), the lifecycle and an error still logged', async () => {
  assert.equal((await h.admin.call('PUT', '/v1/clusters/logs', { body: pgdSpec('logs') })).status, 200);
  const n = await enroll(h, 'logs', 'node-1');
  const d = await n.client.call('GET', '/v1/agent/desired?after=0');
  assert.equal(d.status, 200, d.text);
  for (let i = 0; i < 3; i++) assert.equal((await h.anon.call('GET', '/healthz')).status, 200);
  assert.equal((await h.admin.call('GET', '/v1/clusters/logs/status')).status, 200);
  // An internal error (a spec changed behind the API) is still an error line.
  await h.coord.store.query(`UPDATE clusters SET spec = jsonb_set(spec, '{auth}', '"trust"') WHERE name = 'logs'`);
  assert.equal((await h.admin.call('GET', '/v1/clusters/logs')).status, 500);
  const lines = await records();
  assert.deepEqual(lines.filter((l) => PER_REQUEST.test(l.msg)).map((l) => l.msg), [], 'per-request lines at info');
  assert.ok(lines.some((l) => l.msg === 'coordinator listening' && l.level === 30), 'lifecycle at info');
  assert.ok(lines.some((l) => l.msg === 'agent enrolled' && l.level === 30), 'an enrolment (a certificate issued) at info');
  assert.ok(lines.some((l) => l.level === 50 && /stored spec of cluster "logs" is refused/.test(l.msg)), 'the 500 at error');

  // At debug, each request has its two lines.
  h.coord.log.level = 'debug';
  try {
    assert.equal((await h.anon.call('GET', '/healthz')).status, 200);
  } finally {
    h.coord.log.level = 'info';
  }
  const debug = (await records()).filter((l) => PER_REQUEST.test(l.msg));
  assert.deepEqual(debug.map((l) => [l.msg, l.level]), [['incoming request', 20], ['request completed', 20]]);
  await n.client.close();
});
