// API fuzzing (issue 14 item 15): requests generated from the OpenAPI document the coordinator
// serves, for every admin, agent and public route, sent by valid and hostile principals (the
// admin token, no token, a wrong token, an enrolled agent's mTLS identity, another cluster's
// agent, a perfect-looking identity from a CA the coordinator never made) to a real coordinator
// and its embedded store over real HTTPS. No answer may be a 5xx, none may break the schema the
// document declares for its status (undeclared statuses included), no hostile principal may get a
// 2xx, and the server still answers /healthz after. Counts per route and status class are printed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createPublicKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import fc from 'fast-check';
import { Agent, request } from 'undici';
import { CertificateAuthority } from '../../coordinator/ca/ca.ts';
import { AGENT_CN, identityUri } from '../../coordinator/service.ts';
import { NAME_PATTERN } from '../../shared/contract/schema.ts';
import { createCsr } from '../../shared/crypto/csr.ts';
import { forgePublicKeyFromPem, generateRsaKey } from '../../shared/crypto/keys.ts';
import { enroll, pgdSpec, startHarness, type EnrolledNode, type Harness } from '../helpers/coordinator-harness.ts';
import { operations, violation, type Json, type Operation } from '../helpers/openapi.ts';

const REQUESTS = Number(process.env.PGACCORD_FUZZ_REQUESTS ?? 10_000);
const SEED = Number(process.env.PGACCORD_FUZZ_SEED ?? Date.now() % 2 ** 31);
const CONCURRENCY = Number(process.env.PGACCORD_FUZZ_CONCURRENCY ?? 16);

type PrincipalName = 'admin' | 'none' | 'wrong-token' | 'agent' | 'agent-2' | 'other-cluster-agent' | 'forged-identity';
interface Principal { name: PrincipalName; dispatcher: Agent; token?: string }
interface FuzzRequest { op: number; principal: PrincipalName; path: string; body: { kind: 'json'; value: unknown } | { kind: 'raw'; text: string; contentType: string | null } | null }

let h: Harness;
let doc: Json;
const principals = new Map<PrincipalName, Principal>();
const enrolled: Record<string, EnrolledNode> = {};
/** Pools of realistic values the generators mix with arbitrary ones. */
const pool = { tokens: [] as string[], csrs: [] as string[], serials: [] as string[] };
/** Clusters the fuzzer may create, replace and delete; fz and other keep their agents. */
const SCRATCH = ['scratch-1', 'scratch-2'];

/** TLS connections opened: keep-alive should keep this near 4 per principal. */
let connectionsOpened = 0;
const dispatcher = (identity?: { certPem: string; keyPem: string }) =>
  track(new Agent({ connect: { ca: h.caPem, rejectUnauthorized: true, ...(identity ? { cert: identity.certPem, key: identity.keyPem } : {}) }, connections: 4, pipelining: 1, keepAliveTimeout: 30_000, headersTimeout: 30_000, bodyTimeout: 30_000 }));
const track = (a: Agent) => a.on('connect', () => { connectionsOpened++; });

before(async () => {
  // A short long-poll, so that a generated desired?after=N does not hold a worker for 30 s.
  h = await startHarness({ longPollMs: 300, logLevel: 'warn' });
  for (const name of ['fz', 'other']) {
    const put = await h.admin.call('PUT', `/v1/clusters/${name}`, { body: pgdSpec(name) });
    assert.equal(put.status, 200, put.text);
  }
  enrolled.agent = await enroll(h, 'fz', 'node-1');
  enrolled['agent-2'] = await enroll(h, 'fz', 'node-2');
  enrolled.other = await enroll(h, 'other', 'node-1');
  // A perfect-looking identity for fz/node-1, signed by a CA the coordinator never made.
  const { ca } = await CertificateAuthority.create('evil', new Date());
  const { privateKeyPem } = await generateRsaKey();
  const spki = createPublicKey(privateKeyPem).export({ type: 'spki', format: 'pem' }).toString();
  const forged = ca.issue({ publicKey: forgePublicKeyFromPem(spki), commonName: AGENT_CN, uris: [identityUri('fz', 'node-1')], usage: 'client', lifetimeSeconds: 3600, now: new Date() });
  for (const [name, p] of [
    ['admin', { dispatcher: dispatcher(), token: h.token }],
    ['none', { dispatcher: dispatcher() }],
    ['wrong-token', { dispatcher: dispatcher(), token: `${h.token.slice(0, -2)}xx` }],
    ['agent', { dispatcher: dispatcher(enrolled.agent) }],
    ['agent-2', { dispatcher: dispatcher(enrolled['agent-2']) }],
    ['other-cluster-agent', { dispatcher: dispatcher(enrolled.other) }],
    ['forged-identity', { dispatcher: dispatcher({ certPem: forged.pem, keyPem: privateKeyPem }) }],
  ] as const) principals.set(name, { name, ...p });
  // Single-use tokens for node-3 (not enrolled) and valid CSRs: the 200 paths of enroll and csr.
  for (let i = 0; i < 4; i++) {
    const t = await h.admin.call('POST', '/v1/clusters/fz/nodes/node-3/tokens', { body: {} });
    pool.tokens.push(t.body.token);
  }
  for (let i = 0; i < 2; i++) pool.csrs.push(createCsr((await generateRsaKey()).privateKeyPem, 'fuzz'));
  // Serials the fuzzer may revoke: none of the agents' identities (that would end the run's principals).
  pool.serials.push('0a', 'ff'.repeat(16), '7'.repeat(64));
  doc = (await h.anon.call('GET', '/openapi.json')).body;
});
after(async () => {
  await Promise.all([...principals.values()].map((p) => p.dispatcher.close().catch(() => undefined)));
  await h?.close();
});

// --- requests from the OpenAPI document --------------------------------------------------

/**
 * Strings matching a pattern: drawn once per pattern (fast-check's stringMatching costs
 * milliseconds a value, which would be most of the run), then picked from.
 */
const patternPools = new Map<string, fc.Arbitrary<string>>();
function matching(pattern: string | RegExp): fc.Arbitrary<string> {
  const key = String(pattern);
  let arb = patternPools.get(key);
  if (!arb) patternPools.set(key, (arb = fc.constantFrom(...new Set(fc.sample(fc.stringMatching(new RegExp(pattern)), { numRuns: 60, seed: SEED })))));
  return arb;
}

/** Values that conform to a JSON schema (the subset TypeBox emits), small. */
function fromSchema(s: Json, depth = 0): fc.Arbitrary<unknown> {
  if (s === undefined || s === null || Object.keys(s).length === 0 || depth > 6) return fc.jsonValue({ maxDepth: 2 });
  if ('const' in s) return fc.constant(s.const);
  if (s.enum) return fc.constantFrom(...s.enum);
  if (s.anyOf) return fc.oneof(...s.anyOf.map((x: Json) => fromSchema(x, depth + 1)));
  switch (s.type) {
    case 'null': return fc.constant(null);
    case 'boolean': return fc.boolean();
    case 'integer': return fc.integer({ min: s.minimum ?? -5, max: s.maximum ?? 1_000_000 });
    case 'number': return fc.double({ min: s.minimum ?? -1e6, max: s.maximum ?? 1e6, noNaN: true });
    case 'string':
      if (s.pattern) return matching(s.pattern);
      return fc.string({ minLength: s.minLength ?? 0, maxLength: Math.min(s.maxLength ?? 40, 40) });
    case 'array': return fc.array(fromSchema(s.items, depth + 1), { minLength: s.minItems ?? 0, maxLength: Math.max(s.minItems ?? 0, Math.min(s.maxItems ?? 3, 3)) });
    case 'object': {
      if (s.patternProperties) return fc.dictionary(fc.string({ maxLength: 12 }), fromSchema(Object.values<Json>(s.patternProperties)[0], depth + 1), { maxKeys: 3 });
      const props = s.properties ?? {};
      const required = new Set<string>(s.required ?? []);
      return fc.record(Object.fromEntries(Object.entries<Json>(props).map(([k, v]) => [k, fromSchema(v, depth + 1)])), { requiredKeys: [...required].filter((k) => k in props) });
    }
    default: return fc.jsonValue({ maxDepth: 2 });
  }
}

/** A body that conforms, one that almost does (a field replaced or added), or anything at all. */
function bodyFor(schema: Json): fc.Arbitrary<FuzzRequest['body']> {
  const conforming = fromSchema(schema);
  const mutated = fc.tuple(conforming, fc.string({ maxLength: 12 }), fc.jsonValue({ maxDepth: 2 })).map(([v, k, x]) =>
    v && typeof v === 'object' && !Array.isArray(v) ? { ...v, [Object.keys(v)[0] ?? k]: x } : x);
  const raw = fc.oneof(
    fc.constantFrom('{"a":', '', 'null', '[]', '"x"', '{"__proto__": {"admin": true}}', '{"constructor": {"prototype": {}}}', '\u0000', '{}'.padEnd(3 * 1024 * 1024, ' ')),
    fc.string({ maxLength: 200 }),
  );
  return fc.oneof(
    { weight: 4, arbitrary: conforming.map((value) => ({ kind: 'json' as const, value })) },
    { weight: 2, arbitrary: mutated.map((value) => ({ kind: 'json' as const, value })) },
    { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 3 }).map((value) => ({ kind: 'json' as const, value })) },
    { weight: 1, arbitrary: fc.tuple(raw, fc.constantFrom('application/json', 'text/plain', null, 'application/json; charset=latin1')).map(([text, contentType]) => ({ kind: 'raw' as const, text, contentType })) },
    { weight: 1, arbitrary: fc.constant(null) },
  );
}

const name = () => matching(NAME_PATTERN);
const anyText = fc.oneof(fc.string({ maxLength: 30 }), fc.string({ unit: 'grapheme', maxLength: 10 }), fc.constantFrom('..', '%2e%2e', '-', 'a'.repeat(300), '0', 'constructor', '__proto__'));

function pathParam(op: Operation, param: string): fc.Arbitrary<string> {
  const destructive = op.method === 'PUT' || op.method === 'DELETE';
  const known = param === 'cluster' ? (destructive ? SCRATCH : ['fz', 'other', 'nosuch', ...SCRATCH])
    : param === 'node' ? ['node-1', 'node-2', 'node-3', 'node-9']
    : param === 'serial' ? pool.serials
    : ['x'];
  return fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...known) }, { weight: 2, arbitrary: param === 'serial' ? matching(/^[0-9a-f]{1,64}$/) : name() }, { weight: 1, arbitrary: anyText })
    // Never the clusters whose agents are the run's principals, for routes that replace or delete.
    .filter((v) => !(destructive && param === 'cluster' && ['fz', 'other'].includes(v)));
}

function queryValue(schema: Json): fc.Arbitrary<string> {
  return fc.oneof({ weight: 4, arbitrary: fromSchema(schema).map(String) }, { weight: 1, arbitrary: fc.oneof(fc.integer().map(String), fc.string({ maxLength: 10 }), fc.constantFrom('1e3', '-1', '99999999999999999999', '')) });
}

/** Bodies with a real chance of a 200: valid specs, real tokens and CSRs. */
function realisticBody(op: Operation, cluster: string): fc.Arbitrary<FuzzRequest['body']> | null {
  if (op.path === '/v1/clusters/{cluster}' && op.method === 'PUT' || op.path === '/v1/clusters/{cluster}/plan') {
    return fc.record({
      auth: fc.constantFrom('cert', 'scram-sha-256', 'trust'),
      nodes: fc.integer({ min: 1, max: 3 }),
      hba: fc.array(fc.record({ type: fc.constantFrom('host', 'hostssl'), database: fc.constantFrom('all', 'app'), user: fc.constantFrom('all', 'app_user'), address: fc.constantFrom('0.0.0.0/0', '10.1.0.0/16', '::1/128'), method: fc.constantFrom('trust', 'reject', 'scram-sha-256', 'md5') }), { maxLength: 2 }),
    }).map(({ auth, nodes, hba }) => ({ kind: 'json' as const, value: { ...pgdSpec(cluster, { auth: auth as 'cert', tls: { sslmode: auth === 'trust' ? 'disable' : 'verify-full' }, hba: hba.map((r) => ({ ...r, method: r.type === 'host' && r.method === 'scram-sha-256' ? 'md5' : r.method })) as never }), nodes: pgdSpec(cluster).nodes.slice(0, nodes) } }));
  }
  if (op.path === '/v1/agent/enroll') return fc.record({ token: fc.constantFrom(...pool.tokens), csr: fc.constantFrom(...pool.csrs) }).map((value) => ({ kind: 'json' as const, value }));
  if (op.path === '/v1/agent/csr') return fc.record({ slot: fc.constantFrom('server', 'client-pgd_replication', 'client-nosuch'), csr: fc.constantFrom(...pool.csrs) }).map((value) => ({ kind: 'json' as const, value }));
  if (op.path === '/v1/clusters/{cluster}/renew') return fc.constantFrom({ kind: 'json' as const, value: {} }, { kind: 'json' as const, value: { node: 'node-1' } });
  return null;
}

function requestArb(ops: Operation[]): fc.Arbitrary<FuzzRequest> {
  return fc.integer({ min: 0, max: ops.length - 1 }).chain((i) => {
    const op = ops[i]!;
    const proper: PrincipalName[] = op.security === 'admin' ? ['admin'] : op.security === 'agent' ? ['agent', 'agent-2', 'other-cluster-agent'] : ['none'];
    const principal = fc.oneof({ weight: 3, arbitrary: fc.constantFrom(...proper) }, { weight: 2, arbitrary: fc.constantFrom<PrincipalName>('admin', 'none', 'wrong-token', 'agent', 'other-cluster-agent', 'forged-identity') });
    const params = fc.tuple(...op.pathParams.map((p) => pathParam(op, p.name)));
    const query = fc.tuple(...op.query.map((q) => fc.option(queryValue(q.schema), { nil: undefined })));
    return fc.tuple(principal, params, query).chain(([who, values, qs]) => {
      let path = op.path;
      op.pathParams.forEach((p, j) => { path = path.replace(`{${p.name}}`, encodeURIComponent(values[j]!)); });
      const search = op.query.map((q, j) => (qs[j] === undefined ? null : `${q.name}=${encodeURIComponent(qs[j]!)}`)).filter((x) => x !== null);
      if (search.length) path += `?${search.join('&')}`;
      const realistic = realisticBody(op, values[0] ?? '');
      const body: fc.Arbitrary<FuzzRequest['body']> = op.body === null
        ? (op.method === 'POST' ? fc.oneof({ weight: 3, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }).map((value) => ({ kind: 'json' as const, value })) }) : fc.constant(null))
        : realistic ? fc.oneof({ weight: 1, arbitrary: realistic }, { weight: 2, arbitrary: bodyFor(op.body) }) : bodyFor(op.body);
      return body.map((b) => ({ op: i, principal: who, path, body: b }));
    });
  });
}

// --- the run (answers checked by test/helpers/openapi.ts's violation) ---------------------

const allowed = (op: Operation, who: PrincipalName) =>
  op.security === 'none' || (op.security === 'admin' ? who === 'admin' : ['agent', 'agent-2', 'other-cluster-agent'].includes(who));
const clusterOf: Partial<Record<PrincipalName, string>> = { agent: 'fz', 'agent-2': 'fz', 'other-cluster-agent': 'other' };

test(`API fuzz: ${REQUESTS} requests generated from the served OpenAPI document, valid and hostile principals`, async () => {
  const ops = operations(doc);
  assert.ok(ops.length >= 20, `${ops.length} operations documented`);
  assert.ok(ops.some((o) => o.security === 'agent') && ops.some((o) => o.security === 'admin'));
  const generating = Date.now();
  const requests = fc.sample(requestArb(ops), { numRuns: REQUESTS, seed: SEED });
  const generatedIn = Date.now() - generating;
  // A deleted scratch cluster is created again by the next valid PUT, with a new CA key (and a
  // CA rotation start makes another): RSA key generation would be most of the run. A few deletes
  // that hit keep the 204 path covered; the rest go to a cluster that never exists.
  let deletes = 0;
  for (const r of requests) {
    const op = ops[r.op]!;
    if (op.method === 'DELETE' && SCRATCH.some((c) => r.path === `/v1/clusters/${c}`) && ++deletes > 6) r.path = '/v1/clusters/scratch-9';
  }
  const counts: Record<string, Record<string, number>> = {};
  const byPrincipal: Record<string, Record<string, number>> = {};
  const failures: string[] = [];
  const ms: Record<string, number[]> = {};
  let next = 0;
  const started = Date.now();
  const cpuBefore = process.cpuUsage();
  const worker = async () => {
    for (let k = next++; k < requests.length; k = next++) {
      const r = requests[k]!;
      const op = ops[r.op]!;
      const who = principals.get(r.principal)!;
      const headers: Record<string, string> = {};
      if (who.token) headers.authorization = `Bearer ${who.token}`;
      let body: string | undefined;
      if (r.body?.kind === 'json') {
        body = JSON.stringify(r.body.value) ?? 'null';
        headers['content-type'] = 'application/json';
      } else if (r.body?.kind === 'raw') {
        body = r.body.text;
        if (r.body.contentType) headers['content-type'] = r.body.contentType;
      }
      const label = `${op.method} ${op.path}`;
      let status: number;
      let text: string;
      let contentType: string;
      const t0 = Date.now();
      try {
        const res = await request(`${h.coord.url}${r.path}`, { method: op.method as 'GET', headers, body, dispatcher: who.dispatcher });
        text = await res.body.text();
        status = res.statusCode;
        contentType = String(res.headers['content-type'] ?? '');
      } catch (e) {
        // A reset on a hostile request (e.g. a 3 MB body) is the server's right; count it.
        status = 0;
        text = (e as Error).message;
        contentType = '';
      }
      const cls = status === 0 ? 'reset' : `${String(status)[0]}xx`;
      (ms[label] ??= []).push(Date.now() - t0);
      (counts[label] ??= {})[cls] = (counts[label]![cls] ?? 0) + 1;
      (byPrincipal[r.principal] ??= {})[cls] = (byPrincipal[r.principal]![cls] ?? 0) + 1;
      const what = `#${k} ${r.principal} ${op.method} ${r.path.slice(0, 120)} body=${JSON.stringify(r.body)?.slice(0, 160)}`;
      if (status === 0) {
        if (body === undefined || body.length < 2 * 1024 * 1024) failures.push(`${what}: connection failed: ${text}`);
        continue;
      }
      if (status >= 500) failures.push(`${what}: ${status} ${text.slice(0, 300)}`);
      const bad = violation(op, status, contentType, text);
      if (bad) failures.push(`${what}: ${status}: ${bad}`);
      if (status < 300 && !allowed(op, r.principal)) failures.push(`${what}: ${status} for a principal the route does not admit`);
      if (status === 200 && op.path === '/v1/agent/desired') {
        const d = JSON.parse(text);
        if (d.cluster !== clusterOf[r.principal]) failures.push(`${what}: desired state of cluster ${d.cluster} served to ${r.principal}`);
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const seconds = (Date.now() - started) / 1000;
  const cpu = process.cpuUsage(cpuBefore);
  const total = Object.values(counts).reduce((n, c) => n + Object.values(c).reduce((a, b) => a + b, 0), 0);
  console.log(`# api-fuzz: ${JSON.stringify({ seed: SEED, requests: total, seconds: Number(seconds.toFixed(1)), perSecond: Math.round(total / seconds), cpuSeconds: Number(((cpu.user + cpu.system) / 1e6).toFixed(1)), generatedInMs: generatedIn, connectionsOpened, failures: failures.length, byPrincipal })}`);
  for (const [label, c] of Object.entries(counts).sort()) {
    const t = ms[label]!.sort((a, b) => a - b);
    console.log(`# api-fuzz: ${label} ${JSON.stringify(c)} median ${t[t.length >> 1]} ms, max ${t[t.length - 1]} ms, total ${t.reduce((a, b) => a + b, 0)} ms`);
  }
  assert.ok(total >= 10_000 || REQUESTS < 10_000, `${total} requests`);
  // What the coordinator logged for its 5xx answers, once per message: where to look.
  const logged = (await readFile(h.logFile, 'utf8')).split('\n').filter((l) => /"level":(50|60)/.test(l)).map((l) => {
    const e = JSON.parse(l);
    return `${e.err?.message ?? e.msg} @ ${String(e.err?.stack ?? '').split('\n').slice(1, 3).join(' | ')}`;
  });
  assert.equal(failures.length, 0, `${failures.length} failures (seed ${SEED}), first ones:\n${failures.slice(0, 15).join('\n')}\ncoordinator errors:\n${[...new Set(logged)].slice(0, 10).join('\n')}`);
  // Still alive, store included, and still serving its agents.
  const health = await h.anon.call('GET', '/healthz');
  assert.deepEqual([health.status, health.body], [200, { ok: true }]);
  const desired = await request(`${h.coord.url}/v1/agent/desired?after=0`, { dispatcher: principals.get('agent')!.dispatcher });
  const d = await desired.body.json() as Json;
  assert.ok(desired.statusCode === 200 ? d.cluster === 'fz' : desired.statusCode === 429, `desired after the run: ${desired.statusCode}`);
});

test('what the fuzzer found, pinned: a status report with a date that does not parse is refused (it made every status view a 500); fastify\'s own 413, 414 and 415 are declared', async () => {
  const agent = principals.get('agent-2')!.dispatcher;
  const report = {
    generation: 1, phase: 'converged', errors: [], files: [], probes: [], pendingRestart: [], coordinatorReachable: true,
    servedCertificate: { id: 'server', serial: '0a', notAfter: 'soon' },
    certificates: [{ id: 'server', serial: '0a', notAfter: '2030-01-01T00:00:00.000Z' }, { id: 'client-x', serial: '0b', notAfter: '2030-13-01T00:00:00Z' }],
    versions: { agent: 'x', postgres: '15' },
  };
  // The fuzz run may have spent this agent's rate-limit tokens: wait as told by Retry-After.
  const post = async (body: unknown) => {
    for (let i = 0; ; i++) {
      const r = await request(`${h.coord.url}/v1/agent/status`, { method: 'POST', dispatcher: agent, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      if (r.statusCode !== 429 || i >= 30) return r;
      await r.body.text();
      await new Promise((done) => setTimeout(done, Number(r.headers['retry-after'] ?? 1) * 1000));
    }
  };
  const refused = await post(report);
  const text = await refused.body.text();
  assert.equal(refused.statusCode, 400, `a report with unparsable dates: ${refused.statusCode} ${text}`);
  const body = JSON.parse(text);
  assert.equal(body.code, 'E_STATUS_INVALID');
  assert.deepEqual(body.errors.map((e: { field: string }) => e.field), ['servedCertificate.notAfter', 'certificates[1].notAfter']);
  const st = await h.admin.call('GET', '/v1/clusters/fz/status');
  assert.equal(st.status, 200, st.text);
  const ops = operations(doc);
  const check = (method: string, path: string, status: number, contentType: string, text: string) =>
    violation(ops.find((o) => o.method === method && o.path === path)!, status, contentType, text);
  const ok = await post({ ...report, servedCertificate: null, certificates: [] });
  assert.equal(ok.statusCode, 204, await ok.body.text());
  // 413: a body over the limit; 414: a path parameter over fastify's maxParamLength; 415: not JSON.
  for (const [what, path, init] of [
    ['413', '/v1/clusters/fz/plan', { body: `{"x":"${'a'.repeat(2.5 * 1024 * 1024)}"}`, headers: { 'content-type': 'application/json' } }],
    ['414', `/v1/clusters/${'a'.repeat(120)}/plan`, { body: '{}', headers: { 'content-type': 'application/json' } }],
    ['415', '/v1/clusters/fz/plan', { body: 'name: fz', headers: { 'content-type': 'text/yaml' } }],
  ] as const) {
    const res = await request(`${h.coord.url}${path}`, { method: 'POST', dispatcher: principals.get('admin')!.dispatcher, headers: { ...init.headers, authorization: `Bearer ${h.token}` }, body: init.body });
    const text = await res.body.text();
    assert.equal(String(res.statusCode), what, text.slice(0, 200));
    assert.equal(check('POST', '/v1/clusters/{cluster}/plan', res.statusCode, String(res.headers['content-type']), text), null, what);
  }
});
