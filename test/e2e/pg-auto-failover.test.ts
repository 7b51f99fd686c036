// pg_auto_failover with the real pg_autoctl (Debian pg-auto-failover-cli +
// postgresql-15-auto-failover): a monitor and two postgres nodes created with --skip-pg-hba and
// the seed's certificate options pointing at the files pgaccord manages, the apply engine
// applying a `pg-auto-failover` cert cluster on each, every node its own "machine" (its own
// state directory and its own HOME, so ~/.postgresql is per node). Proves: the formation reaches
// primary + secondary, replication runs over TLS under certificate auth (CN postgres through the
// pgautofailover ident map), the agent's probes connect exactly as pg_autoctl does, and
// `pg_autoctl perform switchover` succeeds and converges again.
import assert from 'node:assert/strict';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, stat, writeFile, chown } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, test } from 'node:test';
import pg from 'pg';
import { applyDesired, installMaterial } from '../../agent/apply.ts';
import { probe } from '../../agent/probes.ts';
import type { InstalledCertificate, NodeContext } from '../../agent/types.ts';
import { compileCluster } from '../../shared/compile.ts';
import { freePort, ownedDir, serverOsUser, type OsUser } from '../../shared/pgserver.ts';
import type { ClusterSpec, NodeDesired } from '../../shared/schema.ts';
import { issueLeaf, makeCa, makeCrl } from '../helpers/agent-certs.ts';
import { silentLogger } from '../helpers/agent-fixture.ts';

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
  ctx: NodeContext;
  desired: NodeDesired;
  certs: InstalledCertificate[];
  proc: ChildProcess | null;
}

const osUser = await serverOsUser();
const T = await mkdtemp('/tmp/pgaccord-pgaf-');
await ownedDir(T, osUser, 0o711);
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

async function waitFor<T>(what: string, fn: () => Promise<T | null>, timeoutMs = 90_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown = null;
  for (;;) {
    try {
      const v = await fn();
      if (v !== null) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function sql<R extends pg.QueryResultRow>(n: Node, text: string, database = 'postgres'): Promise<R[]> {
  const c = new pg.Client({ host: '/var/run/postgresql', port: n.port, user: 'postgres', database });
  await c.connect();
  try {
    return (await c.query<R>(text)).rows;
  } finally {
    await c.end();
  }
}

/** initdb (by pg_autoctl) trusts every host connection from loopback: keep only the local socket lines, so only pgaccord's rules admit TCP. */
async function localOnlyHba(n: Node): Promise<void> {
  const path = join(n.pgdata, 'pg_hba.conf');
  const st = await stat(path);
  await writeFile(path, '# test: operator lines, local socket only\nlocal all all trust\nlocal replication all trust\n', { mode: 0o600 });
  await chown(path, st.uid, st.gid);
}

async function apply(n: Node): Promise<void> {
  const r = await applyDesired(n.ctx, { desired: n.desired, certificates: n.certs });
  assert.equal(r.phase, 'converged', `${n.name}: ${JSON.stringify(r.errors)}`);
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

test('pg_auto_failover: monitor + 2 nodes, --skip-pg-hba, cert auth with verify-full on pgaccord files, switchover', { timeout: 900_000 }, async () => {
  const ca = await makeCa('pgaccord pgaf test CA');
  after(() => ca.destroy());
  const crl = await makeCrl(ca, 48);
  const ports = [await freePort(), await freePort(), await freePort()];
  const defs: [string, 'monitor' | 'postgres'][] = [['mon', 'monitor'], ['node1', 'postgres'], ['node2', 'postgres']];
  const spec: ClusterSpec = {
    name: 'pgaf',
    profile: 'pg-auto-failover',
    auth: 'cert',
    tls: { sslmode: 'verify-full' },
    nodes: defs.map(([name, kind], i) => ({ name, host: '127.0.0.1', address: '127.0.0.1', port: ports[i]!, kind })),
  };
  const compiled = compileCluster({ spec, generation: 1, credentials: {}, caBundle: ca.certPem, crl });
  const nodes: Node[] = [];
  for (const [i, [name, kind]] of defs.entries()) {
    const dir = join(T, name);
    await ownedDir(dir, osUser, 0o711);
    const home = join(dir, 'home');
    await ownedDir(home, osUser, 0o700);
    await ownedDir(join(dir, 'run'), osUser, 0o700);
    const stateDir = join(dir, 'state');
    const pgdata = join(dir, 'pgdata');
    const nodeUser: OsUser = { ...osUser, home };
    const desired = compiled.get(name)!;
    const tlsDir = join(stateDir, 'tls');
    const certs: InstalledCertificate[] = [];
    for (const slot of desired.certificates) {
      certs.push(await issueLeaf(ca, { slot: slot.id, commonName: slot.commonName, ips: slot.ipAddresses, dns: slot.dnsNames, usage: slot.usage, dir: tlsDir, owner: osUser }));
    }
    const ctx: NodeContext = { pgdata, pgHost: '/var/run/postgresql', pgPort: ports[i]!, pgUser: 'postgres', stateDir, serverOsUser: nodeUser, agentOsUser: userInfo().username, log: silentLogger() };
    nodes.push({ name, kind, port: ports[i]!, dir, pgdata, stateDir, home, ctx, desired, certs, proc: null });
  }
  const [mon, n1, n2] = nodes as [Node, Node, Node];

  // What the profile asks: one client certificate CN=postgres for every role, mapped by pgautofailover.
  assert.deepEqual(mon.desired.ident, [{ map: 'pgautofailover', systemUser: 'postgres', databaseUser: 'autoctl_node' }]);
  assert.deepEqual(n1.desired.certificates.map((c) => `${c.id}:${c.commonName}`), ['server:127.0.0.1', 'client-postgres:postgres']);
  assert.deepEqual(n1.desired.roles.map((r) => `${r.name}${r.superuser ? ' superuser' : ''}${r.external ? ' external' : ''}`), ['pgautofailover_replicator superuser', 'pgautofailover_monitor external']);

  try {
    // 1. Before any pg_autoctl create: the agent puts the TLS material and ~/.postgresql in place
    //    (the server does not exist yet, so that is all it can do).
    for (const n of nodes) {
      const r = await installMaterial(n.ctx, { desired: n.desired, certificates: n.certs });
      assert.deepEqual(r.errors, [], n.name);
      for (const f of ['postgresql.crt', 'postgresql.key', 'root.crt', 'root.crl']) assert.ok(existsSync(join(n.home, '.postgresql', f)), `${n.name}: ~/.postgresql/${f}`);
      assert.equal((await stat(join(n.home, '.postgresql', 'postgresql.key'))).mode & 0o777, 0o600);
      assert.equal((await stat(join(n.home, '.postgresql'))).mode & 0o777, 0o700);
      assert.equal((await stat(join(n.stateDir, 'server', 'server.pem'))).mode & 0o777, 0o600);
    }
    const ssl = (n: Node) => {
      const s = join(n.stateDir, 'server');
      return ['--ssl-mode', 'verify-full', '--ssl-ca-file', join(s, 'root.crt'), '--ssl-crl-file', join(s, 'root.crl'), '--server-cert', join(s, 'server.pem'), '--server-key', join(s, 'server.pem')];
    };

    // 2. Monitor: create, keep only local lines of initdb's HBA, run, apply.
    await autoctl(mon, ['create', 'monitor', '--pgdata', mon.pgdata, '--pgport', String(mon.port), '--hostname', '127.0.0.1', '--skip-pg-hba', ...ssl(mon)]);
    await localOnlyHba(mon);
    startRun(mon);
    await waitFor('the monitor postgres', async () => ((await sql(mon, 'SELECT 1 AS x', 'pg_auto_failover'))[0] ? true : null));
    await apply(mon);
    const monitorUri = `postgres://autoctl_node@127.0.0.1:${mon.port}/pg_auto_failover?sslmode=verify-full`;

    // 3. node1: create (registers with the monitor over TLS with ~/.postgresql/postgresql.crt), run, apply.
    const createNode = (n: Node) => autoctl(n, ['create', 'postgres', '--pgdata', n.pgdata, '--pgport', String(n.port), '--hostname', '127.0.0.1', '--name', n.name, '--skip-pg-hba', ...ssl(n), '--monitor', monitorUri], 300_000);
    await createNode(n1);
    await localOnlyHba(n1);
    startRun(n1);
    await waitFor('node1 single', async () => {
      const rows = await formationState(mon);
      return rows.length === 1 && rows[0]!.current_group_state === 'single' ? true : null;
    });
    await waitFor('node1 postgres', async () => ((await sql(n1, 'SELECT 1 AS x'))[0] ? true : null));
    await apply(n1);

    // 4. node2: pg_basebackup from node1 over TLS as pgautofailover_replicator (cert, CN postgres),
    //    then apply again: pg_hba.conf, pg_ident.conf and pgaccord.conf are copies of node1's.
    await createNode(n2);
    startRun(n2);
    await waitFor('node2 postgres', async () => ((await sql(n2, 'SELECT 1 AS x'))[0] ? true : null));
    await apply(n2);
    const first = await waitPrimarySecondary(mon, 'primary + secondary');
    const primaryName = first.find((r) => r.current_group_state === 'primary')!.nodename;
    const primary = primaryName === n1.name ? n1 : n2;
    const standby = primary === n1 ? n2 : n1;

    // 5. Replication over TLS under certificate auth.
    const repl = await waitFor('a streaming standby', async () => {
      const rows = await sql<{ usename: string; ssl: boolean; version: string; client_dn: string }>(primary, 'SELECT usename, ssl, version, client_dn FROM pg_stat_replication JOIN pg_stat_ssl USING (pid)');
      return rows.length > 0 ? rows : null;
    });
    assert.deepEqual(repl.map((r) => [r.usename, r.ssl, r.client_dn]), [['pgautofailover_replicator', true, '/CN=postgres']]);
    assert.match(repl[0]!.version, /^TLSv1\.[23]$/);
    // ...and certificate auth is the only way in over TCP for the replicator: the managed rules
    // (cert map=pgautofailover) and the reject line; the operator part is local-only.
    const rules = await sql<{ type: string; auth_method: string; options: string[] | null }>(primary, "SELECT type, auth_method, options FROM pg_hba_file_rules WHERE 'pgautofailover_replicator' = ANY(user_name) OR 'all' = ANY(user_name)");
    assert.deepEqual(rules.filter((r) => r.type !== 'local').map((r) => `${r.type} ${r.auth_method} ${(r.options ?? []).join(',')}`).sort(), ['host reject ', 'hostssl cert map=pgautofailover,clientcert=verify-full']);
    // The replicator pg_autoctl found already existing keeps SUPERUSER (pg_rewind needs it).
    const [role] = await sql<{ rolsuper: boolean; rolreplication: boolean }>(primary, "SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = 'pgautofailover_replicator'");
    assert.deepEqual(role, { rolsuper: true, rolreplication: true });

    // 6. The agent's probes connect exactly as pg_autoctl does (only sslrootcert/sslcrl named;
    //    the certificate from ~/.postgresql), from each node's own HOME.
    for (const n of nodes) {
      const r = await applyDesired(n.ctx, { desired: n.desired, certificates: n.certs });
      for (const c of r.clientConnections) {
        assert.doesNotMatch(c.conninfo, /sslcert|sslkey|passfile/);
        if (c.to === n.name) continue;
        if (n === standby && c.role === 'pgautofailover_replicator' && c.to !== primary.name) continue;
        const p = await probe(c, { osUser: n.ctx.serverOsUser });
        assert.equal(p.ok, true, `${n.name} -> ${c.to} as ${c.role}: ${p.error} (${c.conninfo})`);
        assert.ok(p.tlsVersion, 'over TLS');
      }
    }
    // A client without the certificate is refused: no HOME cert, same rule.
    const noCert: OsUser = { ...osUser, home: join(T, 'nobody-home') };
    await ownedDir(noCert.home, osUser);
    const refused = await probe({ to: 'mon', role: 'autoctl_node', replication: false, conninfo: `host=127.0.0.1 port=${mon.port} dbname=pg_auto_failover user=autoctl_node sslmode=require` }, { osUser: noCert });
    assert.equal(refused.ok, false);

    // 7. Switchover: exit status and show state, not "ERROR" text (see docs/profiles.md).
    await autoctl(mon, ['perform', 'switchover', '--pgdata', mon.pgdata, '--formation', 'default', '--group', '0'], 300_000);
    const second = await waitPrimarySecondary(mon, 'primary + secondary after switchover');
    // pg_rewind copied the new primary's pg_hba/pg_ident/pgaccord.conf to the old primary: apply
    // again on both (while pg_autoctl restarts a standby, a phase can be pending-restart for a moment).
    for (const n of [n1, n2]) {
      let lastResult = '';
      await waitFor(`${n.name} converged after switchover`, async () => {
        const r = await applyDesired(n.ctx, { desired: n.desired, certificates: n.certs });
        // pg_autoctl's own file can be left pending a restart after the switchover: its
        // recovery_target_timeline on the promoted node, and the `port` pg_rewind copied into the
        // old primary's postgresql-auto-failover.conf (pg_autoctl starts postgres with its own -p).
        // Reported as pending-restart; none of pgaccord's settings may be pending, nothing may be wrong.
        const onlyTheirs = r.pendingRestart.every((x) => x === 'recovery_target_timeline' || x === 'port');
        lastResult = JSON.stringify({ phase: r.phase, errors: r.errors, pending: r.pendingRestart });
        return r.errors.length === 0 && onlyTheirs && (r.phase === 'converged' || r.phase === 'pending-restart') ? true : null;
      }, 60_000).catch((e: Error) => {
        throw new Error(`${e.message}; last apply: ${lastResult}`);
      });
    }
    assert.equal(second.find((r) => r.current_group_state === 'primary')!.nodename, standby.name, 'the standby became the primary');
    const repl2 = await waitFor('streaming after switchover', async () => {
      const rows = await sql<{ ssl: boolean; client_dn: string }>(standby, 'SELECT ssl, client_dn FROM pg_stat_replication JOIN pg_stat_ssl USING (pid)');
      return rows.length > 0 ? rows : null;
    });
    assert.deepEqual(repl2.map((r) => [r.ssl, r.client_dn]), [[true, '/CN=postgres']]);
  } finally {
    await stopAll(nodes);
    await rm(T, { recursive: true, force: true });
  }
});
