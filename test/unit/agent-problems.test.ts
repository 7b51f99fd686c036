// One problem type on the agent side: every error class the apply engine and the runtime raise
// is a CodedError, so problemOf gives its own code (what the E_-prefix guess used to find) and
// anything else the caller's fallback; codes and messages as they were.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CodedError, problemOf } from '../../shared/contract/problem.ts';
import { ensureDirectory, InstallError } from '../../shared/system/atomic-file.ts';
import { RoleError } from '../../agent/apply/roles.ts';
import { PrivilegeError } from '../../agent/apply/privileges.ts';
import { CoordinatorError } from '../../agent/runtime/client.ts';

test('agent errors are CodedErrors: problemOf keeps their code and message, a plain error gets the fallback', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'pgaccord-problems-'));
  try {
    await symlink(tmpdir(), join(dir, 'link'));
    const e = await ensureDirectory(join(dir, 'link'), 0o700).then(() => null, (err: unknown) => err);
    assert.ok(e instanceof InstallError && e instanceof CodedError);
    assert.equal(problemOf(e, 'E_INSTALL').code, 'E_NOT_A_DIRECTORY');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  assert.deepEqual(problemOf(new RoleError('E_ROLE', 'roles: x'), 'E_APPLY'), { code: 'E_ROLE', message: 'roles: x' });
  const priv = new PrivilegeError('E_STATE_DIR', 'is a symlink');
  assert.deepEqual(problemOf(priv, 'E_X'), { code: 'E_STATE_DIR', message: 'E_STATE_DIR: is a symlink' }, 'its message still starts with its code');
  const coord = new CoordinatorError('E_HTTP', 'GET /x: HTTP 500', 500, { apiCode: 'E_SLOT' });
  assert.ok(coord instanceof CodedError);
  assert.deepEqual([coord.code, coord.status, coord.apiCode], ['E_HTTP', 500, 'E_SLOT']);
  const plain = Object.assign(new Error('EACCES: permission denied'), { code: 'EACCES' });
  assert.deepEqual(problemOf(plain, 'E_INSTALL'), { code: 'E_INSTALL', message: 'EACCES: permission denied' });
});
