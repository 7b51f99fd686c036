// A CA rotation over several coordinators (issue 11 item 1, issue 13): a status report reads the
// rotation only when its own write says one waits in phase 'trust' (coordinator/service/status.ts).
// Started through one coordinator, the rotation is advanced by the reports another one receives:
// nothing about it may be kept only in the memory of the coordinator that started it.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createCsr } from '../../shared/crypto/csr.ts';
import { generateRsaKey } from '../../shared/crypto/keys.ts';
import { coordinatorFleet, type CoordSlot } from '../helpers/coordinator-fleet.ts';
import { httpsClient, pgdSpec, type Client } from '../helpers/coordinator-harness.ts';

const fleet = await coordinatorFleet(2);
const [slotA, slotB] = fleet.slots as [CoordSlot, CoordSlot];
const clients: Client[] = [];
const client = (url: string, identity?: { certPem: string; keyPem: string }): Client => {
  const c = httpsClient(url, fleet.caPem, identity);
  clients.push(c);
  return c;
};
after(async () => {
  for (const c of clients) await c.close();
});
const adminA = client(slotA.url);
const admin = (path: string, body: unknown = {}, method = 'POST') => adminA.call(method, path, { token: fleet.adminToken, body });

test('a rotation started through one coordinator is taken to \'reissue\' by the reports another one receives', async () => {
  assert.equal((await admin('/v1/clusters/two', pgdSpec('two'), 'PUT')).status, 200);
  // Each node enrolled through A, reporting to B only.
  const nodes: Client[] = [];
  for (const node of ['node-1', 'node-2', 'node-3']) {
    const tok = await admin(`/v1/clusters/two/nodes/${node}/tokens`);
    assert.equal(tok.status, 200, tok.text);
    const { privateKeyPem } = await generateRsaKey();
    const enr = await client(slotA.url).call('POST', '/v1/agent/enroll', { body: { token: tok.body.token, csr: createCsr(privateKeyPem, 'x') } });
    assert.equal(enr.status, 200, enr.text);
    nodes.push(client(slotB.url, { certPem: enr.body.certificate, keyPem: privateKeyPem }));
  }
  const report = (n: Client, generation: number) => n.call('POST', '/v1/agent/status', { body: {
    generation, phase: 'converged', errors: [], files: [], servedCertificate: null, certificates: [], probes: [], pendingRestart: [], coordinatorReachable: true, versions: { agent: 'test', postgres: '15' },
  } });
  // B has answered reports of this cluster before the rotation starts (nothing to read then).
  for (const n of nodes) assert.equal((await report(n, 1)).status, 204);
  const started = await admin('/v1/clusters/two/ca-rotation/start');
  assert.equal(started.status, 200, started.text);
  const generation = started.body.trustGeneration as number;
  for (const n of nodes) assert.equal((await report(n, generation)).status, 204);
  // The last report's own step, on B: no GET of the rotation's status (which takes the step itself).
  const rows = await fleet.storeQuery<{ phase: string; reissue_generation: number | null }>(`SELECT phase, reissue_generation FROM ca_rotations WHERE cluster = 'two'`);
  assert.deepEqual(rows, [{ phase: 'reissue', reissue_generation: generation + 1 }]);
});
