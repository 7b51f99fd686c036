// The one atomic writer of the apply engine. Every managed file reaches the disk through
// installFile: exclusive temp file in the target directory (created 0600, so nothing is ever
// wider than asked, not even for an instant), write, fsync, owner and mode set on the open file,
// rename over the target, fsync of the directory. A reader (PostgreSQL, a restart, a crash
// recovery) sees the whole old file or the whole new one, never a prefix of either.
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { lstat, open, readdir, readFile, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** Prefix of every temp file we create: stale ones (from a SIGKILL) are removed by name. */
export const TEMP_PREFIX = '.pgaccord-tmp-';

export class InstallError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

export interface FileSpec {
  path: string;
  content: Buffer;
  /** Permission bits, e.g. 0o600. */
  mode: number;
  uid: number;
  gid: number;
}

/** What a file looked like before we touched it, to put it back byte for byte. */
export interface FileSnapshot {
  path: string;
  exists: boolean;
  content: Buffer;
  mode: number;
  uid: number;
  gid: number;
}

export const isRoot = (): boolean => process.getuid?.() === 0;

export async function snapshotFile(path: string): Promise<FileSnapshot> {
  try {
    const st = await lstat(path);
    if (!st.isFile()) throw new InstallError('E_NOT_A_FILE', `${path} is not a regular file`);
    const content = await readFile(path);
    return { path, exists: true, content, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { path, exists: false, content: Buffer.alloc(0), mode: 0, uid: -1, gid: -1 };
    throw e;
  }
}

/** True when the file already has exactly these bytes, this owner and this mode. */
export function matches(snap: FileSnapshot, spec: FileSpec): boolean {
  return snap.exists && snap.mode === spec.mode && snap.uid === spec.uid && snap.gid === spec.gid && snap.content.equals(spec.content);
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

function checkOwnership(spec: FileSpec): void {
  if (isRoot()) return;
  if (spec.uid !== process.getuid?.()) {
    throw new InstallError('E_PERMISSION', `cannot give ${spec.path} to uid ${spec.uid}: not running as root or as that user`);
  }
}

/**
 * Make `spec.path` hold exactly `spec.content` with its owner and mode. Returns false (and
 * writes nothing) when it already does. Any failure, including one to set owner or mode, is an
 * error: the target is then untouched.
 */
export async function installFile(spec: FileSpec): Promise<boolean> {
  if ((spec.mode & ~0o7777) !== 0) throw new InstallError('E_MODE', `bad mode ${spec.mode.toString(8)} for ${spec.path}`);
  const before = await snapshotFile(spec.path);
  if (matches(before, spec)) return false;
  checkOwnership(spec);
  const dir = dirname(spec.path);
  const tmp = join(dir, `${TEMP_PREFIX}${basename(spec.path)}.${process.pid}.${randomBytes(6).toString('hex')}`);
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600).catch((e: unknown) => {
    throw new InstallError('E_INSTALL', `cannot create a temporary file in ${dir}: ${(e as Error).message}`, { cause: e });
  });
  let renamed = false;
  try {
    await fh.writeFile(spec.content);
    await fh.sync();
    if (isRoot()) await fh.chown(spec.uid, spec.gid);
    await fh.chmod(spec.mode);
    await fh.close();
    await rename(tmp, spec.path);
    renamed = true;
    await fsyncDir(dir);
    return true;
  } catch (e) {
    if (e instanceof InstallError) throw e;
    throw new InstallError(
      (e as NodeJS.ErrnoException).code === 'EPERM' || (e as NodeJS.ErrnoException).code === 'EACCES' ? 'E_PERMISSION' : 'E_INSTALL',
      `cannot install ${spec.path}: ${(e as Error).message}`,
      { cause: e },
    );
  } finally {
    await fh.close().catch(() => undefined);
    if (!renamed) await unlink(tmp).catch(() => undefined);
  }
}

/** Remove a file (if present) and make the removal durable. Returns whether it existed. */
export async function removeFile(path: string): Promise<boolean> {
  try {
    await unlink(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw new InstallError('E_INSTALL', `cannot remove ${path}: ${(e as Error).message}`, { cause: e });
  }
  await fsyncDir(dirname(path));
  return true;
}

/** Put a file back exactly as the snapshot saw it (or remove it if it did not exist). */
export async function restoreFile(snap: FileSnapshot): Promise<boolean> {
  if (!snap.exists) return removeFile(snap.path);
  return installFile({ path: snap.path, content: snap.content, mode: snap.mode, uid: snap.uid, gid: snap.gid });
}

/** Remove temp files a killed writer left in `dir`. Only one apply runs at a time per node. */
export async function removeStaleTemps(dir: string): Promise<string[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const removed: string[] = [];
  for (const name of names) {
    if (!name.startsWith(TEMP_PREFIX)) continue;
    await unlink(join(dir, name)).catch(() => undefined);
    removed.push(join(dir, name));
  }
  if (removed.length > 0) await fsyncDir(dir);
  return removed;
}
