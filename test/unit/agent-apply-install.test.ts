// The one atomic writer: exact bytes, owner and mode; nothing written when they already match;
// restore byte for byte; stale temp files swept; as root and as the postgres user.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { installFile, installFiles, InstallError, removeStaleTemps, restoreFile, snapshotFile, TEMP_PREFIX } from '../../shared/system/atomic-file.ts';

const me = { uid: process.getuid!(), gid: process.getgid!() };

async function tmpdir(): Promise<string> {
  const d = await mkdtemp('/tmp/pgaccord-install-');
  after(() => rm(d, { recursive: true, force: true }));
  return d;
}

test('writes exact bytes and mode, then skips when bytes, owner and mode already match', async () => {
  const dir = await tmpdir();
  const path = join(dir, 'passfile');
  assert.equal(await installFile({ path, content: Buffer.from('a:1:*:u:p\n'), mode: 0o600, ...me }), true);
  const st = await lstat(path);
  assert.equal(st.mode & 0o7777, 0o600);
  assert.equal(await readFile(path, 'utf8'), 'a:1:*:u:p\n');
  assert.equal(await installFile({ path, content: Buffer.from('a:1:*:u:p\n'), mode: 0o600, ...me }), false);
  assert.equal((await lstat(path)).ino, st.ino, 'untouched');
  // A mode change alone is a change, done by replacing the file atomically.
  await chmod(path, 0o644);
  assert.equal(await installFile({ path, content: Buffer.from('a:1:*:u:p\n'), mode: 0o600, ...me }), true);
  assert.equal((await lstat(path)).mode & 0o7777, 0o600);
  assert.notEqual((await lstat(path)).ino, st.ino);
  assert.deepEqual((await readdir(dir)).filter((n) => n.startsWith(TEMP_PREFIX)), []);
});

test('the mode is exact whatever the umask', async () => {
  const dir = await tmpdir();
  const old = process.umask(0o077);
  try {
    await installFile({ path: join(dir, 'ca.crt'), content: Buffer.from('x'), mode: 0o644, ...me });
  } finally {
    process.umask(old);
  }
  assert.equal((await lstat(join(dir, 'ca.crt'))).mode & 0o7777, 0o644);
});

test('snapshot and restore put a file back byte for byte with owner and mode, or remove a new one', async () => {
  const dir = await tmpdir();
  const path = join(dir, 'pg_hba.conf');
  await writeFile(path, 'old\n', { mode: 0o640 });
  await chmod(path, 0o640);
  const snap = await snapshotFile(path);
  await installFile({ path, content: Buffer.from('new\n'), mode: 0o600, ...me });
  await restoreFile(snap);
  assert.equal(await readFile(path, 'utf8'), 'old\n');
  assert.equal((await lstat(path)).mode & 0o7777, 0o640);
  const fresh = join(dir, 'pgaccord.conf');
  const none = await snapshotFile(fresh);
  assert.equal(none.exists, false);
  await installFile({ path: fresh, content: Buffer.from('x'), mode: 0o600, ...me });
  await restoreFile(none);
  await assert.rejects(lstat(fresh), /ENOENT/);
});

test('stale temp files of a killed writer are swept, nothing else', async () => {
  const dir = await tmpdir();
  await writeFile(join(dir, `${TEMP_PREFIX}pg_hba.conf.123.abcd`), 'half');
  await writeFile(join(dir, 'pg_hba.conf'), 'keep');
  assert.equal((await removeStaleTemps(dir)).length, 1);
  assert.deepEqual(await readdir(dir), ['pg_hba.conf']);
});

test('a group that fails while staging renames nothing and says so; the other file is untouched, no temp file left', async () => {
  const dir = await tmpdir();
  const cert = join(dir, 'client.crt');
  const blocker = join(dir, 'client.key'); // a directory where the key should go
  await writeFile(cert, 'old cert\n');
  await mkdir(blocker);
  await writeFile(join(blocker, 'x'), 'x');
  const err = await installFiles([
    { path: cert, content: Buffer.from('new cert\n'), mode: 0o644, ...me },
    { path: blocker, content: Buffer.from('new key\n'), mode: 0o600, ...me },
  ]).then(() => null, (e: unknown) => e);
  assert.ok(err instanceof InstallError, String(err));
  assert.deepEqual(err.renamed, [], 'so the caller restores nothing that did not change');
  assert.equal(await readFile(cert, 'utf8'), 'old cert\n');
  assert.deepEqual((await readdir(dir)).filter((n) => n.startsWith(TEMP_PREFIX)), []);
});
