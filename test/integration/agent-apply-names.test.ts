// Property: arbitrary names in operator rules (the spec lets any string through to pg_hba.conf)
// each become exactly one token. Applied to a real server, the apply engine's own row-by-row
// comparison passes (pg_hba_file_rules has exactly the rendered rows), the names come back from
// PostgreSQL exactly as given, and there is no trust row in the managed block.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { readFile } from 'node:fs/promises';
import { applyDesired } from '../../agent/apply/apply.ts';
import { splitManagedBlock } from '../../shared/pgconf/render.ts';
import { agentFixture } from '../helpers/agent-fixture.ts';
import { query } from '../helpers/pg.ts';

const f = await agentFixture();

// Anything a pg_hba.conf name can hold: no line break or NUL, 1..63 bytes; biased towards the
// characters and words that mean something to PostgreSQL's tokenizer.
const tricky = fc.constantFrom('all', 'replication', 'sameuser', 'samerole', '+', '@', ',', '#', '"', ' ', '\t', "'", '\\', 'trust', 'é', '𝔘');
const name = fc
  .array(fc.oneof(tricky, fc.string({ unit: 'grapheme', minLength: 1, maxLength: 3 })), { minLength: 1, maxLength: 8 })
  .map((parts) => parts.join('').replace(/[\r\n\0]/g, ''))
  .filter((s) => s.length > 0 && Buffer.byteLength(s) <= 63);

test('arbitrary names in rules: one token each, exactly the rendered rows on a real server, no trust row', { timeout: 300_000 }, async () => {
  const certificates = await f.issue('scram-sha-256');
  const hbaPath = `${f.pg.dataDir}/pg_hba.conf`;
  await fc.assert(
    fc.asyncProperty(name, name, name, async (db, u1, u2) => {
      const desired = f.desired({ auth: 'scram-sha-256', sslmode: 'require' });
      desired.hba.push({ type: 'hostssl', databases: [{ name: db }], users: [{ name: u1 }, { name: u2 }], address: '10.1.0.0/16', method: 'scram-sha-256', comment: `names ${u1}` });
      const r = await applyDesired(f.ctx, { desired, certificates });
      assert.equal(r.phase, 'converged', JSON.stringify(r.errors));
      const block = splitManagedBlock(await readFile(hbaPath, 'utf8')).block!;
      const last = block.split('\n').length - 1;
      const rows = await query<{ line_number: number; database: string[]; user_name: string[]; auth_method: string; address: string | null }>(
        f.pg, 'SELECT line_number, database, user_name, auth_method, address FROM pg_hba_file_rules WHERE line_number <= $1 ORDER BY line_number', [last]);
      assert.ok(rows.every((x) => x.auth_method !== 'trust'));
      const ours = rows.filter((x) => x.address === '10.1.0.0');
      assert.equal(ours.length, 1);
      assert.deepEqual(ours[0]!.database, [db]);
      assert.deepEqual(ours[0]!.user_name, [u1, u2]);
    }),
    { numRuns: Number(process.env.PGACCORD_NAME_RUNS ?? 40) },
  );
  await f.pg.restart();
});
