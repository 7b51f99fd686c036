// The reconcile loop: long-poll the coordinator for the node's desired state, and, level-
// triggered, make the node match the last good desired state on every cycle, on drift, and on a
// timer, by handing it (with the certificate pairs) to the apply engine. A desired state that is
// empty, shrunken, garbled, foreign or older than the last good one is refused: the node keeps
// its last good state. When the coordinator cannot be reached, the node keeps serving and being
// reconciled locally, and its status says 'stale'.
import { join } from 'node:path';
import { Value } from '@sinclair/typebox/value';
import type { Logger } from 'pino';
import { NodeDesired, type ApplyTimings, type FileReport, type ProbeResult } from '../../shared/contract/schema.ts';
import type { Static } from '@sinclair/typebox';

type FileReportT = Static<typeof FileReport>;
import { backoffDelay, DEFAULT_BACKOFF, sleep, type BackoffPolicy, type Clock, type Random } from './backoff.ts';
import { CertificateManager, certReports } from './certs.ts';
import { CoordinatorError, type CoordinatorClient } from './client.ts';
import { probeAll, type ProbeOptions, type ProbeReason } from '../probe/probes.ts';
import { withSession } from '../apply/pgconf.ts';
import { terminateRevokedSessions } from '../probe/revocation.ts';
import { crlInfo } from '../../shared/crypto/crl.ts';
import { buildStatus, writeLocalStatus } from './status.ts';
import { readIfExists, writeFileAtomic, type Owner } from './statefile.ts';
import type { AgentStatus } from '../../shared/contract/schema.ts';
import type { ApplyInput, ApplyResult, NodeContext } from '../apply/types.ts';

/** Retry delays after an apply that did not converge: 0.5-1 s, doubling up to 7.5-15 s. */
const APPLY_RETRY: BackoffPolicy = { baseMs: 1000, capMs: 15_000 };
/** Apply failures that only mean the node's server is not there (yet): retried without limit. */
const WAITING_FOR_SERVER = new Set(['E_PG_CONNECT', 'E_WRONG_SERVER']);
/** The reason of the pass the safety timer starts after a failed probe. */
const PROBE_RETRY = 'probing again after a failed probe';
/** After an event (a newer generation, a peer wake with news) the next poll follows this soon; otherwise minCycleMs. */
const EVENT_MIN_CYCLE_MS = 20;

/** Why the probes of a pass ran, from the pass's reason. */
export function probeReason(passReason: string): ProbeReason {
  return passReason === PROBE_RETRY ? 'retry' : 'apply';
}

/**
 * Which peers' edges to probe again after a peer wake. Pure. `seen`: the peers already known to
 * have applied the generation; `failing`: the peers an edge of this node failed to reach at its
 * last probe. Every peer in the wake not seen before is seen now, and the failing ones among
 * them are probed again: their apply may be what the edge waited for. A passing edge is not
 * probed again (on a full mesh that would be a psql per edge and change for nothing).
 */
export function peersToReprobe(wake: string[], seen: Set<string>, failing: Set<string>): { fresh: string[]; reprobe: Set<string> } {
  const fresh = wake.filter((n) => !seen.has(n));
  return { fresh, reprobe: new Set(fresh.filter((n) => failing.has(n))) };
}

export type ApplyFn = (ctx: NodeContext, input: ApplyInput) => Promise<ApplyResult>;

export interface RuntimeError {
  code: string;
  message: string;
}

// --- judging an answer -------------------------------------------------------------------------

export type Judgement = { ok: true; desired: NodeDesired } | { ok: false; error: RuntimeError };

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

// --- the last good state on disk ---------------------------------------------------------------

export const desiredFile = (stateDir: string): string => join(stateDir, 'desired.json');

/** The last good desired state, or null. A file that no longer validates is ignored (and reported). */
export async function loadLastGood(stateDir: string, expect: { cluster: string; node: string }): Promise<{ desired: NodeDesired | null; error: RuntimeError | null }> {
  const text = await readIfExists(desiredFile(stateDir));
  if (text === null) return { desired: null, error: null };
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return { desired: null, error: { code: 'E_STATE_CORRUPT', message: `${desiredFile(stateDir)} is not JSON; ignoring it` } };
  }
  const j = judgeDesired(parsed, null, expect);
  return j.ok ? { desired: j.desired, error: null } : { desired: null, error: { code: 'E_STATE_CORRUPT', message: `${desiredFile(stateDir)}: ${j.error.message}` } };
}

/** Persist atomically, 0600: it holds client passwords. */
export async function saveLastGood(stateDir: string, desired: NodeDesired, owner?: Owner): Promise<void> {
  await writeFileAtomic(desiredFile(stateDir), `${JSON.stringify(desired)}\n`, { mode: 0o600, ...(owner ? { owner } : {}) });
}

// --- the loop ----------------------------------------------------------------------------------

/** What a drift watcher saw: a managed file edited, chmod'ed, chown'ed or removed by hand. */
export interface DriftNotice {
  path: string;
  kinds: string[];
}

/**
 * Watches the managed files. Paused while a reconcile writes (so our own writes are not drift),
 * resumed with the files the last proved apply reported.
 */
export interface DriftHook {
  pause(): void;
  resume(files: FileReportT[], onDrift: (notice: DriftNotice) => void): void;
  /** Compare the files with the baseline now (drift goes to onDrift as usual); how many drifted. */
  check?(): Promise<number>;
  close(): Promise<void>;
}

export type CoordinatorApi = Pick<CoordinatorClient, 'desired' | 'status'>;

export interface LoopDeps {
  ctx: NodeContext;
  cluster: string;
  node: string;
  client: CoordinatorApi;
  apply: ApplyFn;
  certs: CertificateManager;
  probe: ProbeOptions;
  /** Who owns the state files the server's user must read (PGDATA owner). */
  owner?: Owner;
  now: Clock;
  random: Random;
  backoff?: BackoffPolicy;
  /** After a failed probe, reconcile and probe again this soon, ms. */
  reprobeMs?: number;
  /** Reconcile at least this often even when nothing happens, ms (while steady: the cheap checks only). */
  resyncMs?: number;
  /**
   * The steady state (0/absent: off, every cycle proves): while the last pass proved the desired
   * generation with every probe passing and nothing pending, a long-poll cycle checks only the
   * files (drift.check), the server's fingerprint and address, and reports the last proof; it
   * proves again (apply, SQL checks, probes) once this long after the last proving pass, ms.
   */
  proofEveryMs?: number;
  /** What changes when the local server restarts (PGDATA/postmaster.pid), or null when it does not run. */
  serverFingerprint?: () => string | null;
  /** A long-poll cycle never repeats faster than this, ms (guards against a coordinator that does not wait). */
  minCycleMs?: number;
  log: Logger;
  drift?: DriftHook;
  /** Called before each poll: e.g. renew the agent identity when due. Errors are logged. */
  maintain?: () => Promise<void>;
  /** Called before each pass: the context to use now (the local server may have moved). */
  refreshContext?: (ctx: NodeContext) => NodeContext;
  /** Called after successful contact with the coordinator (e.g. prune old identity versions). */
  onContact?: () => Promise<void>;
  /** When `maintain` has work next (ms since the epoch; e.g. the identity's renewal time), or null. */
  nextMaintenanceAt?: () => number | null;
  /** notAfter of the agent identity (ms), for survivesUntil. */
  identityNotAfter?: () => number | null;
  /** End the sessions that authenticated with a revoked certificate (default: over the local socket). */
  terminateRevoked?: (ctx: NodeContext, crl: string) => Promise<{ pid: number; serial: string }[]>;
  postgresVersion: () => Promise<string>;
  onReady?: () => void;
  /** Once the loop runs (before the first apply: the coordinator or the server may be away). */
  onRunning?: (summary: string) => void;
  /** After each pass: a one-line summary (systemd STATUS=). */
  onSummary?: (line: string) => void;
  /** Keep-alive (systemd WATCHDOG=1), fed from the loop's own tick only while it makes progress. */
  watchdog?: { everyMs: number; feed: () => void; stuckAfterMs?: number };
}

/** A reconcile pass or a poll turn running longer than this is stuck (long-poll <= 300 s plus client timeouts stay well below). */
export const STUCK_AFTER_MS = 600_000;

/** Is the loop making progress: neither the pass in flight nor the poll turn older than the bound. */
export function loopAlive(now: number, since: { pass: number | null; turn: number | null }, stuckAfterMs = STUCK_AFTER_MS): boolean {
  return [since.pass, since.turn].every((t) => t === null || now - t < stuckAfterMs);
}

/** The STATUS= line: applied generation (and the desired one when behind), phase, probes. */
export function summaryLine(s: { desired: number | null; applied: number; phase: string | null; probesOk: number; probes: number; reachable: boolean }): string {
  if (s.desired === null) return `waiting for the first desired state${s.reachable ? '' : ' (coordinator unreachable)'}`;
  const gen = s.applied === s.desired ? `generation ${s.applied}` : `generation ${s.applied} (desired ${s.desired})`;
  return `${gen}, ${s.phase ?? 'not applied'}, probes ${s.probesOk}/${s.probes} ok${s.reachable ? '' : ', coordinator unreachable'}`;
}

export type LoopExit = 'stopped' | 'removed';

export class ReconcileLoop {
  private lastGood: NodeDesired | null = null;
  private appliedGeneration = 0;
  private reachable = true;
  private refusal: RuntimeError | null = null;
  private contactError: RuntimeError | null = null;
  private stateError: RuntimeError | null = null;
  private lastApply: ApplyResult | null = null;
  private ready = false;
  private running: Promise<void> = Promise.resolve();
  private queued = false;
  private readonly stopController = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  /** Wakes the loop when a certificate or the identity is due for renewal. */
  private renewalTimer: NodeJS.Timeout | undefined;
  private renewalTimerAt: number | null = null;
  /** Aborts the long-poll in flight (so that maintenance runs now), without stopping the loop. */
  private pollAbort: AbortController | null = null;
  private failures = 0;
  /** Files the last proved apply reported: the drift baseline. */
  private baseline: FileReportT[] | null = null;
  /** Drift seen since the last status, reported once. */
  private driftNotes: RuntimeError[] = [];
  /** The status last built (for tests and for the local mirror). */
  lastStatus: AgentStatus | null = null;
  /** When the reconcile pass in flight and the current poll turn began (the watchdog's view). */
  private passStartedAt: number | null = null;
  private turnStartedAt: number | null = null;
  private watchdogTimer: NodeJS.Timeout | undefined;
  /** What the last pass had, for a probe-only pass (peer wake) to report with. */
  private lastProbes: ProbeResult[] = [];
  private lastCertErrors: RuntimeError[] = [];
  private lastInstalled: Awaited<ReturnType<CertificateManager['ensure']>>['installed'] = [];
  /** The phases of the pass that applied the current generation (report: filled in once its post returned). */
  private timings: ApplyTimings | null = null;
  /**
   * Peer wakes for the desired generation: the other nodes known to have applied it. The agent
   * asks for wakes while an edge to a peer not among them fails.
   */
  private peerWatch = { generation: -1, seen: new Set<string>() };
  /** When the last proving pass began, for which generation and server (the steady state's reference). */
  private lastProof: { at: number; generation: number; server: string | null } | null = null;
  /** Cycles that proved (a full pass) and cycles that reported the last proof (steady heartbeat). */
  readonly cycles = { proved: 0, heartbeat: 0 };
  /** Counts of probe passes by reason (for tests and the log). */
  readonly probePasses: Record<ProbeReason, number> = { apply: 0, retry: 0, 'peer-applied': 0 };

  constructor(private deps: LoopDeps) {}

  get signal(): AbortSignal {
    return this.stopController.signal;
  }

  /** Replace the node context (after SIGHUP re-read the configuration) and reconcile. */
  updateContext(ctx: NodeContext): void {
    this.deps = { ...this.deps, ctx };
    this.kick('configuration reloaded');
  }

  stop(): void {
    this.stopController.abort();
    clearTimeout(this.reprobeTimer);
    clearTimeout(this.renewalTimer);
  }

  /**
   * Wake up at the next renewal instant (a certificate pair or the agent identity) even when
   * nothing else happens: the resync timer is far too slow for short lifetimes. The long-poll in
   * flight is cut short so that the identity maintenance runs, and a reconcile renews the pairs.
   */
  private scheduleRenewalWake(): void {
    if (this.signal.aborted) return;
    const candidates = [this.deps.certs.nextRenewalAt, this.deps.nextMaintenanceAt?.() ?? null].filter((x): x is number => x !== null);
    if (candidates.length === 0) return;
    // A little after the instant, so that the schedule says "due" when we look.
    const at = Math.min(...candidates) + 250;
    if (this.renewalTimerAt === at && this.renewalTimer) return;
    clearTimeout(this.renewalTimer);
    const now = this.deps.now();
    // Already due: renewal happens on the next contact; while the coordinator is away the retry
    // loop (its delay capped near expiry) brings it, and a failing CSR is retried every 10 s.
    if (at <= now && !this.reachable) return;
    const delay = at <= now ? 10_000 : Math.min(Math.max(at - now, 1000), 24 * 3600_000);
    this.renewalTimerAt = at;
    this.renewalTimer = setTimeout(() => {
      this.renewalTimer = undefined;
      this.renewalTimerAt = null;
      this.deps.log.debug('renewal time: waking up');
      this.pollAbort?.abort();
      void this.kick('certificate renewal due');
    }, delay);
    this.renewalTimer.unref();
  }

  /**
   * The retry delay after a failure, shortened when a certificate is past its renewal time and
   * heading for expiry: retry at least every tenth of the time left (but not faster than 1 s),
   * so that a returning coordinator is used before anything expires.
   */
  private retryDelay(): number {
    let delay = backoffDelay(Math.min(this.failures, 30), this.deps.random, this.deps.backoff ?? DEFAULT_BACKOFF);
    const now = this.deps.now();
    const due = [this.deps.certs.nextRenewalAt, this.deps.nextMaintenanceAt?.() ?? null].some((t) => t !== null && t <= now);
    const ends = [this.deps.certs.earliestExpiry, this.deps.identityNotAfter?.() ?? null].filter((x): x is number => x !== null);
    if (due && ends.length > 0) delay = Math.min(delay, Math.max(1000, (Math.min(...ends) - now) / 10));
    return Math.floor(delay);
  }

  private reprobeTimer: NodeJS.Timeout | undefined;
  /** Consecutive applies that did not converge (the local server absent, a rule refused...). */
  private applyFailures = 0;

  /** Reconcile again soon: after a failed probe, or a failed apply (with backoff up to 15 s). */
  private scheduleRetry(delayMs: number, reason: string): void {
    if (this.reprobeTimer || this.signal.aborted) return;
    this.reprobeTimer = setTimeout(() => {
      this.reprobeTimer = undefined;
      // A failed probe: probe the failing edges again (the state was applied and proved; the
      // next long-poll cycle reconciles it anyway). A failed apply: reconcile.
      if (reason === PROBE_RETRY) void this.reprobe(this.failingPeers(), 'retry');
      else void this.kick(reason);
    }, delayMs);
    this.reprobeTimer.unref();
    this.retryReason = reason;
  }

  private retryReason: string | null = null;

  /** Every probe passes now: the safety timer armed by a failed probe has nothing left to do. */
  private cancelProbeRetry(): void {
    if (this.reprobeTimer && this.retryReason === PROBE_RETRY) {
      clearTimeout(this.reprobeTimer);
      this.reprobeTimer = undefined;
    }
  }

  /** The peers an edge of this node failed to reach at its last probe. */
  private failingPeers(): Set<string> {
    return new Set(this.lastProbes.filter((p) => !p.ok).map((p) => p.to));
  }

  /** The peer watch for `generation`, reset when it changes. */
  private watchFor(generation: number) {
    if (this.peerWatch.generation !== generation) this.peerWatch = { generation, seen: new Set() };
    return this.peerWatch;
  }

  /**
   * The `peers` count to send with the long-poll: the peers seen, while this node applied the
   * desired generation and an edge of it fails to reach a peer not seen; otherwise no peer wakes.
   */
  private peersKnown(): number | undefined {
    const d = this.lastGood;
    if (!d || this.appliedGeneration !== d.generation || !this.lastApply) return undefined;
    const watch = this.watchFor(d.generation);
    return [...this.failingPeers()].some((p) => !watch.seen.has(p)) ? watch.seen.size : undefined;
  }

  /** Queue a probe-only pass over the edges to `peers` (a full pass queued already covers it). */
  private reprobe(peers: Set<string>, reason: ProbeReason): Promise<void> {
    if (this.queued) return this.running;
    this.running = this.running.then(async () => {
      if (this.signal.aborted) return;
      this.passStartedAt = Date.now();
      try {
        await this.reprobeOnce(peers, reason);
      } catch (e) {
        this.deps.log.error({ err: errMessage(e), reason }, 'probing again failed unexpectedly');
      } finally {
        this.passStartedAt = null;
      }
    });
    return this.running;
  }

  /**
   * Probe the edges to `peers` again, nothing applied (a peer wake, or the safety timer after a
   * failed probe); report with the other probes as they were.
   */
  private async reprobeOnce(peers: Set<string>, reason: ProbeReason): Promise<void> {
    const desired = this.lastGood;
    const conns = this.lastApply?.clientConnections ?? [];
    if (!desired || this.appliedGeneration !== desired.generation || conns.length !== this.lastProbes.length) {
      if (reason === 'retry') void this.kick(PROBE_RETRY); // nothing proved to probe against: reconcile
      return;
    }
    const idx = conns.map((c, i) => (peers.has(c.to) ? i : -1)).filter((i) => i >= 0);
    if (idx.length === 0) return;
    this.deps.log.debug({ peers: [...peers], generation: desired.generation, reason }, 'probing edges again without applying');
    this.probePasses[reason] += 1;
    const fresh = await probeAll(idx.map((i) => conns[i]!), this.deps.probe, reason);
    const probes = [...this.lastProbes];
    idx.forEach((i, k) => (probes[i] = fresh[k]!));
    for (const p of fresh.filter((p) => !p.ok)) this.deps.log.warn({ to: p.to, role: p.role, error: p.error }, 'connection probe failed');
    if (probes.every((p) => p.ok)) this.cancelProbeRetry();
    else this.scheduleRetry(this.deps.reprobeMs ?? 2000, PROBE_RETRY);
    this.lastProbes = probes;
    await this.publish(desired, probes, this.lastCertErrors, this.lastInstalled);
  }

  /**
   * Steady: the last pass proved the desired generation (converged, every probe passing, no
   * error, nothing pending or due) less than proofEveryMs ago. Only what a cheap look shows can
   * end it before then: a file's drift, the server restarted or moved.
   */
  private steady(now: number): boolean {
    const every = this.deps.proofEveryMs ?? 0;
    const proof = this.lastProof;
    const d = this.lastGood;
    const a = this.lastApply;
    if (every <= 0 || !proof || !d || !a || !this.deps.drift?.check || !this.reachable) return false;
    if (now - proof.at >= every || proof.generation !== d.generation || this.appliedGeneration !== d.generation) return false;
    if (a.phase !== 'converged' || a.errors.length > 0 || a.pendingRestart.length > 0 || !this.lastProbes.every((p) => p.ok)) return false;
    if (this.lastCertErrors.length > 0 || this.runtimeErrors([]).length > 0 || this.driftNotes.length > 0 || this.reprobeTimer) return false;
    const due = [this.deps.certs.nextRenewalAt, this.deps.nextMaintenanceAt?.() ?? null].some((t) => t !== null && t <= now);
    return !due && this.lastStatus !== null;
  }

  /**
   * A cycle with nothing new (a long-poll that expired, the resync timer): a full reconcile, or
   * while steady the cheap checks, then (`report`) the last proof as the heartbeat.
   */
  private cycle(reason: string, report: boolean): Promise<void> {
    // A full pass queued covers this cycle; without a steady state every cycle is one.
    if (this.queued || !((this.deps.proofEveryMs ?? 0) > 0)) return this.kick(reason);
    // Judged when its turn comes: a pass in flight may end or start the steady state.
    this.running = this.running.then(async () => {
      // A full pass queued behind this one (a new generation, a drift) covers it.
      if (this.signal.aborted || this.queued) return;
      this.passStartedAt = Date.now();
      try {
        if (!this.steady(this.deps.now())) {
          await this.reconcileOnce(reason);
          return;
        }
        // The resync while steady: the long-poll cycles check and report; it only brings the
        // proof when due (above), e.g. while the long-poll hangs.
        if (!report) return;
        const before = this.deps.ctx;
        if (this.deps.refreshContext) this.deps = { ...this.deps, ctx: this.deps.refreshContext(before) };
        const moved = this.deps.ctx.pgHost !== before.pgHost || this.deps.ctx.pgPort !== before.pgPort;
        const restarted = (this.deps.serverFingerprint?.() ?? null) !== this.lastProof?.server;
        const drifted = await this.deps.drift!.check!();
        // A drifted file: its onDrift queued the repair already.
        if (drifted > 0) return;
        if (moved || restarted || !this.steady(this.deps.now())) {
          this.deps.log.debug({ reason, moved, restarted }, 'not steady any more: proving again');
          await this.reconcileOnce(reason);
          return;
        }
        this.cycles.heartbeat += 1;
        await this.publish(this.lastGood, this.lastProbes, this.lastCertErrors, this.lastInstalled, this.lastStatus?.versions.postgres);
      } catch (e) {
        this.deps.log.error({ err: errMessage(e), reason }, 'reconcile failed unexpectedly');
      } finally {
        this.passStartedAt = null;
      }
    });
    return this.running;
  }

  /** Queue a reconcile; several requests while one runs collapse into one more run. */
  kick(reason: string): Promise<void> {
    if (this.queued) return this.running;
    this.queued = true;
    this.running = this.running.then(async () => {
      this.queued = false;
      if (this.signal.aborted) return;
      this.passStartedAt = Date.now();
      try {
        await this.reconcileOnce(reason);
      } catch (e) {
        this.deps.log.error({ err: errMessage(e) }, 'reconcile failed unexpectedly');
      } finally {
        this.passStartedAt = null;
      }
    });
    return this.running;
  }

  async run(): Promise<LoopExit> {
    const { log } = this.deps;
    const loaded = await loadLastGood(this.deps.ctx.stateDir, this.deps);
    this.lastGood = loaded.desired;
    this.stateError = loaded.error;
    if (loaded.error) log.error({ code: loaded.error.code }, loaded.error.message);
    this.deps.onRunning?.(summaryLine({ desired: this.lastGood?.generation ?? null, applied: this.appliedGeneration, phase: 'starting', probesOk: 0, probes: 0, reachable: true }));
    const wd = this.deps.watchdog;
    if (wd) {
      // The loop's own tick (real time: the watchdog is systemd's clock, not the injected one).
      this.watchdogTimer = setInterval(() => {
        if (loopAlive(Date.now(), { pass: this.passStartedAt, turn: this.turnStartedAt }, wd.stuckAfterMs)) wd.feed();
        else log.error({ stuckAfterMs: wd.stuckAfterMs ?? STUCK_AFTER_MS }, 'reconcile loop stuck: no longer feeding the watchdog');
      }, wd.everyMs);
      this.watchdogTimer.unref();
    }
    if (this.lastGood) {
      log.info({ generation: this.lastGood.generation }, 'starting from the last good desired state');
      await this.kick('startup');
    }
    this.timer = setInterval(() => void this.cycle('periodic resync', false), this.deps.resyncMs ?? 60_000);
    this.timer.unref();
    try {
      while (!this.signal.aborted) {
        const started = this.deps.now();
        this.turnStartedAt = Date.now();
        if (this.deps.maintain) await this.deps.maintain().catch((e) => log.warn({ err: errMessage(e) }, 'maintenance failed'));
        let outcome: 'ok' | 'event' | 'error' | 'removed';
        const pollAbort = new AbortController();
        this.pollAbort = pollAbort;
        try {
          // After a failure, ask for an immediate answer: contact (and a due renewal) must not
          // wait for a long-poll to run its course.
          outcome = await this.pollOnce(AbortSignal.any([this.signal, pollAbort.signal]), this.reachable && this.failures === 0 ? undefined : 0);
        } catch (e) {
          if (this.signal.aborted) break;
          if (pollAbort.signal.aborted) {
            outcome = 'ok'; // woken for a renewal: maintain, then poll again
          } else {
            outcome = 'error';
            this.onContactFailure(e);
            await this.kick('coordinator unreachable: reconciling the last good state locally');
          }
        } finally {
          this.pollAbort = null;
        }
        if (outcome === 'removed') return 'removed';
        if (this.signal.aborted) break;
        if (outcome === 'error' || this.refusal) {
          const delay = this.retryDelay();
          this.failures += 1;
          log.info({ retryInMs: delay, attempt: this.failures }, 'retrying the coordinator after a delay');
          // The renewal timer cuts the wait short (pollAbort), so a due renewal is tried at once.
          const wake = new AbortController();
          this.pollAbort = wake;
          await sleep(delay, AbortSignal.any([this.signal, wake.signal]));
          this.pollAbort = null;
        } else {
          this.failures = 0;
          const elapsed = this.deps.now() - started;
          // An event (a newer generation accepted, a wake naming a peer not seen before) cannot
          // repeat without end: poll again at once. Anything else is a cycle, and waits.
          const min = outcome === 'event' ? EVENT_MIN_CYCLE_MS : (this.deps.minCycleMs ?? 1000);
          if (elapsed < min) await sleep(min - elapsed, this.signal);
        }
      }
      return 'stopped';
    } finally {
      clearInterval(this.timer);
      clearInterval(this.watchdogTimer);
      await this.running;
      await this.deps.drift?.close().catch(() => undefined);
    }
  }

  private async pollOnce(signal: AbortSignal, waitSeconds?: number): Promise<'ok' | 'event' | 'error' | 'removed'> {
    const { log } = this.deps;
    const peersKnown = this.peersKnown();
    const answer = await this.deps.client.desired(this.lastGood?.generation ?? 0, signal, waitSeconds, peersKnown);
    this.onContactSuccess();
    if (answer.kind === 'peers') {
      const d = this.lastGood;
      if (!d) return 'ok';
      const watch = this.watchFor(d.generation);
      const { fresh, reprobe } = peersToReprobe(answer.body.applied.filter((a) => a.generation >= d.generation).map((a) => a.node), watch.seen, this.failingPeers());
      for (const n of fresh) watch.seen.add(n);
      if (reprobe.size > 0) await this.reprobe(reprobe, 'peer-applied');
      return fresh.length > 0 ? 'event' : 'ok';
    }
    if (answer.kind === 'removed') {
      log.error('the coordinator says this node was removed from its cluster (410); keeping the files as they are and stopping');
      return 'removed';
    }
    if (answer.kind === 'newer') {
      const j = judgeDesired(answer.body, this.lastGood, this.deps);
      if (!j.ok) {
        this.refusal = j.error;
        log.error({ code: j.error.code }, j.error.message);
        await this.kick('desired state refused');
        return 'error';
      }
      this.refusal = null;
      await saveLastGood(this.deps.ctx.stateDir, j.desired, this.deps.owner);
      this.stateError = null;
      log.info({ generation: j.desired.generation, previous: this.lastGood?.generation ?? 0 }, 'new desired state accepted');
      this.lastGood = j.desired;
      await this.kick(`generation ${j.desired.generation}`);
      return 'event';
    }
    // Unchanged: still reconcile (level-triggered; while steady, the cheap checks) and report,
    // which is also the heartbeat.
    await this.cycle('long-poll cycle', true);
    return 'ok';
  }

  private onContactSuccess(): void {
    if (!this.reachable) this.deps.log.info('coordinator reachable again');
    this.reachable = true;
    this.contactError = null;
    if (this.deps.onContact) void this.deps.onContact().catch((e) => this.deps.log.warn({ err: errMessage(e) }, 'post-contact maintenance failed'));
  }

  private onContactFailure(e: unknown): void {
    const message = errMessage(e);
    const code = e instanceof CoordinatorError ? e.code : 'E_UNREACHABLE';
    if (this.reachable) {
      this.deps.log.warn({ code, err: message, servingGeneration: this.lastGood?.generation ?? null }, 'coordinator unreachable: serving the last good state (stale)');
    }
    this.reachable = false;
    this.contactError = { code: code === 'E_HTTP' ? 'E_COORDINATOR' : 'E_COORDINATOR_UNREACHABLE', message };
  }

  /** The earliest of the certificates' notAfter (identity included) and the CRL's nextUpdate. */
  private survivesUntil(desired: NodeDesired | null): string | null {
    const ends = [this.deps.certs.earliestExpiry, this.deps.identityNotAfter?.() ?? null].filter((x): x is number => x !== null);
    if (desired?.crl) {
      try {
        const next = crlInfo(desired.crl).nextUpdate;
        if (next) ends.push(next.getTime());
      } catch {
        // reported by the certificate manager
      }
    }
    return ends.length > 0 ? new Date(Math.min(...ends)).toISOString() : null;
  }

  private runtimeErrors(extra: RuntimeError[]): RuntimeError[] {
    return [this.stateError, this.refusal, this.contactError, ...extra].filter((e): e is RuntimeError => e !== null);
  }

  /** One level-triggered pass: certificates, apply, prune, probes, status. */
  private async reconcileOnce(reason: string): Promise<void> {
    if (this.deps.refreshContext) this.deps = { ...this.deps, ctx: this.deps.refreshContext(this.deps.ctx) };
    const { log, ctx } = this.deps;
    const desired = this.lastGood;
    let certErrors: RuntimeError[] = [];
    let probes: ProbeResult[] = [];
    let installed: Awaited<ReturnType<CertificateManager['ensure']>>['installed'] = [];
    if (desired) {
      log.debug({ reason, generation: desired.generation }, 'reconciling');
      this.cycles.proved += 1;
      this.lastProof = { at: this.deps.now(), generation: desired.generation, server: this.deps.serverFingerprint?.() ?? null };
      const startedAt = new Date(this.deps.now()).toISOString();
      const t0 = performance.now();
      this.deps.drift?.pause();
      const certs = await this.deps.certs.ensure(desired, { online: this.reachable }).catch((e): Awaited<ReturnType<CertificateManager['ensure']>> => ({
        installed: [],
        issued: [],
        errors: [{ code: 'E_CERT', message: errMessage(e) }],
      }));
      certErrors = certs.errors;
      installed = certs.installed;
      const certsMs = performance.now() - t0;
      let result: ApplyResult;
      try {
        result = await this.deps.apply(ctx, { desired, certificates: certs.installed });
      } catch (e) {
        result = { phase: 'failed', changed: false, errors: [{ code: 'E_APPLY', message: errMessage(e) }], files: this.lastApply?.files ?? [], pendingRestart: [], servedCertificate: null, clientConnections: [] };
      }
      this.lastApply = result;
      const proved = result.phase === 'converged' || result.phase === 'pending-restart';
      const newlyApplied = proved && this.appliedGeneration !== desired.generation;
      if (proved) {
        if (newlyApplied) log.info({ generation: desired.generation, phase: result.phase, changed: result.changed }, 'generation applied and proved');
        this.appliedGeneration = desired.generation;
        await this.deps.certs.prune(certs.installed, desired.certificates.map((c) => c.id)).catch((e) => log.warn({ err: errMessage(e) }, 'pruning old certificate versions failed'));
        if (desired.crl !== null) {
          // The new CRL is loaded (proved): end the live sessions of revoked certificates.
          const terminate = this.deps.terminateRevoked ?? ((c: NodeContext, crl: string) => withSession(c, (s) => terminateRevokedSessions(s, crl)));
          try {
            const ended = await terminate(ctx, desired.crl);
            if (ended.length > 0) log.warn({ sessions: ended }, 'ended sessions that authenticated with a revoked certificate');
          } catch (e) {
            certErrors = [...certErrors, { code: 'E_REVOKED_SESSIONS', message: `could not end the sessions of revoked certificates: ${errMessage(e)}` }];
          }
        }
        if (!this.ready) {
          this.ready = true;
          log.info({ generation: desired.generation, phase: result.phase }, 'agent ready: first reconcile succeeded');
          this.deps.onReady?.();
        }
      } else {
        log.error({ generation: desired.generation, phase: result.phase, errors: result.errors }, 'apply did not converge');
      }
      if (result.changed) log.info({ files: result.files.length }, 'node changed');
      if (proved) this.baseline = result.files;
      // Not converged: try again soon rather than at the next resync, e.g. an agent started
      // before its server (pg_autoctl create) applies within seconds of the server appearing.
      // Waiting for the server, for as long as it takes; anything else a few times, then the
      // resync takes over (a refused rule does not go away by retrying every 15 s).
      this.applyFailures = proved ? 0 : this.applyFailures + 1;
      const waitingForServer = result.errors.length > 0 && result.errors.every((e) => WAITING_FOR_SERVER.has(e.code));
      if (!proved && (waitingForServer || this.applyFailures <= 3)) this.scheduleRetry(backoffDelay(Math.min(this.applyFailures - 1, 30), this.deps.random, APPLY_RETRY), 'applying again after a failed apply');
      if (this.baseline) {
        this.deps.drift?.resume(this.baseline, (d) => {
          log.warn({ path: d.path, kinds: d.kinds }, 'drift in a managed file: repairing');
          this.driftNotes.push({ code: 'DRIFT_REPAIRED', message: `${d.path}: ${d.kinds.join(', ')} changed outside pgaccord; restored` });
          void this.kick(`drift in ${d.path}`);
        });
      }
      const tProbe = performance.now();
      probes = await probeAll(result.clientConnections, this.deps.probe, probeReason(reason));
      this.probePasses[probeReason(reason)] += 1;
      for (const p of probes.filter((p) => !p.ok)) log.warn({ to: p.to, role: p.role, error: p.error }, 'connection probe failed');
      // A peer may simply not have caught up yet. Its agent's report wakes this one (peer wake:
      // the edges to it are probed again then); the timer is the safety net (a wake lost with a
      // coordinator restart, a coordinator that does not send them).
      if (probes.some((p) => !p.ok)) this.scheduleRetry(this.deps.reprobeMs ?? 2000, PROBE_RETRY);
      else this.cancelProbeRetry();
      if (newlyApplied) {
        const phases: Record<string, number> = { certs: round1(certsMs), ...(result.phases ?? {}), probe: round1(performance.now() - tProbe) };
        this.timings = { generation: desired.generation, startedAt, phases, totalMs: round1(performance.now() - t0) };
      }
      this.lastCertErrors = certErrors;
      this.lastInstalled = installed;
      this.lastProbes = probes;
    }
    await this.publish(desired, probes, certErrors, installed);
  }

  /** Build the status, report it (the coordinator and the local mirror). */
  private async publish(desired: NodeDesired | null, probes: ProbeResult[], certErrors: RuntimeError[], installed: Awaited<ReturnType<CertificateManager['ensure']>>['installed'], knownPostgresVersion?: string): Promise<void> {
    const { log, ctx } = this.deps;
    const notes = this.driftNotes.splice(0);
    this.scheduleRenewalWake();
    const status = buildStatus({
      survivesUntil: this.survivesUntil(desired),
      appliedGeneration: this.appliedGeneration,
      apply: desired ? this.lastApply : null,
      runtimeErrors: [...this.runtimeErrors(certErrors), ...notes],
      certificates: certReports(installed),
      probes,
      coordinatorReachable: this.reachable,
      postgresVersion: knownPostgresVersion ?? (await this.deps.postgresVersion()),
      ...(desired && this.timings?.generation === this.appliedGeneration ? { timings: this.timings } : {}),
    });
    this.lastStatus = status;
    this.deps.onSummary?.(summaryLine({ desired: desired?.generation ?? null, applied: this.appliedGeneration, phase: desired ? (this.lastApply?.phase ?? null) : null, probesOk: probes.filter((p) => p.ok).length, probes: probes.length, reachable: this.reachable }));
    let reported = false;
    if (this.reachable) {
      try {
        const t0 = performance.now();
        await this.deps.client.status(status);
        reported = true;
        // The post that carried the pass's own timings: its length goes out with the next report.
        const t = this.timings;
        if (t && status.timings === t && t.phases.report === undefined) t.phases.report = round1(performance.now() - t0);
      } catch (e) {
        log.warn({ err: errMessage(e) }, 'status report failed');
        if (e instanceof CoordinatorError && e.code === 'E_UNREACHABLE') this.onContactFailure(e);
      }
    }
    await writeLocalStatus(ctx.stateDir, status, { at: new Date(this.deps.now()).toISOString(), reported }, this.deps.owner).catch((e) => log.warn({ err: errMessage(e) }, 'writing the local status failed'));
  }
}

const round1 = (ms: number): number => Math.round(ms * 10) / 10;

function errMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
