// One passwd look-up (shared/system/passwd.ts) for the agent (who owns PGDATA, by uid) and the server
// helpers (postgres, the store's user, by name): getent's line parsed once, the entry checked
// to be the one asked for.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parsePasswdLine, passwdEntry } from '../../shared/system/passwd.ts';
import { lookupOsUser } from '../../shared/system/pgserver.ts';
import { lookupUid } from '../../agent/apply/privileges.ts';

test('a passwd line: name, uid, gid, home (an empty home is /); a garbled line is no entry', () => {
  assert.deepEqual(parsePasswdLine('postgres:x:104:110:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n'), { name: 'postgres', uid: 104, gid: 110, home: '/var/lib/postgresql' });
  assert.deepEqual(parsePasswdLine('svc:x:900:901:::/usr/sbin/nologin'), { name: 'svc', uid: 900, gid: 901, home: '/' });
  assert.equal(parsePasswdLine('svc:x:abc:901::/:/bin/sh'), null);
  assert.equal(parsePasswdLine('svc:x:900'), null);
  assert.equal(parsePasswdLine(''), null);
});

test('by name and by uid against the real passwd database', async () => {
  assert.deepEqual(await passwdEntry('root'), { name: 'root', uid: 0, gid: 0, home: '/root' });
  assert.deepEqual(await passwdEntry(0), { name: 'root', uid: 0, gid: 0, home: '/root' });
  assert.equal(await passwdEntry('no-such-user-pgaccord'), null);
  assert.equal(await passwdEntry(2_000_000_123), null);
  assert.deepEqual(await lookupOsUser('root'), { name: 'root', uid: 0, gid: 0, home: '/root' });
  assert.deepEqual(await lookupUid(0, 99), { name: 'root', uid: 0, gid: 0, home: '/root' });
  assert.deepEqual(await lookupUid(2_000_000_123, 77), { name: '2000000123', uid: 2_000_000_123, gid: 77, home: '/' });
});

test('a name that getent reads as a uid is not that user: "0" is not root', async () => {
  assert.equal(await passwdEntry('0'), null);
  await assert.rejects(lookupOsUser('0'), /OS user "0" does not exist/);
});
