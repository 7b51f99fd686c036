// `pgaccord coordinator`'s runtime (its command line is coordinator/command.ts): open (or
// initialise) the data directory, open the store (embedded PostgreSQL in DIR/pg, or
// --database-url), migrate, and serve HTTPS until SIGTERM/SIGINT.
import { isIP } from 'node:net';
import { join } from 'node:path';
import pg from 'pg';
import type { Logger } from 'pino';
import type pino from 'pino';
import { DEFAULT_LISTEN, LISTEN_BACKLOG, parseListen, parseMetricsListen } from './http/listen.ts';
import { openOrCreatePgInstance, storeOsUser, type PgInstance } from '../shared/system/pgserver.ts';
import { FILES, openDataDir, readOrCreateStorePassword, type DataDir } from './store/datadir.ts';
import type { KeyType } from '../shared/crypto/key-types.ts';
import { createLogger } from '../shared/system/log.ts';
import { SdNotifier, takeNotifyEnv } from '../shared/system/sd-notify.ts';
import { SecretBox } from './store/secrets.ts';
import type { RateLimit } from './http/rate-limit.ts';
import { CoordinatorMetrics, serveMetrics } from './http/metrics.ts';
import { buildServer } from './http/server.ts';
import { CoordinatorService } from './service.ts';
import { SigningPool } from './ca/signing-pool.ts';
import { Store } from './store/store.ts';

export const EMBEDDED_DB = 'pgaccord';

export interface CoordinatorOptions {
  dataDir: string;
  /** HOST:PORT; port 0 picks a free one. */
  listen?: string;
  /** External store; without it, PostgreSQL of our own in DIR/pg. */
  databaseUrl?: string;
  /** URL written into join tokens (default: https://<listen>). */
  publicUrl?: string;
  now?: () => Date;
  longPollMs?: number;
  /** Lifetime of agent identity certificates, seconds (default 30 days). */
  identityLifetimeSeconds?: number;
  /** How long a CRL is valid (nextUpdate - thisUpdate), seconds (default 7 days). */
  crlLifetimeSeconds?: number;
  logLevel?: string;
  logDestination?: pino.DestinationStream;
  /** See ServerLimits (tests shorten the request bound). */
  requestTimeoutMs?: number;
  maxConnections?: number;
  agentRateLimit?: RateLimit;
  /** HOST:PORT of the plain-HTTP /metrics listener (a bare PORT is 127.0.0.1:PORT); none without it. */
  metricsListen?: string;
  /** Threads that check CSRs and sign (default: one per core). */
  signingWorkers?: number;
  /** Type of the HTTPS key (default ecdsa-p256); a key of another type in the data directory is replaced. */
  tlsKeyType?: KeyType;
}

export interface RunningCoordinator {
  url: string;
  port: number;
  host: string;
  dataDir: DataDir;
  service: CoordinatorService;
  store: Store;
  /** The embedded PostgreSQL, when there is one. */
  pg: PgInstance | null;
  log: Logger;
  /** http://HOST:PORT/metrics when --metrics-listen is given. */
  metricsUrl: string | null;
  signing: SigningPool;
  close(): Promise<void>;
}

const urlHost = (host: string) => (isIP(host) === 6 ? `[${host}]` : host === '0.0.0.0' || host === '::' ? 'localhost' : host);

async function embeddedStore(dir: string, log: Logger): Promise<{ instance: PgInstance; connection: pg.ClientConfig }> {
  // Unix socket only, in a directory of the store's own OS user (ours, or pgaccord-store when we
  // are root: never `postgres`, whom the nodes on this host run as), and SCRAM with a password
  // only we can read: a local user who reaches the socket still cannot log in.
  const osUser = await storeOsUser();
  const password = await readOrCreateStorePassword(dir);
  const instance = await openOrCreatePgInstance(join(dir, FILES.pg), { listen: '', port: 5432, osUser, superuserPassword: password });
  log.info({ dir: join(dir, FILES.pg), osUser: osUser.name }, 'embedded store running');
  const admin = new pg.Client(instance.socketConfig('postgres'));
  await admin.connect();
  try {
    const exists = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [EMBEDDED_DB]);
    if (exists.rowCount === 0) {
      await admin.query(`CREATE DATABASE ${EMBEDDED_DB}`);
      log.info({ dir: join(dir, FILES.pg) }, 'embedded store created');
    }
  } finally {
    await admin.end();
  }
  return { instance, connection: instance.socketConfig(EMBEDDED_DB) };
}

export async function startCoordinator(opts: CoordinatorOptions): Promise<RunningCoordinator> {
  const log = createLogger({
    service: 'pgaccord-coordinator',
    ...(opts.logLevel ? { level: opts.logLevel } : {}),
    ...(opts.logDestination ? { destination: opts.logDestination } : {}),
  });
  const now = opts.now ?? (() => new Date());
  const { host, port } = parseListen(opts.listen ?? DEFAULT_LISTEN);
  const dataDir = await openDataDir(opts.dataDir, [host], now(), { tlsKeyType: opts.tlsKeyType });

  let instance: PgInstance | null = null;
  let connection: pg.ClientConfig;
  if (opts.databaseUrl) {
    connection = { connectionString: opts.databaseUrl };
  } else {
    const embedded = await embeddedStore(opts.dataDir, log);
    instance = embedded.instance;
    connection = embedded.connection;
  }
  let store: Store | null = null;
  const signing = new SigningPool({ size: opts.signingWorkers });
  try {
    store = await Store.open(connection, log);
    const publicUrl = opts.publicUrl ?? `https://${urlHost(host)}:${port}`;
    const service = new CoordinatorService({
      store,
      box: new SecretBox(dataDir.masterKey),
      coordinatorCa: dataDir.ca,
      signing,
      publicUrl,
      log,
      now,
      longPollMs: opts.longPollMs,
      identityLifetimeSeconds: opts.identityLifetimeSeconds,
      crlLifetimeSeconds: opts.crlLifetimeSeconds,
    });
    await service.checkMasterKey();
    await service.resealAfterMigrations(store.applied);
    const metricsAt = opts.metricsListen !== undefined ? parseMetricsListen(opts.metricsListen) : null;
    const metrics = metricsAt ? new CoordinatorMetrics({ store, log, now, signing }) : undefined;
    const { app } = await buildServer({
      metrics,
      service,
      adminToken: dataDir.adminToken,
      tls: { key: dataDir.serverKeyPem, cert: dataDir.serverCertPem, ca: dataDir.caPem },
      log,
      limits: { requestTimeoutMs: opts.requestTimeoutMs, maxConnections: opts.maxConnections, agentRateLimit: opts.agentRateLimit },
    });
    await app.listen({ host, port, backlog: LISTEN_BACKLOG });
    const metricsServer = metrics && metricsAt ? await serveMetrics(metrics, metricsAt.host, metricsAt.port, log).catch(async (e: unknown) => {
      await app.close();
      throw e;
    }) : null;
    const actual = (app.server.address() as { port: number }).port;
    const url = `https://${urlHost(host)}:${actual}`;
    // Tokens name the port actually bound (listen port 0 picks one).
    if (opts.publicUrl === undefined) service.publicUrl = url;
    log.info({ url, dataDir: opts.dataDir, store: opts.databaseUrl ? 'external' : 'embedded' }, 'coordinator listening');
    const openStore = store;
    let closed = false;
    // CRLs are re-issued well before their nextUpdate even when no agent asks (they also are on
    // every desired-state poll): check often relative to their lifetime, at least every minute.
    const crlEveryMs = Math.min(60_000, (service.crlLifetimeSeconds * 1000) / 20);
    const crlTimer = setInterval(() => void service.refreshAllCrls().catch((e) => log.error({ err: e }, 'CRL refresh failed')), crlEveryMs);
    crlTimer.unref();
    return {
      url,
      port: actual,
      host,
      dataDir,
      service,
      store: openStore,
      pg: instance,
      log,
      metricsUrl: metricsServer?.url ?? null,
      signing,
      async close() {
        if (closed) return;
        closed = true;
        clearInterval(crlTimer);
        if (metricsServer) {
          const closing = new Promise((r) => metricsServer.server.close(r));
          metricsServer.server.closeAllConnections();
          await closing;
        }
        await app.close();
        // After the last request (app.close waits for them) and before the store: a CRL refresh
        // still signing finishes, then the threads stop.
        await signing.close();
        await openStore.close();
        if (instance) await instance.stop('fast');
        log.info('coordinator stopped');
        log.flush?.();
      },
    };
  } catch (e) {
    await signing.close().catch(() => undefined);
    await store?.close().catch(() => undefined);
    if (instance) await instance.stop('fast').catch(() => undefined);
    throw e;
  }
}

/** One line for systemd's STATUS=, from what the store answers. */
export function coordinatorSummary(c: { clusters: number; agents: number; inContact: number }): string {
  return `${c.clusters} cluster${c.clusters === 1 ? '' : 's'}, ${c.agents} agent${c.agents === 1 ? '' : 's'} enrolled, ${c.inContact} in contact (last 2 min)`;
}

async function storeSummary(store: Store, timeoutMs: number): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs)));
  try {
    const [row] = await Promise.race([
      store.query<{ clusters: number; agents: number; in_contact: number }>(
        `SELECT (SELECT count(*) FROM clusters)::int AS clusters, (SELECT count(*) FROM agents)::int AS agents,
                (SELECT count(*) FROM node_status WHERE last_contact > now() - interval '2 minutes')::int AS in_contact`,
      ),
      timeout,
    ]);
    return coordinatorSummary({ clusters: row!.clusters, agents: row!.agents, inContact: row!.in_contact });
  } finally {
    clearTimeout(timer);
  }
}

/** Start, tell systemd (Type=notify) when ready, serve until SIGTERM/SIGINT; the exit status. */
export async function serveCoordinator(opts: CoordinatorOptions): Promise<number> {
  // Before anything spawns (useradd, pg_ctl and the store's PostgreSQL): no child inherits
  // NOTIFY_SOCKET/WATCHDOG_* (PostgreSQL would send its own READY=1 to our unit).
  const sd = takeNotifyEnv();
  const running = await startCoordinator(opts);
  process.stderr.write(`pgaccord coordinator listening on ${running.url} (admin token in ${join(running.dataDir.dir, FILES.adminToken)})\n`);
  // systemd (Type=notify): ready once HTTPS is served and the store answers; then a timer asks
  // the store again and feeds the watchdog only when it answered (a wedged event loop or store
  // stops the keep-alives, and systemd restarts the unit).
  const notify = new SdNotifier(sd.socket, { onError: (m) => running.log.warn(m) });
  let notifyTimer: NodeJS.Timeout | undefined;
  if (notify.enabled) {
    const everyMs = sd.watchdogMs ?? 30_000;
    const first = await storeSummary(running.store, 30_000).catch(async (e: unknown) => {
      await running.close();
      throw e;
    });
    notify.ready(first);
    let checking = false;
    notifyTimer = setInterval(() => {
      if (checking) return; // the last check has not answered: no keep-alive
      checking = true;
      storeSummary(running.store, everyMs)
        .then((line) => {
          notify.status(line);
          if (sd.watchdogMs !== null) notify.watchdog();
        }, (e: unknown) => {
          running.log.error({ err: e }, 'store check failed: not feeding the watchdog');
          notify.status(`store not answering: ${(e as Error).message}`);
        })
        .finally(() => (checking = false));
    }, everyMs);
  }
  return new Promise<number>((resolve) => {
    const stop = (signal: string) => {
      running.log.info({ signal }, 'stopping');
      clearInterval(notifyTimer);
      notify.stopping();
      running.close().then(() => notify.flush()).then(() => resolve(0), (e) => {
        running.log.error({ err: e }, 'stop failed');
        resolve(1);
      });
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    // Node's default for SIGHUP is to exit at once, leaving the embedded store running; nothing
    // here is re-read on HUP (settings are flags), so say so and keep serving.
    process.on('SIGHUP', () => running.log.info('SIGHUP: nothing to re-read (settings are flags); still serving'));
  });
}
