// The window of a password rotation, as a client sees it, for bench:converge: while a rotation
// runs, new connections over a ring of edges (node-i -> node-i+1: every node's client half and
// every node's server half) with each agent's own connection string (its passfile), by psql (the
// real libpq client), all at once, again every PERIOD_MS. A failure counts for a rotation only
// when its probe started between the rotation's command and its convergence (status --wait);
// a failure outside every rotation is counted apart (a defect of its own, never a window).
// Not every edge of the mesh: 90 psql runs every 100 ms would be the load being measured.
import { psql } from '../test/helpers/libpq.ts';
import { edgeConninfos } from '../test/helpers/lifecycle-e2e.ts';

const PERIOD_MS = 100;

export interface WindowProbe { at: number; ok: boolean; edge: string; error: string }

export interface Rotation { t0: number; convergedAt: number }

/** The ring of edges: node i's connection string to node i+1, read from each agent's local status. */
export async function ringEdges(nodes: { name: string; stateDir: string }[]): Promise<{ name: string; conninfo: string }[]> {
  const out: { name: string; conninfo: string }[] = [];
  for (let i = 0; i < nodes.length; i++) {
    const next = nodes[(i + 1) % nodes.length]!.name;
    const e = (await edgeConninfos(nodes[i]!.stateDir)).find((x) => x.to === next);
    if (!e) throw new Error(`${nodes[i]!.name} has no edge to ${next}`);
    out.push({ name: `${nodes[i]!.name}->${next}`, conninfo: e.conninfo });
  }
  return out;
}

/** Probe the edges every `periodMs` until stopped; every probe's start time and outcome (also the password-rotation e2e's). */
export function watchEdges(edges: { name: string; conninfo: string }[], periodMs = PERIOD_MS): { probes: WindowProbe[]; stop(): Promise<void> } {
  const probes: WindowProbe[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      const t0 = Date.now();
      await Promise.all(edges.map(async (e) => {
        const at = Date.now();
        // PGPASSFILE unset: the passfile the connection string names is the one read.
        const r = await psql(e.conninfo, 'SELECT 1', { PGPASSFILE: '' });
        probes.push({ at, ok: r.ok && r.stdout === '1', edge: e.name, error: r.error });
      }));
      const left = periodMs - (Date.now() - t0);
      if (left > 0 && running) await new Promise((r) => setTimeout(r, left));
    }
  })();
  return { probes, stop: async () => { running = false; await loop; } };
}

/** The median gap between two probes of one edge: the resolution of a window (pure). */
export function probePeriodMs(probes: WindowProbe[]): number | null {
  const gaps: number[] = [];
  const byEdge = new Map<string, number[]>();
  for (const p of probes) byEdge.set(p.edge, [...(byEdge.get(p.edge) ?? []), p.at]);
  for (const ats of byEdge.values()) for (let i = 1; i < ats.length; i++) gaps.push(ats[i]! - ats[i - 1]!);
  gaps.sort((a, b) => a - b);
  return gaps.length === 0 ? null : gaps[Math.floor(gaps.length / 2)]!;
}

/**
 * Per rotation, its failures (probes started in [t0, convergedAt]) and its window: from the
 * first failed probe's start to the last's (0 with one failure, null with none). Pure.
 */
export function rotationWindows(probes: WindowProbe[], rotations: Rotation[]): { windows: { failures: number; windowMs: number | null }[]; unattributed: WindowProbe[] } {
  const failed = probes.filter((p) => !p.ok);
  const windows = rotations.map((r) => {
    const mine = failed.filter((p) => p.at >= r.t0 && p.at <= r.convergedAt).map((p) => p.at);
    return { failures: mine.length, windowMs: mine.length === 0 ? null : Math.max(...mine) - Math.min(...mine) };
  });
  const unattributed = failed.filter((p) => !rotations.some((r) => p.at >= r.t0 && p.at <= r.convergedAt));
  return { windows, unattributed };
}
