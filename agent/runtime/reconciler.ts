// The reconciler: the passes of the reconcile loop, one at a time. A full pass ensures the
// certificate pairs, applies and proves the last good desired state, probes the edges and
// reports; while steady a cycle only checks the files and reports the last proof; a peer wake
// or a failed probe probes some edges again without applying. The loop (agent/runtime/loop.ts)
// polls the coordinator and tells it what to do; what it knows of it comes through LoopView.
import type { NodeDesired } from '../../shared/contract/schema.ts';
import type { ApplyTimings, ProbeResult, AgentStatus } from '../../shared/contract/status.ts';
import type { Problem } from '../../shared/contract/problem.ts';
import { backoffDelay, retryAfterMs } from './backoff.ts';
import { certReports, type EnsureResult } from './certs.ts';
import { CoordinatorError } from './client.ts';
import { probeAll, type ProbeReason } from '../probe/probes.ts';
import { buildStatus, writeLocalStatus } from './status.ts';
import { afterProof, ensureAndApply } from './pass.ts';
import { noteProbePass, passTimings, round1 } from './timings.ts';
import { expiriesOf, renewalsOf, type FileReportT, type LoopDeps } from './loop-deps.ts';
import type { ApplyResult, NodeContext } from '../apply/types.ts';
import { APPLY_RETRY, errMessage, isSteady, PeerWatch, planProbes, PROBE_RETRY, probeReason, refusedLater, retryApplySoon, retryPeers, summaryLine, survivesUntil, WAKE_WAIT_PERIODS, type Contact } from './judge.ts';

/** What the reconciler needs of the loop: its contact with the coordinator. */
export interface LoopView {
  /** In contact with the coordinator, unreachable, or refusing (the status of its 429/503). */
  contact(): Contact;
  /** The runtime's own errors now: a refused or corrupt desired state, a failed contact. */
  runtimeErrors(): Problem[];
  /** A status report could not reach the coordinator. */
  contactFailed(e: unknown): void;
  /** The coordinator refused a status report (429 rate limited, 503): send it again soon, not before its Retry-After (ms, bounded). */
  reportRefused(refusal: { status: number; retryAfterMs: number | null }): void;
  /** After each status: wake at the next renewal instant. */
  scheduleRenewalWake(): void;
}

export class Reconciler {
  /** The last good desired state (set by the loop once accepted). */
  lastGood: NodeDesired | null = null;
  private appliedGeneration = 0;
  private lastApply: ApplyResult | null = null;
  private ready = false;
  private running: Promise<void> = Promise.resolve();
  private queued = false;
  /** Files the last proved apply reported: the drift baseline. */
  private baseline: FileReportT[] | null = null;
  /** Drift seen since the last status, reported once. */
  private driftNotes: Problem[] = [];
  /** The status last built (for tests and for the local mirror). */
  lastStatus: AgentStatus | null = null;
  /** When the pass in flight began (the watchdog's view), or null. */
  passStartedAt: number | null = null;
  /** What the last pass had, for a probe-only pass (peer wake) to report with, and its desired generation. */
  private lastProbes: ProbeResult[] = [];
  private probesOf = 0;
  private lastCertErrors: Problem[] = [];
  private lastInstalled: EnsureResult['installed'] = [];
  /** The phases of the pass that applied the current generation (report: filled in once its post returned). */
  private timings: ApplyTimings | null = null;
  private readonly peers = new PeerWatch();
  /** When the last proving pass began, for which generation and server (the steady state's reference). */
  private lastProof: { at: number; generation: number; server: string | null } | null = null;
  /** Cycles that proved (a full pass) and cycles that reported the last proof (steady heartbeat). */
  readonly cycles = { proved: 0, heartbeat: 0 };
  /** Counts of probe passes by reason (for tests and the log). */
  readonly probePasses: Record<ProbeReason, number> = { apply: 0, retry: 0, 'peer-applied': 0 };

  constructor(private deps: LoopDeps, private readonly view: LoopView, private readonly signal: AbortSignal) {}

  /** Replace the node context (after SIGHUP re-read the configuration). */
  setContext(ctx: NodeContext): void {
    this.deps = { ...this.deps, ctx };
  }

  /** The loop stops: no retry fires any more. */
  stop(): void {
    clearTimeout(this.reprobeTimer);
  }

  /** Settles once the passes queued so far have run. */
  idle(): Promise<void> {
    return this.running;
  }

  /** A peer wake: the nodes that applied a generation. Probes again the unproved edges to the ones not seen before; whether there were any. */
  async peerWake(applied: { node: string; generation: number }[]): Promise<boolean> {
    const d = this.lastGood;
    if (!d) return false;
    const { fresh, reprobe } = this.peers.wake(d.generation, applied, this.unprovedPeers(d.generation));
    if (reprobe.size > 0) await this.reprobe(reprobe, 'peer-applied');
    return fresh.length > 0;
  }

  private reprobeTimer: NodeJS.Timeout | undefined;
  private retryReason: string | null = null;
  /** Consecutive applies that did not converge (the local server absent, a rule refused...). */
  private applyFailures = 0;

  /** Reconcile again soon: after a failed probe, or a failed apply (with backoff up to 15 s). */
  private scheduleRetry(delayMs: number, reason: string): void {
    if (this.reprobeTimer || this.signal.aborted) return;
    this.reprobeTimer = setTimeout(() => {
      this.reprobeTimer = undefined;
      // A failed probe: probe the edges due again (nothing re-applied). A failed apply: reconcile.
      if (reason === PROBE_RETRY) void this.reprobe(retryPeers(this.lastProbes, this.deps.now(), WAKE_WAIT_PERIODS * (this.deps.reprobeMs ?? 2000)), 'retry');
      else void this.kick(reason);
    }, delayMs);
    this.reprobeTimer.unref();
    this.retryReason = reason;
  }

  /** Every probe passes now: the safety timer armed by a failed probe has nothing left to do. */
  private cancelProbeRetry(): void {
    if (this.reprobeTimer && this.retryReason === PROBE_RETRY) {
      clearTimeout(this.reprobeTimer);
      this.reprobeTimer = undefined;
    }
  }

  /** The peers an edge of this node was last probed to before they were known to have applied `generation` (passing or not). */
  private unprovedPeers(generation: number): Set<string> {
    return new Set(this.lastProbes.filter((p) => (p.peerGeneration ?? 0) < generation).map((p) => p.to));
  }

  /**
   * Probe `conns`, each result stamped with the generation its peer was known to have applied
   * when the probe began. An edge to this node itself (a Patroni member probes every member)
   * meets the generation this node applied: no wake will ever name it.
   */
  private async probeStamped(conns: ApplyResult['clientConnections'], desired: { node: string; generation: number }, reason: ProbeReason): Promise<ProbeResult[]> {
    const { node, generation } = desired;
    const known = conns.map((c) => (c.to === node ? generation : this.peers.generationOf(generation, c.to)));
    const results = await probeAll(conns, this.deps.probe, reason);
    // One line per probe run (bench:converge counts them with --log-level debug).
    this.deps.log.debug({ reason, generation, edges: conns.length }, 'probed edges');
    return results.map((p, i) => ({ ...p, peerGeneration: known[i]! }));
  }

  /**
   * The `peers` count to send with the long-poll: the peers seen, while this node applied the
   * desired generation and an edge of it was probed before its peer was seen; otherwise no peer wakes.
   */
  peersKnown(): number | undefined {
    const d = this.lastGood;
    if (!d || this.appliedGeneration !== d.generation || !this.lastApply) return undefined;
    return this.peers.known(d.generation, this.unprovedPeers(d.generation));
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
   * Probe the edges to `peers` again, nothing applied (a peer wake, or the safety timer); report
   * with the other probes and the server version as they were (no session: a restart brings a full pass).
   */
  private async reprobeOnce(peers: Set<string>, reason: ProbeReason): Promise<void> {
    const desired = this.lastGood;
    const conns = this.lastApply?.clientConnections ?? [];
    if (!desired || this.appliedGeneration !== desired.generation || conns.length !== this.lastProbes.length) {
      if (reason === 'retry') void this.kick(PROBE_RETRY); // nothing proved to probe against: reconcile
      return;
    }
    const idx = conns.map((c, i) => (peers.has(c.to) ? i : -1)).filter((i) => i >= 0);
    // The timer with nothing due yet (edges waiting for their peer's wake): it keeps ticking.
    if (idx.length === 0 && reason === 'retry' && this.lastProbes.some((p) => !p.ok)) this.scheduleRetry(this.deps.reprobeMs ?? 2000, PROBE_RETRY);
    if (idx.length === 0) return;
    this.deps.log.debug({ peers: [...peers], generation: desired.generation, reason }, 'probing edges again without applying');
    this.probePasses[reason] += 1;
    const [t0, startedAt] = [performance.now(), new Date(this.deps.now()).toISOString()];
    const fresh = await this.probeStamped(idx.map((i) => conns[i]!), desired, reason);
    noteProbePass(this.timings, desired.generation, { startedAt, reason, edges: idx.length, ms: performance.now() - t0 });
    const probes = [...this.lastProbes];
    idx.forEach((i, k) => (probes[i] = fresh[k]!));
    for (const p of fresh.filter((p) => !p.ok)) this.deps.log.warn({ to: p.to, role: p.role, error: p.error }, 'connection probe failed');
    if (probes.every((p) => p.ok)) this.cancelProbeRetry();
    else this.scheduleRetry(this.deps.reprobeMs ?? 2000, PROBE_RETRY);
    this.lastProbes = probes;
    await this.publish(desired, probes, this.lastCertErrors, this.lastInstalled, this.lastStatus?.versions.postgres);
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
      unsettled: this.lastCertErrors.length > 0 || this.view.runtimeErrors().length > 0 || this.driftNotes.length > 0 || this.reprobeTimer !== undefined,
      renewalDue: renewalsOf(this.deps).some((t) => t !== null && t <= now),
      canCheckFiles: this.deps.drift?.check !== undefined,
      reachable: this.view.contact() === 'reachable',
      reported: this.lastStatus !== null,
    });
  }

  /**
   * A cycle with nothing new (a long-poll that expired, the resync timer): a full reconcile, or
   * while steady the cheap checks, then (`report`) the last proof as the heartbeat.
   */
  cycle(reason: string, report: boolean): Promise<void> {
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
      const { result, proved, certs, certsMs } = await ensureAndApply(this.deps, ctx, desired, this.view.contact() === 'reachable', this.lastApply?.files ?? []);
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
      if (!proved && retryApplySoon(this.applyFailures, result.errors)) {
        this.scheduleRetry(backoffDelay(Math.min(this.applyFailures - 1, 30), this.deps.random, APPLY_RETRY), 'applying again after a failed apply');
      }
      if (this.baseline) {
        this.deps.drift?.resume(this.baseline, (d) => {
          log.warn({ path: d.path, kinds: d.kinds }, 'drift in a managed file: repairing');
          this.driftNotes.push({ code: 'DRIFT_REPAIRED', message: `${d.path}: ${d.kinds.join(', ')} changed outside pgaccord; restored` });
          void this.kick(`drift in ${d.path}`);
        });
      }
      const tProbe = performance.now();
      const conns = result.clientConnections;
      const known = (to: string) => this.peers.generationOf(desired.generation, to) > 0;
      const plan = planProbes(conns, desired, known, this.probesOf === desired.generation ? this.lastProbes : [], new Date(this.deps.now()).toISOString());
      probes = plan.results;
      const fresh = plan.probe.length > 0 ? await this.probeStamped(plan.probe.map((i) => conns[i]!), desired, probeReason(reason)) : [];
      plan.probe.forEach((i, k) => (probes[i] = fresh[k]!));
      if (fresh.length > 0) this.probePasses[probeReason(reason)] += 1;
      for (const p of fresh.filter((p) => !p.ok)) log.warn({ to: p.to, role: p.role, error: p.error }, 'connection probe failed');
      // An edge not proved (failing, or its peer not known to have applied): the peer's report
      // wakes this agent, the timer is the safety net (a wake lost: a restart, several coordinators).
      if (probes.some((p) => !p.ok)) this.scheduleRetry(this.deps.reprobeMs ?? 2000, PROBE_RETRY);
      else this.cancelProbeRetry();
      if (newlyApplied) this.timings = passTimings(desired.generation, startedAt, certsMs, result.phases, performance.now() - tProbe, performance.now() - t0);
      this.lastCertErrors = certErrors;
      this.lastInstalled = installed;
      this.lastProbes = probes;
      this.probesOf = desired.generation;
    }
    await this.publish(desired, probes, certErrors, installed);
  }

  /** Send the status again as it is (a report the coordinator refused), on its turn among the passes. */
  resend(): Promise<void> {
    return (this.running = this.running.then(() => this.publish(this.lastGood, this.lastProbes, this.lastCertErrors, this.lastInstalled, this.lastStatus?.versions.postgres)));
  }

  /** Build the status, report it (the coordinator and the local mirror). */
  private async publish(
    desired: NodeDesired | null,
    probes: ProbeResult[],
    certErrors: Problem[],
    installed: EnsureResult['installed'],
    knownPostgresVersion?: string,
  ): Promise<void> {
    const { log, ctx } = this.deps;
    const notes = this.driftNotes.splice(0);
    this.view.scheduleRenewalWake();
    const status = buildStatus({
      survivesUntil: survivesUntil(expiriesOf(this.deps), desired?.crl ?? null),
      appliedGeneration: this.appliedGeneration,
      apply: desired ? this.lastApply : null,
      runtimeErrors: [...this.view.runtimeErrors(), ...certErrors, ...notes],
      certificates: certReports(installed),
      probes,
      coordinatorReachable: this.view.contact() === 'reachable',
      postgresVersion: knownPostgresVersion ?? (await this.deps.postgresVersion()),
      ...(desired && this.timings?.generation === this.appliedGeneration ? { timings: this.timings } : {}),
    });
    this.lastStatus = status;
    const phase = desired ? (this.lastApply?.phase ?? null) : null;
    const probesOk = probes.filter((p) => p.ok).length;
    const summary = { desired: desired?.generation ?? null, applied: this.appliedGeneration, phase, probesOk, probes: probes.length, contact: this.view.contact() };
    this.deps.onSummary?.(summaryLine(summary));
    let reported = false;
    if (this.view.contact() === 'reachable') {
      try {
        const t0 = performance.now();
        await this.deps.client.status(status);
        reported = true;
        // The post that carried the pass's own timings: its length goes out with the next report.
        const t = this.timings;
        if (t && status.timings === t && t.phases.report === undefined) t.phases.report = round1(performance.now() - t0);
      } catch (e) {
        log.warn({ err: errMessage(e) }, 'status report failed');
        if (e instanceof CoordinatorError && e.code === 'E_UNREACHABLE') this.view.contactFailed(e);
        // Only a refusal that says "later" (rate limited, busy) is worth sending again soon; any
        // other (400, 401, 410...) would be refused the same way every period.
        else if (e instanceof CoordinatorError && refusedLater(e.status)) this.view.reportRefused({ status: e.status!, retryAfterMs: retryAfterMs(e.retryAfter, this.deps.now()) });
      }
    }
    const at = new Date(this.deps.now()).toISOString();
    const mirrored = writeLocalStatus(ctx.stateDir, status, { at, reported }, this.deps.owner);
    await mirrored.catch((e) => log.warn({ err: errMessage(e) }, 'writing the local status failed'));
  }
}
