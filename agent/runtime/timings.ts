// The status's timings (shared/contract/status.ts ApplyTimings): the phases of the pass that
// applied a generation, and the last probe-only pass of it, where most edges are probed.
import type { ApplyTimings } from '../../shared/contract/status.ts';
import type { ProbeReason } from '../probe/probes.ts';

export const round1 = (ms: number): number => Math.round(ms * 10) / 10;

/** The timings of the pass that applied `generation`: certificates, the apply engine's phases, its probes. */
export function passTimings(generation: number, startedAt: string, certsMs: number, phases: Record<string, number> | undefined, probeMs: number, totalMs: number): ApplyTimings {
  return { generation, startedAt, phases: { certs: round1(certsMs), ...(phases ?? {}), probe: round1(probeMs) }, totalMs: round1(totalMs) };
}

/** A probe-only pass of `generation` ran: the timings of that generation (if these are) say so, counting it. */
export function noteProbePass(t: ApplyTimings | null, generation: number, pass: { startedAt: string; reason: ProbeReason; edges: number; ms: number }): void {
  if (t?.generation !== generation) return;
  t.probePass = { ...pass, ms: round1(pass.ms), passes: (t.probePass?.passes ?? 0) + 1 };
}
