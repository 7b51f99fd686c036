// An agent connection's certificate is read once, at its first agent request (coordinator/http/auth.ts
// keeps the parse per connection): from then on the connection refuses TLS renegotiation, so a
// TLS 1.2 client cannot present another certificate on it and be served as the first one's agent.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type TLSSocket } from 'node:tls';
import { throwawayStore } from '../helpers/pg.ts';
import { enroll, pgdSpec, startHarness, type Harness } from '../helpers/coordinator-harness.ts';

let h: Harness;
const { databaseUrl } = await throwawayStore();

before(async () => {
  h = await startHarness({ databaseUrl });
  const put = await h.admin.call('PUT', '/v1/clusters/reneg', { body: pgdSpec('reneg') });
  assert.equal(put.status, 200, put.text);
});
after(() => h?.close());

/** One HTTP/1.1 request on the socket, the status line of its answer. */
function statusLine(sock: TLSSocket, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const onData = (b: Buffer) => {
      got += b.toString('latin1');
      const end = got.indexOf('\r\n\r\n');
      if (end < 0) return;
      const len = Number(/content-length: (\d+)/i.exec(got.slice(0, end))?.[1] ?? 0);
      if (got.length - end - 4 < len) return;
      sock.off('data', onData);
      resolve(got.split('\r\n')[0]!);
    };
    sock.on('data', onData);
    sock.once('error', reject);
    sock.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n`);
  });
}

test('after its first agent request a connection refuses TLS renegotiation', async () => {
  const n = await enroll(h, 'reneg', 'node-1');
  const { port } = new URL(h.coord.url);
  const sock = connect({ host: '127.0.0.1', port: Number(port), ca: h.caPem, cert: n.certPem, key: n.keyPem, maxVersion: 'TLSv1.2', servername: 'localhost', checkServerIdentity: () => undefined });
  sock.on('error', () => undefined);
  await new Promise((r, j) => { sock.once('secureConnect', r); sock.once('error', j); });
  try {
    assert.match(await statusLine(sock, '/v1/agent/desired?after=0&wait=0'), /^HTTP\/1\.1 200 /);
    const renegotiated = await new Promise<boolean>((resolve) => {
      const ok = sock.renegotiate({ rejectUnauthorized: false }, (err) => resolve(!err));
      if (!ok) resolve(false);
      sock.once('close', () => resolve(false));
    });
    assert.equal(renegotiated, false, 'a renegotiation after the agent request was accepted');
  } finally {
    sock.destroy();
  }
});
