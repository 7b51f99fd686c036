// Kill one mid-flight (issue 11 item 2): three coordinator processes on one store, three real
// agents on three real PostgreSQL 15 nodes, every agent given the three URLs (from its join
// token). One coordinator is SIGKILLed during a fan-out, one during a CA rotation (as the new CA
// starts issuing and the old leaves are re-issued), one during a renewal storm; each comes back
// before the next. Every node converges after each; the rotation finishes; no node goes without a
// status report for longer than one report interval beyond its own; no CSR is signed twice (the
// coordinators issued no more cluster certificates than the agents sent CSRs).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { PgInstance } from '../../shared/system/pgserver.ts';
import { coordinatorFleet, type CoordSlot } from '../helpers/coordinator-fleet.ts';
import { throwawayPg } from '../helpers/pg.ts';
import { startAgent, waitFor, type AgentProcess } from '../helpers/agent-process.ts';
import { httpsClient, type Reply } from '../helpers/coordinator-harness.ts';

const LONG_POLL_S = 3;
const fleet = await coordinatorFleet(3, { longPollSeconds: LONG_POLL_S });
const [A, B, C] = fleet.slots as [CoordSlot, CoordSlot, CoordSlot];
const nodes: PgInstance[] = [await throwawayPg(), await throwawayPg(), await throwawayPg()];
const stateDirs = await Promise.all(nodes.map((_, i) => mkdtemp(join(tmpdir(), `pgaccord-kill-agent-${i + 1}-`))));
const agents: AgentProcess[] = [];
after(async () => {
  await Promise.all(agents.map((a) => a.stop('SIGKILL')));
  for (const d of stateDirs) await rm(d, { recursive: true, force: true });
});

const clients = new Map(fleet.slots.map((s) => [s, httpsClient(s.url, fleet.caPem)]));
/** An admin call on the first coordinator that is up (the test's own failover). */
async function admin(method: string, path: string, body?: unknown): Promise<Reply> {
  for (const s of fleet.slots) {
    if (!s.proc) continue;
    try {
      return await clients.get(s)!.call(method, path, { token: fleet.adminToken, ...(body !== undefined ? { body } : {}) });
    } catch {
      // that one just went down: the next
    }
  }
  throw new Error('no coordinator up');
}

const spec = (roles: string[]) => ({
  name: 'kill',
  profile: 'streaming',
  auth: 'scram-sha-256',
  tls: { sslmode: 'verify-full', certLifetime: '1d' },
  nodes: nodes.map((n, i) => ({ name: `node-${i + 1}`, host: '127.0.0.1', port: n.port, kind: i === 0 ? 'primary' : 'standby' })),
  roles: roles.map((name) => ({ name })),
});

async function converged(generation: number, what: string, timeoutMs = 60_000): Promise<number> {
  const t0 = Date.now();
  await waitFor(`${what}: every node converged at generation ${generation}`, async () => {
    const r = await admin('GET', '/v1/clusters/kill/status');
    const ns = r.body?.nodes as { appliedGeneration: number; phase: string; probes: { ok: boolean }[] }[] | undefined;
    return ns && ns.length === 3 && ns.every((n) => n.appliedGeneration >= generation && n.phase === 'converged' && n.probes.every((p) => p.ok));
  }, timeoutMs, 200).catch(async (e) => {
    const s = await admin('GET', '/v1/clusters/kill/status').catch(() => null);
    throw new Error(`${(e as Error).message}\n${JSON.stringify(s?.body?.nodes?.map((n: Record<string, unknown>) => ({ node: n.node, gen: n.appliedGeneration, phase: n.phase, errors: n.errors })))}\n${agents.map((a, i) => `--- node-${i + 1}\n${a.lines.slice(-8).join('\n')}`).join('\n')}`);
  });
  return Date.now() - t0;
}

// Every report the store receives, per node (reported_at), sampled every 100 ms.
const reports = new Map<string, number[]>();
let sampling = true;
const monitor = (async () => {
  const c = new pg.Client(fleet.store.socketConfig('coord'));
  await c.connect();
  try {
    while (sampling) {
      for (const r of (await c.query<{ node: string; reported_at: Date | null }>(`SELECT node, reported_at FROM node_status WHERE cluster = 'kill'`)).rows) {
        if (!r.reported_at) continue;
        const list = reports.get(r.node) ?? [];
        if (list[list.length - 1] !== r.reported_at.getTime()) list.push(r.reported_at.getTime());
        reports.set(r.node, list);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    await c.end();
  }
})();

/** The longest time between two reports of any node within [from, to]. */
function longestGap(from: number, to: number): { node: string; ms: number } {
  let worst = { node: '', ms: 0 };
  for (const [node, list] of reports) {
    const inWindow = [from, ...list.filter((t) => t > from && t < to), to];
    for (let i = 1; i < inWindow.length; i++) if (inWindow[i]! - inWindow[i - 1]! > worst.ms) worst = { node, ms: inWindow[i]! - inWindow[i - 1]! };
  }
  return worst;
}

test('three coordinators, one SIGKILLed during a fan-out, a CA rotation and a renewal storm: every node converges, the rotation finishes, no report gap beyond one interval, no CSR signed twice', async () => {
  const t0 = Date.now();
  const put = await admin('PUT', '/v1/clusters/kill', spec([]));
  assert.equal(put.status, 200, put.text);
  for (let i = 0; i < 3; i++) {
    const tok = await admin('POST', `/v1/clusters/kill/nodes/node-${i + 1}/tokens`, {});
    assert.equal(tok.status, 200, tok.text);
    // No --coordinator: the three URLs come from the token, in the order A, B, C.
    agents.push(startAgent(['--node', `kill/node-${i + 1}`, '--pgdata', nodes[i]!.dataDir, '--state-dir', stateDirs[i]!, '--join-token', tok.body.token]));
  }
  await converged(put.body.generation, 'start', 90_000);
  const figures: string[] = [];
  const gaps: { phase: string; node: string; ms: number }[] = [];

  // 1. Fan-out: a change made on A, which holds every long-poll, killed as it answers them.
  let from = Date.now();
  const fan = await admin('PUT', '/v1/clusters/kill', spec(['app']));
  assert.equal(fan.status, 200, fan.text);
  await fleet.kill(A);
  figures.push(`fan-out: converged ${await converged(fan.body.generation, 'fan-out')} ms after A was killed`);
  gaps.push({ phase: 'fan-out', ...longestGap(from, Date.now()) });
  await fleet.start(A);

  // 2. CA rotation (started on A, back up); B, where the agents moved, is killed as the new CA
  // starts issuing and the old CA's leaves are being re-issued.
  from = Date.now();
  const rot = await admin('POST', '/v1/clusters/kill/ca-rotation/start', {});
  assert.equal(rot.status, 200, rot.text);
  await waitFor('the rotation to reach reissue', async () => (await fleet.storeQuery<{ phase: string }>(`SELECT phase FROM ca_rotations WHERE cluster = 'kill'`))[0]?.phase === 'reissue', 60_000, 50);
  await fleet.kill(B);
  const killedB = Date.now();
  const finished = await waitFor('the rotation to finish', async () => {
    const r = await admin('POST', '/v1/clusters/kill/ca-rotation/finish', {});
    return r.status === 200 ? r : null;
  }, 90_000, 500);
  assert.equal(finished.body.phase, 'none');
  const afterRotation = (await admin('GET', '/v1/clusters/kill')).body.generation as number;
  await converged(afterRotation, 'rotation');
  figures.push(`CA rotation: finished and converged ${Date.now() - killedB} ms after B was killed`);
  gaps.push({ phase: 'CA rotation', ...longestGap(from, Date.now()) });
  await fleet.start(B);

  // 3. Renewal storm: every cluster certificate named for renewal (on A); C, where the agents
  // now are, is killed as the first new certificates are issued.
  from = Date.now();
  const before = (await fleet.storeQuery<{ n: number }>(`SELECT count(*)::int AS n FROM certificates WHERE cluster = 'kill' AND issuer = 'cluster'`))[0]!.n;
  const renew = await admin('POST', '/v1/clusters/kill/renew', {});
  assert.equal(renew.status, 200, renew.text);
  await waitFor('the first renewed certificate', async () => (await fleet.storeQuery<{ n: number }>(`SELECT count(*)::int AS n FROM certificates WHERE cluster = 'kill' AND issuer = 'cluster'`))[0]!.n > before, 30_000, 20);
  await fleet.kill(C);
  const killedC = Date.now();
  await converged(renew.body.generation, 'renewal storm');
  await waitFor('every certificate named for renewal replaced', async () => {
    const st = await admin('GET', '/v1/clusters/kill/status');
    const held = new Set((st.body.nodes as { certificates: { serial: string }[] }[]).flatMap((n) => n.certificates.map((c) => c.serial)));
    return (renew.body.serials as string[]).every((s) => !held.has(s));
  }, 60_000, 200);
  figures.push(`renewal storm: ${renew.body.serials.length} certificates renewed, converged ${Date.now() - killedC} ms after C was killed`);
  gaps.push({ phase: 'renewal storm', ...longestGap(from, Date.now()) });
  sampling = false;
  await monitor;

  // No CSR signed twice: never more cluster certificates than the CSRs the agents sent.
  const issued = new Map((await fleet.storeQuery<{ node: string; n: number }>(`SELECT node, count(*)::int AS n FROM certificates WHERE cluster = 'kill' AND issuer = 'cluster' GROUP BY node`)).map((r) => [r.node, r.n]));
  for (let i = 0; i < 3; i++) {
    const sent = agents[i]!.records().filter((r) => r.msg === 'requesting a certificate').length;
    const got = issued.get(`node-${i + 1}`) ?? 0;
    assert.ok(got <= sent, `node-${i + 1}: ${got} certificates issued for ${sent} CSRs sent`);
    figures.push(`node-${i + 1}: ${sent} CSRs sent, ${got} certificates issued`);
  }
  assert.equal((await fleet.storeQuery(`SELECT 1 FROM ca_rotations WHERE cluster = 'kill'`)).length, 0, 'the rotation finished');
  // One report interval: the long-poll (a report ends every cycle) plus the pass that follows it.
  // A kill may cost at most one more.
  const interval = LONG_POLL_S * 1000 + 1500;
  for (const g of gaps) {
    figures.push(`${g.phase}: longest time without a report ${g.ms} ms (${g.node})`);
    assert.ok(g.ms <= 2 * interval, `${g.phase}: ${g.node} went ${g.ms} ms without a status report (one interval is ${interval} ms)`);
  }
  const moved = agents.reduce((n, a) => n + a.records().filter((r) => r.msg === 'coordinator unreachable: trying the next one').length, 0);
  figures.push(`agents moved coordinator ${moved} times; whole test ${Date.now() - t0} ms`);
  for (const f of figures) console.log(`# ${f}`);
  assert.ok(moved >= 3, 'the agents moved at each kill');
});
