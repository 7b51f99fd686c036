// The agent reaches into undici's lib/ for its Agent and request (agent/runtime/undici-lean.ts): these
// paths are not a public API, so this pins that they load and work with the installed undici,
// and that undici's index (fetch, WebSocket, mocks, cache: +15 MB) stays out of the process.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { once } from 'node:events';
import { spawnSync } from 'node:child_process';
import type { AddressInfo } from 'node:net';
import { Agent, request } from '../../agent/runtime/undici-lean.ts';

test('the deep-imported Agent and request make real requests (path, query, body, headers, abort)', async () => {
  const seen: { method: string; url: string; type: string | undefined; body: string }[] = [];
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      seen.push({ method: req.method!, url: req.url!, type: req.headers['content-type'], body });
      if (req.url === '/hang') return; // never answered: the caller aborts
      res.writeHead(req.method === 'POST' ? 201 : 200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ ok: true }));
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const dispatcher = new Agent({ connectTimeout: 5000 });
  try {
    const get = await request(`${base}/v1/agent/desired?after=3&wait=0`, { method: 'GET', dispatcher });
    assert.equal(get.statusCode, 200);
    assert.deepEqual(JSON.parse(await get.body.text()), { ok: true });
    const post = await request(`${base}/v1/agent/status`, { method: 'POST', dispatcher, body: '{"a":1}', headers: { 'content-type': 'application/json' } });
    assert.equal(post.statusCode, 201);
    await post.body.text();
    assert.deepEqual(seen, [
      { method: 'GET', url: '/v1/agent/desired?after=3&wait=0', type: undefined, body: '' },
      { method: 'POST', url: '/v1/agent/status', type: 'application/json', body: '{"a":1}' },
    ]);
    const abort = new AbortController();
    const hung = request(`${base}/hang`, { method: 'GET', dispatcher, signal: abort.signal });
    abort.abort();
    await assert.rejects(hung, (e: Error) => e.name === 'AbortError' || /abort/i.test(e.message));
  } finally {
    await dispatcher.destroy();
    server.closeAllConnections();
    server.close();
  }
});

test("loading it does not load undici's index", () => {
  const script = `import('./agent/runtime/undici-lean.ts').then(() => {
    const files = Object.keys((require('node:module').createRequire(process.cwd() + '/x')).cache);
    console.log(JSON.stringify(files.filter((f) => f.includes('/node_modules/undici/'))));
  });`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=commonjs', '-e', script], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, r.stderr);
  const files = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as string[];
  assert.ok(files.some((f) => f.endsWith('/undici/lib/dispatcher/agent.js')), 'the Agent is loaded');
  assert.ok(!files.some((f) => f.endsWith('/node_modules/undici/index.js')), 'undici/index.js is not loaded');
  assert.ok(!files.some((f) => f.includes('/undici/lib/web/')), 'no fetch/WebSocket code is loaded');
});
