// Several coordinators, the pure and local parts (issue 11 item 1): URL lists from flags, YAML
// and join tokens (a single-URL token stays valid), the failover pause, and the agent's client
// moving from a coordinator it cannot reach (or that answers 503) to the next, over real HTTPS.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CertificateAuthority } from '../../coordinator/ca/ca.ts';
import { CoordinatorClient, CoordinatorError } from '../../agent/runtime/client.ts';
import { failoverDelay, FAILOVER_BACKOFF, seededRandom } from '../../agent/runtime/backoff.ts';
import { readConfigFile, resolveConfig } from '../../agent/config.ts';
import { parseCoordinatorUrls } from '../../shared/contract/coordinator-urls.ts';
import { encodeJoinToken, parseJoinToken, tokenUrls } from '../../shared/contract/join-token.ts';
import { freePort } from '../../shared/system/pgserver.ts';
import { httpsServer } from '../helpers/https-server.ts';

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const base = { v: 1 as const, cluster: 'sales', node: 'node-1', id: 'abc', secret: 's3cret-s3cret', caFingerprint: 'ab'.repeat(32) };

test('coordinator URL lists: repeated or comma-separated, order kept, duplicates and trailing slashes dropped; bad ones named', () => {
  assert.deepEqual(parseCoordinatorUrls(['https://a:7432/, https://b:7432', 'https://c:7432', 'https://a:7432']), ['https://a:7432', 'https://b:7432', 'https://c:7432']);
  assert.deepEqual(parseCoordinatorUrls([]), []);
  assert.throws(() => parseCoordinatorUrls(['https://a:7432,http://b:7432']), /must be https:\/\/, got http:/);
  assert.throws(() => parseCoordinatorUrls(['https://user:pw@a:7432']), /plain https:\/\/HOST/);
  assert.throws(() => parseCoordinatorUrls(['not a url']), /is not a URL/);
});

test('join tokens: a single-URL token (as before) names its one coordinator; a token of several lists them; a bad URL in it is refused without echoing the secret', () => {
  const old = parseJoinToken(encodeJoinToken({ ...base, url: 'https://a:7432' }));
  assert.ok(old.ok);
  assert.deepEqual(tokenUrls(old.payload), ['https://a:7432']);
  const several = parseJoinToken(encodeJoinToken({ ...base, url: 'https://a:7432', urls: ['https://a:7432', 'https://b:7432'] }));
  assert.ok(several.ok);
  assert.deepEqual(tokenUrls(several.payload), ['https://a:7432', 'https://b:7432']);
  const bad = parseJoinToken(encodeJoinToken({ ...base, url: 'https://a:7432', urls: ['https://a:7432', 'http://b:7432'] }));
  assert.equal(bad.ok, false);
  assert.ok(!bad.ok && /coordinator URL must be https/.test(bad.reason) && !bad.reason.includes(base.secret));
  assert.equal(parseJoinToken(encodeJoinToken({ ...base, url: 'https://a:7432', urls: [] })).ok, false, 'an empty list is malformed');
});

test('failover pause: full jitter in [0, ceiling), the ceiling doubling per move up to its cap', () => {
  const rnd = seededRandom(11);
  for (let move = 0; move < 8; move++) {
    const ceiling = Math.min(FAILOVER_BACKOFF.capMs, FAILOVER_BACKOFF.baseMs * 2 ** move);
    for (let i = 0; i < 200; i++) {
      const d = failoverDelay(move, rnd);
      assert.ok(d >= 0 && d < ceiling, `move ${move}: ${d}`);
    }
  }
  assert.equal(failoverDelay(0, () => 0), 0);
  assert.equal(failoverDelay(50, () => 0.999999), FAILOVER_BACKOFF.capMs - 1);
  assert.throws(() => failoverDelay(-1, rnd), RangeError);
});

test('agent config: --coordinator repeated/comma-separated, a YAML list, or the join token\'s list', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'pgaccord-multi-'));
  dirs.push(dir);
  await writeFile(join(dir, 'PG_VERSION'), '15\n');
  const file = join(dir, 'agent.yaml');
  await writeFile(file, `coordinator:\n  - https://c1.example.com:7432\n  - https://c2.example.com:7432/\nnode: sales/node-1\npgdata: ${dir}\n`);
  const fromFile = resolveConfig({}, await readConfigFile(file), file);
  assert.deepEqual(fromFile.coordinatorUrls, ['https://c1.example.com:7432', 'https://c2.example.com:7432']);
  assert.equal(fromFile.coordinatorUrl, 'https://c1.example.com:7432');
  const flags = resolveConfig({ coordinator: 'https://x:1,https://y:2', node: 'sales/node-1', pgdata: dir }, await readConfigFile(file));
  assert.deepEqual(flags.coordinatorUrls, ['https://x:1', 'https://y:2'], 'flags win over the file');
  const token = encodeJoinToken({ ...base, url: 'https://t1:7432', urls: ['https://t1:7432', 'https://t2:7432'] });
  assert.deepEqual(resolveConfig({ 'join-token': token, node: 'sales/node-1', pgdata: dir }, {}).coordinatorUrls, ['https://t1:7432', 'https://t2:7432']);
  assert.throws(() => resolveConfig({ coordinator: 'https://x:1,http://y:2', node: 'sales/node-1', pgdata: dir }, {}), /--coordinator: must be https/);
  await writeFile(file, 'coordinator: []\n');
  await assert.rejects(readConfigFile(file), /must be a URL or a non-empty list of URLs/);
  await writeFile(file, 'coordinator:\n  - 7\n');
  await assert.rejects(readConfigFile(file), /must be a URL or a non-empty list of URLs/);
});

test('agent client: moves on from a coordinator it cannot reach or that answers 503, stays on the one that answers; a 4xx is not failed over; all down is E_UNREACHABLE', async () => {
  const { ca } = await CertificateAuthority.create('test coordinator CA', new Date());
  const dead = `https://127.0.0.1:${await freePort()}`;
  let busy = 503;
  const b = await httpsServer(ca, () => busy);
  const c = await httpsServer(ca, (p) => (p.startsWith('/v1/agent/status') ? 204 : 400));
  try {
    const moves: string[] = [];
    const client = new CoordinatorClient({ baseUrl: [dead, b.url, c.url], caPem: ca.certPem, random: () => 0, onFailover: (e) => moves.push(`${e.from} -> ${e.to}`) });
    const status = { phase: 'converged' } as never;
    await client.status(status);
    assert.deepEqual(moves, [`${dead} -> ${b.url}`, `${b.url} -> ${c.url}`], 'dead, then 503, then the one that answers');
    assert.equal(client.coordinatorUrl, c.url);
    await client.status(status);
    assert.equal(moves.length, 2, 'stays on the coordinator that answered');
    assert.equal(b.hits.length, 1);
    // A refusal (4xx) is that coordinator's answer: not retried elsewhere.
    await assert.rejects(client.csr({ slot: 'server', csr: 'x' }), (e: CoordinatorError) => e.code === 'E_HTTP' && e.status === 400);
    assert.equal(moves.length, 2);
    // Every one down: E_UNREACHABLE from the call, after one try of each.
    await c.close();
    busy = 503;
    await b.close();
    await assert.rejects(client.status(status), (e: CoordinatorError) => e.code === 'E_UNREACHABLE');
    await client.close();
  } finally {
    await b.close().catch(() => undefined);
    await c.close().catch(() => undefined);
  }
});

test('agent client: a CSR that reached a coordinator which died before answering is not sent to the next (it would be signed twice); a status report is, and a CSR whose connection was refused is', async () => {
  const { ca } = await CertificateAuthority.create('test coordinator CA', new Date());
  const dies = await httpsServer(ca, () => 'die');
  const next = await httpsServer(ca, () => 204);
  try {
    const client = new CoordinatorClient({ baseUrl: [dies.url, next.url], caPem: ca.certPem, random: () => 0 });
    await assert.rejects(client.csr({ slot: 'server', csr: 'x' }), (e: CoordinatorError) => e.code === 'E_UNREACHABLE');
    assert.deepEqual(next.hits, [], 'the CSR was not sent again elsewhere');
    assert.equal(client.coordinatorUrl, next.url, 'the next call starts at the next coordinator');
    const back = new CoordinatorClient({ baseUrl: [dies.url, next.url], caPem: ca.certPem, random: () => 0 });
    await back.status({ phase: 'converged' } as never);
    assert.deepEqual(next.hits, ['/v1/agent/status'], 'a status report (idempotent) moves on');
    // A coordinator that refuses the connection never saw the CSR: that one does move on.
    const refused = new CoordinatorClient({ baseUrl: [`https://127.0.0.1:${await freePort()}`, next.url], caPem: ca.certPem, random: () => 0 });
    await assert.rejects(refused.csr({ slot: 'server', csr: 'x' }), (e: CoordinatorError) => e.code === 'E_HTTP' && e.status === 204);
    assert.deepEqual(next.hits, ['/v1/agent/status', '/v1/agent/csr'], 'sent to the next after a refused connection');
    await client.close();
    await back.close();
    await refused.close();
  } finally {
    await dies.close();
    await next.close();
  }
});
