// The agent may start before the server exists (pg_autoctl create and other tools initialise
// PGDATA themselves, and need the TLS material first): it installs the material, reports that
// it cannot reach PostgreSQL, and converges once the server runs.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { chown, mkdir, mkdtemp, readdir, rename, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { LocalCluster } from '../../bin/local-cluster.ts';
import { demoSpec } from '../../bin/demo.ts';
import { waitFor } from '../helpers/wait.ts';

test('an agent started on an empty PGDATA installs TLS material first, then converges when the server appears', async () => {
  const cluster = await LocalCluster.create({ dir: await mkdtemp('/tmp/pgaccord-e2e-early-') });
  after(() => cluster.close());
  await cluster.startCoordinator();
  const ports: Record<string, number> = {};
  for (const [i, name] of ['node-1', 'node-2'].entries()) ports[name] = (await cluster.addNode(name, `127.0.0.${11 + i}`)).pg.port;
  const late = cluster.nodes.get('node-2')!;
  await late.pg.stop();
  const initialised = `${late.pg.dataDir}.initialised`;
  await rename(late.pg.dataDir, initialised);
  await mkdir(late.pg.dataDir, { mode: 0o700 });
  await chown(late.pg.dataDir, late.pg.osUser.uid, late.pg.osUser.gid);

  assert.equal((await cluster.apply({ ...demoSpec(ports), name: 'early' })).code, 0);
  await cluster.startAgent('early', 'node-1');
  await cluster.startAgent('early', 'node-2');

  const nodeStatus = await waitFor('node-2 reporting E_PG_CONNECT', async () => {
    const n = (await cluster.status('early')).nodes.find((x) => x.node === 'node-2');
    if (n?.errors.some((e) => e.code === 'E_PG_CONNECT')) return n;
    throw new Error(`errors: ${JSON.stringify(n?.errors)}`);
  }, 60_000, 500);
  assert.ok(nodeStatus?.errors.some((e) => e.code === 'E_PG_CONNECT'), JSON.stringify(nodeStatus?.errors));
  assert.match(nodeStatus!.errors.find((e) => e.code === 'E_PG_CONNECT')!.message, /no server runs in \S+ yet: no postmaster\.pid/, 'says why: the server is not there yet');
  assert.notEqual(nodeStatus?.phase, 'converged');
  const tls = await readdir(join(late.stateDir, 'tls'));
  const key = tls.find((f) => /^server-[0-9a-f]+\.key$/.test(f));
  assert.ok(key, `server key installed before the server exists: ${tls.join(' ')}`);
  const st = await stat(join(late.stateDir, 'tls', key));
  assert.equal(st.mode & 0o777, 0o600);
  assert.equal(st.uid, late.pg.osUser.uid);

  await rename(late.pg.dataDir, `${late.pg.dataDir}.empty`);
  await rename(initialised, late.pg.dataDir);
  await late.pg.start();
  const converged = await cluster.waitConverged('early', 90_000);
  assert.ok(converged.nodes.every((n) => n.phase === 'converged' && n.probes.every((p) => p.ok)));
});
