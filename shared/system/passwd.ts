// The passwd database through getent(1) (files, LDAP, sssd: whatever NSS serves): one parser for
// every look-up, by name (the server's and the store's OS users) or by uid (the owner of PGDATA).
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** An OS user as the passwd database answers for it. */
export interface OsUser {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

/** name:passwd:uid:gid:gecos:home:shell, or null when the line is not one. An empty home is /. */
export function parsePasswdLine(line: string): OsUser | null {
  const f = line.trim().split(':');
  if (f.length < 7 || f[0] === '' || !/^\d+$/.test(f[2]!) || !/^\d+$/.test(f[3]!)) return null;
  return { name: f[0]!, uid: Number(f[2]), gid: Number(f[3]), home: f[5] || '/' };
}

/**
 * The entry of a user name or a uid, or null when there is none. getent reads a numeric key as
 * a uid: the entry must be the one asked for (the name "0" is not root).
 */
export async function passwdEntry(key: string | number): Promise<OsUser | null> {
  let stdout: string;
  try {
    ({ stdout } = await execFileAsync('getent', ['passwd', String(key)]));
  } catch {
    return null; // exit 2: no such entry
  }
  const entry = parsePasswdLine(stdout.split('\n')[0] ?? '');
  if (entry === null) return null;
  return (typeof key === 'number' ? entry.uid === key : entry.name === key) ? entry : null;
}
