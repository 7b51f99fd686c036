// `pgaccord agent`'s options, help text and defaults: what the command line (agent/command.ts),
// the configuration (agent/config.ts) and the runtime (agent/main.ts) all read. No imports, so
// `pgaccord agent --help` loads only this and command.ts.

export const DEFAULT_STATE_DIR = '/var/lib/pgaccord';
export const DEFAULT_SOCKET_DIR = '/var/run/postgresql';
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

const OPTIONS = {
  // Repeated or comma-separated: several coordinators sharing one store.
  coordinator: { type: 'string', multiple: true },
  node: { type: 'string' },
  pgdata: { type: 'string' },
  'join-token': { type: 'string' },
  'join-token-file': { type: 'string' },
  'pg-host': { type: 'string' },
  'pg-port': { type: 'string' },
  'pg-user': { type: 'string' },
  'state-dir': { type: 'string' },
  'client-home': { type: 'string' },
  config: { type: 'string' },
  'log-level': { type: 'string' },
  'probe-retry': { type: 'string' },
  'prove-every': { type: 'string' },
} as const;

export type Key = Exclude<keyof typeof OPTIONS, 'config'>;
export const KEYS = Object.keys(OPTIONS).filter((k) => k !== 'config') as Key[];
export const camel = (k: string): string => k.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

export const AGENT_COMMAND = {
  usage: 'pgaccord agent --coordinator URL --node CLUSTER/NODE --pgdata DIR [--join-token T] [options]',
  summary:
    'Runs the node agent: enrols once with a join token, then keeps this PostgreSQL node matching its\n' +
    'desired state (pg_hba.conf, pg_ident.conf, settings, certificates, roles, passfile), proves\n' +
    'every change with PostgreSQL, probes the inter-node connections and reports to the coordinator.',
  details: `
options:
  --coordinator URL      coordinator base URL, https:// (default: the URL(s) in the join token);
                         several coordinators sharing one store: repeat it or separate with
                         commas; they are tried in order, the next when one cannot be reached
  --node CLUSTER/NODE    which node this is, e.g. sales/node-1
  --pgdata DIR           the PostgreSQL data directory; its owner owns every managed file
  --join-token T         single-use join token (pga1....), needed for the first start only;
                         once enrolled the stored identity is used and the token is ignored
  --join-token-file F    read the join token from a file instead (keeps it out of ps)
  --pg-host H            local server's Unix socket directory (or host)
                         (default: the socket directory in PGDATA/postmaster.pid, else ${DEFAULT_SOCKET_DIR})
  --pg-port P            local server's port (default: the port in PGDATA/postmaster.pid, else 5432)
  --pg-user U            database role the agent uses over the socket (default: postgres)
  --state-dir DIR        identity, keys, certificates, passfile, last good state (default: ${DEFAULT_STATE_DIR})
  --client-home DIR      the home directory whose ~/.postgresql and ~/.pgpass the profile's client
                         reads (pg-auto-failover); default: the PGDATA owner's home in passwd.
                         Give it when that client runs with another HOME (libpq reads $HOME first),
                         e.g. several nodes of one OS user on one machine
  --config FILE          YAML file with any of the keys below; flags given on the command line win
  --log-level L          ${LOG_LEVELS.join(', ')} (default: info)
  --probe-retry S        after a failed probe, probe again within S seconds (default: 2); a peer's
                         apply already wakes the agent through the coordinator: this is the safety net
  --prove-every S        a converged, unchanged node proves everything again (SQL checks, probes of
                         its peers) every S seconds (default: 300); in between each long-poll cycle
                         only looks at the files and the server. A change, a drift, a restart, a
                         renewal or SIGHUP proves at once; a peer broken from outside (a role's
                         CONNECTION LIMIT, a firewall) shows in status within about S seconds

config file (YAML): the same keys as the flags, in camelCase or kebab-case, e.g.
  coordinator: https://coord.example.com:7432   # or a list:
  #   coordinator: [https://coord-1.example.com:7432, https://coord-2.example.com:7432]
  node: sales/node-1
  pgdata: /var/lib/postgresql/15/main
  joinTokenFile: /etc/pgaccord/join.token
  stateDir: /var/lib/pgaccord
  logLevel: info

signals: SIGTERM/SIGINT stop cleanly (exit 0); SIGHUP re-reads the config file (log level and
local connection settings take effect at once; other keys need a restart).
files: <state-dir>/status.json mirrors the last status (also while the coordinator is down).
`,
  options: OPTIONS,
};

