// The pure parts of systemd notification: reading (and scrubbing) the environment as
// sd_watchdog_enabled(3) does, the message formatter, the agent's STATUS= line and stuck check.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { formatNotify, statusLine, takeNotifyEnv } from '../../shared/system/sd-notify.ts';
import { ReconcileLoop } from '../../agent/runtime/loop.ts';
import { loopAlive, STUCK_AFTER_MS, summaryLine } from '../../agent/runtime/judge.ts';
import type { CoordinatorApi } from '../../agent/runtime/loop-deps.ts';
import { CertificateManager } from '../../agent/runtime/certs.ts';
import { RenewalSchedule, seededRandom } from '../../agent/runtime/backoff.ts';
import { compileCluster } from '../../coordinator/cluster/compile.ts';
import type { ApplyResult, NodeContext } from '../../agent/apply/types.ts';
import { waitFor } from '../helpers/wait.ts';

test('takeNotifyEnv: socket and half of WATCHDOG_USEC, deleted from the environment', () => {
  const env: NodeJS.ProcessEnv = { NOTIFY_SOCKET: '/run/systemd/notify', WATCHDOG_USEC: '60000000', WATCHDOG_PID: '42', PATH: '/bin' };
  assert.deepEqual(takeNotifyEnv(env, 42), { socket: '/run/systemd/notify', watchdogMs: 30_000 });
  assert.deepEqual(env, { PATH: '/bin' });
  assert.deepEqual(takeNotifyEnv({ NOTIFY_SOCKET: '@abstract', WATCHDOG_USEC: '2000000' }, 7), { socket: '@abstract', watchdogMs: 1000 });
});

test('takeNotifyEnv: a watchdog for another pid, a bad WATCHDOG_USEC or no socket means no watchdog', () => {
  assert.deepEqual(takeNotifyEnv({ NOTIFY_SOCKET: '/s', WATCHDOG_USEC: '60000000', WATCHDOG_PID: '1' }, 42), { socket: '/s', watchdogMs: null });
  for (const usec of ['0', '-5', '1e6', '', ' 60']) assert.equal(takeNotifyEnv({ NOTIFY_SOCKET: '/s', WATCHDOG_USEC: usec }, 1).watchdogMs, null, usec);
  assert.deepEqual(takeNotifyEnv({ WATCHDOG_USEC: '60000000' }, 1), { socket: null, watchdogMs: null });
  // Neither an absolute path nor an abstract name: ignored, as libsystemd does.
  for (const s of ['relative', '@', '']) assert.equal(takeNotifyEnv({ NOTIFY_SOCKET: s }, 1).socket, null, s);
  const env: NodeJS.ProcessEnv = { NOTIFY_SOCKET: 'relative', WATCHDOG_USEC: 'x' };
  takeNotifyEnv(env, 1);
  assert.deepEqual(env, {}, 'scrubbed even when unusable');
});

test('formatNotify: one assignment per field, in order; STATUS on one line; bad keys refused', () => {
  assert.deepEqual(formatNotify([['READY', '1'], ['STATUS', 'gen 3,\nconverged\t ok']]), ['READY=1', 'STATUS=gen 3, converged ok']);
  assert.deepEqual(formatNotify([['WATCHDOG', '1']]), ['WATCHDOG=1']);
  assert.throws(() => formatNotify([['ready', '1']]), RangeError);
  assert.throws(() => formatNotify([['A=B', '1']]), RangeError);
  assert.equal(statusLine('x'.repeat(500)).length, 200);
});

test('summaryLine: generation (and the desired one when behind), phase, probes ok/total', () => {
  assert.equal(summaryLine({ desired: null, applied: 0, phase: null, probesOk: 0, probes: 0, contact: 'reachable' }), 'waiting for the first desired state');
  assert.equal(summaryLine({ desired: 4, applied: 4, phase: 'converged', probesOk: 8, probes: 9, contact: 'reachable' }), 'generation 4, converged, probes 8/9 ok');
  assert.equal(summaryLine({ desired: 5, applied: 4, phase: 'failed', probesOk: 0, probes: 1, contact: 'unreachable' }), 'generation 4 (desired 5), failed, probes 0/1 ok, coordinator unreachable');
});

test('loopAlive: idle or recent is alive; a pass or poll turn older than the bound is stuck', () => {
  const now = 10_000_000;
  assert.equal(loopAlive(now, { pass: null, turn: null }), true);
  assert.equal(loopAlive(now, { pass: now - 1000, turn: now - 30_000 }), true);
  assert.equal(loopAlive(now, { pass: now - STUCK_AFTER_MS, turn: null }), false);
  assert.equal(loopAlive(now, { pass: null, turn: now - STUCK_AFTER_MS - 1 }), false);
  assert.equal(loopAlive(now, { pass: now - 5000, turn: null }, 5000), false);
});

test('ReconcileLoop: ready before the first apply, keep-alives from its tick, none once a pass is stuck', async () => {
  const stateDir = await mkdtemp(join(tmpdir(), 'pgaccord-sdnotify-unit-'));
  after(() => rm(stateDir, { recursive: true, force: true }));
  const desired = compileCluster({ spec: { name: 'sales', profile: 'streaming', auth: 'trust', tls: { sslmode: 'disable' }, nodes: [{ name: 'node-1', host: '10.0.0.1', kind: 'primary' }] }, generation: 1, credentials: {}, caBundle: '', crl: null }).get('node-1')!;
  const events: string[] = [];
  let release!: () => void;
  const stuck = new Promise<void>((r) => (release = r));
  let loop: ReconcileLoop;
  let polls = 0;
  const client: CoordinatorApi = {
    async desired(_after, signal) {
      polls += 1;
      if (polls === 1) return { kind: 'newer', body: desired };
      await new Promise((r) => signal?.addEventListener('abort', r, { once: true }));
      throw new Error('aborted');
    },
    async status() {},
  };
  const log = pino({ level: 'silent' });
  const certs = new CertificateManager({ stateDir, owner: { uid: process.getuid!(), gid: process.getgid!() }, requestCertificate: async () => assert.fail('no certificate expected'), now: Date.now, schedule: new RenewalSchedule(seededRandom(1)), log });
  const apply = async (): Promise<ApplyResult> => {
    events.push('apply');
    await stuck; // a pass that never ends (until the test lets it go)
    return { phase: 'converged', changed: false, errors: [], files: [], pendingRestart: [], servedCertificate: null, clientConnections: [] };
  };
  loop = new ReconcileLoop({
    ctx: { stateDir, log } as unknown as NodeContext, cluster: 'sales', node: 'node-1', client, apply, certs, probe: { osUser: { name: 'x', uid: 0, gid: 0, home: '/' } },
    now: Date.now, random: seededRandom(3), minCycleMs: 1, resyncMs: 60_000, log, postgresVersion: async () => '15.18',
    onRunning: (line) => events.push(`ready ${line}`),
    watchdog: { everyMs: 20, stuckAfterMs: 1000, feed: () => events.push('feed') },
  });
  const running = loop.run();
  const count = () => events.filter((e) => e === 'feed').length;
  // Not yet: the events so far, which the timeout names.
  const until = (what: string, ok: () => boolean) => waitFor(what, () => ok() || Promise.reject(new Error(`events: ${events.join(', ')}`)), 20_000, 10);
  await until('the apply starts', () => events.includes('apply'));
  assert.equal(events[0], 'ready waiting for the first desired state', 'ready first, before the apply');
  await until('keep-alives while the pass is young', () => count() >= 3);
  // Stuck for longer than 1 s: the keep-alives stop (and stay stopped).
  await new Promise((r) => setTimeout(r, 1200));
  const frozen = count();
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(count(), frozen, 'no keep-alive while the pass is stuck');
  // The pass ends: the loop is alive again and feeds again.
  release();
  await until('keep-alives again', () => count() > frozen);
  loop.stop();
  assert.equal(await running, 'stopped');
});
