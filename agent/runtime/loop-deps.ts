// What the reconcile loop is given (its seams: the coordinator, the apply engine, the
// certificate manager, the drift watcher, systemd's hooks) and what it ends with.
import type { Logger } from 'pino';
import type { Static } from '@sinclair/typebox';
import type { FileReport } from '../../shared/contract/status.ts';
import type { BackoffPolicy, Clock, Random } from './backoff.ts';
import type { CertificateManager } from './certs.ts';
import type { CoordinatorClient } from './client.ts';
import type { ProbeOptions } from '../probe/probes.ts';
import type { Owner } from './statefile.ts';
import type { ApplyInput, ApplyResult, NodeContext } from '../apply/types.ts';

export type FileReportT = Static<typeof FileReport>;

export type ApplyFn = (ctx: NodeContext, input: ApplyInput) => Promise<ApplyResult>;

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
  /** Once the loop runs (before the first apply: the coordinator or the server may be away). */
  onRunning?: (summary: string) => void;
  /** After each pass: a one-line summary (systemd STATUS=). */
  onSummary?: (line: string) => void;
  /** Keep-alive (systemd WATCHDOG=1), fed from the loop's own tick only while it makes progress. */
  watchdog?: { everyMs: number; feed: () => void; stuckAfterMs?: number };
}

export type LoopExit = 'stopped' | 'removed';

/** When a certificate pair and the agent identity are next due for renewal (ms), each or null. */
export const renewalsOf = (deps: Pick<LoopDeps, 'certs' | 'nextMaintenanceAt'>): (number | null)[] => [
  deps.certs.nextRenewalAt,
  deps.nextMaintenanceAt?.() ?? null,
];

/** When a certificate pair and the agent identity expire (ms), each or null. */
export const expiriesOf = (deps: Pick<LoopDeps, 'certs' | 'identityNotAfter'>): (number | null)[] => [
  deps.certs.earliestExpiry,
  deps.identityNotAfter?.() ?? null,
];
