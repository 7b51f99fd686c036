// npm run bench:converge (as root: real PostgreSQL servers): a coordinator, N PostgreSQL 15 nodes
// on loopback and an agent process per node (pgd profile, cert auth, verify-full), then measures
//   first_converge_s  apply + join tokens + agents started -> every node converged, every probe ok
//   switch_auth_s     a spec change (cert -> scram-sha-256) -> converged at the new generation
//   revoke_s          `cert revoke` of a client certificate -> every node converged on the new CRL
//   rss_mb            resident memory of the coordinator and of each agent (VmRSS), idle, after
// Last line: JSON with the figures. BENCH_NODES (default 3) sets N.
import { readFile } from 'node:fs/promises';
import { mkdtemp } from 'node:fs/promises';
import { demoSpec } from '../bin/demo.ts';
import { LocalCluster } from '../bin/local-cluster.ts';

const N = Number(process.env.BENCH_NODES ?? 3);
const CLUSTER = 'demo';

async function rssMb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1] ?? NaN);
  return Math.round(kb / 102.4) / 10;
}

/** Seconds until every node has converged on a generation >= `generation` (every probe ok). */
async function until(cluster: LocalCluster, generation: number, t0: number): Promise<number> {
  for (;;) {
    const s = await cluster.status(CLUSTER);
    if (s.converged && s.nodes.every((n) => n.appliedGeneration >= generation)) return (Date.now() - t0) / 1000;
    if (Date.now() - t0 > 300_000) throw new Error(`not converged in 300 s at generation ${generation}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const cluster = await LocalCluster.create({ dir: await mkdtemp('/tmp/pgaccord-bench-') });
try {
  await cluster.startCoordinator();
  const ports: Record<string, number> = {};
  for (let i = 0; i < N; i++) ports[`node-${i + 1}`] = (await cluster.addNode(`node-${i + 1}`, `127.0.0.${11 + i}`)).pg.port;
  const spec = demoSpec(ports);

  let t0 = Date.now();
  const applied = await cluster.apply(spec);
  if (applied.code !== 0) throw new Error(applied.stderr);
  for (const name of Object.keys(ports)) await cluster.startAgent(CLUSTER, name);
  const firstConverge = await until(cluster, 1, t0);

  t0 = Date.now();
  const switched = await cluster.apply({ ...spec, auth: 'scram-sha-256' });
  if (switched.code !== 0) throw new Error(switched.stderr);
  const switchAuth = await until(cluster, (await cluster.status(CLUSTER)).generation, t0);

  const back = await cluster.apply(spec); // back to cert: client certificates to revoke
  if (back.code !== 0) throw new Error(back.stderr);
  await until(cluster, (await cluster.status(CLUSTER)).generation, Date.now());
  const victim = (await cluster.status(CLUSTER)).nodes[0]!.certificates.find((c) => c.id.startsWith('client-'))!;
  t0 = Date.now();
  const revoked = await cluster.cli(['cert', 'revoke', CLUSTER, victim.serial, '--json']);
  if (revoked.code !== 0) throw new Error(revoked.stderr);
  const revoke = await until(cluster, (JSON.parse(revoked.stdout) as { generation: number }).generation, t0);

  await new Promise((r) => setTimeout(r, 3000)); // idle
  const rss: Record<string, number> = {};
  for (const [name, pid] of Object.entries(cluster.pids())) rss[name] = await rssMb(pid);
  const figures = { nodes: N, first_converge_s: firstConverge, switch_auth_s: switchAuth, revoke_s: revoke, rss_mb: rss };
  console.log(`nodes ${N}: first converge ${firstConverge.toFixed(1)} s, auth switch ${switchAuth.toFixed(1)} s, revocation ${revoke.toFixed(1)} s`);
  console.log(`resident memory (MB): ${Object.entries(rss).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  console.log(JSON.stringify(figures));
} finally {
  await cluster.close();
}
