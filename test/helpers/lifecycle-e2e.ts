// Watchers for the lifecycle end-to-end tests: a probe loop that makes a real libpq connection
// over every inter-node edge every second (with the connection string the agent last reported),
// a TLS-handshake watcher that records the serial each server really presents, and a long
// psql session.
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { LocalCluster } from '../../bin/local-cluster.ts';
import { servedCertificate } from '../../agent/apply/pgconf.ts';
import { serverOsUser } from '../../shared/system/pgserver.ts';
import { psql } from './libpq.ts';

export interface ProbeFailure {
  at: string;
  node: string;
  to: string;
  error: string;
}

/** The connection strings a node's agent last reported (its status.json mirror). */
export async function edgeConninfos(stateDir: string): Promise<{ to: string; conninfo: string }[]> {
  const text = await readFile(join(stateDir, 'status.json'), 'utf8');
  const s = JSON.parse(text) as { status: { probes: { to: string; conninfo: string }[] } };
  return s.status.probes.map((p) => ({ to: p.to, conninfo: p.conninfo }));
}

export interface Watch {
  /** Distinct serials seen in TLS handshakes, per node, in order. */
  served: Map<string, string[]>;
  probes: number;
  failures: ProbeFailure[];
  /** Earliest notAfter seen minus the time it was seen, per handshake (negative: expired certificate served). */
  minMarginMs: number;
  stop(): Promise<void>;
}

/** Every `intervalMs`: a TLS handshake with each node and a `SELECT 1` over each edge. */
export function watchCluster(cluster: LocalCluster, intervalMs = 1000): Watch {
  const served = new Map<string, string[]>();
  const w: Watch = { served, probes: 0, failures: [], minMarginMs: Infinity, stop: async () => undefined };
  let running = true;
  const loop = (async () => {
    while (running) {
      const t0 = Date.now();
      await Promise.all([...cluster.nodes.values()].map(async (node) => {
        try {
          const c = await servedCertificate(node.host, node.pg.port);
          if (c) {
            const list = served.get(node.name) ?? [];
            if (list[list.length - 1] !== c.serial) list.push(c.serial);
            served.set(node.name, list);
            w.minMarginMs = Math.min(w.minMarginMs, Date.parse(c.notAfter) - Date.now());
          }
        } catch (e) {
          w.failures.push({ at: new Date().toISOString(), node: node.name, to: '(handshake)', error: (e as Error).message });
        }
        let edges: { to: string; conninfo: string }[] = [];
        try {
          edges = await edgeConninfos(node.stateDir);
        } catch {
          return; // not reported yet
        }
        for (const e of edges) {
          const r = await psql(e.conninfo, 'SELECT 1');
          w.probes += 1;
          if (!r.ok || r.stdout !== '1') w.failures.push({ at: new Date().toISOString(), node: node.name, to: e.to, error: r.error || r.stdout });
        }
      }));
      const left = intervalMs - (Date.now() - t0);
      if (left > 0) await new Promise((r) => setTimeout(r, left));
    }
  })();
  w.stop = async () => {
    running = false;
    await loop;
  };
  return w;
}

/** A long psql session (e.g. `SELECT pg_sleep(200)`) as the server's OS user; resolves when it ends. */
export async function longSession(conninfo: string, sql: string, timeoutMs: number): Promise<{ ok: boolean; ms: number; error: string }> {
  const user = await serverOsUser();
  const asOther = process.getuid?.() === 0 && user.uid !== 0;
  const t0 = Date.now();
  return new Promise((resolve) => {
    execFile('psql', [conninfo, '-X', '-w', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-c', sql], {
      ...(asOther ? { uid: user.uid, gid: user.gid } : {}),
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: user.home, PGPASSFILE: '/nonexistent' },
      cwd: '/',
      timeout: timeoutMs,
    }, (err, _stdout, stderr) => resolve({ ok: !err, ms: Date.now() - t0, error: err ? (stderr || err.message).trim() : '' }));
  });
}
