// End to end, streaming profile: a standby cloned with pg_basebackup through the credentials the
// agent installed streams from the primary over TLS with certificate auth (seed 004's own
// check), and its agent re-applies the node's own state over what the clone copied.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, mkdtemp, rm } from 'node:fs/promises';
import { LocalCluster } from '../../bin/local-cluster.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import { runPg } from '../../shared/system/pgserver.ts';
import { query } from '../helpers/pg.ts';
import { waitFor } from '../helpers/wait.ts';
import { editConninfo } from '../helpers/libpq.ts';

test('a standby built with pg_basebackup through the managed credentials streams over TLS', async () => {
  const cluster = await LocalCluster.create({ dir: await mkdtemp('/tmp/pgaccord-e2e-streaming-') });
  after(() => cluster.close());
  await cluster.startCoordinator();
  const primary = await cluster.addNode('primary', '127.0.0.21');
  const standby = await cluster.addNode('standby', '127.0.0.22');
  const spec: ClusterSpec = {
    name: 'repl', profile: 'streaming', auth: 'cert', tls: { sslmode: 'verify-full', certLifetime: '30d' },
    nodes: [
      { name: 'primary', host: primary.host, address: '127.0.0.1', port: primary.pg.port, kind: 'primary' },
      { name: 'standby', host: standby.host, address: '127.0.0.1', port: standby.pg.port, kind: 'standby' },
    ],
  };
  assert.equal((await cluster.apply(spec)).code, 0);
  await cluster.startAgent('repl', 'primary');
  await cluster.startAgent('repl', 'standby');
  let status = await cluster.waitConverged('repl', 120_000);
  const probe = status.nodes.find((n) => n.node === 'standby')!.probes.find((p) => p.to === 'primary');
  assert.ok(probe?.ok, `standby -> primary probe: ${probe?.error}`);
  assert.match(probe!.conninfo, /sslmode=verify-full/);

  // Rebuild the standby from the primary with exactly the connection string the agent reports.
  await cluster.stopAgent('standby');
  await standby.pg.stop();
  await rm(standby.pg.dataDir, { recursive: true, force: true });
  await runPg('pg_basebackup', ['-d', editConninfo(probe!.conninfo, { replication: null }), '-D', standby.pg.dataDir, '-R', '-X', 'stream', '-c', 'fast'], standby.pg.osUser);
  // The clone carries the primary's own instance settings; give the standby back its own.
  await appendFile(standby.pg.dataDir + '/postgresql.conf', `\nlisten_addresses = '${standby.pg.listen}'\nport = ${standby.pg.port}\nunix_socket_directories = '${standby.pg.socketDir}'\n`);
  await standby.pg.start();
  await cluster.startAgent('repl', 'standby');
  status = await cluster.waitConverged('repl', 120_000);

  const [inRecovery] = await query<{ r: boolean }>(standby.pg, 'SELECT pg_is_in_recovery() AS r');
  assert.equal(inRecovery!.r, true, 'the clone is a standby');
  const rows = await waitFor('a walsender on the primary', async () => {
    const r = await query<{ ssl: boolean; usename: string }>(primary.pg, 'SELECT ssl, usename FROM pg_stat_ssl JOIN pg_stat_replication USING (pid)');
    return r.length > 0 ? r : null;
  }, 30_000, 500);
  assert.deepEqual(rows, [{ ssl: true, usename: 'replicator' }], 'walreceiver streams over TLS as the managed role');
  const hba = await query<{ type: string; database: string[]; user_name: string[]; auth_method: string }>(primary.pg,
    "SELECT type, database, user_name, auth_method FROM pg_hba_file_rules WHERE auth_method IN ('cert', 'scram-sha-256')");
  assert.deepEqual(hba, [{ type: 'hostssl', database: ['replication', 'postgres'], user_name: ['replicator'], auth_method: 'cert' }]);
  // The standby serves its own certificate again, not the one the clone copied from the primary.
  const served = status.nodes.find((n) => n.node === 'standby')!.servedCertificate;
  const primaryServed = status.nodes.find((n) => n.node === 'primary')!.servedCertificate;
  assert.ok(served && primaryServed && served.serial !== primaryServed.serial);

  // The connection string is now the standby's primary_conninfo. Renew the standby's client
  // certificate (new key, the old versioned files pruned) and make the walreceiver reconnect:
  // primary_conninfo names fixed files, so it reconnects with the new certificate.
  const before = status.nodes.find((n) => n.node === 'standby')!.certificates.find((c) => c.id === 'client-replicator')!;
  assert.equal((await cluster.cli(['cert', 'renew', 'repl', before.serial])).code, 0);
  const renewed = await waitFor('the standby holding a new client certificate', async () => {
    status = await cluster.status('repl');
    const c = status.nodes.find((n) => n.node === 'standby')!.certificates.find((x) => x.id === 'client-replicator') ?? before;
    return c.serial !== before.serial ? c : null;
  }, 60_000, 500);
  assert.notEqual(renewed.serial, before.serial, 'the standby holds a new client certificate');
  await cluster.waitConverged('repl', 120_000);
  await query(primary.pg, 'SELECT pg_terminate_backend(pid) FROM pg_stat_replication');
  const again = await waitFor('the walreceiver streaming again', async () => {
    const r = await query<{ ssl: boolean; serial: string }>(primary.pg,
      "SELECT ssl, client_serial::text AS serial FROM pg_stat_ssl JOIN pg_stat_replication USING (pid) WHERE state = 'streaming'");
    return r.length > 0 ? r : null;
  }, 30_000, 500);
  assert.equal(again.length, 1, 'the walreceiver reconnected after the renewal');
  assert.equal(again[0]!.ssl, true);
  assert.equal(BigInt(again[0]!.serial), BigInt(`0x${renewed.serial}`), 'with the renewed certificate, through the fixed names in primary_conninfo');

  // A standby is read-only: roles come to it by replication, never by its agent. With the
  // primary's agent stopped, a new role reaches only the standby's agent: it must converge
  // without trying CREATE ROLE (which a hot standby refuses).
  await cluster.stopAgent('primary');
  const put = await cluster.apply({ ...spec, roles: [{ name: 'app_reader' }] });
  assert.equal(put.code, 0, put.stderr);
  const gen = (await cluster.status('repl')).generation;
  const standbyRow = await cluster.waitNodeConverged('repl', 'standby', 60_000);
  assert.deepEqual([standbyRow.appliedGeneration, standbyRow.errors], [gen, []], 'the standby applies the generation without touching roles');
  assert.deepEqual(await query(standby.pg, "SELECT rolname FROM pg_roles WHERE rolname = 'app_reader'"), [], 'not there until the primary creates it');
  await cluster.startAgent('repl', 'primary');
  await cluster.waitConverged('repl', 120_000);
  const replicated = await waitFor('app_reader replicated to the standby', async () => {
    const r = await query(standby.pg, "SELECT rolname FROM pg_roles WHERE rolname = 'app_reader'");
    return r.length > 0 ? r : null;
  }, 30_000, 500);
  assert.equal(replicated.length, 1, 'created on the primary, replicated to the standby');

  // Scale down: the last standby leaves the spec. The primary, now alone, takes a state with no
  // inter-node rule (not refused as a wiped answer) and its replication rule goes.
  const alone = await cluster.apply({ ...spec, nodes: [spec.nodes[0]!], roles: [{ name: 'app_reader' }] });
  assert.equal(alone.code, 0, alone.stderr);
  const aloneGen = (await cluster.status('repl')).generation;
  const primaryRow = await cluster.waitNodeConverged('repl', 'primary', 60_000);
  assert.deepEqual([primaryRow.appliedGeneration, primaryRow.errors], [aloneGen, []]);
  assert.deepEqual(await query(primary.pg, "SELECT type FROM pg_hba_file_rules WHERE auth_method = 'cert'"), [], 'no replication rule left');
});
