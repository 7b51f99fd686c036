// Issue 14, coordinator side: the embedded store authenticates (SCRAM, password in the data
// directory) and does not run as the `postgres` OS user that every PostgreSQL node on the host
// runs as; a stored spec is checked again when it is read (MAC under the master key, then
// validation); slow clients are cut off within a bound; one long-poll per node; a per-node
// rate limit on the agent routes. Real PostgreSQL 15, real HTTPS, run as root.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:tls';
import { promisify } from 'node:util';
import { Agent, request } from 'undici';
import { createPgInstance, lookupOsUser } from '../../shared/system/pgserver.ts';
import { SecretBox } from '../../coordinator/store/secrets.ts';
import { canonicalJson } from '../../coordinator/service.ts';
import { enroll, longPollsHeld, pgdSpec, startHarness, type EnrolledNode, type Harness } from '../helpers/coordinator-harness.ts';
import { waitFor } from '../helpers/wait.ts';

const execFileAsync = promisify(execFile);
const REQUEST_TIMEOUT_MS = 1500;
let h: Harness;

before(async () => {
  h = await startHarness({ requestTimeoutMs: REQUEST_TIMEOUT_MS, longPollMs: 30_000, agentRateLimit: { burst: 10, perSecond: 1 } });
  for (const name of ['hard', 'tamper']) {
    const put = await h.admin.call('PUT', `/v1/clusters/${name}`, { body: pgdSpec(name) });
    assert.equal(put.status, 200, put.text);
  }
});
after(() => h?.close());

/** psql as another OS user (never prompting): what that user can do with the store's socket. */
async function psqlAs(user: string, socketDir: string, port: number, sql: string, password?: string): Promise<{ ok: boolean; out: string }> {
  const u = await lookupOsUser(user);
  try {
    const { stdout } = await execFileAsync('psql', ['-w', '-X', '-At', '-h', socketDir, '-p', String(port), '-U', 'postgres', '-d', 'pgaccord', '-c', sql], {
      uid: u.uid,
      gid: u.gid,
      cwd: '/',
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: u.home, PGCONNECT_TIMEOUT: '5', ...(password ? { PGPASSWORD: password } : {}) },
    });
    return { ok: true, out: stdout };
  } catch (e) {
    return { ok: false, out: String((e as { stderr?: string }).stderr ?? e) };
  }
}

const FORGED_TOKEN = `INSERT INTO join_tokens (id, cluster, node, secret_sha256, created_at, expires_at) VALUES ('forged', 'hard', 'node-1', sha256('known'), now(), now() + interval '1 hour')`;

async function assertStoreLocked(dir: string): Promise<void> {
  const sock = join(dir, 'pg', 'sock');
  const port = 5432;
  const postgresUid = (await lookupOsUser('postgres')).uid;
  // Neither the store's files nor its socket belong to the OS user of the PostgreSQL nodes.
  for (const p of [join(dir, 'pg'), join(dir, 'pg', 'data'), sock]) assert.notEqual((await stat(p)).uid, postgresUid, `${p} is not owned by postgres`);
  const asPostgres = await psqlAs('postgres', sock, port, FORGED_TOKEN);
  assert.equal(asPostgres.ok, false, `the postgres OS user reached the store: ${asPostgres.out}`);
  // Root can reach the socket: without the password it is still refused (SCRAM, not trust).
  const asRoot = await psqlAs('root', sock, port, FORGED_TOKEN);
  assert.equal(asRoot.ok, false, `no password, yet connected: ${asRoot.out}`);
  assert.match(asRoot.out, /password/);
  const pw = await stat(join(dir, 'store.password'));
  assert.equal(pw.mode & 0o777, 0o600);
  assert.equal(pw.uid, process.getuid!());
  const withPassword = await psqlAs('root', sock, port, 'SELECT 1', (await readFile(join(dir, 'store.password'), 'utf8')).trim());
  assert.equal(withPassword.ok, true, withPassword.out);
  const hba = (await readFile(join(dir, 'pg', 'data', 'pg_hba.conf'), 'utf8')).split('\n').filter((l) => l.trim() && !l.trim().startsWith('#'));
  assert.deepEqual(hba.map((l) => l.trim().split(/\s+/)), [['local', 'all', 'all', 'scram-sha-256']]);
}

test('embedded store: not the postgres OS user, no trust; a forged join token row cannot be inserted', async () => {
  await assertStoreLocked(h.dir);
  const rows = await h.coord.store.query(`SELECT 1 FROM join_tokens WHERE id = 'forged'`);
  assert.equal(rows.length, 0);
  const log = await readFile(h.logFile, 'utf8');
  assert.ok(!log.includes((await readFile(join(h.dir, 'store.password'), 'utf8')).trim()), 'the store password is not logged');
});

test('a stored spec changed behind the API (auth: trust, a bad HBA rule) is refused when read, not compiled', async () => {
  const n = await enroll(h, 'tamper', 'node-1');
  const before = await n.client.call('GET', '/v1/agent/desired?after=0');
  assert.equal(before.status, 200, before.text);
  const tampers = [
    `UPDATE clusters SET spec = jsonb_set(spec, '{auth}', '"trust"') WHERE name = 'tamper'`,
    `UPDATE clusters SET spec = jsonb_set(spec, '{hba}', '[{"type":"host","database":"all","user":"all","address":"0.0.0.0/0","method":"trust\\nhost all all 0.0.0.0/0 trust"}]') WHERE name = 'tamper'`,
  ];
  for (const sql of tampers) {
    await h.coord.store.query(sql);
    for (const r of [await h.admin.call('GET', '/v1/clusters/tamper/status'), await h.admin.call('GET', '/v1/clusters/tamper'), await n.client.call('GET', '/v1/agent/desired?after=0')]) {
      assert.equal(r.status, 500, r.text);
      assert.equal(r.body.code, 'E_STORED_SPEC_INVALID', r.text);
      assert.match(r.body.message, /tamper/);
      assert.doesNotMatch(r.text, /trust/);
    }
    // Applying the spec again through the API repairs the row.
    const put = await h.admin.call('PUT', '/v1/clusters/tamper', { body: pgdSpec('tamper') });
    assert.equal(put.status, 200, put.text);
    const fixed = await n.client.call('GET', '/v1/agent/desired?after=0');
    assert.equal(fixed.status, 200, fixed.text);
    assert.equal(fixed.body.auth ?? 'cert', 'cert');
  }
  await n.client.close();
});

test('a stored spec cannot be rolled back: an earlier (spec, seal) pair of the cluster, or of a deleted one of the same name, is refused', async () => {
  const name = 'replay';
  const row = async () => (await h.coord.store.query<{ spec: unknown; spec_canonical: string; spec_seal: string; generation: number }>(`SELECT spec, spec_canonical, spec_seal, generation FROM clusters WHERE name = $1`, [name]))[0]!;
  /** Put an earlier pair back, with the given generation (by default, one more than now). */
  const replay = async (old: { spec: unknown; spec_canonical: string; spec_seal: string }, generation?: number) => {
    await h.coord.store.query(`UPDATE clusters SET spec = $2, spec_canonical = $3, spec_seal = $4, generation = coalesce($5, generation + 1) WHERE name = $1`, [name, JSON.stringify(old.spec), old.spec_canonical, old.spec_seal, generation ?? null]);
  };
  const assertRefused = async (n: EnrolledNode) => {
    for (const r of [await h.admin.call('GET', `/v1/clusters/${name}`), await n.client.call('GET', '/v1/agent/desired?after=0')]) {
      assert.equal(r.status, 500, r.text);
      assert.equal(r.body.code, 'E_STORED_SPEC_INVALID', r.text);
    }
  };
  // Spec A (auth: trust) then spec B (auth: cert): A's pair put back with a higher generation.
  assert.equal((await h.admin.call('PUT', `/v1/clusters/${name}`, { body: pgdSpec(name, { auth: 'trust' }) })).status, 200);
  const a = await row();
  assert.equal((await h.admin.call('PUT', `/v1/clusters/${name}`, { body: pgdSpec(name) })).status, 200);
  const n = await enroll(h, name, 'node-1');
  assert.equal((await n.client.call('GET', '/v1/agent/desired?after=0')).status, 200);
  await replay(a);
  await assertRefused(n);
  // The whole row of an earlier generation put back (seal and generation included): this
  // coordinator has served a later one, so it is refused too.
  assert.equal((await h.admin.call('PUT', `/v1/clusters/${name}`, { body: pgdSpec(name) })).status, 200);
  const whole = await row();
  assert.equal((await h.admin.call('PUT', `/v1/clusters/${name}`, { body: pgdSpec(name, { auth: 'scram-sha-256' }) })).status, 200);
  assert.equal((await n.client.call('GET', '/v1/agent/desired?after=0')).status, 200);
  await replay(whole, whole.generation);
  await assertRefused(n);
  await n.client.close();
  // Delete, re-create with B: the first incarnation's pair (B's seal, then A's) is refused too.
  assert.equal((await h.admin.call('PUT', `/v1/clusters/${name}`, { body: pgdSpec(name) })).status, 200);
  const b1 = await row();
  assert.equal((await h.admin.call('DELETE', `/v1/clusters/${name}`)).status, 204);
  assert.equal((await h.admin.call('PUT', `/v1/clusters/${name}`, { body: pgdSpec(name, { auth: 'scram-sha-256' }) })).status, 200);
  const m = await enroll(h, name, 'node-1');
  assert.equal((await m.client.call('GET', '/v1/agent/desired?after=0')).status, 200);
  for (const old of [a, b1]) {
    // At the generation the pair was sealed at: only the incarnation tells them apart.
    await replay(old, old.generation);
    await assertRefused(m);
  }
  // Applying the spec through the API repairs the row.
  assert.equal((await h.admin.call('PUT', `/v1/clusters/${name}`, { body: pgdSpec(name) })).status, 200);
  assert.equal((await m.client.call('GET', '/v1/agent/desired?after=0')).status, 200);
  await m.client.close();
});

test('slow clients: 50 TLS connections that never finish a request body are closed within the bound', async () => {
  const [, port] = /:(\d+)$/.exec(h.coord.url)!;
  const started = Date.now();
  const closedAfter: number[] = [];
  await Promise.all(Array.from({ length: 50 }, () => new Promise<void>((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port: Number(port), ca: h.caPem, servername: 'localhost' }, () => {
      s.write('POST /v1/agent/enroll HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{');
    });
    s.on('data', () => undefined);
    s.on('error', () => undefined);
    s.on('close', () => {
      closedAfter.push(Date.now() - started);
      resolve();
    });
    // The deadline of the wait, not a sleep: a server that keeps them fails here.
    setTimeout(() => {
      s.destroy();
      reject(new Error(`connection still open after 20 s (closed so far: ${closedAfter.length})`));
    }, 20_000).unref();
  })));
  const worst = Math.max(...closedAfter);
  console.log(`# 50 slow clients closed by the server after ${Math.min(...closedAfter)}..${worst} ms (request bound ${REQUEST_TIMEOUT_MS} ms)`);
  assert.ok(worst < REQUEST_TIMEOUT_MS + 5000, `worst ${worst} ms`);
  // The server still answers.
  assert.equal((await h.anon.call('GET', '/healthz')).status, 200);
});

/** GET desired with the identity, keeping the headers (Retry-After). */
function agentGet(n: EnrolledNode, path: string): { done: Promise<{ status: number; headers: Record<string, unknown>; ms: number }>; close: () => Promise<void> } {
  const dispatcher = new Agent({ connect: { ca: h.caPem, cert: n.certPem, key: n.keyPem }, headersTimeout: 0, bodyTimeout: 0 });
  const t0 = Date.now();
  const done = request(`${h.coord.url}${path}`, { dispatcher }).then(async (res) => {
    await res.body.text();
    return { status: res.statusCode, headers: res.headers, ms: Date.now() - t0 };
  });
  return { done, close: () => dispatcher.close() };
}

test('long-poll: held past the request bound; a second one from the same node replaces the first at once', async () => {
  const n = await enroll(h, 'hard', 'node-1');
  const gen = (await h.admin.call('GET', '/v1/clusters/hard')).body.generation as number;
  // A long-poll is a complete request: the request bound does not cut it.
  const held = agentGet(n, `/v1/agent/desired?after=${gen}&wait=4`);
  const r = await held.done;
  assert.equal(r.status, 204);
  assert.ok(r.ms >= 3500, `held ${r.ms} ms`);
  await held.close();

  const polls = longPollsHeld(h);
  const first = agentGet(n, `/v1/agent/desired?after=${gen}`);
  await waitFor('the first long-poll held', () => longPollsHeld(h) > polls, 30_000, 10);
  const second = agentGet(n, `/v1/agent/desired?after=${gen}`);
  const a = await first.done;
  assert.equal(a.status, 204);
  assert.ok(a.ms < 10_000, `the first poll answered after ${a.ms} ms (long-poll 30 s)`);
  console.log(`# replaced long-poll answered after ${a.ms} ms`);
  // The second is still held: a change wakes it.
  let settled = false;
  void second.done.then(() => (settled = true));
  await new Promise((res) => setTimeout(res, 200));
  assert.equal(settled, false, 'the second poll is held');
  const put = await h.admin.call('PUT', '/v1/clusters/hard', { body: pgdSpec('hard', { roles: [{ name: 'woke' }] }) });
  assert.equal(put.status, 200, put.text);
  assert.equal((await second.done).status, 200);
  await Promise.all([first.close(), second.close(), n.client.close()]);
});

test('rate limit per agent identity: one node looping gets 429 with Retry-After, another node is answered', async () => {
  const greedy = await enroll(h, 'hard', 'node-2');
  const other = await enroll(h, 'hard', 'node-3');
  const statuses: number[] = [];
  let retryAfter: unknown;
  for (let i = 0; i < 40; i++) {
    const q = agentGet(greedy, '/v1/agent/desired?after=0');
    const r = await q.done;
    await q.close();
    statuses.push(r.status);
    if (r.status === 429) retryAfter ??= r.headers['retry-after'];
  }
  const limited = statuses.filter((s) => s === 429).length;
  console.log(`# greedy node: ${statuses.filter((s) => s === 200).length} answered, ${limited} limited (429) of 40`);
  assert.ok(limited >= 20, `429s: ${limited}`);
  assert.ok(Number(retryAfter) >= 1, `Retry-After: ${String(retryAfter)}`);
  const o = agentGet(other, '/v1/agent/desired?after=0');
  assert.equal((await o.done).status, 200, 'the other node is answered');
  await o.close();
  await Promise.all([greedy.client.close(), other.client.close()]);
});

test('a request refused by the rate limit does not count as contact (node_status.last_contact unchanged)', async () => {
  const n = await enroll(h, 'hard', 'node-1');
  const lastContact = async () => (await h.coord.store.query<{ t: Date }>(`SELECT last_contact AS t FROM node_status WHERE cluster = 'hard' AND node = 'node-1'`))[0]!.t.getTime();
  let limited = 0;
  let answered = 0;
  // Twice in a row: a 429, its last_contact, another 429, the same last_contact (a token that
  // refilled between them on a slow machine answers 200 and starts the pair again).
  for (let before: number | null = null; limited < 2 && answered < 200; ) {
    const r = await n.client.call('GET', '/v1/agent/desired?after=0&wait=0');
    if (r.status !== 429) {
      answered += 1;
      before = null;
      continue;
    }
    const now = await lastContact();
    if (before !== null) assert.equal(now, before, 'a 429 wrote last_contact');
    before = now;
    limited += 1;
  }
  assert.equal(limited, 2, `limited: ${limited}, answered: ${answered}`);
  await n.client.close();
});

// Last: closing a harness closes every client of the file.
test('a store created by an older coordinator (trust, as postgres) is migrated at start', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'pgaccord-legacy-'));
  await chmod(dir, 0o711); // as openDataDir leaves it: the store's OS user traverses it
  try {
    // What older versions made: initdb as `postgres`, local trust, socket in DIR/pg/sock; left
    // running, as a coordinator killed with SIGKILL leaves it.
    const legacy = await createPgInstance({ baseDir: join(dir, 'pg'), listen: '', port: 5432 });
    let old: Harness;
    try {
      old = await startHarness({ dir });
    } catch (e) {
      await legacy.stop('immediate').catch(() => undefined);
      throw e;
    }
    try {
      await assertStoreLocked(dir);
      assert.equal((await old.admin.call('PUT', '/v1/clusters/legacy', { body: pgdSpec('legacy') })).status, 200);
    } finally {
      await old.close();
    }
    // And it starts again from what it left.
    const again = await startHarness({ dir });
    try {
      assert.equal((await again.admin.call('GET', '/v1/clusters/legacy')).status, 200);
      await assertStoreLocked(dir);
    } finally {
      await again.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('connections are capped: past maxConnections a new one is closed at once, before any request', async () => {
  const capped = await startHarness({ maxConnections: 3 });
  const [, port] = /:(\d+)$/.exec(capped.coord.url)!;
  const sockets: ReturnType<typeof connect>[] = [];
  const open = (): Promise<{ socket: ReturnType<typeof connect>; secure: boolean }> => new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port: Number(port), ca: capped.caPem, servername: 'localhost' });
    sockets.push(socket);
    socket.once('secureConnect', () => resolve({ socket, secure: true }));
    socket.once('error', () => resolve({ socket, secure: false }));
    socket.once('close', () => resolve({ socket, secure: false }));
  });
  try {
    const held = [await open(), await open(), await open()];
    assert.deepEqual(held.map((c) => c.secure), [true, true, true]);
    const fourth = await open();
    assert.equal(fourth.secure, false, 'the fourth connection was served');
  } finally {
    for (const s of sockets) s.destroy();
    await capped.close();
  }
});

test('rows sealed the older way (the digest alone) are re-sealed once at start; a row whose old seal does not hold stays refused', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'pgaccord-reseal-'));
  try {
    const first = await startHarness({ dir });
    try {
      for (const name of ['oldseal', 'oldbad']) assert.equal((await first.admin.call('PUT', `/v1/clusters/${name}`, { body: pgdSpec(name) })).status, 200);
      // What a coordinator before migration 5 left: no incarnation, seal = the digest alone.
      const box = new SecretBox(first.coord.dataDir.masterKey);
      const digest = (spec: unknown) => createHash('sha256').update(canonicalJson(spec)).digest('hex');
      await first.coord.store.query(`UPDATE clusters SET spec_seal = $2 WHERE name = $1`, ['oldseal', box.seal(digest(pgdSpec('oldseal')), 'cluster-spec:oldseal')]);
      await first.coord.store.query(`UPDATE clusters SET spec = jsonb_set(spec, '{auth}', '"trust"'), spec_seal = $2 WHERE name = $1`, ['oldbad', box.seal(digest(pgdSpec('oldbad')), 'cluster-spec:oldbad')]);
      await first.coord.store.query(`ALTER TABLE clusters DROP COLUMN incarnation`);
      await first.coord.store.query(`DELETE FROM schema_migrations WHERE version = 5`);
    } finally {
      await first.close();
    }
    const again = await startHarness({ dir });
    try {
      const ok = await again.admin.call('GET', '/v1/clusters/oldseal');
      assert.equal(ok.status, 200, ok.text);
      const bad = await again.admin.call('GET', '/v1/clusters/oldbad');
      assert.equal(bad.status, 500, bad.text);
      assert.equal(bad.body.code, 'E_STORED_SPEC_INVALID');
    } finally {
      await again.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
