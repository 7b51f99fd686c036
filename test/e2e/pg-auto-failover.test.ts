// pg_auto_failover with the real pg_autoctl (Debian pg-auto-failover-cli +
// postgresql-15-auto-failover), following the walkthrough in docs/profiles.md step by step with
// a real coordinator and a real agent process per node (run as postgres, as the systemd unit
// does): agents started on empty PGDATA directories before pg_autoctl create, the monitor and two
// postgres nodes created with --skip-pg-hba and the seed's certificate options (CRL included)
// pointing at the files the agents installed, each node its own "machine" (its own state
// directory, its own HOME given to the agent as --client-home). Proves: the formation reaches
// primary + secondary, `pgaccord status --wait` passes, replication runs over TLS under
// certificate auth (CN postgres through the pgautofailover ident map), and `pg_autoctl perform
// switchover` succeeds and `pgaccord status --wait` passes again.
import assert from 'node:assert/strict';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, stat, writeFile, chown } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { test } from 'node:test';
import { probe } from '../../agent/probe/probes.ts';
import { LocalCluster } from '../../bin/local-cluster.ts';
import { freePort, ownedDir, serverOsUser, type OsUser } from '../../shared/system/pgserver.ts';
import type { ClusterStatusResponse } from '../../shared/contract/api.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import { waitFor as waitUntil } from '../helpers/wait.ts';

const run = promisify(execFile);
const PG_BIN = '/usr/lib/postgresql/15/bin';
const AUTOCTL = existsSync(join(PG_BIN, 'pg_autoctl')) ? join(PG_BIN, 'pg_autoctl') : 'pg_autoctl';

interface Node {
  name: string;
  kind: 'monitor' | 'postgres';
  port: number;
  dir: string;
  pgdata: string;
  stateDir: string;
  home: string;
  proc: ChildProcess | null;
}

const osUser = await serverOsUser();
const procs: ChildProcess[] = [];

function envFor(n: Node): NodeJS.ProcessEnv {
  return {
    HOME: n.home,
    XDG_CONFIG_HOME: join(n.home, '.config'),
    XDG_DATA_HOME: join(n.home, '.local/share'),
    XDG_RUNTIME_DIR: join(n.dir, 'run'),
    PATH: `${PG_BIN}:/usr/bin:/bin`,
    PGHOST: '/var/run/postgresql',
    LANG: 'C.UTF-8',
    LC_ALL: 'C.UTF-8',
  };
}

const asServerUser = process.getuid?.() === 0 && osUser.uid !== 0 ? { uid: osUser.uid, gid: osUser.gid } : {};

async function autoctl(n: Node, args: string[], timeoutMs = 120_000): Promise<{ stdout: string; stderr: string }> {
  try {
    return await run(AUTOCTL, args, { env: envFor(n), cwd: n.dir, ...asServerUser, timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 });
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string; message: string };
    throw new Error(`pg_autoctl ${args.slice(0, 2).join(' ')} failed: ${err.message}\n${err.stderr ?? ''}`);
  }
}

function startRun(n: Node): void {
  const child = spawn(AUTOCTL, ['run', '--pgdata', n.pgdata], { env: envFor(n), cwd: n.dir, ...asServerUser, stdio: ['ignore', 'ignore', 'ignore'], detached: true });
  n.proc = child;
  procs.push(child);
}

async function stopAll(nodes: Node[]): Promise<void> {
  for (const n of [...nodes].reverse()) {
    if (existsSync(join(n.pgdata, 'postmaster.pid')) || n.proc) await autoctl(n, ['stop', '--pgdata', n.pgdata], 60_000).catch(() => undefined);
  }
  await new Promise((r) => setTimeout(r, 500));
  for (const p of procs) {
    if (p.exitCode === null && p.pid !== undefined) {
      try {
        process.kill(-p.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }
  for (const n of nodes) {
    if (existsSync(join(n.pgdata, 'postmaster.pid'))) {
      await run(join(PG_BIN, 'pg_ctl'), ['stop', '-m', 'immediate', '-D', n.pgdata], { ...asServerUser, env: envFor(n) }).catch(() => undefined);
    }
  }
}

/** pg_autoctl is slow to ask: once a second. */
const waitFor = <T>(what: string, fn: () => Promise<T | null>, timeoutMs = 90_000): Promise<T> => waitUntil(what, fn, timeoutMs, 1000);

/** A query through psql as the postgres OS user over the socket: the agent's anti-lockout rule admits exactly that (peer). */
async function sql<R>(n: Node, text: string, database = 'postgres'): Promise<R[]> {
  const { stdout } = await run(join(PG_BIN, 'psql'), ['-XAtq', '-h', '/var/run/postgresql', '-p', String(n.port), '-U', 'postgres', '-d', database, '-c', `SELECT coalesce(json_agg(q), '[]') FROM (${text}) q`], { ...asServerUser, env: envFor(n) });
  return JSON.parse(stdout) as R[];
}

/** initdb (by pg_autoctl) trusts every host connection from loopback: keep only the local socket lines, so only pgaccord's rules admit TCP. */
async function localOnlyHba(n: Node): Promise<void> {
  const path = join(n.pgdata, 'pg_hba.conf');
  const st = await stat(path);
  await writeFile(path, '# test: operator lines, local socket only\nlocal all all trust\nlocal replication all trust\n', { mode: 0o600 });
  await chown(path, st.uid, st.gid);
}

interface StateRow {
  nodename: string;
  current_group_state: string;
  assigned_group_state: string;
}

async function formationState(mon: Node): Promise<StateRow[]> {
  const { stdout } = await autoctl(mon, ['show', 'state', '--pgdata', mon.pgdata, '--json'], 30_000);
  return JSON.parse(stdout) as StateRow[];
}

async function waitPrimarySecondary(mon: Node, what: string): Promise<StateRow[]> {
  return waitFor(what, async () => {
    const rows = await formationState(mon);
    const settled = rows.length === 2 && rows.every((r) => r.current_group_state === r.assigned_group_state);
    const states = rows.map((r) => r.current_group_state).sort();
    return settled && states[0] === 'primary' && states[1] === 'secondary' ? rows : null;
  }, 180_000);
}

/** `pgaccord status pgaf --wait`, as a user runs it: every node converged, every probe ok. */
async function statusWait(cluster: LocalCluster, what: string): Promise<ClusterStatusResponse> {
  const r = await cluster.cli(['status', 'pgaf', '--wait', '--timeout', '180']);
  assert.equal(r.code, 0, `${what}: pgaccord status pgaf --wait exited ${r.code}\n${r.stdout}\n${r.stderr}`);
  return cluster.status('pgaf');
}

for (const auth of ['cert', 'scram-sha-256'] as const) {
  test(`pg_auto_failover walkthrough (${auth}): coordinator + agents, monitor + 2 nodes, --skip-pg-hba, verify-full on pgaccord files, switchover`, { timeout: 900_000 }, () => walkthrough(auth));
}

async function walkthrough(auth: 'cert' | 'scram-sha-256'): Promise<void> {
  const T = await mkdtemp('/tmp/pgaccord-pgaf-');
  const cluster = await LocalCluster.create({ dir: T });
  const method = auth === 'cert' ? 'cert map=pgautofailover' : 'scram-sha-256';
  const ports = [await freePort(), await freePort(), await freePort()];
  const defs: [string, 'monitor' | 'postgres'][] = [['mon', 'monitor'], ['node1', 'postgres'], ['node2', 'postgres']];
  const spec: ClusterSpec = {
    name: 'pgaf',
    profile: 'pg-auto-failover',
    auth,
    tls: { sslmode: 'verify-full' },
    nodes: defs.map(([name, kind], i) => ({ name, host: '127.0.0.1', address: '127.0.0.1', port: ports[i]!, kind })),
  };
  const nodes: Node[] = [];
  for (const [i, [name, kind]] of defs.entries()) {
    const dir = join(T, name);
    await ownedDir(dir, osUser, 0o711);
    const home = join(dir, 'home');
    await ownedDir(home, osUser, 0o700);
    await ownedDir(join(dir, 'run'), osUser, 0o700);
    nodes.push({ name, kind, port: ports[i]!, dir, pgdata: join(dir, 'pgdata'), stateDir: join(dir, 'state'), home, proc: null });
  }
  const [mon, n1, n2] = nodes as [Node, Node, Node];

  try {
    // Step 1: the spec, read first with --dry-run, then applied.
    await cluster.startCoordinator();
    const specFile = join(T, 'pgaf.json');
    await writeFile(specFile, JSON.stringify(spec));
    const dry = await cluster.cli(['apply', '-f', specFile, '--dry-run']);
    assert.equal(dry.code, 0, dry.stderr);
    assert.ok(dry.stdout.includes(`hostssl "pg_auto_failover" "autoctl_node" 127.0.0.1/32 ${method}`), dry.stdout);
    if (auth === 'cert') assert.match(dry.stdout, /pgautofailover +"postgres" +"pgautofailover_replicator"/);
    assert.match(dry.stdout, /ssl_crl_file = \/var\/lib\/pgaccord\/server\/root\.crl/);
    const applied = await cluster.cli(['apply', '-f', specFile]);
    assert.equal(applied.code, 0, applied.stderr);

    // Step 2: an empty PGDATA and an agent per node, as postgres, before any pg_autoctl create.
    // No --pg-port: the agent finds the server in PGDATA/postmaster.pid when it appears.
    for (const n of nodes) {
      await ownedDir(n.pgdata, osUser, 0o700);
      await cluster.spawnAgent('pgaf', n.name, { stateDir: n.stateDir, args: ['--pgdata', n.pgdata, '--client-home', n.home], user: osUser, env: { ...process.env, HOME: n.home } });
    }
    const S = (n: Node) => join(n.stateDir, 'server');
    for (const n of nodes) {
      // The CRL is there from the cluster's first generation: --ssl-crl-file can be given at create.
      // cert: the client certificate CN postgres; scram: the passwords in ~/.pgpass, as the seed recommends.
      const client = auth === 'cert' ? ['.postgresql/postgresql.crt', '.postgresql/postgresql.key'] : ['.pgpass'];
      await waitFor(`${n.name}: TLS material and client credentials installed`, async () =>
        ['server.pem', 'root.crt', 'root.crl'].every((f) => existsSync(join(S(n), f))) && [...client, '.postgresql/root.crt', '.postgresql/root.crl'].every((f) => existsSync(join(n.home, f))) ? true : null, 60_000);
      assert.equal((await stat(join(n.home, client.at(-1)!))).mode & 0o777, 0o600);
      assert.equal((await stat(join(n.home, '.postgresql'))).mode & 0o777, 0o700);
      assert.equal((await stat(join(S(n), 'server.pem'))).mode & 0o777, 0o600);
    }
    const before = await cluster.status('pgaf');
    for (const row of before.nodes) assert.ok(row.errors.some((e) => e.code === 'E_PG_CONNECT' || e.code === 'E_WRONG_SERVER'), `${row.node} reports that its server is not there yet: ${JSON.stringify(row.errors)}`);
    const ssl = (n: Node) => ['--ssl-mode', 'verify-full', '--ssl-ca-file', join(S(n), 'root.crt'), '--ssl-crl-file', join(S(n), 'root.crl'), '--server-cert', join(S(n), 'server.pem'), '--server-key', join(S(n), 'server.pem')];

    // Step 3: the monitor: create, keep only the local lines of initdb's HBA, run; its agent applies.
    await autoctl(mon, ['create', 'monitor', '--pgdata', mon.pgdata, '--pgport', String(mon.port), '--hostname', '127.0.0.1', '--skip-pg-hba', ...ssl(mon)]);
    await localOnlyHba(mon);
    startRun(mon);
    await cluster.waitNodeConverged('pgaf', 'mon', 120_000); // its row in pgaccord status: applied and proved
    const monitorUri = `postgres://autoctl_node@127.0.0.1:${mon.port}/pg_auto_failover?sslmode=verify-full`;

    // Step 4: node1 registers with the monitor over TLS with ~/.postgresql/postgresql.crt.
    const createNode = (n: Node) => autoctl(n, ['create', 'postgres', '--pgdata', n.pgdata, '--pgport', String(n.port), '--hostname', '127.0.0.1', '--name', n.name, '--skip-pg-hba', ...ssl(n), '--monitor', monitorUri], 300_000);
    await createNode(n1);
    await localOnlyHba(n1);
    startRun(n1);
    await cluster.waitNodeConverged('pgaf', 'node1', 120_000);

    // Step 5: node2: pg_basebackup from node1 over TLS as pgautofailover_replicator (cert, CN
    // postgres); its pg_hba.conf, pg_ident.conf and pgaccord.conf are copies of node1's until its
    // agent re-applies. Then the whole cluster converges, every probe included.
    await createNode(n2);
    startRun(n2);
    const first = await waitPrimarySecondary(mon, 'primary + secondary');
    const converged = await statusWait(cluster, 'after node2 joined');
    const primaryName = first.find((r) => r.current_group_state === 'primary')!.nodename;
    const primary = primaryName === n1.name ? n1 : n2;
    const standby = primary === n1 ? n2 : n1;

    // Step 6: replication over TLS under certificate auth.
    const repl = await waitFor('a streaming standby', async () => {
      const rows = await sql<{ usename: string; ssl: boolean; version: string; client_dn: string }>(primary, 'SELECT usename, ssl, version, client_dn FROM pg_stat_replication JOIN pg_stat_ssl USING (pid)');
      return rows.length > 0 ? rows : null;
    });
    assert.deepEqual(repl.map((r) => [r.usename, r.ssl, r.client_dn]), [['pgautofailover_replicator', true, auth === 'cert' ? '/CN=postgres' : null]]);
    assert.match(repl[0]!.version, /^TLSv1\.[23]$/);
    // ...and the managed rule is the only way in over TCP for the replicator: the managed rules
    // (cert map=pgautofailover, or scram-sha-256) and the reject line; the operator part is local-only.
    const rules = await sql<{ type: string; auth_method: string; options: string[] | null }>(primary, "SELECT type, auth_method, options FROM pg_hba_file_rules WHERE 'pgautofailover_replicator' = ANY(user_name) OR 'all' = ANY(user_name)");
    assert.deepEqual(rules.filter((r) => r.type !== 'local').map((r) => `${r.type} ${r.auth_method} ${(r.options ?? []).join(',')}`).sort(), ['host reject ', auth === 'cert' ? 'hostssl cert map=pgautofailover,clientcert=verify-full' : 'hostssl scram-sha-256 ']);
    // The replicator pg_autoctl found already existing keeps SUPERUSER (pg_rewind needs it).
    const [role] = await sql<{ rolsuper: boolean; rolreplication: boolean }>(primary, "SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = 'pgautofailover_replicator'");
    assert.deepEqual(role, { rolsuper: true, rolreplication: true });

    // The agents' probes connect exactly as pg_autoctl does (only sslrootcert/sslcrl named; the
    // certificate from ~/.postgresql of the node's HOME), over TLS, and all passed.
    const probes = converged.nodes.flatMap((row) => row.probes.map((p) => ({ from: row.node, ...p })));
    assert.ok(probes.length >= 4, `probes: ${JSON.stringify(probes)}`);
    for (const p of probes) {
      assert.doesNotMatch(p.conninfo, /sslcert|sslkey|passfile/);
      assert.match(p.conninfo, /sslmode=verify-full/);
      assert.ok(p.ok && p.tlsVersion, `${p.from} -> ${p.to} as ${p.role}: ${p.error} (${p.conninfo})`);
    }
    // A client without the node's credentials (no certificate, no ~/.pgpass) is refused by the same rule.
    const noCert: OsUser = { ...osUser, home: join(T, 'nobody-home') };
    await ownedDir(noCert.home, osUser);
    const refused = await probe({ to: 'mon', role: 'autoctl_node', replication: false, conninfo: `host=127.0.0.1 port=${mon.port} dbname=pg_auto_failover user=autoctl_node sslmode=require` }, { osUser: noCert });
    assert.equal(refused.ok, false);

    // Step 7: switchover: exit status and show state, not "ERROR" text (see docs/profiles.md).
    await autoctl(mon, ['perform', 'switchover', '--pgdata', mon.pgdata, '--formation', 'default', '--group', '0'], 300_000);
    const second = await waitPrimarySecondary(mon, 'primary + secondary after switchover');
    assert.equal(second.find((r) => r.current_group_state === 'primary')!.nodename, standby.name, 'the standby became the primary');
    // pg_rewind copied the new primary's pg_hba/pg_ident/pgaccord.conf to the old primary and the
    // agents re-apply; pg_autoctl's own settings left pending a restart (its port,
    // recovery_target_timeline) do not hold pgaccord's status back.
    const after = await statusWait(cluster, 'after the switchover');
    for (const row of after.nodes) assert.deepEqual([row.node, row.phase, row.pendingRestart, row.errors], [row.node, 'converged', [], []]);
    const repl2 = await waitFor('streaming after switchover', async () => {
      const rows = await sql<{ ssl: boolean; client_dn: string }>(standby, 'SELECT ssl, client_dn FROM pg_stat_replication JOIN pg_stat_ssl USING (pid)');
      return rows.length > 0 ? rows : null;
    });
    assert.deepEqual(repl2.map((r) => [r.ssl, r.client_dn]), [[true, auth === 'cert' ? '/CN=postgres' : null]]);
  } finally {
    await stopAll(nodes);
    await cluster.close();
  }
}
