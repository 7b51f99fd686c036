// Connection probes: for each outgoing inter-node connection, connect exactly as the profile's
// client would, with the real libpq client (psql), as the PGDATA owner's OS user, so libpq
// applies its key and passfile permission rules as it would for the real client. The agent is
// that user already (started as root, it drops to it first); a root caller (the tests) switches.
// The connection string never holds a password (passwords live in the 0600 passfile it names).
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, realpathSync } from 'node:fs';
import { basename, delimiter, join } from 'node:path';
import type { ProbeResult } from '../../shared/contract/status.ts';
import type { OsUser } from '../../shared/system/pgserver.ts';
import type { ClientConnection } from '../../shared/pgconf/types.ts';

export interface ProbeOptions {
  /** OS user the client runs as (the PGDATA owner). */
  osUser: OsUser;
  /** libpq connect_timeout, seconds (used unless the conninfo sets one). */
  connectTimeoutSeconds?: number;
  /** Hard limit for the whole psql run, ms. */
  killAfterMs?: number;
  psql?: string;
  now?: () => Date;
  /** Probes run at once (default PROBE_CONCURRENCY). */
  concurrency?: number;
}

/** What psql printed for `\conninfo`: TLS protocol and cipher, when the connection used TLS. */
export function parseSslLine(text: string): { tlsVersion: string | null; cipher: string | null } {
  const m = /SSL connection \(protocol: ([^,)]+), cipher: ([^,)]+)/.exec(text);
  return m ? { tlsVersion: m[1]!.trim(), cipher: m[2]!.trim() } : { tlsVersion: null, cipher: null };
}

/** Remove anything that looks like a password from a text (libpq never prints one, but be sure). */
export function scrubSecrets(text: string): string {
  return text.replace(/(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)/gi, '$1***');
}

function cleanEnv(osUser: OsUser, connectTimeout: number): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  // Only what the real client would have: no PGPASSWORD, PGSSL* or service overrides leaking in
  // from the agent's own environment.
  for (const k of ['PATH', 'LANG', 'TZ']) if (process.env[k] !== undefined) env[k] = process.env[k];
  env.HOME = osUser.home;
  env.USER = osUser.name;
  env.LOGNAME = osUser.name;
  env.LC_ALL = 'C';
  env.PGCONNECT_TIMEOUT = String(connectTimeout);
  env.PGAPPNAME = 'pgaccord-probe';
  return env;
}

/**
 * The psql to run. Debian's /usr/bin/psql is pg_wrapper, a Perl script that picks a version and
 * execs its psql: a Perl start per probe, several times the CPU of psql itself (a full mesh of
 * ten nodes probes 90 edges per change). For a remote connection it runs the newest installed
 * client, so that one is run directly. Anything else in PATH is run as it is. Pure but for the
 * file system; `root` and `path` for tests.
 */
export function resolvePsql(path = process.env.PATH ?? '', root = '/usr/lib/postgresql'): string {
  for (const dir of path.split(delimiter).filter(Boolean)) {
    const candidate = join(dir, 'psql');
    if (!existsSync(candidate)) continue;
    let real: string;
    try {
      real = realpathSync(candidate);
    } catch {
      return 'psql';
    }
    if (basename(real) !== 'pg_wrapper') return candidate;
    let versions: string[] = [];
    try {
      versions = readdirSync(root).filter((v) => /^\d+(\.\d+)?$/.test(v) && existsSync(join(root, v, 'bin', 'psql')));
    } catch {
      // no versioned clients: let the wrapper choose
    }
    versions.sort((a, b) => Number(b) - Number(a));
    return versions[0] !== undefined ? join(root, versions[0], 'bin', 'psql') : candidate;
  }
  return 'psql';
}

let defaultPsql: string | null = null;

/** Run one probe; never throws. */
export async function probe(conn: ClientConnection, opts: ProbeOptions): Promise<ProbeResult> {
  const now = opts.now ?? (() => new Date());
  const connectTimeout = opts.connectTimeoutSeconds ?? 5;
  const base = { to: conn.to, role: conn.role, conninfo: scrubSecrets(conn.conninfo) };
  if (/\bpassword\s*=/i.test(conn.conninfo)) {
    return { ...base, ok: false, tlsVersion: null, cipher: null, error: 'refused to probe: the connection string carries a password', at: now().toISOString() };
  }
  const query = conn.replication ? 'IDENTIFY_SYSTEM' : 'SELECT 1';
  const args = [conn.conninfo, '-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-c', '\\conninfo', '-c', query];
  const asOther = process.getuid?.() === 0 && opts.osUser.uid !== 0;
  const { code, stdout, stderr, timedOut } = await new Promise<{ code: number | null; stdout: string; stderr: string; timedOut: boolean }>((resolve) => {
    let out = '';
    let err = '';
    let timedOut = false;
    const child = spawn(opts.psql ?? (defaultPsql ??= resolvePsql()), args, {
      env: cleanEnv(opts.osUser, connectTimeout),
      cwd: '/',
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(asOther ? { uid: opts.osUser.uid, gid: opts.osUser.gid } : {}),
    });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.killAfterMs ?? (connectTimeout + 10) * 1000);
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ code: -1, stdout: out, stderr: `${err}${e.message}`, timedOut });
    });
    child.on('close', (c) => {
      clearTimeout(timer);
      resolve({ code: c, stdout: out, stderr: err, timedOut });
    });
  });
  const { tlsVersion, cipher } = parseSslLine(stdout);
  const at = now().toISOString();
  if (code === 0) return { ...base, ok: true, tlsVersion, cipher, error: null, at };
  const error = timedOut ? `probe timed out after ${opts.killAfterMs ?? (connectTimeout + 10) * 1000} ms` : scrubSecrets(stderr.trim().replace(/^psql: (error: )?/, '')) || `psql exited with status ${code}`;
  return { ...base, ok: false, tlsVersion, cipher, error, at };
}

/** Why a probe ran (ProbeResult.reason). */
export type ProbeReason = 'apply' | 'retry' | 'peer-applied';

/** Probes at once at most: a full mesh of dozens of edges is probed in a few rounds, not one psql at a time. */
export const PROBE_CONCURRENCY = 4;

/** Probe every connection, a few at a time; results in the order of `conns`. */
export async function probeAll(conns: ClientConnection[], opts: ProbeOptions, reason?: ProbeReason): Promise<ProbeResult[]> {
  const out: ProbeResult[] = new Array(conns.length);
  let next = 0;
  const worker = async () => {
    while (next < conns.length) {
      const i = next++;
      const r = await probe(conns[i]!, opts);
      out[i] = reason ? { ...r, reason } : r;
    }
  };
  await Promise.all(Array.from({ length: Math.min(opts.concurrency ?? PROBE_CONCURRENCY, conns.length) }, worker));
  return out;
}
