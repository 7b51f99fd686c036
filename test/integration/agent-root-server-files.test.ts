// The files the server names (SHOW hba_file, ident_file, config_file) are refused, with nothing
// read or written, when they resolve outside PGDATA and the server's configuration directory
// (the directory of config_file), or are not owned by the PGDATA owner (issue 14, High 2).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, chown, copyFile, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { applyDesired } from '../../agent/apply/apply.ts';
import { ownedDir } from '../../shared/system/pgserver.ts';
import { agentFixture, type AgentFixture } from '../helpers/agent-fixture.ts';
import { query } from '../helpers/pg.ts';

const f: AgentFixture = await agentFixture();
const certs = await f.issue('scram-sha-256');
const desired = f.desired({ auth: 'scram-sha-256', sslmode: 'verify-full' });

const serverFile = async (name: string): Promise<string> => Object.values((await query(f.pg, `SHOW ${name}`))[0]!)[0] as string;

test('a server-named file owned by another user inside PGDATA: refused, untouched', async () => {
  const ident = await serverFile('ident_file');
  // Readable by the server, but root's: the agent must not rewrite it (nor give it to postgres).
  await chown(ident, 0, 0);
  const { chmod } = await import('node:fs/promises');
  await chmod(ident, 0o644);
  const before = await readFile(ident);
  try {
    const r = await applyDesired(f.ctx, { desired, certificates: certs });
    assert.equal(r.phase, 'failed');
    const err = r.errors.find((e) => e.code === 'E_SERVER_FILE');
    assert.ok(err, JSON.stringify(r.errors));
    assert.match(err.message, /pg_ident\.conf.*owned by uid 0/);
    const st = await stat(ident);
    assert.equal(st.uid, 0);
    assert.equal(st.mode & 0o777, 0o644);
    assert.deepEqual(await readFile(ident), before);
  } finally {
    await chown(ident, f.pg.osUser.uid, f.pg.osUser.gid);
    await chmod(ident, 0o600);
  }
});

test('hba_file outside PGDATA and the configuration directory (owned by postgres): refused, untouched', async () => {
  const outside = await mkdtemp('/tmp/pgaccord-outside-');
  await ownedDir(outside, f.pg.osUser);
  const hba = join(outside, 'pg_hba.conf');
  await copyFile(join(f.pg.dataDir, 'pg_hba.conf'), hba);
  await chown(hba, f.pg.osUser.uid, f.pg.osUser.gid);
  const conf = join(f.pg.dataDir, 'postgresql.conf');
  const confBefore = await readFile(conf);
  await appendFile(conf, `hba_file = '${hba}'\n`);
  await f.pg.restart();
  try {
    assert.equal(await serverFile('hba_file'), hba);
    const before = await readFile(hba);
    const r = await applyDesired(f.ctx, { desired, certificates: certs });
    assert.equal(r.phase, 'failed');
    const err = r.errors.find((e) => e.code === 'E_SERVER_FILE');
    assert.ok(err, JSON.stringify(r.errors));
    assert.match(err.message, /outside/);
    assert.deepEqual(await readFile(hba), before, 'not rewritten');
  } finally {
    const { writeFile } = await import('node:fs/promises');
    await writeFile(conf, confBefore);
    await f.pg.restart();
    await rm(outside, { recursive: true, force: true });
  }
});

test('files in the configuration directory and PGDATA, owned by the PGDATA owner: applied', async () => {
  const r = await applyDesired(f.ctx, { desired, certificates: certs });
  assert.deepEqual(r.errors, []);
  assert.equal(r.phase, 'converged');
});
