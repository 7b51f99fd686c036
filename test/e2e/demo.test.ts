// The README's first command: `pgaccord demo` converges, prints the status and a working psql
// line, and removes what it made.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';

const run = promisify(execFile);

test('pgaccord demo converges, prints status and how to connect, and cleans up', async () => {
  const dir = `/tmp/pgaccord-demo-test-${process.pid}`;
  const { stdout } = await run(process.execPath, ['bin/pgaccord.mjs', 'demo', '--exit', '--dir', dir, '--timeout', '180'], { timeout: 300_000 });
  assert.match(stdout, /converged in [\d.]+ s/);
  assert.match(stdout, /cluster demo +generation 1 +auth cert +sslmode verify-full +CONVERGED/);
  for (const node of ['node-1', 'node-2', 'node-3']) assert.match(stdout, new RegExp(`${node} +1 +1 +converged .* 2/2 ok`));
  assert.match(stdout, /psql "host=127\.0\.0\.\d+ port=\d+ dbname=postgres user=pgd_replication sslmode=verify-full sslrootcert=\S+ sslcert=\S+ sslkey=\S+ sslcrl=\S+"/);
  assert.doesNotMatch(stdout, /password=|PRIVATE KEY/);
  assert.equal(existsSync(dir), false, 'the demo removed its working directory');
  const t = /converged in ([\d.]+) s/.exec(stdout)!;
  console.log(`# demo converged in ${t[1]} s`);
});
