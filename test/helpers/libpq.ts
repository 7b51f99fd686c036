// Real libpq clients for the end-to-end tests: psql run as the server's OS user (as the
// profile's client would be), and certificates from a CA the cluster does not trust.
import { execFile } from 'node:child_process';
import { chown, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { serverOsUser } from '../../shared/system/pgserver.ts';

const execFileAsync = promisify(execFile);

export interface PsqlResult {
  ok: boolean;
  stdout: string;
  /** libpq's or the server's message when the connection failed. */
  error: string;
}

/** psql with exactly this connection string, as the OS user that owns the client files. */
export async function psql(conninfo: string, sql: string, env: Record<string, string> = {}): Promise<PsqlResult> {
  const user = await serverOsUser();
  const asOther = process.getuid?.() === 0 && user.uid !== 0;
  try {
    const { stdout } = await execFileAsync('psql', [`${conninfo} connect_timeout=10`, '-X', '-w', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-c', sql], {
      ...(asOther ? { uid: user.uid, gid: user.gid } : {}),
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: user.home, PGPASSFILE: '/nonexistent', PGCONNECT_TIMEOUT: '10', ...env },
      cwd: '/',
      timeout: 30_000,
    });
    return { ok: true, stdout: stdout.trim(), error: '' };
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    return { ok: false, stdout: '', error: (err.stderr || err.message).trim() };
  }
}

/** Replace or drop keywords of a libpq key=value connection string (values without spaces). */
export function editConninfo(conninfo: string, changes: Record<string, string | null>): string {
  const parts = conninfo.match(/(\w+)=('(?:[^'\\]|\\.)*'|\S+)/g) ?? [];
  const map = new Map(parts.map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)]));
  for (const [k, v] of Object.entries(changes)) {
    if (v === null) map.delete(k);
    else map.set(k, v);
  }
  return [...map].map(([k, v]) => `${k}=${v}`).join(' ');
}

/** A CA the cluster does not know, and a client certificate from it, readable by the client user. */
export async function foreignClientCert(dir: string, commonName: string): Promise<{ cert: string; key: string; ca: string }> {
  await mkdir(dir, { recursive: true });
  const ssl = (...args: string[]) => execFileAsync('openssl', args, { cwd: dir });
  await ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'foreign-ca.key', '-out', 'foreign-ca.crt', '-days', '2', '-subj', '/CN=foreign-ca');
  await ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'foreign.key', '-out', 'foreign.csr', '-subj', `/CN=${commonName}`);
  await ssl('x509', '-req', '-in', 'foreign.csr', '-CA', 'foreign-ca.crt', '-CAkey', 'foreign-ca.key', '-CAcreateserial', '-out', 'foreign.crt', '-days', '1');
  const user = await serverOsUser();
  for (const f of ['foreign.crt', 'foreign.key', 'foreign-ca.crt']) {
    if (process.getuid?.() === 0) await chown(join(dir, f), user.uid, user.gid);
  }
  await writeFile(join(dir, 'done'), '');
  return { cert: join(dir, 'foreign.crt'), key: join(dir, 'foreign.key'), ca: join(dir, 'foreign-ca.crt') };
}
