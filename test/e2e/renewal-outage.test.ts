// End to end, outage tolerance: with 3-minute certificates (renewal due ~110 s after issue), the
// coordinator is stopped for 130 s (the renewal instant falls inside the outage) but less than
// the remaining lifetime. Nothing expires, a probe every second never fails, the nodes report
// how long they can last alone, and they renew as soon as the coordinator is back. ~4 minutes.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LocalCluster } from '../../bin/local-cluster.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import { query } from '../helpers/pg.ts';
import { watchCluster } from '../helpers/lifecycle-e2e.ts';

const OUTAGE_MS = 130_000;

test('coordinator away longer than a renewal interval: nothing expires, renewal on its return', async () => {
  const cluster = await LocalCluster.create({ dir: await mkdtemp('/tmp/pgaccord-e2e-outage-') });
  after(() => cluster.close());
  await cluster.startCoordinator();
  const n1 = await cluster.addNode('node-1', '127.0.0.61');
  const n2 = await cluster.addNode('node-2', '127.0.0.62');
  const spec: ClusterSpec = {
    name: 'outage', profile: 'pgd', auth: 'cert', tls: { sslmode: 'verify-full', certLifetime: '3m' },
    nodes: [n1, n2].map((n) => ({ name: n.name, host: n.host, address: '127.0.0.1', port: n.pg.port, kind: 'peer' })),
  };
  assert.equal((await cluster.apply(spec)).code, 0);
  await cluster.startAgent('outage', 'node-1');
  await cluster.startAgent('outage', 'node-2');
  const status = await cluster.waitConverged('outage', 120_000);
  const startTimes = async () => Promise.all([n1, n2].map(async (n) => (await query<{ t: Date }>(n.pg, 'SELECT pg_postmaster_start_time() AS t'))[0]!.t.toISOString()));
  const before = await startTimes();
  // Every certificate in use ends at least OUTAGE_MS + 20 s from now, or the test's premise fails.
  const ends = status.nodes.flatMap((n) => (n.expiry ?? []).filter((e) => e.source !== 'identity').map((e) => Date.parse(e.notAfter)));
  const earliest = Math.min(...ends);
  for (const n of status.nodes) {
    const own = Math.min(...(n.expiry ?? []).map((e) => Date.parse(e.notAfter)));
    const survives = Date.parse(n.survivesUntil!);
    assert.ok(Math.abs(survives - own) <= 1000 && survives > Date.now(), `${n.node}: survivesUntil ${n.survivesUntil} is its earliest expiry`);
  }
  assert.ok(earliest - Date.now() > OUTAGE_MS + 15_000, `certificates last ${Math.round((earliest - Date.now()) / 1000)} s`);
  const watch = watchCluster(cluster, 1000);

  await cluster.stopCoordinator();
  const stoppedAt = Date.now();
  const servedAtStop = new Map([...watch.served].map(([k, v]) => [k, v.length]));
  await new Promise((r) => setTimeout(r, OUTAGE_MS));
  // While away: the agents say how long they last alone, and it is still in the future.
  for (const n of [n1, n2]) {
    const local = JSON.parse(await readFile(join(n.stateDir, 'status.json'), 'utf8')) as { status: { phase: string; survivesUntil?: string | null; coordinatorReachable: boolean } };
    assert.equal(local.status.coordinatorReachable, false);
    assert.equal(local.status.phase, 'stale');
    assert.ok(local.status.survivesUntil && Date.parse(local.status.survivesUntil) > Date.now(), `${n.name} survives until ${local.status.survivesUntil}`);
  }
  const renewedDuringOutage = [...watch.served].filter(([k, v]) => v.length !== servedAtStop.get(k));
  assert.deepEqual(renewedDuringOutage, [], 'no renewal without the coordinator');
  await cluster.startCoordinator();
  const back = Date.now();
  const renewedAfter: Record<string, number> = {};
  while (Date.now() - back < 60_000 && Object.keys(renewedAfter).length < 2) {
    for (const [k, v] of watch.served) if (renewedAfter[k] === undefined && v.length > servedAtStop.get(k)!) renewedAfter[k] = Date.now() - back;
    await new Promise((r) => setTimeout(r, 250));
  }
  await cluster.waitConverged('outage', 60_000);
  await watch.stop();
  console.log(`# outage e2e: ${JSON.stringify({ outageS: Math.round((back - stoppedAt) / 1000), renewedAfterReturnMs: renewedAfter, probes: watch.probes, failures: watch.failures.length, minMarginS: Math.round(watch.minMarginMs / 1000) })}`);
  assert.deepEqual(watch.failures, [], 'no probe failed, during the outage or after');
  assert.ok(watch.minMarginMs > 0, 'no expired certificate was ever served');
  for (const n of ['node-1', 'node-2']) assert.ok(renewedAfter[n] !== undefined && renewedAfter[n]! < 30_000, `${n} renewed ${renewedAfter[n]} ms after the coordinator returned`);
  assert.deepEqual(await startTimes(), before, 'PostgreSQL was never restarted');
});
