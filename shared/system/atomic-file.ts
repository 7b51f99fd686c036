// The one atomic writer, for the agent and the coordinator alike. Every managed file reaches the disk through
// installFile: exclusive temp file in the target directory (created 0600, so nothing is ever
// wider than asked, not even for an instant), write, fsync, owner and mode set on the open file,
// rename over the target, fsync of the directory. A reader (PostgreSQL, a restart, a crash
// recovery) sees the whole old file or the whole new one, never a prefix of either.
import { randomBytes } from 'node:crypto';
import { constants, renameSync } from 'node:fs';
import { lstat, mkdir, open, readdir, readFile, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { CodedError } from '../contract/problem.ts';

/** Prefix of every temp file we create: stale ones (from a SIGKILL) are removed by name. */
export const TEMP_PREFIX = '.pgaccord-tmp-';

export class InstallError extends CodedError {
  /** installFiles: the targets already replaced when a later rename failed (the rest untouched). */
  renamed: string[] = [];
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

/**
 * Make `path` a directory of exactly `mode` (owned by `owner` when we are root). The last
 * component is opened without following a symlink (O_NOFOLLOW) and owner and mode are set on
 * that descriptor, so a directory swapped for a symlink, before or after the check, is refused
 * (E_NOT_A_DIRECTORY) and nothing it points to changes. O_NOFOLLOW covers only that component:
 * the parents are trusted by the caller. They hold for the agent, which calls this only after it
 * dropped to the PGDATA owner (agent/apply/privileges.ts), so a symlink among them can lead only where
 * that user could go anyway; for the coordinator as root, the parents are its own data directory
 * (root's) and <data>/pg, whose owner can change only its own entries, the last component.
 */
export async function ensureDirectory(path: string, mode: number, owner?: { uid: number; gid: number }): Promise<void> {
  if ((mode & ~0o7777) !== 0) throw new InstallError('E_MODE', `bad mode ${mode.toString(8)} for ${path}`);
  await mkdir(path, { recursive: true, mode }).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'EEXIST') throw asInstallError(e, path);
  });
  const fh = await open(path, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW).catch(async (e: NodeJS.ErrnoException) => {
    if (e.code !== 'ELOOP' && e.code !== 'ENOTDIR') throw asInstallError(e, path);
    const link = (await lstat(path).catch(() => null))?.isSymbolicLink() ?? false;
    throw new InstallError('E_NOT_A_DIRECTORY', `${path} is ${link ? 'a symlink' : 'not a directory'}: refused, nothing followed`, { cause: e });
  });
  try {
    const st = await fh.stat();
    if (owner && isRoot() && (st.uid !== owner.uid || st.gid !== owner.gid)) await fh.chown(owner.uid, owner.gid);
    if ((st.mode & 0o7777) !== mode) await fh.chmod(mode);
  } catch (e) {
    throw asInstallError(e, path);
  } finally {
    await fh.close();
  }
}

export async function fsyncDir(dir: string): Promise<void> {
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

/** A temp file fully written, synced, owned and moded, waiting for its rename. */
interface Staged {
  spec: FileSpec;
  tmp: string;
}

async function stage(spec: FileSpec): Promise<Staged | null> {
  if ((spec.mode & ~0o7777) !== 0) throw new InstallError('E_MODE', `bad mode ${spec.mode.toString(8)} for ${spec.path}`);
  const before = await snapshotFile(spec.path);
  if (matches(before, spec)) return null;
  checkOwnership(spec);
  const dir = dirname(spec.path);
  const tmp = join(dir, `${TEMP_PREFIX}${basename(spec.path)}.${process.pid}.${randomBytes(6).toString('hex')}`);
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600).catch((e: unknown) => {
    throw new InstallError('E_INSTALL', `cannot create a temporary file in ${dir}: ${(e as Error).message}`, { cause: e });
  });
  try {
    await fh.writeFile(spec.content);
    await fh.sync();
    if (isRoot()) await fh.chown(spec.uid, spec.gid);
    await fh.chmod(spec.mode);
    await fh.close();
    return { spec, tmp };
  } catch (e) {
    await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw asInstallError(e, spec.path);
  }
}

function asInstallError(e: unknown, path: string): InstallError {
  if (e instanceof InstallError) return e;
  const code = (e as NodeJS.ErrnoException).code;
  return new InstallError(code === 'EPERM' || code === 'EACCES' ? 'E_PERMISSION' : 'E_INSTALL', `cannot install ${path}: ${(e as Error).message}`, { cause: e });
}

/**
 * Make `spec.path` hold exactly `spec.content` with its owner and mode. Returns false (and
 * writes nothing) when it already does. Any failure, including one to set owner or mode, is an
 * error: the target is then untouched.
 */
export async function installFile(spec: FileSpec): Promise<boolean> {
  const [changed] = await installFiles([spec]);
  return changed!;
}

/**
 * installFile for files a reader opens one after the other and that must match (a client
 * certificate and its key under fixed names): every temp file is written, synced, owned and
 * moded first, then the renames follow back to back (in the given order, no I/O between them),
 * then each directory is synced once. Two renames are never one atomic step; this only shrinks
 * the window in which a reader can see one new file and one old one from the time it takes to
 * write and sync a file to the time between two rename() calls (see docs/profiles.md). If a
 * rename fails, the files already renamed stay new (the next apply, or the caller's restore,
 * settles them). Returns, per spec, whether it was written.
 */
export async function installFiles(specs: FileSpec[]): Promise<boolean[]> {
  return (await stageFiles(specs)).commit();
}

/** Files written, synced, owned and moded under temporary names: commit() puts them in place (installFiles' second half), abort() removes them. */
export interface StagedFiles {
  commit(): Promise<boolean[]>;
  abort(): Promise<void>;
}

/**
 * installFiles in two halves, for a switch at an instant (a password rotation): the slow half
 * (write and sync) before it, only the renames at it.
 */
export async function stageFiles(specs: FileSpec[]): Promise<StagedFiles> {
  const staged: (Staged | null)[] = [];
  const abort = async () => {
    for (const s of staged) if (s !== null) await unlink(s.tmp).catch(() => undefined);
  };
  try {
    for (const spec of specs) staged.push(await stage(spec));
  } catch (e) {
    await abort();
    throw e;
  }
  const commit = async (): Promise<boolean[]> => {
    let i = 0;
    try {
      for (; i < staged.length; i++) {
        const s = staged[i];
        // synchronous on purpose: no trip through the event loop and the thread pool between two renames
        if (s !== null) renameSync(s.tmp, s.spec.path);
      }
      for (const dir of new Set(staged.filter((s): s is Staged => s !== null).map((s) => dirname(s.spec.path)))) await fsyncDir(dir);
      return staged.map((s) => s !== null);
    } catch (e) {
      for (const s of staged.slice(i)) if (s !== null) await unlink(s.tmp).catch(() => undefined);
      const err = asInstallError(e, staged[Math.min(i, staged.length - 1)]?.spec.path ?? '');
      err.renamed = staged.slice(0, i).filter((s): s is Staged => s !== null).map((s) => s.spec.path);
      throw err;
    }
  };
  return { commit, abort };
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
