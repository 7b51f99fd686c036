// Every connection of the store's pool busy is a queue, not a failover (issue 13). At 10,000
// agents a PUT waited its turn behind the agents' queries for more than the 5 s the pool gave a
// checkout, and that wait was read as the store failing: a rescan of the hosts (each one drops
// every pooled connection, to be made again), and the PUT answered 503 E_STORE_UNAVAILABLE. A
// checkout now waits its turn; only a wait beyond the pool's queue bound is refused, as 503
// E_STORE_BUSY, and that is not a failover either.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import pino from 'pino';
import { Store } from '../../coordinator/store/store.ts';
import { ApiError } from '../../coordinator/errors.ts';
import { query, throwawayStore } from '../helpers/pg.ts';
import { waitFor } from '../helpers/wait.ts';

const { db, databaseUrl } = await throwawayStore();

/** Every connection of the pool made and running `sleep` seconds; resolves once all are out. */
async function occupyAll(store: Store, sleepS: number): Promise<Promise<unknown>[]> {
  const max = store.pool.options.max;
  const busy = Array.from({ length: max }, () => store.query('SELECT pg_sleep($1)', [sleepS]));
  // Running in the server (not only counted by the pool, which counts a connection while it is made).
  const sleeping = async () => (await query<{ n: number }>(db, `SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep%'`))[0]!.n;
  await waitFor('every pooled connection busy', async () => (await sleeping()) === max, 10_000, 20, { throwEnds: true });
  return busy;
}

/** A query and a transaction behind every busy connection, each refused as 503 E_STORE_BUSY. */
async function expectBusy(store: Store): Promise<void> {
  for (const [what, attempt] of [['query', () => store.query('SELECT 1')], ['tx', () => store.tx((c) => c.query('SELECT 1'))]] as const) {
    const e = await attempt().then(() => null, (err: unknown) => err);
    assert.ok(e instanceof ApiError, `${what} refused: ${String(e)}`);
    assert.deepEqual([e.status, e.code], [503, 'E_STORE_BUSY'], what);
    assert.match(e.message, /busy/, what);
  }
}

test('a query behind every busy connection waits its turn past the old 5 s checkout bound and is answered: no rescan, no connection made again', async () => {
  const store = await Store.open({ connectionString: databaseUrl }, pino({ level: 'silent' }));
  after(() => store.close());
  const epoch = store.hosts.epoch;
  const busy = await occupyAll(store, 6);
  let made = 0;
  store.pool.on('connect', () => (made += 1));
  const rows = await store.query<{ ok: number }>('SELECT 1 AS ok');
  assert.deepEqual(rows, [{ ok: 1 }]);
  await Promise.all(busy);
  assert.equal(store.hosts.epoch, epoch, 'the hosts were not rescanned (a rescan drops every pooled connection)');
  assert.equal(made, 0, 'no connection was made again');
});

test('a wait beyond the queue bound is refused as 503 E_STORE_BUSY, and is not a failover', async () => {
  const store = await Store.open({ connectionString: databaseUrl }, pino({ level: 'silent' }), { queueWaitMs: 500 });
  after(() => store.close());
  const epoch = store.hosts.epoch;
  const busy = await occupyAll(store, 3);
  await expectBusy(store);
  await Promise.all(busy);
  assert.equal(store.hosts.epoch, epoch, 'the hosts were not rescanned');
  assert.deepEqual(await store.query('SELECT 1 AS ok'), [{ ok: 1 }]);
});

// Since f2cc613 the pool is given no queue timeout of its own (no connectionTimeoutMillis): a
// queued checkout is bounded by our timer alone, so pg-pool's "timeout exceeded" never comes and
// the rewording below is a guard only, failing should the pool be given its own timeout again
// (whose error was known by its text alone). What this test pins beside the one above: a queued
// checkout ends as E_STORE_BUSY whatever pg-pool's wording, and the connection it gave up on,
// when it comes, goes back to the pool (none left waiting, every connection idle again).
test('a queued checkout ends as E_STORE_BUSY by our own bound whatever pg-pool\'s wording (no failover), and the connection it gave up on comes back to the pool', async () => {
  const store = await Store.open({ connectionString: databaseUrl }, pino({ level: 'silent' }), { queueWaitMs: 500 });
  after(() => store.close());
  // A pg-pool that words a queue timeout otherwise (the checkout FailoverPool makes is pg.Pool's connect).
  const proto = pg.Pool.prototype as unknown as { connect(this: pg.Pool, cb?: unknown): unknown };
  const original = proto.connect;
  proto.connect = function (this: pg.Pool, cb?: unknown) {
    const r = original.call(this, cb);
    return cb === undefined && r instanceof Promise
      ? r.catch((e: unknown) => {
        throw e instanceof Error && /timeout exceeded/.test(e.message) ? new Error('gave up waiting for an idle client') : e;
      })
      : r;
  };
  try {
    const epoch = store.hosts.epoch;
    const busy = await occupyAll(store, 3);
    await expectBusy(store);
    assert.equal(store.hosts.epoch, epoch, 'the hosts were not rescanned');
    await Promise.all(busy);
    const pool = store.pool;
    await waitFor('every connection idle again, none waiting', () => pool.waitingCount === 0 && pool.idleCount === pool.totalCount && pool.totalCount === pool.options.max, 10_000, 20);
    assert.deepEqual(await store.query('SELECT 1 AS ok'), [{ ok: 1 }]);
  } finally {
    proto.connect = original;
  }
});
