// Scrape cost of the coordinator's metrics with many clusters: a real coordinator and store,
// CLUSTERS clusters of 10 nodes whose status rows and certificate records are written straight
// into the store (as reported by converged agents), then /metrics rendered without its cache.
// node --import tsx bench/metrics.ts [CLUSTERS]   (prints one JSON line)
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCoordinator } from '../coordinator/main.ts';
import { CoordinatorMetrics } from '../coordinator/http/metrics.ts';
import { readFleet } from '../coordinator/http/metrics-fleet.ts';

const CLUSTERS = Number(process.argv[2] ?? 50);
const NODES = 10;
const dir = await mkdtemp(join(tmpdir(), 'pgaccord-bench-metrics-'));
const coord = await startCoordinator({ dataDir: dir, listen: '127.0.0.1:0', logLevel: 'warn' });
try {
  const { service, store } = coord;
  for (let c = 0; c < CLUSTERS; c++) {
    const name = `c${c}`;
    await service.putCluster(name, { name, profile: 'streaming', auth: 'cert', tls: { sslmode: 'verify-full', certLifetime: '90d' }, nodes: Array.from({ length: NODES }, (_, i) => ({ name: `n${i}`, host: `10.0.${c % 250}.${i + 1}`, port: 5432, kind: i === 0 ? 'primary' : 'standby' })) });
    for (let i = 0; i < NODES; i++) {
      const certs = ['server', 'client-replicator'].map((id, k) => ({ id, serial: `${c.toString(16)}0${i}0${k}`, notAfter: new Date(Date.now() + 80 * 86400e3).toISOString() }));
      for (const x of certs) await store.query(`INSERT INTO certificates (serial, cluster, node, slot, issuer, common_name, not_before, not_after, pem) VALUES ($1, $2, $3, $4, 'cluster', 'bench', now(), $5, '')`, [x.serial, name, `n${i}`, x.id, x.notAfter]);
      const probes = i === 0 ? [] : [{ to: 'n0', role: 'replicator', ok: true, conninfo: 'host=10.0.0.1', tlsVersion: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384', error: null, at: new Date().toISOString() }];
      const report = { generation: 1, phase: 'converged', errors: [], files: [], servedCertificate: certs[0], certificates: certs, probes, pendingRestart: [], coordinatorReachable: true, versions: { agent: 'bench', postgres: '15' } };
      await store.query(`INSERT INTO node_status (cluster, node, report, reported_at, last_contact) VALUES ($1, $2, $3, now(), now())`, [name, `n${i}`, JSON.stringify(report)]);
    }
  }
  const metrics = new CoordinatorMetrics({ store, log: coord.log, cacheMs: 0 });
  const timed = async (fn: () => Promise<unknown>, n: number) => {
    const t: number[] = [];
    for (let k = 0; k < n; k++) {
      const a = performance.now();
      await fn();
      t.push(performance.now() - a);
    }
    return t.sort((a, b) => a - b)[Math.floor(n / 2)]!;
  };
  await timed(() => metrics.render(), 3);
  const body = (await metrics.render()).body;
  console.log(JSON.stringify({
    clusters: CLUSTERS,
    nodes: CLUSTERS * NODES,
    scrape_ms_median: Number((await timed(() => metrics.render(), 11)).toFixed(1)),
    store_read_ms_median: Number((await timed(() => readFleet(store), 11)).toFixed(1)),
    series: body.split('\n').filter((l) => l && !l.startsWith('#')).length,
    bytes: body.length,
  }));
} finally {
  await coord.close();
  await rm(dir, { recursive: true, force: true });
}
