// Pure checks of the apply engine: the validation views compared with what was rendered, the
// key owner/mode rule, verifiers, CRL validity.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { renderHbaBlock, renderIdentBlock } from '../../shared/pgconf/render.ts';
import { scramVerifier } from '../../shared/crypto/scram.ts';
import type { HbaRow, IdentRow, FileSettingRow } from '../../agent/apply/pgconf.ts';
import { tcpHostFor } from '../../agent/apply/pgconf.ts';
import { checkVerifiers, keepsPassword } from '../../agent/apply/roles.ts';
import { checkCrl, checkFileSettings, checkHbaRows, checkIdentRows, keyModeProblem, tokenizeConfLine } from '../../agent/apply/verify.ts';
import { makeCa, makeCrl } from '../helpers/agent-certs.ts';

const block = renderHbaBlock({
  cluster: 'c',
  localRole: 'postgres',
  rules: [
    { type: 'hostssl', databases: [{ keyword: 'all' }, { keyword: 'replication' }], users: [{ name: 'pgd_replication' }], address: '10.0.0.12/32', method: 'cert' },
    { type: 'hostssl', databases: [{ name: 'all' }], users: [{ name: 'a,b' }], address: '2001:db8::1/128', method: 'scram-sha-256' },
  ],
  managedRoles: ['pgd_replication'],
});

/** The rows PostgreSQL 15 shows for `block` (as observed on a real server). */
function goodRows(): HbaRow[] {
  return [
    { line_number: 4, type: 'local', database: ['all'], user_name: ['postgres'], address: null, netmask: null, auth_method: 'peer', options: ['map=pgaccord_local'], error: null },
    { line_number: 5, type: 'hostssl', database: ['all', 'replication'], user_name: ['pgd_replication'], address: '10.0.0.12', netmask: '255.255.255.255', auth_method: 'cert', options: ['clientcert=verify-full'], error: null },
    { line_number: 6, type: 'hostssl', database: ['all'], user_name: ['a,b'], address: '2001:db8::1', netmask: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', auth_method: 'scram-sha-256', options: null, error: null },
    { line_number: 8, type: 'host', database: ['all', 'replication'], user_name: ['pgd_replication'], address: 'all', netmask: null, auth_method: 'reject', options: null, error: null },
    { line_number: 12, type: 'local', database: ['all'], user_name: ['all'], address: null, netmask: null, auth_method: 'trust', options: null, error: null },
  ];
}

test('the tokenizer reads our quoting back', () => {
  assert.deepEqual(tokenizeConfLine('hostssl all,"replication" "a,b","x""y" 10.0.0.1/32 cert # c'), [['hostssl'], ['all', 'replication'], ['a,b', 'x"y'], ['10.0.0.1/32'], ['cert']]);
  assert.deepEqual(tokenizeConfLine('local all "postgres" peer map=pgaccord_local'), [['local'], ['all'], ['postgres'], ['peer'], ['map=pgaccord_local']]);
});

test('pg_hba_file_rules that match the rendered block pass (operator rows below are not ours)', () => {
  assert.deepEqual(checkHbaRows(goodRows(), block, { sslTurningOn: false, file: 'pg_hba.conf' }), []);
});

test('a line that lost its row, a row we did not write, a changed user or address are mismatches', () => {
  const missing = goodRows().filter((r) => r.line_number !== 5);
  assert.match(checkHbaRows(missing, block, { sslTurningOn: false, file: 'f' })[0]!.message, /line 5: PostgreSQL has no rule for a line we wrote/);
  const extra = [...goodRows(), { ...goodRows()[0]!, line_number: 7, auth_method: 'trust' }];
  assert.match(checkHbaRows(extra, block, { sslTurningOn: false, file: 'f' })[0]!.message, /line 7: a rule PostgreSQL sees that we did not write/);
  const user = goodRows();
  user[1]!.user_name = ['pgd_replicatio'];
  assert.equal(checkHbaRows(user, block, { sslTurningOn: false, file: 'f' })[0]!.code, 'E_HBA_MISMATCH');
  const addr = goodRows();
  addr[1]!.netmask = '255.255.255.0';
  assert.match(checkHbaRows(addr, block, { sslTurningOn: false, file: 'f' })[0]!.message, /address 10\.0\.0\.12\/255\.255\.255\.0 instead of 10\.0\.0\.12\/32/);
});

test('PostgreSQL errors are reported with its own message; "SSL is disabled" only tolerated while ssl is being turned on', () => {
  const rows = goodRows();
  rows[1]!.error = 'hostssl record cannot match because SSL is disabled';
  assert.deepEqual(checkHbaRows(rows, block, { sslTurningOn: true, file: 'f' }), []);
  assert.equal(checkHbaRows(rows, block, { sslTurningOn: false, file: 'f' })[0]!.message, 'f line 5: hostssl record cannot match because SSL is disabled');
  const op = goodRows();
  op[4]!.error = 'invalid CIDR mask in address "10.0.0.0/33"';
  assert.deepEqual(checkHbaRows(op, block, { sslTurningOn: false, file: 'f' }).map((p) => p.code), ['E_HBA_INVALID']);
});

test('pg_ident_file_mappings against the rendered ident block', () => {
  const ident = renderIdentBlock({ cluster: 'c', localRole: 'postgres', localOsUsers: ['root', 'postgres'], lines: [{ map: 'pgautofailover', systemUser: 'postgres', databaseUser: 'autoctl_node' }] });
  const rows: IdentRow[] = [
    { line_number: 3, map_name: 'pgaccord_local', sys_name: 'postgres', pg_username: 'postgres', error: null },
    { line_number: 4, map_name: 'pgaccord_local', sys_name: 'root', pg_username: 'postgres', error: null },
    { line_number: 5, map_name: 'pgautofailover', sys_name: 'postgres', pg_username: 'autoctl_node', error: null },
  ];
  assert.deepEqual(checkIdentRows(rows, ident, 'i'), []);
  assert.equal(checkIdentRows(rows.slice(0, 2), ident, 'i')[0]!.code, 'E_IDENT_MISMATCH');
});

test('pg_file_settings: restart-only changes are pending, errors are errors, our settings must win', () => {
  const inc = '/d/pgaccord.conf';
  const row = (o: Partial<FileSettingRow>): FileSettingRow => ({ sourcefile: inc, sourceline: 1, seqno: 1, name: 'ssl', setting: 'on', applied: true, error: null, context: 'sighup', ...o });
  const ok = checkFileSettings([row({}), row({ name: 'pgaccord.config_hash', context: null })], inc, ['ssl', 'pgaccord.config_hash']);
  assert.deepEqual(ok, { problems: [], needRestart: [] });
  const pending = checkFileSettings([row({}), row({ name: 'pgaccord.config_hash' }), row({ name: 'max_connections', applied: false, error: 'setting could not be applied', context: 'postmaster' })], inc, ['ssl', 'pgaccord.config_hash', 'max_connections']);
  assert.deepEqual(pending, { problems: [], needRestart: ['max_connections'] });
  // pg_autoctl's own postmaster settings, changed in its own file: neither a problem nor ours to wait for
  const theirs = checkFileSettings([row({}), row({ name: 'pgaccord.config_hash' }), row({ sourcefile: '/d/postgresql-auto-failover.conf', name: 'port', applied: false, error: 'parameter "port" cannot be changed without restarting the server', context: 'postmaster' }), row({ sourcefile: '/d/postgresql.auto.conf', name: 'recovery_target_timeline', applied: false, error: 'setting could not be applied', context: 'postmaster' })], inc, ['ssl', 'pgaccord.config_hash']);
  assert.deepEqual(theirs, { problems: [], needRestart: [] });
  const overridden = checkFileSettings([row({ applied: false }), row({ name: 'pgaccord.config_hash' }), row({ sourcefile: '/d/postgresql.auto.conf', sourceline: 3, seqno: 9, setting: 'off' })], inc, ['ssl', 'pgaccord.config_hash']);
  assert.deepEqual(overridden.problems.map((p) => p.code), ['E_SETTING_OVERRIDDEN']);
  assert.match(overridden.problems[0]!.message, /ssl from \/d\/pgaccord\.conf is overridden by \/d\/postgresql\.auto\.conf line 3/);
  const broken = checkFileSettings([row({ name: null, error: 'syntax error', sourceline: 7 })], inc, []);
  assert.deepEqual(broken.problems.map((p) => p.message), ['/d/pgaccord.conf line 7: syntax error']);
  assert.equal(checkFileSettings([], inc, ['ssl']).problems[0]!.code, 'E_SETTINGS_NOT_READ');
});

test('the private key rule of PostgreSQL and libpq', () => {
  const pg = 114;
  assert.equal(keyModeProblem('k', { uid: pg, mode: 0o100600 }, pg), null);
  assert.equal(keyModeProblem('k', { uid: pg, mode: 0o100400 }, pg), null);
  assert.equal(keyModeProblem('k', { uid: 0, mode: 0o100640 }, pg), null);
  assert.match(keyModeProblem('k', { uid: pg, mode: 0o100640 }, pg)!.message, /mode 0640/);
  assert.equal(keyModeProblem('k', { uid: pg, mode: 0o100604 }, pg)!.code, 'E_KEY_PERMISSIONS');
  assert.equal(keyModeProblem('k', { uid: 0, mode: 0o100644 }, pg)!.code, 'E_KEY_PERMISSIONS');
  assert.equal(keyModeProblem('k', { uid: 1234, mode: 0o100600 }, pg)!.code, 'E_KEY_PERMISSIONS');
});

test('verifiers: malformed ones are refused before any SQL; passwords are kept only where a rule still uses one', () => {
  const good = scramVerifier('x', Buffer.alloc(16, 3));
  assert.deepEqual(checkVerifiers([{ name: 'r', login: true, replication: false, inRoles: [], verifier: good }]), []);
  for (const bad of ['hunter2', 'SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA', `${good} `, 'md5d41d8cd98f00b204e9800998ecf8427e']) {
    const p = checkVerifiers([{ name: 'r', login: true, replication: false, inRoles: [], verifier: bad }]);
    assert.equal(p[0]?.code, 'E_BAD_VERIFIER', bad);
    assert.ok(!p[0]!.message.includes(bad), 'the value is never echoed');
  }
  assert.equal(keepsPassword('app', [{ type: 'hostssl', databases: [{ keyword: 'all' }], users: [{ name: 'app' }], address: '10.0.0.0/8', method: 'scram-sha-256' }]), true);
  assert.equal(keepsPassword('app', [{ type: 'hostssl', databases: [{ keyword: 'all' }], users: [{ keyword: 'all' }], address: '10.0.0.0/8', method: 'md5' }]), true);
  assert.equal(keepsPassword('app', [{ type: 'hostssl', databases: [{ keyword: 'all' }], users: [{ name: 'app' }], address: '10.0.0.0/8', method: 'cert' }]), false);
});

test('CRLs: nextUpdate in the past is refused (it would break every client-certificate login)', async () => {
  const ca = await makeCa();
  try {
    const crl = await makeCrl(ca, 1);
    assert.deepEqual(checkCrl(crl, ca.certPem, new Date()), []);
    assert.deepEqual(checkCrl(crl, ca.certPem, new Date(Date.now() + 2 * 3600_000)).map((p) => p.code), ['E_CRL_EXPIRED']);
    assert.deepEqual(checkCrl('garbage', ca.certPem, new Date()).map((p) => p.code), ['E_CRL_INVALID']);
    // A CRL signed by another CA would break every certificate login just the same: refused.
    const stranger = await makeCa('stranger');
    try {
      assert.deepEqual(checkCrl(crl, stranger.certPem, new Date()).map((p) => p.code), ['E_CRL_SIGNATURE']);
    } finally {
      await stranger.destroy();
    }
  } finally {
    await ca.destroy();
  }
});

test('the TCP address used to prove the served certificate', () => {
  assert.equal(tcpHostFor('*'), '127.0.0.1');
  assert.equal(tcpHostFor('10.0.0.5, 127.0.0.1'), '10.0.0.5');
  assert.equal(tcpHostFor('::'), '::1');
  assert.equal(tcpHostFor(''), null);
});
