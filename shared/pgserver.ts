// Start and stop PostgreSQL servers of our own: the coordinator's embedded store, the demo's
// nodes and the test harness all use this. When we run as root, PostgreSQL runs as the
// `postgres` OS user (it refuses to run as root).
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { confName, confString } from './escape.ts';

const execFileAsync = promisify(execFile);

export interface OsUser {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

/** The OS user PostgreSQL runs as: `postgres` when we are root, ourselves otherwise. */
export async function serverOsUser(): Promise<OsUser> {
  if (process.getuid?.() !== 0) {
    const me = userInfo();
    return { name: me.username, uid: me.uid, gid: me.gid, home: me.homedir };
  }
  return lookupOsUser('postgres');
}

export async function lookupOsUser(name: string): Promise<OsUser> {
  const { stdout } = await execFileAsync('getent', ['passwd', name]).catch(() => {
    throw new Error(`OS user "${name}" does not exist (install the postgresql packages, or create it)`);
  });
  const [, , uid, gid, , home] = stdout.trim().split(':');
  return { name, uid: Number(uid), gid: Number(gid), home: home ?? '/' };
}

export function pgBinDir(): string {
  const candidates = [process.env.PGACCORD_PG_BIN, '/usr/lib/postgresql/15/bin', '/usr/local/pgsql/bin'].filter(Boolean) as string[];
  const found = candidates.find((d) => existsSync(join(d, 'initdb')));
  if (!found) throw new Error('PostgreSQL 15 server binaries not found: install postgresql-15 or set PGACCORD_PG_BIN');
  return found;
}

/** Run a PostgreSQL binary as the server's OS user. */
export async function runPg(bin: string, args: string[], user: OsUser, opts: { env?: Record<string, string> } = {}): Promise<string> {
  const asOther = process.getuid?.() === 0 && user.uid !== 0;
  try {
    const { stdout } = await execFileAsync(join(pgBinDir(), bin), args, {
      ...(asOther ? { uid: user.uid, gid: user.gid } : {}),
      env: { ...process.env, HOME: user.home, LC_ALL: 'C', ...opts.env },
      cwd: '/',
      maxBuffer: 16 * 1024 * 1024,
    });
    return stdout;
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`${bin} ${args[0] ?? ''} failed: ${(err.stderr || err.message).trim()}`);
  }
}

export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

/** Make a directory owned by the server's OS user (mode 0700 unless told otherwise). */
export async function ownedDir(path: string, user: OsUser, mode = 0o700): Promise<void> {
  await mkdir(path, { recursive: true, mode }); // never wider than asked, not even for an instant
  await chmod(path, mode); // an existing directory, or the umask's narrowing: exactly this mode
  if (process.getuid?.() === 0) await chown(path, user.uid, user.gid);
}

export interface PgInstanceOptions {
  /** Parent directory; a fresh temporary one when absent. */
  baseDir?: string;
  /** TCP address to listen on; '' for Unix socket only. */
  listen?: string;
  port?: number;
  /** Extra settings appended to postgresql.conf at creation. */
  settings?: Record<string, string>;
}

export class PgInstance {
  constructor(
    readonly baseDir: string,
    readonly dataDir: string,
    readonly socketDir: string,
    readonly listen: string,
    readonly port: number,
    readonly osUser: OsUser,
    private readonly ownsBaseDir: boolean,
  ) {}

  /** libpq/pg connection settings over the private Unix socket as the bootstrap superuser. */
  socketConfig(database = 'postgres'): { host: string; port: number; user: string; database: string } {
    return { host: this.socketDir, port: this.port, user: 'postgres', database };
  }

  get logFile(): string {
    return join(this.baseDir, 'postgres.log');
  }

  async start(): Promise<void> {
    await runPg('pg_ctl', ['start', '-w', '-t', '60', '-D', this.dataDir, '-l', this.logFile, '-o', `-p ${this.port}`], this.osUser);
  }

  async stop(mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    if (!existsSync(join(this.dataDir, 'postmaster.pid'))) return;
    await runPg('pg_ctl', ['stop', '-w', '-t', '60', '-m', mode, '-D', this.dataDir], this.osUser);
  }

  async restart(): Promise<void> {
    await runPg('pg_ctl', ['restart', '-w', '-t', '60', '-m', 'fast', '-D', this.dataDir, '-l', this.logFile, '-o', `-p ${this.port}`], this.osUser);
  }

  async reload(): Promise<void> {
    await runPg('pg_ctl', ['reload', '-D', this.dataDir], this.osUser);
  }

  /** Stop the server and remove everything this instance created. */
  async destroy(): Promise<void> {
    await this.stop('immediate').catch(() => undefined);
    await rm(this.ownsBaseDir ? this.baseDir : this.dataDir, { recursive: true, force: true });
  }
}

/**
 * initdb a fresh cluster: superuser `postgres`, local connections trusted (the socket lives in a
 * 0700 directory, so only the server's OS user and root can reach it), TCP rejected until the
 * agent (or the caller) writes rules.
 */
export async function createPgInstance(opts: PgInstanceOptions = {}): Promise<PgInstance> {
  const user = await serverOsUser();
  const ownsBaseDir = opts.baseDir === undefined;
  const baseDir = opts.baseDir ?? (await mkdtemp('/tmp/pgaccord-pg-'));
  await ownedDir(baseDir, user, 0o711);
  const dataDir = join(baseDir, 'data');
  const socketDir = join(baseDir, 'sock');
  await ownedDir(socketDir, user);
  const listen = opts.listen ?? '127.0.0.1';
  const port = opts.port ?? (await freePort(listen || '127.0.0.1'));
  await runPg('initdb', ['-D', dataDir, '-U', 'postgres', '--auth-local=trust', '--auth-host=reject', '-E', 'UTF8', '--locale=C', '--no-sync'], user);
  const conf = {
    listen_addresses: listen,
    port: String(port),
    unix_socket_directories: socketDir,
    fsync: 'on',
    logging_collector: 'off',
    log_connections: 'on',
    max_connections: '50',
    shared_buffers: '16MB',
    ...opts.settings,
  };
  const lines = Object.entries(conf).map(([k, v]) => `${confName(k)} = ${confString(v)}`);
  await writeFile(join(dataDir, 'postgresql.conf'), `\n# instance settings\n${lines.join('\n')}\n`, { flag: 'a' });
  const instance = new PgInstance(baseDir, dataDir, socketDir, listen, port, user, ownsBaseDir);
  await instance.start();
  return instance;
}

/**
 * A long-lived instance at a fixed directory (the coordinator's embedded store): initdb on first
 * use, otherwise start what is there. `listen: ''` keeps it on its private Unix socket only.
 */
export async function openOrCreatePgInstance(baseDir: string, opts: Omit<PgInstanceOptions, 'baseDir'> = {}): Promise<PgInstance> {
  const dataDir = join(baseDir, 'data');
  if (!existsSync(join(dataDir, 'PG_VERSION'))) {
    if (existsSync(dataDir)) await rm(dataDir, { recursive: true, force: true }); // a half-done initdb
    return createPgInstance({ ...opts, baseDir });
  }
  const user = await serverOsUser();
  const socketDir = join(baseDir, 'sock');
  await ownedDir(socketDir, user);
  const listen = opts.listen ?? '127.0.0.1';
  const port = opts.port ?? 5432;
  const instance = new PgInstance(baseDir, dataDir, socketDir, listen, port, user, false);
  const running = await runPg('pg_ctl', ['status', '-D', dataDir], user).then(() => true, () => false);
  if (!running) await instance.start();
  return instance;
}
