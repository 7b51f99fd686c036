// Throwaway PostgreSQL 15 servers for tests: always stopped and removed afterwards.
import { after } from 'node:test';
import pg from 'pg';
import { createPgInstance, type PgInstance, type PgInstanceOptions } from '../../shared/pgserver.ts';

const live = new Set<PgInstance>();
let hooked = false;

/** A fresh server, destroyed when the test file finishes (even when a test fails). */
export async function throwawayPg(opts: PgInstanceOptions = {}): Promise<PgInstance> {
  if (!hooked) {
    hooked = true;
    after(async () => {
      await Promise.all([...live].map((i) => i.destroy()));
      live.clear();
    });
  }
  const instance = await createPgInstance(opts);
  live.add(instance);
  return instance;
}

/** Run one query over the instance's private socket as the superuser. */
export async function query<T extends pg.QueryResultRow = pg.QueryResultRow>(instance: PgInstance, sql: string, params: unknown[] = []): Promise<T[]> {
  const client = new pg.Client(instance.socketConfig());
  await client.connect();
  try {
    return (await client.query<T>(sql, params)).rows;
  } finally {
    await client.end();
  }
}
