// The start of the end-to-end tests over a live cluster: a coordinator and `count` local
// PostgreSQL 15 servers (bin/local-cluster.ts), node-1, node-2… on 127.0.0.11, .12…, closed
// after the test; `ports` by node name, for demoSpec.
import { after } from 'node:test';
import { mkdtemp } from 'node:fs/promises';
import { LocalCluster } from '../../bin/local-cluster.ts';

export async function startLocalNodes(count = 3): Promise<{ dir: string; cluster: LocalCluster; ports: Record<string, number> }> {
  const dir = await mkdtemp('/tmp/pgaccord-e2e-');
  const cluster = await LocalCluster.create({ dir });
  after(() => cluster.close());
  await cluster.startCoordinator();
  const ports: Record<string, number> = {};
  for (let i = 0; i < count; i++) {
    const name = `node-${i + 1}`;
    ports[name] = (await cluster.addNode(name, `127.0.0.${11 + i}`)).pg.port;
  }
  return { dir, cluster, ports };
}
