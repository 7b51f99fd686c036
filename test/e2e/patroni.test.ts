// Profile `patroni` with the real Debian packages (patroni 3.0, etcd-server/etcd-client 3.4),
// following the README walkthrough: a coordinator, one etcd (client TLS, client certificates
// required, trusting the cluster CA; 127.0.0.80), three Patroni members on loopback (127.0.0.81-83), each
// with a pgaccord agent run as postgres, started before Patroni on an empty PGDATA. Patroni runs
// as postgres on a configuration directory: the operator's patroni.yml and a link to the agent's
// fragment (restapi/ctl/etcd3 TLS, the replication and rewind users' TLS files or passwords).
// Proves, once with `auth: cert` and once with `auth: scram-sha-256`, `sslmode: verify-full`:
// bootstrap; replicas stream over TLS as replicator under the managed rule; patronictl list over
// verified HTTPS with the client certificate; a client without one is refused
// (verify_client: required); after a renewal of the short certificates the REST API serves the
// new serial while Patroni's PID and pg_postmaster_start_time() stay; switchover; a failover
// whose old primary rejoins through pg_rewind as rewind_user.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { request } from 'node:https';
import { join } from 'node:path';
import { test } from 'node:test';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { LocalCluster } from '../../bin/local-cluster.ts';
import { freePort, ownedDir, serverOsUser } from '../../shared/system/pgserver.ts';
import { certInfo } from '../../shared/crypto/x509.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import { findPatroni, servedApiCertificate } from '../../agent/apply/patroni.ts';
import { makeCa } from '../helpers/agent-certs.ts';
import { concatFiles, etcdServerPair, killGroup, list, patronictl, PG_BIN, sql, startEtcd, startPatroni, waitFor, writeOperatorConfig, type Member } from '../helpers/patroni.ts';

const run = promisify(execFile);
const have = ['patroni', 'patronictl', 'etcd', 'etcdctl'].every((b) => ['/usr/bin', '/usr/local/bin'].some((d) => existsSync(join(d, b))));
const osUser = await serverOsUser();
const ETCD_HOST = '127.0.0.80';
const HOSTS = ['127.0.0.81', '127.0.0.82', '127.0.0.83'];

for (const auth of ['cert', 'scram-sha-256'] as const) {
  test(`patroni walkthrough (${auth}): etcd over mTLS, 3 members, streaming over TLS, patronictl over mTLS, renewal without restart, switchover, failover with pg_rewind`, { timeout: 420_000, skip: have ? false : 'patroni/etcd not installed (.ci/setup installs them)' }, () => walkthrough(auth));
}

/** GET over HTTPS with the cluster CA (and, when given, a client certificate): the status code, or the error. */
function apiGet(m: Member, ca: string, clientPem: string | null): Promise<number | Error> {
  return new Promise((resolve) => {
    const req = request({ host: m.host, port: m.apiPort, path: '/patroni', method: 'GET', ca, ...(clientPem ? { cert: clientPem, key: clientPem } : {}), timeout: 5000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', (e) => resolve(e));
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.end();
  });
}

/** The last lines of each log, on stderr, for a failure CI must explain without its files. */
async function dumpTails(auth: string, files: string[], lines = 60): Promise<void> {
  for (const f of files) {
    const text = await readFile(f, 'utf8').catch((e: Error) => `(unreadable: ${e.message})`);
    process.stderr.write(`# patroni ${auth}: --- last ${lines} lines of ${f}\n${text.split('\n').slice(-lines).map((l) => `#   ${l}`).join('\n')}\n`);
  }
}

async function walkthrough(auth: 'cert' | 'scram-sha-256'): Promise<void> {
  const t0 = Date.now();
  const lap = (what: string) => process.stderr.write(`# patroni ${auth}: ${what} at ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  const T = await mkdtemp('/tmp/pgaccord-patroni-');
  if (process.env.PGACCORD_TEST_KEEP === '1') process.stderr.write(`# patroni ${auth}: working directory ${T}\n`);
  await ownedDir(T, osUser, 0o711);
  const cluster = await LocalCluster.create({ dir: T });
  const etcdCa = await makeCa('etcd test CA');
  const members: Member[] = [];
  let etcd: Awaited<ReturnType<typeof startEtcd>> | null = null;
  try {
    for (const [i, host] of HOSTS.entries()) {
      const dir = join(T, `m${i + 1}`);
      await ownedDir(dir, osUser, 0o711);
      const m: Member = {
        name: `m${i + 1}`, host, pgPort: await freePort(), apiPort: await freePort(), dir,
        pgdata: join(dir, 'pgdata'), stateDir: join(dir, 'state'), home: join(dir, 'home'), confDir: join(dir, 'patroni.d'),
        runDir: join(dir, 'run'), logDir: join(dir, 'pglog'), proc: null, log: join(dir, 'patroni.log'),
      };
      for (const d of [m.home, m.confDir, m.runDir, m.logDir]) await ownedDir(d, osUser, 0o700);
      members.push(m);
    }
    const [m1, m2, m3] = members as [Member, Member, Member];
    const spec: ClusterSpec = {
      name: 'pat', profile: 'patroni', auth, tls: { sslmode: 'verify-full', certLifetime: '2m' },
      // a loopback client connects from 127.0.0.1 whatever address it dials: that is where HBA sees it
      nodes: members.map((m) => ({ name: m.name, host: m.host, address: '127.0.0.1', port: m.pgPort, kind: 'member' })),
    };

    // Step 1: the spec, read with --dry-run (the fragment per member), then applied.
    await cluster.startCoordinator();
    const specFile = join(T, 'pat.json');
    await writeFile(specFile, JSON.stringify(spec));
    const dry = await cluster.cli(['apply', '-f', specFile, '--dry-run']);
    assert.equal(dry.code, 0, dry.stderr);
    assert.match(dry.stdout, /patroni\/pgaccord\.yml \(0600.*\): Patroni configuration fragment:\n\s+# Written by the pgaccord agent for pat\/m1/);
    assert.match(dry.stdout, /verify_client: "required"/);
    assert.match(dry.stdout, new RegExp(`hostssl\\s+"postgres"\\s+"rewind_user"\\s+127\\.0\\.0\\.1/32\\s+${auth}`));
    assert.doesNotMatch(dry.stdout, /password: "(?!<)/);
    const applied = await cluster.cli(['apply', '-f', specFile]);
    assert.equal(applied.code, 0, applied.stderr);

    // Step 2: an agent per member, as postgres, on an empty PGDATA, before Patroni: it installs
    // the TLS material, the client files and the fragment Patroni needs to start.
    for (const m of members) {
      await ownedDir(m.pgdata, osUser, 0o700);
      await cluster.spawnAgent('pat', m.name, { stateDir: m.stateDir, args: ['--pgdata', m.pgdata, '--client-home', m.home], user: osUser, env: { ...process.env, HOME: m.home } });
    }
    const P = (m: Member, f: string) => join(m.stateDir, 'patroni', f);
    /**
     * `leader` leads and both others stream from it. Not yet: a throw naming what patronictl and
     * pg_stat_replication said, so a timeout says where the cluster was stuck.
     */
    const streamingFrom = async (leader: Member) => {
      const rows = await list(m1, osUser);
      const senders = await sql<{ application_name: string; state: string }>(leader, osUser, 'SELECT application_name, state FROM pg_stat_replication');
      const replicas = rows.filter((r) => r.Member !== leader.name && r.Role === 'Replica' && r.State === 'running');
      if (rows.find((r) => r.Member === leader.name)?.Role === 'Leader' && replicas.length === 2 && senders.length === 2) return rows;
      throw new Error(`patronictl list ${JSON.stringify(rows.map((r) => [r.Member, r.Role, r.State, r.TL]))}, ${leader.name}'s walsenders ${JSON.stringify(senders)}`);
    };
    for (const m of members) {
      const files = ['api.pem', 'client.pem', 'pgaccord.yml', 'root.crt', 'root.crl', ...(auth === 'cert' ? ['replicator.crt', 'replicator.key', 'rewind_user.crt', 'rewind_user.key'] : ['passfile'])].map((f) => P(m, f));
      await waitFor(`${m.name}: Patroni material installed`, async () => (files.every((f) => existsSync(f)) && existsSync(join(m.stateDir, 'server', 'server.pem')) ? true : null), 60_000);
    }
    lap('material installed');
    const caBundle = await readFile(P(m1, 'root.crt'), 'utf8');

    // Step 3: etcd, its server certificate from its own CA, client certificates checked against the
    // cluster CA (and its own CA: etcd's gateway presents etcd's certificate to etcd).
    const etcdPair = await etcdServerPair(etcdCa, ETCD_HOST, join(T, 'etcd-tls'));
    const trusted = await concatFiles(join(T, 'etcd-trusted.crt'), [P(m1, 'root.crt'), etcdCa.certPath]);
    etcd = await startEtcd({ dir: join(T, 'etcd'), host: ETCD_HOST, clientPort: await freePort(), peerPort: await freePort(), ...etcdPair, trustedCa: trusted });
    const etcdUrl = etcd.url;
    await waitFor('etcd healthy over mTLS', async () => {
      await run('etcdctl', ['--endpoints', etcdUrl, '--cacert', etcdCa.certPath, '--cert', P(m1, 'client.pem'), '--key', P(m1, 'client.pem'), 'endpoint', 'health'], { env: { ETCDCTL_API: '3', PATH: process.env.PATH }, timeout: 10_000 });
      return true;
    }, 30_000);
    // the CA of etcd's server certificate, readable by Patroni (the operator's, not pgaccord's)
    const etcdCaFile = join(T, 'etcd-ca.crt');
    await writeFile(etcdCaFile, etcdCa.certPem, { mode: 0o644 });
    for (const m of members) await writeOperatorConfig(m, { scope: 'pat', etcdHost: etcdUrl.replace('https://', ''), etcdCa: etcdCaFile, user: osUser });

    // Step 4: the first member bootstraps; its agent applies (include line in postgresql.base.conf,
    // rules, reload with ssl on, verifiers under scram) and proves the REST API certificate.
    startPatroni(m1, osUser);
    await waitFor('m1 leader', async () => ((await list(m1, osUser)).some((r) => r.Member === 'm1' && r.Role === 'Leader' && r.State === 'running') ? true : null), 90_000);
    await cluster.waitNodeConverged('pat', 'm1', 90_000);
    lap('m1 bootstrapped and converged');
    assert.match(await readFile(join(m1.pgdata, 'postgresql.base.conf'), 'utf8'), /^include 'pgaccord.conf'$/m);
    assert.doesNotMatch(await readFile(join(m1.pgdata, 'postgresql.conf'), 'utf8'), /include 'pgaccord.conf'/);

    // Step 5: the other two: pg_basebackup from m1 over TLS as replicator.
    startPatroni(m2, osUser);
    startPatroni(m3, osUser);
    const listed = await waitFor('a leader and two streaming replicas', async () => {
      const rows = await list(m1, osUser);
      return rows.length === 3 && rows.filter((r) => r.Role === 'Replica' && r.State === 'running').length === 2 ? rows : null;
    }, 120_000);
    assert.deepEqual(listed.map((r) => r.Member).sort(), ['m1', 'm2', 'm3']);
    const converged = await cluster.cli(['status', 'pat', '--wait', '--timeout', '120']);
    assert.equal(converged.code, 0, `${converged.stdout}\n${converged.stderr}`);
    lap('3 members streaming, pgaccord status --wait ok');

    // Replication over TLS as replicator, admitted by the managed rule (CN replicator under cert).
    const repl = await waitFor('two TLS walsenders', async () => {
      const rows = await sql<{ usename: string; ssl: boolean; version: string; client_dn: string | null }>(m1, osUser, 'SELECT usename, ssl, version, client_dn FROM pg_stat_replication JOIN pg_stat_ssl USING (pid)');
      return rows.length === 2 ? rows : null;
    });
    for (const r of repl) assert.deepEqual([r.usename, r.ssl, r.client_dn], ['replicator', true, auth === 'cert' ? '/CN=replicator' : null]);
    const conninfo = await sql<{ c: string }>(m2, osUser, "SELECT current_setting('primary_conninfo') AS c");
    assert.match(conninfo[0]!.c, /sslmode=verify-full/);
    assert.match(conninfo[0]!.c, auth === 'cert' ? /sslcert=\S+\/patroni\/replicator\.crt/ : /passfile=\S+\/patroni\/pgpass/);

    // patronictl list went over verified HTTPS with the client certificate (above); the REST
    // API refuses a client without one (verify_client: required) and answers one with it.
    const clientPem = await readFile(P(m1, 'client.pem'), 'utf8');
    assert.equal(await apiGet(m2, caBundle, clientPem), 200);
    const refused = await apiGet(m2, caBundle, null);
    assert.ok(refused instanceof Error, `without a client certificate: ${String(refused)}`);
    // ...and one whose certificate another CA signed (etcd's own pair: clientAuth, but not the cluster CA's)
    const foreign = `${await readFile(etcdPair.certFile, 'utf8')}${await readFile(etcdPair.keyFile, 'utf8')}`;
    const refusedForeign = await apiGet(m2, caBundle, foreign);
    assert.ok(refusedForeign instanceof Error, `with a certificate of another CA: ${String(refusedForeign)}`);

    // Renewal of the short certificates: the REST API serves the new serial; Patroni and PostgreSQL keep running.
    const pid0 = await findPatroni(P(m3, 'pgaccord.yml'), osUser.uid);
    assert.ok(pid0 !== null && pid0 === m3.proc!.pid, `the Patroni including m3's fragment (${pid0}) is the one the test started`);
    const [{ t: start0 }] = await sql<{ t: string }>(m3, osUser, 'SELECT pg_postmaster_start_time()::text AS t');
    const serial0 = (await servedApiCertificate({ host: m3.host, port: m3.apiPort }, { pem: clientPem, ca: caBundle })).serial;
    const renewed = await waitFor('m3 REST API serving a renewed certificate', async () => {
      const served = await servedApiCertificate({ host: m3.host, port: m3.apiPort }, { pem: await readFile(P(m3, 'client.pem'), 'utf8'), ca: caBundle });
      return served.serial !== serial0 ? served : null;
    }, 150_000, 1000);
    assert.equal(renewed.serial, certInfo(await readFile(P(m3, 'api.pem'), 'utf8')).serial, 'the serial served is the one on disk');
    assert.equal(await findPatroni(P(m3, 'pgaccord.yml'), osUser.uid), pid0, 'Patroni was not restarted');
    const [{ t: start1 }] = await sql<{ t: string }>(m3, osUser, 'SELECT pg_postmaster_start_time()::text AS t');
    assert.equal(start1, start0, 'PostgreSQL was not restarted');
    lap(`REST API renewed (${serial0} -> ${renewed.serial})`);

    // Switchover from the leader to another member. The leader is read, not assumed to be m1:
    // with a short TTL, Patroni may fail over on its own before this point (CI once found m3
    // leading on timeline 2 here, and asked m1 to switch over for 180 s). Such a change is
    // written to the test's output with Patroni's history, so it can be told apart from pgaccord's.
    const before = await list(m1, osUser);
    const from = members.find((m) => m.name === before.find((r) => r.Role === 'Leader')?.Member);
    assert.ok(from, `a leader before the switchover: ${JSON.stringify(before)}`);
    if (from !== m1) lap(`unplanned leader change before the switchover: ${from.name} leads; patronictl history ${(await patronictl(m1, osUser, ['history', '-f', 'json'])).stdout.trim()}`);
    const to = from === m2 ? m3 : m2;
    // patronictl exits 0 when Patroni refuses a switchover ("Switchover failed, details: 412, ...
    // no good candidates have been found": the leader could not fetch the candidate's REST API
    // status in time, as on a loaded machine or while its Patroni reloads a renewed certificate).
    // CI once waited 120 s for a switchover that had been refused: each attempt must be
    // accepted, or it is asked again.
    const switched = await waitFor(`a switchover ${from.name} -> ${to.name} that Patroni accepts`, async () => {
      const { stdout } = await patronictl(m1, osUser, ['switchover', '--leader', from.name, '--candidate', to.name, '--force'], 120_000);
      if (stdout.includes(`Successfully switched over to "${to.name}"`) || (await list(m1, osUser)).some((r) => r.Member === to.name && r.Role === 'Leader')) return stdout;
      throw new Error(`patronictl switchover: ${stdout.split('\n').find((l) => /failed|unknown|not possible/i.test(l)) ?? stdout.trim()}`);
    }, 180_000, 2000);
    lap(`switchover accepted: ${switched.split('\n').find((l) => /switched over/i.test(l))?.trim() ?? `${to.name} is the leader`}`);
    const others = members.filter((m) => m !== to).map((m) => m.name).join(' and ');
    await waitFor(`${to.name} leader, ${others} streaming from it`, () => streamingFrom(to), 120_000);
    // Patroni rewrote the demoted member's postgresql.conf (its recovery parameters live there):
    // an include line there would be gone. pgaccord's, in postgresql.base.conf, still sets ssl on every member.
    assert.match(await readFile(join(from.pgdata, 'postgresql.conf'), 'utf8'), /primary_conninfo/);
    for (const m of members) {
      const [row] = await sql<{ setting: string; sourcefile: string }>(m, osUser, "SELECT setting, sourcefile FROM pg_settings WHERE name = 'ssl'");
      assert.deepEqual([m.name, row!.setting, row!.sourcefile], [m.name, 'on', join(m.pgdata, 'pgaccord.conf')]);
    }
    lap('switchover done');

    // Failover: the leader's Patroni dies; its PostgreSQL, still a primary, takes writes the new
    // leader never sees; stopped, restarted under Patroni, it must rejoin through pg_rewind as rewind_user.
    const lost = to;
    killGroup(lost.proc, 'SIGKILL');
    await waitFor(`${lost.name} Patroni gone`, async () => (lost.proc!.exitCode !== null || lost.proc!.signalCode !== null ? true : null), 10_000);
    const [newLeader] = await waitFor(`a new leader other than ${lost.name}`, async () => {
      const rows = await list(m1, osUser);
      const l = rows.filter((r) => r.Role === 'Leader' && r.Member !== lost.name && r.State === 'running');
      return l.length === 1 ? l.map((r) => members.find((m) => m.name === r.Member)!) : null;
    }, 90_000);
    await run(join(PG_BIN, 'psql'), ['-XAtq', '-h', lost.runDir, '-p', String(lost.pgPort), '-U', 'postgres', '-d', 'postgres', '-c', 'CREATE TABLE diverged AS SELECT g FROM generate_series(1, 10000) g'], { uid: osUser.uid, gid: osUser.gid });
    await run(join(PG_BIN, 'pg_ctl'), ['stop', '-m', 'fast', '-D', lost.pgdata], { uid: osUser.uid, gid: osUser.gid, env: { PATH: `${PG_BIN}:/usr/bin:/bin` } });
    startPatroni(lost, osUser);
    await waitFor(`${lost.name} back as a replica, streaming from the new leader`, () => streamingFrom(newLeader!), 120_000);
    const patroniLog = await readFile(lost.log, 'utf8');
    // pg_rewind ran with the fragment's rewind credentials, over verify-full, and rewound a real divergence
    assert.match(patroniLog, /running pg_rewind from dbname=postgres user=rewind_user host=\S+ port=\d+ sslmode=verify-full/);
    assert.match(patroniLog, /pg_rewind exit code=0/);
    assert.match(patroniLog, /servers diverged at WAL location/);
    // ...and the new leader admitted it over TLS (pgaccord's own probes carry application_name=pgaccord-probe)
    const leaderLog = await readFile(join(newLeader!.logDir, 'postgresql.log'), 'utf8');
    assert.match(leaderLog, /connection authorized: user=rewind_user database=postgres SSL enabled \(protocol=TLSv1\.[23]/);
    lap(`failover to ${newLeader!.name}, ${lost.name} rewound as rewind_user`);
    const after = await cluster.cli(['status', 'pat', '--wait', '--timeout', '120']);
    assert.equal(after.code, 0, `${after.stdout}\n${after.stderr}`);
    lap('converged again');
  } catch (e) {
    // CI keeps no working directory: what Patroni, PostgreSQL and the agents last said goes to stderr
    await dumpTails(auth, [...members.flatMap((m) => [m.log, join(m.logDir, 'postgresql.log'), join(T, `agent-${m.name}.log`)])]);
    throw e;
  } finally {
    for (const m of members) killGroup(m.proc, 'SIGTERM');
    await waitFor('Patroni stopped', async () => (members.every((m) => m.proc === null || m.proc.exitCode !== null || m.proc.signalCode !== null) ? true : null), 30_000).catch(() => undefined);
    for (const m of members) {
      killGroup(m.proc, 'SIGKILL');
      if (existsSync(join(m.pgdata, 'postmaster.pid'))) await run(join(PG_BIN, 'pg_ctl'), ['stop', '-m', 'immediate', '-D', m.pgdata], { uid: osUser.uid, gid: osUser.gid }).catch(() => undefined);
    }
    killGroup(etcd?.proc ?? null, 'SIGKILL');
    // PGACCORD_TEST_KEEP=1 keeps the working directory (agent, coordinator, Patroni, etcd and PostgreSQL logs)
    await cluster.close({ keep: process.env.PGACCORD_TEST_KEEP === '1' });
    await etcdCa.destroy();
  }
}
