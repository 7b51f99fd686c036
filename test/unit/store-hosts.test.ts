// The store's multi-host URLs (pure): what node-postgres cannot parse is split into one
// single-host URL per host, target_session_attrs is taken out and checked, and the errors that
// mean the store (not the statement) failed are told apart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { acceptanceQuery, asStoreError, isStoreFailure, parseStoreTargets, StoreUnavailableError } from '../../coordinator/store/store-hosts.ts';

const urls = (s: string) => parseStoreTargets({ connectionString: s }).hosts.map((h) => [h.name, h.config.connectionString]);

test('a host list becomes one URL per host, in order, credentials and parameters kept, target_session_attrs taken out', () => {
  const t = parseStoreTargets({ connectionString: 'postgresql://pgaccord:s3cr%40t@10.0.0.1:5432,10.0.0.2:5433,[::1]/store?sslmode=verify-full&target_session_attrs=read-write&application_name=x' });
  assert.equal(t.attrs, 'read-write');
  assert.deepEqual(t.hosts.map((h) => [h.name, h.config.connectionString]), [
    ['10.0.0.1:5432', 'postgresql://pgaccord:s3cr%40t@10.0.0.1:5432/store?sslmode=verify-full&application_name=x'],
    ['10.0.0.2:5433', 'postgresql://pgaccord:s3cr%40t@10.0.0.2:5433/store?sslmode=verify-full&application_name=x'],
    ['[::1]', 'postgresql://pgaccord:s3cr%40t@[::1]/store?sslmode=verify-full&application_name=x'],
  ]);
  // The names (used in logs and messages) never carry the password.
  for (const h of t.hosts) assert.doesNotMatch(h.name, /s3cr/);
});

test('one host, a socket URL or a ClientConfig: one target, unchanged; read-write by default, primary and any on request', () => {
  assert.deepEqual(urls('postgres://u@db.example:6432/x'), [['db.example:6432', 'postgres://u@db.example:6432/x']]);
  const socket = 'postgresql://postgres@/coord?host=%2Ftmp%2Fsock&port=5999';
  assert.deepEqual(urls(socket), [['/tmp/sock', socket]]);
  assert.equal(parseStoreTargets({ connectionString: socket }).attrs, 'read-write');
  const cfg = { host: '/run/pg', port: 5432, user: 'postgres', database: 'pgaccord' };
  assert.deepEqual(parseStoreTargets(cfg), { attrs: 'read-write', hosts: [{ name: '/run/pg:5432', config: cfg }] });
  assert.equal(parseStoreTargets({ connectionString: 'postgresql://a,b/x?target_session_attrs=primary' }).attrs, 'primary');
  assert.equal(parseStoreTargets({ connectionString: 'postgresql://a/x?target_session_attrs=any' }).attrs, 'any');
  assert.equal(acceptanceQuery('any'), null);
  assert.match(acceptanceQuery('read-write')!, /transaction_read_only/);
  assert.match(acceptanceQuery('primary')!, /pg_is_in_recovery/);
});

test('refused: a session kind the coordinator cannot write through, an empty or malformed host entry, a list with host=', () => {
  for (const attrs of ['read-only', 'standby', 'prefer-standby', 'bogus']) {
    assert.throws(() => parseStoreTargets({ connectionString: `postgresql://a,b/x?target_session_attrs=${attrs}` }), /target_session_attrs=.* does not fit/);
  }
  assert.throws(() => parseStoreTargets({ connectionString: 'postgresql://a,,b/x' }), /"" in the host list/);
  assert.throws(() => parseStoreTargets({ connectionString: 'postgresql://a,b:99x/x' }), /"b:99x" in the host list/);
  assert.throws(() => parseStoreTargets({ connectionString: 'postgresql://a,b/x?host=%2Ftmp' }), /ambiguous/);
});

test('store failures (connection lost or refused, shutdown, read-only) become E_STORE_UNAVAILABLE; statement errors stay as they are', () => {
  const pgErr = (code: string) => Object.assign(new Error(`server said ${code}`), { code });
  for (const e of [pgErr('08006'), pgErr('57P01'), pgErr('57P03'), pgErr('25006'), pgErr('ECONNREFUSED'), new Error('Connection terminated unexpectedly')]) {
    assert.ok(isStoreFailure(e), e.message);
    const coded = asStoreError(e) as StoreUnavailableError;
    assert.ok(coded instanceof StoreUnavailableError);
    assert.equal(coded.status, 503);
    assert.equal(coded.code, 'E_STORE_UNAVAILABLE');
    assert.equal(coded.detail, e.message); // for the log; the message sent to clients says nothing of the server
    assert.doesNotMatch(coded.message, /server said|Connection terminated/);
  }
  for (const e of [pgErr('23505'), pgErr('40001'), pgErr('42P01'), new Error('boom'), null, 'text']) {
    assert.equal(isStoreFailure(e), false);
    assert.equal(asStoreError(e), e);
  }
});
