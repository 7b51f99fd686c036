// What one desired request costs the store (issue 13): at 10,000 agents the store's CPU is spent
// per query, so an agent's desired state is read in as few as hold. A warm desired request (its
// cluster's state compiled, its CRL not due) runs four: the identity check and last_contact
// (each shared with the requests arriving together), the cluster row, and one read of the trust
// files with the renewals asked of the node.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { enroll, pgdSpec, startHarness, type Harness } from '../helpers/coordinator-harness.ts';

let h: Harness;
before(async () => {
  h = await startHarness();
  const put = await h.admin.call('PUT', '/v1/clusters/q', { body: pgdSpec('q') });
  assert.equal(put.status, 200, put.text);
});
after(() => h?.close());

/** The store queries `work` makes, by their first words. */
async function queries(work: () => Promise<void>): Promise<string[]> {
  const pool = h.coord.store.pool;
  const query = pool.query.bind(pool);
  const seen: string[] = [];
  pool.query = ((q: string | { text: string }, ...rest: unknown[]) => {
    seen.push((typeof q === 'string' ? q : q.text).replace(/\s+/g, ' ').slice(0, 80));
    return (query as (...a: unknown[]) => unknown)(q, ...rest);
  }) as typeof pool.query;
  try {
    await work();
  } finally {
    delete (pool as { query?: unknown }).query;
  }
  return seen;
}

test('a warm desired request makes four store queries, renewals asked included', async () => {
  const n = await enroll(h, 'q', 'node-1');
  const first = await n.client.call('GET', '/v1/agent/desired?after=0&wait=0');
  assert.equal(first.status, 200, first.text);
  const seen = await queries(async () => {
    const r = await n.client.call('GET', '/v1/agent/desired?after=0&wait=0');
    assert.equal(r.status, 200, r.text);
  });
  assert.equal(seen.length, 4, `store queries of one desired request:\n${seen.join('\n')}`);
  // A renewal asked of the node still reaches it in that answer.
  const cert = (await h.coord.store.query<{ serial: string }>(`SELECT serial FROM certificates WHERE cluster = 'q' AND node = 'node-1' AND slot = 'identity'`))[0]!;
  await h.coord.store.query(`UPDATE certificates SET renew_requested_at = now() WHERE serial = $1`, [cert.serial]);
  const asked = await n.client.call('GET', '/v1/agent/desired?after=0&wait=0');
  assert.equal(asked.status, 200, asked.text);
  assert.deepEqual(asked.body.renewSerials, [cert.serial]);
});
