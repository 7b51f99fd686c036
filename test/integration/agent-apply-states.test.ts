// The apply engine against a real PostgreSQL 15, as root: scram and cert states applied and
// proved with real libpq logins, determinism, restarts after every apply, a rule PostgreSQL
// rejects rolled back byte for byte, a malformed verifier refused, silent SSL reload refusals
// detected, CRLs, pending restarts.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, chown, lstat, readFile, writeFile } from 'node:fs/promises';
import { applyDesired } from '../../agent/apply/apply.ts';
import type { ApplyResult } from '../../agent/apply/types.ts';
import type { InstalledCertificate } from '../../shared/pgconf/types.ts';
import { snapshotFile, type FileSnapshot } from '../../shared/system/atomic-file.ts';
import { splitManagedBlock } from '../../shared/pgconf/render.ts';
import { PROFILES } from '../../shared/pgconf/profiles.ts';
import type { NodeDesired } from '../../shared/contract/schema.ts';
import { agentFixture, psqlAs, ROLE, type AgentFixture } from '../helpers/agent-fixture.ts';
import { makeCrl } from '../helpers/agent-certs.ts';
import { query } from '../helpers/pg.ts';

const f: AgentFixture = await agentFixture();

async function apply(desired: NodeDesired, certificates: InstalledCertificate[], now?: Date): Promise<ApplyResult> {
  return applyDesired(f.ctx, { desired, certificates }, now ? { now: () => now } : {});
}

function assertConverged(r: ApplyResult): void {
  assert.deepEqual(r.errors, []);
  assert.equal(r.phase, 'converged');
}

async function loadTime(): Promise<string> {
  const [row] = await query<{ t: string }>(f.pg, 'SELECT pg_conf_load_time()::text AS t');
  return row!.t;
}

async function rolpassword(): Promise<string | null> {
  const [row] = await query<{ p: string | null }>(f.pg, 'SELECT rolpassword AS p FROM pg_authid WHERE rolname = $1', [ROLE]);
  return row?.p ?? null;
}

/** Bytes, owner and mode of every file an apply may touch. */
async function snapshotAll(r: ApplyResult): Promise<FileSnapshot[]> {
  const paths = new Set(r.files.map((x) => x.path));
  return Promise.all([...paths].sort().map((p) => snapshotFile(p)));
}

async function hbaManagedRows(): Promise<{ line_number: number; auth_method: string; error: string | null }[]> {
  const hba = await readFile(`${f.pg.dataDir}/pg_hba.conf`, 'utf8');
  const blockLines = (splitManagedBlock(hba).block ?? '').split('\n').length - 1;
  const rows = await query<{ line_number: number; auth_method: string; error: string | null }>(f.pg, 'SELECT line_number, auth_method, error FROM pg_hba_file_rules');
  return rows.filter((r) => r.line_number <= blockLines);
}

describe('apply engine on a real server', () => {
  let scramCerts: InstalledCertificate[];
  let scramResult: ApplyResult;

  test('scram-sha-256 with verify-full: applied, proved, libpq logs in with the passfile, restart works', async () => {
    scramCerts = await f.issue('scram-sha-256');
    const desired = f.desired({ auth: 'scram-sha-256', sslmode: 'verify-full', password: 'first password: with \\ and colon' });
    const r = await apply(desired, scramCerts);
    scramResult = r;
    assertConverged(r);
    assert.equal(r.changed, true);
    assert.equal(r.servedCertificate?.serial.replace(/^0+/, ''), scramCerts[0]!.serial.replace(/^0+/, ''));
    // Secrets: the passfile and the key are 0600 and owned by postgres.
    const passfile = r.files.find((x) => x.path.endsWith('/client/passfile'));
    assert.ok(passfile, 'passfile reported');
    assert.equal(passfile.mode, '0600');
    assert.equal(passfile.owner, 'postgres');
    const key = await lstat(scramCerts[0]!.keyPath);
    assert.equal(key.mode & 0o777, 0o600);
    assert.equal(key.uid, f.pg.osUser.uid);
    for (const file of r.files) assert.equal(file.owner, 'postgres', file.path);
    // The server stores exactly the verifier; the passfile holds the (escaped) plaintext.
    assert.equal(await rolpassword(), desired.roles[0]!.verifier);
    assert.match(await readFile(passfile.path, 'utf8'), /^127\.0\.0\.1:\d+:\*:pgd_replication:first password\\: with \\\\ and colon\n$/);
    // The reported connection string, used as-is by libpq as the postgres OS user, logs in.
    const conn = r.clientConnections[0]!;
    assert.doesNotMatch(conn.conninfo, /password/i);
    assert.match(conn.conninfo, /sslmode=verify-full/);
    assert.equal(await psqlAs(f.pg, conn.conninfo, 'SELECT current_user || \' \' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'), `${ROLE} true`);
    // No trust row in the managed block, and PostgreSQL has no error anywhere.
    const rows = await hbaManagedRows();
    assert.ok(rows.length >= 3);
    assert.ok(rows.every((x) => x.auth_method !== 'trust' && x.error === null));
    await f.pg.restart();
    assert.equal(await psqlAs(f.pg, conn.conninfo), ROLE);
  });

  test('the same desired state twice: nothing written, no reload', async () => {
    const desired = f.desired({ auth: 'scram-sha-256', sslmode: 'verify-full', password: 'first password: with \\ and colon' });
    const before = await snapshotAll(scramResult);
    const loaded = await loadTime();
    const r = await apply(desired, scramCerts);
    assertConverged(r);
    assert.equal(r.changed, false);
    assert.equal(await loadTime(), loaded, 'no reload');
    assert.deepEqual(await snapshotAll(scramResult), before);
    const inodes = await Promise.all(scramResult.files.map(async (x) => (await lstat(x.path)).ino));
    assert.deepEqual(await Promise.all(scramResult.files.map(async (x) => (await lstat(x.path)).ino)), inodes);
  });

  test('a malformed SCRAM verifier is refused before ALTER ROLE; pg_authid and files unchanged', async () => {
    const desired = f.desired({ auth: 'scram-sha-256', sslmode: 'verify-full', password: 'another' });
    const good = await rolpassword();
    // Looks like a verifier, but the StoredKey is not 32 bytes: PostgreSQL would hash it as plaintext.
    desired.roles[0]!.verifier = 'SCRAM-SHA-256$4096:c2FsdHNhbHQ=$c3RvcmVk:c2VydmVy';
    const before = await snapshotAll(scramResult);
    const r = await apply(desired, scramCerts);
    assert.equal(r.phase, 'failed');
    assert.equal(r.errors[0]!.code, 'E_BAD_VERIFIER');
    assert.match(r.errors[0]!.message, /pgd_replication.*not a well-formed SCRAM-SHA-256 verifier/);
    assert.doesNotMatch(JSON.stringify(r), /c3RvcmVk/, 'the verifier is not echoed');
    assert.equal(await rolpassword(), good);
    assert.deepEqual(await snapshotAll(scramResult), before);
  });

  test('a rule PostgreSQL rejects: every file restored byte for byte, PostgreSQL\'s message reported, restart works', async () => {
    const desired = f.desired({ auth: 'scram-sha-256', sslmode: 'verify-full', password: 'first password: with \\ and colon', generation: 2 });
    // clientcert on a non-SSL rule: PostgreSQL refuses the whole file.
    desired.hba.push({ type: 'host', databases: [{ name: 'app' }], users: [{ name: 'app_user' }], address: '10.1.0.0/16', method: 'scram-sha-256', options: { clientcert: 'verify-full' } });
    const before = await snapshotAll(scramResult);
    const loaded = await loadTime();
    const r = await apply(desired, scramCerts);
    assert.equal(r.phase, 'failed');
    assert.equal(r.changed, false);
    const err = r.errors.find((e) => e.code === 'E_HBA_INVALID');
    assert.ok(err, JSON.stringify(r.errors));
    assert.match(err.message, /clientcert can only be configured for "hostssl" rows/);
    assert.deepEqual(await snapshotAll(scramResult), before, 'bytes, owner and mode restored');
    assert.equal(await loadTime(), loaded, 'never reloaded');
    const rows = await query<{ error: string | null }>(f.pg, 'SELECT error FROM pg_hba_file_rules WHERE error IS NOT NULL');
    assert.deepEqual(rows, []);
    await f.pg.restart();
    assert.equal(await psqlAs(f.pg, scramResult.clientConnections[0]!.conninfo), ROLE);
  });

  test('an invalid operator line below the block: refused with PostgreSQL\'s message, operator bytes kept, converges once fixed', async () => {
    const hbaPath = `${f.pg.dataDir}/pg_hba.conf`;
    const good = await readFile(hbaPath, 'utf8');
    const broken = `${good}host all all 10.0.0.0/33 scram-sha-256 # operator typo\n`;
    await writeFile(hbaPath, broken);
    const desired = f.desired({ auth: 'scram-sha-256', sslmode: 'verify-full', password: 'rotated', generation: 3 });
    const r = await apply(desired, scramCerts);
    assert.equal(r.phase, 'failed');
    assert.ok(r.errors.some((e) => e.code === 'E_HBA_INVALID' && /invalid CIDR mask in address "10\.0\.0\.0\/33"/.test(e.message)), JSON.stringify(r.errors));
    assert.equal(await readFile(hbaPath, 'utf8'), broken, 'the operator\'s file is back exactly as they left it');
    await writeFile(hbaPath, good);
    const fixed = await apply(desired, scramCerts);
    assertConverged(fixed);
    assert.equal(await psqlAs(f.pg, fixed.clientConnections[0]!.conninfo), ROLE);
  });

  test('a failed proof while switching scram -> cert rolls roles back with the files: the role keeps its password', async () => {
    const withPassword = await rolpassword();
    assert.match(withPassword ?? '', /^SCRAM-SHA-256\$/);
    const next = await f.issue('cert');
    // A key the server cannot read: the reload is silently refused and the proof fails.
    await chown(next[0]!.keyPath, 0, 0);
    const r = await apply(f.desired({ auth: 'cert', sslmode: 'verify-full', generation: 4 }), next);
    assert.equal(r.phase, 'failed');
    assert.ok(r.errors.some((e) => e.code === 'E_TLS_NOT_PROVED'), JSON.stringify(r.errors));
    assert.equal(await rolpassword(), withPassword, 'the password removal was rolled back with the files');
  });

  let certCerts: InstalledCertificate[];
  let certResult: ApplyResult;

  test('switch to cert auth with a new server pair: new certificate served, password removed, passfile gone, cert login works', async () => {
    certCerts = await f.issue('cert');
    const desired = f.desired({ auth: 'cert', sslmode: 'verify-full', generation: 4 });
    const r = await apply(desired, certCerts);
    certResult = r;
    assertConverged(r);
    assert.equal(r.changed, true);
    assert.equal(r.servedCertificate?.serial.replace(/^0+/, ''), certCerts[0]!.serial.replace(/^0+/, ''));
    assert.equal(await rolpassword(), null, 'no password left for a role that now logs in by certificate');
    await assert.rejects(lstat(`${f.ctx.stateDir}/client/passfile`), /ENOENT/);
    const conn = r.clientConnections[0]!.conninfo;
    // pgd: the seed's file names (bdr_client.crt/.key, root.crt) in the state directory
    assert.match(conn, /sslrootcert=\S+\/client\/root\.crt sslcert=\S+\/client\/bdr_client\.crt sslkey=\S+\/client\/bdr_client\.key/);
    assert.doesNotMatch(conn, /passfile/);
    assert.equal(await psqlAs(f.pg, conn, 'SELECT current_user || \' \' || client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()'), `${ROLE} /CN=${ROLE}`);
    for (const c of certCerts) {
      const st = await lstat(c.keyPath);
      assert.equal(st.mode & 0o777, 0o600);
      assert.equal(st.uid, f.pg.osUser.uid);
    }
    await f.pg.restart();
    assert.equal(await psqlAs(f.pg, conn), ROLE);
    const again = await apply(desired, certCerts);
    assertConverged(again);
    assert.equal(again.changed, false);
  });

  test('a new key made group-readable by hand is refused before anything is written (PostgreSQL would keep the old context)', async () => {
    const next = await f.issue('cert');
    await chmod(next[0]!.keyPath, 0o640);
    const before = await snapshotAll(certResult);
    const r = await apply(f.desired({ auth: 'cert', sslmode: 'verify-full', generation: 5 }), next);
    assert.equal(r.phase, 'failed');
    assert.ok(r.errors.some((e) => e.code === 'E_KEY_PERMISSIONS' && e.message.includes(next[0]!.keyPath) && e.message.includes('0640')), JSON.stringify(r.errors));
    assert.deepEqual(await snapshotAll(certResult), before);
    await f.pg.restart();
    // The key being served made 0640 by hand: a reload would look fine (same certificate served,
    // hash loaded) while the next restart would fail. Reported, never called converged.
    const current = f.desired({ auth: 'cert', sslmode: 'verify-full', generation: 4 });
    await chmod(certCerts[0]!.keyPath, 0o640);
    const bad = await apply(current, certCerts);
    assert.equal(bad.phase, 'failed');
    assert.deepEqual(bad.errors.map((e) => e.code), ['E_KEY_PERMISSIONS']);
    await chmod(certCerts[0]!.keyPath, 0o600);
    const still = await apply(current, certCerts);
    assertConverged(still);
    assert.equal(still.servedCertificate?.serial, certResult.servedCertificate?.serial);
  });

  test('a reload PostgreSQL silently refuses (key it cannot read) is caught by the handshake proof, rolled back, not converged', async () => {
    const next = await f.issue('cert');
    // root-owned 0600: a mode PostgreSQL accepts for root, but the server (postgres) cannot read
    // it. The configuration hash reloads fine; only the SSL context silently stays the old one.
    await chown(next[0]!.keyPath, 0, 0);
    const before = await snapshotAll(certResult);
    const r = await apply(f.desired({ auth: 'cert', sslmode: 'verify-full', generation: 6 }), next);
    assert.equal(r.phase, 'failed');
    assert.notEqual(r.phase, 'converged');
    const err = r.errors.find((e) => e.code === 'E_TLS_NOT_PROVED');
    assert.ok(err, JSON.stringify(r.errors));
    assert.match(err.message, /still presents certificate serial/);
    assert.ok(!r.errors.some((e) => e.code === 'E_RELOAD_NOT_PROVED'), 'the configuration hash did reload: only the handshake shows the refusal');
    assert.deepEqual(await snapshotAll(certResult), before, 'files restored after the failed proof');
    await f.pg.restart();
    assert.equal(await psqlAs(f.pg, certResult.clientConnections[0]!.conninfo), ROLE);
    const back = await apply(f.desired({ auth: 'cert', sslmode: 'verify-full', generation: 4 }), certCerts);
    assertConverged(back);
    assert.equal(back.changed, false);
  });

  test('expired certificates and an expired CRL are refused before writing; a valid CRL is installed and used by both sides', async () => {
    const before = await snapshotAll(certResult);
    // The clock is a parameter: two days on, the one-day certificates have expired.
    const r1 = await apply(f.desired({ auth: 'cert', sslmode: 'verify-full', generation: 7 }), certCerts, new Date(Date.now() + 2 * 86400_000));
    assert.equal(r1.phase, 'failed');
    assert.ok(r1.errors.some((e) => e.code === 'E_CERT_EXPIRED'), JSON.stringify(r1.errors));
    // Two hours on, a CRL with a one-hour nextUpdate is expired (the certificates are still valid).
    const staleCrl = await makeCrl(f.ca, 1);
    const r2 = await apply(f.desired({ auth: 'cert', sslmode: 'verify-full', generation: 8, crl: staleCrl }), certCerts, new Date(Date.now() + 2 * 3600_000));
    assert.equal(r2.phase, 'failed');
    assert.deepEqual(r2.errors.map((e) => e.code), ['E_CRL_EXPIRED']);
    assert.deepEqual(await snapshotAll(certResult), before);

    const crl = await makeCrl(f.ca, 48);
    const r3 = await apply(f.desired({ auth: 'cert', sslmode: 'verify-full', generation: 9, crl }), certCerts);
    assertConverged(r3);
    const conn = r3.clientConnections[0]!.conninfo;
    assert.match(conn, /sslcrl=\S+\/client\/root\.crl/);
    const [crlFile] = await query<{ v: string }>(f.pg, 'SELECT current_setting(\'ssl_crl_file\') AS v');
    assert.match(crlFile!.v, /crl-[0-9a-f]{16}\.pem$/);
    assert.equal(await psqlAs(f.pg, conn), ROLE);
    await f.pg.restart();
    assert.equal(await psqlAs(f.pg, conn), ROLE);
  });

  test('a server on the socket that is not the one in PGDATA (another cluster on 5432) is never touched', async () => {
    const desired = f.desired({ auth: 'cert', sslmode: 'verify-full', generation: 12 });
    const { mkdtemp, rm } = await import('node:fs/promises');
    const elsewhere = await mkdtemp('/tmp/pgaccord-other-pgdata-');
    try {
      const hbaBefore = await snapshotFile(`${f.pg.dataDir}/pg_hba.conf`);
      const loadedBefore = await loadTime();
      const r = await applyDesired({ ...f.ctx, pgdata: elsewhere }, { desired, certificates: certCerts });
      assert.equal(r.phase, 'failed');
      assert.deepEqual(r.errors.map((e) => e.code), ['E_WRONG_SERVER']);
      assert.match(r.errors[0]!.message, new RegExp(`runs ${f.pg.dataDir}, not --pgdata ${elsewhere}`));
      assert.deepEqual(await snapshotFile(`${f.pg.dataDir}/pg_hba.conf`), hbaBefore, 'its pg_hba.conf is untouched');
      assert.equal(await loadTime(), loadedBefore, 'and it was not reloaded');
    } finally {
      await rm(elsewhere, { recursive: true, force: true });
    }
  });

  test('a setting that needs a restart is reported pending, never applied by surprise', async () => {
    // A profile setting that needs a restart (none of today's profiles has one): the agent's
    // allowlist is the profile table, so the profile itself must name it.
    PROFILES.pgd.settings.max_connections = '45';
    try {
      const desired = f.desired({ auth: 'cert', sslmode: 'verify-full', generation: 10 });
      assert.equal(desired.settings.max_connections, '45');
      const started = await query<{ t: string }>(f.pg, 'SELECT pg_postmaster_start_time()::text AS t');
      const r = await apply(desired, certCerts);
      assert.deepEqual(r.errors, []);
      assert.equal(r.phase, 'pending-restart');
      assert.deepEqual(r.pendingRestart, ['max_connections']);
      assert.deepEqual(await query(f.pg, 'SELECT pg_postmaster_start_time()::text AS t'), started, 'no restart by the agent');
      const [mc] = await query<{ v: string }>(f.pg, 'SHOW max_connections');
      assert.equal(Object.values(mc!)[0], '50');
      await f.pg.restart();
      const after = await apply(desired, certCerts);
      assertConverged(after);
      assert.equal(after.changed, false);
    } finally {
      delete PROFILES.pgd.settings.max_connections;
    }
  });

  test("a restart pending for a setting pgaccord does not write (pg_autoctl's port after a promotion) does not hold the node back", async () => {
    const desired = f.desired({ auth: 'cert', sslmode: 'verify-full', generation: 11 });
    await query(f.pg, "ALTER SYSTEM SET max_wal_senders = '7'");
    await query(f.pg, 'SELECT pg_reload_conf()');
    try {
      const pendingOnServer = await query<{ name: string }>(f.pg, 'SELECT name FROM pg_settings WHERE pending_restart');
      assert.deepEqual(pendingOnServer.map((r) => r.name), ['max_wal_senders'], 'the server does have a restart pending');
      const r = await apply(desired, certCerts);
      assertConverged(r);
      assert.deepEqual(r.pendingRestart, []);
    } finally {
      await query(f.pg, 'ALTER SYSTEM RESET max_wal_senders');
      await query(f.pg, 'SELECT pg_reload_conf()');
    }
  });
});
