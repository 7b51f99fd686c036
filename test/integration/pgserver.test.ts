import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stat } from 'node:fs/promises';
import { throwawayPg, query } from '../helpers/pg.ts';

test('throwaway PostgreSQL 15 starts on loopback, answers, restarts and is removed', async () => {
  const pg = await throwawayPg();
  const [row] = await query<{ server_version: string }>(pg, 'SHOW server_version');
  assert.match(row!.server_version, /^15\./);
  const [la] = await query<{ listen_addresses: string }>(pg, 'SHOW listen_addresses');
  assert.equal(la!.listen_addresses, '127.0.0.1');
  await pg.restart();
  const [one] = await query<{ n: number }>(pg, 'SELECT 1 AS n');
  assert.equal(one!.n, 1);
  await pg.destroy();
  await assert.rejects(stat(pg.baseDir), /ENOENT/);
});
