// The coordinator's data directory: secrets 0600 from the start, the same CA on every start, and
// half a trust root is never silently replaced.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDataDir } from '../../coordinator/store/datadir.ts';

const dirs: string[] = [];
after(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

test('first start creates the CA, server certificate, master key and admin token; a restart reuses them', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'pgaccord-dd-'));
  dirs.push(dir);
  const first = await openDataDir(dir, ['127.0.0.1'], new Date());
  for (const f of ['coordinator-ca.key', 'server.key', 'master.key', 'admin.token']) {
    assert.equal((await stat(join(dir, f))).mode & 0o777, 0o600, f);
  }
  const second = await openDataDir(dir, ['127.0.0.1'], new Date());
  assert.equal(second.caPem, first.caPem);
  assert.equal(second.adminToken, first.adminToken);
  assert.ok(second.masterKey.equals(first.masterKey));
});

test('a missing ca.crt beside its key is refused, and the key is kept', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'pgaccord-dd-'));
  dirs.push(dir);
  await openDataDir(dir, [], new Date());
  const key = await readFile(join(dir, 'coordinator-ca.key'));
  await rm(join(dir, 'ca.crt'));
  await assert.rejects(openDataDir(dir, [], new Date()), /has coordinator-ca\.key but not ca\.crt/);
  assert.ok((await readFile(join(dir, 'coordinator-ca.key'))).equals(key), 'the CA key is untouched');
});

test('a secret readable by others is refused', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'pgaccord-dd-'));
  dirs.push(dir);
  await openDataDir(dir, [], new Date());
  await chmod(join(dir, 'master.key'), 0o644);
  await assert.rejects(openDataDir(dir, [], new Date()), /master\.key is readable by others/);
});
