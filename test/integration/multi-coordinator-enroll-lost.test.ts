// An enrolment whose answer dies with its coordinator (issue 11): two real coordinator processes
// on one store; the agent's enrolment reaches the first through a TCP relay that holds back the
// first's answer, the first commits the token's spend and is SIGKILLed before any byte of its
// answer reaches the agent; the agent (agent/runtime/identity.ts enroll, given both URLs) sends
// the same CSR to the second and is enrolled with the certificate the first issued.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { enroll } from '../../agent/runtime/identity.ts';
import { certInfo } from '../../shared/crypto/x509.ts';
import { parseJoinToken } from '../../shared/contract/join-token.ts';
import { coordinatorFleet, type CoordSlot } from '../helpers/coordinator-fleet.ts';
import { httpsClient, pgdSpec } from '../helpers/coordinator-harness.ts';
import { waitFor } from '../helpers/wait.ts';

const fleet = await coordinatorFleet(2);
const [slotA, slotB] = fleet.slots as [CoordSlot, CoordSlot];
const stateDir = await mkdtemp(join(tmpdir(), 'pgaccord-enroll-lost-'));
after(() => rm(stateDir, { recursive: true, force: true }));

/**
 * A TCP relay to `port` that reads the TLS records the client sends (5-byte headers: type,
 * version, length). Once a connection's client has sent more than `holdAfter` bytes of
 * application data after its first application-data record (its TLS 1.3 Finished), its
 * request is in: nothing more goes back to it. `held` resolves then; the client's socket is
 * destroyed when the upstream one closes. A ClientHello's size (over 1.5 kB with a hybrid key
 * share) or a small request (the CA fetch) does not trigger it.
 */
async function relay(port: number, holdAfter: number) {
  let onHeld: () => void = () => undefined;
  const held = new Promise<void>((r) => (onHeld = r));
  const sockets: Socket[] = [];
  const srv = createServer((client) => {
    const up = connect(port, '127.0.0.1');
    sockets.push(client, up);
    let pending = Buffer.alloc(0);
    let appRecords = 0;
    let appBytes = 0;
    let holding = false;
    client.on('data', (d: Buffer) => {
      up.write(d);
      pending = Buffer.concat([pending, d]);
      while (pending.length >= 5 && pending.length >= 5 + pending.readUInt16BE(3)) {
        const len = pending.readUInt16BE(3);
        if (pending[0] === 0x17 && ++appRecords > 1) appBytes += len;
        pending = pending.subarray(5 + len);
      }
      if (!holding && appBytes > holdAfter) {
        holding = true;
        onHeld();
      }
    });
    up.on('data', (d: Buffer) => {
      if (!holding) client.write(d);
    });
    up.on('close', () => client.destroy());
    client.on('close', () => up.destroy());
    up.on('error', () => client.destroy());
    client.on('error', () => up.destroy());
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  after(() => {
    for (const s of sockets) s.destroy();
    srv.close();
  });
  return { url: `https://127.0.0.1:${(srv.address() as { port: number }).port}`, held };
}

test('the first coordinator spends the token and is SIGKILLed before answering: the agent enrols through the second with the same key', async (t) => {
  const adminToken = fleet.adminToken;
  const admin = httpsClient(slotB.url, fleet.caPem);
  const put = await admin.call('PUT', '/v1/clusters/lost', {
    token: adminToken,
    body: pgdSpec('lost'),
  });
  assert.equal(put.status, 200, put.text);
  const tok = await admin.call('POST', '/v1/clusters/lost/nodes/node-1/tokens', { token: adminToken, body: {} });
  assert.equal(tok.status, 200, tok.text);
  const parsed = parseJoinToken(tok.body.token);
  assert.ok(parsed.ok);
  const tokenId = parsed.payload.id;
  // The CA fetch (a GET, one small record) passes; the enrolment (token and CSR, over 1 kB) is held.
  const a = await relay(slotA.port, 600);
  const moves: string[] = [];
  const enrolling = enroll({
    stateDir,
    coordinatorUrl: [a.url, slotB.url],
    cluster: 'lost',
    node: 'node-1',
    joinToken: tok.body.token,
    now: Date.now,
    onFailover: (e) => moves.push(`${e.from} -> ${e.to}: ${e.reason}`),
  });
  await a.held;
  await waitFor('the first coordinator to commit the spend', async () =>
    (await fleet.storeQuery(`SELECT 1 FROM join_tokens WHERE id = $1 AND used_at IS NOT NULL`, [tokenId])).length > 0, 30_000, 20);
  // The first one's certificate, issued in the transaction that spent the token.
  const [first] = await fleet.storeQuery<{ serial: string }>(`SELECT identity_serial AS serial FROM agents WHERE cluster = 'lost' AND node = 'node-1'`);
  await fleet.kill(slotA);
  const killedAt = Date.now();
  const stored = await enrolling;
  t.diagnostic(`enrolled through the second ${Date.now() - killedAt} ms after the SIGKILL; ${moves[0]}`);
  assert.equal(moves.length, 1, moves.join('\n'));
  assert.match(moves[0]!, new RegExp(`^${a.url} -> ${slotB.url}: POST /v1/agent/enroll: UND_ERR_SOCKET`), 'a request sent, its answer lost');
  assert.equal(stored.identity.info.serial, first!.serial, 'the certificate the first coordinator issued at the spend');
  const issued = await fleet.storeQuery<{ n: number }>(
    `SELECT count(*)::int AS n FROM certificates WHERE cluster = 'lost' AND node = 'node-1' AND slot = 'identity'`);
  assert.equal(issued[0]!.n, 1, 'issued once');
  const agent = httpsClient(slotB.url, fleet.caPem, { certPem: stored.identity.certPem, keyPem: stored.identity.keyPem });
  const desired = await agent.call('GET', '/v1/agent/desired?after=0&wait=0');
  assert.equal(desired.status, 200, desired.text);
  assert.equal(certInfo(stored.identity.certPem).uris[0], 'pgaccord://agent/lost/node-1');
});
