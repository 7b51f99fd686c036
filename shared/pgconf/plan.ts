// Pure: what every managed file must contain for one NodeDesired, given where the server keeps
// its files and what the operator wrote outside the managed blocks. No I/O, no clock: the same
// input gives the same bytes, so a second apply finds nothing to write and reloads nothing.
import { conninfo, passfileField } from './escape.ts';
import {
  CONFIG_HASH_SETTING, configHash, renderHbaBlock, renderIdentBlock, renderPassfile, renderSettings, withManagedBlock, type PassfileEntry,
} from './render.ts';
import type { NodeDesired } from '../contract/schema.ts';
import { allowedSettings, PROFILES, PATRONI_API_SLOT, PATRONI_CLIENT_SLOT } from './profiles.ts';
import type { ClientConnection, InstalledCertificate } from './types.ts';
import { INCLUDE_FILE, INCLUDE_LINE, caBundlePath, clientPaths, crlPath, dirsBetween, stableServerPaths, type ClientPaths, type Layout } from './layout.ts';
import { isPatroni, patroniPaths, renderPatroniFragment } from './patroni.ts';
import { CodedError } from '../contract/problem.ts';

/** A desired state the planner cannot turn into files: nothing is written. */
export class PlanError extends CodedError {}

/** Which managed file a planned write is, in the order they are installed. */
export type FileKey =
  | 'ca' | 'crl'
  /** stable server files (server.pem = chain + key, root.crt, root.crl) */
  | 'server-pem' | 'server-ca' | 'server-crl'
  /** client files where the profile's client looks for them */
  | 'client-cert' | 'client-key' | 'client-ca' | 'client-crl'
  | 'passfile' | 'ident' | 'hba' | 'settings' | 'config'
  /** Patroni: REST API pair, client pair (one file each), the fragment Patroni includes */
  | 'patroni-api' | 'patroni-client' | 'patroni-fragment';

export interface PlannedFile {
  key: FileKey;
  path: string;
  content: string;
  mode: number;
  /** Holds a secret: never logged, and a failure to set its mode is fatal. */
  secret: boolean;
  /**
   * Files with the same group are installed together (installFiles: all staged, then renamed
   * back to back, in plan order): a client certificate and its key under fixed names.
   */
  group?: string;
}

export interface PlanInput {
  desired: NodeDesired;
  certificates: InstalledCertificate[];
  layout: Layout;
  /** Database role the agent connects as (anti-lockout rule). */
  localRole: string;
  /** OS users allowed to connect as localRole over the socket (the agent's, the server's). */
  localOsUsers: string[];
  /** Current contents of the server's own files (operator lines are kept byte for byte). */
  existing: { hba: string; ident: string; config: string };
  /**
   * PEM contents of the installed pairs, by slot: needed when the desired state wants copies
   * under fixed names (stable server files, a client layout).
   */
  pems?: Record<string, { cert: string; key: string }>;
}

export interface Plan {
  /** In install order: whatever a file names is on disk before the file that names it. */
  files: PlannedFile[];
  hash: string;
  /** Everything the include file sets except the hash. */
  settings: Record<string, string>;
  hbaBlock: string;
  identBlock: string;
  serverCertificate: InstalledCertificate | null;
  caFile: string | null;
  crlFile: string | null;
  clientConnections: ClientConnection[];
  /** Directories the files above live in that the agent creates (0700, the server's OS user), parents first. */
  dirs: string[];
}

const INCLUDE_RE = /^[ \t]*include[ \t]*(=[ \t]*)?'([^']*)'[ \t]*(#.*)?$/;

/** Whether postgresql.conf already includes our file (relative name or absolute path). */
export function hasIncludeLine(config: string, includeFile: string): boolean {
  return config.split('\n').some((line) => {
    const m = INCLUDE_RE.exec(line);
    return m !== null && (m[2] === INCLUDE_FILE || m[2] === includeFile);
  });
}

/** postgresql.conf with our include line appended once at the end; other lines untouched. */
export function withIncludeLine(config: string, includeFile: string): string {
  if (hasIncludeLine(config, includeFile)) return config;
  const sep = config === '' || config.endsWith('\n') ? '' : '\n';
  return `${config}${sep}# Added once by the pgaccord agent: its managed settings (ssl, hash of the managed files).\n${INCLUDE_LINE}\n`;
}

function passfileEntries(desired: NodeDesired): PassfileEntry[] {
  const secrets = new Map(desired.clientSecrets.map((s) => [s.role, s.password]));
  const seen = new Set<string>();
  const out: PassfileEntry[] = [];
  for (const e of desired.edges.filter((x) => x.usesPassfile)) {
    const password = secrets.get(e.role);
    if (password === undefined) throw new PlanError('E_RENDER', `edge to ${e.to} as ${e.role} uses the passfile but no client secret is given for ${e.role}`);
    const key = `${e.host}\0${e.port}\0${e.role}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push({ host: e.host, port: e.port, database: '*', user: e.role, password });
  }
  return out.sort((a, b) => (a.host + a.port + a.user < b.host + b.port + b.user ? -1 : 1));
}

/** TimescaleDB's passfile: one `*:*:*:role:password` line per role, postgres first (seed 000). */
function renderAnyPassfile(entries: PassfileEntry[]): string {
  const roles = [...new Map(entries.map((e) => [e.user, e.password])).entries()]
    .sort(([a], [b]) => (a === 'postgres' ? -1 : b === 'postgres' ? 1 : a < b ? -1 : a > b ? 1 : 0));
  return roles.map(([user, password]) => `*:*:*:${passfileField(user)}:${passfileField(password)}\n`).join('');
}

interface ClientFiles {
  /** Client paths per role (only with a client layout). */
  byRole: Map<string, ClientPaths>;
  passfile: string | null;
}

function clientConnections(
  desired: NodeDesired,
  certs: Map<string, InstalledCertificate>,
  caFile: string | null,
  crlFile: string | null,
  client: ClientFiles,
): ClientConnection[] {
  const cl = desired.clientLayout;
  return desired.edges.map((e) => {
    const tls = e.sslmode !== 'disable';
    const cert = e.clientCertificate === null ? undefined : certs.get(e.clientCertificate);
    if (e.clientCertificate !== null && cert === undefined) {
      throw new PlanError('E_NO_CLIENT_CERT', `edge to ${e.to} as ${e.role} needs client certificate ${e.clientCertificate}, which is not installed yet`);
    }
    const paths = client.byRole.get(e.role);
    const passfile = e.usesPassfile && client.passfile !== null ? client.passfile : undefined;
    let ssl: Record<string, string | undefined>;
    if (cl === undefined || paths === undefined) {
      ssl = {
        sslrootcert: tls && caFile !== null ? caFile : undefined,
        sslcert: cert?.certPath,
        sslkey: cert?.keyPath,
        sslcrl: tls && crlFile !== null ? crlFile : undefined,
        passfile,
      };
    } else if (cl.conninfo === 'libpq-defaults') {
      // pg_autoctl: only sslrootcert/sslcrl (its --ssl-ca-file/--ssl-crl-file); the client
      // certificate and the passfile are libpq's defaults in the home directory
      ssl = { sslrootcert: tls && caFile !== null ? caFile : undefined, sslcrl: tls && crlFile !== null ? crlFile : undefined };
    } else {
      ssl = {
        sslrootcert: tls ? (paths.ca ?? caFile ?? undefined) : undefined,
        sslcert: cert !== undefined ? paths.cert ?? undefined : undefined,
        sslkey: cert !== undefined ? paths.key ?? undefined : undefined,
        sslcrl: tls && paths.crl !== null && desired.crl !== null ? paths.crl : undefined,
        passfile,
      };
    }
    return {
      to: e.to,
      role: e.role,
      replication: e.replication,
      conninfo: conninfo({
        host: e.host,
        port: e.port,
        dbname: e.dbname,
        user: e.role,
        replication: e.replication ? 'true' : undefined,
        sslmode: e.sslmode,
        ...ssl,
      }),
    };
  });
}

function pemFor(input: PlanInput, slot: string): { cert: string; key: string } {
  const pem = input.pems?.[slot];
  if (pem === undefined) throw new PlanError('E_RENDER', `the contents of certificate ${slot} are needed for its copy under a fixed name and were not given`);
  return pem;
}

const withNewline = (pem: string): string => (pem.endsWith('\n') ? pem : `${pem}\n`);

/**
 * Only settings of the allowlist (shared/pgconf/profiles.ts) reach the include file, whoever sent the
 * desired state: archive_command or shared_preload_libraries would run code on this node.
 */
export function checkSettings(desired: NodeDesired): void {
  const allowed = allowedSettings(desired.profile);
  const names = [...Object.keys(desired.settings), ...Object.keys(desired.clientLayout?.settings ?? {})];
  const refused = [...new Set(names.filter((name) => !allowed.has(name)))].sort();
  if (refused.length > 0) {
    const many = refused.length > 1;
    throw new PlanError(
      'E_SETTING_REFUSED',
      `setting${many ? 's' : ''} ${refused.join(', ')} ${many ? 'are' : 'is'} not among those the ${desired.profile} profile may set`
        + ` (${[...allowed].sort().join(', ')}): refused, nothing written`,
    );
  }
}

export function planNode(input: PlanInput): Plan {
  const { desired, layout } = input;
  checkSettings(desired);
  const certs = new Map(input.certificates.map((c) => [c.slot, c]));
  const serverCertificate = desired.tls ? certs.get('server') ?? null : null;
  if (desired.tls && serverCertificate === null) {
    throw new PlanError('E_NO_SERVER_CERT', 'TLS is on but no server certificate is installed yet: ssl=on without one would stop the next restart');
  }
  const needsCa = desired.tls || desired.edges.some((e) => e.sslmode !== 'disable');
  if (needsCa && desired.caBundle.trim() === '') throw new PlanError('E_RENDER', 'TLS is on but the desired state carries no CA bundle');
  const stable = desired.stableServerFiles === true ? stableServerPaths(layout) : null;
  const caFile = needsCa ? (stable ? stable.ca : caBundlePath(layout, desired.caBundle)) : null;
  const crlFile = needsCa && desired.crl !== null ? (stable ? stable.crl : crlPath(layout, desired.crl)) : null;

  // the agent's own profile table, not the desired state, says which external roles are rejected elsewhere
  const rejected = new Set(PROFILES[desired.profile]?.roles.filter((r) => r.rejectElsewhere === true).map((r) => r.name) ?? []);
  const managedRoles = desired.roles.filter((r) => r.external !== true || rejected.has(r.name)).map((r) => r.name);
  const hbaBlock = renderHbaBlock({ cluster: desired.cluster, localRole: input.localRole, rules: desired.hba, managedRoles });
  const identBlock = renderIdentBlock({ cluster: desired.cluster, localRole: input.localRole, localOsUsers: input.localOsUsers, lines: desired.ident });
  const hba = withManagedBlock(input.existing.hba, hbaBlock);
  const ident = withManagedBlock(input.existing.ident, identBlock);

  const files: PlannedFile[] = [];
  const dirs: string[] = [];
  const addDirs = (base: string, path: string) => {
    for (const d of dirsBetween(base, path)) if (!dirs.includes(d)) dirs.push(d);
  };

  const settings: Record<string, string> = { ...desired.settings };
  for (const k of ['ssl_cert_file', 'ssl_key_file', 'ssl_ca_file', 'ssl_crl_file']) delete settings[k];
  delete settings[CONFIG_HASH_SETTING];
  if (serverCertificate !== null && caFile !== null) {
    if (stable) {
      const pem = pemFor(input, 'server');
      addDirs(layout.stateDir, stable.pem);
      files.push({ key: 'server-ca', path: stable.ca, content: desired.caBundle, mode: 0o644, secret: false });
      if (crlFile !== null && desired.crl !== null) files.push({ key: 'server-crl', path: stable.crl, content: desired.crl, mode: 0o644, secret: false });
      // one file, one rename: the certificate and its key can never be seen mismatched
      files.push({ key: 'server-pem', path: stable.pem, content: withNewline(pem.cert) + withNewline(pem.key), mode: 0o600, secret: true });
      settings.ssl_cert_file = stable.pem;
      settings.ssl_key_file = stable.pem;
    } else {
      settings.ssl_cert_file = serverCertificate.certPath;
      settings.ssl_key_file = serverCertificate.keyPath;
    }
    settings.ssl_ca_file = caFile;
    if (crlFile !== null) settings.ssl_crl_file = crlFile;
  }

  // Client credentials where the profile's client looks for them.
  const cl = desired.clientLayout;
  const client: ClientFiles = { byRole: new Map(), passfile: null };
  const entries = passfileEntries(desired);
  if (cl !== undefined && desired.edges.length > 0) {
    for (const role of [...new Set(desired.edges.map((e) => e.role))].sort()) client.byRole.set(role, clientPaths(layout, cl, role));
    const any = [...client.byRole.values()][0]!;
    const written = new Set<string>();
    const add = (f: PlannedFile) => {
      if (written.has(f.path)) return;
      written.add(f.path);
      addDirs(any.base, f.path);
      files.push(f);
    };
    for (const e of desired.edges) {
      const paths = client.byRole.get(e.role)!;
      if (e.clientCertificate !== null && paths.cert !== null && paths.key !== null) {
        if (!certs.has(e.clientCertificate)) {
          throw new PlanError('E_NO_CLIENT_CERT', `edge to ${e.to} as ${e.role} needs client certificate ${e.clientCertificate}, which is not installed yet`);
        }
        const pem = pemFor(input, e.clientCertificate);
        if (written.has(paths.cert) && files.find((f) => f.path === paths.cert)?.content.startsWith(withNewline(pem.cert)) !== true) {
          throw new PlanError('E_RENDER', `client layout: two client certificates would be written to ${paths.cert}`);
        }
        // certificate first, then its key, renamed back to back: libpq reads sslcert, then sslkey
        const content = withNewline(pem.cert) + (cl.chain ? withNewline(desired.caBundle) : '');
        add({ key: 'client-cert', path: paths.cert, content, mode: 0o644, secret: false, group: paths.cert });
        add({ key: 'client-key', path: paths.key, content: withNewline(pem.key), mode: 0o600, secret: true, group: paths.cert });
      }
    }
    if (needsCa && any.ca !== null) add({ key: 'client-ca', path: any.ca, content: desired.caBundle, mode: 0o644, secret: false });
    if (needsCa && any.crl !== null && desired.crl !== null) add({ key: 'client-crl', path: any.crl, content: desired.crl, mode: 0o644, secret: false });
    if (entries.length > 0) {
      client.passfile = any.passfile;
      const content = cl.passfileLines === 'any' ? renderAnyPassfile(entries) : renderPassfile(entries);
      add({ key: 'passfile', path: any.passfile, content, mode: 0o600, secret: true });
    }
    for (const [name, what] of Object.entries(cl.settings)) {
      if (what === 'passfile') settings[name] = any.passfile;
      else settings[name] = any.dir;
    }
  } else if (entries.length > 0) {
    client.passfile = layout.passfile;
    files.push({ key: 'passfile', path: layout.passfile, content: renderPassfile(entries), mode: 0o600, secret: true });
  }

  if (isPatroni(desired)) {
    // one file per pair, one rename: Patroni (and the ssl module) read certfile and keyfile apart
    const p = patroniPaths(layout);
    addDirs(layout.stateDir, p.fragment);
    for (const [key, slot, path] of [['patroni-api', PATRONI_API_SLOT, p.apiPem], ['patroni-client', PATRONI_CLIENT_SLOT, p.clientPem]] as const) {
      const pem = pemFor(input, slot);
      files.push({ key, path, content: withNewline(pem.cert) + withNewline(pem.key), mode: 0o600, secret: true });
    }
    const content = renderPatroniFragment(desired, layout);
    files.push({ key: 'patroni-fragment', path: p.fragment, content, mode: 0o600, secret: desired.auth === 'scram-sha-256' });
  }

  if (!stable) {
    if (caFile !== null) files.unshift({ key: 'ca', path: caFile, content: desired.caBundle, mode: 0o644, secret: false });
    if (crlFile !== null && desired.crl !== null) files.splice(1, 0, { key: 'crl', path: crlFile, content: desired.crl, mode: 0o644, secret: false });
  }
  files.push({ key: 'ident', path: layout.identFile, content: ident, mode: 0o600, secret: false });
  files.push({ key: 'hba', path: layout.hbaFile, content: hba, mode: 0o600, secret: false });

  const hashParts: Record<string, string> = { hba, ident, settings: JSON.stringify(Object.entries(settings).sort()) };
  for (const f of files) hashParts[`file:${f.path}`] = f.content;
  const hash = configHash(hashParts);
  files.push({ key: 'settings', path: layout.includeFile, content: renderSettings(settings, hash), mode: 0o600, secret: false });
  const config = withIncludeLine(input.existing.config, layout.includeFile);
  if (config !== input.existing.config) files.push({ key: 'config', path: layout.configFile, content: config, mode: 0o600, secret: false });

  return {
    files,
    hash,
    settings,
    hbaBlock,
    identBlock,
    serverCertificate,
    caFile,
    crlFile,
    clientConnections: clientConnections(desired, certs, caFile, crlFile, client),
    dirs,
  };
}
