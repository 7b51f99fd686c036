// The agent started as root becomes the PGDATA owner before it touches any path (issue 14):
// every file it later opens, writes, chowns or follows is then one that user could reach anyway,
// so a symlink the `postgres` OS user plants (in the state directory, in PGDATA) leads nowhere
// of root's. As root it only reads what root's operator gave it (the config file, the join token)
// and, when needed, hands its own state directory to the owner (see handOverStateDir).
import { constants } from 'node:fs';
import { lstat, mkdir, open, readdir, realpath } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { OsUser } from '../../shared/system/pgserver.ts';
import { passwdEntry } from '../../shared/system/passwd.ts';
import { CodedError } from '../../shared/contract/problem.ts';

/** Its message starts with its code, as the agent has always printed it. */
export class PrivilegeError extends CodedError {
  constructor(code: string, message: string) {
    super(code, `${code}: ${message}`);
  }
}

const S_ISVTX = 0o1000;

/**
 * Why a directory on a path root acts on lets a user other than root and `trusted` change what
 * the path names (rename an entry, plant a symlink), or null when it does not: it must be owned
 * by root or `trusted`, and writable by nobody else (a sticky directory such as /tmp is fine:
 * there only an entry's owner may rename or remove it).
 */
export function untrustedDir(path: string, st: { uid: number; mode: number }, trusted: number): string | null {
  if (st.uid !== 0 && st.uid !== trusted) return `${path} is owned by uid ${st.uid}`;
  if ((st.mode & 0o022) !== 0 && (st.mode & S_ISVTX) === 0) return `${path} is writable by its group or others (mode ${(st.mode & 0o7777).toString(8)})`;
  return null;
}

/** Every directory above `path`, from / down. */
export function ancestors(path: string): string[] {
  const out: string[] = [];
  for (let d = dirname(path); ; d = dirname(d)) {
    out.unshift(d);
    if (d === '/') return out;
  }
}

async function checkAncestors(path: string, trusted: number, what: string, code: string): Promise<void> {
  for (const dir of ancestors(path)) {
    const why = untrustedDir(dir, await lstat(dir), trusted);
    if (why) throw new PrivilegeError(code, `${what} ${path}: ${why}; started as root, the agent trusts only paths that root (or the PGDATA owner) controls`);
  }
}

/** The passwd entry of a uid (its primary group is what the agent runs with); without one, the directory's own uid and gid. */
export async function lookupUid(uid: number, fallbackGid: number): Promise<OsUser> {
  return (await passwdEntry(uid)) ?? { name: String(uid), uid, gid: fallbackGid, home: '/' };
}

/**
 * The user to become: the owner of PGDATA, which must be a real directory (not a symlink, no
 * symlink on its path) owned by someone other than root, under directories only root or that
 * owner control. Otherwise who owns "PGDATA" would be the choice of whoever can repoint it.
 * The owner is read from a descriptor of the directory (opened without following a symlink),
 * and the kernel's path of that descriptor must be --pgdata itself: the uid is that of the
 * directory the path names, not of one that stood there at an earlier look.
 */
export async function pgdataOwner(pgdata: string): Promise<OsUser> {
  const fh = await open(pgdata, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW).catch(async (e: NodeJS.ErrnoException) => {
    // A symlink opened O_DIRECTORY|O_NOFOLLOW fails ENOTDIR on Linux, ELOOP elsewhere.
    if ((e.code === 'ELOOP' || e.code === 'ENOTDIR') && (await lstat(pgdata).catch(() => null))?.isSymbolicLink()) throw new PrivilegeError('E_PGDATA', `--pgdata ${pgdata} is a symlink: give the directory itself (${await realpath(pgdata).catch(() => '?')})`);
    if (e.code === 'ENOTDIR') throw new PrivilegeError('E_PGDATA', `--pgdata ${pgdata} is not a directory`);
    throw new PrivilegeError('E_PGDATA', `--pgdata ${pgdata}: ${e.message}`);
  });
  try {
    const st = await fh.stat();
    if (st.uid === 0) throw new PrivilegeError('E_PGDATA', `--pgdata ${pgdata} is owned by root: PostgreSQL never runs as root, so this is not a data directory the agent may act for`);
    const real = await realpath(`/proc/self/fd/${fh.fd}`).catch(() => '?');
    if (real !== pgdata) throw new PrivilegeError('E_PGDATA', `--pgdata ${pgdata} has a symlink on its path, or was moved while being checked: give ${real}`);
    await checkAncestors(pgdata, st.uid, '--pgdata', 'E_PGDATA');
    return await lookupUid(st.uid, st.gid);
  } finally {
    await fh.close();
  }
}

/**
 * As root, before the drop: make sure the state directory exists and belongs to `user`, so the
 * agent can work in it once it is that user. Only a directory root alone controls the parents
 * of is acted on (created, or handed over if root owns it), through a descriptor opened without
 * following a symlink, so nothing another user planted is ever changed. A state directory
 * already owned by `user` is left to it.
 */
export async function handOverStateDir(stateDir: string, user: OsUser): Promise<'kept' | 'handed-over' | 'created'> {
  const st = await lstat(stateDir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw e;
  });
  if (st !== null && st.isSymbolicLink()) throw new PrivilegeError('E_STATE_DIR', `--state-dir ${stateDir} is a symlink; refused`);
  if (st !== null && !st.isDirectory()) throw new PrivilegeError('E_STATE_DIR', `--state-dir ${stateDir} is not a directory`);
  if (st !== null && st.uid === user.uid) return 'kept';
  if (st !== null && st.uid !== 0) throw new PrivilegeError('E_STATE_DIR', `--state-dir ${stateDir} is owned by uid ${st.uid}, neither root nor the PGDATA owner ${user.name}`);
  const parent = dirname(stateDir);
  // A parent of the owner's own: the agent makes the directory itself once it is that user.
  if (st === null && (await lstat(parent).catch(() => null))?.uid === user.uid) return 'kept';
  // Root acts here: every parent must be root's alone (the owner could swap a parent for a symlink).
  const realParent = await realpath(parent).catch(() => null);
  if (realParent !== parent) throw new PrivilegeError('E_STATE_DIR', `--state-dir ${stateDir}: its parent is missing or has a symlink on its path${realParent ? ` (${realParent})` : ''}; create it, owned by ${user.name}`);
  await checkAncestors(stateDir, 0, '--state-dir', 'E_STATE_DIR');
  if (st === null) await mkdir(stateDir, { mode: 0o700 }).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'EEXIST') throw e;
  });
  const fh = await open(stateDir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW).catch((e: NodeJS.ErrnoException) => {
    throw new PrivilegeError('E_STATE_DIR', `--state-dir ${stateDir}: ${e.code === 'ELOOP' ? 'is a symlink; refused' : e.message}`);
  });
  try {
    const now = await fh.stat();
    if (now.uid !== 0 && now.uid !== user.uid) throw new PrivilegeError('E_STATE_DIR', `--state-dir ${stateDir} is owned by uid ${now.uid}; refused`);
    await fh.chown(user.uid, user.gid);
    await fh.chmod(0o700);
  } finally {
    await fh.close();
  }
  return st === null ? 'created' : 'handed-over';
}

/**
 * After the drop: everything at the top of the state directory must be the agent's own. An agent
 * that ran as root before this version left root-owned files there (its identity); say how to
 * fix that instead of failing later on a permission error.
 */
export async function checkStateDirOwnership(stateDir: string, uid: number): Promise<void> {
  const names = await readdir(stateDir).catch(() => [] as string[]);
  const foreign: string[] = [];
  for (const name of names) {
    const st = await lstat(join(stateDir, name)).catch(() => null);
    if (st !== null && st.uid !== uid) foreign.push(`${name} (uid ${st.uid})`);
  }
  if (foreign.length > 0) {
    throw new PrivilegeError('E_STATE_DIR', `--state-dir ${stateDir} holds files the agent (uid ${uid}) does not own: ${foreign.join(', ')}. The agent runs as the PGDATA owner (started as root, it drops to that user): chown -R that user ${stateDir}`);
  }
}

/**
 * Become `user` for good: supplementary groups dropped (none of them is needed, and on Debian
 * postgres is in ssl-cert, which reads /etc/ssl/private), then the group, then the user. Checked
 * afterwards, including that root cannot be had back.
 */
export function dropPrivileges(user: OsUser): void {
  process.setgroups!([user.gid]);
  process.setgid!(user.gid);
  process.setuid!(user.uid);
  const ids = { uid: process.getuid!(), euid: process.geteuid!(), gid: process.getgid!(), egid: process.getegid!(), groups: process.getgroups!() };
  if (ids.uid !== user.uid || ids.euid !== user.uid || ids.gid !== user.gid || ids.egid !== user.gid || ids.groups.some((g) => g !== user.gid)) {
    throw new PrivilegeError('E_PRIVILEGE_DROP', `dropping to ${user.name} (uid ${user.uid}, gid ${user.gid}) left ${JSON.stringify(ids)}`);
  }
  let regained = true;
  try {
    process.setuid!(0);
  } catch {
    regained = false;
  }
  if (regained) throw new PrivilegeError('E_PRIVILEGE_DROP', 'after dropping privileges, setuid(0) succeeded');
  // Nothing may look for files in root's home any more.
  process.env.HOME = user.home;
  process.env.USER = user.name;
  process.env.LOGNAME = user.name;
}
