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
  /** psql runs at once at most (default PROBE_CONCURRENCY). */
  concurrency?: number;
  /** Edges one psql run takes before a second run is started beside it (default PROBE_EDGES_PER_RUN). */
  edgesPerRun?: number;
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

/** Why a probe ran (ProbeResult.reason). */
export type ProbeReason = 'apply' | 'retry' | 'peer-applied';

/** psql processes at once at most, each over its share of the edges (one psql run probes several). */
export const PROBE_CONCURRENCY = 2;

/**
 * A second psql run starts only beside a first one with this many edges: a run costs a fork of
 * the agent and psql's own start, about as much CPU as an edge's connection (TLS handshake and
 * backend included). A ten-node mesh probes nine edges per node and change, on machines where
 * every node does it at once, CPU-bound: one run each, ten per change instead of twenty.
 */
export const PROBE_EDGES_PER_RUN = 12;

/** Marks where an edge's output begins, on stdout (\echo) and on stderr (\warn), and where the run ended. */
const MARK = '@@pgaccord-probe ';

/**
 * A connection string as the argument of psql's \connect, exactly. psql reads that argument as an
 * identifier and takes its double quotes away, even inside single quotes: a role named `"` made
 * `user=" sslmode=…` into `user= sslmode=…`, the next keyword read as the user name. Double-quoted,
 * a doubled quote is one quote and nothing else is special (no backslash escapes, variables or
 * backticks).
 */
const connectArg = (conninfo: string): string => `"${conninfo.replace(/"/g, '""')}"`;

/**
 * The psql arguments that probe `conns` in order in one run: the first is psql's own connection,
 * each next one a `\connect` with exactly its connection string (a new libpq connection, no
 * parameter taken from the previous one); before each, a mark on both streams. Without
 * ON_ERROR_STOP a refused `\connect` does not end the run: the next edge is tried.
 */
export function batchArgs(conns: ClientConnection[]): string[] {
  const args = [conns[0]!.conninfo, '-X', '-q', '-w', '-A', '-t'];
  conns.forEach((c, i) => {
    args.push('-c', `\\echo ${MARK}${i}`, '-c', `\\warn ${MARK}${i}`);
    if (i > 0) args.push('-c', `\\connect ${connectArg(c.conninfo)}`);
    args.push('-c', '\\conninfo', '-c', c.replication ? 'IDENTIFY_SYSTEM' : 'SELECT 1');
  });
  args.push('-c', `\\echo ${MARK}end`, '-c', `\\warn ${MARK}end`);
  return args;
}

/** A stream cut at the marks: the text before the first mark, the text after each mark, and whether the end mark came. */
function segments(text: string): { head: string; parts: Map<number, string>; ended: boolean } {
  const parts = new Map<number, string>();
  const pieces = text.split(new RegExp(`^${MARK}`, 'm'));
  let ended = false;
  for (const piece of pieces.slice(1)) {
    const nl = piece.indexOf('\n');
    const tag = nl < 0 ? piece : piece.slice(0, nl);
    if (tag === 'end') ended = true;
    else parts.set(Number(tag), nl < 0 ? '' : piece.slice(nl + 1));
  }
  return { head: pieces[0]!, parts, ended };
}

/** What psql says when not connected: the consequence of an edge's refused \connect, not its cause. */
const NOT_CONNECTED = /^You are currently not connected to a database\.$/;

export interface EdgeOutcome { ok: boolean; stdout: string; error: string | null }

/**
 * The verdict on each edge one psql run got to (pure): ok when the edge's query answered (its
 * rows follow \conninfo's lines); otherwise the edge's own messages. The first edge's refused
 * connection ends the run, its message before any mark; an edge cut short by the end of the run
 * (psql killed) gets `cutShort`. Edges after the last one reached are absent from the answer.
 */
export function parseBatch(conns: ClientConnection[], stdout: string, stderr: string, cutShort: string): EdgeOutcome[] {
  const out = segments(stdout);
  const err = segments(stderr);
  const reached = out.parts.size;
  if (reached === 0) {
    const why = err.head.trim().replace(/^psql: (error: )?/, '') || cutShort;
    return [{ ok: false, stdout: '', error: why }];
  }
  const outcomes: EdgeOutcome[] = [];
  for (let i = 0; i < reached && i < conns.length; i++) {
    const text = out.parts.get(i) ?? '';
    const rows = text.split('\n').filter((l) => l !== '' && !/^You are (connected|now connected|currently not connected)/.test(l) && !/^SSL connection \(/.test(l));
    const complete = i < reached - 1 || out.ended;
    const ok = complete && (conns[i]!.replication ? rows.some((l) => l.includes('|')) : rows.includes('1'));
    const messages = `${i === 0 ? err.head : ''}${err.parts.get(i) ?? ''}`.split('\n').filter((l) => l.trim() !== '' && !NOT_CONNECTED.test(l.trim())).join('\n').trim();
    const error = ok ? null : messages.replace(/^\\connect: /, '').replace(/^psql:[^:]*: (error: )?/, '') || (complete ? 'the probe query returned no row' : cutShort);
    outcomes.push({ ok, stdout: text, error });
  }
  return outcomes;
}

/** One psql run over `conns` (none carries a password); the outcomes of the edges it got to, at least the first. */
async function runBatch(conns: ClientConnection[], opts: ProbeOptions): Promise<EdgeOutcome[]> {
  const connectTimeout = opts.connectTimeoutSeconds ?? 5;
  const killAfterMs = opts.killAfterMs ?? (connectTimeout + 10) * 1000;
  const asOther = process.getuid?.() === 0 && opts.osUser.uid !== 0;
  const { stdout, stderr, error } = await new Promise<{ stdout: string; stderr: string; error: string | null }>((resolve) => {
    let out = '';
    let err = '';
    const child = spawn(opts.psql ?? (defaultPsql ??= resolvePsql()), batchArgs(conns), {
      env: cleanEnv(opts.osUser, connectTimeout),
      cwd: '/',
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(asOther ? { uid: opts.osUser.uid, gid: opts.osUser.gid } : {}),
    });
    // Each edge has its own budget: the run may take as many as it has edges.
    const timer = setTimeout(() => child.kill('SIGKILL'), killAfterMs * conns.length);
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ stdout: out, stderr: err, error: e.message });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ stdout: out, stderr: err, error: signal === 'SIGKILL' ? `probe timed out after ${killAfterMs} ms` : code === 0 ? null : `psql exited with status ${code}` });
    });
  });
  return parseBatch(conns, stdout, stderr, error ?? 'psql ended before the probe did').map((o) => ({ ...o, error: o.error === null ? null : scrubSecrets(o.error) }));
}

/** Probe every connection (never throws): one psql run per PROBE_EDGES_PER_RUN edges, a few at once, each over its share; results in the order of `conns`. */
export async function probeAll(conns: ClientConnection[], opts: ProbeOptions, reason?: ProbeReason): Promise<ProbeResult[]> {
  const now = opts.now ?? (() => new Date());
  const out: ProbeResult[] = new Array(conns.length);
  const result = (i: number, o: EdgeOutcome): ProbeResult => {
    const c = conns[i]!;
    const { tlsVersion, cipher } = parseSslLine(o.stdout);
    const r: ProbeResult = { to: c.to, role: c.role, conninfo: scrubSecrets(c.conninfo), ok: o.ok, tlsVersion, cipher, error: o.ok ? null : o.error, at: now().toISOString() };
    return reason ? { ...r, reason } : r;
  };
  const todo: number[] = [];
  conns.forEach((c, i) => {
    if (/\bpassword\s*=/i.test(c.conninfo)) out[i] = result(i, { ok: false, stdout: '', error: 'refused to probe: the connection string carries a password' });
    else todo.push(i);
  });
  const k = Math.min(opts.concurrency ?? PROBE_CONCURRENCY, Math.ceil(todo.length / Math.max(1, opts.edgesPerRun ?? PROBE_EDGES_PER_RUN)));
  const shares = Array.from({ length: k }, (_, w) => todo.filter((_, j) => j % k === w));
  await Promise.all(shares.map(async (share) => {
    // A run ends early only when its first connection is refused: go on from the next edge.
    for (let from = 0; from < share.length;) {
      const outcomes = await runBatch(share.slice(from).map((i) => conns[i]!), opts);
      outcomes.forEach((o, j) => (out[share[from + j]!] = result(share[from + j]!, o)));
      from += Math.max(1, outcomes.length);
    }
  }));
  return out;
}

/** Probe one connection; never throws. */
export async function probe(conn: ClientConnection, opts: ProbeOptions): Promise<ProbeResult> {
  return (await probeAll([conn], opts))[0]!;
}
