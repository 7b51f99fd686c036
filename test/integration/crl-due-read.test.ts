// Whether a cluster's CRL is due for its refresh is read from the store once until it can be due
// (issue 13): the check ran on every pass of every long-poll, two store queries of the ~14 an
// agent costs per change. A CRL that does fall due is still refreshed on the next poll.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { crlInfo } from '../../shared/crypto/crl.ts';
import { enroll, pgdSpec, startHarness, storeQueries, type Harness } from '../helpers/coordinator-harness.ts';

let h: Harness;
before(async () => {
  h = await startHarness();
  const put = await h.admin.call('PUT', '/v1/clusters/due', { body: pgdSpec('due') });
  assert.equal(put.status, 200, put.text);
});
after(() => h?.close());

/** Reads of "is the CRL due" while `work` runs. */
const dueReads = async (work: () => Promise<void>) => (await storeQueries(h, work)).filter((q) => /FROM clusters k LEFT JOIN cluster_crls r/.test(q)).length;

test('desired requests of a cluster whose CRL is not due read its due instant once; once it is due, the next poll refreshes it', async () => {
  const n = await enroll(h, 'due', 'node-1');
  const first = await n.client.call('GET', '/v1/agent/desired?after=0&wait=0');
  assert.equal(first.status, 200, first.text);
  const crlNumber = (pem: string) => crlInfo(pem).number ?? -1n;
  const number0 = crlNumber((first.body as { crl: string }).crl);
  const reads = await dueReads(async () => {
    for (let i = 0; i < 5; i++) {
      const r = await n.client.call('GET', `/v1/agent/desired?after=0&wait=0`);
      assert.equal(r.status, 200, r.text);
    }
  });
  assert.ok(reads <= 1, `${reads} reads of the CRL's due instant for 5 desired requests`);
  // Past half its validity (the coordinator's clock moved on): refreshed by the next poll, a new CRL and generation.
  const info = crlInfo((first.body as { crl: string }).crl);
  h.setClockOffset((info.nextUpdate!.getTime() - info.thisUpdate.getTime()) / 2 + 60_000);
  try {
    const r = await n.client.call('GET', `/v1/agent/desired?after=${first.body.generation}&wait=0`);
    assert.equal(r.status, 200, r.text);
    assert.ok(r.body.generation > first.body.generation, 'a new generation for the refreshed CRL');
    assert.ok(crlNumber((r.body as { crl: string }).crl) > number0, 'a new CRL');
  } finally {
    h.setClockOffset(0);
  }
});
