// `pgaccord agent`: the runtime wiring. Configuration (agent/config.ts), then enrolment or the
// stored identity, then the reconcile loop until SIGTERM/SIGINT. SIGHUP re-reads the configuration file.
import { randomInt } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { userInfo } from 'node:os';
import { join, resolve } from 'node:path';
import type pino from 'pino';
import type { Logger } from 'pino';
import { parseCommand, UsageError } from '../shared/system/cli.ts';
import { AGENT_COMMAND as COMMAND, DEFAULT_STATE_DIR, KEYS } from './options.ts';
import { followPostmaster, readConfigFile, readJoinTokenFile, resolveConfig, serverFingerprint, type RawConfig, type ResolvedConfig } from './config.ts';
import { createLogger } from '../shared/system/log.ts';
import { SdNotifier, takeNotifyEnv } from '../shared/system/sd-notify.ts';
import type { OsUser } from '../shared/system/pgserver.ts';
import { RenewalSchedule, type Random } from './runtime/backoff.ts';
import { CertificateManager } from './runtime/certs.ts';
import { CoordinatorClient, CoordinatorError } from './runtime/client.ts';
import { enroll, loadIdentity, pruneIdentities, renewIdentity, type StoredIdentity } from './runtime/identity.ts';
import { ReconcileLoop } from './runtime/loop.ts';
import type { ApplyFn, DriftHook } from './runtime/loop-deps.ts';
import { postgresVersion } from './runtime/status.ts';
import { ensurePrivateDir } from './runtime/statefile.ts';
import { checkStateDirOwnership, dropPrivileges, handOverStateDir, lookupUid, pgdataOwner } from './apply/privileges.ts';
import type { NodeContext } from './apply/types.ts';

/**
 * As root: find the PGDATA owner (refusing a PGDATA whose owner another user could choose), hand
 * the state directory to it when root holds it, and become that user for good. Nothing of PGDATA
 * or the state directory is read before this.
 */
async function dropRoot(flags: RawConfig, file: RawConfig): Promise<{ user: OsUser; stateDir: string }> {
  const pgdataArg = flags.pgdata ?? file.pgdata;
  if (!pgdataArg) throw new UsageError('--pgdata DIR is required');
  const user = await pgdataOwner(resolve(pgdataArg));
  const stateDir = resolve(flags['state-dir'] ?? file['state-dir'] ?? DEFAULT_STATE_DIR);
  await handOverStateDir(stateDir, user);
  dropPrivileges(user);
  return { user, stateDir };
}

/** The OS user that owns a directory (by uid). */
export async function ownerOf(path: string): Promise<OsUser> {
  const st = statSync(path);
  return lookupUid(st.uid, st.gid);
}

/**
 * `startedAs`: the OS user that started the agent, who keeps its way in over the socket (the
 * ident map line). For root that grants nothing: root may become the PGDATA owner anyway.
 */
function nodeContext(cfg: ResolvedConfig, owner: OsUser, log: Logger, startedAs: string): NodeContext {
  return { pgdata: cfg.pgdata, pgHost: cfg.pgHost, pgPort: cfg.pgPort, pgUser: cfg.pgUser, stateDir: cfg.stateDir, serverOsUser: owner, agentOsUser: startedAs, log };
}

/** Logs a move from one coordinator to the next (the reason names the failure, never a secret). */
const failoverLogger = (log: Logger) => (e: { from: string; to: string; reason: string }) => log.warn(e, 'coordinator unreachable: trying the next one');

/** Stored identity when there is one for this node; otherwise enrol with the join token. */
export async function obtainIdentity(cfg: ResolvedConfig, log: Logger, now: () => number): Promise<StoredIdentity> {
  const stored = await loadIdentity(cfg.stateDir);
  if (stored) {
    if (stored.enrollment.cluster !== cfg.cluster || stored.enrollment.node !== cfg.node) {
      throw new CoordinatorError('E_IDENTITY', `${cfg.stateDir} holds the identity of ${stored.enrollment.cluster}/${stored.enrollment.node}, not ${cfg.cluster}/${cfg.node}: use another --state-dir`);
    }
    if (cfg.joinToken) log.info('already enrolled: using the stored identity, the join token is not needed any more');
    log.info({ serial: stored.identity.info.serial, notAfter: stored.identity.info.notAfter.toISOString() }, 'using the stored agent identity');
    return stored;
  }
  if (!cfg.joinToken) {
    throw new CoordinatorError('E_IDENTITY', `not enrolled yet (no identity in ${cfg.stateDir}): start once with --join-token (from \`pgaccord token create ${cfg.cluster} ${cfg.node}\`)`);
  }
  log.info({ coordinator: cfg.coordinatorUrls.join(',') }, 'enrolling with the join token');
  const identity = await enroll({ stateDir: cfg.stateDir, coordinatorUrl: cfg.coordinatorUrls, cluster: cfg.cluster, node: cfg.node, joinToken: cfg.joinToken, now, onFailover: failoverLogger(log) });
  log.info({ serial: identity.identity.info.serial, notAfter: identity.identity.info.notAfter.toISOString() }, 'enrolled: identity stored');
  return identity;
}

// The apply engine and the drift watcher are another module's; loaded when the agent starts.
async function loadApply(): Promise<ApplyFn> {
  const { applyDesired } = await import('./apply/apply.ts');
  return (ctx, input) => applyDesired(ctx, input);
}

/** The drift watcher (agent/runtime/drift.ts), created on the first proved apply. */
async function loadDrift(ctx: NodeContext, log: Logger): Promise<DriftHook> {
  const { watchManagedFiles } = await import('./runtime/drift.ts');
  const { ownerNamer } = await import('./apply/files.ts');
  let watcher: ReturnType<typeof watchManagedFiles> | null = null;
  return {
    pause: () => watcher?.pause(),
    check: async () => (watcher ? (await watcher.check()).length : 0),
    resume(files, onDrift) {
      if (watcher) return watcher.setExpected(files);
      watcher = watchManagedFiles(files, (e) => onDrift({ path: e.path, kinds: e.kinds }), {
        ownerName: ownerNamer(ctx),
        onError: (err) => log.warn({ err: (err as Error).message }, 'drift watcher error'),
      });
    },
    close: async () => {
      await watcher?.close();
    },
  };
}

export interface RunHooks {
  /** Tests: a logger destination, the clock and the randomness. */
  logDestination?: pino.DestinationStream;
  now?: () => number;
  random?: Random;
  resyncMs?: number;
  /** The steady state's proving cadence (default PROOF_EVERY_MS). */
  proofEveryMs?: number;
  minCycleMs?: number;
  backoff?: { baseMs: number; capMs: number };
  /** Abort to stop the agent (as SIGTERM does). */
  signal?: AbortSignal;
  installSignalHandlers?: boolean;
}

export async function runAgent(argv: string[], hooks: RunHooks = {}): Promise<number> {
  const parsed = parseCommand(COMMAND, argv);
  if (!parsed) return 0;
  // Before anything spawns (getent, psql): no child inherits NOTIFY_SOCKET/WATCHDOG_*.
  const sd = takeNotifyEnv();
  const flags = parsed.values as Record<string, string | undefined>;
  const configFile = flags.config;
  const fileValues = configFile ? await readConfigFile(configFile) : {};
  const cliValues: RawConfig = {};
  for (const k of KEYS) {
    const v = flags[k] as string | string[] | undefined;
    if (v !== undefined) cliValues[k] = Array.isArray(v) ? v.join(',') : v;
  }
  // The join token is read once, at start (it is only used then): as root, before the drop,
  // since it may be root's alone (0600).
  const tokenFile = cliValues['join-token-file'] ?? fileValues['join-token-file'];
  let tokenFileMode: number | null = null;
  if ((cliValues['join-token'] ?? fileValues['join-token']) === undefined && tokenFile !== undefined) {
    const read = readJoinTokenFile(tokenFile);
    cliValues['join-token'] = read.token;
    tokenFileMode = read.mode;
  }
  // Started as root: become the PGDATA owner before anything touches a path (PGDATA included).
  const startedAs = userInfo().username;
  const dropped = process.getuid?.() === 0 ? await dropRoot(cliValues, fileValues) : null;
  let cfg = resolveConfig(cliValues, fileValues, configFile);

  const log = createLogger({ service: 'pgaccord-agent', level: cfg.logLevel, ...(hooks.logDestination ? { destination: hooks.logDestination } : {}) }).child({ cluster: cfg.cluster, node: cfg.node });
  if (dropped) log.info({ user: dropped.user.name, uid: dropped.user.uid, gid: dropped.user.gid, pgdata: cfg.pgdata, stateDir: dropped.stateDir }, `started as root: dropped to the uid/gid of the PGDATA owner ${dropped.user.name} (supplementary groups dropped); state directory ${dropped.stateDir}`);
  const now = hooks.now ?? Date.now;
  const random: Random = hooks.random ?? (() => randomInt(0, 2 ** 32) / 2 ** 32);
  const dataOwner = dropped?.user ?? (await ownerOf(cfg.pgdata));
  const owner = cfg.clientHome ? { ...dataOwner, home: cfg.clientHome } : dataOwner;
  // An empty PGDATA is allowed: tools like pg_autoctl create the server themselves and need the
  // TLS material first. Until the server runs, the agent installs that material and reports
  // E_PG_CONNECT.
  // The anti-lockout rule is `local ... peer`: it keeps the agent's Unix-socket session in, not a TCP one.
  if (!cfg.pgHost.startsWith('/')) log.warn({ pgHost: cfg.pgHost }, '--pg-host is a TCP host: the anti-lockout rule covers only the Unix socket, so an operator rule could lock the agent out; prefer the socket directory');
  if (tokenFile !== undefined && tokenFileMode !== null && (tokenFileMode & 0o077) !== 0) {
    log.warn({ file: tokenFile, mode: tokenFileMode.toString(8) }, 'the join token file is readable by others: anyone who reads it before first use can enrol as this node; make it 0600');
  }
  if (!existsSync(join(cfg.pgdata, 'PG_VERSION'))) log.warn({ pgdata: cfg.pgdata }, 'PGDATA is not initialised yet: installing TLS material and client credentials only, until PostgreSQL runs there');
  // The state directory belongs to the PGDATA owner: the server reads its certificates there.
  await ensurePrivateDir(cfg.stateDir, owner);
  if (dropped) await checkStateDirOwnership(cfg.stateDir, dropped.user.uid);

  const stored = await obtainIdentity(cfg, log, now);
  const notify = new SdNotifier(sd.socket, { onError: (m) => log.warn(m) });
  const client = new CoordinatorClient({ baseUrl: cfg.coordinatorUrls, caPem: stored.caPem, identity: stored.identity, random, onFailover: failoverLogger(log) });
  const schedule = new RenewalSchedule(random);
  const identitySchedule = new RenewalSchedule(random);
  let pruneIdentityTo: string | null = null;

  const certs = new CertificateManager({ stateDir: cfg.stateDir, owner, requestCertificate: (req) => client.csr(req), now, schedule, log });
  let ctx = nodeContext(cfg, owner, log, startedAs);
  const apply = await loadApply();
  const drift = await loadDrift(ctx, log).catch((e) => {
    log.warn({ err: (e as Error).message }, 'drift watcher unavailable; relying on periodic reconcile');
    return undefined;
  });

  const loop = new ReconcileLoop({
    ctx,
    cluster: cfg.cluster,
    node: cfg.node,
    client,
    apply,
    certs,
    probe: { osUser: owner },
    owner,
    now,
    random,
    ...(hooks.backoff ? { backoff: hooks.backoff } : {}),
    resyncMs: hooks.resyncMs ?? 60_000,
    proofEveryMs: hooks.proofEveryMs ?? cfg.proveEveryMs,
    serverFingerprint: () => serverFingerprint(ctx.pgdata),
    reprobeMs: cfg.probeRetryMs,
    minCycleMs: hooks.minCycleMs ?? 1000,
    log,
    ...(drift ? { drift } : {}),
    refreshContext: (current) => (ctx = followPostmaster(current, cfg.followPostmasterPid)),
    postgresVersion: () => postgresVersion({ host: ctx.pgHost, port: ctx.pgPort, user: ctx.pgUser }),
    maintain: async () => {
      const current = client.currentIdentity!;
      const d = identitySchedule.decide(current.info.serial, current.info, now());
      if (!d.renew) return;
      log.info({ reason: d.reason, serial: current.info.serial }, 'renewing the agent identity');
      const fresh = await renewIdentity(cfg.stateDir, client, stored.caPem, `${cfg.cluster}/${cfg.node}`, now);
      await client.setIdentity(fresh);
      pruneIdentityTo = fresh.info.serial;
      log.info({ serial: fresh.info.serial, notAfter: fresh.info.notAfter.toISOString() }, 'agent identity renewed');
    },
    nextMaintenanceAt: () => {
      const current = client.currentIdentity;
      return current ? identitySchedule.renewAt(current.info.serial, current.info).getTime() : null;
    },
    identityNotAfter: () => client.currentIdentity?.info.notAfter.getTime() ?? null,
    onContact: async () => {
      if (pruneIdentityTo === null) return;
      const keep = pruneIdentityTo;
      pruneIdentityTo = null;
      await pruneIdentities(cfg.stateDir, keep);
    },
    // systemd (Type=notify): ready once the identity is there and the loop runs, not after the
    // first apply (the coordinator or the local server may not exist yet).
    onRunning: (summary) => notify.ready(summary),
    onSummary: (line) => notify.status(line),
    ...(sd.watchdogMs !== null ? { watchdog: { everyMs: sd.watchdogMs, feed: () => notify.watchdog() } } : {}),
  });

  const onStop = (sig: string) => () => {
    log.info({ signal: sig }, 'stopping');
    notify.stopping();
    loop.stop();
  };
  const onHup = () => {
    void (async () => {
      if (!cfg.configFile) {
        log.info('SIGHUP: no config file to re-read; reconciling');
        void loop.kick('SIGHUP');
        return;
      }
      try {
        const next = resolveConfig(cliValues, await readConfigFile(cfg.configFile), cfg.configFile);
        const restartKeys: string[] = (['cluster', 'node', 'pgdata', 'stateDir', 'clientHome'] as const).filter((k) => next[k] !== cfg[k]);
        if (next.coordinatorUrls.join(',') !== cfg.coordinatorUrls.join(',')) restartKeys.unshift('coordinator');
        if (restartKeys.length > 0) log.warn({ keys: restartKeys }, 'SIGHUP: these settings change only on restart; keeping the running values');
        log.level = next.logLevel;
        cfg = { ...next, coordinatorUrl: cfg.coordinatorUrl, coordinatorUrls: cfg.coordinatorUrls, cluster: cfg.cluster, node: cfg.node, pgdata: cfg.pgdata, stateDir: cfg.stateDir, ...(cfg.clientHome ? { clientHome: cfg.clientHome } : {}) };
        ctx = nodeContext(cfg, owner, log, startedAs);
        log.info({ logLevel: cfg.logLevel, pgHost: cfg.pgHost, pgPort: cfg.pgPort, pgUser: cfg.pgUser }, 'SIGHUP: configuration re-read');
        loop.updateContext(ctx);
      } catch (e) {
        log.error({ err: (e as Error).message }, 'SIGHUP: configuration not reloaded; keeping the running one');
      }
    })();
  };
  const handlers = hooks.installSignalHandlers ?? true;
  const term = onStop('SIGTERM');
  const int = onStop('SIGINT');
  if (handlers) {
    process.on('SIGTERM', term);
    process.on('SIGINT', int);
    process.on('SIGHUP', onHup);
  }
  hooks.signal?.addEventListener('abort', () => loop.stop(), { once: true });
  log.info({ coordinator: cfg.coordinatorUrls.join(','), pgdata: cfg.pgdata, pgHost: cfg.pgHost, pgPort: cfg.pgPort, stateDir: cfg.stateDir }, 'agent starting');
  try {
    const exit = await loop.run();
    log.info({ exit }, 'agent stopped');
    return 0;
  } finally {
    if (handlers) {
      process.off('SIGTERM', term);
      process.off('SIGINT', int);
      process.off('SIGHUP', onHup);
    }
    notify.stopping();
    await client.close();
    await notify.flush();
    await new Promise<void>((r) => log.flush(() => r()));
  }
}
