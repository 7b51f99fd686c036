// The reconcile loop: long-poll the coordinator for the node's desired state, and, level-
// triggered, make the node match the last good desired state on every cycle, on drift, and on a
// timer, by handing it (with the certificate pairs) to the apply engine. A desired state that is
// empty, shrunken, garbled, foreign or older than the last good one is refused: the node keeps
// its last good state. When the coordinator cannot be reached, the node keeps serving and being
// reconciled locally, and its status says 'stale'.
import type { Problem } from '../../shared/contract/problem.ts';
import type { AgentStatus } from '../../shared/contract/status.ts';
import { DEFAULT_BACKOFF, retryAfterMs, sleep } from './backoff.ts';
import { CoordinatorError } from './client.ts';
import type { ProbeReason } from '../probe/probes.ts';
import { loadLastGood, saveLastGood } from './last-good.ts';
import { Reconciler } from './reconciler.ts';
import { expiriesOf, renewalsOf, type LoopDeps, type LoopExit } from './loop-deps.ts';
import type { NodeContext } from '../apply/types.ts';
import { contactRetryDelay, errMessage, EVENT_MIN_CYCLE_MS, judgeDesired, loopAlive, refusedLater, renewalWake, STUCK_AFTER_MS, summaryLine, type Contact } from './judge.ts';

export class ReconcileLoop {
  /** The last contact: answered, unreachable, or refused (429/503: the coordinator answered, it is not unreachable). */
  private contact: Contact = 'reachable';
  private refusal: Problem | null = null;
  private contactError: Problem | null = null;
  private stateError: Problem | null = null;
  private readonly stopController = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  /** Wakes the loop when a certificate or the identity is due for renewal. */
  private renewalTimer: NodeJS.Timeout | undefined;
  private renewalTimerAt: number | null = null;
  /** Aborts the long-poll in flight (so that maintenance runs now), without stopping the loop. */
  private pollAbort: AbortController | null = null;
  private failures = 0;
  /** When the current poll turn began (the watchdog's view, with the pass in flight). */
  private turnStartedAt: number | null = null;
  private watchdogTimer: NodeJS.Timeout | undefined;
  /** The passes; told of the coordinator through this loop. */
  private readonly reconciler: Reconciler;

  constructor(private deps: LoopDeps) {
    this.reconciler = new Reconciler(
      deps,
      {
        contact: () => this.contact,
        runtimeErrors: () => [this.stateError, this.refusal, this.contactError].filter((e): e is Problem => e !== null),
        contactFailed: (e) => this.onContactFailure(e),
        reportRefused: (r) => this.resendSoon(r.retryAfterMs),
        scheduleRenewalWake: () => this.scheduleRenewalWake(),
      },
      this.stopController.signal,
    );
  }

  get signal(): AbortSignal {
    return this.stopController.signal;
  }

  /** The status last built (for tests and for the local mirror). */
  get lastStatus(): AgentStatus | null {
    return this.reconciler.lastStatus;
  }

  /** Cycles that proved (a full pass) and cycles that reported the last proof (steady heartbeat). */
  get cycles(): { proved: number; heartbeat: number } {
    return this.reconciler.cycles;
  }

  /** Resync timer cycles run to their end (for tests: while steady they prove nothing). */
  resyncs = 0;

  /** Counts of probe passes by reason (for tests and the log). */
  get probePasses(): Record<ProbeReason, number> {
    return this.reconciler.probePasses;
  }

  /** Replace the node context (after SIGHUP re-read the configuration) and reconcile. */
  updateContext(ctx: NodeContext): void {
    this.deps = { ...this.deps, ctx };
    this.reconciler.setContext(ctx);
    void this.kick('configuration reloaded');
  }

  /** Queue a reconcile; several requests while one runs collapse into one more run. */
  kick(reason: string): Promise<void> {
    return this.reconciler.kick(reason);
  }

  stop(): void {
    this.stopController.abort();
    this.reconciler.stop();
    clearTimeout(this.renewalTimer);
    clearTimeout(this.resendTimer);
  }

  private resendTimer: NodeJS.Timeout | undefined;
  /**
   * A report the coordinator refused (rate limited, busy) goes again one probe period later, or
   * when its Retry-After says if that is later: the long-poll that follows may hold 30 s, and
   * until a report arrives the coordinator's view of this node (and so `status --wait`) is stale.
   */
  private resendSoon(retryAfterMs: number | null): void {
    if (this.resendTimer || this.signal.aborted) return;
    const delay = Math.max(this.deps.reprobeMs ?? 2000, retryAfterMs ?? 0);
    this.resendTimer = setTimeout(() => {
      this.resendTimer = undefined;
      void this.reconciler.resend();
    }, delay);
    this.resendTimer.unref();
  }

  /**
   * Wake up at the next renewal instant (a certificate pair or the agent identity) even when
   * nothing else happens: the resync timer is far too slow for short lifetimes. The long-poll in
   * flight is cut short so that the identity maintenance runs, and a reconcile renews the pairs.
   */
  private scheduleRenewalWake(): void {
    if (this.signal.aborted) return;
    const renewals = renewalsOf(this.deps);
    if (renewals.every((x) => x === null)) return;
    const at = Math.min(...renewals.filter((x): x is number => x !== null)) + 250;
    if (this.renewalTimerAt === at && this.renewalTimer) return;
    clearTimeout(this.renewalTimer);
    const wake = renewalWake(renewals, this.deps.now(), this.contact === 'reachable');
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

  /** The retry delay after a failure (see contactRetryDelay): at least a refusal's Retry-After. */
  private retryDelay(retryAfter: number | null): number {
    const { random, backoff } = this.deps;
    return contactRetryDelay(this.failures, random, backoff ?? DEFAULT_BACKOFF, this.deps.now(), renewalsOf(this.deps), expiriesOf(this.deps), retryAfter);
  }

  async run(): Promise<LoopExit> {
    const { log } = this.deps;
    const loaded = await loadLastGood(this.deps.ctx.stateDir, this.deps);
    const r = this.reconciler;
    r.lastGood = loaded.desired;
    this.stateError = loaded.error;
    if (loaded.error) log.error({ code: loaded.error.code }, loaded.error.message);
    this.deps.onRunning?.(summaryLine({ desired: r.lastGood?.generation ?? null, applied: 0, phase: 'starting', probesOk: 0, probes: 0, contact: 'reachable' }));
    const wd = this.deps.watchdog;
    if (wd) {
      // The loop's own tick (real time: the watchdog is systemd's clock, not the injected one).
      this.watchdogTimer = setInterval(() => {
        if (loopAlive(Date.now(), { pass: r.passStartedAt, turn: this.turnStartedAt }, wd.stuckAfterMs)) wd.feed();
        else log.error({ stuckAfterMs: wd.stuckAfterMs ?? STUCK_AFTER_MS }, 'reconcile loop stuck: no longer feeding the watchdog');
      }, wd.everyMs);
      this.watchdogTimer.unref();
    }
    if (r.lastGood) {
      log.info({ generation: r.lastGood.generation }, 'starting from the last good desired state');
      await this.kick('startup');
    }
    this.timer = setInterval(() => void r.cycle('periodic resync', false).then(() => (this.resyncs += 1)), this.deps.resyncMs ?? 60_000);
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
          outcome = await this.pollOnce(AbortSignal.any([this.signal, pollAbort.signal]), this.contact === 'reachable' && this.failures === 0 ? undefined : 0);
        } catch (e) {
          if (this.signal.aborted) break;
          if (pollAbort.signal.aborted) {
            outcome = 'ok'; // woken for a renewal: maintain, then poll again
          } else {
            outcome = 'error';
            this.onContactFailure(e);
            await this.kick(this.refused ? `coordinator refused the long-poll (HTTP ${this.refused.status}): reconciling the last good state locally` : 'coordinator unreachable: reconciling the last good state locally');
          }
        } finally {
          this.pollAbort = null;
        }
        if (outcome === 'removed') return 'removed';
        if (this.signal.aborted) break;
        if (outcome === 'error' || this.refusal) {
          const refused = this.refused;
          const delay = this.retryDelay(refused?.retryAfterMs ?? null);
          this.failures += 1;
          this.refused = null;
          if (refused) log.warn({ status: refused.status, code: refused.code, retryInMs: delay, attempt: this.failures }, 'coordinator refused the long-poll: retrying after a delay');
          else log.info({ retryInMs: delay, attempt: this.failures }, 'retrying the coordinator after a delay');
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
      await r.idle();
      await this.deps.drift?.close().catch(() => undefined);
    }
  }

  private async pollOnce(signal: AbortSignal, waitSeconds?: number): Promise<'ok' | 'event' | 'error' | 'removed'> {
    const { log } = this.deps;
    const r = this.reconciler;
    const peersKnown = r.peersKnown();
    const answer = await this.deps.client.desired(r.lastGood?.generation ?? 0, signal, waitSeconds, peersKnown);
    this.onContactSuccess();
    if (answer.kind === 'peers') return (await r.peerWake(answer.body.applied)) ? 'event' : 'ok';
    if (answer.kind === 'removed') {
      log.error('the coordinator says this node was removed from its cluster (410); keeping the files as they are and stopping');
      return 'removed';
    }
    if (answer.kind === 'newer') {
      const j = judgeDesired(answer.body, r.lastGood, this.deps);
      if (!j.ok) {
        this.refusal = j.error;
        log.error({ code: j.error.code }, j.error.message);
        await this.kick('desired state refused');
        return 'error';
      }
      this.refusal = null;
      await saveLastGood(this.deps.ctx.stateDir, j.desired, this.deps.owner);
      this.stateError = null;
      log.info({ generation: j.desired.generation, previous: r.lastGood?.generation ?? 0 }, 'new desired state accepted');
      r.lastGood = j.desired;
      await this.kick(`generation ${j.desired.generation}`);
      return 'event';
    }
    // Unchanged: still reconcile (level-triggered; while steady, the cheap checks) and report,
    // which is also the heartbeat.
    await r.cycle('long-poll cycle', true);
    return 'ok';
  }

  private onContactSuccess(): void {
    if (this.contact !== 'reachable') this.deps.log.info(this.contact === 'unreachable' ? 'coordinator reachable again' : 'coordinator answering again');
    this.contact = 'reachable';
    this.contactError = null;
    if (this.deps.onContact) void this.deps.onContact().catch((e) => this.deps.log.warn({ err: errMessage(e) }, 'post-contact maintenance failed'));
  }

  /** The last long-poll's refusal (429, 503), logged with the retry delay: the coordinator answered, it is not unreachable. */
  private refused: { status: number; code: string | undefined; retryAfterMs: number | null } | null = null;

  private onContactFailure(e: unknown): void {
    const r = this.reconciler;
    const message = errMessage(e);
    const code = e instanceof CoordinatorError ? e.code : 'E_UNREACHABLE';
    this.refused = e instanceof CoordinatorError && code === 'E_HTTP' && refusedLater(e.status) ? { status: e.status!, code: e.apiCode, retryAfterMs: retryAfterMs(e.retryAfter, this.deps.now()) } : null;
    // Unreachable now, after contact or after a refusal (which said nothing of a network fault).
    if (this.contact !== 'unreachable' && !this.refused) {
      const servingGeneration = r.lastGood?.generation ?? null;
      this.deps.log.warn({ code, err: message, servingGeneration }, 'coordinator unreachable: serving the last good state (stale)');
    }
    this.contact = this.refused ? { refused: this.refused.status } : 'unreachable';
    this.contactError = { code: code === 'E_HTTP' ? 'E_COORDINATOR' : 'E_COORDINATOR_UNREACHABLE', message };
  }
}
