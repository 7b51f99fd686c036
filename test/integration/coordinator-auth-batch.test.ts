// Agent requests that arrive together share their store work (issue 13, renewal storm): each
// request's identity check and last_contact write were a query of their own, so 1,000 CSRs at
// once queued ~2,000 queries in the store pool, and a long-poll's own queries waited behind
// them all (checkout waits up to 0.8 s measured). Concurrent checks now go out as one query, and
// so do concurrent contact writes; every caller still gets its own verdict.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { certInfo } from '../../shared/crypto/x509.ts';
import { ApiError } from '../../coordinator/errors.ts';
import { enroll, pgdSpec, startHarness, type EnrolledNode, type Harness } from '../helpers/coordinator-harness.ts';

let h: Harness;
let nodes: EnrolledNode[];
let revoked: EnrolledNode;
before(async () => {
  h = await startHarness();
  const put = await h.admin.call('PUT', '/v1/clusters/batch', { body: pgdSpec('batch') });
  assert.equal(put.status, 200, put.text);
  nodes = [await enroll(h, 'batch', 'node-1'), await enroll(h, 'batch', 'node-2')];
  revoked = await enroll(h, 'batch', 'node-3');
  const r = await h.admin.call('POST', `/v1/clusters/batch/certificates/${certInfo(revoked.certPem).serial}/revoke`, { body: {} });
  assert.equal(r.status, 200, r.text);
});
after(() => h?.close());

/** Store queries whose text matches `pattern` while `work` runs. */
async function queriesDuring<T>(pattern: RegExp, work: () => Promise<T>): Promise<{ count: number; result: T }> {
  const pool = h.coord.store.pool;
  const query = pool.query.bind(pool);
  let count = 0;
  pool.query = ((q: string | { text: string }, ...rest: unknown[]) => {
    if (pattern.test(typeof q === 'string' ? q : q.text)) count++;
    return (query as (...a: unknown[]) => unknown)(q, ...rest);
  }) as typeof pool.query;
  try {
    const result = await work();
    return { count, result };
  } finally {
    delete (pool as { query?: unknown }).query;
  }
}

const serialOf = (n: EnrolledNode) => certInfo(n.certPem).serial;
const IDENTITY_READ = /^\s*SELECT\b[\s\S]*\bAS previous\b/;
const CONTACT_WRITE = /^\s*INSERT INTO node_status\b[\s\S]*last_contact/;

test('40 concurrent identity checks read the store at most twice, each with its own verdict', async () => {
  const calls = Array.from({ length: 40 }, (_, i) => {
    const n = i % 4 === 3 ? revoked : nodes[i % 2]!;
    const serial = i % 8 === 6 ? '00ff' : serialOf(n); // an unknown serial now and then
    return { n, serial, ok: n !== revoked && serial !== '00ff' };
  });
  const { count, result } = await queriesDuring(IDENTITY_READ, () => Promise.allSettled(
    calls.map((c) => h.coord.service.authenticateAgent({ cluster: 'batch', node: c.n.node }, c.serial)),
  ));
  result.forEach((r, i) => {
    const c = calls[i]!;
    if (c.ok) {
      assert.equal(r.status, 'fulfilled', `call ${i} (${c.n.node}): ${r.status === 'rejected' ? (r.reason as Error).message : ''}`);
      assert.deepEqual((r as PromiseFulfilledResult<unknown>).value, { cluster: 'batch', node: c.n.node, serial: c.serial });
    } else {
      assert.equal(r.status, 'rejected', `call ${i} (${c.n.node}, serial ${c.serial}) was refused`);
      const e = (r as PromiseRejectedResult).reason as ApiError;
      assert.ok(e instanceof ApiError && e.status === 401, `call ${i}: ${e.message}`);
    }
  });
  assert.ok(count <= 2, `${count} identity reads for 40 concurrent identity checks`);
});

test('40 concurrent contact writes write at most twice, and every node\'s last_contact moves on', async () => {
  const before = new Map((await h.coord.store.query<{ node: string; t: Date }>(
    `SELECT node, last_contact AS t FROM node_status WHERE cluster = 'batch'`,
  )).map((r) => [r.node, r.t.getTime()]));
  h.setClockOffset(60_000);
  try {
    const { count } = await queriesDuring(CONTACT_WRITE, () => Promise.all(
      Array.from({ length: 40 }, (_, i) => h.coord.service.recordContact({ cluster: 'batch', node: nodes[i % 2]!.node, serial: serialOf(nodes[i % 2]!) })),
    ));
    assert.ok(count <= 2, `${count} writes of last_contact for 40 concurrent contacts`);
    const after = await h.coord.store.query<{ node: string; t: Date }>(`SELECT node, last_contact AS t FROM node_status WHERE cluster = 'batch'`);
    for (const n of nodes) {
      const t = after.find((r) => r.node === n.node)?.t.getTime() ?? 0;
      assert.ok(t > (before.get(n.node) ?? 0) && t >= Date.now() + 30_000, `${n.node}: last_contact ${new Date(t).toISOString()} moved on`);
    }
  } finally {
    h.setClockOffset(0);
  }
});

test('a contact write of a node whose cluster is gone fails alone, not the ones written with it', async () => {
  const put = await h.admin.call('PUT', '/v1/clusters/gone', { body: pgdSpec('gone') });
  assert.equal(put.status, 200, put.text);
  const del = await h.admin.call('DELETE', '/v1/clusters/gone');
  assert.ok(del.status === 200 || del.status === 204, del.text);
  const results = await Promise.allSettled([
    h.coord.service.recordContact({ cluster: 'batch', node: 'node-1', serial: serialOf(nodes[0]!) }),
    h.coord.service.recordContact({ cluster: 'gone', node: 'node-1', serial: '01' }),
    h.coord.service.recordContact({ cluster: 'batch', node: 'node-2', serial: serialOf(nodes[1]!) }),
    h.coord.service.recordContact({ cluster: 'batch', node: 'node-1', serial: serialOf(nodes[0]!) }),
  ]);
  assert.deepEqual(results.map((r) => r.status), ['fulfilled', 'rejected', 'fulfilled', 'fulfilled']);
});
