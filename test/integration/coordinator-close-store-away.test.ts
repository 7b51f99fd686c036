// The coordinator closing (SIGTERM), two leftovers of issue 11. A long-poll held at
// authentication while the store is away, waiting for it to come back, is answered at once (503:
// the agent moves on to another coordinator) and the close does not wait for it, as it does not
// wait for a long-poll held for a change. A request arriving during the close on a keep-alive
// connection already open is served (the store is still there), with "connection: close", not
// refused with fastify's 503.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { connect as tcpConnect } from 'node:net';
import { connect, type TLSSocket } from 'node:tls';
import { query, throwawayStore } from '../helpers/pg.ts';
import { enroll, pgdSpec, startHarness, type Harness, type Reply } from '../helpers/coordinator-harness.ts';
import { waitFor } from '../helpers/wait.ts';
import type { AgentStatus } from '../../shared/contract/status.ts';

const harnesses: Harness[] = [];
// At the top level, so that throwawayPg's clean-up hook belongs to the file, not to before().
const { db, databaseUrl } = await throwawayStore();
await query(db, 'CREATE DATABASE coord2');
after(() => Promise.all(harnesses.map((h) => h.close())));

/** Read HTTP/1.1 responses off a socket: status, headers and a content-length body each; null once it closed. */
function responses(socket: TLSSocket): () => Promise<{ status: number; headers: Record<string, string>; body: string } | null> {
  let buf = '';
  let ended = false;
  let wake = () => {};
  socket.setEncoding('utf8');
  socket.on('data', (d: string) => {
    buf += d;
    wake();
  });
  socket.on('close', () => {
    ended = true;
    wake();
  });
  return async () => {
    for (;;) {
      const end = buf.indexOf('\r\n\r\n');
      if (end >= 0) {
        const [statusLine, ...lines] = buf.slice(0, end).split('\r\n');
        const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
        const length = Number(headers['content-length'] ?? 0);
        if (buf.length >= end + 4 + length) {
          const body = buf.slice(end + 4, end + 4 + length);
          buf = buf.slice(end + 4 + length);
          return { status: Number(statusLine!.split(' ')[1]), headers, body };
        }
      }
      if (ended) return null;
      await new Promise<void>((r) => (wake = r));
    }
  };
}

test('close: a request on a keep-alive connection already open is served with "connection: close", not refused with 503', async () => {
  const h = await startHarness({ databaseUrl: databaseUrl.replace('/coord?', '/coord2?') });
  harnesses.push(h);
  assert.equal((await h.admin.call('PUT', '/v1/clusters/alive', { body: pgdSpec('alive') })).status, 200);
  const node = await enroll(h, 'alive', 'node-1');
  const port = Number(new URL(h.coord.url).port);
  const socket = connect({ host: '127.0.0.1', port, ca: h.caPem, cert: node.certPem, key: node.keyPem, servername: 'localhost' });
  await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
  const next = responses(socket);
  // A status report whose body is still arriving when the close begins: its connection is busy.
  const status: AgentStatus = {
    generation: 1, phase: 'converged', errors: [], files: [], servedCertificate: null, certificates: [], probes: [], pendingRestart: [],
    coordinatorReachable: true, versions: { agent: '0.1.0', postgres: '15' },
  };
  const body = JSON.stringify(status);
  socket.write(`POST /v1/agent/status HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body.slice(0, 10)}`);
  await waitFor('the report to reach the coordinator', async () => (await readFile(h.logFile, 'utf8')).includes('"url":"/v1/agent/status"'), 30_000, 25);
  const closed = h.coord.close();
  // The close has begun once the listener refuses new connections.
  await waitFor('the listener to close', () => new Promise<boolean>((resolve) => {
    const probe = tcpConnect(port, '127.0.0.1').once('connect', () => resolve(!probe.destroy())).once('error', () => resolve(true));
  }), 30_000, 25);
  // The rest of the report and, on the same connection, the agent's next call.
  socket.write(`${body.slice(10)}GET /v1/agent/desired?after=0&wait=0 HTTP/1.1\r\nhost: localhost\r\n\r\n`);
  const report = await next();
  assert.equal(report?.status, 204, JSON.stringify(report));
  const desired = await next();
  console.log(`# during the close: the report ${report?.status}, the next call on its connection ${desired?.status ?? 'never answered'} (connection: ${desired?.headers.connection ?? report?.headers.connection})`);
  assert.notEqual(desired?.status, 503, `refused during the close: ${desired?.body}`);
  if (desired) {
    assert.equal(desired.status, 200, desired.body);
    assert.equal(desired.headers.connection, 'close');
  } else {
    assert.equal(report?.headers.connection, 'close', 'the connection ended without saying so');
  }
  await closed;
  socket.destroy();
});

test('close while the store is away: a long-poll held at authentication answers 503 at once, the close does not wait for it', async () => {
  const h = await startHarness({ databaseUrl });
  harnesses.push(h);
  assert.equal((await h.admin.call('PUT', '/v1/clusters/away', { body: pgdSpec('away') })).status, 200);
  const node = await enroll(h, 'away', 'node-1');
  await db.stop('fast');
  assert.equal((await h.anon.call('GET', '/healthz')).status, 503, 'the store is away');
  let answeredAt = 0;
  const poll = node.client.call('GET', '/v1/agent/desired?after=7').then((r: Reply) => {
    answeredAt = Date.now();
    return r;
  });
  // Held at authentication: the request came in and is not answered (the store's wait is >= 20 s).
  await waitFor('the long-poll to reach the coordinator', async () => (await readFile(h.logFile, 'utf8')).includes('/v1/agent/desired?after=7'), 30_000, 25);
  assert.equal(answeredAt, 0, 'the long-poll was answered while the store is away');
  const closeAt = Date.now();
  await h.coord.close();
  const closeMs = Date.now() - closeAt;
  const reply = await poll;
  console.log(`# close ${closeMs} ms; the long-poll held at authentication answered ${answeredAt - closeAt} ms after it began`);
  assert.ok(closeMs < 5000, `the close waited ${closeMs} ms for the long-poll held at authentication`);
  assert.ok(answeredAt - closeAt < 5000, `the held long-poll was answered ${answeredAt - closeAt} ms after the close began`);
  assert.equal(reply.status, 503, reply.text);
  assert.equal(reply.body.code, 'E_STORE_UNAVAILABLE');
});
