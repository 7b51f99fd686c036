// Helpers for the coordinator tests: an HTTPS client (optionally with a client certificate),
// one coordinator per test file, and enrollment of a node.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { Agent, request } from 'undici';
import { startCoordinator, type CoordinatorOptions, type RunningCoordinator } from '../../coordinator/main.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import { createCsr } from '../../shared/crypto/csr.ts';
import { generateRsaKey } from '../../shared/crypto/keys.ts';

export interface Reply {
  status: number;
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  text: string;
  contentType: string;
}

export interface Client {
  call(method: string, path: string, opts?: { body?: unknown; token?: string | null; rawBody?: string }): Promise<Reply>;
  close(): Promise<void>;
}

const clients: Client[] = [];

export function httpsClient(baseUrl: string, caPem: string, identity?: { certPem: string; keyPem: string }): Client {
  const dispatcher = new Agent({
    connect: { ca: caPem, rejectUnauthorized: true, ...(identity ? { cert: identity.certPem, key: identity.keyPem } : {}) },
    headersTimeout: 0,
    bodyTimeout: 0,
  });
  const client: Client = {
    async call(method, path, opts = {}) {
      const headers: Record<string, string> = {};
      if (opts.token) headers.authorization = `Bearer ${opts.token}`;
      let body: string | undefined;
      if (opts.rawBody !== undefined) body = opts.rawBody;
      else if (opts.body !== undefined) body = JSON.stringify(opts.body);
      if (body !== undefined) headers['content-type'] = 'application/json';
      const res = await request(`${baseUrl}${path}`, { method: method as 'GET', headers, body, dispatcher });
      const text = await res.body.text();
      const contentType = String(res.headers['content-type'] ?? '');
      let parsed: unknown = null;
      if (contentType.includes('json') && text) parsed = JSON.parse(text);
      return { status: res.statusCode, body: parsed, text, contentType };
    },
    close: () => dispatcher.close(),
  };
  clients.push(client);
  return client;
}

export interface Harness {
  coord: RunningCoordinator;
  dir: string;
  admin: Client;
  /** Same server, no credentials. */
  anon: Client;
  token: string;
  caPem: string;
  logFile: string;
  /** Shift the coordinator's clock (ms). */
  setClockOffset(ms: number): void;
  /** Stop the coordinator (and its embedded store) and remove its directory. Call from after(). */
  close(): Promise<void>;
}

/** One coordinator for the whole test file: start it in before(), close it in after(). */
export async function startHarness(opts: Partial<CoordinatorOptions> & { dir?: string } = {}): Promise<Harness> {
  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), 'pgaccord-coord-')));
  let offset = 0;
  const logFile = join(dir, 'coordinator.log');
  const coord = await startCoordinator({
    dataDir: dir,
    listen: '127.0.0.1:0',
    longPollMs: 3000,
    logLevel: 'debug',
    logDestination: pino.destination({ dest: logFile, sync: true }),
    now: () => new Date(Date.now() + offset),
    ...opts,
  });
  const caPem = coord.dataDir.caPem;
  return {
    coord,
    dir,
    admin: wrapToken(httpsClient(coord.url, caPem), coord.dataDir.adminToken),
    anon: httpsClient(coord.url, caPem),
    token: coord.dataDir.adminToken,
    caPem,
    logFile,
    setClockOffset: (ms) => {
      offset = ms;
    },
    async close() {
      await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
      await coord.close();
      if (!opts.dir) await rm(dir, { recursive: true, force: true });
    },
  };
}

function wrapToken(c: Client, token: string): Client {
  return { call: (m, p, o = {}) => c.call(m, p, { token, ...o }), close: () => c.close() };
}

export interface EnrolledNode {
  cluster: string;
  node: string;
  keyPem: string;
  certPem: string;
  client: Client;
}

export async function enroll(h: Harness, cluster: string, node: string): Promise<EnrolledNode> {
  const tok = await h.admin.call('POST', `/v1/clusters/${cluster}/nodes/${node}/tokens`, { body: {} });
  if (tok.status !== 200) throw new Error(`token: ${tok.status} ${tok.text}`);
  const { privateKeyPem } = await generateRsaKey();
  const res = await h.anon.call('POST', '/v1/agent/enroll', { body: { token: tok.body.token, csr: createCsr(privateKeyPem, 'whatever') } });
  if (res.status !== 200) throw new Error(`enroll: ${res.status} ${res.text}`);
  return { cluster, node, keyPem: privateKeyPem, certPem: res.body.certificate, client: httpsClient(h.coord.url, h.caPem, { certPem: res.body.certificate, keyPem: privateKeyPem }) };
}

export function pgdSpec(name: string, overrides: Partial<ClusterSpec> = {}): ClusterSpec {
  return {
    name,
    profile: 'pgd',
    auth: 'cert',
    tls: { sslmode: 'verify-full', certLifetime: '90d' },
    nodes: [
      { name: 'node-1', host: 'db1.example.com', address: '10.0.0.11', port: 5432, kind: 'peer' },
      { name: 'node-2', host: 'db2.example.com', address: '10.0.0.12', port: 5432, kind: 'peer' },
      { name: 'node-3', host: '10.0.0.13', port: 5433, kind: 'peer' },
    ],
    ...overrides,
  };
}

/**
 * Long-polls the coordinator holds now: each subscribes to its cluster's changes before it reads
 * (coordinator/service/desired-state.ts), so a test waits for this to grow before it makes the
 * change meant to wake one, instead of sleeping and hoping the request has arrived.
 */
export const longPollsHeld = (h: Pick<Harness, 'coord'>) => h.coord.service.longPollsHeld;

/** The text of every store query (through the pool) that `work` makes, whitespace folded. */
export async function storeQueries(h: Pick<Harness, 'coord'>, work: () => Promise<void>): Promise<string[]> {
  const pool = h.coord.store.pool;
  const query = pool.query.bind(pool);
  const seen: string[] = [];
  pool.query = ((q: string | { text: string }, ...rest: unknown[]) => {
    seen.push((typeof q === 'string' ? q : q.text).replace(/\s+/g, ' ').trim());
    return (query as (...a: unknown[]) => unknown)(q, ...rest);
  }) as typeof pool.query;
  try {
    await work();
  } finally {
    delete (pool as { query?: unknown }).query;
  }
  return seen;
}
