// The reconcile loop's judgement, pure: whether a desired-state answer may replace the last good
// one, which peers to probe again after a wake, whether the node is steady, how long to wait
// before the next try. No I/O, no clock of its own: agent/runtime/loop.ts does the acting.
import { Value } from '@sinclair/typebox/value';
import { NodeDesired } from '../../shared/contract/schema.ts';
import type { Problem } from '../../shared/contract/problem.ts';
import { crlInfo } from '../../shared/crypto/crl.ts';
import { backoffDelay, type BackoffPolicy, type Random } from './backoff.ts';
import { scrubSecrets, type ProbeReason } from '../probe/probes.ts';
import type { ProbeResult } from '../../shared/contract/status.ts';
import { AWAITING_PEER, awaitingPeer } from '../../shared/contract/awaiting-peer.ts';
import type { ClientConnection } from '../../shared/pgconf/types.ts';

/** Retry delays after an apply that did not converge: 0.5-1 s, doubling up to 7.5-15 s. */
export const APPLY_RETRY: BackoffPolicy = { baseMs: 1000, capMs: 15_000 };
/** Apply failures that only mean the node's server is not there (yet): retried without limit. */
export const WAITING_FOR_SERVER = new Set(['E_PG_CONNECT', 'E_WRONG_SERVER']);
/** The reason of the pass the safety timer starts after a failed probe. */
export const PROBE_RETRY = 'probing again after a failed probe';
/** After an event (a newer generation, a peer wake with news) the next poll follows this soon; otherwise minCycleMs. */
export const EVENT_MIN_CYCLE_MS = 20;

/** An answer that says "later" (429 rate limited, 503 busy): the coordinator was reached and refused the request for now. */
export function refusedLater(status: number | undefined): boolean {
  return status === 429 || status === 503;
}

/** Why the probes of a pass ran, from the pass's reason. */
export function probeReason(passReason: string): ProbeReason {
  return passReason === PROBE_RETRY ? 'retry' : 'apply';
}

/**
 * Which peers' edges to probe again after a peer wake. Pure. `seen`: the peers already known to
 * have applied the generation; `unproved`: the peers whose edges were last probed before they
 * were seen (passing or not). Every peer in the wake not seen before is seen now, and the
 * unproved ones among them are probed again: a probe that passed against the peer's old
 * configuration (its old server certificate, its old HBA rules) proved nothing of the new one.
 */
export function peersToReprobe(wake: string[], seen: Set<string>, unproved: Set<string>): { fresh: string[]; reprobe: Set<string> } {
  const fresh = wake.filter((n) => !seen.has(n));
  return { fresh, reprobe: new Set(fresh.filter((n) => unproved.has(n))) };
}

/**
 * Peer wakes for the desired generation: the other nodes known to have applied it (and which
 * generation), forgotten when the generation changes. The agent asks for wakes while an edge's
 * last probe was made before its peer was seen.
 */
export class PeerWatch {
  private generation = -1;
  private seen = new Map<string, number>();

  private at(generation: number): Map<string, number> {
    if (this.generation !== generation) {
      this.generation = generation;
      this.seen = new Map();
    }
    return this.seen;
  }

  /** The generation `peer` is known to have applied (`generation` or later), 0 when not known: a probe's peerGeneration. */
  generationOf(generation: number, peer: string): number {
    return this.at(generation).get(peer) ?? 0;
  }

  /** The `peers` count to send with the long-poll: the peers seen, while an `unproved` edge's peer is not seen; otherwise none. */
  known(generation: number, unproved: Set<string>): number | undefined {
    const seen = this.at(generation);
    return [...unproved].some((p) => !seen.has(p)) ? seen.size : undefined;
  }

  /** A wake naming the nodes that applied some generation: the ones of `generation` (or later) are seen now. */
  wake(generation: number, applied: { node: string; generation: number }[], unproved: Set<string>): { fresh: string[]; reprobe: Set<string> } {
    const seen = this.at(generation);
    const current = applied.filter((a) => a.generation >= generation);
    const r = peersToReprobe(current.map((a) => a.node), new Set(seen.keys()), unproved);
    for (const a of current) if (!seen.has(a.node)) seen.set(a.node, a.generation);
    return r;
  }
}

/**
 * A full pass's probes (pure): which edges to probe now, and what stands for the others. Probed:
 * the edges to this node itself and to peers known to hold `generation`. Any other edge is left
 * to its peer's wake (or the safety timer): probed now, against the peer's old configuration, it
 * would prove nothing and be probed again. It keeps its last failure of this generation
 * (`carried`: a peer that is down keeps its real error), or stands as not probed yet. A carried
 * pass is probed again: it proved this node's client files as they were before this apply (a
 * renewed client certificate), and only the safety timer, its wait for the wake over, made it.
 */
export function planProbes(
  conns: ClientConnection[],
  desired: { node: string; generation: number },
  knownPeer: (to: string) => boolean,
  carried: ProbeResult[],
  at: string,
): { probe: number[]; results: ProbeResult[] } {
  const lasts = conns.map((c) => carried.find((p) => p.to === c.to && p.role === c.role && p.conninfo === scrubSecrets(c.conninfo)));
  const probe = conns.flatMap((c, i) => (c.to === desired.node || knownPeer(c.to) || lasts[i]?.ok === true ? [i] : []));
  const results = conns.map((c, i): ProbeResult => {
    const last = lasts[i];
    if (last && !last.ok) return last;
    const error = `not probed yet: ${c.to} is not known to have applied generation ${desired.generation}`;
    return { to: c.to, role: c.role, conninfo: scrubSecrets(c.conninfo), ok: false, tlsVersion: null, cipher: null, error, at, reason: AWAITING_PEER, peerGeneration: 0 };
  });
  return { probe, results };
}

/** Safety-timer periods an edge not probed yet waits for its peer's wake before the timer probes it anyway. */
export const WAKE_WAIT_PERIODS = 5;

/**
 * The peers the safety timer probes again (pure): those of failed probes, and of edges not probed
 * yet (planProbes' stand-ins, reason AWAITING_PEER) once they waited `waitMs` for the peer's
 * wake: sooner, against a peer that has not applied, the probe would prove nothing.
 */
export function retryPeers(probes: ProbeResult[], now: number, waitMs: number): Set<string> {
  return new Set(probes.filter((p) => !p.ok && (!awaitingPeer(p) || now - Date.parse(p.at) >= waitMs)).map((p) => p.to));
}

export type Judgement = { ok: true; desired: NodeDesired } | { ok: false; error: Problem };

/**
 * Whether a desired-state answer may replace the last good one. Pure. Refuses: an empty answer;
 * one that fails the NodeDesired schema; one for another cluster or node; one whose generation is
 * not newer; one that would wipe what the node has (every HBA rule, every role, the certificates
 * or CA bundle while TLS is on, the passwords its connections need).
 */
export function judgeDesired(answer: unknown, lastGood: NodeDesired | null, expect: { cluster: string; node: string }): Judgement {
  const refuse = (code: string, message: string): Judgement => ({ ok: false, error: { code, message: `refused desired state: ${message}; keeping the last good state${lastGood ? ` (generation ${lastGood.generation})` : ''}` } });
  if (answer === null || answer === undefined || answer === '' || (typeof answer === 'object' && !Array.isArray(answer) && Object.keys(answer).length === 0)) {
    return refuse('E_DESIRED_EMPTY', 'the answer is empty');
  }
  if (!Value.Check(NodeDesired, answer)) {
    const first = [...Value.Errors(NodeDesired, answer)][0];
    return refuse('E_DESIRED_GARBLED', `the answer does not match the NodeDesired schema${first ? ` (${first.path || '/'}: ${first.message})` : ''}`);
  }
  const d = answer;
  if (d.cluster !== expect.cluster || d.node !== expect.node) {
    return refuse('E_DESIRED_FOREIGN', `the answer is for ${d.cluster}/${d.node}, this node is ${expect.cluster}/${expect.node}`);
  }
  if (d.tls && d.caBundle.trim() === '') return refuse('E_DESIRED_SHRUNK', 'TLS is on but the CA bundle is empty');
  if (d.tls && d.certificates.every((c) => c.usage !== 'server')) return refuse('E_DESIRED_SHRUNK', 'TLS is on but there is no server certificate slot');
  const passfileRoles = new Set(d.edges.filter((e) => e.usesPassfile).map((e) => e.role));
  const secrets = new Set(d.clientSecrets.map((s) => s.role));
  const missing = [...passfileRoles].filter((r) => !secrets.has(r));
  if (missing.length > 0) return refuse('E_DESIRED_SHRUNK', `connections use a passfile but there is no password for ${missing.join(', ')}`);
  if (lastGood) {
    if (d.generation < lastGood.generation) return refuse('E_DESIRED_OLDER', `generation ${d.generation} is older than the applied ${lastGood.generation} (no rollback)`);
    if (d.generation === lastGood.generation) return refuse('E_DESIRED_OLDER', `generation ${d.generation} is not newer than the last good one`);
    // No rules at all is what a node has once its last peer is gone; with peers left it is a wiped answer.
    if (lastGood.hba.length > 0 && d.hba.length === 0 && d.alone !== true) return refuse('E_DESIRED_SHRUNK', `it has no HBA rules where the node has ${lastGood.hba.length}, and it is not alone in its cluster`);
    if (lastGood.roles.length > 0 && d.roles.length === 0) return refuse('E_DESIRED_SHRUNK', `it has no roles where the node has ${lastGood.roles.length}`);
  }
  return { ok: true, desired: d };
}

/** A reconcile pass or a poll turn running longer than this is stuck (long-poll <= 300 s plus client timeouts stay well below). */
export const STUCK_AFTER_MS = 600_000;

/** Is the loop making progress: neither the pass in flight nor the poll turn older than the bound. */
export function loopAlive(now: number, since: { pass: number | null; turn: number | null }, stuckAfterMs = STUCK_AFTER_MS): boolean {
  return [since.pass, since.turn].every((t) => t === null || now - t < stuckAfterMs);
}

/**
 * The agent's contact with the coordinator: in contact, unreachable (no answer: a network fault,
 * a timeout), or refusing (it answered 429/503, with that HTTP status; not a network fault).
 */
export type Contact = 'reachable' | 'unreachable' | { refused: number };

/** The STATUS= line: applied generation (and the desired one when behind), phase, probes, and the contact when out of it. */
export function summaryLine(s: {
  desired: number | null;
  applied: number;
  phase: string | null;
  probesOk: number;
  probes: number;
  contact: Contact;
}): string {
  const c = s.contact === 'reachable' ? null : s.contact === 'unreachable' ? 'coordinator unreachable' : `coordinator refusing requests (HTTP ${s.contact.refused})`;
  if (s.desired === null) return `waiting for the first desired state${c === null ? '' : ` (${c})`}`;
  const gen = s.applied === s.desired ? `generation ${s.applied}` : `generation ${s.applied} (desired ${s.desired})`;
  return `${gen}, ${s.phase ?? 'not applied'}, probes ${s.probesOk}/${s.probes} ok${c === null ? '' : `, ${c}`}`;
}

/**
 * Whether an apply that did not converge is tried again soon, rather than at the next resync:
 * while it only waits for the node's server, for as long as it takes; anything else the first
 * three times (a refused rule does not go away by retrying every 15 s).
 */
export function retryApplySoon(failures: number, errors: Problem[]): boolean {
  const waitingForServer = errors.length > 0 && errors.every((e) => WAITING_FOR_SERVER.has(e.code));
  return waitingForServer || failures <= 3;
}

/**
 * The retry delay after `failures` failed contacts, at least a refusal's Retry-After, and
 * shortened when a renewal is due and something heads for expiry (that matters more): at least
 * every tenth of the time left (but not faster than 1 s),
 * so that a returning coordinator is used before anything expires.
 */
export function contactRetryDelay(
  failures: number,
  random: Random,
  policy: BackoffPolicy,
  now: number,
  renewals: (number | null)[],
  expiries: (number | null)[],
  retryAfterMs: number | null = null,
): number {
  // A refusal's Retry-After (already bounded, see retryAfterMs) lengthens the backoff, never shortens it.
  let delay = Math.max(backoffDelay(Math.min(failures, 30), random, policy), retryAfterMs ?? 0);
  const due = renewals.some((t) => t !== null && t <= now);
  const ends = expiries.filter((x): x is number => x !== null);
  if (due && ends.length > 0) delay = Math.min(delay, Math.max(1000, (Math.min(...ends) - now) / 10));
  return Math.floor(delay);
}

/**
 * When to wake for the next renewal (a certificate pair or the agent identity), or null for no
 * timer: a little after the earliest instant, so that the schedule says "due" when we look.
 * Already due: renewal happens on the next contact; while the coordinator is away the retry
 * loop (its delay capped near expiry) brings it, and a failing CSR is retried every 10 s.
 */
export function renewalWake(renewals: (number | null)[], now: number, reachable: boolean): { at: number; delayMs: number } | null {
  const candidates = renewals.filter((x): x is number => x !== null);
  if (candidates.length === 0) return null;
  const at = Math.min(...candidates) + 250;
  if (at <= now && !reachable) return null;
  return { at, delayMs: at <= now ? 10_000 : Math.min(Math.max(at - now, 1000), 24 * 3600_000) };
}

/** What the steady state is judged on: the last proof, and what the node has now. */
export interface SteadyView {
  now: number;
  proofEveryMs: number;
  lastProof: { at: number; generation: number } | null;
  desiredGeneration: number | null;
  appliedGeneration: number;
  lastApply: { phase: string; errors: unknown[]; pendingRestart: unknown[] } | null;
  probesOk: boolean;
  /** Anything waiting to be reported or retried: certificate or runtime errors, drift notes, a retry timer. */
  unsettled: boolean;
  renewalDue: boolean;
  canCheckFiles: boolean;
  reachable: boolean;
  reported: boolean;
}

/**
 * Steady: the last pass proved the desired generation (converged, every probe passing, no
 * error, nothing pending or due) less than proofEveryMs ago.
 */
export function isSteady(v: SteadyView): boolean {
  const { lastProof: proof, lastApply: a } = v;
  if (v.proofEveryMs <= 0 || !proof || v.desiredGeneration === null || !a || !v.canCheckFiles || !v.reachable) return false;
  if (v.now - proof.at >= v.proofEveryMs || proof.generation !== v.desiredGeneration || v.appliedGeneration !== v.desiredGeneration) return false;
  if (a.phase !== 'converged' || a.errors.length > 0 || a.pendingRestart.length > 0 || !v.probesOk) return false;
  return !v.unsettled && !v.renewalDue && v.reported;
}

/** The earliest of the expiries (certificates, identity) and the CRL's nextUpdate, or null. */
export function survivesUntil(expiries: (number | null)[], crl: string | null): string | null {
  let next: number | null = null;
  try {
    next = crl ? (crlInfo(crl).nextUpdate?.getTime() ?? null) : null;
  } catch {
    // reported by the certificate manager
  }
  const ends = [...expiries, next].filter((x): x is number => x !== null);
  return ends.length > 0 ? new Date(Math.min(...ends)).toISOString() : null;
}

/** An error's message for a log line or a problem (never the object: it may carry secrets). */
export function errMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
