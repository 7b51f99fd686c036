// The agent's client certificate is parsed once per TLS connection (issue 13: re-parsing it on
// every request was ~15 % of the coordinator's busy time under a fleet), and what is cached is
// the parse, never the verdict: an identity revoked while its keep-alive connection is open is
// refused on that same connection. Every agent request writes last_contact once.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Agent, request } from 'undici';
import type { AgentStatus } from '../../shared/contract/status.ts';
import { createCsr } from '../../shared/crypto/csr.ts';
import { generateRsaKey } from '../../shared/crypto/keys.ts';
import { certInfo } from '../../shared/crypto/x509.ts';
import { throwawayStore } from '../helpers/pg.ts';
import { enroll, pgdSpec, startHarness, storeQueries, type EnrolledNode, type Harness } from '../helpers/coordinator-harness.ts';

let h: Harness;
const { databaseUrl } = await throwawayStore();

before(async () => {
  h = await startHarness({ databaseUrl });
  const put = await h.admin.call('PUT', '/v1/clusters/cache', { body: pgdSpec('cache') });
  assert.equal(put.status, 200, put.text);
});
after(() => h?.close());

/** One keep-alive connection (undici opens no second one with connections: 1). */
function oneConnection(n: EnrolledNode) {
  const dispatcher = new Agent({ connections: 1, connect: { ca: h.caPem, cert: n.certPem, key: n.keyPem, rejectUnauthorized: true } });
  let connects = 0;
  dispatcher.on('connect', () => connects++);
  return {
    get connects() { return connects; },
    async get(path: string): Promise<{ status: number; text: string }> {
      const res = await request(`${h.coord.url}${path}`, { dispatcher });
      return { status: res.statusCode, text: await res.body.text() };
    },
    close: () => dispatcher.close(),
  };
}

const DESIRED = '/v1/agent/desired?after=0&wait=0';

/**
 * The identities the auth hook hands the store's check: each parse of a client certificate makes
 * a new (frozen) one, and a connection's cached parse hands back the same one, so the distinct
 * objects seen are the parses.
 */
function identitiesChecked() {
  const service = h.coord.service;
  const authenticate = service.authenticateAgent.bind(service);
  const seen = new Set<object>();
  service.authenticateAgent = (identity, serial) => {
    seen.add(identity);
    return authenticate(identity, serial);
  };
  return { seen, stop: () => delete (service as { authenticateAgent?: unknown }).authenticateAgent };
}

test('five requests on one keep-alive connection parse the client certificate once', async () => {
  const n = await enroll(h, 'cache', 'node-1');
  const conn = oneConnection(n);
  const checked = identitiesChecked();
  try {
    for (let i = 0; i < 5; i++) {
      const r = await conn.get(DESIRED);
      assert.equal(r.status, 200, r.text);
    }
    assert.equal(conn.connects, 1, 'the five requests went over one connection');
    assert.equal(checked.seen.size, 1, 'parses of the client certificate for five requests on one connection');
  } finally {
    checked.stop();
    await conn.close();
  }
});

test('a second connection presenting the same certificate does not parse it again (a CSR beside the held long-poll)', async () => {
  const n = await enroll(h, 'cache', 'node-2');
  const [a, b] = [oneConnection(n), oneConnection(n)];
  const checked = identitiesChecked();
  try {
    for (const conn of [a, b, a, b]) {
      const r = await conn.get(DESIRED);
      assert.equal(r.status, 200, r.text);
    }
    assert.equal(a.connects + b.connects, 2, 'two connections');
    assert.equal(checked.seen.size, 1, 'parses of one client certificate presented on two connections');
  } finally {
    checked.stop();
    await a.close();
    await b.close();
  }
});

test('an identity revoked while its keep-alive connection is open is refused on that connection', async () => {
  const n = await enroll(h, 'cache', 'node-2');
  const conn = oneConnection(n);
  try {
    const ok = await conn.get(DESIRED);
    assert.equal(ok.status, 200, ok.text);
    const revoked = await h.admin.call('POST', `/v1/clusters/cache/certificates/${certInfo(n.certPem).serial}/revoke`, { body: {} });
    assert.equal(revoked.status, 200, revoked.text);
    const r = await conn.get(DESIRED);
    assert.equal(r.status, 401, `after the revocation, same connection: ${r.status} ${r.text}`);
    assert.equal(conn.connects, 1, 'both requests went over one connection');
  } finally {
    await conn.close();
  }
});

const STATUS: AgentStatus = {
  generation: 1, phase: 'converged', errors: [], files: [], servedCertificate: null, certificates: [], probes: [], pendingRestart: [],
  coordinatorReachable: true, versions: { agent: '0.1.0', postgres: '15' },
};

test('every agent route (desired, csr, status) advances last_contact, with one write a request', async () => {
  const n = await enroll(h, 'cache', 'node-3');
  const lastContact = async () =>
    (await h.coord.store.query<{ t: Date }>(`SELECT last_contact AS t FROM node_status WHERE cluster = 'cache' AND node = 'node-3'`))[0]?.t.getTime() ?? 0;
  const { privateKeyPem } = await generateRsaKey();
  const calls: [string, string, unknown][] = [
    ['GET', DESIRED, undefined],
    ['POST', '/v1/agent/csr', { slot: 'server', csr: createCsr(privateKeyPem, 'x') }],
    ['POST', '/v1/agent/status', STATUS],
  ];
  // The agent routes the API documents are these: a new one must be added here (and record contact).
  const paths = (await h.anon.call('GET', '/openapi.json')).body.paths as Record<string, Record<string, { security: Record<string, unknown>[] }>>;
  const agentRoutes = Object.entries(paths).flatMap(([path, ops]) =>
    Object.entries(ops).filter(([, op]) => op.security.some((x) => 'agentCertificate' in x)).map(([method]) => `${method.toUpperCase()} ${path}`));
  assert.deepEqual(agentRoutes.sort(), calls.map(([method, path]) => `${method} ${path.split('?')[0]}`).sort(), 'the agent routes');
  const store = h.coord.store;
  const query = store.query.bind(store);
  let contactWrites = 0;
  store.query = ((sql: string, ...rest: unknown[]) => {
    if (/^\s*(INSERT INTO|UPDATE) node_status/i.test(sql) && /last_contact/.test(sql)) contactWrites++;
    return (query as (...a: unknown[]) => unknown)(sql, ...rest);
  }) as typeof store.query;
  try {
    let offset = 0;
    for (const [method, path, body] of calls) {
      const before = await lastContact();
      h.setClockOffset((offset += 60_000)); // the coordinator's clock a minute on: the write is seen
      contactWrites = 0;
      const r = await n.client.call(method, path, body === undefined ? {} : { body });
      assert.ok(r.status === 200 || r.status === 204, `${method} ${path}: ${r.status} ${r.text}`);
      assert.ok((await lastContact()) > before, `${method} ${path} advanced last_contact`);
      assert.equal(contactWrites, 1, `writes of last_contact for one ${method} ${path}`);
    }
  } finally {
    delete (store as { query?: unknown }).query;
    h.setClockOffset(0);
  }
});

test('a status report reads no spec row (its write checks the node is in the spec; the CA rotation step runs only while one is in its trust phase)', async () => {
  const n = await enroll(h, 'cache', 'node-1');
  const seen = await storeQueries(h, async () => {
    const r = await n.client.call('POST', '/v1/agent/status', { body: STATUS });
    assert.equal(r.status, 204, r.text);
  });
  const specReads = seen.filter((q) => /^SELECT .* FROM clusters WHERE name = \$1$/.test(q));
  assert.equal(specReads.length, 0, `reads of the cluster spec row for one status report:\n${specReads.join('\n')}`);
});

test('an identity that expires while its keep-alive connection is open is refused on that connection', async () => {
  const n = await enroll(h, 'cache', 'node-3');
  const conn = oneConnection(n);
  try {
    const ok = await conn.get(DESIRED);
    assert.equal(ok.status, 200, ok.text);
    // The TLS handshake checked the certificate's dates once; the coordinator's clock moves past its notAfter.
    h.setClockOffset(certInfo(n.certPem).notAfter.getTime() - Date.now() + 60_000);
    const r = await conn.get(DESIRED);
    assert.equal(r.status, 401, `after the identity's notAfter, same connection: ${r.status} ${r.text}`);
    assert.equal(conn.connects, 1, 'both requests went over one connection');
  } finally {
    h.setClockOffset(0);
    await conn.close();
  }
});
