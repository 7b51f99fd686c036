// Issue 14 review: the coordinator started as root acts on directories another OS user owns
// (the store's `pgaccord-store` owns <data>/pg, an older store's `postgres` owns the tree it
// migrates), and the agent started as root picks the user to become from PGDATA. None of them
// may follow what that user plants, nor be raced into it: each victim (a root directory, a root
// file) is shown unchanged. A race is made deterministic by running the attacker's step inside
// the fs call the code makes (node:fs/promises patched, syncBuiltinESMExports), and each test
// asserts that the attack was attempted, so none can pass by not reaching it. Run as root.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, readFile, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPgInstance, installOwned, lookupOsUser, ownedDir, storeOsUser, takeOwnership, type OsUser } from '../../shared/system/pgserver.ts';
import { pgdataOwner } from '../../agent/apply/privileges.ts';
import { waitFor } from '../helpers/agent-process.ts';

if (process.getuid?.() !== 0) throw new Error('these tests act as root against other OS users: run them as root');

const fsp = createRequire(import.meta.url)('node:fs/promises') as Record<string, (...a: unknown[]) => Promise<unknown>>;
const cleanup: string[] = [];
after(async () => {
  for (const d of cleanup) await rm(d, { recursive: true, force: true });
});

const nobody = await lookupOsUser('nobody');
const postgres = await lookupOsUser('postgres');
const store = await storeOsUser();

/** A root-owned 0755 directory for one test (mkdtemp makes 0700: the attacker must traverse it). */
async function top(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'pgaccord-store-paths-'));
  await chmod(d, 0o755);
  cleanup.push(d);
  return d;
}

/** A shell command as another OS user: what that user can do on its own. */
function as(user: OsUser, script: string): { ok: boolean; err: string } {
  const r = spawnSync('sh', ['-c', script], { uid: user.uid, gid: user.gid, cwd: '/', encoding: 'utf8' });
  return { ok: r.status === 0, err: r.stderr };
}

/** A victim directory (root, 0755) holding a victim file (root, 0600), and how to see both unchanged. */
async function victim(parent: string, fileName = 'secret') {
  const dir = join(parent, 'victim');
  await mkdir(dir, { mode: 0o755 });
  await chmod(dir, 0o755);
  const file = join(dir, fileName);
  await writeFile(file, 'root only\n', { mode: 0o600 });
  const seen = async () => {
    const [d, f] = [await stat(dir), await stat(file)];
    return { dir: [d.uid, d.gid, (d.mode & 0o7777).toString(8)], file: [f.uid, f.gid, (f.mode & 0o7777).toString(8), await readFile(file, 'utf8')] };
  };
  return { dir, file, seen, before: await seen() };
}

/** Run `attack` inside the named fs/promises call on `matches` paths (before or after the real call). */
async function withHook<T>(name: string, matches: (path: string) => boolean, when: 'before' | 'after', attack: (path: string) => void, run: () => Promise<T>): Promise<T> {
  const orig = fsp[name]!;
  fsp[name] = async (...a: unknown[]) => {
    const hit = typeof a[0] === 'string' && matches(a[0]);
    if (hit && when === 'before') attack(a[0] as string);
    const out = await orig(...a);
    if (hit && when === 'after') attack(a[0] as string);
    return out;
  };
  syncBuiltinESMExports();
  try {
    return await run();
  } finally {
    fsp[name] = orig;
    syncBuiltinESMExports();
  }
}

test('ownedDir: a socket directory swapped for a symlink by the owner of its parent is refused, the victim unchanged', async () => {
  const t = await top();
  const v = await victim(t);
  const base = join(t, 'base');
  await mkdir(base, { mode: 0o755 });
  await chown(base, nobody.uid, nobody.gid);
  const planted = as(nobody, `ln -s ${v.dir} ${base}/sock`);
  assert.ok(planted.ok, planted.err);
  await assert.rejects(ownedDir(join(base, 'sock'), nobody), /E_NOT_A_DIRECTORY|symlink/);
  assert.deepEqual(await v.seen(), v.before);
});

test('installOwned: a temp file swapped for a symlink between its creation and its chown: the victim unchanged', async () => {
  const t = await top();
  const v = await victim(t);
  const dir = join(t, 'data');
  await mkdir(dir, { mode: 0o700 });
  await chown(dir, nobody.uid, nobody.gid);
  const target = join(dir, 'pg_hba.conf');
  const attempts: boolean[] = [];
  // As nobody, who owns the directory: move our fresh temp file away, put a symlink in its place.
  const attack = (tmp: string) => attempts.push(as(nobody, `mv ${tmp} ${tmp}.moved && ln -s ${v.file} ${tmp}`).ok);
  const inDir = (p: string) => p.startsWith(`${dir}/`) && p !== target;
  await withHook('writeFile', inDir, 'after', attack, () =>
    withHook('open', inDir, 'after', attack, () => installOwned(target, 'local all all scram-sha-256\n', nobody).catch(() => undefined)),
  );
  assert.deepEqual(attempts, [true], 'the attacker swapped the temp file once');
  assert.deepEqual(await v.seen(), v.before);
});

test('createPgInstance: postgresql.conf swapped for a symlink by the server\'s user before root appends to it: the victim unchanged', async () => {
  const t = await top();
  const v = await victim(t);
  const base = join(t, 'node');
  const conf = join(base, 'data', 'postgresql.conf');
  const attempts: boolean[] = [];
  const attack = () => attempts.push(as(postgres, `mv ${conf} ${conf}.moved && ln -s ${v.file} ${conf}`).ok);
  const made = await withHook('writeFile', (p) => p === conf, 'before', attack, () =>
    withHook('open', (p) => p === conf, 'before', attack, () => createPgInstance({ baseDir: base, osUser: postgres, listen: '' }).then((pg) => pg, () => null)),
  );
  await made?.destroy();
  assert.deepEqual(attempts, [true], 'the attacker swapped postgresql.conf once');
  assert.deepEqual(await v.seen(), v.before);
  assert.equal(made, null, 'refused, not started on the planted file');
});

/** An older store's tree as `postgres` left it: pg/data/PG_VERSION. */
async function oldStore(t: string, pgMode: number, dataMode = 0o700): Promise<string> {
  const pg = join(t, 'pg');
  await mkdir(join(pg, 'data'), { recursive: true });
  await writeFile(join(pg, 'data', 'PG_VERSION'), '15\n', { mode: 0o600 });
  for (const p of [pg, join(pg, 'data'), join(pg, 'data', 'PG_VERSION')]) await chown(p, postgres.uid, postgres.gid);
  await chmod(pg, pgMode);
  await chmod(join(pg, 'data'), dataMode);
  return pg;
}

test('takeOwnership: postgres, with its store directory 0777, swaps data for a symlink mid-walk: the victim unchanged', async () => {
  const t = await top();
  const v = await victim(t, 'PG_VERSION');
  const pg = await oldStore(t, 0o777);
  const data = join(pg, 'data');
  const attempts: boolean[] = [];
  await withHook('readdir', (p) => p === data, 'before', () => attempts.push(as(postgres, `mv ${data} ${data}.old && ln -s ${v.dir} ${data}`).ok), () =>
    takeOwnership(pg, store).catch(() => undefined),
  );
  assert.equal(attempts.length, 1, 'the walk reached data and the attacker tried');
  assert.deepEqual(await v.seen(), v.before);
  assert.deepEqual(attempts, [false], 'the top directory was the store user\'s, 0700, before the walk went down');
  const st = await stat(pg);
  assert.deepEqual([st.uid, st.mode & 0o777], [store.uid, 0o700]);
});

test('takeOwnership: a directory writable by group or others below the top is refused before anything under it is touched', async () => {
  const t = await top();
  const pg = await oldStore(t, 0o700, 0o777);
  await assert.rejects(takeOwnership(pg, store), /E_STORE_DIR.*writable by its group or others/);
  assert.equal((await stat(join(pg, 'data', 'PG_VERSION'))).uid, postgres.uid);
});

test('the embedded store refuses to run as the postgres OS user: a clear error, no store created', async () => {
  const t = await top();
  const dataDir = join(t, 'coord');
  await mkdir(dataDir, { mode: 0o700 });
  await chown(dataDir, postgres.uid, postgres.gid);
  const script = `import('${join(process.cwd(), 'coordinator/main.ts')}').then((m) => m.startCoordinator({ dataDir: '${dataDir}', listen: '127.0.0.1:0', logLevel: 'silent' })).then(() => console.log('STARTED'), (e) => { console.error(String(e.message)); process.exit(3); });`;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { uid: postgres.uid, gid: postgres.gid, cwd: process.cwd(), env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: postgres.home }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  try {
    await waitFor('the coordinator as postgres exits or starts', () => child.exitCode !== null || out.includes('STARTED'), 120_000);
  } finally {
    if (child.exitCode === null) process.kill(-child.pid!, 'SIGKILL');
    if (existsSync(join(dataDir, 'pg', 'data', 'postmaster.pid'))) spawnSync('/usr/lib/postgresql/15/bin/pg_ctl', ['stop', '-m', 'immediate', '-D', join(dataDir, 'pg', 'data')], { uid: postgres.uid, gid: postgres.gid, cwd: '/' });
  }
  assert.equal(child.exitCode, 3, out);
  assert.match(out, /E_STORE_USER: .*postgres.*--database-url/);
  assert.equal(existsSync(join(dataDir, 'pg')), false, 'no store directory was created');
});

test('pgdataOwner: the uid is the opened directory\'s; a symlinked PGDATA is refused; a PGDATA swapped after the look is refused', async () => {
  const t = await top();
  const pgdata = join(t, 'pgdata');
  await mkdir(pgdata, { mode: 0o700 });
  await chown(pgdata, postgres.uid, postgres.gid);
  assert.equal((await pgdataOwner(pgdata)).uid, postgres.uid);
  const link = join(t, 'link');
  await symlink(pgdata, link);
  await assert.rejects(pgdataOwner(link), /E_PGDATA: .*symlink/);
  // Swapped for nobody's directory right after the first look at it: the owner the agent would
  // become must be that of the directory at the path, so this is refused, not answered "postgres".
  const other = join(t, 'other');
  await mkdir(other, { mode: 0o700 });
  await chown(other, nobody.uid, nobody.gid);
  let swapped = 0;
  const swap = async () => {
    if (swapped++ > 0) return;
    await rename(pgdata, `${pgdata}.was`);
    await rename(other, pgdata);
  };
  const hooks = ['lstat', 'open'];
  const origs = hooks.map((n) => fsp[n]!);
  hooks.forEach((n, i) => {
    fsp[n] = async (...a: unknown[]) => {
      const out = await origs[i]!(...a);
      if (a[0] === pgdata) await swap();
      return out;
    };
  });
  syncBuiltinESMExports();
  try {
    await assert.rejects(pgdataOwner(pgdata), /E_PGDATA/);
  } finally {
    hooks.forEach((n, i) => (fsp[n] = origs[i]!));
    syncBuiltinESMExports();
  }
  assert.equal(swapped, 1, 'the swap happened');
});
