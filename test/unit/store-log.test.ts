// A failed idle store connection is logged by its message and SQLSTATE only: node-postgres hangs
// its whole Client on the error (the backend's cancel key, the connection parameters), and a log
// is no place for either.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import pino from 'pino';
import { Store } from '../../coordinator/store/store.ts';
import { FailoverPool, parseStoreTargets, StoreHosts } from '../../coordinator/store/store-hosts.ts';

test('an idle connection failure logs the message and SQLSTATE, never the client it carries', async () => {
  const lines: string[] = [];
  const log = pino({ level: 'error' }, new Writable({ write: (chunk, _enc, done) => (lines.push(String(chunk)), done()) }));
  const hosts = new StoreHosts(parseStoreTargets({ connectionString: 'postgresql://pgaccord:s3cr3t-pw@127.0.0.1:1/store' }), log);
  const pool = new FailoverPool(hosts, { max: 1, queueWaitMs: 5000 });
  new Store(pool, hosts, log);
  const err = Object.assign(new Error('terminating connection due to administrator command'), {
    code: '57P01',
    client: { processID: 4242, secretKey: -2066972257, password: 's3cr3t-pw', connectionParameters: { user: 'pgaccord', password: 's3cr3t-pw' } },
  });
  pool.emit('error', err, err.client as never);
  await pool.end();
  const line = lines.find((l) => l.includes('idle database connection failed'));
  assert.ok(line, `no log line: ${lines.join('')}`);
  assert.match(line, /terminating connection due to administrator command/);
  assert.match(line, /57P01/);
  for (const secret of ['secretKey', '2066972257', 's3cr3t-pw', 'connectionParameters']) assert.ok(!line.includes(secret), `the log line carries ${secret}: ${line}`);
});
