// The runtime's own small files in the state directory (identity, last good desired state,
// certificate versions, local status): written atomically, with their mode (and owner) set
// before the rename, so they are never torn and never wider than asked, not even for an instant.
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { chmod, chown, mkdir, open, readFile, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

export interface Owner {
  uid: number;
  gid: number;
}

export const isRoot = (): boolean => process.getuid?.() === 0;

/**
 * Write `data` to `path` atomically: exclusive temp file in the same directory created with
 * `mode` (so a key is 0600 from the instant it exists), owner set while still private, fsync,
 * rename, fsync of the directory.
 */
export async function writeFileAtomic(path: string, data: string | Buffer, opts: { mode: number; owner?: Owner }): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, opts.mode);
  try {
    if (opts.owner && isRoot()) await fh.chown(opts.owner.uid, opts.owner.gid);
    await fh.chmod(opts.mode); // the umask may have narrowed it further; be exact
    await fh.writeFile(data);
    await fh.sync();
  } catch (e) {
    await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
  await fh.close();
  try {
    await rename(tmp, path);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
  await fsyncDir(dir);
}

export async function fsyncDir(dir: string): Promise<void> {
  const dh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

/** Create a directory (and parents) and make it exactly `mode`, owned by `owner` when root. */
export async function ensureDir(path: string, mode: number, owner?: Owner): Promise<void> {
  await mkdir(path, { recursive: true, mode });
  const st = await stat(path);
  if ((st.mode & 0o7777) !== mode) await chmod(path, mode);
  if (owner && isRoot() && (st.uid !== owner.uid || st.gid !== owner.gid)) await chown(path, owner.uid, owner.gid);
}

/** File contents, or null when it does not exist. */
export async function readIfExists(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

export async function removeIfExists(path: string): Promise<void> {
  await unlink(path).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw e;
  });
}
