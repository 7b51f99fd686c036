// Several real coordinator processes (`pgaccord coordinator --database-url`) over one throwaway
// PostgreSQL store, for the tests of issue 11: the first one initialises its data directory, the
// others are given copies of its CA, master key and admin token (the README's "High availability").
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import pg from 'pg';
import { freePort, type PgInstance } from '../../shared/system/pgserver.ts';
import { throwawayStore } from './pg.ts';
import { waitFor } from './wait.ts';

const CLI = join(import.meta.dirname, '../../bin/pgaccord.mjs');

/** The files a second coordinator needs from the first. */
export const SHARED_FILES = ['ca.crt', 'coordinator-ca.key', 'master.key', 'admin.token'];

export interface CoordProcess {
  child: ChildProcess;
  exited: Promise<number | null>;
  stderr(): string;
  /** JSON log records so far. */
  records(): { msg: string; [k: string]: unknown }[];
}

export interface CoordSlot {
  dir: string;
  port: number;
  url: string;
  proc: CoordProcess | null;
}

export interface Fleet {
  store: PgInstance;
  databaseUrl: string;
  slots: CoordSlot[];
  caPem: string;
  adminToken: string;
  /** Spawn a coordinator in a slot (not waiting for it). */
  spawn(slot: CoordSlot, extra?: string[]): CoordProcess;
  /** Start (or restart) a coordinator in a slot and wait until it serves. */
  start(slot: CoordSlot): Promise<CoordProcess>;
  /** SIGKILL a slot's coordinator and wait for it to be gone. */
  kill(slot: CoordSlot): Promise<void>;
  storeQuery<T>(sql: string, params?: unknown[]): Promise<T[]>;
  /** Every log record of every coordinator process started so far. */
  allRecords(): { msg: string; [k: string]: unknown }[];
}

/** `n` coordinator slots on one store; all started. Call at the top level of a test file. */
export async function coordinatorFleet(n: number, opts: { longPollSeconds?: number; env?: NodeJS.ProcessEnv } = {}): Promise<Fleet> {
  const { db: store, databaseUrl } = await throwawayStore();
  const slots: CoordSlot[] = [];
  for (let i = 0; i < n; i++) {
    const port = await freePort();
    slots.push({ dir: await mkdtemp(join(tmpdir(), `pgaccord-fleet-${i}-`)), port, url: `https://127.0.0.1:${port}`, proc: null });
  }
  const procs: CoordProcess[] = [];
  after(async () => {
    for (const p of procs) p.child.kill('SIGKILL');
    await Promise.all(procs.map((p) => p.exited));
    for (const s of slots) await rm(s.dir, { recursive: true, force: true });
  });
  const publicUrl = slots.map((s) => s.url).join(',');
  const fleet: Fleet = {
    store,
    databaseUrl,
    slots,
    caPem: '',
    adminToken: '',
    spawn(slot, extra = []) {
      const child = spawn(process.execPath, [CLI, 'coordinator', '--data-dir', slot.dir, '--listen', `127.0.0.1:${slot.port}`, '--database-url', databaseUrl, '--long-poll', String(opts.longPollSeconds ?? 3), '--public-url', publicUrl, ...extra], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
      let out = '';
      let err = '';
      child.stdout!.on('data', (d) => (out += d));
      child.stderr!.on('data', (d) => (err += d));
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      const p: CoordProcess = {
        child,
        exited,
        stderr: () => err,
        records: () => out.split('\n').flatMap((l) => {
          try {
            return [JSON.parse(l) as { msg: string }];
          } catch {
            return [];
          }
        }),
      };
      procs.push(p);
      return p;
    },
    async start(slot) {
      const p = fleet.spawn(slot);
      await waitFor(`coordinator ${slot.url} listening`, () => {
        if (p.child.exitCode !== null) throw new Error(`coordinator ${slot.url} exited ${p.child.exitCode}: ${p.stderr()}`);
        return p.stderr().includes('listening on');
      }, 60_000, 100, { throwEnds: true }).catch((e: Error) => {
        // Still running but not listening in time: what it wrote so far says why.
        throw p.child.exitCode !== null ? e : new Error(`${e.message}: ${p.stderr()}`);
      });
      slot.proc = p;
      return p;
    },
    async kill(slot) {
      const p = slot.proc;
      if (!p) return;
      p.child.kill('SIGKILL');
      await p.exited;
      slot.proc = null;
    },
    async storeQuery<T>(sql: string, params: unknown[] = []) {
      const c = new pg.Client(store.socketConfig('coord'));
      await c.connect();
      try {
        return (await c.query(sql, params)).rows as T[];
      } finally {
        await c.end();
      }
    },
    allRecords: () => procs.flatMap((p) => p.records()),
  };
  await fleet.start(slots[0]!);
  for (const s of slots.slice(1)) for (const f of SHARED_FILES) await copyFile(join(slots[0]!.dir, f), join(s.dir, f));
  for (const s of slots.slice(1)) await fleet.start(s);
  fleet.caPem = await readFile(join(slots[0]!.dir, 'ca.crt'), 'utf8');
  fleet.adminToken = (await readFile(join(slots[0]!.dir, 'admin.token'), 'utf8')).trim();
  return fleet;
}
