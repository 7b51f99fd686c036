// End to end, revocation: `pgaccord cert revoke` of a node's client certificate reaches every
// node through the CRL; new connections with that certificate are refused on every node within a
// measured time, the live session it authenticated is ended, the node gets a new certificate and
// the cluster converges again. Removing a node from the spec revokes its certificates.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { chown, copyFile, chmod, mkdir, mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { LocalCluster } from '../../bin/local-cluster.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import type { CertificateListResponse } from '../../shared/contract/api.ts';
import type { Static } from '@sinclair/typebox';
import { crlInfo } from '../../shared/crypto/crl.ts';
import { certInfo } from '../../shared/crypto/x509.ts';
import { serverOsUser } from '../../shared/system/pgserver.ts';
import { readFile } from 'node:fs/promises';
import { editConninfo, psql } from '../helpers/libpq.ts';
import { edgeConninfos, longSession } from '../helpers/lifecycle-e2e.ts';
import { query } from '../helpers/pg.ts';
import { waitFor } from '../helpers/wait.ts';

const REFUSED_WITHIN_MS = 15_000;

function param(conninfo: string, key: string): string {
  const m = new RegExp(`(?:^|\\s)${key}=(\\S+)`).exec(conninfo);
  if (!m) throw new Error(`${key} not in ${conninfo}`);
  return m[1]!;
}

test('a revoked client certificate is refused on every node within seconds and its live session ends', async () => {
  const dir = await mkdtemp('/tmp/pgaccord-e2e-revoke-');
  const cluster = await LocalCluster.create({ dir });
  after(() => cluster.close());
  await cluster.startCoordinator();
  const n1 = await cluster.addNode('node-1', '127.0.0.51');
  const n2 = await cluster.addNode('node-2', '127.0.0.52');
  const n3 = await cluster.addNode('node-3', '127.0.0.53');
  const spec: ClusterSpec = {
    name: 'revoke', profile: 'pgd', auth: 'cert', tls: { sslmode: 'verify-full', certLifetime: '1h' },
    nodes: [n1, n2, n3].map((n) => ({ name: n.name, host: n.host, address: '127.0.0.1', port: n.pg.port, kind: 'peer' })),
  };
  assert.equal((await cluster.apply(spec)).code, 0);
  await cluster.startAgent('revoke', 'node-1');
  await cluster.startAgent('revoke', 'node-2');
  await cluster.startAgent('revoke', 'node-3');
  await cluster.waitConverged('revoke', 120_000);

  // Keep a copy of node-1's client pair: what a thief (or a stale client) would hold.
  const edge = (await edgeConninfos(n1.stateDir)).find((e) => e.to === 'node-2')!;
  const certPem = await readFile(param(edge.conninfo, 'sslcert'), 'utf8');
  const serial = certInfo(certPem).serial;
  const user = await serverOsUser();
  const copyDir = join(dir, 'stolen');
  await mkdir(copyDir, { recursive: true });
  for (const [key, name] of [['sslcert', 'c.crt'], ['sslkey', 'c.key']] as const) {
    await copyFile(param(edge.conninfo, key), join(copyDir, name));
    await chmod(join(copyDir, name), 0o600);
    await chown(join(copyDir, name), user.uid, user.gid);
  }
  await chown(copyDir, user.uid, user.gid);
  const stolen = (node: typeof n1) => editConninfo(edge.conninfo, { host: node.host, port: String(node.pg.port), sslcert: join(copyDir, 'c.crt'), sslkey: join(copyDir, 'c.key') });
  for (const node of [n1, n2, n3]) {
    const r = await psql(stolen(node), 'SELECT 1');
    assert.ok(r.ok, `before revocation the pair works on ${node.name}: ${r.error}`);
  }
  const session = longSession(stolen(n2), 'SELECT pg_sleep(120)', 150_000);
  await waitFor('the long session running on node-2', async () =>
    (await query(n2.pg, "SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND pid <> pg_backend_pid()")).length > 0, 30_000, 100);

  const t0 = Date.now();
  const revoked = await cluster.cli(['cert', 'revoke', 'revoke', serial]);
  assert.equal(revoked.code, 0, revoked.stderr);
  assert.match(revoked.stdout, new RegExp(`revoked: ${serial}`));
  const refusedAfter: Record<string, number> = {};
  const refusal: Record<string, string> = {};
  await Promise.all([n1, n2, n3].map(async (node) => {
    while (Date.now() - t0 < 60_000) {
      const r = await psql(stolen(node), 'SELECT 1');
      if (!r.ok) {
        refusedAfter[node.name] = Date.now() - t0;
        refusal[node.name] = r.error;
        return;
      }
      await new Promise((res) => setTimeout(res, 200));
    }
  }));
  const ended = await session;
  console.log(`# revocation e2e: ${JSON.stringify({ refusedAfterMs: refusedAfter, sessionRanMs: ended.ms, sessionError: ended.error.split('\n')[0] })}`);
  for (const node of [n1, n2, n3]) {
    assert.ok(refusedAfter[node.name] !== undefined && refusedAfter[node.name]! < REFUSED_WITHIN_MS, `${node.name} refused the revoked certificate after ${refusedAfter[node.name]} ms`);
    assert.match(refusal[node.name]!, /revoked/, `${node.name}: ${refusal[node.name]}`);
  }
  assert.equal(ended.ok, false, 'the live session of the revoked certificate was ended');
  assert.match(ended.error, /terminat/i);
  assert.ok(ended.ms < 60_000, `it ended after ${ended.ms} ms, long before its pg_sleep(120)`);

  // The node that held it has a new pair and the cluster converges; the CRL lists the serial.
  const status = await cluster.waitConverged('revoke', 60_000);
  const newEdge = (await edgeConninfos(n1.stateDir)).find((e) => e.to === 'node-2')!;
  assert.notEqual(certInfo(await readFile(param(newEdge.conninfo, 'sslcert'), 'utf8')).serial, serial, 'node-1 got a new client certificate');
  assert.ok(status.nodes.every((n) => n.probes.every((p) => p.ok)));
  const crl = await cluster.cli(['cert', 'crl', 'revoke']);
  assert.equal(crl.code, 0, crl.stderr);
  assert.deepEqual(crlInfo(crl.stdout).revoked.map((r) => r.serial), [serial]);

  // Removing node-3 from the spec revokes every certificate it held; the others install the CRL.
  const edge3 = (await edgeConninfos(n3.stateDir)).find((e) => e.to === 'node-1')!;
  assert.equal((await psql(edge3.conninfo, 'SELECT 1')).ok, true, 'node-3 -> node-1 works before the removal');
  assert.equal((await cluster.apply({ ...spec, nodes: spec.nodes.filter((n) => n.name !== 'node-3') })).code, 0);
  const certs = JSON.parse((await cluster.cli(['cert', 'list', 'revoke', '--json'])).stdout) as Static<typeof CertificateListResponse>;
  const live3 = certs.certificates.filter((c) => c.node === 'node-3' && !c.revoked && c.daysLeft > 0);
  assert.deepEqual(live3, [], 'node-3 holds no valid certificate any more');
  const crl2 = crlInfo((await cluster.cli(['cert', 'crl', 'revoke'])).stdout);
  const node3Cluster = certs.certificates.filter((c) => c.node === 'node-3' && c.slot !== 'identity').map((c) => c.serial);
  for (const s of node3Cluster) assert.ok(crl2.revoked.some((r) => r.serial === s), `node-3 certificate ${s} in the CRL`);
  await cluster.waitConverged('revoke', 60_000);
  const r3 = await psql(edge3.conninfo, 'SELECT 1');
  assert.equal(r3.ok, false, 'node-1 refuses the removed node');
});
