// The agent's systemd STATUS= line (summaryLine) words the coordinator contact it is given as
// data: in contact, unreachable (no answer), or refusing (it answered 429/503). A refusal is not a
// network fault, and the line must not send an operator looking for one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { summaryLine } from '../../agent/runtime/judge.ts';

const waiting = { desired: null, applied: 0, phase: null, probesOk: 0, probes: 0 };
const behind = { desired: 5, applied: 4, phase: 'failed', probesOk: 0, probes: 1 };

test('summaryLine renders each contact state: reachable, unreachable, refused with its HTTP status', () => {
  assert.equal(summaryLine({ ...waiting, contact: 'reachable' }), 'waiting for the first desired state');
  assert.equal(summaryLine({ ...waiting, contact: 'unreachable' }), 'waiting for the first desired state (coordinator unreachable)');
  assert.equal(summaryLine({ ...waiting, contact: { refused: 429 } }), 'waiting for the first desired state (coordinator refusing requests (HTTP 429))');
  assert.equal(summaryLine({ ...behind, contact: 'reachable' }), 'generation 4 (desired 5), failed, probes 0/1 ok');
  assert.equal(summaryLine({ ...behind, contact: 'unreachable' }), 'generation 4 (desired 5), failed, probes 0/1 ok, coordinator unreachable');
  assert.equal(summaryLine({ ...behind, contact: { refused: 503 } }), 'generation 4 (desired 5), failed, probes 0/1 ok, coordinator refusing requests (HTTP 503)');
});
