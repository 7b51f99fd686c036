// `pgaccord coordinator` as a real process (embedded store), for the restart storm (issues 11
// and 13): --max-connections is parsed, refused when bad, and applied to the HTTPS listener; on
// SIGTERM a held long-poll is answered at once (204: the agent polls again, not a failure) and
// the process exits long before the long-poll length, instead of waiting for every held poll.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type TLSSocket } from 'node:tls';
import { freePort } from '../../shared/system/pgserver.ts';
import { createCsr } from '../../shared/crypto/csr.ts';
import { generateRsaKey } from '../../shared/crypto/keys.ts';
import { waitFor } from '../helpers/wait.ts';
import { httpsClient, pgdSpec } from '../helpers/coordinator-harness.ts';

const CLI = join(import.meta.dirname, '../../bin/pgaccord.mjs');
const dir = await mkdtemp(join(tmpdir(), 'pgaccord-shutdown-'));
const MAX_CONNECTIONS = 6;
let child: ChildProcess | null = null;
let exited: Promise<number | null> = Promise.resolve(null);
let port = 0;
let stderr = '';
after(async () => {
  child?.kill('SIGKILL');
  await exited;
  // A killed coordinator leaves its PostgreSQL running: stop it before removing the directory.
  if (existsSync(join(dir, 'pg/data/postmaster.pid'))) {
    const { runPg } = await import('../../shared/system/pgserver.ts');
    const st = await stat(join(dir, 'pg/data'));
    await runPg('pg_ctl', ['stop', '-m', 'immediate', '-D', join(dir, 'pg/data')], { name: String(st.uid), uid: st.uid, gid: st.gid, home: '/' }).catch(() => undefined);
  }
  await rm(dir, { recursive: true, force: true });
});

before(async () => {
  port = await freePort();
  child = spawn(process.execPath, [CLI, 'coordinator', '--data-dir', dir, '--listen', `127.0.0.1:${port}`, '--long-poll', '30', '--max-connections', String(MAX_CONNECTIONS)], { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr!.on('data', (d) => (stderr += d));
  exited = new Promise((resolve) => child!.once('exit', (code) => resolve(code)));
  await Promise.race([
    waitFor('the coordinator to listen', () => stderr.includes('listening on'), 60_000, 50),
    exited.then((code) => Promise.reject(new Error(`coordinator exited ${code}: ${stderr}`))),
  ]);
});

test('--max-connections: a bad value is refused before anything starts, with the flag named', () => {
  for (const bad of ['0', '-3', '1.5', 'many', '1000001', '']) {
    const missing = join(dir, `never-${bad || 'empty'}`);
    const r = spawnSync(process.execPath, [CLI, 'coordinator', '--data-dir', missing, '--listen', '127.0.0.1:0', `--max-connections=${bad}`], { encoding: 'utf8', timeout: 30_000 });
    assert.notEqual(r.status, 0, `--max-connections "${bad}" accepted: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`--max-connections: "${bad.replace('.', '\\.')}" is not a number of connections \\(1\\.\\.1000000\\)`), r.stderr);
    assert.ok(!existsSync(missing), 'nothing initialised for a refused flag');
  }
  const help = spawnSync(process.execPath, [CLI, 'coordinator', '--help'], { encoding: 'utf8' });
  assert.match(help.stdout + help.stderr, /--max-connections N/);
});

/** A TLS connection to the coordinator: whether the handshake completed before it was closed. */
function tlsConnection(): Promise<{ socket: TLSSocket; ok: boolean }> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port, rejectUnauthorized: false });
    socket.once('secureConnect', () => resolve({ socket, ok: true }));
    socket.once('error', () => resolve({ socket, ok: false }));
    socket.once('close', () => resolve({ socket, ok: false }));
  });
}

test('--max-connections N: N connections are held, one more is closed at once', async () => {
  const held: TLSSocket[] = [];
  try {
    for (let i = 0; i < MAX_CONNECTIONS; i++) {
      const c = await tlsConnection();
      assert.ok(c.ok, `connection ${i + 1} of ${MAX_CONNECTIONS} refused`);
      held.push(c.socket);
    }
    const extra = await tlsConnection();
    held.push(extra.socket);
    assert.equal(extra.ok, false, `connection ${MAX_CONNECTIONS + 1} was served`);
  } finally {
    for (const s of held) s.destroy();
  }
  // The server counts them down as it sees them close.
  await waitFor('a connection to be served again', async () => {
    const c = await tlsConnection();
    c.socket.destroy();
    return c.ok;
  }, 60_000, 50);
});

test('SIGTERM answers a held long-poll at once (204) and exits long before the 30 s long-poll', async () => {
  const ca = await readFile(join(dir, 'ca.crt'), 'utf8');
  const token = (await readFile(join(dir, 'admin.token'), 'utf8')).trim();
  const admin = httpsClient(`https://127.0.0.1:${port}`, ca);
  assert.equal((await admin.call('PUT', '/v1/clusters/stop', { token, body: pgdSpec('stop') })).status, 200);
  const tok = await admin.call('POST', '/v1/clusters/stop/nodes/node-1/tokens', { token, body: {} });
  assert.equal(tok.status, 200, tok.text);
  const { privateKeyPem } = await generateRsaKey();
  const enrolled = await admin.call('POST', '/v1/agent/enroll', { body: { token: tok.body.token, csr: createCsr(privateKeyPem, 'node-1') } });
  assert.equal(enrolled.status, 200, enrolled.text);
  const agent = httpsClient(`https://127.0.0.1:${port}`, ca, { certPem: enrolled.body.certificate, keyPem: privateKeyPem });
  const first = await agent.call('GET', '/v1/agent/desired?after=0');
  assert.equal(first.status, 200, first.text);
  const contact = async () => ((await admin.call('GET', '/v1/clusters/stop/status', { token })).body.nodes as { node: string; lastContact: string | null }[]).find((n) => n.node === 'node-1')!.lastContact;
  const before = await contact();
  // Held: nothing newer than the generation it has.
  let answeredAt = 0;
  const held = agent.call('GET', `/v1/agent/desired?after=${first.body.generation}`).then((r) => {
    answeredAt = Date.now();
    return r;
  });
  // The coordinator records the contact as it authenticates the poll, right before it waits.
  await waitFor('the held poll to reach the coordinator', async () => (await contact()) !== before, 60_000, 50);
  await admin.close();
  assert.equal(answeredAt, 0, 'the long-poll was answered before SIGTERM');
  const term = Date.now();
  child!.kill('SIGTERM');
  const reply = await Promise.race([held, new Promise<null>((r) => setTimeout(() => r(null), 5_000).unref())]);
  assert.ok(reply, 'the held long-poll was not answered within 5 s of SIGTERM');
  assert.equal(reply.status, 204, reply.text);
  assert.ok(answeredAt - term < 2_000, `answered ${answeredAt - term} ms after SIGTERM`);
  const code = await Promise.race([exited, new Promise<'late'>((r) => setTimeout(() => r('late'), 10_000).unref())]);
  assert.equal(code, 0, `exit ${code} (${Date.now() - term} ms after SIGTERM)`);
  assert.ok(!existsSync(join(dir, 'pg/data/postmaster.pid')), 'embedded PostgreSQL stopped with it');
  child = null;
  await agent.close().catch(() => undefined);
});
