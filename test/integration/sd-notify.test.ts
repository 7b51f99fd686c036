// systemd readiness and watchdog, against a real notification socket: a Unix datagram socket
// (python3 binds it: Node cannot) given as NOTIFY_SOCKET to the real coordinator process and the
// real agent process. Each datagram must come in order: READY=1 (with a STATUS=) before any
// WATCHDOG=1, keep-alives at half of WATCHDOG_USEC, STOPPING=1 at SIGTERM; and the PostgreSQL the
// coordinator starts does not inherit NOTIFY_SOCKET (it would send a READY=1 of its own).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { chmod, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { startCoordinator } from '../../coordinator/main.ts';
import { freePort } from '../../shared/system/pgserver.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import { throwawayPg } from '../helpers/pg.ts';
import { httpsClient } from '../helpers/coordinator-harness.ts';
import { startAgent, waitFor } from '../helpers/agent-process.ts';

const CLI = join(import.meta.dirname, '../../bin/pgaccord.mjs');
const cleanup: string[] = [];
const children = new Set<ChildProcess>();
after(async () => {
  for (const c of children) c.kill('SIGKILL');
  for (const d of cleanup) await rm(d, { recursive: true, force: true });
});

// Binds ADDRESS ('@name': abstract namespace) and prints every datagram as a JSON string line;
// systemd-notify's BARRIER=1 datagrams carry a pipe fd that recv() drops, which releases it.
const RECEIVER = `
import json, os, socket, sys
a = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind('\\0' + a[1:] if a.startswith('@') else a)
if not a.startswith('@'): os.chmod(a, 0o777)
print('"bound"', flush=True)
while True:
    print(json.dumps(s.recv(65536).decode()), flush=True)
`;

interface Receiver {
  /** Every datagram so far, BARRIER=1 left out, each as its lines. */
  messages(): string[][];
}

async function receiver(address: string): Promise<Receiver> {
  const proc = spawn('python3', ['-c', RECEIVER, address], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.add(proc);
  const got: string[] = [];
  let buf = '';
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      got.push(JSON.parse(buf.slice(0, i)) as string);
      buf = buf.slice(i + 1);
    }
  });
  await waitFor('the receiver to bind', () => got[0] === 'bound', 20_000, 50);
  return { messages: () => got.slice(1).map((m) => m.split('\n')).filter((m) => !(m.length === 1 && m[0] === 'BARRIER=1')) };
}

/** The checks common to both daemons, on the messages received until exit. */
function assertOrder(msgs: string[][], who: string): void {
  const flat = msgs.map((m) => m.join(' | '));
  const ready = msgs.findIndex((m) => m.includes('READY=1'));
  assert.ok(ready >= 0, `${who}: no READY=1 in ${JSON.stringify(flat)}`);
  assert.equal(msgs.filter((m) => m.includes('READY=1')).length, 1, `${who}: READY=1 exactly once: ${JSON.stringify(flat)}`);
  assert.ok(msgs[ready]!.some((l) => /^STATUS=\S/.test(l)), `${who}: READY=1 comes with a STATUS=: ${flat[ready]}`);
  const firstWatchdog = msgs.findIndex((m) => m.includes('WATCHDOG=1'));
  assert.ok(firstWatchdog > ready, `${who}: WATCHDOG=1 only after READY=1: ${JSON.stringify(flat)}`);
  const stopping = msgs.findIndex((m) => m.includes('STOPPING=1'));
  assert.ok(stopping > firstWatchdog, `${who}: STOPPING=1 at SIGTERM, after the keep-alives: ${JSON.stringify(flat)}`);
  assert.equal(msgs.filter((m) => m.includes('STOPPING=1')).length, 1, `${who}: STOPPING=1 once`);
  for (const m of msgs) for (const l of m) assert.match(l, /^(READY|STATUS|WATCHDOG|STOPPING)=/, `${who}: unexpected ${l}`);
}

const environ = (pid: number): string[] => readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');

test('coordinator process: READY=1 once HTTPS serves and the store answers, STATUS, WATCHDOG=1, STOPPING=1; its PostgreSQL gets no NOTIFY_SOCKET', async (t) => {
  // The data directory is the temporary directory itself: the store's OS user must reach it.
  const dir = await mkdtemp(join(tmpdir(), 'pgaccord-sdnotify-coord-'));
  const sockDir = await mkdtemp(join(tmpdir(), 'pgaccord-sdnotify-sock-'));
  cleanup.push(dir, sockDir);
  await chmod(sockDir, 0o755); // reachable by the store's OS user too: a leak would show
  const socketPath = join(sockDir, 'notify.sock');
  const rx = await receiver(socketPath);
  const port = await freePort();
  // WATCHDOG_USEC 2 s: a keep-alive every second.
  const child = spawn(process.execPath, [CLI, 'coordinator', '--data-dir', dir, '--listen', `127.0.0.1:${port}`], { env: { ...process.env, NOTIFY_SOCKET: socketPath, WATCHDOG_USEC: '2000000', WATCHDOG_PID: undefined }, stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(child);
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));

  await waitFor(`READY=1 from the coordinator (stderr: ${err.slice(-500)})`, () => rx.messages().some((m) => m.includes('READY=1')), 90_000, 100);
  // Ready means serving: the first request succeeds, no retry.
  const ca = await readFile(join(dir, 'ca.crt'), 'utf8');
  assert.deepEqual((await httpsClient(`https://127.0.0.1:${port}`, ca).call('GET', '/healthz')).body, { ok: true });
  const ready = rx.messages().find((m) => m.includes('READY=1'))!;
  assert.ok(ready.includes('STATUS=0 clusters, 0 agents enrolled, 0 in contact (last 2 min)'), ready.join(' | '));

  // The embedded store's postmaster (started through pg_ctl) has none of the notify variables.
  const postmaster = Number((await readFile(join(dir, 'pg', 'data', 'postmaster.pid'), 'utf8')).split('\n')[0]);
  const env = environ(postmaster);
  assert.ok(env.some((e) => e.startsWith('PGDATA=') || e.startsWith('HOME=') || e.startsWith('LC_ALL=')), 'read the real environment');
  assert.deepEqual(env.filter((e) => /^(NOTIFY_SOCKET|WATCHDOG_USEC|WATCHDOG_PID)=/.test(e)), []);

  await waitFor('two keep-alives', () => rx.messages().filter((m) => m.includes('WATCHDOG=1')).length >= 2, 30_000, 100);
  child.kill('SIGTERM');
  assert.equal(await exited, 0, err);
  children.delete(child);
  await waitFor('STOPPING=1', () => rx.messages().some((m) => m.includes('STOPPING=1')), 10_000, 50);
  t.diagnostic(JSON.stringify(rx.messages()));
  assertOrder(rx.messages(), 'coordinator');
});

test('agent process (abstract socket): READY=1 once it has its identity and its loop runs, STATUS with generation/phase/probes, WATCHDOG=1, STOPPING=1', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'pgaccord-sdnotify-agent-coord-'));
  const stateDir = await mkdtemp(join(tmpdir(), 'pgaccord-sdnotify-agent-state-'));
  cleanup.push(dir, stateDir);
  const coord = await startCoordinator({ dataDir: dir, listen: '127.0.0.1:0', longPollMs: 2000, logLevel: 'warn', logDestination: pino.destination({ dest: join(dir, 'coordinator.log'), sync: true }) });
  after(() => coord.close());
  const node = await throwawayPg();
  const spec: ClusterSpec = { name: 'sdn', profile: 'streaming', auth: 'scram-sha-256', tls: { sslmode: 'verify-full', certLifetime: '1d' }, nodes: [{ name: 'node-1', host: '127.0.0.1', port: node.port, kind: 'primary' }], roles: [] };
  const put = await coord.service.putCluster('sdn', spec);
  const token = (await coord.service.createToken('sdn', 'node-1')).token;
  const address = `@pgaccord-sdnotify-${process.pid}-${Date.now()}`;
  const rx = await receiver(address);
  const agent = startAgent(['--coordinator', coord.url, '--node', 'sdn/node-1', '--pgdata', node.dataDir, '--state-dir', stateDir, '--join-token', token], { NOTIFY_SOCKET: address, WATCHDOG_USEC: '2000000', WATCHDOG_PID: undefined });
  after(() => agent.stop('SIGKILL'));

  await waitFor(`READY=1 from the agent (${agent.lines.slice(-5).join('\n')})`, () => rx.messages().some((m) => m.includes('READY=1')), 60_000, 100);
  const want = `STATUS=generation ${put.generation}, converged, probes 0/0 ok`;
  await waitFor(`${want} (got ${JSON.stringify(rx.messages())})`, () => rx.messages().some((m) => m.includes(want)), 60_000, 100);
  await waitFor('two keep-alives', () => rx.messages().filter((m) => m.includes('WATCHDOG=1')).length >= 2, 30_000, 100);
  assert.equal(await agent.stop('SIGTERM'), 0, agent.lines.slice(-10).join('\n'));
  await waitFor('STOPPING=1', () => rx.messages().some((m) => m.includes('STOPPING=1')), 10_000, 50);
  const msgs = rx.messages();
  t.diagnostic(JSON.stringify(msgs));
  assertOrder(msgs, 'agent');
  // Ready before the first apply: READY=1 comes before any STATUS naming a generation.
  const ready = msgs.findIndex((m) => m.includes('READY=1'));
  assert.ok(msgs[ready]!.includes('STATUS=waiting for the first desired state'), msgs[ready]!.join(' | '));
  // STATUS= is sent when it changes, not at every pass.
  const statuses = msgs.flat().filter((l) => l.startsWith('STATUS='));
  assert.ok(statuses.every((s, i) => i === 0 || s !== statuses[i - 1]), JSON.stringify(statuses));
});
