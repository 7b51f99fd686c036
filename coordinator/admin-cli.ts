// Admin commands: apply, status, token, cert. They talk to the coordinator over HTTPS with the
// coordinator CA pinned and the admin bearer token; on the coordinator's own host both default
// to the files in its data directory.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { IncomingHttpHeaders } from 'node:http';
// Node's own HTTPS client (undici alone costs ~20 MB and ~150 ms at start); the spec validator
// is loaded only by apply: `--help` and status answer without typebox, yaml or node-forge.
import { Agent, request } from 'node:https';
import type { CaRotationStatus, CertificateListResponse, ClusterStatusResponse, ErrorBody, NodeStatusView, PlanResponse } from '../shared/contract/api.ts';
import type { Static } from '@sinclair/typebox';
import { parseCommand, UsageError } from '../shared/system/cli.ts';
import { parseDuration } from './cluster/duration.ts';
import { parseCoordinatorUrls } from '../shared/contract/coordinator-urls.ts';
import { formatProbeMatrix, probeMatrix } from './cluster/probe-matrix.ts';
import { ago } from './cluster/lifecycle.ts';
import { DEFAULT_DATA_DIR, FILES } from './store/datadir-layout.ts';

const CONNECTION_OPTIONS = {
  coordinator: { type: 'string', multiple: true },
  'token-file': { type: 'string' },
  ca: { type: 'string' },
  'data-dir': { type: 'string' },
} as const;

const CONNECTION_HELP = `
connection (every admin command):
  --coordinator URL   coordinator URL (or PGACCORD_URL; default https://127.0.0.1:7432); several
                      coordinators sharing one store: repeat it or separate with commas,
                      each tried in turn when the one before cannot be reached
  --token-file FILE   file holding the admin token (or PGACCORD_TOKEN with the token itself;
                      default DATA_DIR/admin.token)
  --ca FILE           CA certificate that signed the coordinator's HTTPS certificate
                      (or PGACCORD_CA; default DATA_DIR/ca.crt)
  --data-dir DIR      the coordinator's data directory, for the defaults above
                      (default ${DEFAULT_DATA_DIR})`;

interface Conn {
  /** Every coordinator, in the order tried. */
  urls: string[];
  /** The one that answered last: calls go there first. */
  current: number;
  token: string;
  agent: Agent;
}

type ConnValues = { coordinator?: string[]; 'token-file'?: string; ca?: string; 'data-dir'?: string };

async function connect(v: ConnValues): Promise<Conn> {
  const dir = v['data-dir'] ?? DEFAULT_DATA_DIR;
  let urls: string[];
  try {
    urls = parseCoordinatorUrls(v.coordinator && v.coordinator.length > 0 ? v.coordinator : [process.env.PGACCORD_URL ?? 'https://127.0.0.1:7432']);
  } catch (e) {
    throw new UsageError(`--coordinator: ${(e as Error).message}`);
  }
  if (urls.length === 0) throw new UsageError('--coordinator: no URL given');
  let token: string;
  const tokenFile = v['token-file'] ?? (process.env.PGACCORD_TOKEN ? undefined : join(dir, FILES.adminToken));
  if (tokenFile) {
    token = (await readFile(tokenFile, 'utf8').catch((e: NodeJS.ErrnoException) => {
      throw new Error(`cannot read the admin token from ${tokenFile} (${e.code ?? e.message}); use --token-file or PGACCORD_TOKEN`);
    })).trim();
  } else {
    token = process.env.PGACCORD_TOKEN!.trim();
  }
  const caFile = v.ca ?? process.env.PGACCORD_CA ?? join(dir, FILES.caCert);
  const ca = await readFile(caFile, 'utf8').catch((e: NodeJS.ErrnoException) => {
    throw new Error(`cannot read the coordinator CA from ${caFile} (${e.code ?? e.message}); use --ca or PGACCORD_CA`);
  });
  return { urls, current: 0, token, agent: new Agent({ ca, rejectUnauthorized: true, keepAlive: true }) };
}

/** Answers that mean "this coordinator cannot serve now": the next one is asked. */
const FAILOVER_STATUSES = new Set([502, 503, 504]);

export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly body: ErrorBody | null,
  ) {
    super(body?.message ?? `HTTP ${status}`);
  }
}

/** Connection failures before any byte of the request left: nothing was done there. */
const NOT_SENT_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);

/**
 * One admin call on the coordinator that answered last, moving on to the next when it cannot be
 * reached (or answers 502/503/504); each is tried once. An admin is one person at a terminal, so
 * there is no pause between them; failing every one names each and why. A change (not a GET)
 * that may have reached a coordinator which then failed is not sent to the next: done twice, a
 * CA rotation start would be refused as already in progress, a token made twice. It says so.
 */
async function call<T>(conn: Conn, method: string, path: string, body?: unknown): Promise<T> {
  const failures: string[] = [];
  const change = method !== 'GET';
  for (let tried = 0; tried < conn.urls.length; tried++) {
    const url = conn.urls[conn.current]!;
    const last = tried === conn.urls.length - 1;
    let res: RawAnswer;
    try {
      res = await callOne(conn, url, method, path, body);
    } catch (e) {
      const err = e as Error & { code?: string };
      if (change && conn.urls.length > 1 && !NOT_SENT_CODES.has(err.code ?? '')) {
        throw new Error(`the coordinator at ${url} failed after the request was sent (${err.message || err.code}): it may or may not have been done; look (pgaccord status) before trying again`);
      }
      failures.push(`${url}: ${err.message || err.code}`);
      conn.current = (conn.current + 1) % conn.urls.length;
      continue;
    }
    // An answer (a 401, a 409...) is the coordinator speaking: reported as such, never as "cannot reach".
    if (!FAILOVER_STATUSES.has(res.statusCode) || last || (change && res.statusCode !== 503)) return answer<T>(res);
    failures.push(`${url}: HTTP ${res.statusCode}`);
    conn.current = (conn.current + 1) % conn.urls.length;
  }
  throw new Error(conn.urls.length === 1 ? `cannot reach the coordinator at ${failures[0]}` : `cannot reach any coordinator: ${failures.join('; ')}`);
}

type RawAnswer = { statusCode: number; headers: IncomingHttpHeaders; text: string };

function callOne(conn: Conn, url: string, method: string, path: string, body?: unknown): Promise<RawAnswer> {
  const payload = body !== undefined ? JSON.stringify(body) : undefined;
  return new Promise((resolve, reject) => {
    // No timeout: status --wait long-polls for as long as the user asked.
    const req = request(`${url}${path}`, {
      method,
      agent: conn.agent,
      headers: { authorization: `Bearer ${conn.token}`, ...(payload !== undefined ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}) },
    }, (r) => {
      const chunks: Buffer[] = [];
      r.on('data', (c: Buffer) => chunks.push(c));
      r.on('error', reject);
      r.on('end', () => resolve({ statusCode: r.statusCode ?? 0, headers: r.headers, text: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.end(payload);
  });
}

function answer<T>(res: RawAnswer): T {
  const text = res.text;
  if (res.statusCode >= 400) {
    let parsed: ErrorBody | null = null;
    try {
      parsed = JSON.parse(text) as ErrorBody;
    } catch {
      // not JSON
    }
    throw new HttpError(res.statusCode, parsed);
  }
  if (res.statusCode === 204 || text === '') return undefined as T;
  return (res.headers['content-type'] ?? '').toString().includes('json') ? (JSON.parse(text) as T) : (text as T);
}

async function withConn(v: ConnValues, fn: (conn: Conn) => Promise<number>): Promise<number> {
  const conn = await connect(v);
  try {
    return await fn(conn);
  } catch (e) {
    if (e instanceof HttpError) {
      process.stderr.write(`error: ${e.message}${e.body?.code ? ` (${e.body.code}, HTTP ${e.status})` : ` (HTTP ${e.status})`}\n`);
      for (const fe of e.body?.errors ?? []) process.stderr.write(`  ${fe.field}: ${fe.message}\n`);
      return 1;
    }
    throw e;
  } finally {
    conn.agent.destroy();
  }
}

// --- apply --------------------------------------------------------------------------------

const APPLY = {
  usage: 'pgaccord apply -f FILE [--dry-run] [--json] [connection options]',
  summary: 'Create or update a cluster from a spec file (YAML or JSON). An invalid spec is refused whole, each problem named by its field.',
  details: `
options:
  -f, --file FILE     the cluster spec ("-" for standard input)
  --dry-run           print what each node would get and what would change; change nothing
  --json              print the coordinator's answer as JSON
${CONNECTION_HELP}`,
  options: { file: { type: 'string', short: 'f' }, 'dry-run': { type: 'boolean' }, json: { type: 'boolean' }, ...CONNECTION_OPTIONS },
} as const;

export async function runApply(argv: string[]): Promise<number> {
  const parsed = parseCommand(APPLY, argv);
  if (!parsed) return 0;
  const v = parsed.values;
  if (!v.file) throw new UsageError(`-f FILE is required\nusage: ${APPLY.usage}`);
  const text = v.file === '-' ? await readStdin() : await readFile(v.file, 'utf8');
  const { parseSpecText, validateSpec } = await import('./cluster/spec.ts');
  const doc = parseSpecText(text);
  const checked = doc.ok ? validateSpec(doc.value) : doc;
  if (!checked.ok) {
    process.stderr.write(`error: ${v.file}: the cluster spec is invalid\n`);
    for (const e of checked.errors) process.stderr.write(`  ${e.field}: ${e.message}\n`);
    return 1;
  }
  const spec = checked.spec;
  return withConn(v, async (conn) => {
    if (v['dry-run']) {
      const plan = await call<Static<typeof PlanResponse>>(conn, 'POST', `/v1/clusters/${spec.name}/plan`, spec);
      if (v.json) process.stdout.write(`${JSON.stringify(plan, null, 2)}\n`);
      else process.stdout.write(formatPlan(plan));
      return 0;
    }
    const res = await call<{ generation: number; warnings: string[] }>(conn, 'PUT', `/v1/clusters/${spec.name}`, spec);
    if (v.json) process.stdout.write(`${JSON.stringify(res, null, 2)}\n`);
    else process.stdout.write(`cluster ${spec.name}: generation ${res.generation}\n`);
    for (const w of res.warnings) process.stderr.write(`warning: ${w}\n`);
    return 0;
  });
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

export function formatPlan(plan: Static<typeof PlanResponse>): string {
  const out: string[] = [`cluster ${plan.cluster}: would be generation ${plan.generation} (dry run: nothing changed)`];
  for (const w of plan.warnings) out.push(`warning: ${w}`);
  for (const n of plan.nodes) {
    out.push('', `== node ${n.node}`, 'changes:', ...n.changes.map((c) => `  ${c}`));
    out.push('pg_hba.conf managed block:', ...n.hba.trimEnd().split('\n').map((l) => `  ${l}`));
    out.push('pg_ident.conf managed block:', ...n.ident.trimEnd().split('\n').map((l) => `  ${l}`));
    out.push('settings:', ...Object.entries(n.settings).map(([k, val]) => `  ${k} = ${val}`));
    out.push(`roles: ${n.roles.join(', ') || '(none)'}`);
    out.push('certificates:', ...(n.certificates.length ? n.certificates.map((c) => `  ${c}`) : ['  (none)']));
    out.push('files:', ...n.files.map((f) => `  ${f}`));
  }
  return `${out.join('\n')}\n`;
}

// --- status -------------------------------------------------------------------------------

const STATUS = {
  usage: 'pgaccord status [CLUSTER] [--json] [--wait] [--timeout SECONDS] [connection options]',
  summary: 'Per node: desired and applied generation, phase, certificate expiry, last contact, inter-node probes, errors. Without CLUSTER: every cluster.',
  details: `
options:
  --json              print ClusterStatusResponse documents (an array without CLUSTER)
  --wait              wait until every node has applied and proved the current generation,
                      every probe passed, and every node has reported since the wait began
                      (so a report from before a failover cannot pass it): exit 0; exit 1 at
                      the timeout. Agents report at least every long-poll cycle (~30 s), so
                      give it more than that; --timeout 0 is one look, on the reports there are.
  --timeout SECONDS   how long --wait waits (default 300)
${CONNECTION_HELP}`,
  options: { json: { type: 'boolean' }, wait: { type: 'boolean' }, timeout: { type: 'string' }, ...CONNECTION_OPTIONS },
  positionals: { min: 0, max: 1 },
} as const;

type ClusterStatus = Static<typeof ClusterStatusResponse>;

export async function runStatus(argv: string[]): Promise<number> {
  const parsed = parseCommand(STATUS, argv);
  if (!parsed) return 0;
  const v = parsed.values;
  if (v.timeout !== undefined && !/^\d+(\.\d+)?$/.test(v.timeout)) throw new UsageError(`--timeout: "${v.timeout}" is not a number of seconds`);
  const timeoutS = v.timeout !== undefined ? Number(v.timeout) : 300;
  const only = parsed.positionals[0];
  return withConn(v, async (conn) => {
    const deadline = Date.now() + timeoutS * 1000;
    // --wait: each node's report time at the first look; only a later report counts.
    const firstSeen = new Map<string, string | null>();
    const stale = (s: ClusterStatus) =>
      s.nodes.filter((n) => {
        const key = `${s.cluster}/${n.node}`;
        if (!firstSeen.has(key)) firstSeen.set(key, n.reportedAt);
        const before = firstSeen.get(key) ?? null;
        return n.reportedAt === null || (before !== null && Date.parse(n.reportedAt) <= Date.parse(before));
      }).map((n) => `${s.cluster}/${n.node}`);
    for (;;) {
      const names = only ? [only] : (await call<{ clusters: { name: string }[] }>(conn, 'GET', '/v1/clusters')).clusters.map((c) => c.name);
      const statuses = await Promise.all(names.map((n) => call<ClusterStatus>(conn, 'GET', `/v1/clusters/${encodeURIComponent(n)}/status`)));
      const converged = statuses.every((s) => s.converged);
      // --timeout 0 is one look: converged now, on the reports there are.
      const notReported = v.wait && timeoutS > 0 ? statuses.flatMap(stale) : [];
      const done = converged && notReported.length === 0;
      if (!v.wait || done || Date.now() >= deadline) {
        if (v.json) process.stdout.write(`${JSON.stringify(only ? statuses[0] : statuses, null, 2)}\n`);
        else process.stdout.write(statuses.length ? statuses.map(formatStatus).join('\n') : 'no clusters\n');
        if (v.wait && !done) {
          process.stderr.write(converged ? `no report since the wait began from ${notReported.join(', ')} after ${timeoutS}s\n` : `not converged after ${timeoutS}s: ${statuses.flatMap(notConverged).join(', ')}\n`);
          return 1;
        }
        return 0;
      }
      // A status read is cheap (no compile): look four times a second, so --wait ends when the
      // cluster converges, not up to a second later (convergence takes about that long).
      await new Promise((r) => setTimeout(r, Math.min(250, Math.max(0, deadline - Date.now()))));
    }
  });
}

/** Each node holding its cluster back, with why (the same conditions as the coordinator's `converged`). */
function notConverged(s: ClusterStatus): string[] {
  return s.nodes.flatMap((n) => {
    const why = [
      ...(n.appliedGeneration !== s.generation ? [`generation ${n.appliedGeneration} of ${s.generation}`] : []),
      ...(n.phase !== 'converged' ? [n.phase] : []),
      ...(n.stale ? ['stale'] : []),
      ...(n.probes.some((p) => !p.ok) ? ['probe failing'] : []),
    ];
    return why.length ? [`${s.cluster}/${n.node} (${why.join(', ')})`] : [];
  });
}

/** How long the node's apply of its generation took, and its slowest phase (every phase: --json). */
export function applyTime(n: Pick<NodeStatusView, 'timings'>): string {
  const t = n.timings;
  if (!t) return '-';
  const slowest = Object.entries(t.phases).sort((a, b) => b[1] - a[1])[0];
  return `${Math.round(t.totalMs)}ms${slowest ? ` (${slowest[0]} ${Math.round(slowest[1])})` : ''}`;
}

function certExpiry(n: NodeStatusView): string {
  const c = n.servedCertificate ?? n.certificates[0];
  if (!c) return '-';
  const days = (Date.parse(c.notAfter) - Date.now()) / 86400_000;
  return days < 0 ? 'EXPIRED' : `${days.toFixed(days < 10 ? 1 : 0)}d`;
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd()).join('\n');
}

export function formatStatus(s: ClusterStatus): string {
  const head = `cluster ${s.cluster}  generation ${s.generation}  auth ${s.auth}${s.insecure ? ' (INSECURE: trust rules)' : ''}  sslmode ${s.sslmode}  ${s.converged ? 'CONVERGED' : 'NOT CONVERGED'}`;
  const rows = [['NODE', 'DESIRED', 'APPLIED', 'PHASE', 'CERT', 'CONTACT', 'PROBES', 'APPLY', 'ERRORS']];
  for (const n of s.nodes) {
    const ok = n.probes.filter((p) => p.ok).length;
    rows.push([
      n.node,
      String(n.desiredGeneration),
      String(n.appliedGeneration),
      `${n.phase}${n.stale ? ' (stale)' : ''}${n.enrolled ? '' : ' (not enrolled)'}`,
      certExpiry(n),
      ago(n.lastContact, new Date()),
      n.probes.length ? `${ok}/${n.probes.length} ok` : '-',
      applyTime(n),
      n.errors.length ? n.errors.map((e) => `${e.code}: ${e.message}`).join('; ') : '-',
    ]);
  }
  const failed = s.nodes.flatMap((n) => [
    ...n.probes.filter((p) => !p.ok).map((p) => `  probe ${n.node} -> ${p.to} as ${p.role}: ${p.error ?? 'failed'}`),
    // the profile's verification queries: the failed ones, and the ones with a note (pgd without bdr: "bdr not installed")
    ...(n.checks ?? []).filter((c) => !c.ok || c.note !== null).map((c) => `  check ${n.node} ${c.name}: ${c.ok ? 'ok' : 'FAILED'}${c.note ? ` (${c.note})` : ''}`),
  ]);
  // the matrix only says something once there are two nodes
  const grid = s.nodes.length > 1 ? formatProbeMatrix(probeMatrix(s)) : '';
  return `${head}\n${table(rows)}\n${grid}${failed.length ? `${failed.join('\n')}\n` : ''}`;
}

// --- token --------------------------------------------------------------------------------

const TOKEN = {
  usage: 'pgaccord token create CLUSTER NODE [--ttl DURATION] [connection options]',
  summary: 'Print a single-use join token bound to one node. It carries the coordinator CA fingerprint for the agent to pin.',
  details: `
options:
  --ttl DURATION      lifetime of the token (default 1h; e.g. 30m, 2h, 1d; at most 30d)
${CONNECTION_HELP}

The token is printed alone on standard output; its expiry goes to standard error.`,
  options: { ttl: { type: 'string' }, ...CONNECTION_OPTIONS },
  positionals: { min: 3, max: 3 },
} as const;

export async function runToken(argv: string[]): Promise<number> {
  if (argv[0] !== 'create' && !argv.includes('--help') && !argv.includes('-h')) throw new UsageError(`unknown or missing subcommand${argv[0] ? ` "${argv[0]}"` : ''}\nusage: ${TOKEN.usage}`);
  const parsed = parseCommand(TOKEN, argv);
  if (!parsed) return 0;
  const [, cluster, node] = parsed.positionals as [string, string, string];
  const v = parsed.values;
  if (v.ttl !== undefined && parseDuration(v.ttl) === null) throw new UsageError(`--ttl: "${v.ttl}" is not a duration (e.g. 30m, 1h, 1d)`);
  return withConn(v, async (conn) => {
    const res = await call<{ token: string; expiresAt: string }>(conn, 'POST', `/v1/clusters/${encodeURIComponent(cluster)}/nodes/${encodeURIComponent(node)}/tokens`, v.ttl ? { ttl: v.ttl } : {});
    process.stdout.write(`${res.token}\n`);
    process.stderr.write(`single-use join token for ${cluster}/${node}, expires ${res.expiresAt}\n`);
    return 0;
  });
}

// --- cert ---------------------------------------------------------------------------------

const CERT = {
  usage: 'pgaccord cert list CLUSTER | revoke CLUSTER SERIAL | renew CLUSTER [SERIAL] [--node NODE] | crl CLUSTER | rotate-ca CLUSTER --start|--status|--finish | rotate-passwords CLUSTER [--role ROLE]  [--json] [connection options]',
  summary: 'List a cluster\'s certificates with their days left and expiry level; revoke one; force early renewal; print the CRL.',
  details: `
subcommands:
  list CLUSTER           every certificate issued for the cluster: serial, node, slot, CN, not after,
                         days left, level, state (current, superseded, revoked, expired)
  revoke CLUSTER SERIAL  revoke a certificate. A cluster certificate goes into the cluster CRL with a
                         new generation: every node installs it, refuses the certificate from then on
                         and ends the sessions that authenticated with it; the node that held it gets
                         a new key and certificate. An agent identity stops authenticating at once.
  renew CLUSTER [SERIAL] re-issue before time, with new keys: one certificate (SERIAL), every live
                         certificate of a node (--node NODE), or of the whole cluster (neither)
  crl CLUSTER            print the cluster CRL (PEM; one CRL per CA during a CA rotation)
  rotate-passwords CLUSTER [--role ROLE]
                         new random passwords and SCRAM verifiers for every role that logs in with
                         a password (or ROLE), in one generation: every agent wakes at once and
                         writes the passfile line and the role's verifier in the same apply.
                         PostgreSQL keeps one password per role, so new connections can fail for
                         the short time between one node's apply and another's (measured: see
                         docs/lifecycle.md); sessions already open are not affected.
  rotate-ca CLUSTER --start | --status | --finish
                         rotate the cluster CA in phases, without a failed connection:
                         --start   a new CA joins every node's trust bundle (and its CRL the CRL
                                   file, when the cluster has one); the old CA still issues.
                                   When every node has proved the two-CA bundle (applied,
                                   converged, probes ok) the coordinator by itself lets the new CA
                                   issue and has every old leaf re-issued (new keys).
                         --status  the phase (trust, reissue), both CAs, what each node waits for
                         --finish  the old CA leaves every bundle. Refused (exit 1, HTTP 409,
                                   nothing changed) until every node has applied the re-issue
                                   generation, converged with every probe ok, and serves and holds
                                   only leaves from the new CA.
levels (days left against lifetime):
  warning   less than 1/3 of the lifetime left (renewal, due at about 2/3, is overdue)
  critical  less than 1/10 of the lifetime left
  expired   past notAfter
options:
  --node NODE            (renew) every live certificate of this node
  --json                 print the API answer as JSON
${CONNECTION_HELP}`,
  options: { json: { type: 'boolean' }, node: { type: 'string' }, start: { type: 'boolean' }, role: { type: 'string' }, finish: { type: 'boolean' }, status: { type: 'boolean' }, ...CONNECTION_OPTIONS },
  positionals: { min: 2, max: 3 },
} as const;

export async function runCert(argv: string[]): Promise<number> {
  const sub = argv[0];
  if (!['list', 'revoke', 'renew', 'crl', 'rotate-ca', 'rotate-passwords'].includes(sub ?? '') && !argv.includes('--help') && !argv.includes('-h')) throw new UsageError(`unknown or missing subcommand${sub ? ` "${sub}"` : ''}\nusage: ${CERT.usage}`);
  const parsed = parseCommand(CERT, argv);
  if (!parsed) return 0;
  const cluster = parsed.positionals[1]!;
  const arg = parsed.positionals[2];
  const v = parsed.values;
  const base = `/v1/clusters/${encodeURIComponent(cluster)}`;
  const print = (res: unknown, text: string) => process.stdout.write(v.json ? `${JSON.stringify(res, null, 2)}\n` : text);
  if (sub === 'revoke') {
    if (!arg) throw new UsageError(`cert revoke needs CLUSTER SERIAL\nusage: ${CERT.usage}`);
    return withConn(v, async (conn) => {
      const res = await call<{ serial: string; revokedAt: string; generation: number; alreadyRevoked: boolean; sameKey?: string[] }>(conn, 'POST', `${base}/certificates/${encodeURIComponent(arg.toLowerCase().replace(/:/g, ''))}/revoke`, {});
      const sameKey = res.sameKey ?? []; // absent from a coordinator older than key revocation
      const also = sameKey.length > 0 ? `; also revoked, same key: ${sameKey.join(', ')}` : '';
      print(res, `${res.alreadyRevoked ? 'already revoked' : 'revoked'}: ${res.serial} at ${res.revokedAt} (cluster ${cluster}, generation ${res.generation})${also}\n`);
      return 0;
    });
  }
  if (sub === 'renew') {
    return withConn(v, async (conn) => {
      const body = { ...(arg ? { serial: arg } : {}), ...(v.node ? { node: v.node } : {}) };
      const res = await call<{ generation: number; serials: string[] }>(conn, 'POST', `${base}/renew`, body);
      print(res, `renewal requested for ${res.serials.length} certificate(s) (generation ${res.generation}):\n${res.serials.map((x) => `  ${x}`).join('\n')}\n`);
      return 0;
    });
  }
  if (sub === 'rotate-passwords') {
    return withConn(v, async (conn) => {
      const res = await call<{ generation: number; roles: string[] }>(conn, 'POST', `${base}/rotate-passwords`, v.role ? { role: v.role } : {});
      print(res, `new passwords for ${res.roles.join(', ')} (generation ${res.generation})\n`);
      return 0;
    });
  }
  if (sub === 'rotate-ca') {
    const modes = (['start', 'finish', 'status'] as const).filter((m) => v[m]);
    if (modes.length > 1) throw new UsageError(`cert rotate-ca takes one of --start, --status, --finish\nusage: ${CERT.usage}`);
    const mode = modes[0] ?? 'status';
    return withConn(v, async (conn) => {
      const res = mode === 'status'
        ? await call<CaRotationStatus>(conn, 'GET', `${base}/ca-rotation`)
        : await call<CaRotationStatus>(conn, 'POST', `${base}/ca-rotation/${mode}`, {});
      const lines = [`cluster ${cluster}: CA rotation phase ${res.phase} (generation ${res.generation})`];
      for (const ca of res.cas) lines.push(`  ${ca.role.padEnd(7)} CA ${ca.serial}  ${ca.commonName}  until ${ca.notAfter}`);
      for (const n of res.nodes) lines.push(`  ${n.node}: ${n.waiting.length === 0 ? 'ready' : `waiting: ${n.waiting.join('; ')}`}`);
      if (res.phase === 'reissue') lines.push(res.canFinish ? `every node proved leaves from the new CA: pgaccord cert rotate-ca ${cluster} --finish` : 'old leaves are still being replaced; --finish is refused until every node is ready');
      if (res.phase === 'trust') lines.push('waiting for every node to prove the two-CA bundle; the new CA then issues by itself');
      print(res, `${lines.join('\n')}\n`);
      return 0;
    });
  }
  if (sub === 'crl') {
    return withConn(v, async (conn) => {
      const pem = await call<string>(conn, 'GET', `${base}/crl`);
      process.stdout.write(typeof pem === 'string' ? pem : JSON.stringify(pem));
      return 0;
    });
  }
  return withConn(v, async (conn) => {
    const res = await call<Static<typeof CertificateListResponse>>(conn, 'GET', `${base}/certificates`);
    if (v.json) {
      process.stdout.write(`${JSON.stringify(res, null, 2)}\n`);
      return 0;
    }
    const rows = [['SERIAL', 'NODE', 'SLOT', 'CN', 'NOT AFTER', 'DAYS LEFT', 'LEVEL', 'STATE']];
    for (const c of res.certificates) {
      const state = c.revoked ? 'revoked' : c.daysLeft < 0 ? 'expired' : c.current === false ? 'superseded' : c.renewRequested ? 'current (renewal requested)' : 'current';
      rows.push([c.serial, c.node, c.slot, c.commonName, c.notAfter, c.daysLeft.toFixed(c.daysLeft < 1 ? 3 : 1), c.revoked ? '-' : (c.level ?? '-'), state]);
    }
    process.stdout.write(`${res.certificates.length ? table(rows) : `cluster ${cluster}: no certificates issued yet`}\n`);
    return 0;
  });
}
