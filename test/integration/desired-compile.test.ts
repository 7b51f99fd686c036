// Issue 13 item 1, against a real store: a node's desired state is compiled once per generation,
// only for that node; status reports, contact, CSR checks and the status view never compile.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { CoordinatorService } from '../../coordinator/service.ts';
import { SecretBox } from '../../coordinator/store/secrets.ts';
import { compileNode, type NodeCompileInput } from '../../coordinator/cluster/compile.ts';
import type { ClusterSpec, NodeDesired } from '../../shared/contract/schema.ts';
import type { AgentStatus } from '../../shared/contract/status.ts';
import { certInfo } from '../../shared/crypto/x509.ts';
import { createCsr } from '../../shared/crypto/csr.ts';
import { generateRsaKey } from '../../shared/crypto/keys.ts';
import { enroll, pgdSpec, startHarness, type Harness } from '../helpers/coordinator-harness.ts';

let h: Harness;
before(async () => {
  h = await startHarness();
});
after(async () => {
  await h?.close();
});

const mesh = (n: number): ClusterSpec => pgdSpec('counted', {
  nodes: Array.from({ length: n }, (_, i) => ({ name: `node-${i + 1}`, host: `db${i + 1}.example.com`, address: `10.0.0.${i + 11}`, port: 5432, kind: 'peer' })),
});

const report = (generation: number): AgentStatus => ({
  generation, phase: 'converged', errors: [], files: [], servedCertificate: null, certificates: [], probes: [], pendingRestart: [], coordinatorReachable: true, versions: { agent: '0.1.0', postgres: '15' },
});

test('one compile per node and generation; status reports, contact, CSRs and status views compile nothing', async () => {
  const spec = mesh(6);
  assert.equal((await h.admin.call('PUT', '/v1/clusters/counted', { body: spec })).status, 200);
  const node = await enroll(h, 'counted', 'node-1');
  const agent = { cluster: 'counted', node: 'node-1', serial: certInfo(node.certPem).serial };
  // A service of its own on the same store, its compile counted.
  const calls: string[] = [];
  const service = new CoordinatorService({
    store: h.coord.store, signing: h.coord.signing, box: new SecretBox(h.coord.dataDir.masterKey), coordinatorCa: h.coord.dataDir.ca, publicUrl: h.coord.url, log: pino({ level: 'silent' }),
    compileNode: (input: NodeCompileInput, name: string): NodeDesired => {
      calls.push(name);
      return compileNode(input, name);
    },
  });

  const first = (await service.desired(agent, 0, undefined, 0)) as NodeDesired;
  assert.equal(first.node, 'node-1');
  assert.deepEqual(calls, ['node-1'], 'the node asking, not the cluster');
  const again = (await service.desired(agent, 0, undefined, 0)) as NodeDesired;
  assert.deepEqual(calls, ['node-1'], 'a second request of the same generation compiles nothing');
  assert.deepEqual(again, first);

  await service.recordContact(agent);
  await service.reportStatus(agent, report(first.generation));
  const { privateKeyPem } = await generateRsaKey();
  const cert = await service.signCsr(agent, 'server', createCsr(privateKeyPem, 'db1.example.com'));
  assert.equal(certInfo(cert.certificate).commonName, 'db1.example.com');
  await assert.rejects(service.signCsr(agent, 'client-nobody', createCsr(privateKeyPem, 'x')), (e: Error & { code?: string }) => e.code === 'E_SLOT');
  await service.status('counted');
  assert.deepEqual(calls, ['node-1'], 'status report, contact, CSR check and status view compiled nothing');
  // A fresh service has compiled nothing and still checks a slot CSR and takes a report.
  const cold: string[] = [];
  const coldService = new CoordinatorService({
    store: h.coord.store, signing: h.coord.signing, box: new SecretBox(h.coord.dataDir.masterKey), coordinatorCa: h.coord.dataDir.ca, publicUrl: h.coord.url, log: pino({ level: 'silent' }),
    compileNode: (input: NodeCompileInput, name: string) => (cold.push(name), compileNode(input, name)),
  });
  await coldService.reportStatus(agent, report(first.generation));
  await coldService.signCsr(agent, 'client-pgd_replication', createCsr(privateKeyPem, 'pgd_replication'));
  assert.deepEqual(cold, []);

  // A renewal request is a new generation: compiled again, once; what it names is current.
  const renewal = (await h.admin.call('POST', '/v1/clusters/counted/renew', { body: { serial: cert.serial } }));
  assert.equal(renewal.status, 200, renewal.text);
  const renewed = (await service.desired(agent, first.generation, undefined, 0)) as NodeDesired;
  assert.equal(renewed.generation, renewal.body.generation);
  assert.deepEqual(renewed.renewSerials, [cert.serial]);
  assert.deepEqual(calls, ['node-1', 'node-1']);
  // The certificate replaced: the same generation no longer names it (read per request), still no compile.
  await service.signCsr(agent, 'server', createCsr(privateKeyPem, 'db1.example.com'));
  const replaced = (await service.desired(agent, first.generation, undefined, 0)) as NodeDesired;
  assert.equal(replaced.generation, renewed.generation);
  assert.equal(replaced.renewSerials, undefined);
  assert.deepEqual(calls, ['node-1', 'node-1']);

  // A CA rotation changes every node's bundle, then names the old CA's leaves: each step is a new
  // entry (compiled once), and the leaves to re-issue are read for the node asking.
  const leaves = (await h.admin.call('GET', '/v1/clusters/counted/certificates')).body.certificates
    .filter((c: { node: string; slot: string; revoked: boolean }) => c.node === 'node-1' && c.slot !== 'identity' && !c.revoked).map((c: { serial: string }) => c.serial).sort();
  assert.equal(leaves.length, 3);
  const trust = await service.startCaRotation('counted');
  const trusting = (await service.desired(agent, replaced.generation, undefined, 0)) as NodeDesired;
  assert.equal(trusting.generation, trust.generation);
  assert.equal(trusting.caBundle.match(/BEGIN CERTIFICATE/g)!.length, 2, 'both CAs in the bundle');
  assert.equal(trusting.renewSerials, undefined);
  for (const n of spec.nodes) await service.reportStatus({ ...agent, node: n.name }, report(trust.generation));
  assert.equal((await service.caRotationStatus('counted')).phase, 'reissue');
  const reissuing = (await service.desired(agent, trust.generation, undefined, 0)) as NodeDesired;
  assert.ok(reissuing.generation > trust.generation);
  assert.deepEqual(reissuing.renewSerials, leaves);
  await service.desired(agent, trust.generation, undefined, 0);
  assert.deepEqual(calls, ['node-1', 'node-1', 'node-1', 'node-1'], 'one compile per generation');
});
