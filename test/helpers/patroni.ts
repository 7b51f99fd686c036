// Real etcd 3.4 and Patroni 3.0 processes for the patroni e2e test: etcd serving its v3 API over
// TLS with client certificates required, Patroni members run as the server's OS user on a
// configuration directory (the operator's patroni.yml plus a link to the agent's fragment), and
// patronictl run the same way.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile, chown } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { OsUser } from '../../shared/system/pgserver.ts';
import { waitFor as waitUntil } from './wait.ts';

const run = promisify(execFile);
export const PG_BIN = '/usr/lib/postgresql/15/bin';

/** Patroni and etcd take their time: 90 s by default, asked twice a second. */
export const waitFor = <T>(what: string, fn: () => Promise<T | null>, timeoutMs = 90_000, everyMs = 500): Promise<T> => waitUntil(what, fn, timeoutMs, everyMs);

/**
 * etcd's server pair, signed by its own CA, for serverAuth and clientAuth: etcd 3.4's gRPC
 * gateway dials etcd itself with this certificate, so with --client-cert-auth it must be a
 * client certificate that --trusted-ca-file accepts too.
 */
export async function etcdServerPair(ca: { certPath: string; keyPath: string }, host: string, dir: string): Promise<{ certFile: string; keyFile: string }> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const work = await mkdtemp('/tmp/pgaccord-etcd-leaf-');
  try {
    const keyFile = join(dir, 'etcd.key');
    const certFile = join(dir, 'etcd.crt');
    await run('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', keyFile, '-out', join(work, 'csr'), '-subj', `/CN=${host}`]);
    await writeFile(join(work, 'ext'), `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:${host}\n`);
    await run('openssl', ['x509', '-req', '-in', join(work, 'csr'), '-CA', ca.certPath, '-CAkey', ca.keyPath, '-CAcreateserial', '-extfile', join(work, 'ext'), '-days', '1', '-out', certFile]);
    return { certFile, keyFile };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** One file holding several PEM bundles (etcd's --trusted-ca-file: the cluster CA and its own). */
export async function concatFiles(out: string, files: string[]): Promise<string> {
  await writeFile(out, (await Promise.all(files.map((f) => readFile(f, 'utf8')))).map((t) => (t.endsWith('\n') ? t : `${t}\n`)).join(''), { mode: 0o644 });
  return out;
}

export interface Etcd {
  url: string;
  proc: ChildProcess;
}

/** One etcd member on `host`: client URL over TLS, client certificates checked against `trustedCa`. */
export async function startEtcd(o: { dir: string; host: string; clientPort: number; peerPort: number; certFile: string; keyFile: string; trustedCa: string }): Promise<Etcd> {
  await mkdir(o.dir, { recursive: true, mode: 0o700 });
  const url = `https://${o.host}:${o.clientPort}`;
  const peer = `http://${o.host}:${o.peerPort}`;
  const log = createWriteStream(join(o.dir, 'etcd.log'));
  const proc = spawn('etcd', [
    '--name', 'e1', '--data-dir', join(o.dir, 'data'),
    '--listen-client-urls', url, '--advertise-client-urls', url,
    '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer, '--initial-cluster', `e1=${peer}`,
    '--cert-file', o.certFile, '--key-file', o.keyFile, '--trusted-ca-file', o.trustedCa, '--client-cert-auth',
  ], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  proc.stdout!.pipe(log);
  proc.stderr!.pipe(log);
  return { url, proc };
}

export interface Member {
  name: string;
  host: string;
  pgPort: number;
  apiPort: number;
  dir: string;
  pgdata: string;
  stateDir: string;
  home: string;
  /** Patroni's configuration directory: patroni.yml (ours) and pgaccord.yml (the agent's fragment). */
  confDir: string;
  runDir: string;
  logDir: string;
  proc: ChildProcess | null;
  log: string;
}

export function asUser(user: OsUser): { uid?: number; gid?: number } {
  return process.getuid?.() === 0 && user.uid !== 0 ? { uid: user.uid, gid: user.gid } : {};
}

export function envFor(m: Member): NodeJS.ProcessEnv {
  return { HOME: m.home, PATH: `${PG_BIN}:/usr/bin:/bin`, LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8' };
}

/**
 * The operator's own file, as the README walkthrough has it: scope, name, addresses, etcd3 hosts
 * and the CA of etcd's server certificate, PostgreSQL's paths; no pg_hba, no ssl parameters.
 * Short DCS timings keep the failover within seconds; a 20 s TTL (Patroni's default is 30) with a
 * 6 s retry_timeout leaves a leader on a loaded machine time to renew its key.
 */
export async function writeOperatorConfig(m: Member, o: { scope: string; etcdHost: string; etcdCa: string; user: OsUser }): Promise<void> {
  const config = {
    scope: o.scope,
    name: m.name,
    log: { level: 'INFO' },
    restapi: { listen: `${m.host}:${m.apiPort}`, connect_address: `${m.host}:${m.apiPort}` },
    etcd3: { hosts: o.etcdHost, cacert: o.etcdCa },
    bootstrap: {
      dcs: { ttl: 20, loop_wait: 1, retry_timeout: 6, postgresql: { use_pg_rewind: true, parameters: { wal_log_hints: 'on' } } },
      // initdb's host lines would trust every loopback client: none, only the socket
      initdb: [{ encoding: 'UTF8' }, { 'auth-host': 'reject' }, { 'auth-local': 'trust' }],
    },
    postgresql: {
      listen: `${m.host}:${m.pgPort}`,
      connect_address: `${m.host}:${m.pgPort}`,
      data_dir: m.pgdata,
      bin_dir: PG_BIN,
      use_unix_socket: true,
      authentication: { superuser: { username: 'postgres' } },
      parameters: {
        unix_socket_directories: m.runDir,
        logging_collector: 'on',
        log_directory: m.logDir,
        log_filename: 'postgresql.log',
        log_connections: 'on',
      },
    },
  };
  // JSON is YAML
  await writeFile(join(m.confDir, 'patroni.yml'), JSON.stringify(config, null, 2));
  await symlink(join(m.stateDir, 'patroni', 'pgaccord.yml'), join(m.confDir, 'pgaccord.yml'));
  if (process.getuid?.() === 0) await chown(join(m.confDir, 'patroni.yml'), o.user.uid, o.user.gid);
}

export function startPatroni(m: Member, user: OsUser): ChildProcess {
  const out = createWriteStream(m.log, { flags: 'a' });
  const child = spawn('patroni', [m.confDir], { env: envFor(m), cwd: m.dir, ...asUser(user), stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  child.stdout!.pipe(out);
  child.stderr!.pipe(out);
  m.proc = child;
  return child;
}

export interface ListedMember {
  Member: string;
  Host: string;
  /** Leader, Replica (Patroni 3.0.2: State running for a replica; only later versions say streaming) */
  Role: string;
  State: string;
  TL?: number;
}

export async function patronictl(m: Member, user: OsUser, args: string[], timeoutMs = 60_000): Promise<{ stdout: string; stderr: string }> {
  try {
    return await run('patronictl', ['-c', m.confDir, ...args], { env: envFor(m), cwd: m.dir, ...asUser(user), timeout: timeoutMs });
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string; message: string };
    throw new Error(`patronictl ${args.join(' ')} failed: ${err.message}\n${err.stdout ?? ''}\n${err.stderr ?? ''}`);
  }
}

export async function list(m: Member, user: OsUser): Promise<ListedMember[]> {
  const { stdout } = await patronictl(m, user, ['list', '-f', 'json']);
  return JSON.parse(stdout) as ListedMember[];
}

export async function sql<R>(m: Member, user: OsUser, text: string): Promise<R[]> {
  const { stdout } = await run(join(PG_BIN, 'psql'), ['-XAtq', '-h', m.runDir, '-p', String(m.pgPort), '-U', 'postgres', '-d', 'postgres', '-c', `SELECT coalesce(json_agg(q), '[]') FROM (${text}) q`], { ...asUser(user), env: envFor(m) });
  return JSON.parse(stdout) as R[];
}

export function killGroup(p: ChildProcess | null, signal: NodeJS.Signals = 'SIGKILL'): void {
  if (p && p.exitCode === null && p.pid !== undefined) {
    try {
      process.kill(-p.pid, signal);
    } catch {
      /* gone */
    }
  }
}
