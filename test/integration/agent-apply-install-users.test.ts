// The one atomic writer as root (files given to the server's OS user) and running as the
// postgres user itself (works; giving a file to another user is an error, never a warning).
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, chown, lstat, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { installFile } from '../../shared/system/atomic-file.ts';
import { lookupOsUser } from '../../shared/system/pgserver.ts';

async function tmpdir(): Promise<string> {
  const d = await mkdtemp('/tmp/pgaccord-install-');
  after(() => rm(d, { recursive: true, force: true }));
  return d;
}

test('as root: files are given to the server user; as the postgres user: works, and giving a file away is an error', async () => {
  const pg = await lookupOsUser('postgres');
  const dir = await tmpdir();
  await chmod(dir, 0o755);
  await chown(dir, pg.uid, pg.gid);
  const path = join(dir, 'server.key');
  assert.equal(await installFile({ path, content: Buffer.from('k'), mode: 0o600, uid: pg.uid, gid: pg.gid }), true);
  const st = await lstat(path);
  assert.deepEqual([st.uid, st.gid, st.mode & 0o7777], [pg.uid, pg.gid, 0o600]);
  // Now the same writer running as postgres.
  const script = `
    import { installFile } from ${JSON.stringify(new URL('../../shared/system/atomic-file.ts', import.meta.url).pathname)};
    const dir = ${JSON.stringify(dir)};
    const own = await installFile({ path: dir + '/passfile', content: Buffer.from('p'), mode: 0o600, uid: ${pg.uid}, gid: ${pg.gid} });
    const same = await installFile({ path: dir + '/passfile', content: Buffer.from('p'), mode: 0o600, uid: ${pg.uid}, gid: ${pg.gid} });
    let refused = null;
    try { await installFile({ path: dir + '/root.key', content: Buffer.from('r'), mode: 0o600, uid: 0, gid: 0 }); } catch (e) { refused = e.code; }
    console.log(JSON.stringify({ own, same, refused }));
  `;
  const scriptPath = join(dir, 'as-postgres.mts');
  await writeFile(scriptPath, script, { mode: 0o644 });
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', scriptPath], { uid: pg.uid, gid: pg.gid, cwd: process.cwd(), env: { ...process.env, HOME: pg.home } });
  assert.deepEqual(JSON.parse(stdout.trim().split('\n').at(-1)!), { own: true, same: false, refused: 'E_PERMISSION' });
  assert.equal((await lstat(join(dir, 'passfile'))).uid, pg.uid);
  await assert.rejects(lstat(join(dir, 'root.key')), /ENOENT/);
});
