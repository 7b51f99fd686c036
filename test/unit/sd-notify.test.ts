// The pure parts of systemd notification: reading (and scrubbing) the environment as
// sd_watchdog_enabled(3) does, the message formatter, the agent's STATUS= line and stuck check.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatNotify, statusLine, takeNotifyEnv } from '../../shared/sd-notify.ts';
import { loopAlive, STUCK_AFTER_MS, summaryLine } from '../../agent/loop.ts';

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
  assert.equal(summaryLine({ desired: null, applied: 0, phase: null, probesOk: 0, probes: 0, reachable: true }), 'waiting for the first desired state');
  assert.equal(summaryLine({ desired: 4, applied: 4, phase: 'converged', probesOk: 8, probes: 9, reachable: true }), 'generation 4, converged, probes 8/9 ok');
  assert.equal(summaryLine({ desired: 5, applied: 4, phase: 'failed', probesOk: 0, probes: 1, reachable: false }), 'generation 4 (desired 5), failed, probes 0/1 ok, coordinator unreachable');
});

test('loopAlive: idle or recent is alive; a pass or poll turn older than the bound is stuck', () => {
  const now = 10_000_000;
  assert.equal(loopAlive(now, { pass: null, turn: null }), true);
  assert.equal(loopAlive(now, { pass: now - 1000, turn: now - 30_000 }), true);
  assert.equal(loopAlive(now, { pass: now - STUCK_AFTER_MS, turn: null }), false);
  assert.equal(loopAlive(now, { pass: null, turn: now - STUCK_AFTER_MS - 1 }), false);
  assert.equal(loopAlive(now, { pass: now - 5000, turn: null }, 5000), false);
});
