// A long-poll the coordinator refused (429 rate limited, 503 busy) is logged as a refusal, with
// its status code, the coordinator's error code and the retry delay: the coordinator answered,
// it is not "unreachable" (an operator reading the log would look for a network fault). Its
// Retry-After is honoured, for the long-poll and for a refused status report.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { ReconcileLoop } from '../../agent/runtime/loop.ts';
import type { CoordinatorApi } from '../../agent/runtime/loop-deps.ts';
import { CertificateManager } from '../../agent/runtime/certs.ts';
import { createPublicKey } from 'node:crypto';
import { createServer } from 'node:https';
import forge from 'node-forge';
import { CoordinatorClient, CoordinatorError } from '../../agent/runtime/client.ts';
import { RenewalSchedule, RETRY_AFTER_MAX_MS, retryAfterMs, seededRandom } from '../../agent/runtime/backoff.ts';
import { CertificateAuthority } from '../../coordinator/ca/ca.ts';
import { generateRsaKey } from '../../shared/crypto/keys.ts';
import { waitFor } from '../helpers/wait.ts';
import type { ApplyResult, NodeContext } from '../../agent/apply/types.ts';

const dirs: string[] = [];
after(async () => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

/** A loop whose polls meet `failures` in turn, then stop; the log records it wrote. */
async function run(failures: Error[], opts: { onSummary?: (s: string) => void } = {}): Promise<Record<string, unknown>[]> {
  const stateDir = await mkdtemp(join(tmpdir(), 'pgaccord-loop-refused-'));
  dirs.push(stateDir);
  const records: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void records.push(JSON.parse(line) as Record<string, unknown>) });
  let loop: ReconcileLoop;
  const client: CoordinatorApi = {
    async desired() {
      const e = failures.shift();
      if (e) throw e;
      loop.stop();
      return { kind: 'unchanged' };
    },
    async status() {},
  };
  const apply = async (): Promise<ApplyResult> => ({ phase: 'converged', changed: false, errors: [], files: [], pendingRestart: [], servedCertificate: null, clientConnections: [] });
  const certs = new CertificateManager({ stateDir, owner: { uid: process.getuid!(), gid: process.getgid!() }, requestCertificate: async () => assert.fail('no certificate expected'), now: Date.now, schedule: new RenewalSchedule(seededRandom(1)), log });
  loop = new ReconcileLoop({
    ctx: { stateDir, log } as unknown as NodeContext, cluster: 'sales', node: 'node-1', client, apply, certs, probe: { osUser: { name: 'x', uid: 0, gid: 0, home: '/' } },
    now: Date.now, random: seededRandom(3), backoff: { baseMs: 1, capMs: 4 }, minCycleMs: 1, resyncMs: 60_000, log,
    postgresVersion: async () => '15.18',
    ...(opts.onSummary ? { onSummary: opts.onSummary } : {}),
  });
  assert.equal(await loop.run(), 'stopped');
  return records;
}

const refused = (status: number, apiCode: string, retryAfter?: string) =>
  new CoordinatorError('E_HTTP', `GET /v1/agent/desired?after=0: ${apiCode}: too many requests`, status, { apiCode, ...(retryAfter !== undefined ? { retryAfter } : {}) });

test('a long-poll refused with 429 or 503 is logged as refused (status, code, retry delay), never as the coordinator unreachable', async () => {
  for (const [status, apiCode] of [[429, 'E_RATE_LIMITED'], [503, 'E_STORE_BUSY']] as const) {
    const records = await run([refused(status, apiCode)]);
    const said = records.map((r) => String(r.msg));
    assert.deepEqual(said.filter((m) => /unreachable/.test(m)), [], `${status}: nothing says unreachable`);
    const line = records.find((r) => r.msg === 'coordinator refused the long-poll: retrying after a delay');
    assert.ok(line, `${status}: the refusal is logged (${JSON.stringify(said)})`);
    assert.equal(line.status, status);
    assert.equal(line.code, apiCode);
    assert.equal(typeof line.retryInMs, 'number');
    assert.equal(line.level, 40, 'a warning');
  }
});

test('a long-poll that did not reach the coordinator is still logged as unreachable', async () => {
  const records = await run([new CoordinatorError('E_UNREACHABLE', 'GET /v1/agent/desired?after=0: ECONNREFUSED')]);
  assert.ok(records.some((r) => r.msg === 'coordinator unreachable: serving the last good state (stale)'));
  assert.ok(records.some((r) => r.msg === 'retrying the coordinator after a delay' && typeof r.retryInMs === 'number'));
  assert.ok(!records.some((r) => r.msg === 'coordinator refused the long-poll: retrying after a delay'));
});

// Retry-After (RFC 9110 10.2.3) on a 429/503: the coordinator says when to come back. The agent
// waits at least that long (bounded: a wrong header must not park a node for hours), never less
// than its own backoff; and the words it logs and puts in systemd's STATUS say what happened (the
// coordinator answered, refusing), not that it was unreachable.
test('Retry-After: delay-seconds or an HTTP date, bounded to RETRY_AFTER_MAX_MS, never negative; anything else is no hint', () => {
  const now = Date.parse('2026-12-02T06:00:00Z');
  assert.equal(retryAfterMs('7', now), 7000);
  assert.equal(retryAfterMs(' 0 ', now), 0);
  assert.equal(retryAfterMs(new Date(now + 30_000).toUTCString(), now), 30_000);
  assert.equal(retryAfterMs('Wed, 02 Dec 2026 05:00:00 GMT', now), 0, 'a date gone by: at once');
  assert.equal(retryAfterMs('100000', now), RETRY_AFTER_MAX_MS);
  assert.equal(RETRY_AFTER_MAX_MS, 300_000);
  for (const bad of [undefined, '', 'soon', '-5', '1.5', '12abc']) assert.equal(retryAfterMs(bad, now), null, String(bad));
});

test('a long-poll refused with Retry-After waits that long (not the 1-4 ms backoff), and once answered again logs "coordinator answering again", STATUS saying refused rather than unreachable', async () => {
  const summaries: string[] = [];
  const started = Date.now();
  const records = await run([refused(429, 'E_RATE_LIMITED', '1')], { onSummary: (s) => summaries.push(s) });
  const line = records.find((r) => r.msg === 'coordinator refused the long-poll: retrying after a delay');
  assert.ok(line);
  assert.ok(Number(line.retryInMs) >= 1000 && Number(line.retryInMs) <= 1004, `retryInMs ${String(line.retryInMs)}: the header's 1 s`);
  assert.ok(Date.now() - started >= 950, 'and it waited');
  const said = records.map((r) => String(r.msg));
  assert.ok(said.includes('coordinator answering again'), JSON.stringify(said));
  assert.ok(!said.some((m) => /reachable/.test(m)), JSON.stringify(said));
  assert.ok(summaries.length > 0);
  assert.deepEqual(summaries.filter((s) => /unreachable/.test(s)), [], JSON.stringify(summaries));
  assert.ok(summaries.some((s) => /coordinator refusing requests \(HTTP 429\)/.test(s)), JSON.stringify(summaries));
});

test('a status report refused with Retry-After is sent again no sooner than it says, not one probe period later', async () => {
  const stateDir = await mkdtemp(join(tmpdir(), 'pgaccord-loop-refused-'));
  dirs.push(stateDir);
  const log = pino({ level: 'silent' });
  const posts: number[] = [];
  let loop: ReconcileLoop;
  let polls = 0;
  const client: CoordinatorApi = {
    async desired() {
      polls += 1;
      if (polls > 1) {
        await waitFor('the report sent again', () => posts.length >= 2, 10_000, 5);
        loop.stop();
      }
      return { kind: 'unchanged' };
    },
    async status() {
      posts.push(performance.now());
      if (posts.length === 1) throw new CoordinatorError('E_HTTP', 'POST /v1/agent/status: E_RATE_LIMITED: too many requests', 429, { apiCode: 'E_RATE_LIMITED', retryAfter: '1' });
    },
  };
  const apply = async (): Promise<ApplyResult> => ({ phase: 'converged', changed: false, errors: [], files: [], pendingRestart: [], servedCertificate: null, clientConnections: [] });
  const certs = new CertificateManager({ stateDir, owner: { uid: process.getuid!(), gid: process.getgid!() }, requestCertificate: async () => assert.fail('no certificate expected'), now: Date.now, schedule: new RenewalSchedule(seededRandom(1)), log });
  loop = new ReconcileLoop({
    ctx: { stateDir, log } as unknown as NodeContext, cluster: 'sales', node: 'node-1', client, apply, certs, probe: { osUser: { name: 'x', uid: 0, gid: 0, home: '/' } },
    now: Date.now, random: seededRandom(3), backoff: { baseMs: 1, capMs: 4 }, minCycleMs: 1, resyncMs: 60_000, reprobeMs: 20, log,
    postgresVersion: async () => '15.18',
  });
  assert.equal(await loop.run(), 'stopped');
  assert.ok(posts[1]! - posts[0]! >= 950, `sent again after ${Math.round(posts[1]! - posts[0]!)} ms: the header said 1 s (the probe period is 20 ms)`);
});

test('agent client: a 429/503 answer\'s Retry-After is on the CoordinatorError it throws, for the long-poll and the status report', async () => {
  const { ca } = await CertificateAuthority.create('test coordinator CA', new Date());
  const { privateKeyPem } = await generateRsaKey();
  const pub = forge.pki.publicKeyFromPem(createPublicKey(privateKeyPem).export({ type: 'spki', format: 'pem' }).toString());
  const cert = ca.issue({ publicKey: pub, commonName: '127.0.0.1', ipAddresses: ['127.0.0.1'], usage: 'server', lifetimeSeconds: 3600, now: new Date() });
  const srv = createServer({ key: privateKeyPem, cert: cert.pem }, (req, res) => {
    req.resume();
    const busy = req.url!.startsWith('/v1/agent/status');
    res.writeHead(busy ? 503 : 429, { 'content-type': 'application/json', 'retry-after': busy ? 'Wed, 02 Dec 2026 06:00:00 GMT' : '12' });
    res.end(JSON.stringify(busy ? { code: 'E_STORE_BUSY', message: 'busy' } : { code: 'E_RATE_LIMITED', message: 'too many requests' }));
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const client = new CoordinatorClient({ baseUrl: `https://127.0.0.1:${(srv.address() as { port: number }).port}`, caPem: ca.certPem });
  try {
    const poll = await client.desired(0, undefined, 0).then(() => null, (e: unknown) => e);
    assert.ok(poll instanceof CoordinatorError);
    assert.deepEqual([poll.status, poll.apiCode, poll.retryAfter], [429, 'E_RATE_LIMITED', '12']);
    const report = await client.status({ phase: 'converged' } as never).then(() => null, (e: unknown) => e);
    assert.ok(report instanceof CoordinatorError);
    assert.deepEqual([report.status, report.apiCode, report.retryAfter], [503, 'E_STORE_BUSY', 'Wed, 02 Dec 2026 06:00:00 GMT']);
  } finally {
    await client.close();
    await new Promise((r) => srv.close(r));
  }
});
