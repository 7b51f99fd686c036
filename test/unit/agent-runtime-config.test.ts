// `pgaccord agent` configuration: flags over a YAML file (camelCase or kebab-case keys), clear
// errors naming what is wrong, defaults from PGDATA/postmaster.pid, and log redaction.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createLogger } from '../../shared/system/log.ts';
import { followPostmaster, readConfigFile, resolveConfig } from '../../agent/config.ts';
import { DEFAULT_STATE_DIR, DEFAULT_SOCKET_DIR } from '../../agent/options.ts';
import type { NodeContext } from '../../agent/apply/types.ts';
import { parseSslLine, scrubSecrets } from '../../agent/probe/probes.ts';
import { buildStatus } from '../../agent/runtime/status.ts';

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function fakePgdata(pid?: string): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'pgaccord-agent-cfg-'));
  dirs.push(d);
  await writeFile(join(d, 'PG_VERSION'), '15\n');
  if (pid) await writeFile(join(d, 'postmaster.pid'), pid);
  return d;
}

test('config: YAML keys in camelCase or kebab-case; flags win; defaults', async () => {
  const pgdata = await fakePgdata();
  const dir = await mkdtemp(join(tmpdir(), 'pgaccord-agent-cfg-'));
  dirs.push(dir);
  const file = join(dir, 'agent.yaml');
  await writeFile(file, `coordinator: https://coord.example.com:7432\nnode: sales/node-1\npgdata: ${pgdata}\npgPort: 5433\nstate-dir: /srv/pgaccord\nlogLevel: debug\n`);
  const fromFile = await readConfigFile(file);
  const cfg = resolveConfig({}, fromFile, file);
  assert.equal(cfg.coordinatorUrl, 'https://coord.example.com:7432');
  assert.equal(cfg.cluster, 'sales');
  assert.equal(cfg.node, 'node-1');
  assert.equal(cfg.pgPort, 5433);
  assert.equal(cfg.stateDir, '/srv/pgaccord');
  assert.equal(cfg.logLevel, 'debug');
  assert.equal(cfg.pgHost, DEFAULT_SOCKET_DIR);
  assert.equal(cfg.pgUser, 'postgres');
  const flagsWin = resolveConfig({ 'pg-port': '6000', node: 'other/node-9' }, fromFile);
  assert.equal(flagsWin.pgPort, 6000);
  assert.equal(flagsWin.node, 'node-9');
  const defaults = resolveConfig({}, { coordinator: 'https://c', node: 'a/b', pgdata });
  assert.equal(defaults.stateDir, DEFAULT_STATE_DIR);
  assert.equal(defaults.pgPort, 5432);
});

test('config: the local server is found through postmaster.pid', async () => {
  const pgdata = await fakePgdata('12345\n/var/lib/postgresql/15/main\n1700000000\n5544\n/run/pg-sock\n127.0.0.1\n  5544001    131074\nready   \n');
  const cfg = resolveConfig({ coordinator: 'https://c', node: 'a/b', pgdata }, {});
  assert.equal(cfg.pgHost, '/run/pg-sock');
  assert.equal(cfg.pgPort, 5544);
});

test('config: an agent started before its server follows postmaster.pid when it appears, unless told the port', async () => {
  const pgdata = await fakePgdata();
  const cfg = resolveConfig({ coordinator: 'https://c', node: 'a/b', pgdata }, {});
  assert.deepEqual(cfg.followPostmasterPid, { port: true, socketDir: true });
  const ctx = { pgdata, pgHost: cfg.pgHost, pgPort: cfg.pgPort, log: createLogger({ service: 'pgaccord-agent', level: 'silent' }) } as unknown as NodeContext;
  assert.equal(followPostmaster(ctx, cfg.followPostmasterPid), ctx, 'no server yet: unchanged');
  await writeFile(join(pgdata, 'postmaster.pid'), '12345\n/x\n1700000000\n6543\n/run/sock-b\n127.0.0.1\n');
  const moved = followPostmaster(ctx, cfg.followPostmasterPid);
  assert.deepEqual([moved.pgPort, moved.pgHost], [6543, '/run/sock-b']);
  const pinned = resolveConfig({ coordinator: 'https://c', node: 'a/b', pgdata, 'pg-port': '5999', 'pg-host': '/tmp' }, {});
  assert.deepEqual(pinned.followPostmasterPid, { port: false, socketDir: false });
  const pinnedCtx = { ...ctx, pgPort: 5999, pgHost: '/tmp' } as NodeContext;
  assert.equal(followPostmaster(pinnedCtx, pinned.followPostmasterPid), pinnedCtx, '--pg-port and --pg-host win over postmaster.pid');
});

test('config: bad input is refused with a message naming the option', async () => {
  const pgdata = await fakePgdata();
  const base = { coordinator: 'https://c', node: 'a/b', pgdata };
  const cases: [Record<string, string>, RegExp][] = [
    [{ ...base, coordinator: 'http://c' }, /--coordinator: must be https:\/\//],
    [{ ...base, coordinator: 'not a url' }, /--coordinator: "not a url" is not a URL/],
    [{ node: 'a/b', pgdata }, /--coordinator URL is required/],
    [{ ...base, node: 'sales' }, /--node: "sales" is not CLUSTER\/NODE/],
    [{ ...base, node: 'Sales/Node_1' }, /--node/],
    [{ ...base, pgdata: '/nonexistent/x' }, /--pgdata: \/nonexistent\/x is not a directory/],
    [{ ...base, 'pg-port': '70000' }, /--pg-port: "70000" is not a port number/],
    [{ ...base, 'log-level': 'loud' }, /--log-level: "loud" is not one of/],
    [{ ...base, 'join-token': 'pga1.!!' }, /--join-token: join token is not base64url/],
    [{ ...base, 'client-home': '/' }, /--client-home: "\/" is not a home directory/],
  ];
  for (const [flags, msg] of cases) assert.throws(() => resolveConfig(flags, {}), msg);
  // An existing but uninitialised PGDATA is accepted: pg_autoctl and others initialise it later.
  assert.equal(resolveConfig({ ...base, pgdata: tmpdir() }, {}).pgdata, tmpdir());
  assert.equal(resolveConfig(base, { 'client-home': '/srv/n1/../n1/home' }).clientHome, '/srv/n1/home');
  assert.equal(resolveConfig(base, {}).clientHome, undefined, 'default: the passwd home, looked up at start');
  const dir = await mkdtemp(join(tmpdir(), 'pgaccord-agent-cfg-'));
  dirs.push(dir);
  await writeFile(join(dir, 'a.yaml'), 'coordinator: https://c\nnodes: a/b\n');
  await assert.rejects(readConfigFile(join(dir, 'a.yaml')), /unknown key "nodes"/);
  await writeFile(join(dir, 'b.yaml'), '- a\n- b\n');
  await assert.rejects(readConfigFile(join(dir, 'b.yaml')), /must be a YAML mapping/);
  await writeFile(join(dir, 'c.yaml'), 'node: [a\n');
  await assert.rejects(readConfigFile(join(dir, 'c.yaml')), /not valid YAML/);
  await assert.rejects(readConfigFile(join(dir, 'missing.yaml')), /cannot read config file/);
});

test('logs: tokens, keys, passwords and client secrets are redacted', async () => {
  let out = '';
  const sink = new Writable({ write(chunk, _enc, cb) { out += chunk.toString(); cb(); } });
  const log = createLogger({ service: 'pgaccord-agent', level: 'info', destination: sink });
  log.info({ joinToken: 'pga1.SECRET1', token: 'SECRET2', config: { joinToken: 'SECRET3' }, desired: { clientSecrets: [{ role: 'r', password: 'SECRET4' }] }, keyPem: `-----BEGIN ${'PRIVATE'} KEY----- SECRET5` }, 'hello');
  await new Promise((r) => setImmediate(r));
  assert.match(out, /hello/);
  for (const s of ['SECRET1', 'SECRET2', 'SECRET3', 'SECRET4', 'SECRET5']) assert.ok(!out.includes(s), `${s} leaked: ${out}`);
});

test('probes: psql\'s SSL line is parsed; passwords never survive in text', () => {
  const text = 'You are connected to database "postgres" as user "replicator" on host "127.0.0.1" at port "5432".\nSSL connection (protocol: TLSv1.3, cipher: TLS_AES_256_GCM_SHA384, compression: off)\n';
  assert.deepEqual(parseSslLine(text), { tlsVersion: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384' });
  assert.deepEqual(parseSslLine('You are connected ... via socket'), { tlsVersion: null, cipher: null });
  assert.equal(scrubSecrets("host=a password='p w' user=b"), 'host=a password=*** user=b');
  assert.equal(scrubSecrets('host=a password=secret'), 'host=a password=***');
});

test('status: stale wins while the coordinator is unreachable; notes keep the phase', () => {
  const apply = { phase: 'converged' as const, changed: false, errors: [], files: [], pendingRestart: [], servedCertificate: null, clientConnections: [] };
  const base = { appliedGeneration: 3, apply, runtimeErrors: [], certificates: [], probes: [], coordinatorReachable: true, postgresVersion: '15.18' };
  assert.equal(buildStatus(base).phase, 'converged');
  assert.equal(buildStatus({ ...base, coordinatorReachable: false }).phase, 'stale');
  assert.equal(buildStatus({ ...base, runtimeErrors: [{ code: 'DRIFT_REPAIRED', message: 'x' }] }).phase, 'converged');
  assert.equal(buildStatus({ ...base, runtimeErrors: [{ code: 'E_DESIRED_GARBLED', message: 'x' }] }).phase, 'failed');
  assert.equal(buildStatus({ ...base, apply: null }).phase, 'unknown');
  assert.equal(buildStatus(base).versions.agent, '0.1.0');
});
