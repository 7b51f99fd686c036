// `pgaccord coordinator`: open (or initialise) the data directory, open the store (embedded
// PostgreSQL in DIR/pg, or --database-url), migrate, and serve HTTPS until SIGTERM/SIGINT.
import { parseDuration } from './cluster/duration.ts';
import { isIP } from 'node:net';
import { join } from 'node:path';
import pg from 'pg';
import type { Logger } from 'pino';
import type pino from 'pino';
import { parseCommand } from '../shared/system/cli.ts';
import { openOrCreatePgInstance, storeOsUser, type PgInstance } from '../shared/system/pgserver.ts';
import { DEFAULT_DATA_DIR, DEFAULT_TLS_KEY_TYPE, FILES, openDataDir, readOrCreateStorePassword, type DataDir } from './store/datadir.ts';
import { KEY_TYPES, type KeyType } from '../shared/crypto/x509.ts';
import { createLogger } from '../shared/system/log.ts';
import { SdNotifier, takeNotifyEnv } from '../shared/system/sd-notify.ts';
import { SecretBox } from './store/secrets.ts';
import type { RateLimit } from './http/rate-limit.ts';
import { CoordinatorMetrics, serveMetrics } from './http/metrics.ts';
import { buildServer, DEFAULT_MAX_CONNECTIONS, parseMaxConnections } from './http/server.ts';
import { CoordinatorService } from './service.ts';
import { SigningPool } from './ca/signing-pool.ts';
import { Store } from './store/store.ts';
import { parseCoordinatorUrls } from '../shared/contract/coordinator-urls.ts';

export const DEFAULT_LISTEN = '127.0.0.1:7432';
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

export function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text);
  const host = m?.[1] ?? m?.[2];
  const port = Number(m?.[3]);
  if (!m || !host || port > 65535 || (m[1] !== undefined && isIP(m[1]) !== 6)) throw new Error(`--listen: "${text}" is not HOST:PORT (e.g. 127.0.0.1:7432, [::1]:7432)`);
  return { host, port };
}

/** --metrics-listen: HOST:PORT, or a bare PORT on loopback. */
export function parseMetricsListen(text: string): { host: string; port: number } {
  try {
    return parseListen(/^\d{1,5}$/.test(text) ? `127.0.0.1:${text}` : text);
  } catch {
    throw new Error(`--metrics-listen: "${text}" is not HOST:PORT or PORT (e.g. 9464, 127.0.0.1:9464, [::1]:9464)`);
  }
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
  const log = createLogger({ service: 'pgaccord-coordinator', ...(opts.logLevel ? { level: opts.logLevel } : {}), ...(opts.logDestination ? { destination: opts.logDestination } : {}) });
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
    const service = new CoordinatorService({ store, box: new SecretBox(dataDir.masterKey), coordinatorCa: dataDir.ca, signing, publicUrl, log, now, longPollMs: opts.longPollMs, identityLifetimeSeconds: opts.identityLifetimeSeconds, crlLifetimeSeconds: opts.crlLifetimeSeconds });
    await service.checkMasterKey();
    await service.resealAfterMigrations(store.applied);
    const metricsAt = opts.metricsListen !== undefined ? parseMetricsListen(opts.metricsListen) : null;
    const metrics = metricsAt ? new CoordinatorMetrics({ store, log, now, signing }) : undefined;
    const { app } = await buildServer({ metrics, service, adminToken: dataDir.adminToken, tls: { key: dataDir.serverKeyPem, cert: dataDir.serverCertPem, ca: dataDir.caPem }, log, limits: { requestTimeoutMs: opts.requestTimeoutMs, maxConnections: opts.maxConnections, agentRateLimit: opts.agentRateLimit } });
    await app.listen({ host, port });
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
    const crlTimer = setInterval(() => void service.refreshAllCrls().catch((e) => log.error({ err: e }, 'CRL refresh failed')), Math.min(60_000, (service.crlLifetimeSeconds * 1000) / 20));
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

const COMMAND = {
  usage: 'pgaccord coordinator [--data-dir DIR] [--listen HOST:PORT] [--database-url URL] [--public-url URL] [--log-level LEVEL]',
  summary: 'Run the coordinator: the REST API (HTTPS only), the per-cluster CAs and the state store.',
  details: `
options:
  --data-dir DIR        state directory (default ${DEFAULT_DATA_DIR}). The first start creates in it:
                          ca.crt              coordinator CA (admin CLIs verify the server with it)
                          coordinator-ca.key  its key (0600)
                          server.crt/.key     the HTTPS certificate (localhost, 127.0.0.1, ::1, the listen host)
                          master.key          32 random bytes (0600) sealing CA keys and passwords at rest
                          admin.token         bearer token for admin calls (0600)
                          pg/                 the embedded PostgreSQL store (without --database-url): Unix
                                              socket only, run as this OS user (as root: pgaccord-store,
                                              created on first use), SCRAM only
                          store.password      its superuser password (0600), set again at every start
  --listen HOST:PORT    address to serve on (default ${DEFAULT_LISTEN})
  --database-url URL    keep state in this PostgreSQL database instead of the embedded one
                        (env PGACCORD_DATABASE_URL, which keeps a password off the command line);
                        several coordinators may share it if they share master.key, the
                        coordinator CA files and admin.token (copy the data directory).
                        A store with a standby: list its hosts, libpq-style, e.g.
                        postgresql://u:pw@h1:5432,h2:5432/pgaccord?target_session_attrs=read-write
                        (read-write is the default; primary and any are accepted): the first
                        writable host is used, and another is looked for when it fails
  --public-url URL      coordinator URL written into join tokens (default https://<listen>);
                        several coordinators on one store: every one's URL, comma-separated
                        (each gives the same list), and the agents move between them
  --log-level LEVEL     trace, debug, info (default), warn, error
  --metrics-listen A    serve Prometheus metrics at http://A/metrics, plain HTTP, no token (A is
                        HOST:PORT, or PORT for 127.0.0.1:PORT; e.g. 9464); none without it
  --long-poll SECONDS   how long agents' desired-state polls are held (default 30)
  --identity-lifetime D lifetime of agent identity certificates (default 30d; env
                        PGACCORD_IDENTITY_LIFETIME; from 1m, for tests)
  --crl-lifetime D      validity of each issued CRL (default 7d; env PGACCORD_CRL_LIFETIME);
                        re-issued when less than half of it remains
  --signing-workers N   threads that check CSRs and sign certificates and CRLs, off the event
                        loop (default: one per core)
  --max-connections N   open HTTPS connections at most (default ${DEFAULT_MAX_CONNECTIONS}; more are closed at
                        once): an agent holds its long-poll and sometimes one more, so allow
                        about 2 per agent (and raise the open-files limit with it)
  --tls-key-type T      the HTTPS key: ${KEY_TYPES.join(' or ')} (default ${DEFAULT_TLS_KEY_TYPE}: a
                        fraction of RSA's handshake cost); a key of another type is replaced

Logs are JSON lines on stdout; secrets are never logged. SIGTERM or SIGINT stops it cleanly
(and the embedded PostgreSQL with it); SIGHUP is logged and changes nothing.`,
  options: {
    'data-dir': { type: 'string' },
    listen: { type: 'string' },
    'database-url': { type: 'string' },
    'public-url': { type: 'string' },
    'log-level': { type: 'string' },
    'metrics-listen': { type: 'string' },
    'long-poll': { type: 'string' },
    'identity-lifetime': { type: 'string' },
    'crl-lifetime': { type: 'string' },
    'signing-workers': { type: 'string' },
    'tls-key-type': { type: 'string' },
    'max-connections': { type: 'string' },
  },
} as const;

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

export async function runCoordinator(argv: string[]): Promise<number> {
  const parsed = parseCommand(COMMAND, argv);
  if (!parsed) return 0;
  // Before anything spawns (useradd, pg_ctl and the store's PostgreSQL): no child inherits
  // NOTIFY_SOCKET/WATCHDOG_* (PostgreSQL would send its own READY=1 to our unit).
  const sd = takeNotifyEnv();
  const v = parsed.values;
  const longPoll = v['long-poll'] !== undefined ? Number(v['long-poll']) : undefined;
  if (longPoll !== undefined && !(longPoll > 0 && longPoll <= 300)) throw new Error('--long-poll must be 1..300 seconds');
  const duration = (flag: string, text: string | undefined): number | undefined => {
    if (text === undefined || text === '') return undefined;
    const s = parseDuration(text);
    if (s === null || s < 60) throw new Error(`--${flag}: "${text}" is not a duration of at least 1m (examples: 30d, 2m)`);
    return s;
  };
  const identityLifetimeSeconds = duration('identity-lifetime', v['identity-lifetime'] ?? process.env.PGACCORD_IDENTITY_LIFETIME);
  const crlLifetimeSeconds = duration('crl-lifetime', v['crl-lifetime'] ?? process.env.PGACCORD_CRL_LIFETIME);
  const tlsKeyType = v['tls-key-type'];
  if (tlsKeyType !== undefined && !(KEY_TYPES as readonly string[]).includes(tlsKeyType)) throw new Error(`--tls-key-type: "${tlsKeyType}" is not one of ${KEY_TYPES.join(', ')}`);
  const signingWorkers = v['signing-workers'] !== undefined ? Number(v['signing-workers']) : undefined;
  if (signingWorkers !== undefined && !(Number.isInteger(signingWorkers) && signingWorkers >= 1 && signingWorkers <= 256)) throw new Error(`--signing-workers: "${v['signing-workers']}" is not a number of threads (1..256)`);
  const maxConnections = v['max-connections'] !== undefined ? parseMaxConnections(v['max-connections']) : undefined;
  const running = await startCoordinator({
    maxConnections,
    identityLifetimeSeconds,
    crlLifetimeSeconds,
    dataDir: v['data-dir'] ?? DEFAULT_DATA_DIR,
    listen: v.listen,
    databaseUrl: v['database-url'] ?? process.env.PGACCORD_DATABASE_URL,
    publicUrl: v['public-url'] !== undefined ? parseCoordinatorUrls([v['public-url']]).join(',') : undefined,
    logLevel: v['log-level'],
    metricsListen: v['metrics-listen'],
    longPollMs: longPoll !== undefined ? longPoll * 1000 : undefined,
    signingWorkers,
    tlsKeyType: tlsKeyType as KeyType | undefined,
  });
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
