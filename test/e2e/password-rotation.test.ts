// End to end, SCRAM password rotation on three nodes (scram-sha-256 over verify-full): a probe
// over every inter-node edge every ~150 ms with the agent's own connection string (its passfile)
// measures the window in which new connections fail; PostgreSQL keeps one password per role and
// libpq reads only the first matching passfile line, so the window cannot be zero, only short:
// one generation carries the new verifier and the new passfile line, every agent's long-poll
// wakes at once and each applies both in one apply, at the instant the generation names
// (passwordsAt): every agent stages and proves the rest, then switches its passfile and commits
// its verifiers at that instant, so both halves of every edge change together (each node's
// reported timings for the rotation show the wait). A session opened before the rotation
// survives it. The figures are printed (# password-rotation e2e: ...) and kept in docs/lifecycle.md.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import { LocalCluster } from '../../bin/local-cluster.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import { query } from '../helpers/pg.ts';
import { waitFor } from '../helpers/wait.ts';
import { rotationWindows, watchEdges } from '../../bench/rotation-window.ts';
import { edgeConninfos, longSession } from '../helpers/lifecycle-e2e.ts';

const ROTATIONS = 3;
const BOUND_MS = 5000;
const SETTLE_MS = 2000;

test('password rotation: measured window of failed new connections, live session survives', async () => {
  const cluster = await LocalCluster.create({ dir: await mkdtemp('/tmp/pgaccord-e2e-pwrot-') });
  after(() => cluster.close());
  await cluster.startCoordinator();
  const nodes = [await cluster.addNode('node-1', '127.0.0.71'), await cluster.addNode('node-2', '127.0.0.72'), await cluster.addNode('node-3', '127.0.0.73')];
  const spec: ClusterSpec = {
    name: 'pwrot', profile: 'pgd', auth: 'scram-sha-256', tls: { sslmode: 'verify-full', certLifetime: '1h' },
    nodes: nodes.map((n) => ({ name: n.name, host: n.host, address: '127.0.0.1', port: n.pg.port, kind: 'peer' })),
  };
  assert.equal((await cluster.apply(spec)).code, 0);
  for (const n of nodes) await cluster.startAgent('pwrot', n.name);
  await cluster.waitConverged('pwrot', 120_000);

  const edges = (await Promise.all(nodes.map(async (n) => (await edgeConninfos(n.stateDir)).map((e) => ({ name: `${n.name}->${e.to}`, conninfo: e.conninfo }))))).flat();
  assert.equal(edges.length, 6);
  for (const e of edges) assert.match(e.conninfo, /passfile=/);
  const roleName = 'pgd_replication';
  const verifier = async () => (await query<{ v: string }>(nodes[0]!.pg, `SELECT rolpassword AS v FROM pg_authid WHERE rolname = $1`, [roleName]))[0]?.v;

  // A session over node-1 -> node-2 with the passfile, open through every rotation.
  const session = longSession(edges[0]!.conninfo.replace('passfile=/nonexistent', ''), 'SELECT pg_sleep(60)', 120_000);

  const watch = watchEdges(edges, 150);
  const probes = watch.probes;
  after(() => watch.stop());
  await waitFor('a first probe of every edge', () => edges.every((e) => probes.some((p) => p.edge === e.name)));
  // Each rotation owns the probes started from its command until its convergence plus SETTLE_MS
  // (a probe started just before convergence may still meet the old passfile line). The
  // intervals are disjoint by construction (the next command starts after this one's settle),
  // so no failure is counted twice; a failure outside every interval is a defect of its own.
  const rotations: { t0: number; end: number; convergedMs: number; waitsMs: number[] }[] = [];
  for (let i = 0; i < ROTATIONS; i++) {
    const v0 = await verifier();
    const t0 = Date.now();
    const r = await cluster.cli(['cert', 'rotate-passwords', 'pwrot', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const res = JSON.parse(r.stdout) as { roles: string[]; generation: number };
    assert.ok(res.roles.includes(roleName));
    const st = await cluster.waitConverged('pwrot', 60_000);
    const convergedAt = Date.now();
    // Every node switched at the rotation's instant: the pass that applied it waited for it.
    const waits = st.nodes.map((n) => (n.timings?.generation === res.generation ? n.timings.phases.wait : undefined));
    assert.ok(waits.every((w) => w !== undefined), `every node switched at the rotation instant: ${JSON.stringify(st.nodes.map((n) => ({ node: n.node, timings: n.timings })))}`);
    rotations.push({ t0, end: convergedAt + SETTLE_MS, convergedMs: convergedAt - t0, waitsMs: waits as number[] });
    assert.notEqual(await verifier(), v0, 'a new verifier is in place');
    // Past the settle, outside every rotation: each edge probed again, and connecting.
    const settled = convergedAt + SETTLE_MS;
    await waitFor('a probe of every edge after the settle', () => edges.every((e) => probes.some((p) => p.edge === e.name && p.at > settled)), 30_000);
    const tail = probes.filter((p) => p.at > settled);
    assert.ok(tail.every((p) => p.ok), `every edge connects after the rotation: ${JSON.stringify(tail.filter((p) => !p.ok))}`);
  }
  await watch.stop();
  const s = await session;
  const failed = probes.filter((p) => !p.ok);
  const attributed = rotationWindows(probes, rotations.map((rot) => ({ t0: rot.t0, convergedAt: rot.end })));
  const windows = rotations.map((rot, i) => ({ ms: attributed.windows[i]!.windowMs ?? 0, failures: attributed.windows[i]!.failures, convergedMs: rot.convergedMs, waitsMs: rot.waitsMs }));
  const unattributed = attributed.unattributed;
  const report = { probes: probes.length, failures: failed.length, windows, unattributed: unattributed.length, session: { ok: s.ok, ms: s.ms } };
  console.log(`# password-rotation e2e: ${JSON.stringify(report)}`);
  for (const f of failed) assert.match(f.error, /password authentication failed/, `${f.edge}: ${f.error}`);
  assert.deepEqual(unattributed.map((p) => `${p.edge} at ${p.at}: ${p.error}`), [], 'no failure outside a rotation');
  assert.equal(windows.reduce((n, w) => n + w.failures, 0), failed.length, 'each failure counted once');
  for (const w of windows) assert.ok(w.ms <= BOUND_MS, `window ${w.ms} ms <= ${BOUND_MS} ms`);
  assert.equal(s.ok, true, `the session opened before the rotations survived: ${s.error}`);
  assert.ok(s.ms >= 59_000);
});
