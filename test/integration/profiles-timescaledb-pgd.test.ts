// timescaledb-multinode and pgd against real PostgreSQL 15 nodes, through the apply engine: for
// each auth model the connections the system's own client makes succeed exactly as it makes
// them, and the ones that must fail do fail (no certificate, a certificate of another role,
// a wrong password, a role missing from the passfile, another address, plaintext).
//
// TimescaleDB's multi-node code cannot run here, so its client is rebuilt from its source
// (tsl/src/remote/connection.c): passfile=<timescaledb.passfile>, sslmode=require,
// sslrootcert=<the access node's ssl_ca_file>, sslcert/sslkey=<timescaledb.ssl_dir>/<md5(user)>.crt/.key,
// read from the access node's own settings, not from what pgaccord reports.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { copyFile, chown, lstat, readFile, writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { applyDesired } from '../../agent/apply/apply.ts';
import { probe } from '../../agent/probe/probes.ts';
import type { NodeContext } from '../../agent/apply/types.ts';
import type { InstalledCertificate } from '../../shared/pgconf/types.ts';
import { compileCluster, rolesNeedingPasswords, type RoleCredential } from '../../coordinator/cluster/compile.ts';
import { freePort, type PgInstance } from '../../shared/system/pgserver.ts';
import type { AuthModel, ClusterSpec, NodeDesired } from '../../shared/contract/schema.ts';
import { credentialFor, randomPassword, silentLogger } from '../helpers/agent-fixture.ts';
import { issueLeaf, makeCa } from '../helpers/agent-certs.ts';
import { editConninfo, psql } from '../helpers/libpq.ts';
import { query, throwawayPg } from '../helpers/pg.ts';

const ca = await makeCa('pgaccord profiles test CA');
after(() => ca.destroy());
const md5 = (s: string): string => createHash('md5').update(s).digest('hex');
const WHO = "SELECT current_user || ' ssl=' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
const MODELS: AuthModel[] = ['trust', 'scram-sha-256', 'cert'];

interface Member {
  name: string;
  kind: string;
  pg: PgInstance;
  ctx: NodeContext;
}

async function member(name: string, kind: string): Promise<Member> {
  // listen on IPv4 and IPv6 loopback: ::1 is "another address" for the rules pgaccord writes
  const pg = await throwawayPg({ listen: '127.0.0.1,::1', port: await freePort() });
  const ctx: NodeContext = { pgdata: pg.dataDir, pgHost: pg.socketDir, pgPort: pg.port, pgUser: 'postgres', stateDir: join(pg.baseDir, 'state'), serverOsUser: pg.osUser, agentOsUser: userInfo().username, log: silentLogger() };
  return { name, kind, pg, ctx };
}

async function certsFor(m: Member, d: NodeDesired): Promise<InstalledCertificate[]> {
  const out: InstalledCertificate[] = [];
  for (const slot of d.certificates) {
    out.push(await issueLeaf(ca, { slot: slot.id, commonName: slot.commonName, ips: slot.ipAddresses, dns: slot.dnsNames, usage: slot.usage, dir: join(m.ctx.stateDir, 'tls'), owner: m.pg.osUser }));
  }
  return out;
}

async function applyAll(spec: ClusterSpec, members: Member[], generation: number, passwords: Record<string, string>): Promise<Map<string, { desired: NodeDesired; result: Awaited<ReturnType<typeof applyDesired>> }>> {
  const credentials: Record<string, RoleCredential> = {};
  for (const r of rolesNeedingPasswords(spec)) credentials[r] = credentialFor((passwords[r] ??= randomPassword()));
  const compiled = compileCluster({ spec, generation, credentials, caBundle: ca.certPem, crl: null });
  const out = new Map<string, { desired: NodeDesired; result: Awaited<ReturnType<typeof applyDesired>> }>();
  for (const m of members) {
    const desired = compiled.get(m.name)!;
    const result = await applyDesired(m.ctx, { desired, certificates: await certsFor(m, desired) });
    assert.equal(result.phase, 'converged', `${m.name} ${spec.auth}: ${JSON.stringify(result.errors)}`);
    out.set(m.name, { desired, result });
  }
  return out;
}

const setting = async (m: Member, name: string): Promise<string> => (await query<{ v: string }>(m.pg, 'SELECT current_setting($1, true) AS v', [name]))[0]!.v;

test('timescaledb-multinode: the access node reaches each data node exactly as TimescaleDB does, under trust, scram and cert', async () => {
  const an = await member('access-1', 'access');
  const dn = await member('data-1', 'data');
  const passwords: Record<string, string> = {};
  let generation = 0;
  for (const auth of MODELS) {
    const spec: ClusterSpec = {
      name: 'tsdb',
      profile: 'timescaledb-multinode',
      auth,
      tls: { sslmode: 'verify-full' },
      nodes: [
        { name: an.name, host: '127.0.0.1', address: '127.0.0.1', port: an.pg.port, kind: 'access' },
        { name: dn.name, host: '127.0.0.1', address: '127.0.0.1', port: dn.pg.port, kind: 'data' },
      ],
      roles: [{ name: 'testrole' }],
    };
    const applied = await applyAll(spec, [dn, an], ++generation, passwords);
    const anDesired = applied.get(an.name)!;
    // data node: one hostssl line per role (postgres first) from the access node's address
    const rules = await query<{ type: string; user_name: string[]; address: string; auth_method: string }>(dn.pg, "SELECT type, user_name, address, auth_method FROM pg_hba_file_rules WHERE type = 'hostssl'");
    assert.deepEqual(rules.map((r) => `${r.type} ${r.user_name.join()} ${r.address} ${r.auth_method}`).sort(), [`hostssl postgres 127.0.0.1 ${auth}`, `hostssl testrole 127.0.0.1 ${auth}`]);
    const [testrole] = await query<{ rolcanlogin: boolean }>(dn.pg, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'testrole'");
    assert.equal(testrole?.rolcanlogin, true, 'testrole LOGIN on the data node');

    // TimescaleDB's connection, built from the access node's own settings
    const passfile = await setting(an, 'timescaledb.passfile');
    const sslDir = await setting(an, 'timescaledb.ssl_dir');
    const anCa = await setting(an, 'ssl_crl_file').then(() => setting(an, 'ssl_ca_file'));
    assert.equal(await setting(an, 'ssl'), 'on');
    const tsConn = (user: string, extra: Record<string, string> = {}) => {
      const p: Record<string, string> = { host: '127.0.0.1', port: String(dn.pg.port), dbname: 'postgres', user, sslmode: 'require', sslrootcert: anCa };
      if (auth === 'scram-sha-256') p.passfile = passfile;
      if (auth === 'cert') {
        p.sslcert = join(sslDir, `${md5(user)}.crt`);
        p.sslkey = join(sslDir, `${md5(user)}.key`);
      }
      Object.assign(p, extra);
      return Object.entries(p).map(([k, v]) => `${k}=${v}`).join(' ');
    };
    for (const user of ['postgres', 'testrole']) {
      const r = await psql(tsConn(user), WHO);
      assert.ok(r.ok, `${auth}: ${user} as TimescaleDB connects: ${r.error}`);
      assert.equal(r.stdout, `${user} ssl=true`);
    }
    // what the agent reports (and probes) is that same connection
    for (const c of anDesired.result.clientConnections) {
      assert.equal(c.conninfo, `host=127.0.0.1 port=${dn.pg.port} dbname=postgres user=${c.role} sslmode=require sslrootcert=${anCa}${auth === 'cert' ? ` sslcert=${join(sslDir, `${md5(c.role)}.crt`)} sslkey=${join(sslDir, `${md5(c.role)}.key`)}` : ''}${auth === 'scram-sha-256' ? ` passfile=${passfile}` : ''}`);
      const p = await probe(c, { osUser: an.pg.osUser });
      assert.equal(p.ok, true, `probe ${c.role}: ${p.error}`);
    }

    // negatives, each against the real data node
    const other = await psql(tsConn('testrole', { host: '::1' }), WHO);
    assert.equal(other.ok, false, `${auth}: another address must be refused`);
    assert.match(other.error, /pg_hba\.conf rejects connection for host "::1"|no pg_hba\.conf entry for host "::1"/);
    const plain = await psql(editConninfo(tsConn('testrole'), { sslmode: 'disable', sslcert: null, sslkey: null, sslrootcert: null }), WHO);
    assert.equal(plain.ok, false, `${auth}: plaintext must be refused`);
    assert.match(plain.error, /no encryption/);

    if (auth === 'scram-sha-256') {
      assert.equal((await lstat(passfile)).mode & 0o777, 0o600);
      const lines = (await readFile(passfile, 'utf8')).trim().split('\n');
      assert.deepEqual(lines.map((l) => l.split(':').slice(0, 4).join(':')), ['*:*:*:postgres', '*:*:*:testrole'], 'one *:*:*:role line per role, postgres first');
      const wrong = `${passfile}.wrong`;
      await writeFile(wrong, `*:*:*:testrole:not-the-password\n`, { mode: 0o600 });
      await chown(wrong, an.pg.osUser.uid, an.pg.osUser.gid);
      const r = await psql(tsConn('testrole', { passfile: wrong }), WHO);
      assert.equal(r.ok, false);
      assert.match(r.error, /password authentication failed for user "testrole"/);
      const missing = `${passfile}.missing`;
      await writeFile(missing, `*:*:*:postgres:${passwords.postgres}\n`, { mode: 0o600 });
      await chown(missing, an.pg.osUser.uid, an.pg.osUser.gid);
      const r2 = await psql(tsConn('testrole', { passfile: missing }), WHO);
      assert.equal(r2.ok, false);
      assert.match(r2.error, /no password supplied|password authentication failed/);
    }
    if (auth === 'cert') {
      // the chain TimescaleDB's seed builds: leaf, then its signer
      const crt = await readFile(join(sslDir, `${md5('testrole')}.crt`), 'utf8');
      assert.equal(crt.match(/BEGIN CERTIFICATE/g)?.length, 2);
      assert.equal((await lstat(join(sslDir, `${md5('testrole')}.key`))).mode & 0o777, 0o600);
      const none = await psql(editConninfo(tsConn('testrole'), { sslcert: '/nonexistent.crt', sslkey: '/nonexistent.key' }), WHO);
      assert.equal(none.ok, false, 'no certificate');
      assert.match(none.error, /connection requires a valid client certificate|certificate/);
      const wrongRole = await psql(tsConn('testrole', { sslcert: join(sslDir, `${md5('postgres')}.crt`), sslkey: join(sslDir, `${md5('postgres')}.key`) }), WHO);
      assert.equal(wrongRole.ok, false, 'the certificate of another role');
      assert.match(wrongRole.error, /certificate authentication failed for user "testrole"/);
    }
    if (auth === 'trust') {
      // trust still only from the access node, only over TLS, only the listed roles
      const nobody = await psql(tsConn('nobody'), WHO);
      assert.equal(nobody.ok, false);
    }
  }
});

test('pgd: every peer reaches every peer as pgd_replication with the interface connection string, under trust, scram and cert', async () => {
  const p1 = await member('node-1', 'peer');
  const p2 = await member('node-2', 'peer');
  for (const m of [p1, p2]) await query(m.pg, 'CREATE DATABASE pgddb');
  const passwords: Record<string, string> = {};
  let generation = 0;
  for (const auth of MODELS) {
    const spec: ClusterSpec = {
      name: 'pgd',
      profile: 'pgd',
      auth,
      tls: { sslmode: auth === 'scram-sha-256' ? 'verify-ca' : 'verify-full' },
      database: 'pgddb',
      nodes: [
        { name: p1.name, host: '127.0.0.1', address: '127.0.0.1', port: p1.pg.port, kind: 'peer' },
        { name: p2.name, host: '127.0.0.1', address: '127.0.0.1', port: p2.pg.port, kind: 'peer' },
      ],
    };
    const applied = await applyAll(spec, [p1, p2], ++generation, passwords);
    // the seed's three verification queries, run by the agent after the apply
    const checks = applied.get(p1.name)!.result.checks!;
    assert.deepEqual(checks.map((c) => [c.name, c.ok, c.note]), [['replication over SSL', true, null], ['authentication methods in pg_hba.conf', true, null], ['BDR node states', true, 'bdr not installed']]);
    const methods = checks[1]!.rows.map((r) => `${r.type} ${(r.database as string[]).join()} ${(r.user_name as string[]).join()} ${r.address} ${r.auth_method}`).sort();
    assert.deepEqual(methods, auth === 'trust' ? [] : [`hostssl all,replication pgd_replication 127.0.0.1 ${auth}`]);
    for (const [from, to] of [[p1, p2], [p2, p1]] as const) {
      const { result } = applied.get(from.name)!;
      const [c] = result.clientConnections.filter((x) => x.to === to.name);
      assert.ok(c, `${from.name} -> ${to.name}`);
      const state = join(from.ctx.stateDir, 'client');
      // the seed's interface connection string, with absolute paths and the BDR database
      if (auth === 'cert') assert.equal(c.conninfo, `host=127.0.0.1 port=${to.pg.port} dbname=pgddb user=pgd_replication sslmode=verify-full sslrootcert=${state}/root.crt sslcert=${state}/bdr_client.crt sslkey=${state}/bdr_client.key`);
      if (auth === 'scram-sha-256') assert.equal(c.conninfo, `host=127.0.0.1 port=${to.pg.port} dbname=pgddb user=pgd_replication sslmode=verify-ca sslrootcert=${state}/root.crt passfile=${state}/passfile`);
      const ok = await psql(c.conninfo, WHO);
      assert.ok(ok.ok, `${auth} ${from.name} -> ${to.name}: ${ok.error}`);
      assert.equal(ok.stdout, 'pgd_replication ssl=true');
      const repl = await psql(`${c.conninfo} replication=database`, 'IDENTIFY_SYSTEM');
      assert.ok(repl.ok, `${auth}: a replication connection (hba database "replication"): ${repl.error}`);

      const other = await psql(editConninfo(c.conninfo, { host: '::1' }), WHO);
      assert.equal(other.ok, false, 'another address');
      const plain = await psql(editConninfo(c.conninfo, { sslmode: 'disable', sslrootcert: null, sslcert: null, sslkey: null }), WHO);
      assert.equal(plain.ok, false, 'plaintext');
      if (auth === 'cert') {
        assert.equal((await lstat(`${state}/bdr_client.key`)).mode & 0o777, 0o600);
        const none = await psql(editConninfo(c.conninfo, { sslcert: '/nonexistent.crt', sslkey: '/nonexistent.key' }), WHO);
        assert.equal(none.ok, false, 'no certificate');
      }
      if (auth === 'scram-sha-256') {
        const wrong = `${state}/passfile.wrong`;
        await copyFile(`${state}/passfile`, wrong);
        await writeFile(wrong, (await readFile(wrong, 'utf8')).replace(/:[^:\n]+$/gm, ':wrong-password'), { mode: 0o600 });
        await chown(wrong, from.pg.osUser.uid, from.pg.osUser.gid);
        const r = await psql(editConninfo(c.conninfo, { passfile: wrong }), WHO);
        assert.equal(r.ok, false, 'wrong password');
        assert.match(r.error, /password authentication failed for user "pgd_replication"/);
      }
    }
  }
});
