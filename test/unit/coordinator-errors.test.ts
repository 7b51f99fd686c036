// One problem type on both sides: the coordinator's coded errors are CodedErrors, so problemOf
// (what status reports and apply failures use) reads their code, not a fallback.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ApiError, badRequest } from '../../coordinator/errors.ts';
import { StoreUnavailableError } from '../../coordinator/store/store-hosts.ts';
import { CodedError, problemOf } from '../../shared/contract/problem.ts';

test('ApiError and StoreUnavailableError are CodedErrors: code, status and message kept, the detail only in the log field', () => {
  const e = badRequest('E_TTL', 'ttl: "x" is not a duration', [{ field: 'ttl', message: 'not a duration' }]);
  assert.ok(e instanceof CodedError && e instanceof ApiError);
  assert.deepEqual([e.status, e.code, e.message, e.errors], [400, 'E_TTL', 'ttl: "x" is not a duration', [{ field: 'ttl', message: 'not a duration' }]]);
  assert.deepEqual(problemOf(e, 'E_INTERNAL'), { code: 'E_TTL', message: 'ttl: "x" is not a duration' });
  const cause = new Error('connect ECONNREFUSED 10.0.0.1:5432');
  const s = new StoreUnavailableError('10.0.0.1:5432 refused', { cause });
  assert.ok(s instanceof CodedError && s instanceof ApiError);
  assert.deepEqual([s.status, s.code, s.detail, s.cause], [503, 'E_STORE_UNAVAILABLE', '10.0.0.1:5432 refused', cause]);
  assert.doesNotMatch(s.message, /10\.0\.0\.1/, 'the hosts stay out of the message clients get');
});
