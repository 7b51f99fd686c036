// Profile `patroni`, pure half: where the agent keeps Patroni's files and the configuration
// fragment it writes for Patroni to include (the REST API and client certificate files it names).
// The effectful half (finding the running Patroni, proving its REST API certificate, SIGHUP) is
// agent/apply/patroni.ts.
//
// Patroni owns postgresql.conf (rewritten on every start, promotion and demotion: an include
// line there would vanish, and the reload after it would turn ssl off), so the agent's include
// line goes into postgresql.base.conf, which Patroni includes first and never rewrites; Patroni
// sets none of pgaccord's settings, so they hold. pg_hba.conf stays in PGDATA and is pgaccord's:
// Patroni leaves it alone as long as `postgresql.pg_hba` is not set.
import { basename, dirname, join } from 'node:path';
import type { NodeDesired } from '../contract/schema.ts';
import { PATRONI_API_SLOT, PATRONI_CLIENT_SLOT, PATRONI_REPLICATION_USER, PATRONI_REWIND_USER } from './profiles.ts';
import { clientPaths, stateDirLayout, type Layout } from './layout.ts';

export const isPatroni = (d: Pick<NodeDesired, 'profile'>): boolean => d.profile === 'patroni';

export interface PatroniPaths {
  dir: string;
  /** The fragment Patroni includes (0600: it holds the passwords under scram). */
  fragment: string;
  /** REST API certificate chain + key, one file (restapi.certfile and keyfile). */
  apiPem: string;
  /** ctl, member-to-member and etcd3 client certificate + key, one file. */
  clientPem: string;
  /** Patroni's own pgpass (postgresql.pgpass): Patroni writes it, the agent never does. */
  pgpass: string;
}

export function patroniPaths(layout: Pick<Layout, 'stateDir'>): PatroniPaths {
  const dir = stateDirLayout(layout.stateDir).patroniDir;
  return { dir, fragment: join(dir, 'pgaccord.yml'), apiPem: join(dir, 'api.pem'), clientPem: join(dir, 'client.pem'), pgpass: join(dir, 'pgpass') };
}

/** The certificate slots the fragment names (besides PostgreSQL's). */
export const patroniSlots = (d: NodeDesired): string[] => (isPatroni(d) ? [PATRONI_API_SLOT, PATRONI_CLIENT_SLOT] : []);

/** Patroni's postgresql.base.conf beside config_file: where the agent's include line goes. */
export const patroniBaseConf = (configFile: string): string => join(dirname(configFile), `${basename(configFile).replace(/\.conf$/, '')}.base.conf`);

type Yaml = { [key: string]: string | boolean | Yaml };

/** YAML of nested maps, every string double-quoted (JSON escaping is valid YAML). */
function renderYaml(v: Yaml, indent = ''): string {
  const line = ([k, x]: [string, string | boolean | Yaml]): string =>
    typeof x === 'object' ? `${indent}${k}:\n${renderYaml(x, `${indent}  `)}` : `${indent}${k}: ${typeof x === 'boolean' ? String(x) : JSON.stringify(x)}\n`;
  return Object.entries(v).map(line).join('');
}

/**
 * Pure: the fragment. `passwords: 'mask'` (the dry run) shows where a password goes without it.
 * etcd3.hosts and etcd3.cacert stay the operator's: pgaccord issues no etcd server certificate,
 * so it cannot know the CA that signed it.
 */
export function renderPatroniFragment(desired: NodeDesired, layout: Layout, opts: { passwords: 'include' | 'mask' } = { passwords: 'include' }): string {
  const p = patroniPaths(layout);
  const cl = desired.clientLayout;
  if (cl === undefined) throw new Error('the patroni profile has a client layout');
  const secrets = new Map(desired.clientSecrets.map((s) => [s.role, s.password]));
  const tls = desired.sslmode !== 'disable';
  const user = (role: string): Yaml => {
    const paths = clientPaths(layout, cl, role);
    const out: Yaml = { username: role, sslmode: desired.sslmode };
    if (tls && paths.ca !== null) out.sslrootcert = paths.ca;
    if (tls && paths.crl !== null && desired.crl !== null) out.sslcrl = paths.crl;
    if (desired.auth === 'cert' && paths.cert !== null && paths.key !== null) {
      out.sslcert = paths.cert;
      out.sslkey = paths.key;
    }
    if (desired.auth === 'scram-sha-256') {
      const pw = secrets.get(role);
      if (pw === undefined) throw new Error(`no client secret for ${role}`);
      out.password = opts.passwords === 'mask' ? '<the password, on the node only>' : pw;
    }
    return out;
  };
  const ca = clientPaths(layout, cl, PATRONI_REPLICATION_USER).ca ?? join(p.dir, 'root.crt');
  const doc: Yaml = {
    restapi: { certfile: p.apiPem, keyfile: p.apiPem, cafile: ca, verify_client: 'required' },
    ctl: { insecure: false, certfile: p.clientPem, keyfile: p.clientPem, cacert: ca },
    etcd3: { protocol: 'https', cert: p.clientPem, key: p.clientPem },
    postgresql: {
      pgpass: p.pgpass,
      authentication: { replication: user(PATRONI_REPLICATION_USER), rewind: user(PATRONI_REWIND_USER) },
    },
  };
  return [
    `# Written by the pgaccord agent for ${desired.cluster}/${desired.node}; it rewrites this file: do not edit.`,
    '# Patroni includes it when run on a configuration directory holding your file and a link to this',
    '# one named to sort after yours (patroni.yml, then pgaccord.yml): later files win key by key.',
    '# Yours keeps scope, name, restapi.listen/connect_address, etcd3.hosts/cacert, postgresql.* and',
    '# authentication.superuser; leave postgresql.pg_hba and ssl* parameters unset (pgaccord owns them).',
    renderYaml(doc),
  ].join('\n');
}
