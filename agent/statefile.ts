// The runtime's own small files in the state directory (identity, last good desired state,
// certificate versions, local status): written atomically, with their mode (and owner) set
// before the rename, so they are never torn and never wider than asked, not even for an instant.
import { chmod, chown, mkdir, readFile, stat, unlink } from 'node:fs/promises';
import { fsyncDir, installFile, isRoot } from '../shared/atomic-file.ts';

export interface Owner {
  uid: number;
  gid: number;
}

/**
 * Write `data` to `path` through the one atomic writer (shared/atomic-file.ts): a key is 0600
 * from the instant it exists, owner and mode are set before the rename, and the directory is
 * synced. Without an owner the file belongs to the agent itself.
 */
export async function writeFileAtomic(path: string, data: string | Buffer, opts: { mode: number; owner?: Owner }): Promise<void> {
  const owner = opts.owner && isRoot() ? opts.owner : { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
  await installFile({ path, content: Buffer.isBuffer(data) ? data : Buffer.from(data, 'utf8'), mode: opts.mode, ...owner });
}

export { fsyncDir, isRoot };

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
