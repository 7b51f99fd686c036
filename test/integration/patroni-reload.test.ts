// The agent's Patroni proof (agent/apply/patroni.ts provePatroni) against a stand-in for Patroni's REST
// API: a Python process named `patroni`, run on a configuration directory that links the
// fragment, serving HTTPS with verify_client required and re-reading its certificate only on
// SIGHUP when the serial on disk changed, as Patroni 3.0's api.py does. The real Patroni is in
// test/e2e/patroni.test.ts; this pins the agent's side: no signal while the served certificate is
// the one on disk, one SIGHUP and a proof after a renewal, and an error (not a silent pass) when
// the REST API never picks the new certificate up.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { provePatroni } from '../../agent/apply/patroni.ts';
import { patroniPaths } from '../../shared/pgconf/patroni.ts';
import { issueLeaf, makeCa } from '../helpers/agent-certs.ts';
import type { OsUser } from '../../shared/system/pgserver.ts';

const FAKE = String.raw`import os, signal, socket, ssl, sys
certfile, cafile, mode = sys.argv[1], sys.argv[2], sys.argv[3]
def serial():
    return ssl._ssl._test_decode_cert(certfile).get('serialNumber')
def context():
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    c.load_cert_chain(certfile=certfile, keyfile=certfile)
    c.load_verify_locations(cafile)
    c.verify_mode = ssl.CERT_REQUIRED
    return c
ctx, loaded, hup = context(), serial(), []
signal.signal(signal.SIGHUP, lambda *_: hup.append(1))
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(8); s.settimeout(0.1)
print(s.getsockname()[1], flush=True)
while True:
    if hup:
        hup.clear()
        print('sighup', flush=True)
        if mode == 'reload' and serial() != loaded:
            ctx, loaded = context(), serial()
    try:
        conn, _ = s.accept()
    except socket.timeout:
        continue
    # as Patroni's RestApiServer: handshake on its own, read the request, unwrap, close
    conn.settimeout(5)
    t = ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
    try:
        t.do_handshake()
        print('handshake ok', flush=True)
    except Exception as e:
        print('handshake error', repr(e), flush=True)
        t.close()
        continue
    try:
        t.recv(1)
        t.unwrap()
    except Exception:
        pass
    t.close()
`;

const me: OsUser = { name: userInfo().username, uid: process.getuid!(), gid: process.getgid!(), home: userInfo().homedir };
const ca = await makeCa('patroni reload test CA');
after(() => ca.destroy());

async function setup(mode: 'reload' | 'ignore'): Promise<{ dir: string; paths: ReturnType<typeof patroniPaths>; proc: ChildProcess; sighups: () => number; handshakes: () => string[]; renew: () => Promise<void> }> {
  const dir = await mkdtemp('/tmp/pgaccord-patroni-reload-');
  after(() => rm(dir, { recursive: true, force: true }));
  const paths = patroniPaths({ stateDir: join(dir, 'state') });
  await mkdir(paths.dir, { recursive: true });
  const pair = async (usage: 'server' | 'client') => {
    const l = await issueLeaf(ca, { slot: usage, commonName: usage === 'server' ? '127.0.0.1' : 'patroni', ips: usage === 'server' ? ['127.0.0.1'] : [], usage, dir: join(dir, 'tls'), owner: me });
    return `${await readFile(l.certPath, 'utf8')}${await readFile(l.keyPath, 'utf8')}`;
  };
  await writeFile(paths.apiPem, await pair('server'), { mode: 0o600 });
  await writeFile(paths.clientPem, await pair('client'), { mode: 0o600 });
  await writeFile(paths.fragment, '# fragment\n', { mode: 0o600 });
  const conf = join(dir, 'patroni.d');
  await mkdir(conf);
  await symlink(paths.fragment, join(conf, 'pgaccord.yml'));
  const bin = join(dir, 'patroni');
  await writeFile(bin, FAKE);
  await chmod(bin, 0o755);
  const proc = spawn('python3', [bin, paths.apiPem, ca.certPath, mode, conf], { stdio: ['ignore', 'pipe', 'inherit'] });
  after(() => proc.kill('SIGKILL'));
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  for (const deadline = Date.now() + 15_000; !/^\d+\n/.test(out);) {
    if (Date.now() > deadline || proc.exitCode !== null) throw new Error(`the stand-in did not start: ${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    dir, paths, proc,
    sighups: () => out.split('\n').filter((l) => l === 'sighup').length,
    handshakes: () => out.split('\n').filter((l) => l.startsWith('handshake ')),
    renew: async () => writeFile(paths.apiPem, await pair('server'), { mode: 0o600 }),
  };
}

const caBundle = () => readFile(ca.certPath, 'utf8');

test('Patroni serving the certificate on disk: proved, no signal; after a renewal: one SIGHUP, the new serial proved', async () => {
  const f = await setup('reload');
  const first = await provePatroni({ uid: me.uid, paths: f.paths, caBundle: await caBundle(), fragmentChanged: false });
  assert.deepEqual([first.problems, first.signalled, f.sighups()], [[], false, 0]);
  const before = first.served!.serial;
  await f.renew();
  const second = await provePatroni({ uid: me.uid, paths: f.paths, caBundle: await caBundle(), fragmentChanged: false, timeoutMs: 10_000 });
  assert.deepEqual(second.problems, []);
  assert.equal(second.signalled, true);
  assert.notEqual(second.served!.serial, before);
  assert.equal(f.sighups(), 1);
  // a changed fragment alone is a reason to signal (Patroni re-reads its configuration)
  const third = await provePatroni({ uid: me.uid, paths: f.paths, caBundle: await caBundle(), fragmentChanged: true, timeoutMs: 10_000 });
  assert.deepEqual([third.problems, third.signalled], [[], true]);
});

test('five proofs against a REST API serving the certificate on disk: five handshakes the server completed, no exception', async () => {
  const f = await setup('reload');
  const N = 5;
  for (let i = 0; i < N; i++) {
    const r = await provePatroni({ uid: me.uid, paths: f.paths, caBundle: await caBundle(), fragmentChanged: false });
    assert.deepEqual([r.problems, r.signalled], [[], false]);
  }
  for (const deadline = Date.now() + 15_000; f.handshakes().length < N;) {
    assert.ok(Date.now() < deadline, `the stand-in reported ${f.handshakes().length} of ${N} handshakes`);
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.deepEqual(f.handshakes(), Array(N).fill('handshake ok'));
});

test('a REST API that never picks the renewed certificate up: E_PATRONI_RELOAD_NOT_PROVED, naming both serials', async () => {
  const f = await setup('ignore');
  await f.renew();
  const r = await provePatroni({ uid: me.uid, paths: f.paths, caBundle: await caBundle(), fragmentChanged: false, timeoutMs: 1500 });
  assert.equal(r.signalled, true);
  assert.equal(r.problems.length, 1);
  assert.equal(r.problems[0]!.code, 'E_PATRONI_RELOAD_NOT_PROVED');
  assert.match(r.problems[0]!.message, /still serves serial [0-9a-f]+ instead of [0-9a-f]+/);
});

test('no Patroni includes the fragment: E_PATRONI_NOT_FOUND', async () => {
  const dir = await mkdtemp('/tmp/pgaccord-patroni-reload-');
  after(() => rm(dir, { recursive: true, force: true }));
  const paths = patroniPaths({ stateDir: dir });
  await mkdir(paths.dir, { recursive: true });
  await writeFile(paths.fragment, '# nobody links this\n');
  const r = await provePatroni({ uid: me.uid, paths, caBundle: await caBundle(), fragmentChanged: false });
  assert.deepEqual(r.problems.map((p) => p.code), ['E_PATRONI_NOT_FOUND']);
});
