// The admin commands' connection to the coordinator: HTTPS with the coordinator CA pinned and the
// admin bearer token; on the coordinator's own host both default to the files in its data
// directory. Several coordinators sharing one store are tried in turn.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { IncomingHttpHeaders } from 'node:http';
// Node's own HTTPS client (undici alone costs ~20 MB and ~150 ms at start); each command loads
// only its own module, so `--help` and status answer without typebox, yaml or node-forge.
import { Agent, request } from 'node:https';
import type { ErrorBody } from '../../shared/contract/api.ts';
import { UsageError } from '../../shared/system/cli.ts';
import { parseCoordinatorUrls } from '../../shared/contract/coordinator-urls.ts';
import { DEFAULT_DATA_DIR, FILES } from '../store/datadir-layout.ts';

export const CONNECTION_OPTIONS = {
  coordinator: { type: 'string', multiple: true },
  'token-file': { type: 'string' },
  ca: { type: 'string' },
  'data-dir': { type: 'string' },
} as const;

export const CONNECTION_HELP = `
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

export interface Conn {
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
export async function call<T>(conn: Conn, method: string, path: string, body?: unknown): Promise<T> {
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
        throw new Error(`the coordinator at ${url} failed after the request was sent (${err.message || err.code}): `
          + 'it may or may not have been done; look (pgaccord status) before trying again');
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
      headers: {
        authorization: `Bearer ${conn.token}`,
        ...(payload !== undefined ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}),
      },
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

export async function withConn(v: ConnValues, fn: (conn: Conn) => Promise<number>): Promise<number> {
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
