// `pgaccord coordinator --data-dir X` as a real process: first start initialises the data
// directory and its embedded PostgreSQL, serves HTTPS; SIGTERM stops it and its PostgreSQL;
// a second start reuses everything (same CA, same token, same state).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../../shared/system/pgserver.ts';
import { httpsClient, pgdSpec } from '../helpers/coordinator-harness.ts';

const CLI = join(import.meta.dirname, '../../bin/pgaccord.mjs');
const dir = await mkdtemp(join(tmpdir(), 'pgaccord-coordproc-'));
const children = new Set<ChildProcess>();
after(async () => {
  for (const c of children) c.kill('SIGKILL');
  // A killed coordinator leaves its PostgreSQL running: stop it before removing the directory.
  if (existsSync(join(dir, 'pg/data/postmaster.pid'))) {
    const { runPg } = await import('../../shared/system/pgserver.ts');
    const st = await stat(join(dir, 'pg/data')); // the store runs as its own OS user
    await runPg('pg_ctl', ['stop', '-m', 'immediate', '-D', join(dir, 'pg/data')], { name: String(st.uid), uid: st.uid, gid: st.gid, home: '/' }).catch(() => undefined);
  }
  await rm(dir, { recursive: true, force: true });
});

async function start(port: number): Promise<{ child: ChildProcess; url: string; exited: Promise<number | null>; stdout: () => string }> {
  const child = spawn(process.execPath, [CLI, 'coordinator', '--data-dir', dir, '--listen', `127.0.0.1:${port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => {
    children.delete(child);
    resolve(code);
  }));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "listening" within 60s: ${err}`)), 60_000);
    child.stderr!.on('data', (d) => {
      err += d;
      if (err.includes('listening on')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => reject(new Error(`exited ${code}: ${err}`)));
  });
  return { child, url: `https://127.0.0.1:${port}`, exited, stdout: () => out };
}

test('first start initialises and serves; SIGTERM stops it and its PostgreSQL; restart keeps the state', async () => {
  const port = await freePort();
  const first = await start(port);
  const ca = await readFile(join(dir, 'ca.crt'), 'utf8');
  const token = (await readFile(join(dir, 'admin.token'), 'utf8')).trim();
  const c1 = httpsClient(first.url, ca);
  assert.deepEqual((await c1.call('GET', '/healthz')).body, { ok: true });
  const put = await c1.call('PUT', '/v1/clusters/proc', { token, body: pgdSpec('proc') });
  assert.equal(put.status, 200, put.text);
  await c1.close();
  assert.ok(existsSync(join(dir, 'pg/data/postmaster.pid')), 'embedded PostgreSQL running');
  // SIGHUP (logrotate, a habit) does not kill it: Node's default would exit and orphan the store.
  first.child.kill('SIGHUP');
  await new Promise((r) => setTimeout(r, 500));
  const c1b = httpsClient(first.url, ca);
  assert.deepEqual((await c1b.call('GET', '/healthz')).body, { ok: true }, 'still serving after SIGHUP');
  await c1b.close();
  first.child.kill('SIGTERM');
  assert.equal(await first.exited, 0);
  assert.ok(!existsSync(join(dir, 'pg/data/postmaster.pid')), 'embedded PostgreSQL stopped with it');
  const lines = first.stdout().trim().split('\n').map((l) => JSON.parse(l) as { msg: string; level: number });
  assert.ok(lines.some((l) => l.msg === 'coordinator stopped'), 'structured JSON logs');
  assert.ok(!first.stdout().includes(token), 'the admin token is not logged');

  const second = await start(port);
  assert.equal(await readFile(join(dir, 'ca.crt'), 'utf8'), ca, 'same coordinator CA');
  const c2 = httpsClient(second.url, ca);
  const got = await c2.call('GET', '/v1/clusters/proc', { token });
  assert.equal(got.status, 200);
  assert.equal(got.body.generation, 1);
  await c2.close();
  second.child.kill('SIGINT');
  assert.equal(await second.exited, 0);
});
