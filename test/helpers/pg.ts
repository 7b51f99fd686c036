// Throwaway PostgreSQL 15 servers for tests: always stopped and removed afterwards.
import { after } from 'node:test';
import pg from 'pg';
import { createPgInstance, type PgInstance, type PgInstanceOptions } from '../../shared/system/pgserver.ts';

/**
 * A fresh server, destroyed when the test that asked for it ends (or the test file, when asked
 * at the top level), even when it fails. The hook is registered per server: node:test binds
 * `after` to the test that is running, so one hook for the whole file would miss servers made
 * in later tests.
 */
export async function throwawayPg(opts: PgInstanceOptions = {}): Promise<PgInstance> {
  const instance = await createPgInstance(opts);
  after(() => instance.destroy());
  return instance;
}

/**
 * A throwaway server with an empty `coord` database, and the coordinator's --database-url for it
 * (over the server's private socket). At a file's top level, like throwawayPg.
 */
export async function throwawayStore(): Promise<{ db: PgInstance; databaseUrl: string }> {
  const db = await throwawayPg();
  await query(db, 'CREATE DATABASE coord');
  return { db, databaseUrl: `postgresql://postgres@/coord?host=${encodeURIComponent(db.socketDir)}&port=${db.port}` };
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
