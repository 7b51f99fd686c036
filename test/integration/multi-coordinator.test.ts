// Several coordinators over one store (issue 11 item 1), as real processes: two
// `pgaccord coordinator --database-url` on one PostgreSQL, the second given copies of the first's
// CA, master key and admin token. A join token raced on both is spent once; CRL numbers stay
// strictly increasing and each due refresh is done once under concurrent refreshes on both; a
// coordinator with another master key is refused at start; a real agent on a real PostgreSQL
// node given both URLs keeps converging when the first is SIGKILLed; the admin CLI given both
// URLs works while the first is down.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crlInfo } from '../../shared/crypto/crl.ts';
import { parseJoinToken } from '../../shared/contract/join-token.ts';
import { freePort, type PgInstance } from '../../shared/system/pgserver.ts';
import { createCsr } from '../../shared/crypto/csr.ts';
import { generateRsaKey } from '../../shared/crypto/keys.ts';
import { coordinatorFleet, SHARED_FILES, type CoordProcess, type CoordSlot } from '../helpers/coordinator-fleet.ts';
import { throwawayPg } from '../helpers/pg.ts';
import { startAgent, waitFor, type AgentProcess } from '../helpers/agent-process.ts';
import { httpsClient, type Client } from '../helpers/coordinator-harness.ts';

const CLI = join(import.meta.dirname, '../../bin/pgaccord.mjs');
const fleet = await coordinatorFleet(2);
const [slotA, slotB] = fleet.slots as [CoordSlot, CoordSlot];
const A = slotA.proc!;
const B = slotB.proc!;
const urls = { a: slotA.url, b: slotB.url };
const node: PgInstance = await throwawayPg();
// A third data directory, for coordinators that must be refused.
const wrong: CoordSlot = { dir: await mkdtemp(join(tmpdir(), 'pgaccord-ha-wrong-')), port: await freePort(), url: '', proc: null };
const stateDir = await mkdtemp(join(tmpdir(), 'pgaccord-ha-agent-'));
const confDir = await mkdtemp(join(tmpdir(), 'pgaccord-ha-conf-'));
const agents: AgentProcess[] = [];
after(async () => {
  await Promise.all(agents.map((a) => a.stop('SIGKILL')));
  for (const d of [wrong.dir, stateDir, confDir]) await rm(d, { recursive: true, force: true });
});
const caPem = fleet.caPem;
const adminToken = fleet.adminToken;
const adminA = httpsClient(slotA.url, caPem);
const adminB = httpsClient(slotB.url, caPem);
const admin = (c: Client): Client => ({ call: (m, p, o = {}) => c.call(m, p, { token: adminToken, ...o }), close: () => c.close() });
const storeQuery = fleet.storeQuery;
const dirs = { a: slotA.dir };

const spec = (roles: string[] = []) => ({
  name: 'ha',
  profile: 'streaming',
  auth: 'scram-sha-256',
  tls: { sslmode: 'verify-full', certLifetime: '1d' },
  nodes: [
    { name: 'node-1', host: '127.0.0.1', port: node.port, kind: 'primary' },
    { name: 'node-2', host: '127.0.0.1', port: 5999, kind: 'standby' },
  ],
  roles: roles.map((name) => ({ name })),
});

/** Its stderr once it has exited non-zero; a failure if it serves instead. */
async function refusedAtStart(p: CoordProcess): Promise<string> {
  await waitFor('the coordinator to exit or listen', () => p.child.exitCode !== null || p.stderr().includes('listening on'), 60_000, 100);
  if (p.child.exitCode === null) {
    p.child.kill('SIGKILL');
    assert.fail(`started with the wrong master key:\n${p.stderr()}`);
  }
  assert.notEqual(p.child.exitCode, 0);
  return p.stderr();
}

test('a second coordinator with another master key is refused at start, with or without the store\'s key check row', async () => {
  const put = await admin(adminA).call('PUT', '/v1/clusters/ha', { body: spec() });
  assert.equal(put.status, 200, put.text);
  for (const f of SHARED_FILES.filter((x) => x !== 'master.key')) await copyFile(join(slotA.dir, f), join(wrong.dir, f));
  await writeFile(join(wrong.dir, 'master.key'), randomBytes(32), { mode: 0o600 });
  assert.match(await refusedAtStart(fleet.spawn(wrong)), /master\.key does not match/);
  // A store initialised before the check row existed (or whose row was lost): the key is checked
  // against the secrets the store holds, and no check row is written for the wrong key.
  await storeQuery(`DELETE FROM meta WHERE key = 'master_key_check'`);
  assert.match(await refusedAtStart(fleet.spawn(wrong)), /master\.key does not match/);
  assert.equal((await storeQuery(`SELECT 1 FROM meta WHERE key = 'master_key_check'`)).length, 0, 'the wrong key wrote no check row');
  assert.deepEqual((await adminB.call('GET', '/healthz')).body, { ok: true });
});

test('a join token raced on two coordinators (parallel enrolments on both) is spent exactly once; it names both coordinators', async () => {
  const tok = await admin(adminA).call('POST', '/v1/clusters/ha/nodes/node-2/tokens', { body: {} });
  assert.equal(tok.status, 200, tok.text);
  const parsed = parseJoinToken(tok.body.token);
  assert.ok(parsed.ok);
  assert.deepEqual(parsed.payload.urls, [urls.a, urls.b], 'the token carries every coordinator URL');
  assert.equal(parsed.payload.url, urls.a, 'and the first one where a single-URL agent looks');
  const N = 8;
  const keys = await Promise.all(Array.from({ length: 2 * N }, () => generateRsaKey()));
  const anonA = httpsClient(slotA.url, caPem);
  const anonB = httpsClient(slotB.url, caPem);
  const answers = await Promise.all(keys.map((k, i) => (i % 2 === 0 ? anonA : anonB).call('POST', '/v1/agent/enroll', { body: { token: tok.body.token, csr: createCsr(k.privateKeyPem, 'x') } })));
  const ok = answers.filter((a) => a.status === 200);
  assert.equal(ok.length, 1, `exactly one enrolment succeeds: ${answers.map((a) => a.status).join(',')}`);
  assert.ok(answers.every((a) => a.status === 200 || (a.status === 401 && /already been used/.test(a.text))), answers.map((a) => a.text).join('\n'));
  const coordDbRows = await storeQuery<{ n: number }>(`SELECT count(*)::int AS n FROM certificates WHERE cluster = 'ha' AND node = 'node-2' AND slot = 'identity'`);
  assert.equal(coordDbRows[0]!.n, 1, 'one identity certificate issued');
});

test('CRL numbers: strictly increasing and never repeated under concurrent revocations and refreshes on both coordinators; each due refresh done once', async () => {
  // An enrolled node-2 identity asks for server certificates, which are then revoked in parallel on both.
  const tok = await admin(adminB).call('POST', '/v1/clusters/ha/nodes/node-2/tokens', { body: {} });
  const idKey = await generateRsaKey();
  const enr = await httpsClient(slotB.url, caPem).call('POST', '/v1/agent/enroll', { body: { token: tok.body.token, csr: createCsr(idKey.privateKeyPem, 'x') } });
  assert.equal(enr.status, 200, enr.text);
  const asNode = httpsClient(slotA.url, caPem, { certPem: enr.body.certificate, keyPem: idKey.privateKeyPem });
  const serials: string[] = [];
  for (let i = 0; i < 10; i++) {
    const k = await generateRsaKey();
    const r = await asNode.call('POST', '/v1/agent/csr', { body: { slot: 'server', csr: createCsr(k.privateKeyPem, 'x') } });
    assert.equal(r.status, 200, r.text);
    serials.push(r.body.serial);
  }
  const crlNumber = async (c: Client) => {
    const r = await admin(c).call('GET', '/v1/clusters/ha/crl');
    assert.equal(r.status, 200, r.text);
    return { number: crlInfo(r.text).number!, pem: r.text };
  };
  const start = (await crlNumber(adminA)).number;
  // Observers on both coordinators: what each sees never goes back, and one number is one CRL.
  const seen = new Map<bigint, string>();
  let stop = false;
  const observe = async (c: Client) => {
    let last = 0n;
    while (!stop) {
      const { number, pem } = await crlNumber(c);
      assert.ok(number >= last, `CRL number went back: ${last} then ${number}`);
      last = number;
      const before = seen.get(number);
      assert.ok(before === undefined || before === pem, `CRL number ${number} names two different CRLs`);
      seen.set(number, pem);
    }
  };
  const observers = [observe(adminA), observe(adminB)];
  const revokes = await Promise.all(serials.map((s, i) => admin(i % 2 ? adminA : adminB).call('POST', `/v1/clusters/ha/certificates/${s}/revoke`, { body: {} })));
  assert.deepEqual(revokes.map((r) => r.status), serials.map(() => 200), revokes.map((r) => r.text).join('\n'));
  // Refreshes: make the CRL due (its validity half gone) and ask both coordinators at once, several rounds.
  const ROUNDS = 4;
  const refreshedBefore = [...A.records(), ...B.records()].filter((r) => r.msg === 'CRL refreshed').length;
  for (let round = 0; round < ROUNDS; round++) {
    await storeQuery(`UPDATE cluster_crls SET this_update = now() - interval '6 days', next_update = now() + interval '1 day' WHERE cluster = 'ha'`);
    const answers = await Promise.all(Array.from({ length: 16 }, (_, i) => crlNumber(i % 2 ? adminA : adminB)));
    const after = await crlNumber(adminA);
    assert.ok(answers.every((a) => a.number <= after.number));
  }
  stop = true;
  await Promise.all(observers);
  const end = await crlNumber(adminB);
  assert.equal(end.number, start + BigInt(serials.length + ROUNDS), 'every revocation and refresh took the next number: none repeated, none skipped');
  // The log lines come through the coordinators' stdout pipes, maybe after the answers: wait for
  // them, then there must be exactly one per round (a second refresh would have taken a number too).
  const refreshes = () => [...A.records(), ...B.records()].filter((r) => r.msg === 'CRL refreshed').length - refreshedBefore;
  await waitFor(`${ROUNDS} "CRL refreshed" lines`, () => refreshes() >= ROUNDS, 10_000, 50).catch(() => undefined);
  assert.equal(refreshes(), ROUNDS, `one refresh per due round across both coordinators, got ${refreshes()}`);
  const listed = new Set(crlInfo(end.pem).revoked.map((r) => r.serial));
  for (const s of serials) assert.ok(listed.has(s), `revoked ${s} listed`);
  console.log(`# CRL numbers ${start}..${end.number}: ${serials.length} concurrent revocations on 2 coordinators, ${ROUNDS} refresh rounds of 16 concurrent requests, ${seen.size} distinct CRLs observed`);
});

test('an agent given both URLs keeps converging when the first coordinator is SIGKILLed; the admin CLI given both works while it is down', async () => {
  const tok = await admin(adminA).call('POST', '/v1/clusters/ha/nodes/node-1/tokens', { body: {} });
  assert.equal(tok.status, 200, tok.text);
  const configFile = join(confDir, 'agent.yaml');
  await writeFile(configFile, `coordinator:\n  - ${slotA.url}\n  - ${slotB.url}\nnode: ha/node-1\npgdata: ${node.dataDir}\n`);
  const agent = startAgent(['--config', configFile, '--state-dir', stateDir, '--join-token', tok.body.token]);
  agents.push(agent);
  const convergedAt = async (generation: number, timeoutMs = 90_000) => waitFor(`node-1 converged at ${generation}`, async () => {
    const r = await admin(adminB).call('GET', '/v1/clusters/ha/status');
    const n = r.body?.nodes?.find((x: { node: string }) => x.node === 'node-1');
    return n && n.appliedGeneration === generation && n.phase === 'converged' ? n : null;
  }, timeoutMs, 200).catch((e) => {
    throw new Error(`${(e as Error).message}\n${agent.lines.slice(-20).join('\n')}`);
  });
  const g1 = (await admin(adminB).call('GET', '/v1/clusters/ha')).body.generation as number;
  await convergedAt(g1);
  await fleet.kill(slotA);
  const killedAt = Date.now();
  const put = await admin(adminB).call('PUT', '/v1/clusters/ha', { body: spec(['app']) });
  assert.equal(put.status, 200, put.text);
  await convergedAt(put.body.generation, 60_000);
  const took = Date.now() - killedAt;
  // Its reports reach the store through B.
  const reported = await storeQuery<{ reported_at: Date }>(`SELECT reported_at FROM node_status WHERE cluster = 'ha' AND node = 'node-1'`);
  assert.ok(reported[0]!.reported_at.getTime() > killedAt, 'status reported after the kill');
  assert.ok(agent.records().some((r) => r.msg === 'coordinator unreachable: trying the next one'), 'the agent said it moved on');
  console.log(`# first coordinator SIGKILLed: agent converged on generation ${put.body.generation} through the second ${took} ms later`);

  const cli = (args: string[], env: NodeJS.ProcessEnv = {}) => new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('exit', (code) => resolve({ code, out, err }));
  });
  const dead = slotA.url;
  for (const [args, env] of [
    [['status', 'ha', '--data-dir', dirs.a, '--coordinator', `${dead},${slotB.url}`], {}],
    [['status', 'ha', '--data-dir', dirs.a, '--coordinator', slotB.url, '--coordinator', dead], {}],
    [['status', 'ha', '--data-dir', dirs.a], { PGACCORD_URL: `${dead},${slotB.url}` }],
  ] as [string[], NodeJS.ProcessEnv][]) {
    const r = await cli(args, env);
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.err}`);
    assert.match(r.out, /node-1/);
  }
  // A change (POST) too, when the first refuses the connection: nothing was sent there.
  const tok2 = await cli(['token', 'create', 'ha', 'node-2', '--data-dir', dirs.a, '--coordinator', `${dead},${slotB.url}`]);
  assert.equal(tok2.code, 0, tok2.err);
  assert.match(tok2.out, /pga1\./);
  // Both down: a clear error naming each.
  const none = await cli(['status', 'ha', '--data-dir', dirs.a, '--coordinator', `${dead},https://127.0.0.1:${wrong.port}`]);
  assert.notEqual(none.code, 0);
  assert.match(none.err, new RegExp(`${dead.replace(/[.:/]/g, '\\$&')}.*127\\.0\\.0\\.1:${wrong.port}`, 's'));
});
