// The apply engine's own defences against a desired state it must not carry out, whoever sent
// it (issue 14), against a real PostgreSQL 15, as root. Desired states are edited by hand after
// compiling, as a compromised coordinator would send them: the spec validator never sees them.
//   - roles it must never alter: postgres, its own database user, any superuser on the node;
//   - settings outside the profile allowlist (archive_command runs code on the node);
//   - a server-named file it cannot read (other than "no such file") is never taken as empty;
//   - a file PostgreSQL refuses on reload, once past the validator (fault injected): the reload
//     is reported unproved with PostgreSQL's message, rolled back, the old rules still enforced.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { applyDesired, type ApplyOptions } from '../../agent/apply/apply.ts';
import type { ApplyResult } from '../../agent/apply/types.ts';
import type { InstalledCertificate } from '../../shared/pgconf/types.ts';
import { snapshotFile, type FileSnapshot } from '../../shared/system/atomic-file.ts';
import type { NodeDesired } from '../../shared/contract/schema.ts';
import { runPg } from '../../shared/system/pgserver.ts';
import { agentFixture, psqlAs, ROLE, type AgentFixture } from '../helpers/agent-fixture.ts';
import { query } from '../helpers/pg.ts';

const f: AgentFixture = await agentFixture();

async function apply(desired: NodeDesired, certificates: InstalledCertificate[], opts: ApplyOptions = {}): Promise<ApplyResult> {
  return applyDesired(f.ctx, { desired, certificates }, opts);
}

function assertConverged(r: ApplyResult): void {
  assert.deepEqual(r.errors, []);
  assert.equal(r.phase, 'converged');
}

/** Bytes, owner and mode of every managed file, and of the server's own three. */
async function snapshotAll(r: ApplyResult, except?: string): Promise<FileSnapshot[]> {
  const paths = new Set([...r.files.map((x) => x.path), `${f.pg.dataDir}/pg_hba.conf`, `${f.pg.dataDir}/pg_ident.conf`, `${f.pg.dataDir}/postgresql.conf`]);
  return Promise.all([...paths].filter((p) => p !== except).sort().map((p) => snapshotFile(p)));
}

const authid = () => query(f.pg, 'SELECT rolname, rolsuper, rolreplication, rolcanlogin, rolpassword, rolconnlimit FROM pg_authid ORDER BY rolname');
const loadTime = async () => (await query<{ t: string }>(f.pg, 'SELECT pg_conf_load_time()::text AS t'))[0]!.t;

/** One libpq login over TCP as the server's OS user: 'ok' or the server's refusal. */
async function tcpLogin(user: string): Promise<string> {
  try {
    await runPg('psql', ['-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', `host=127.0.0.1 port=${f.pg.port} dbname=postgres user=${user} sslmode=require`, '-c', 'SELECT 1'], f.pg.osUser, { env: { PGCONNECT_TIMEOUT: '5' } });
    return 'ok';
  } catch (e) {
    return (e as Error).message;
  }
}

const REPO = join(import.meta.dirname, '..', '..');

/** One apply in a child process run as the server's OS user, as the agent runs under systemd. */
async function applyAsServerUser(desired: NodeDesired, certificates: InstalledCertificate[]): Promise<ApplyResult> {
  const job = join(f.pg.baseDir, 'apply-job.json');
  const { log: _log, ...ctx } = f.ctx;
  await writeFile(job, JSON.stringify({ ctx: { ...ctx, agentOsUser: f.pg.osUser.name }, input: { desired, certificates } }), { mode: 0o644 });
  const code = `import { readFileSync } from 'node:fs'; import pino from 'pino'; import { applyDesired } from './agent/apply/apply.ts';
const job = JSON.parse(readFileSync(process.env.JOB, 'utf8'));
const r = await applyDesired({ ...job.ctx, log: pino({ level: 'silent' }) }, job.input);
process.stdout.write(JSON.stringify(r));`;
  try {
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { cwd: REPO, uid: f.pg.osUser.uid, gid: f.pg.osUser.gid, env: { ...process.env, JOB: job, HOME: f.pg.osUser.home } });
    return JSON.parse(stdout) as ApplyResult;
  } finally {
    await rm(job, { force: true });
  }
}

describe('apply engine hardening on a real server', () => {
  let certs: InstalledCertificate[];
  let good: ApplyResult;
  let gen = 1;
  const desired = (o: { password?: string } = {}) => f.desired({ auth: 'scram-sha-256', sslmode: 'verify-full', password: o.password ?? 'a good password', generation: gen++ });

  test('a scram state converges (the base for what follows)', async () => {
    certs = await f.issue('scram-sha-256');
    good = await apply(desired(), certs);
    assertConverged(good);
    assert.equal(await psqlAs(f.pg, good.clientConnections[0]!.conninfo), ROLE);
  });

  describe('item 7: roles the agent never alters', () => {
    test('postgres, a superuser of the node, a role claimed SUPERUSER outside the profile, postgres given a verifier: refused by name, pg_authid and files unchanged', async () => {
      await query(f.pg, "ALTER ROLE postgres PASSWORD 'operator secret'");
      await query(f.pg, "CREATE ROLE site_admin LOGIN SUPERUSER PASSWORD 'site admin secret'");
      try {
        const other = desired().roles[0]!;
        const cases: [string, NodeDesired['roles'][number]][] = [
          // under auth: cert this was ALTER ROLE "postgres" LOGIN NOREPLICATION, then PASSWORD NULL
          ['postgres', { name: 'postgres', login: true, replication: false, inRoles: [], verifier: null }],
          ['site_admin', { name: 'site_admin', login: true, replication: false, inRoles: [], verifier: null }],
          ['sneaky', { name: 'sneaky', login: true, replication: false, inRoles: [], verifier: null, superuser: true }],
          // the bootstrap superuser with a password the coordinator knows
          ['postgres', { name: 'postgres', login: true, replication: false, inRoles: [], verifier: other.verifier, external: true }],
        ];
        for (const [name, role] of cases) {
          const d = desired();
          d.roles.push(role);
          const beforeRoles = await authid();
          const beforeFiles = await snapshotAll(good);
          const r = await apply(d, certs);
          assert.equal(r.phase, 'failed', `${name}: ${JSON.stringify(r.errors)}`);
          const err = r.errors.find((e) => e.code === 'E_ROLE_PROTECTED');
          assert.ok(err, `${name}: ${JSON.stringify(r.errors)}`);
          assert.match(err.message, new RegExp(`\\b${name}\\b`));
          assert.deepEqual(await authid(), beforeRoles, `${name}: pg_authid unchanged`);
          assert.deepEqual(await snapshotAll(good), beforeFiles, `${name}: no file written`);
        }
      } finally {
        await query(f.pg, 'DROP ROLE IF EXISTS site_admin');
        await query(f.pg, 'DROP ROLE IF EXISTS sneaky');
        await query(f.pg, 'ALTER ROLE postgres PASSWORD NULL');
      }
      // the profile's own role is still managed
      assertConverged(await apply(desired(), certs));
    });
  });

  describe('item 13: settings outside the profile allowlist', () => {
    test('archive_command, shared_preload_libraries, ssl_passphrase_command, a client-layout setting: refused by name, nothing written, nothing loaded', async () => {
      const cases: [string, (d: NodeDesired) => void][] = [
        ['archive_command', (d) => { d.settings.archive_command = 'sh -c "id > /tmp/pgaccord-pwned"'; }],
        ['shared_preload_libraries', (d) => { d.settings.shared_preload_libraries = 'evil'; }],
        ['ssl_passphrase_command', (d) => { d.settings.ssl_passphrase_command = 'sh -c id'; }],
        ['archive_command', (d) => { d.clientLayout = { ...d.clientLayout!, settings: { ...d.clientLayout!.settings, archive_command: 'dir' } }; }],
      ];
      for (const [name, edit] of cases) {
        const d = desired();
        edit(d);
        const before = await snapshotAll(good);
        const loaded = await loadTime();
        const r = await apply(d, certs);
        assert.equal(r.phase, 'failed', `${name}: ${JSON.stringify(r.errors)}`);
        const err = r.errors.find((e) => e.code === 'E_SETTING_REFUSED');
        assert.ok(err, `${name}: ${JSON.stringify(r.errors)}`);
        assert.match(err.message, new RegExp(`\\b${name}\\b`));
        assert.deepEqual(await snapshotAll(good), before, `${name}: no file written`);
        assert.equal(await loadTime(), loaded, `${name}: never reloaded`);
      }
      const names = cases.map(([name]) => name);
      assert.deepEqual(await query(f.pg, 'SELECT name FROM pg_file_settings WHERE name = ANY($1::text[])', [names]), [], 'no configuration file sets any of them');
      assertConverged(await apply(desired(), certs));
    });
  });

  describe('item 14: a server-named file that cannot be read is not an empty file', () => {
    test('pg_ident.conf replaced by a directory (EISDIR): the apply fails naming it, nothing written; the operator lines come back intact', async () => {
      const ident = `${f.pg.dataDir}/pg_ident.conf`;
      await writeFile(ident, `${await readFile(ident, 'utf8')}# operator map\nopmap alice bob\n`);
      assertConverged(await apply(desired(), certs));
      const operator = await readFile(ident, 'utf8');
      assert.match(operator, /^# operator map\nopmap alice bob$/m, 'the operator lines are kept below the block');
      const before = await snapshotAll(good, ident);
      await rename(ident, `${ident}.aside`);
      await mkdir(ident);
      try {
        const r = await apply(desired({ password: 'another password' }), certs);
        assert.equal(r.phase, 'failed', JSON.stringify(r.errors));
        // E_SERVER_FILE when the server-named path check sees the directory first (not a
        // regular file), E_FILE_READ from the read itself: either way never an empty file
        const err = r.errors.find((e) => e.code === 'E_FILE_READ' || e.code === 'E_SERVER_FILE');
        assert.ok(err, JSON.stringify(r.errors));
        assert.match(err.message, /pg_ident\.conf/);
        assert.match(err.message, /EISDIR|not a regular file/);
        assert.deepEqual(await snapshotAll(good, ident), before, 'no other file written');
      } finally {
        await rm(ident, { recursive: true, force: true });
        await rename(`${ident}.aside`, ident);
      }
      assertConverged(await apply(desired(), certs));
      assert.equal(await readFile(ident, 'utf8'), operator, 'the operator lines are intact');
    });

    test('pg_ident.conf its owner cannot read (EACCES, agent as the server OS user): the apply fails naming it, nothing written, operator lines intact', async () => {
      const ident = `${f.pg.dataDir}/pg_ident.conf`;
      const operator = await readFile(ident, 'utf8');
      assert.match(operator, /^opmap alice bob$/m);
      const before = await snapshotAll(good);
      await chmod(ident, 0o000);
      let r: ApplyResult;
      try {
        r = await applyAsServerUser(desired({ password: 'yet another password' }), certs);
      } finally {
        await chmod(ident, before.find((x) => x.path === ident)!.mode);
      }
      assert.equal(r.phase, 'failed', JSON.stringify(r.errors));
      const err = r.errors.find((e) => e.code === 'E_FILE_READ');
      assert.ok(err, JSON.stringify(r.errors));
      assert.match(err.message, /pg_ident\.conf \(EACCES\)/);
      assert.deepEqual(await snapshotAll(good), before, 'no file written, the operator lines intact');
    });
  });

  describe('item 16: a reload PostgreSQL refuses, past a fault-injected validator', () => {
    test('pg_hba.conf with a line PostgreSQL rejects: E_RELOAD_NOT_PROVED with its message, rolled back, old rules still enforced', async () => {
      await query(f.pg, 'CREATE ROLE intruder LOGIN');
      try {
        assert.match(await tcpLogin('intruder'), /pg_hba\.conf rejects connection|no pg_hba\.conf entry/, 'refused before');
        const d = desired();
        // a trust rule for intruder, and a line that makes PostgreSQL refuse the whole file
        d.hba.push({ type: 'hostssl', databases: [{ keyword: 'all' }], users: [{ name: 'intruder' }], address: '127.0.0.1/32', method: 'trust' });
        d.hba.push({ type: 'host', databases: [{ name: 'app' }], users: [{ name: 'app_user' }], address: '10.1.0.0/16', method: 'scram-sha-256', options: { clientcert: 'verify-full' } });
        const before = await snapshotAll(good);
        const r = await apply(d, certs, { testOnlySkipValidation: true, proofTimeoutMs: 3000 });
        assert.equal(r.phase, 'failed', JSON.stringify(r.errors));
        const err = r.errors.find((e) => e.code === 'E_RELOAD_NOT_PROVED');
        assert.ok(err, JSON.stringify(r.errors));
        assert.match(err.message, /pg_hba\.conf line \d+: clientcert can only be configured for "hostssl" rows/);
        assert.deepEqual(await snapshotAll(good), before, 'every file restored byte for byte');
        assert.deepEqual(await query(f.pg, 'SELECT error FROM pg_hba_file_rules WHERE error IS NOT NULL'), []);
        // the old rules: intruder still refused, the managed role still admitted
        assert.match(await tcpLogin('intruder'), /pg_hba\.conf rejects connection|no pg_hba\.conf entry/, 'still refused after');
        assert.equal(await psqlAs(f.pg, good.clientConnections[0]!.conninfo), ROLE);
      } finally {
        await query(f.pg, 'DROP ROLE intruder');
      }
    });

    test('postgresql.conf with a syntax error: E_RELOAD_NOT_PROVED with its message, rolled back (roles too), old password still works', async () => {
      const conf = `${f.pg.dataDir}/postgresql.conf`;
      const ok = await readFile(conf, 'utf8');
      const [{ p: verifier }] = (await query<{ p: string }>(f.pg, 'SELECT rolpassword AS p FROM pg_authid WHERE rolname = $1', [ROLE])) as [{ p: string }];
      await writeFile(conf, `${ok}operator typo = = here\n`);
      try {
        const before = await snapshotAll(good);
        const r = await apply(desired({ password: 'a rotated password' }), certs, { testOnlySkipValidation: true, proofTimeoutMs: 3000 });
        assert.equal(r.phase, 'failed', JSON.stringify(r.errors));
        const errs = r.errors.filter((e) => e.code === 'E_RELOAD_NOT_PROVED');
        assert.ok(errs.some((e) => /configuration hash/.test(e.message)), JSON.stringify(r.errors));
        assert.ok(errs.some((e) => /postgresql\.conf.*line \d+.*syntax error/.test(e.message)), JSON.stringify(r.errors));
        assert.deepEqual(await snapshotAll(good), before, 'every file restored byte for byte');
        assert.equal((await query<{ p: string }>(f.pg, 'SELECT rolpassword AS p FROM pg_authid WHERE rolname = $1', [ROLE]))[0]!.p, verifier, 'role change rolled back');
        assert.equal(await psqlAs(f.pg, good.clientConnections[0]!.conninfo), ROLE);
      } finally {
        await writeFile(conf, ok);
      }
      assertConverged(await apply(desired(), certs));
    });
  });
});
