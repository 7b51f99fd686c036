// The escaper against the real parser: arbitrary role and database names rendered into
// pg_hba.conf become exactly the rows PostgreSQL 15 reads, and never a trust row.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import fc from 'fast-check';
import { throwawayPg, query } from '../helpers/pg.ts';
import { renderHbaBlock } from '../../shared/pgconf/render.ts';
import type { HbaRule } from '../../shared/contract/schema.ts';

const name = fc.string({ unit: 'binary', minLength: 1, maxLength: 30 })
  .filter((s) => !/[\r\n\0]/.test(s) && Buffer.byteLength(s) <= 63);
// Names built from the characters that have meaning in pg_hba.conf
const nasty = fc.array(fc.constantFrom('a', ' ', '\t', ',', '#', '"', '+', '@', 'all', 'replication', 'trust', "'", '\\', '/', 'é'), { minLength: 1, maxLength: 8 })
  .map((parts) => parts.join('')).filter((s) => Buffer.byteLength(s) <= 63);

test('arbitrary identifiers: pg_hba_file_rules has exactly the rendered rows and no trust row', async () => {
  const pg = await throwawayPg();
  const [{ hba_file: hbaFile }] = await query<{ hba_file: string }>(pg, 'SHOW hba_file') as [{ hba_file: string }];
  let runs = 0;
  await fc.assert(fc.asyncProperty(fc.array(fc.tuple(fc.oneof(name, nasty), fc.oneof(name, nasty)), { minLength: 1, maxLength: 6 }), async (pairs) => {
    runs++;
    const rules: HbaRule[] = pairs.map(([user, database]) => ({
      type: 'host', databases: [{ name: database }], users: [{ name: user }], address: '10.0.0.1/32', method: 'scram-sha-256',
    }));
    const roles = [...new Set(pairs.map(([u]) => u))];
    await writeFile(hbaFile, renderHbaBlock({ cluster: 'fuzz', localRole: 'postgres', rules, managedRoles: roles }));
    const rows = await query<{ type: string; database: string[]; user_name: string[]; auth_method: string; error: string | null }>(
      pg, 'SELECT type, database, user_name, auth_method, error FROM pg_hba_file_rules ORDER BY line_number');
    assert.ok(rows.every((r) => r.error === null), JSON.stringify(rows.filter((r) => r.error)));
    assert.ok(rows.every((r) => r.auth_method !== 'trust'), 'a trust row appeared');
    // anti-lockout + one row per rule + the reject row
    assert.equal(rows.length, rules.length + 2);
    rows.slice(1, -1).forEach((row, i) => {
      assert.deepEqual(row.user_name, [pairs[i]![0]]);
      assert.deepEqual(row.database, [pairs[i]![1]]);
      assert.equal(row.auth_method, 'scram-sha-256');
    });
    assert.deepEqual([...rows.at(-1)!.user_name].sort(), [...roles].sort());
    assert.equal(rows.at(-1)!.auth_method, 'reject');
  }), { numRuns: 150 });
  assert.equal(runs >= 150, true);
});
