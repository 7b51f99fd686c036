// The admin CLI's calls across several coordinators (coordinator/cli/http.ts), over real HTTPS:
// an answer is the coordinator speaking (never "cannot reach", never asked again elsewhere); a GET
// moves on from a coordinator that cannot serve; a change moves on only when it cannot have been
// done there. Pinned when admin-cli.ts was split by command (issue 10), with nothing else covering it.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Agent } from 'node:https';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CertificateAuthority } from '../../coordinator/ca/ca.ts';
import { call, HttpError, withConn, type Conn } from '../../coordinator/cli/http.ts';
import { freePort } from '../../shared/system/pgserver.ts';
import { httpsServer, type Answer } from '../helpers/https-server.ts';

const { ca } = await CertificateAuthority.create('test coordinator CA', new Date());
const conns: Conn[] = [];
const conn = (urls: string[]): Conn => {
  const c = { urls, current: 0, token: 'admin-token', agent: new Agent({ ca: ca.certPem, rejectUnauthorized: true, keepAlive: true }) };
  conns.push(c);
  return c;
};
after(() => {
  for (const c of conns) c.agent.destroy();
});

/** Two stand-ins for the whole file: `a` answers as the test sets `answerA`, `b` always 200 {"from":"second"}. */
let answerA: Answer = 200;
const a = await httpsServer(ca, () => answerA);
const b = await httpsServer(ca, () => ({ status: 200, body: { from: 'second' } }));
after(async () => {
  await a.close();
  await b.close();
});
/** The next case: `a` answers so, neither has been asked yet. */
function pair(answer: Answer): void {
  answerA = answer;
  a.hits.length = 0;
  b.hits.length = 0;
}

const refusal = (status: number, code: string) => ({ status, body: { code, message: `refused here (${code})`, errors: [{ field: 'name', message: 'is wrong' }] } });

test('admin CLI: an answer (401, 404, 409, and 502/504 to a change) is the coordinator speaking: an HttpError with its body, never failed over', async () => {
  for (const [method, answer] of [
    ['GET', refusal(401, 'E_UNAUTHENTICATED')],
    ['GET', refusal(404, 'E_NOT_FOUND')],
    ['POST', refusal(409, 'E_ROTATION_IN_PROGRESS')],
    ['POST', refusal(502, 'E_BAD_GATEWAY')],
    ['PUT', refusal(504, 'E_GATEWAY_TIMEOUT')],
  ] as const) {
    pair(answer);
    const c = conn([a.url, b.url]);
    const err = await call(c, method, '/v1/clusters/x', method === 'GET' ? undefined : {}).then(() => null, (e: unknown) => e);
    assert.ok(err instanceof HttpError, `${method} ${answer.status}: ${String(err)}`);
    assert.equal(err.status, answer.status);
    assert.deepEqual(err.body, answer.body);
    assert.equal(err.message, answer.body.message);
    assert.deepEqual(b.hits, [], `${method} ${answer.status} was not asked again of the second coordinator`);
    assert.equal(c.current, 0, 'the next call still starts at the coordinator that answered');
  }
});

test('admin CLI: a GET moves on from a refused or dropped connection and from 502/503/504; a change only from a refused connection or 503', async () => {
  const dead = `https://127.0.0.1:${await freePort()}`;
  const moves: [string, Answer | 'refused'][] = [
    ['GET', 'refused'], ['GET', 'die'], ['GET', 502], ['GET', 503], ['GET', 504], ['POST', 'refused'], ['POST', 503], ['DELETE', 503],
  ];
  for (const [method, answer] of moves) {
    pair(answer === 'refused' ? 200 : answer);
    const c = conn([answer === 'refused' ? dead : a.url, b.url]);
    const res = await call<{ from: string }>(c, method, '/v1/clusters', method === 'GET' ? undefined : {});
    assert.deepEqual(res, { from: 'second' }, `${method} ${String(answer)}`);
    assert.equal(b.hits.length, 1);
    assert.equal(c.current, 1, `${method} ${String(answer)}: the next call starts at the one that answered`);
  }
  // A change that reached a coordinator which then dropped the connection may have been done
  // there: it is not sent to the next (a token made twice, a rotation start refused), and says so.
  pair('die');
  const c = conn([a.url, b.url]);
  await assert.rejects(call(c, 'POST', '/v1/clusters/x/ca-rotation/start', {}),
    new RegExp(`^Error: the coordinator at ${a.url.replace(/[.:/]/g, '\\$&')} failed after the request was sent \\(.+\\): it may or may not have been done; `
      + 'look \\(pgaccord status\\) before trying again$'));
  assert.deepEqual(b.hits, []);
  // The last one's 503 is its answer, not "cannot reach".
  pair(503);
  const last = conn([a.url]);
  await assert.rejects(call(last, 'GET', '/v1/clusters'), (e: unknown) => e instanceof HttpError && e.status === 503 && e.body?.code === 'E_STORE_UNAVAILABLE');
});

test('admin CLI: every coordinator down names each and why; withConn prints a refusal with its code and fields and exits 1', async () => {
  const one = `https://127.0.0.1:${await freePort()}`;
  const two = `https://127.0.0.1:${await freePort()}`;
  await assert.rejects(call(conn([one]), 'GET', '/v1/clusters'), new RegExp(`^Error: cannot reach the coordinator at ${one.replace(/[.:/]/g, '\\$&')}: `));
  await assert.rejects(call(conn([one, two]), 'GET', '/v1/clusters'),
    new RegExp(`^Error: cannot reach any coordinator: ${one.replace(/[.:/]/g, '\\$&')}: .+; ${two.replace(/[.:/]/g, '\\$&')}: `));

  const dir = await mkdtemp(join(tmpdir(), 'pgaccord-cli-'));
  after(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'token'), 'admin-token\n');
  await writeFile(join(dir, 'ca.crt'), ca.certPem);
  pair(refusal(409, 'E_ROTATION_NOT_READY'));
  const written: string[] = [];
  const write = process.stderr.write;
  process.stderr.write = ((s: string) => (written.push(s), true)) as typeof process.stderr.write;
  let code: number;
  try {
    code = await withConn({ coordinator: [`${a.url},${b.url}`], 'token-file': join(dir, 'token'), ca: join(dir, 'ca.crt') }, async (c) => {
      await call(c, 'POST', '/v1/clusters/x/ca-rotation/finish', {});
      return 0;
    });
  } finally {
    process.stderr.write = write;
  }
  assert.equal(code, 1);
  assert.deepEqual(written, ['error: refused here (E_ROTATION_NOT_READY) (E_ROTATION_NOT_READY, HTTP 409)\n', '  name: is wrong\n']);
  assert.deepEqual(b.hits, []);
});
