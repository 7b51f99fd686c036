// What one held mTLS long-poll costs a bare Node HTTPS server in resident memory (issue 13: the
// coordinator held ~100 kB per agent, 86.5 kB of it a bare `https` server's). A server process per
// variant (TLS options, allocator, Node flags), a separate client process holding TLS_N connections
// (default 5000), each with a client certificate (ECDSA P-256, as the agents') and one request the
// server never answers (as a long-poll). kB per connection = (VmRSS held - VmRSS before) / N, both
// read after a full GC. TLS_VARIANTS=a,b,...: only those. Last line: JSON, kB per connection.
//   node bench/tls-conn-memory.ts        (as root for `ulimit -n` beyond 5000 connections)
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, createSecureContext, createServer as createTlsServer, type TLSSocket } from 'node:tls';
import { fileURLToPath } from 'node:url';

const SELF = fileURLToPath(import.meta.url);
const N = Number(process.env.TLS_N ?? 5000);
const CLIENT_CERTS = 32;
const JEMALLOC = '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2';

interface Variant {
  name: string;
  kind?: 'https' | 'tls' | 'http';
  env?: Record<string, string>;
  nodeFlags?: string[];
  tls?: { maxVersion?: 'TLSv1.2'; ciphers?: string; sessionTimeout?: number; noTickets?: boolean; ecdhCurve?: string };
  highWaterMark?: number;
  /** false: no client certificate asked for nor sent (what the peer certificate costs). */
  clientCert?: boolean;
  /** What the request handler keeps of the peer certificate: parsed strings (the product), the X509Certificate, nothing. */
  peer?: 'strings' | 'x509' | 'none';
}

const AEAD12 = 'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305';
const VARIANTS: Variant[] = [
  { name: 'a-default' },
  { name: 'a-http-no-tls', kind: 'http' },
  { name: 'a-tls-no-http', kind: 'tls' },
  { name: 'b-tls12-aead', tls: { maxVersion: 'TLSv1.2', ciphers: AEAD12 } },
  // TLS 1.3 without OpenSSL 3.5's default hybrid post-quantum key share (X25519MLKEM768).
  { name: 'h-tls13-x25519', tls: { ecdhCurve: 'X25519:P-256' } },
  { name: 'h-tls13-p256', tls: { ecdhCurve: 'P-256' } },
  { name: 'h-tls13-x25519-jemalloc', env: { LD_PRELOAD: JEMALLOC }, tls: { ecdhCurve: 'X25519:P-256' } },
  { name: 'h-tls13-x25519-mmap64k', env: { GLIBC_TUNABLES: 'glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=131072' }, tls: { ecdhCurve: 'X25519:P-256' } },
  { name: 'c-trim0', env: { GLIBC_TUNABLES: 'glibc.malloc.trim_threshold=0' } },
  { name: 'c-mmap-threshold-64k', env: { GLIBC_TUNABLES: 'glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=131072' } },
  { name: 'c-arena1', env: { GLIBC_TUNABLES: 'glibc.malloc.arena_max=1' } },
  { name: 'c-tcache-off', env: { GLIBC_TUNABLES: 'glibc.malloc.tcache_count=0' } },
  { name: 'd-jemalloc', env: { LD_PRELOAD: JEMALLOC } },
  { name: 'd-jemalloc-tls12', env: { LD_PRELOAD: JEMALLOC }, tls: { maxVersion: 'TLSv1.2', ciphers: AEAD12 } },
  { name: 'i-no-client-cert', clientCert: false },
  { name: 'e-hwm-1k', highWaterMark: 1024 },
  { name: 'e-peer-x509-kept', peer: 'x509' },
  { name: 'e-peer-not-read', peer: 'none' },
  { name: 'f-no-tickets', tls: { noTickets: true } },
  { name: 'f-session-timeout-1', tls: { sessionTimeout: 1 } },
  { name: 'g-semi-space-1', nodeFlags: ['--max-semi-space-size=1'] },
  { name: 'g-optimize-for-size', nodeFlags: ['--optimize-for-size'] },
];

// ---- the server: holds every request it gets; answers the parent's 'measure' after a full GC.
function serve(v: Variant, dir: string): void {
  const held = new Set<unknown>();
  const perSocket = new WeakMap<object, unknown>();
  const hold = (req: IncomingMessage, res: ServerResponse) => {
    const sock = req.socket as TLSSocket;
    if (v.peer !== 'none' && typeof sock.getPeerX509Certificate === 'function' && !perSocket.has(sock)) {
      const x = sock.getPeerX509Certificate();
      perSocket.set(sock, v.peer === 'x509' ? x : { subject: x?.subject, san: x?.subjectAltName, serial: x?.serialNumber, authorized: sock.authorized });
    }
    // As a long-poll: a timer per request, answered (never, here) when it fires or a change comes.
    const timer = setTimeout(() => res.end(), 3_600_000);
    held.add(res);
    res.on('close', () => (clearTimeout(timer), held.delete(res)));
  };
  const tlsOpts = {
    key: readFileSync(join(dir, 'server.key')),
    cert: readFileSync(join(dir, 'server.crt')),
    ca: [readFileSync(join(dir, 'ca.crt'))],
    requestCert: v.clientCert !== false,
    rejectUnauthorized: false,
    minVersion: 'TLSv1.2' as const,
    handshakeTimeout: 10_000,
    ...(v.tls?.maxVersion ? { maxVersion: v.tls.maxVersion } : {}),
    ...(v.tls?.ciphers ? { ciphers: v.tls.ciphers } : {}),
    ...(v.tls?.ecdhCurve ? { ecdhCurve: v.tls.ecdhCurve } : {}),
    ...(v.tls?.sessionTimeout ? { sessionTimeout: v.tls.sessionTimeout } : {}),
    // SSL_OP_NO_TICKET
    ...(v.tls?.noTickets ? { secureOptions: 0x4000 } : {}),
  };
  const httpOpts = { headersTimeout: 30_000, requestTimeout: 30_000, keepAliveTimeout: 10_000, ...(v.highWaterMark ? { highWaterMark: v.highWaterMark } : {}) };
  let server;
  if (v.kind === 'http') server = createHttpServer(httpOpts, hold);
  else if (v.kind === 'tls') {
    server = createTlsServer(tlsOpts, (s) => {
      held.add(s);
      s.once('data', () => held.add(s));
      s.on('close', () => held.delete(s));
    });
  } else server = createHttpsServer({ ...tlsOpts, ...httpOpts }, hold);
  server.maxConnections = 1_000_000;
  server.listen(0, '127.0.0.1', () => process.send!({ port: (server.address() as { port: number }).port }));
  const gc = (globalThis as { gc?: () => void }).gc!;
  process.on('message', (m: { cmd: string }) => {
    if (m.cmd === 'count') process.send!({ held: held.size });
    if (m.cmd === 'measure') {
      gc();
      gc();
      const mu = process.memoryUsage();
      process.send!({ held: held.size, heapUsed: mu.heapUsed, external: mu.external, arrayBuffers: mu.arrayBuffers });
    }
  });
}

// ---- the client: TLS_N connections, each with a client certificate and one request held.
async function clients(port: number, n: number, kind: Variant['kind'], dir: string, withCert: boolean): Promise<void> {
  const ca = readFileSync(join(dir, 'ca.crt'));
  const contexts = Array.from({ length: CLIENT_CERTS }, (_, i) =>
    createSecureContext(withCert ? { ca, key: readFileSync(join(dir, `c${i}.key`)), cert: readFileSync(join(dir, `c${i}.crt`)) } : { ca }));
  const request = `GET /v1/agent/desired?wait=55&generation=3 HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\nconnection: keep-alive\r\n`
    + `user-agent: pgaccord-agent\r\naccept: application/json\r\naccept-encoding: gzip, deflate\r\n\r\n`;
  const sockets: Socket[] = [];
  let next = 0;
  const one = (): Promise<void> => new Promise((resolve, reject) => {
    const i = next++;
    const s: Socket = kind === 'http'
      ? netConnect(port, '127.0.0.1', () => (s.write(request), resolve()))
      : tlsConnect({ host: '127.0.0.1', port, secureContext: contexts[i % CLIENT_CERTS], servername: 'localhost' }, () => (s.write(request), resolve()));
    s.on('error', reject);
    sockets.push(s);
  });
  const lanes = Array.from({ length: 64 }, async () => {
    while (next < n) await one();
  });
  await Promise.all(lanes);
  process.send!({ connected: sockets.length });
}

// ---- the parent: certificates, then a server and a client per variant.
function certificates(dir: string): void {
  const sh = (cmd: string) => {
    const r = spawnSync('/bin/sh', ['-c', cmd], { cwd: dir, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr}`);
  };
  const ec = (name: string) => sh(`openssl ecparam -name prime256v1 -genkey -noout -out ${name}.key`);
  ec('ca');
  sh('openssl req -x509 -new -key ca.key -subj "/CN=bench CA" -days 2 -out ca.crt');
  ec('server');
  writeFileSync(join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  sh('openssl req -new -key server.key -subj "/CN=localhost" | openssl x509 -req -CA ca.crt -CAkey ca.key -days 2 -extfile server.ext -out server.crt');
  for (let i = 0; i < CLIENT_CERTS; i++) {
    ec(`c${i}`);
    writeFileSync(join(dir, `c${i}.ext`), `subjectAltName=URI:pgaccord://cluster/c${i}/node/n${i}\nextendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n`);
    sh(`openssl req -new -key c${i}.key -subj "/CN=pgaccord-agent" | openssl x509 -req -CA ca.crt -CAkey ca.key -days 2 -extfile c${i}.ext -out c${i}.crt`);
  }
}

const rssKb = (pid: number) => Number(/^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);

function ask<T>(child: ChildProcess, cmd: string): Promise<T> {
  child.send({ cmd });
  return once(child, 'message').then(([m]) => m as T);
}

function child(args: string[], v: Variant): ChildProcess {
  return spawn('/bin/sh', ['-c', 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"', 'sh', process.execPath, ...args],
    { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env: { ...process.env, ...v.env } });
}

async function measure(v: Variant, dir: string): Promise<Record<string, number | string>> {
  const server = child([...(v.nodeFlags ?? []), '--expose-gc', SELF, 'server', JSON.stringify(v), dir], v);
  const [{ port }] = (await once(server, 'message')) as [{ port: number }];
  const run = async (n: number) => {
    const c = child([SELF, 'client', String(port), String(n), v.kind ?? 'https', dir, String(v.clientCert !== false)], {} as Variant);
    await once(c, 'message');
    for (;;) {
      const { held } = await ask<{ held: number }>(server, 'count');
      if (held >= n) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    return c;
  };
  // Warm up (lazy modules, JIT, pools) with 200 connections, then close them.
  const warm = await run(200);
  warm.kill();
  await once(warm, 'exit');
  while ((await ask<{ held: number }>(server, 'count')).held > 0) await new Promise((r) => setTimeout(r, 100));
  const before = await ask<{ heapUsed: number; external: number }>(server, 'measure');
  const rss0 = rssKb(server.pid!);
  const started = Date.now();
  const c = await run(N);
  const connectS = (Date.now() - started) / 1000;
  const after = await ask<{ heapUsed: number; external: number; held: number }>(server, 'measure');
  const rss1 = rssKb(server.pid!);
  c.kill();
  server.kill();
  await Promise.all([once(c, 'exit'), once(server, 'exit')]);
  const per = (a: number, b: number) => Math.round(((b - a) / N) * 10) / 10;
  return {
    variant: v.name, held: after.held, rss_before_mb: Math.round(rss0 / 102.4) / 10, rss_held_mb: Math.round(rss1 / 102.4) / 10,
    kb_per_conn: per(rss0, rss1), heap_kb: per(before.heapUsed / 1024, after.heapUsed / 1024),
    external_kb: per(before.external / 1024, after.external / 1024), connect_s: connectS,
  };
}

const [mode, ...rest] = process.argv.slice(2);
if (mode === 'server') serve(JSON.parse(rest[0]!) as Variant, rest[1]!);
else if (mode === 'client') await clients(Number(rest[0]), Number(rest[1]), rest[2] as Variant['kind'], rest[3]!, rest[4] === 'true');
else {
  const dir = mkdtempSync(join(tmpdir(), 'tls-conn-memory-'));
  try {
    certificates(dir);
    const only = process.env.TLS_VARIANTS?.split(',');
    const rows = [];
    for (const v of VARIANTS.filter((x) => !only || only.some((o) => x.name.startsWith(o)))) {
      const row = await measure(v, dir);
      console.error(JSON.stringify(row));
      rows.push(row);
    }
    console.log(JSON.stringify({ connections: N, node: process.version, openssl: process.versions.openssl, kb_per_conn: Object.fromEntries(rows.map((r) => [r.variant, r.kb_per_conn])) }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
