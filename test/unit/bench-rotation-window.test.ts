// bench:converge's password rotation window (bench/rotation-window.ts): a failed connection counts
// for a rotation only when its probe started between that rotation's command and its
// convergence; one after a convergence, or before the next command, belongs to no rotation
// (counted apart, never stretching a window); the window runs from the first to the last failure.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { probePeriodMs, rotationWindows, type WindowProbe } from '../../bench/rotation-window.ts';

const p = (at: number, ok: boolean, edge = 'a->b'): WindowProbe => ({ at, ok, edge, error: ok ? '' : 'password authentication failed' });

test('failures count for their own rotation only; the window is first to last failure', () => {
  const rotations = [{ t0: 1000, convergedAt: 2000 }, { t0: 5000, convergedAt: 6000 }];
  const probes = [
    p(900, false), // before the first command: no rotation's
    p(1100, true), p(1200, false), p(1350, false, 'b->c'), p(1500, true),
    p(2100, false), // after the first convergence: not a window of the first, nor of the second
    p(5200, true), p(5900, true),
  ];
  const { windows, unattributed } = rotationWindows(probes, rotations);
  assert.deepEqual(windows, [{ failures: 2, windowMs: 150 }, { failures: 0, windowMs: null }]);
  assert.deepEqual(unattributed.map((x) => x.at), [900, 2100]);
});

test('a single failure is a window of 0 ms at the probes resolution, which is reported beside it', () => {
  const { windows } = rotationWindows([p(1500, false)], [{ t0: 1000, convergedAt: 2000 }]);
  assert.deepEqual(windows, [{ failures: 1, windowMs: 0 }]);
  assert.equal(probePeriodMs([p(0, true), p(100, true), p(250, true), p(0, true, 'x'), p(120, true, 'x')]), 120);
  assert.equal(probePeriodMs([]), null);
});
