// A coordinator store made highly available, for the failover tests: a PostgreSQL 15 primary on
// loopback TCP (SCRAM for `postgres`, a `pgaccord` database) and a standby cloned from it with
// pg_basebackup -R, streaming synchronously. The caller stops both (destroy) when done.
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { appendFile, chmod, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createPgInstance, freePort, ownedDir, PgInstance, runPg } from '../../shared/system/pgserver.ts';
import { query } from './pg.ts';
import { waitFor } from './wait.ts';

export interface StorePair {
  primary: PgInstance;
  standby: PgInstance;
  password: string;
  /** postgresql://postgres:PW@127.0.0.1:P1,127.0.0.1:P2/pgaccord?target_session_attrs=read-write */
  url(p1?: number, p2?: number): string;
  /** SIGKILL the primary's postmaster and every backend: a server that dies, not one that stops. */
  killPrimary(): Promise<void>;
  promote(): Promise<void>;
  destroy(): Promise<void>;
}

export async function storePair(dir: string): Promise<StorePair> {
  const password = randomBytes(18).toString('base64url');
  await chmod(dir, 0o711); // the servers run as postgres when we are root: they must reach their dirs
  const primary = await createPgInstance({ baseDir: join(dir, 'store-1'), listen: '127.0.0.1', superuserPassword: password });
  let standby: PgInstance | null = null;
  try {
    await appendFile(join(primary.dataDir, 'pg_hba.conf'), 'host all postgres 127.0.0.1/32 scram-sha-256\nhost replication postgres 127.0.0.1/32 scram-sha-256\n');
    await primary.reload();
    await query(primary, 'CREATE DATABASE pgaccord');
    const user = primary.osUser;
    const base = join(dir, 'store-2');
    await ownedDir(base, user, 0o711);
    await ownedDir(join(base, 'sock'), user);
    const port = await freePort();
    await runPg('pg_basebackup', ['-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres', '-D', join(base, 'data'), '-R', '-X', 'stream', '-c', 'fast'], user, { env: { PGPASSWORD: password } });
    await appendFile(join(base, 'data', 'postgresql.conf'), `\nport = ${port}\nunix_socket_directories = '${join(base, 'sock')}'\n`);
    standby = new PgInstance(base, join(base, 'data'), join(base, 'sock'), '127.0.0.1', port, user, false, password);
    await standby.start();
    // Synchronous: a write acknowledged is on the standby before the primary can die (set after
    // the clone, so that the promoted standby does not wait for a standby of its own).
    await query(primary, `ALTER SYSTEM SET synchronous_standby_names = '*'`);
    await query(primary, 'SELECT pg_reload_conf()');
    await waitFor('the standby streaming synchronously', async () => (await query<{ s: string }>(primary, 'SELECT sync_state AS s FROM pg_stat_replication'))[0]?.s === 'sync', 30_000, 100, { throwEnds: true });
  } catch (e) {
    await Promise.all([primary.destroy(), standby?.destroy()]);
    throw e;
  }
  const s = standby;
  return {
    primary,
    standby: s,
    password,
    url: (p1 = primary.port, p2 = s.port) => `postgresql://postgres:${password}@127.0.0.1:${p1},127.0.0.1:${p2}/pgaccord?target_session_attrs=read-write`,
    async killPrimary() {
      const postmaster = Number((await readFile(join(primary.dataDir, 'postmaster.pid'), 'utf8')).split('\n')[0]);
      const children = execFileSync('ps', ['-o', 'pid=', '--ppid', String(postmaster)], { encoding: 'utf8' }).split('\n').map(Number).filter((n) => n > 0);
      for (const pid of [postmaster, ...children]) process.kill(pid, 'SIGKILL');
    },
    promote: () => runPg('pg_ctl', ['promote', '-w', '-t', '60', '-D', s.dataDir], s.osUser).then(() => undefined),
    destroy: () => Promise.all([primary.destroy(), s.destroy()]).then(() => undefined),
  };
}
