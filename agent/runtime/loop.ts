// The reconcile loop: long-poll the coordinator for the node's desired state, and, level-
// triggered, make the node match the last good desired state on every cycle, on drift, and on a
// timer, by handing it (with the certificate pairs) to the apply engine. A desired state that is
// empty, shrunken, garbled, foreign or older than the last good one is refused: the node keeps
// its last good state. When the coordinator cannot be reached, the node keeps serving and being
// reconciled locally, and its status says 'stale'.
import type { NodeDesired } from '../../shared/contract/schema.ts';
import type { ApplyTimings, ProbeResult, AgentStatus } from '../../shared/contract/status.ts';
import type { Problem } from '../../shared/contract/problem.ts';
import { crlInfo } from '../../shared/crypto/crl.ts';
import { backoffDelay, DEFAULT_BACKOFF, sleep } from './backoff.ts';
import { certReports, type EnsureResult } from './certs.ts';
import { CoordinatorError } from './client.ts';
import { probeAll, type ProbeReason } from '../probe/probes.ts';
import { buildStatus, writeLocalStatus } from './status.ts';
import { loadLastGood, saveLastGood } from './last-good.ts';
import { afterProof, ensureAndApply } from './pass.ts';
import type { FileReportT, LoopDeps, LoopExit } from './loop-deps.ts';
import type { ApplyResult, NodeContext } from '../apply/types.ts';
import {
  APPLY_RETRY,
  contactRetryDelay,
  errMessage,
  EVENT_MIN_CYCLE_MS,
  isSteady,
  judgeDesired,
  loopAlive,
  peersToReprobe,
  PROBE_RETRY,
  probeReason,
  renewalWake,
  retryApplySoon,
  STUCK_AFTER_MS,
  summaryLine,
  survivesUntil,
} from './judge.ts';

export class ReconcileLoop {
  private lastGood: NodeDesired | null = null;
  private appliedGeneration = 0;
  private reachable = true;
  private refusal: Problem | null = null;
  private contactError: Problem | null = null;
  private stateError: Problem | null = null;
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
  private driftNotes: Problem[] = [];
  /** The status last built (for tests and for the local mirror). */
  lastStatus: AgentStatus | null = null;
  /** When the reconcile pass in flight and the current poll turn began (the watchdog's view). */
  private passStartedAt: number | null = null;
  private turnStartedAt: number | null = null;
  private watchdogTimer: NodeJS.Timeout | undefined;
  /** What the last pass had, for a probe-only pass (peer wake) to report with. */
  private lastProbes: ProbeResult[] = [];
  private lastCertErrors: Problem[] = [];
  private lastInstalled: EnsureResult['installed'] = [];
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
    const renewals = this.renewals();
    if (renewals.every((x) => x === null)) return;
    const at = Math.min(...renewals.filter((x): x is number => x !== null)) + 250;
    if (this.renewalTimerAt === at && this.renewalTimer) return;
    clearTimeout(this.renewalTimer);
    const wake = renewalWake(renewals, this.deps.now(), this.reachable);
    if (wake === null) return;
    const delay = wake.delayMs;
    this.renewalTimerAt = wake.at;
    this.renewalTimer = setTimeout(() => {
      this.renewalTimer = undefined;
      this.renewalTimerAt = null;
      this.deps.log.debug('renewal time: waking up');
      this.pollAbort?.abort();
      void this.kick('certificate renewal due');
    }, delay);
    this.renewalTimer.unref();
  }

  /** When a certificate pair and the agent identity are next due for renewal (ms), each or null. */
  private renewals(): (number | null)[] {
    return [this.deps.certs.nextRenewalAt, this.deps.nextMaintenanceAt?.() ?? null];
  }

  /** When a certificate pair and the agent identity expire (ms), each or null. */
  private expiries(): (number | null)[] {
    return [this.deps.certs.earliestExpiry, this.deps.identityNotAfter?.() ?? null];
  }

  /** The retry delay after a failure (see contactRetryDelay). */
  private retryDelay(): number {
    return contactRetryDelay(this.failures, this.deps.random, this.deps.backoff ?? DEFAULT_BACKOFF, this.deps.now(), this.renewals(), this.expiries());
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
    const d = this.lastGood;
    return isSteady({
      now,
      proofEveryMs: this.deps.proofEveryMs ?? 0,
      lastProof: this.lastProof,
      desiredGeneration: d?.generation ?? null,
      appliedGeneration: this.appliedGeneration,
      lastApply: this.lastApply,
      probesOk: this.lastProbes.every((p) => p.ok),
      unsettled: this.lastCertErrors.length > 0 || this.runtimeErrors([]).length > 0 || this.driftNotes.length > 0 || this.reprobeTimer !== undefined,
      renewalDue: this.renewals().some((t) => t !== null && t <= now),
      canCheckFiles: this.deps.drift?.check !== undefined,
      reachable: this.reachable,
      reported: this.lastStatus !== null,
    });
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
    let next: number | null = null;
    try {
      next = desired?.crl ? (crlInfo(desired.crl).nextUpdate?.getTime() ?? null) : null;
    } catch {
      // reported by the certificate manager
    }
    return survivesUntil(this.expiries(), next);
  }

  private runtimeErrors(extra: Problem[]): Problem[] {
    return [this.stateError, this.refusal, this.contactError, ...extra].filter((e): e is Problem => e !== null);
  }

  /** One level-triggered pass: certificates, apply, prune, probes, status. */
  private async reconcileOnce(reason: string): Promise<void> {
    if (this.deps.refreshContext) this.deps = { ...this.deps, ctx: this.deps.refreshContext(this.deps.ctx) };
    const { log, ctx } = this.deps;
    const desired = this.lastGood;
    let certErrors: Problem[] = [];
    let probes: ProbeResult[] = [];
    let installed: EnsureResult['installed'] = [];
    if (desired) {
      log.debug({ reason, generation: desired.generation }, 'reconciling');
      this.cycles.proved += 1;
      this.lastProof = { at: this.deps.now(), generation: desired.generation, server: this.deps.serverFingerprint?.() ?? null };
      const startedAt = new Date(this.deps.now()).toISOString();
      const t0 = performance.now();
      this.deps.drift?.pause();
      const { result, proved, certs, certsMs } = await ensureAndApply(this.deps, ctx, desired, this.reachable, this.lastApply?.files ?? []);
      certErrors = certs.errors;
      installed = certs.installed;
      this.lastApply = result;
      const newlyApplied = proved && this.appliedGeneration !== desired.generation;
      if (proved) {
        if (newlyApplied) log.info({ generation: desired.generation, phase: result.phase, changed: result.changed }, 'generation applied and proved');
        this.appliedGeneration = desired.generation;
        certErrors = [...certErrors, ...(await afterProof(this.deps, ctx, desired, certs))];
        if (!this.ready) {
          this.ready = true;
          log.info({ generation: desired.generation, phase: result.phase }, 'agent ready: first reconcile succeeded');
        }
      } else {
        log.error({ generation: desired.generation, phase: result.phase, errors: result.errors }, 'apply did not converge');
      }
      if (result.changed) log.info({ files: result.files.length }, 'node changed');
      if (proved) this.baseline = result.files;
      // Not converged: try again soon rather than at the next resync, e.g. an agent started
      // before its server (pg_autoctl create) applies within seconds of the server appearing.
      this.applyFailures = proved ? 0 : this.applyFailures + 1;
      if (!proved && retryApplySoon(this.applyFailures, result.errors)) this.scheduleRetry(backoffDelay(Math.min(this.applyFailures - 1, 30), this.deps.random, APPLY_RETRY), 'applying again after a failed apply');
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
  private async publish(desired: NodeDesired | null, probes: ProbeResult[], certErrors: Problem[], installed: EnsureResult['installed'], knownPostgresVersion?: string): Promise<void> {
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
