// `pgaccord coordinator`'s command line: its options, help and the checks of every flag, apart
// from the runtime (coordinator/main.ts) so that `--help` and a bad flag load only this: the
// runtime's packages (fastify, pg, node-forge, pino, typebox) are tens of MB and half a second.
import { parseDuration } from './cluster/duration.ts';
import { DEFAULT_MAX_CONNECTIONS, parseMaxConnections } from './http/connection-limits.ts';
import { DEFAULT_LISTEN, parseListen, parseMetricsListen } from './http/listen.ts';
import { DEFAULT_DATA_DIR } from './store/datadir-layout.ts';
import { parseCommand } from '../shared/system/cli.ts';
import { parseCoordinatorUrls } from '../shared/contract/coordinator-urls.ts';
import { DEFAULT_TLS_KEY_TYPE, KEY_TYPES, type KeyType } from '../shared/crypto/key-types.ts';

export const COORDINATOR_COMMAND = {
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

type Values = { [K in keyof typeof COORDINATOR_COMMAND.options]?: string };

/** The coordinator's options from its flags and environment; throws on the first bad one. */
export function coordinatorOptionsFrom(v: Values, env: NodeJS.ProcessEnv) {
  const longPoll = v['long-poll'] !== undefined ? Number(v['long-poll']) : undefined;
  if (longPoll !== undefined && !(longPoll > 0 && longPoll <= 300)) throw new Error('--long-poll must be 1..300 seconds');
  const duration = (flag: string, text: string | undefined): number | undefined => {
    if (text === undefined || text === '') return undefined;
    const s = parseDuration(text);
    if (s === null || s < 60) throw new Error(`--${flag}: "${text}" is not a duration of at least 1m (examples: 30d, 2m)`);
    return s;
  };
  const identityLifetimeSeconds = duration('identity-lifetime', v['identity-lifetime'] ?? env.PGACCORD_IDENTITY_LIFETIME);
  const crlLifetimeSeconds = duration('crl-lifetime', v['crl-lifetime'] ?? env.PGACCORD_CRL_LIFETIME);
  const tlsKeyType = v['tls-key-type'];
  if (tlsKeyType !== undefined && !(KEY_TYPES as readonly string[]).includes(tlsKeyType)) {
    throw new Error(`--tls-key-type: "${tlsKeyType}" is not one of ${KEY_TYPES.join(', ')}`);
  }
  const signingWorkers = v['signing-workers'] !== undefined ? Number(v['signing-workers']) : undefined;
  if (signingWorkers !== undefined && !(Number.isInteger(signingWorkers) && signingWorkers >= 1 && signingWorkers <= 256)) {
    throw new Error(`--signing-workers: "${v['signing-workers']}" is not a number of threads (1..256)`);
  }
  const maxConnections = v['max-connections'] !== undefined ? parseMaxConnections(v['max-connections']) : undefined;
  // Checked here too (the runtime parses them again): a bad address is told before the store starts.
  if (v.listen !== undefined) parseListen(v.listen);
  if (v['metrics-listen'] !== undefined) parseMetricsListen(v['metrics-listen']);
  return {
    maxConnections,
    identityLifetimeSeconds,
    crlLifetimeSeconds,
    dataDir: v['data-dir'] ?? DEFAULT_DATA_DIR,
    listen: v.listen,
    databaseUrl: v['database-url'] ?? env.PGACCORD_DATABASE_URL,
    publicUrl: v['public-url'] !== undefined ? parseCoordinatorUrls([v['public-url']]).join(',') : undefined,
    logLevel: v['log-level'],
    metricsListen: v['metrics-listen'],
    longPollMs: longPoll !== undefined ? longPoll * 1000 : undefined,
    signingWorkers,
    tlsKeyType: tlsKeyType as KeyType | undefined,
  };
}

/** Help and flag errors from here; the runtime is loaded only to run. */
export async function runCoordinatorCommand(argv: string[]): Promise<number> {
  const parsed = parseCommand(COORDINATOR_COMMAND, argv);
  if (!parsed) return 0;
  const options = coordinatorOptionsFrom(parsed.values, process.env);
  return (await import('./main.ts')).serveCoordinator(options);
}
