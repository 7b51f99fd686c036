// What the polls of one cluster cost the store when they pass together (issue 13): a change wakes
// every held poll of its cluster in one tick, and 10,000 agents' first requests arrive in bursts.
// The cluster row is read once for them (a read issued after each asked, as its own would be),
// and their trust files and renewals in one query; each still gets its own answer.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { CoordinatorService } from '../../coordinator/service.ts';
import { SecretBox } from '../../coordinator/store/secrets.ts';
import type { NodeDesired } from '../../shared/contract/schema.ts';
import { pgdSpec, startHarness, storeQueries, type Harness } from '../helpers/coordinator-harness.ts';
import { waitFor } from '../helpers/wait.ts';

let h: Harness;
let service: CoordinatorService;
before(async () => {
  h = await startHarness();
  const put = await h.admin.call('PUT', '/v1/clusters/t', { body: pgdSpec('t') });
  assert.equal(put.status, 200, put.text);
  // A service of its own on the same store (its queries go through the same pool, which storeQueries spies on).
  service = new CoordinatorService({
    store: h.coord.store, signing: h.coord.signing, box: new SecretBox(h.coord.dataDir.masterKey), coordinatorCa: h.coord.dataDir.ca, publicUrl: h.coord.url, log: pino({ level: 'silent' }),
  });
});
after(() => h?.close());

// The poll does not check the identity (authentication did): any serial serves here.
const agents = pgdSpec('t').nodes.map((n) => ({ cluster: 't', node: n.name, serial: '01' }));
const ROW_READ = /FROM clusters WHERE name = \$1$/;
const TRUST_READ = /FROM cluster_cas a LEFT JOIN ca_rotations r/;
const count = (seen: string[], re: RegExp) => seen.filter((q) => re.test(q)).length;

test('the nodes of a cluster asking together: one read of its row, one of their trust files and renewals', async () => {
  // Warm: the CRL's due date read, the generation's entry made.
  const warm = (await service.desired(agents[0]!, 0, undefined, 0)) as NodeDesired;
  let answers: NodeDesired[] = [];
  const seen = await storeQueries(h, async () => {
    answers = (await Promise.all(agents.map((a) => service.desired(a, 0, undefined, 0)))) as NodeDesired[];
  });
  assert.deepEqual(answers.map((d) => [d.node, d.generation]), agents.map((a) => [a.node, warm.generation]));
  assert.equal(count(seen, ROW_READ), 1, `cluster row reads of ${agents.length} requests together:\n${seen.join('\n')}`);
  assert.equal(count(seen, TRUST_READ), 1, `trust file reads of ${agents.length} requests together:\n${seen.join('\n')}`);
});

test('a wake of a cluster\'s held polls reads its row once', async () => {
  const generation = ((await service.desired(agents[0]!, 0, undefined, 0)) as NodeDesired).generation;
  const pool = h.coord.store.pool;
  const query = pool.query.bind(pool);
  let issued = 0;
  let done = 0;
  pool.query = ((q: string | { text: string }, ...rest: unknown[]) => {
    const counted = ROW_READ.test(typeof q === 'string' ? q : q.text);
    if (counted) issued++;
    const r = (query as (...a: unknown[]) => Promise<unknown>)(q, ...rest);
    if (counted) void r.then(() => done++, () => done++);
    return r;
  }) as typeof pool.query;
  const abort = new AbortController();
  let polls: Promise<unknown>[] = [];
  try {
    polls = agents.map((a) => service.desired(a, generation, abort.signal, 60_000));
    // Held: the first passes' reads have answered (the polls then wait, in the same tick).
    await waitFor('the polls held', () => service.longPollsHeld === agents.length && issued > 0 && done === issued);
    const before = issued;
    h.coord.store.events.emit('cluster', 't'); // a wake without a change: each poll passes once more...
    abort.abort(); // ...and then answers "nothing newer"
    assert.deepEqual(await Promise.all(polls), agents.map(() => null));
    assert.equal(issued - before, 1, `cluster row reads of ${agents.length} woken polls`);
  } finally {
    abort.abort();
    await Promise.allSettled(polls);
    delete (pool as { query?: unknown }).query;
  }
});
