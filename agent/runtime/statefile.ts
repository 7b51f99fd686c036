// The runtime's own small files in the state directory (identity, last good desired state,
// certificate versions, local status): written atomically, with their mode (and owner) set
// before the rename, so they are never torn and never wider than asked, not even for an instant.
import { readFile } from 'node:fs/promises';
import { ensureDirectory, installFile, isRoot } from '../../shared/system/atomic-file.ts';

export interface Owner {
  uid: number;
  gid: number;
}

/**
 * Write `data` to `path` through the one atomic writer (shared/system/atomic-file.ts): a key is 0600
 * from the instant it exists, owner and mode are set before the rename, and the directory is
 * synced. Without an owner the file belongs to the agent itself.
 */
export async function writeFileAtomic(path: string, data: string | Buffer, opts: { mode: number; owner?: Owner }): Promise<void> {
  const owner = opts.owner && isRoot() ? opts.owner : { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
  await installFile({ path, content: Buffer.isBuffer(data) ? data : Buffer.from(data, 'utf8'), mode: opts.mode, ...owner });
}

/**
 * The agent's one rule for a directory it makes: 0700 (they hold keys, passwords, the desired
 * state), owned by `owner` (the PGDATA owner) when root, never through a symlink.
 */
export const PRIVATE_DIR_MODE = 0o700;

export function ensurePrivateDir(path: string, owner?: Owner): Promise<void> {
  return ensureDirectory(path, PRIVATE_DIR_MODE, owner);
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
