// The store's primary turns read-only without going down (its connections stay up, e.g. demoted
// by hand), then the standby is promoted: the Store (in process, multi-host URL) refuses writes
// with E_STORE_UNAVAILABLE meanwhile, then writes to the new primary, and its LISTEN moves there
// with the pool (a NOTIFY sent on the new primary is heard), every waiter woken to re-read.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import pg from 'pg';
import pino from 'pino';
import { NOTIFY_CHANNEL, Store } from '../../coordinator/store/store.ts';
import { StoreUnavailableError } from '../../coordinator/store/store-hosts.ts';
import { query } from '../helpers/pg.ts';
import { storePair } from '../helpers/store-pair.ts';
import { waitFor } from '../helpers/wait.ts';

test('a primary turned read-only: writes refused with 503, then on the promoted standby, LISTEN moved with them', async () => {
  const dir = await mkdtemp('/tmp/pgaccord-store-ro-');
  const pair = await storePair(dir);
  after(async () => {
    await pair.destroy();
    await rm(dir, { recursive: true, force: true });
  });
  const store = await Store.open({ connectionString: pair.url() }, pino({ level: 'silent' }));
  after(() => store.close());
  const write = () => store.query(`INSERT INTO meta (key, value) VALUES ('failover-test', now()::text) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value`);
  await write();
  assert.equal(store.hosts.host.name, `127.0.0.1:${pair.primary.port}`);
  // Pooled connections to the primary stay open across this: only their writes start failing.
  assert.ok(store.pool.totalCount > 0);

  await query(pair.primary, 'ALTER SYSTEM SET default_transaction_read_only = on');
  await query(pair.primary, 'SELECT pg_reload_conf()');
  await waitFor('the primary read-only', async () => (await query<{ r: string }>(pair.primary, "SELECT current_setting('default_transaction_read_only') AS r"))[0]?.r === 'on', 10_000, 100, { throwEnds: true });
  for (const attempt of [write, () => store.tx((c) => c.query(`UPDATE meta SET value = 'x' WHERE key = 'failover-test'`))]) {
    const e = await attempt().then(() => null, (err: unknown) => err);
    assert.ok(e instanceof StoreUnavailableError, `refused as unavailable: ${String(e)}`);
    assert.equal(e.status, 503);
    assert.equal(e.code, 'E_STORE_UNAVAILABLE');
  }

  const woken: string[] = [];
  store.events.on('cluster', (c: string) => woken.push(c));
  await pair.promote();
  await waitFor('a write on the promoted standby', async () => write().then(() => true, (e: unknown) => {
    if (!(e instanceof StoreUnavailableError)) throw e;
    return false;
  }), 15_000, 100, { throwEnds: true });
  assert.equal(store.hosts.host.name, `127.0.0.1:${pair.standby.port}`);
  // Its LISTEN followed: a NOTIFY on the new primary is heard (sent until it is, LISTEN may take a moment).
  const other = new pg.Client(pair.standby.socketConfig('pgaccord'));
  await other.connect();
  try {
    await waitFor('a NOTIFY on the new primary heard', async () => {
      await other.query('SELECT pg_notify($1, $2)', [NOTIFY_CHANNEL, 'heard-there']);
      return woken.includes('heard-there');
    }, 15_000, 200, { throwEnds: true });
  } finally {
    await other.end();
  }
  // Every waiter was woken to re-read when the LISTEN connection moved.
  assert.ok(woken.indexOf('*') !== -1 && woken.indexOf('*') < woken.indexOf('heard-there'), `wake-ups: ${woken.join(', ')}`);
});
