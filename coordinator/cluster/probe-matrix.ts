// Pure: the inter-node probe matrix of one cluster status, rows = from, columns = to. The status
// page draws it as a coloured grid and `pgaccord status` as a text grid; both read it from here.
import type { ProbeResult } from '../../shared/contract/status.ts';
import { awaitingPeer } from '../../shared/contract/awaiting-peer.ts';

/**
 * A probe made before its peer was known to have applied `generation` (peerGeneration lower):
 * it passed against the peer's old configuration, and its agent probes it again once the peer
 * applied. The coordinator's converged and `pgaccord status` judge by it. A probe without the field (an older agent) is judged by its verdict alone.
 */
export function probePending(p: ProbeResult, generation: number): boolean {
  return p.peerGeneration !== undefined && p.peerGeneration < generation;
}

/**
 * ok: every probe of the edge passed; failing: at least one probe ran and failed; awaiting: the
 * others passed and at least one waits for its peer to apply (not probed yet); none: no probe
 * reported; self: the diagonal.
 */
export type EdgeState = 'ok' | 'failing' | 'awaiting' | 'none' | 'self';

/** A probe that ran and failed (an edge awaiting its peer is not an error). */
export const probeFailed = (p: ProbeResult): boolean => !p.ok && !awaitingPeer(p);

export interface MatrixCell {
  from: string;
  to: string;
  state: EdgeState;
  /** The probes the `from` node reported for this edge (one per role). */
  probes: ProbeResult[];
}

export interface ProbeMatrix {
  nodes: string[];
  /** cells[i][j]: from nodes[i] to nodes[j]. */
  cells: MatrixCell[][];
}

export function probeMatrix(status: { nodes: { node: string; probes: ProbeResult[] }[] }): ProbeMatrix {
  const nodes = status.nodes.map((n) => n.node);
  // A probe to a node the status does not list still gets a column: nothing reported is hidden.
  for (const n of status.nodes) for (const p of n.probes) if (!nodes.includes(p.to)) nodes.push(p.to);
  const byNode = new Map(status.nodes.map((n) => [n.node, n.probes]));
  const cells = nodes.map((from) =>
    nodes.map((to): MatrixCell => {
      const probes = (byNode.get(from) ?? []).filter((p) => p.to === to);
      const state: EdgeState = probes.length === 0 ? (from === to ? 'self' : 'none')
        : probes.some(probeFailed) ? 'failing' : probes.every((p) => p.ok) ? 'ok' : 'awaiting';
      return { from, to, state, probes };
    }),
  );
  return { nodes, cells };
}

const SYMBOL: Record<EdgeState, string> = { ok: '✓', failing: '✗', awaiting: '~', none: '.', self: '-' };

/**
 * The matrix as text: columns numbered, rows numbered and named, one character per cell, so a
 * ten-node cluster's 90 edges fit in ten short lines.
 */
export function formatProbeMatrix(m: ProbeMatrix): string {
  if (m.nodes.length === 0) return '';
  const num = (i: number) => String(i + 1);
  const w = num(m.nodes.length - 1).length;
  const nameW = Math.max(...m.nodes.map((n) => n.length));
  const pad = ' '.repeat(w + 1 + nameW + 2);
  const lines = [
    `probes (row: from, column: to; ${SYMBOL.ok} ok, ${SYMBOL.failing} failing, ${SYMBOL.awaiting} awaiting its peer, ${SYMBOL.none} not probed):`,
    `${pad}${m.nodes.map((_, j) => num(j).padStart(w)).join(' ')}`,
    ...m.cells.map((row, i) => `${num(i).padStart(w)} ${m.nodes[i]!.padEnd(nameW)}  ${row.map((c) => SYMBOL[c.state].padStart(w)).join(' ')}`),
  ];
  return `${lines.join('\n')}\n`;
}
