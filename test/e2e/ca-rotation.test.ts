// End to end, CA rotation in phases on three nodes (cert auth, verify-full), with a CRL in place
// (one revocation first, so the two-CRL file is exercised by the server's ssl_crl_file and by
// libpq's sslcrl): a probe over every inter-node edge every 700 ms from before --start until
// after --finish sees no failure; --finish before the leaves are re-issued is refused with 409
// and changes nothing; at the end every node serves a certificate that chains to the new CA only.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import type { Static } from '@sinclair/typebox';
import { LocalCluster } from '../../bin/local-cluster.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import type { CaRotationStatus, CertificateListResponse } from '../../shared/contract/api.ts';
import { splitCrls } from '../../shared/crypto/crl.ts';
import { certInfo, splitPemBundle, verifiesAgainst } from '../../shared/crypto/x509.ts';
import { edgeConninfos, watchCluster } from '../helpers/lifecycle-e2e.ts';
import { waitFor } from '../helpers/wait.ts';

const run = promisify(execFile);

function param(conninfo: string, key: string): string {
  const m = new RegExp(`(?:^|\\s)${key}=(\\S+)`).exec(conninfo);
  if (!m) throw new Error(`${key} not in ${conninfo}`);
  return m[1]!;
}

/** The certificate a PostgreSQL server presents, as PEM, from a real handshake (openssl). */
async function servedPem(host: string, port: number): Promise<string> {
  const { stdout } = await run('sh', ['-c', `openssl s_client -starttls postgres -connect ${host}:${port} -servername ${host} </dev/null 2>/dev/null | openssl x509`]);
  return stdout;
}

test('CA rotation: start, every leaf re-issued, finish, with zero failed probes; early finish refused', async () => {
  const cluster = await LocalCluster.create({ dir: await mkdtemp('/tmp/pgaccord-e2e-carot-') });
  after(() => cluster.close());
  await cluster.startCoordinator();
  const nodes = [await cluster.addNode('node-1', '127.0.0.61'), await cluster.addNode('node-2', '127.0.0.62'), await cluster.addNode('node-3', '127.0.0.63')];
  const spec: ClusterSpec = {
    name: 'carot', profile: 'pgd', auth: 'cert', tls: { sslmode: 'verify-full', certLifetime: '1h' },
    nodes: nodes.map((n) => ({ name: n.name, host: n.host, address: '127.0.0.1', port: n.pg.port, kind: 'peer' })),
  };
  assert.equal((await cluster.apply(spec)).code, 0);
  for (const n of nodes) await cluster.startAgent('carot', n.name);
  await cluster.waitConverged('carot', 120_000);

  // A CRL first: revoke node-3's client certificate, wait until it has a new one.
  const certs = JSON.parse((await cluster.cli(['cert', 'list', 'carot', '--json'])).stdout) as Static<typeof CertificateListResponse>;
  const victim = certs.certificates.find((c) => c.node === 'node-3' && c.slot.startsWith('client-') && !c.revoked)!;
  assert.equal((await cluster.cli(['cert', 'revoke', 'carot', victim.serial])).code, 0);
  await waitFor(`node-3 holding a new ${victim.slot} certificate`, async () => {
    const now = JSON.parse((await cluster.cli(['cert', 'list', 'carot', '--json'])).stdout) as Static<typeof CertificateListResponse>;
    return now.certificates.some((c) => c.node === 'node-3' && c.slot === victim.slot && !c.revoked && c.serial !== victim.serial);
  }, 120_000, 500);
  await cluster.waitConverged('carot', 120_000);

  const edge = (await edgeConninfos(nodes[0]!.stateDir))[0]!;
  const oldBundle = await readFile(param(edge.conninfo, 'sslrootcert'), 'utf8');
  assert.equal(splitPemBundle(oldBundle).length, 1);
  const oldCa = splitPemBundle(oldBundle)[0]!;

  const rotation = async (...args: string[]) => {
    const r = await cluster.cli(['cert', 'rotate-ca', 'carot', ...args, '--json']);
    return { ...r, json: r.code === 0 ? (JSON.parse(r.stdout) as CaRotationStatus) : null };
  };
  assert.equal((await rotation('--status')).json!.phase, 'none');

  const watch = watchCluster(cluster, 700);
  after(() => watch.stop());
  // A baseline before the rotation: every node's served certificate seen and its edges probed.
  await waitFor('the watch over every node and its edges', () => nodes.every((n) => watch.served.has(n.name)) && watch.probes >= 2 * nodes.length);
  // node-3's agent is away when the rotation starts: it cannot prove the two-CA bundle, so the
  // new CA must not issue yet, and --finish must be refused.
  await cluster.stopAgent('node-3');
  const t0 = Date.now();
  const started = await rotation('--start');
  assert.equal(started.code, 0, started.stderr);
  assert.equal(started.json!.phase, 'trust');
  assert.deepEqual(started.json!.cas.map((c) => c.role), ['issuing', 'new']);
  const newSerial = started.json!.cas[1]!.serial;
  assert.equal((await rotation('--start')).code !== 0, true, 'a second --start is refused');

  // --finish before the leaves are re-issued: 409, clear message, nothing changes.
  const before = (await rotation('--status')).json!;
  const early = await rotation('--finish');
  assert.notEqual(early.code, 0);
  assert.match(early.stderr, /409|refusing to drop the old CA/);
  assert.match(early.stderr, /refusing to drop the old CA of cluster "carot"/);
  assert.match(early.stderr, /node-3/);
  console.log(`# early --finish: ${early.stderr.trim()}`);
  // node-1 and node-2 prove the bundle on their edges to node-3 only once their safety timer
  // probes it (node-3's agent, away, sends no wake): wait for that, not for a fixed time.
  const afterEarly = await waitFor('every node but node-3 proved the bundle', async () => {
    const now = (await rotation('--status')).json!;
    const waiting = now.nodes.filter((n) => n.waiting.length > 0).map((n) => n.node);
    if (waiting.join() === 'node-3') return now;
    throw new Error(`waiting: ${JSON.stringify(now.nodes.filter((n) => n.waiting.length > 0))}, phase ${now.phase}`);
  }, 60_000, 500);
  assert.equal(afterEarly.generation, before.generation, 'the refused finish did not change the generation');
  assert.equal(afterEarly.phase, 'trust', 'the new CA does not issue while node-3 has not proved the bundle');
  assert.deepEqual(afterEarly.cas, before.cas);
  const issuedBefore = JSON.parse((await cluster.cli(['cert', 'list', 'carot', '--json'])).stdout) as Static<typeof CertificateListResponse>;
  await cluster.startAgent('carot', 'node-3');

  // Wait for the coordinator to move to reissue and every node to prove new leaves.
  let sawReissue = false;
  let twoCrls = false;
  const st = await waitFor('the rotation ready to finish (reissue, every node proved new leaves)', async () => {
    const now = (await rotation('--status')).json!;
    if (now.phase === 'reissue') sawReissue = true;
    if (!twoCrls) twoCrls = splitCrls((await cluster.cli(['cert', 'crl', 'carot'])).stdout).length === 2;
    if (now.phase === 'reissue' && now.canFinish) return now;
    throw new Error(`phase ${now.phase}, canFinish ${now.canFinish}`);
  }, 180_000, 1000);
  assert.ok(sawReissue && st.canFinish, `rotation ready to finish: ${JSON.stringify(st)}`);
  assert.equal(st.cas[0]!.serial, newSerial, 'the new CA issues');
  assert.ok(twoCrls, 'both CAs had a CRL published while both were trusted');
  const reissuedMs = Date.now() - t0;
  // Every node has both CAs in its bundle and its CRL file holds both CRLs.
  for (const n of nodes) {
    const e = (await edgeConninfos(n.stateDir))[0]!;
    assert.equal(splitPemBundle(await readFile(param(e.conninfo, 'sslrootcert'), 'utf8')).length, 2, `${n.name} trusts both CAs`);
    assert.equal(splitCrls(await readFile(param(e.conninfo, 'sslcrl'), 'utf8')).length, 2, `${n.name} has both CRLs`);
  }

  const finished = await rotation('--finish');
  assert.equal(finished.code, 0, finished.stderr);
  assert.equal(finished.json!.phase, 'none');
  assert.deepEqual(finished.json!.cas.map((c) => c.serial), [newSerial]);
  await cluster.waitConverged('carot', 120_000);
  await new Promise((r) => setTimeout(r, 3000));
  await watch.stop();
  const totalMs = Date.now() - t0;

  const newCa = splitPemBundle(await readFile(param((await edgeConninfos(nodes[0]!.stateDir))[0]!.conninfo, 'sslrootcert'), 'utf8'));
  assert.equal(newCa.length, 1, 'the old CA left the bundle');
  assert.equal(certInfo(newCa[0]!).serial, newSerial);
  for (const n of nodes) {
    const e = (await edgeConninfos(n.stateDir))[0]!;
    assert.equal(splitCrls(await readFile(param(e.conninfo, 'sslcrl'), 'utf8')).length, 1, `${n.name}: only the new CA's CRL is left`);
    const pem = await servedPem(n.host, n.pg.port);
    assert.ok(verifiesAgainst(pem, newCa[0]!), `${n.name} serves a certificate from the new CA`);
    assert.ok(!verifiesAgainst(pem, oldCa), `${n.name}: not from the old CA`);
  }
  const served = Object.fromEntries([...watch.served].map(([k, v]) => [k, v.length]));
  console.log(`# ca-rotation e2e: ${JSON.stringify({ probes: watch.probes, failures: watch.failures.length, reissuedAfterS: Math.round(reissuedMs / 100) / 10, totalS: Math.round(totalMs / 100) / 10, servedSerials: served })}`);
  assert.deepEqual(watch.failures, [], 'no probe failed');
  assert.ok(watch.probes >= 30, `${watch.probes} probes`);
  for (const n of nodes) assert.ok((served[n.name] ?? 0) >= 2, `${n.name} served a new serial`);
  // Nothing was issued while node-3 was away (the old CA did not issue, the new one could not).
  assert.equal(issuedBefore.certificates.filter((c) => c.slot !== 'identity').length, certs.certificates.filter((c) => c.slot !== 'identity').length + 1);
});
