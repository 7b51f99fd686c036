// End to end, certificate renewal with 2-minute certificates (and 2-minute agent identities)
// over about four minutes: every node serves at least three different serials (seen in real TLS
// handshakes), a probe over every inter-node edge every second never fails, a long inter-node
// session authenticated by certificate (pg_sleep(200)) survives every renewal, and PostgreSQL is
// never restarted. Slow by nature (~5 minutes).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import { LocalCluster } from '../../bin/local-cluster.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import type { CertificateListResponse } from '../../shared/contract/api.ts';
import type { Static } from '@sinclair/typebox';
import { query } from '../helpers/pg.ts';
import { edgeConninfos, longSession, watchCluster } from '../helpers/lifecycle-e2e.ts';
import { waitFor } from '../helpers/wait.ts';

const RUN_MS = Number(process.env.PGACCORD_RENEWAL_RUN_MS ?? 240_000);

test('2-minute certificates renew for four minutes with no failed probe, no dropped session, no restart', async () => {
  process.env.PGACCORD_IDENTITY_LIFETIME = '2m'; // the coordinator child inherits it
  const cluster = await LocalCluster.create({ dir: await mkdtemp('/tmp/pgaccord-e2e-renewal-') });
  after(() => cluster.close());
  await cluster.startCoordinator();
  delete process.env.PGACCORD_IDENTITY_LIFETIME;
  const n1 = await cluster.addNode('node-1', '127.0.0.41');
  const n2 = await cluster.addNode('node-2', '127.0.0.42');
  const spec: ClusterSpec = {
    name: 'renew', profile: 'pgd', auth: 'cert', tls: { sslmode: 'verify-full', certLifetime: '2m' },
    nodes: [n1, n2].map((n) => ({ name: n.name, host: n.host, address: '127.0.0.1', port: n.pg.port, kind: 'peer' })),
  };
  assert.equal((await cluster.apply(spec)).code, 0);
  await cluster.startAgent('renew', 'node-1');
  await cluster.startAgent('renew', 'node-2');
  const converged = await cluster.waitConverged('renew', 120_000);
  const startTimes = async () => Promise.all([n1, n2].map(async (n) => (await query<{ t: Date }>(n.pg, 'SELECT pg_postmaster_start_time() AS t'))[0]!.t.toISOString()));
  const before = await startTimes();

  // A long session node-1 -> node-2 with node-1's client certificate, as the agent set it up.
  const edge = (await edgeConninfos(n1.stateDir)).find((e) => e.to === 'node-2')!;
  assert.match(edge.conninfo, /sslmode=verify-full/);
  const session = longSession(edge.conninfo, 'SELECT pg_sleep(200)', 260_000);
  const live = await waitFor('the long session running on node-2', async () => {
    const [row] = await query<{ n: string; serial: string | null }>(n2.pg,
      "SELECT count(*)::text AS n, max(client_serial)::text AS serial FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE query LIKE 'SELECT pg_sleep%' AND pid <> pg_backend_pid()");
    return row!.n !== '0' ? row : null;
  }, 30_000, 100);
  assert.equal(live!.n, '1', 'the long session is on node-2');
  assert.ok(live!.serial, 'it authenticated with a client certificate');

  const watch = watchCluster(cluster, 1000);
  const t0 = Date.now();
  await new Promise((r) => setTimeout(r, RUN_MS));
  await watch.stop();
  const elapsed = Date.now() - t0;
  const sessionResult = await session;

  const served = Object.fromEntries([...watch.served].map(([k, v]) => [k, v.length]));
  const certs = JSON.parse((await cluster.cli(['cert', 'list', 'renew', '--json'])).stdout) as Static<typeof CertificateListResponse>;
  const count = (node: string, slot: string) => certs.certificates.filter((c) => c.node === node && c.slot === slot).length;
  const report = {
    elapsedS: Math.round(elapsed / 1000),
    servedSerials: served,
    probes: watch.probes,
    failures: watch.failures.length,
    minMarginS: Math.round(watch.minMarginMs / 1000),
    session: sessionResult,
    issued: Object.fromEntries(['node-1', 'node-2'].map((n) => [n, { server: count(n, 'server'), client: count(n, 'client-pgd_replication'), identity: count(n, 'identity') }])),
  };
  console.log(`# renewal e2e: ${JSON.stringify(report)}`);
  assert.deepEqual(watch.failures, [], 'no probe failed');
  assert.ok(watch.probes >= (RUN_MS / 1000) * 0.8, `probed about every second (${watch.probes} probes)`);
  for (const n of ['node-1', 'node-2']) assert.ok((served[n] ?? 0) >= 3, `${n} served ${served[n]} different serials (>= 3)`);
  assert.ok(watch.minMarginMs > 0, 'no expired certificate was ever served');
  assert.equal(sessionResult.ok, true, `the long session survived: ${sessionResult.error}`);
  assert.ok(sessionResult.ms >= 199_000, `it ran ${sessionResult.ms} ms`);
  for (const n of ['node-1', 'node-2']) {
    assert.ok(report.issued[n]!.client >= 3, `${n} client certificate renewed`);
    assert.ok(report.issued[n]!.identity >= 2, `${n} agent identity renewed (${report.issued[n]!.identity} issued)`);
  }
  assert.deepEqual(await startTimes(), before, 'PostgreSQL was never restarted');

  // Status: days left from the served certificate, levels, and how long the node lasts alone.
  const status = await cluster.waitConverged('renew', 60_000);
  for (const n of status.nodes) {
    const servedExpiry = n.expiry?.find((e) => e.source === 'served');
    assert.ok(servedExpiry, `${n.node}: expiry of the served certificate`);
    assert.ok(servedExpiry.daysLeft > 0 && servedExpiry.daysLeft < 2 / 1440 + 1e-6);
    assert.ok(n.expiry!.some((e) => e.source === 'identity'));
    assert.ok(n.survivesUntil && Date.parse(n.survivesUntil) > Date.now(), `${n.node} survivesUntil ${n.survivesUntil}`);
    assert.ok(Date.parse(n.survivesUntil!) <= Date.now() + 120_000);
  }
  assert.equal(converged.converged, true);
  const table = await cluster.cli(['cert', 'list', 'renew']);
  assert.equal(table.code, 0, table.stderr);
  assert.match(table.stdout, /SERIAL\s+NODE\s+SLOT\s+CN\s+NOT AFTER\s+DAYS LEFT\s+LEVEL\s+STATE/);
  assert.match(table.stdout, /superseded/);
});
