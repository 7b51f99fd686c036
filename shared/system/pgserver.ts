// Start and stop PostgreSQL servers of our own: the coordinator's embedded store, the demo's
// nodes and the test harness all use this. When we run as root, the nodes run as the
// `postgres` OS user (PostgreSQL refuses to run as root); the coordinator's store runs as an OS
// user of its own (storeOsUser) and asks for a password.
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants, existsSync } from 'node:fs';
import { lchown, lstat, mkdtemp, open, readdir, rename, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ensureDirectory } from './atomic-file.ts';
import { passwdEntry, type OsUser } from './passwd.ts';

export type { OsUser };
import { confName, confString } from '../pgconf/escape.ts';
import { scramVerifier } from '../crypto/scram.ts';

const execFileAsync = promisify(execFile);

/** The OS user PostgreSQL runs as: `postgres` when we are root, ourselves otherwise. */
export async function serverOsUser(): Promise<OsUser> {
  if (process.getuid?.() !== 0) {
    const me = userInfo();
    return { name: me.username, uid: me.uid, gid: me.gid, home: me.homedir };
  }
  return lookupOsUser('postgres');
}

/** The OS user that runs the coordinator's embedded store as root: never `postgres`, whom every node on the host runs as. */
export const STORE_OS_USER = 'pgaccord-store';

/**
 * The OS user the coordinator's store runs as: ourselves, or, as root (PostgreSQL refuses
 * root), STORE_OS_USER, a system user without a shell or home created on first use.
 */
export async function storeOsUser(): Promise<OsUser> {
  if (process.getuid?.() !== 0) {
    const me = await serverOsUser();
    // As `postgres`, the store would be one OS user with every node on the host: whoever is
    // postgres there (a node's superuser through COPY ... TO PROGRAM) could rewrite it.
    if ((await lookupOsUser('postgres').catch(() => null))?.uid === me.uid) {
      throw new Error(`E_STORE_USER: the coordinator runs as the "postgres" OS user (uid ${me.uid}), whom the PostgreSQL nodes on this host run as: its embedded store would be theirs too. Start it as another user (a system user of its own, or root: the store then runs as ${STORE_OS_USER}), or give it an external store with --database-url`);
    }
    return me;
  }
  const found = await lookupOsUser(STORE_OS_USER).catch(() => null);
  if (found) return found;
  await execFileAsync('useradd', ['--system', '--user-group', '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin', '--comment', 'pgaccord coordinator store', STORE_OS_USER]).catch((e: { stderr?: string; message: string }) => {
    // Another coordinator (or test) may have created it meanwhile: the look-up below decides.
    if (!/already exists/.test(e.stderr ?? '')) throw new Error(`cannot create the OS user "${STORE_OS_USER}" for the embedded store: ${(e.stderr || e.message).trim()}`);
  });
  return lookupOsUser(STORE_OS_USER);
}

export async function lookupOsUser(name: string): Promise<OsUser> {
  const entry = await passwdEntry(name);
  if (entry === null) throw new Error(`OS user "${name}" does not exist (install the postgresql packages, or create it)`);
  return entry;
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

/**
 * Make a directory owned by the server's OS user (mode 0700 unless told otherwise). Owner and
 * mode are set on a descriptor opened without following a symlink: the directory's parent may be
 * that user's (<data>/pg is the store's), who could have put a symlink to a root directory there.
 */
export async function ownedDir(path: string, user: OsUser, mode = 0o700): Promise<void> {
  await ensureDirectory(path, mode, { uid: user.uid, gid: user.gid });
}

export interface PgInstanceOptions {
  /** Parent directory; a fresh temporary one when absent. */
  baseDir?: string;
  /** TCP address to listen on; '' for Unix socket only. */
  listen?: string;
  port?: number;
  /** Extra settings appended to postgresql.conf at creation. */
  settings?: Record<string, string>;
  /** The OS user the server runs as (default: serverOsUser()). */
  osUser?: OsUser;
  /**
   * Password of the superuser `postgres`: local connections then need it (SCRAM), with no
   * trust line at all. Without it, local connections are trusted (test and demo nodes).
   */
  superuserPassword?: string;
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
    private readonly password?: string,
  ) {}

  /** libpq/pg connection settings over the private Unix socket as the bootstrap superuser. */
  socketConfig(database = 'postgres'): { host: string; port: number; user: string; database: string; password?: string } {
    return { host: this.socketDir, port: this.port, user: 'postgres', database, ...(this.password !== undefined ? { password: this.password } : {}) };
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

/** The whole pg_hba.conf of a server with a superuser password: SCRAM on the socket, nothing else. */
export const PASSWORD_HBA = 'local all all scram-sha-256\n';

/**
 * Make a stopped server's superuser need `password`: its SCRAM verifier (computed here: the
 * password itself reaches no server process, argument or log) is set in single-user mode, which
 * reads no pg_hba.conf, then pg_hba.conf becomes PASSWORD_HBA. Run at every start, so the
 * password file in the coordinator's data directory stays the one truth.
 */
export async function setSuperuserPassword(dataDir: string, user: OsUser, password: string): Promise<void> {
  const verifier = scramVerifier(password, randomBytes(16));
  const asOther = process.getuid?.() === 0 && user.uid !== 0;
  const out = await new Promise<{ code: number | null; text: string }>((resolve, reject) => {
    const child = spawn(join(pgBinDir(), 'postgres'), ['--single', '-D', dataDir, '-c', 'log_statement=none', '-c', 'log_min_error_statement=panic', 'postgres'], {
      ...(asOther ? { uid: user.uid, gid: user.gid } : {}),
      env: { ...process.env, HOME: user.home, LC_ALL: 'C' },
      cwd: '/',
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let text = '';
    child.stdout.on('data', (d) => (text += d));
    child.stderr.on('data', (d) => (text += d));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, text }));
    child.stdin.end(`ALTER ROLE postgres PASSWORD '${verifier}'\n`);
  });
  // Only the server's ERROR/FATAL lines: the rest echoes the statement.
  const problems = out.text.split('\n').filter((l) => /\b(ERROR|FATAL|PANIC):/.test(l)).map((l) => l.replace(/SCRAM-SHA-256\$\S+/g, '<verifier>'));
  if (out.code !== 0 || problems.length > 0) throw new Error(`setting the store's superuser password failed: ${problems.join('; ') || `postgres --single exited ${out.code}`}`);
  await installOwned(join(dataDir, 'pg_hba.conf'), PASSWORD_HBA, user);
}

/**
 * Put `content` at `path` in a directory `user` owns: created 0600 without following a symlink,
 * owned through the descriptor (by path, `user` could swap the temp file for a symlink to a file
 * of root's between its creation and the chown), then renamed over the target.
 */
export async function installOwned(path: string, content: string, user: OsUser): Promise<void> {
  const tmp = `${path}.pgaccord-new`;
  await rm(tmp, { force: true });
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    await fh.writeFile(content);
    if (process.getuid?.() === 0) await fh.chown(user.uid, user.gid);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}

/**
 * Append to a file of `user`'s in a directory `user` owns (initdb's postgresql.conf): opened
 * without following a symlink, and refused unless it is a regular file of that user with no
 * other link, so what `user` planted there is never what root writes to.
 */
async function appendOwned(path: string, content: string, user: OsUser): Promise<void> {
  const fh = await open(path, constants.O_WRONLY | constants.O_APPEND | constants.O_NOFOLLOW).catch((e: NodeJS.ErrnoException) => {
    throw e.code === 'ELOOP' ? new Error(`E_NOT_A_FILE: ${path} is a symbolic link: refused, nothing followed`) : e;
  });
  try {
    const st = await fh.stat();
    if (!st.isFile() || st.nlink !== 1 || st.uid !== user.uid) throw new Error(`E_NOT_A_FILE: ${path} is not a regular file of ${user.name} with a single link: refused`);
    await fh.writeFile(content);
  } finally {
    await fh.close();
  }
}

/**
 * Hand a stopped server's whole directory to `user` (a store made by an older coordinator as
 * `postgres`), top down. Each directory is taken first, through a descriptor opened without
 * following a symlink: the top one is also made 0700, and one below writable by its group or
 * others is refused. From then on its former owner can no longer rename or plant anything in
 * it, so the entries the walk then checks by path stay what it checked. Refuses a symbolic link
 * and a file with another hard link: whoever owned the tree could have planted one to root's.
 */
export async function takeOwnership(dir: string, user: OsUser): Promise<void> {
  const refuse = (path: string, why: string) => new Error(`E_STORE_DIR: ${path} ${why}: refusing to hand the store's directory to ${user.name}; fix it or restore the store from a backup`);
  const takeDir = async (path: string, top: boolean): Promise<void> => {
    const fh = await open(path, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW).catch((e: NodeJS.ErrnoException) => {
      throw e.code === 'ELOOP' || e.code === 'ENOTDIR' ? refuse(path, 'is a symbolic link or not a directory') : e;
    });
    try {
      const st = await fh.stat();
      if (st.uid !== user.uid || st.gid !== user.gid) await fh.chown(user.uid, user.gid);
      if (top) await fh.chmod(0o700);
      // Checked once it is no longer its former owner's, who could widen it until then.
      const mode = (await fh.stat()).mode & 0o7777;
      if ((mode & 0o022) !== 0) throw refuse(path, `is writable by its group or others (mode ${mode.toString(8)})`);
    } finally {
      await fh.close();
    }
  };
  const walk = async (path: string, top: boolean): Promise<void> => {
    await takeDir(path, top);
    for (const name of await readdir(path)) {
      const child = join(path, name);
      const st = await lstat(child);
      if (st.isSymbolicLink()) throw refuse(child, 'is a symbolic link');
      if (st.isDirectory()) {
        await walk(child, false);
        continue;
      }
      if (st.nlink > 1) throw refuse(child, `has ${st.nlink} hard links`);
      if (st.uid !== user.uid || st.gid !== user.gid) await lchown(child, user.uid, user.gid);
    }
  };
  await walk(dir, true);
}

/**
 * initdb a fresh cluster: superuser `postgres`, local connections trusted (the socket lives in a
 * 0700 directory, so only the server's OS user and root can reach it) or, with a superuser
 * password, SCRAM only; TCP rejected until the agent (or the caller) writes rules.
 */
export async function createPgInstance(opts: PgInstanceOptions = {}): Promise<PgInstance> {
  const user = opts.osUser ?? (await serverOsUser());
  const ownsBaseDir = opts.baseDir === undefined;
  const baseDir = opts.baseDir ?? (await mkdtemp('/tmp/pgaccord-pg-'));
  await ownedDir(baseDir, user, 0o711);
  const dataDir = join(baseDir, 'data');
  const socketDir = join(baseDir, 'sock');
  await ownedDir(socketDir, user);
  const listen = opts.listen ?? '127.0.0.1';
  const port = opts.port ?? (await freePort(listen || '127.0.0.1'));
  const password = opts.superuserPassword;
  await runPg('initdb', ['-D', dataDir, '-U', 'postgres', `--auth-local=${password === undefined ? 'trust' : 'reject'}`, '--auth-host=reject', '-E', 'UTF8', '--locale=C', '--no-sync'], user);
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
  await appendOwned(join(dataDir, 'postgresql.conf'), `\n# instance settings\n${lines.join('\n')}\n`, user);
  if (password !== undefined) await setSuperuserPassword(dataDir, user, password);
  const instance = new PgInstance(baseDir, dataDir, socketDir, listen, port, user, ownsBaseDir, password);
  await instance.start();
  return instance;
}

/**
 * A long-lived instance at a fixed directory (the coordinator's embedded store): initdb on first
 * use, otherwise start what is there. `listen: ''` keeps it on its private Unix socket only.
 * With a superuser password, every start re-asserts it: a server still running (its coordinator
 * was killed) is stopped first, a directory of another OS user (`postgres`, older versions) is
 * handed over, then the password and the SCRAM-only pg_hba.conf are set (no trust, ever).
 */
export async function openOrCreatePgInstance(baseDir: string, opts: Omit<PgInstanceOptions, 'baseDir'> = {}): Promise<PgInstance> {
  const dataDir = join(baseDir, 'data');
  if (!existsSync(join(dataDir, 'PG_VERSION'))) {
    if (existsSync(dataDir)) await rm(dataDir, { recursive: true, force: true }); // a half-done initdb
    return createPgInstance({ ...opts, baseDir });
  }
  const user = opts.osUser ?? (await serverOsUser());
  const password = opts.superuserPassword;
  const socketDir = join(baseDir, 'sock');
  const listen = opts.listen ?? '127.0.0.1';
  const port = opts.port ?? 5432;
  if (password !== undefined) {
    const st = await lstat(dataDir);
    if (!st.isDirectory()) throw new Error(`E_STORE_DIR: ${dataDir} is a symbolic link or not a directory: refusing to start the store from it; restore the store from a backup`);
    const owner: OsUser = st.uid === user.uid ? user : { name: String(st.uid), uid: st.uid, gid: st.gid, home: '/' };
    if (await runPg('pg_ctl', ['status', '-D', dataDir], owner).then(() => true, () => false)) {
      await runPg('pg_ctl', ['stop', '-w', '-t', '60', '-m', 'fast', '-D', dataDir], owner);
    }
    if (owner.uid !== user.uid) await takeOwnership(baseDir, user);
    await ownedDir(baseDir, user, 0o711);
    await ownedDir(socketDir, user);
    await setSuperuserPassword(dataDir, user, password);
  } else {
    await ownedDir(socketDir, user);
  }
  const instance = new PgInstance(baseDir, dataDir, socketDir, listen, port, user, false, password);
  const running = password === undefined && (await runPg('pg_ctl', ['status', '-D', dataDir], user).then(() => true, () => false));
  if (!running) await instance.start();
  return instance;
}
