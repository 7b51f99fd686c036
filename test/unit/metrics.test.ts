// The fleet gauges from store rows (pure): which certificates a node counts, renewal instants,
// one 0/1 series per phase, one probe series per edge and role, bounded labels.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fleetSeries, PHASES, type NodeRow } from '../../coordinator/http/metrics-fleet.ts';

const day = 86400_000;
const t0 = Date.UTC(2026, 0, 1);
const node = (over: Partial<NodeRow>): NodeRow => ({ cluster: 'sales', generation: 7, node: 'node-1', applied: 7, phase: 'converged', reported_at: new Date(t0), last_contact: new Date(t0 + 1000), pending_restarts: 0, probes: [], certificates: [], identity_serial: null, ...over });

test('a node counts its served, installed and identity certificates once each, with notBefore and planned renewal from the records', () => {
  const f = fleetSeries(
    [node({
      certificates: [
        { id: 'server', serial: 'aa', notAfter: new Date(t0 + 90 * day).toISOString() }, // served
        { id: 'server', serial: 'aa', notAfter: new Date(t0 + 90 * day).toISOString() }, // installed: the same
        { id: 'client-replicator', serial: 'bb', notAfter: new Date(t0 + 90 * day).toISOString() },
        { id: 'server', serial: 'cc', notAfter: 'not a date' },
      ],
      identity_serial: 'dd',
    })],
    [
      { serial: 'aa', not_before: new Date(t0), not_after: new Date(t0 + 90 * day), renew_requested_at: null },
      { serial: 'bb', not_before: new Date(t0), not_after: new Date(t0 + 90 * day), renew_requested_at: new Date(t0 + 10 * day) },
      { serial: 'dd', not_before: new Date(t0), not_after: new Date(t0 + 30 * day), renew_requested_at: null },
    ],
    [{ cluster: 'sales', this_update: new Date(t0), next_update: new Date(t0 + 7 * day) }],
  );
  assert.deepEqual(f.certExpiration.map((s) => [s.labels.slot, s.labels.serial, s.value]), [
    ['server', 'aa', (t0 + 90 * day) / 1000],
    ['client-replicator', 'bb', (t0 + 90 * day) / 1000],
    ['identity', 'dd', (t0 + 30 * day) / 1000],
  ]);
  assert.deepEqual(f.certExpiration[0]!.labels, { cluster: 'sales', node: 'node-1', slot: 'server', serial: 'aa' });
  // Two thirds of the lifetime, or a requested renewal when earlier.
  assert.deepEqual(f.certRenewal.map((s) => s.value), [(t0 + 60 * day) / 1000, (t0 + 10 * day) / 1000, (t0 + 20 * day) / 1000]);
  assert.deepEqual(f.certNotBefore.map((s) => s.value), [t0 / 1000, t0 / 1000, t0 / 1000]);
  assert.deepEqual(f.crlNextUpdate, [{ labels: { cluster: 'sales' }, value: (t0 + 7 * day) / 1000 }]);
});

test('a certificate the coordinator has no record of keeps its expiry and gets no not-before or renewal', () => {
  const f = fleetSeries([node({ certificates: [{ id: 'server', serial: 'ee', notAfter: new Date(t0 + day).toISOString() }] })], [], []);
  assert.equal(f.certExpiration.length, 1);
  assert.equal(f.certNotBefore.length, 0);
  assert.equal(f.certRenewal.length, 0);
});

test('every phase has a 0/1 series; a node never heard from is unknown at generation 0 with no contact times', () => {
  const f = fleetSeries([node({ phase: 'failed', applied: 6 }), node({ node: 'node-2', applied: null, phase: null, reported_at: null, last_contact: null, pending_restarts: null, probes: null, certificates: null })], [], []);
  const phases = (n: string) => Object.fromEntries(f.phase.filter((s) => s.labels.node === n).map((s) => [s.labels.phase, s.value]));
  assert.deepEqual(Object.keys(phases('node-1')).sort(), [...PHASES].sort());
  assert.equal(phases('node-1').failed, 1);
  assert.equal(Object.values(phases('node-1')).reduce((a, b) => a + b), 1);
  assert.equal(phases('node-2').unknown, 1);
  assert.deepEqual(f.applied.map((s) => s.value), [6, 0]);
  assert.deepEqual(f.desired.map((s) => s.value), [7, 7]);
  assert.deepEqual(f.lastContact.map((s) => s.labels.node), ['node-1']);
  assert.deepEqual(f.lastReport.map((s) => s.labels.node), ['node-1']);
  assert.deepEqual(f.clusterGeneration, [{ labels: { cluster: 'sales' }, value: 7 }]);
});

test('the last probe-only pass of a node\'s applied generation, in seconds, as its agent timed it; none reported, no sample', () => {
  const f = fleetSeries([node({ probe_pass_ms: 950 }), node({ node: 'node-2', probe_pass_ms: null }), node({ node: 'node-3' })], [], []);
  assert.deepEqual(f.probePass, [{ labels: { cluster: 'sales', node: 'node-1' }, value: 0.95 }]);
});

test('one probe series per edge and role, 1 for success and 0 for failure (of any probe of that edge and role)', () => {
  const f = fleetSeries([node({ node: 'node-2', probes: [{ to: 'node-1', role: 'replicator', ok: true }, { to: 'node-1', role: 'replicator', ok: false }, { to: 'node-3', role: 'app', ok: false }] })], [], []);
  assert.deepEqual(f.probe, [
    { labels: { cluster: 'sales', from: 'node-2', to: 'node-1', role: 'replicator' }, value: 0 },
    { labels: { cluster: 'sales', from: 'node-2', to: 'node-3', role: 'app' }, value: 0 },
  ]);
});

test('an edge awaiting its peer (not probed yet) has no probe sample: a change does not flap the edge to 0', () => {
  const f = fleetSeries([node({ node: 'node-2', probes: [{ to: 'node-1', role: 'replicator', ok: false, reason: 'awaiting-peer' }, { to: 'node-3', role: 'app', ok: true }] })], [], []);
  assert.deepEqual(f.probe, [{ labels: { cluster: 'sales', from: 'node-2', to: 'node-3', role: 'app' }, value: 1 }]);
});

test('--metrics-listen: a bare port is loopback; HOST:PORT and [v6]:PORT as --listen; anything else a clear error', async () => {
  const { parseMetricsListen } = await import('../../coordinator/http/listen.ts');
  assert.deepEqual(parseMetricsListen('9464'), { host: '127.0.0.1', port: 9464 });
  assert.deepEqual(parseMetricsListen('0.0.0.0:9464'), { host: '0.0.0.0', port: 9464 });
  assert.deepEqual(parseMetricsListen('[::1]:9464'), { host: '::1', port: 9464 });
  for (const bad of ['', 'localhost', '99999', 'host:', ':9464', 'http://127.0.0.1:9464']) assert.throws(() => parseMetricsListen(bad), /^Error: --metrics-listen: ".*" is not HOST:PORT or PORT/, bad);
});
