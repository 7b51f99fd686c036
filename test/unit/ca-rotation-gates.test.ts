// The pure checks that gate a CA rotation (coordinator/ca/rotation.ts), without a coordinator or a
// database: notProved (trust -> reissue: every node proved the two-CA bundle) and notReissued
// (reissue -> finish: every node serves and holds only leaves of the new CA). A node passes with
// no reason; each defect on its own makes it fail with a reason that says which one. The service
// pairs each list with the node's name ({ node, waiting }), so the tests do the same.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { notProved, notReissued, type NodeEvidence } from '../../coordinator/ca/rotation.ts';
import type { AgentStatus, Phase, ProbeResult } from '../../shared/contract/status.ts';

const TRUST = 3;
const REISSUE = 4;
const NEW_SERIALS = new Set(['0a01', '0a02', '0a03']);
const fromNewCa = (serial: string) => NEW_SERIALS.has(serial);

function probe(to: string, ok = true): ProbeResult {
  return {
    to,
    role: 'replication',
    ok,
    conninfo: `host=${to} port=5432 sslmode=verify-full`,
    tlsVersion: ok ? 'TLSv1.3' : null,
    cipher: ok ? 'TLS_AES_256_GCM_SHA384' : null,
    error: ok ? null : 'certificate verify failed',
    at: '2031-03-01T00:00:00.000Z',
  };
}

/** A report that passes both gates at REISSUE (and so notProved at TRUST too). */
function report(over: Partial<AgentStatus> = {}): AgentStatus {
  return {
    generation: REISSUE,
    phase: 'converged',
    errors: [],
    files: [],
    servedCertificate: { id: 'server', serial: '0a01', notAfter: '2031-04-01T00:00:00.000Z' },
    certificates: [
      { id: 'server', serial: '0a01', notAfter: '2031-04-01T00:00:00.000Z' },
      { id: 'client-replication', serial: '0a02', notAfter: '2031-04-01T00:00:00.000Z' },
    ],
    probes: [probe('node-2'), probe('node-3')],
    pendingRestart: [],
    coordinatorReachable: true,
    versions: { agent: '0.1.0', postgres: '15.6' },
    ...over,
  };
}

function node(over: Partial<AgentStatus> | null = {}, stale = false, name = 'node-1'): NodeEvidence {
  return { node: name, report: over === null ? null : report(over), stale };
}

/** As the service shows it (caRotationStatus): the node's name and what it waits for. */
const waiting = (n: NodeEvidence, reasons: string[]) => ({ node: n.node, waiting: reasons });

// ---------------------------------------------------------------- notProved

test('notProved: a fresh, converged node at the trust generation with every probe ok has proved it', () => {
  assert.deepEqual(notProved(node({ generation: TRUST }), TRUST), []);
});

test('notProved: a generation above the one that introduced the bundle also proves it (>=, not ==)', () => {
  assert.deepEqual(notProved(node({ generation: TRUST + 5 }), TRUST), []);
  assert.deepEqual(notProved(node({ generation: 0 }), 0), []);
});

test('notProved: no probes at all is not a failed probe (a one-node cluster can prove the bundle)', () => {
  assert.deepEqual(notProved(node({ probes: [] }), TRUST), []);
});

test('notProved: a node that never reported waits for its first report, and only that', () => {
  const n = node(null, false, 'node-3');
  assert.deepEqual(waiting(n, notProved(n, TRUST)), { node: 'node-3', waiting: ['has not reported yet'] });
  // Without a report there is nothing else to judge, stale or not.
  assert.deepEqual(notProved(node(null, true), TRUST), ['has not reported yet']);
});

test('notProved: applied generation below the trust generation, named with both numbers', () => {
  const n = node({ generation: TRUST - 1 }, false, 'node-3');
  assert.deepEqual(waiting(n, notProved(n, TRUST)), { node: 'node-3', waiting: [`applied generation ${TRUST - 1} < ${TRUST}`] });
  assert.deepEqual(notProved(node({ generation: 0 }), 1), ['applied generation 0 < 1']);
});

test('notProved: a stale status fails on its own, even when the report itself looks perfect', () => {
  const n = node({}, true, 'node-2');
  assert.deepEqual(waiting(n, notProved(n, TRUST)), { node: 'node-2', waiting: ['its status is stale'] });
});

for (const phase of ['applying', 'failed', 'pending-restart', 'unknown', 'stale'] satisfies Phase[]) {
  test(`notProved: phase ${phase} is not converged`, () => {
    const n = node({ phase }, false, 'node-2');
    assert.deepEqual(waiting(n, notProved(n, TRUST)), { node: 'node-2', waiting: [`phase ${phase}`] });
  });
}

test('notProved: a report in phase stale that the service also marks stale gives both reasons', () => {
  // #evidence sets stale whenever report.phase === 'stale'.
  assert.deepEqual(notProved(node({ phase: 'stale' }, true), TRUST), ['its status is stale', 'phase stale']);
});

test('notProved: one failed probe is named by its target; the ok ones are not named', () => {
  const n = node({ probes: [probe('node-2'), probe('node-3', false)] });
  assert.deepEqual(notProved(n, TRUST), ['failed probe(s) to node-3']);
});

test('notProved: several failed probes are listed together, in report order, in one reason', () => {
  const n = node({ probes: [probe('node-3', false), probe('node-4'), probe('node-2', false)] });
  assert.deepEqual(notProved(n, TRUST), ['failed probe(s) to node-3, node-2']);
});

test('notProved: every defect at once gives every reason, in a stable order', () => {
  const n = node({ generation: 1, phase: 'failed', probes: [probe('node-2', false)] }, true, 'node-9');
  assert.deepEqual(waiting(n, notProved(n, TRUST)), {
    node: 'node-9',
    waiting: ['its status is stale', `applied generation 1 < ${TRUST}`, 'phase failed', 'failed probe(s) to node-2'],
  });
});

test('notProved: does not look at errors, files, pendingRestart or certificates (those are not part of the gate)', () => {
  const n = node({
    errors: [{ code: 'E_CERT_RENEWAL', message: 'renewal failed' }],
    pendingRestart: ['ssl_min_protocol_version'],
    servedCertificate: { id: 'server', serial: 'old-1', notAfter: '2031-04-01T00:00:00.000Z' },
    certificates: [{ id: 'server', serial: 'old-1', notAfter: '2031-04-01T00:00:00.000Z' }],
    coordinatorReachable: false,
  });
  assert.deepEqual(notProved(n, TRUST), []);
});

test('notProved: leaves its input untouched', () => {
  const n = node({ phase: 'failed', probes: [probe('node-2', false)] }, true);
  const before = structuredClone(n);
  notProved(n, TRUST);
  assert.deepEqual(n, before);
});

// ---------------------------------------------------------------- notReissued

test('notReissued: a proved node serving and holding only new-CA leaves is re-issued', () => {
  assert.deepEqual(notReissued(node(), REISSUE, fromNewCa), []);
});

test('notReissued: a node with no installed pair and no served certificate has nothing from the old CA', () => {
  // Current behaviour: servedCertificate null is not a reason (see the report about it).
  assert.deepEqual(notReissued(node({ servedCertificate: null, certificates: [] }), REISSUE, fromNewCa), []);
});

test('notReissued: a node that never reported waits for its report, fromNewCa is never asked', () => {
  let asked = 0;
  const n = node(null, true, 'node-3');
  const r = notReissued(n, REISSUE, (s) => (asked++, fromNewCa(s)));
  assert.deepEqual(waiting(n, r), { node: 'node-3', waiting: ['has not reported yet'] });
  assert.equal(asked, 0);
});

test('notReissued: every notProved reason applies, against the re-issue generation', () => {
  // Proved the trust generation but not the re-issue one: that is not enough to finish.
  const n = node({ generation: TRUST }, false, 'node-3');
  assert.deepEqual(waiting(n, notReissued(n, REISSUE, fromNewCa)), { node: 'node-3', waiting: [`applied generation ${TRUST} < ${REISSUE}`] });
  assert.deepEqual(notReissued(node({}, true), REISSUE, fromNewCa), ['its status is stale']);
  assert.deepEqual(notReissued(node({ phase: 'applying' }), REISSUE, fromNewCa), ['phase applying']);
  assert.deepEqual(notReissued(node({ probes: [probe('node-2', false)] }), REISSUE, fromNewCa), ['failed probe(s) to node-2']);
});

test('notReissued: a served certificate from the old CA, named by serial (installed pairs all new)', () => {
  const n = node({ servedCertificate: { id: 'server', serial: '01ff', notAfter: '2031-04-01T00:00:00.000Z' } }, false, 'node-2');
  assert.deepEqual(waiting(n, notReissued(n, REISSUE, fromNewCa)), { node: 'node-2', waiting: ['serves certificate 01ff from the old CA'] });
});

test('notReissued: an installed pair from the old CA, named by slot and serial (served one new)', () => {
  const n = node({
    certificates: [
      { id: 'server', serial: '0a01', notAfter: '2031-04-01T00:00:00.000Z' },
      { id: 'client-replication', serial: '01fe', notAfter: '2031-04-01T00:00:00.000Z' },
    ],
  }, false, 'node-2');
  assert.deepEqual(waiting(n, notReissued(n, REISSUE, fromNewCa)), { node: 'node-2', waiting: ['holds certificate(s) from the old CA: client-replication 01fe'] });
});

test('notReissued: several old pairs are listed together in report order, the new ones not named', () => {
  const n = node({
    certificates: [
      { id: 'server', serial: '01fd', notAfter: '2031-04-01T00:00:00.000Z' },
      { id: 'client-replication', serial: '0a02', notAfter: '2031-04-01T00:00:00.000Z' },
      { id: 'client-monitor', serial: '01fc', notAfter: '2031-04-01T00:00:00.000Z' },
    ],
  });
  assert.deepEqual(notReissued(n, REISSUE, fromNewCa), ['holds certificate(s) from the old CA: server 01fd, client-monitor 01fc']);
});

test('notReissued: the server serving its old pair while holding a renewed one gives only the served reason', () => {
  // Renewed on disk but not reloaded yet: the TLS handshake still shows the old leaf.
  const n = node({ servedCertificate: { id: 'server', serial: '01ff', notAfter: '2031-04-01T00:00:00.000Z' } });
  assert.deepEqual(notReissued(n, REISSUE, fromNewCa), ['serves certificate 01ff from the old CA']);
});

test('notReissued: every defect at once, proof reasons first, then served, then held', () => {
  const n = node({
    generation: TRUST,
    phase: 'pending-restart',
    probes: [probe('node-1', false)],
    servedCertificate: { id: 'server', serial: '01ff', notAfter: '2031-04-01T00:00:00.000Z' },
    certificates: [{ id: 'server', serial: '01ff', notAfter: '2031-04-01T00:00:00.000Z' }],
  }, true, 'node-2');
  assert.deepEqual(waiting(n, notReissued(n, REISSUE, fromNewCa)), {
    node: 'node-2',
    waiting: [
      'its status is stale',
      `applied generation ${TRUST} < ${REISSUE}`,
      'phase pending-restart',
      'failed probe(s) to node-1',
      'serves certificate 01ff from the old CA',
      'holds certificate(s) from the old CA: server 01ff',
    ],
  });
});

test('notReissued: asks fromNewCa about exactly the served serial and each installed serial, as reported', () => {
  const asked: string[] = [];
  notReissued(node(), REISSUE, (s) => (asked.push(s), true));
  assert.deepEqual(asked, ['0a01', '0a01', '0a02']);
});

test('notReissued: leaves its input untouched', () => {
  const n = node({ servedCertificate: { id: 'server', serial: '01ff', notAfter: 'x' }, certificates: [{ id: 'server', serial: '01ff', notAfter: 'x' }] }, true);
  const before = structuredClone(n);
  notReissued(n, REISSUE, fromNewCa);
  assert.deepEqual(n, before);
});

// ---------------------------------------------------------------- properties

const notConverged = fc.constantFrom<Phase>('applying', 'failed', 'pending-restart', 'unknown', 'stale');
const peer = fc.stringMatching(/^node-[0-9]{1,2}$/);

/** A node with an arbitrary subset of the defects, and the reasons expected for exactly those. */
const defective = fc
  .record({
    name: peer,
    gen: fc.integer({ min: 10, max: 60 }),
    stale: fc.boolean(),
    behind: fc.option(fc.integer({ min: 1, max: 10 }), { nil: null }),
    phase: fc.option(notConverged, { nil: null }),
    okProbes: fc.array(peer, { maxLength: 4 }),
    badProbes: fc.array(peer, { maxLength: 3 }),
    served: fc.constantFrom<'new' | 'old' | 'none'>('new', 'old', 'none'),
    held: fc.array(fc.record({ id: fc.constantFrom('server', 'client-replication', 'client-monitor'), old: fc.boolean() }), { maxLength: 4 }),
  })
  .chain((d) => fc.shuffledSubarray([...d.okProbes.map((to) => probe(to)), ...d.badProbes.map((to) => probe(to, false))], { minLength: d.okProbes.length + d.badProbes.length }).map((probes) => ({ ...d, probes })));

type Defective = typeof defective extends fc.Arbitrary<infer T> ? T : never;

function build(d: Defective): { n: NodeEvidence; proved: string[]; reissued: string[] } {
  let serial = 0;
  const mint = (old: boolean) => `${old ? 'old' : 'new'}-${(serial++).toString(16)}`;
  const servedSerial = d.served === 'none' ? null : mint(d.served === 'old');
  const held = d.held.map((h) => ({ id: h.id, serial: mint(h.old), notAfter: '2031-04-01T00:00:00.000Z' }));
  const n = node({
    generation: d.behind === null ? d.gen + (d.gen % 3) : d.gen - d.behind,
    phase: d.phase ?? 'converged',
    probes: d.probes,
    servedCertificate: servedSerial === null ? null : { id: 'server', serial: servedSerial, notAfter: '2031-04-01T00:00:00.000Z' },
    certificates: held,
  }, d.stale, d.name);
  const proved: string[] = [];
  if (d.stale) proved.push('its status is stale');
  if (d.behind !== null) proved.push(`applied generation ${d.gen - d.behind} < ${d.gen}`);
  if (d.phase !== null) proved.push(`phase ${d.phase}`);
  const bad = d.probes.filter((p) => !p.ok).map((p) => p.to);
  if (bad.length > 0) proved.push(`failed probe(s) to ${bad.join(', ')}`);
  const reissued = [...proved];
  if (servedSerial?.startsWith('old-')) reissued.push(`serves certificate ${servedSerial} from the old CA`);
  const old = held.filter((c) => c.serial.startsWith('old-'));
  if (old.length > 0) reissued.push(`holds certificate(s) from the old CA: ${old.map((c) => `${c.id} ${c.serial}`).join(', ')}`);
  return { n, proved, reissued };
}

const isNew = (s: string) => s.startsWith('new-');

test('property: notProved gives exactly one reason per defect present, so a node passes iff it has none', () => {
  fc.assert(
    fc.property(defective, (d) => {
      const { n, proved } = build(d);
      const got = notProved(n, d.gen);
      assert.deepEqual(got, proved);
      const clean = !d.stale && d.behind === null && d.phase === null && d.badProbes.length === 0;
      assert.equal(got.length === 0, clean);
    }),
    { numRuns: 500 },
  );
});

test('property: notReissued = notProved plus one reason for an old served leaf and one for old installed leaves', () => {
  fc.assert(
    fc.property(defective, (d) => {
      const { n, proved, reissued } = build(d);
      const got = notReissued(n, d.gen, isNew);
      assert.deepEqual(got, reissued);
      assert.deepEqual(got.slice(0, proved.length), notProved(n, d.gen));
      const clean = !d.stale && d.behind === null && d.phase === null && d.badProbes.length === 0 && d.served !== 'old' && d.held.every((h) => !h.old);
      assert.equal(got.length === 0, clean);
    }),
    { numRuns: 500 },
  );
});

test('property: a node that never reported waits for exactly its first report, whatever the generation or staleness', () => {
  fc.assert(
    fc.property(peer, fc.boolean(), fc.nat({ max: 1000 }), (name, stale, gen) => {
      const n: NodeEvidence = { node: name, report: null, stale };
      assert.deepEqual(notProved(n, gen), ['has not reported yet']);
      assert.deepEqual(notReissued(n, gen, () => false), ['has not reported yet']);
    }),
  );
});
