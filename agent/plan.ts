// Pure: what every managed file must contain for one NodeDesired, given where the server keeps
// its files and what the operator wrote outside the managed blocks. No I/O, no clock: the same
// input gives the same bytes, so a second apply finds nothing to write and reloads nothing.
import { conninfo } from '../shared/escape.ts';
import { CONFIG_HASH_SETTING, configHash, renderHbaBlock, renderIdentBlock, renderPassfile, renderSettings, withManagedBlock, type PassfileEntry } from '../shared/render.ts';
import type { NodeDesired } from '../shared/schema.ts';
import type { ClientConnection, InstalledCertificate } from './types.ts';
import { INCLUDE_FILE, INCLUDE_LINE, caBundlePath, crlPath, type Layout } from './layout.ts';

export class PlanError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.code = code;
  }
}

/** Which managed file a planned write is, in the order they are installed. */
export type FileKey = 'ca' | 'crl' | 'passfile' | 'ident' | 'hba' | 'settings' | 'config';

export interface PlannedFile {
  key: FileKey;
  path: string;
  content: string;
  mode: number;
  /** Holds a secret: never logged, and a failure to set its mode is fatal. */
  secret: boolean;
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

function clientConnections(desired: NodeDesired, certs: Map<string, InstalledCertificate>, caFile: string | null, crlFile: string | null, passfile: string | null): ClientConnection[] {
  return desired.edges.map((e) => {
    const tls = e.sslmode !== 'disable';
    const cert = e.clientCertificate === null ? undefined : certs.get(e.clientCertificate);
    if (e.clientCertificate !== null && cert === undefined) {
      throw new PlanError('E_NO_CLIENT_CERT', `edge to ${e.to} as ${e.role} needs client certificate ${e.clientCertificate}, which is not installed yet`);
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
        sslrootcert: tls && caFile !== null ? caFile : undefined,
        sslcert: cert?.certPath,
        sslkey: cert?.keyPath,
        sslcrl: tls && crlFile !== null ? crlFile : undefined,
        passfile: e.usesPassfile && passfile !== null ? passfile : undefined,
      }),
    };
  });
}

export function planNode(input: PlanInput): Plan {
  const { desired, layout } = input;
  const certs = new Map(input.certificates.map((c) => [c.slot, c]));
  const serverCertificate = desired.tls ? certs.get('server') ?? null : null;
  if (desired.tls && serverCertificate === null) {
    throw new PlanError('E_NO_SERVER_CERT', 'TLS is on but no server certificate is installed yet: ssl=on without one would stop the next restart');
  }
  const needsCa = desired.tls || desired.edges.some((e) => e.sslmode !== 'disable');
  const caFile = needsCa ? caBundlePath(layout, desired.caBundle) : null;
  if (needsCa && desired.caBundle.trim() === '') throw new PlanError('E_RENDER', 'TLS is on but the desired state carries no CA bundle');
  const crlFile = needsCa && desired.crl !== null ? crlPath(layout, desired.crl) : null;

  const hbaBlock = renderHbaBlock({ cluster: desired.cluster, localRole: input.localRole, rules: desired.hba, managedRoles: desired.roles.map((r) => r.name) });
  const identBlock = renderIdentBlock({ cluster: desired.cluster, localRole: input.localRole, localOsUsers: input.localOsUsers, lines: desired.ident });
  const hba = withManagedBlock(input.existing.hba, hbaBlock);
  const ident = withManagedBlock(input.existing.ident, identBlock);

  const settings: Record<string, string> = { ...desired.settings };
  for (const k of ['ssl_cert_file', 'ssl_key_file', 'ssl_ca_file', 'ssl_crl_file']) delete settings[k];
  delete settings[CONFIG_HASH_SETTING];
  if (serverCertificate !== null && caFile !== null) {
    settings.ssl_cert_file = serverCertificate.certPath;
    settings.ssl_key_file = serverCertificate.keyPath;
    settings.ssl_ca_file = caFile;
    if (crlFile !== null) settings.ssl_crl_file = crlFile;
  }

  const entries = passfileEntries(desired);
  const passfile = entries.length > 0 ? renderPassfile(entries) : null;

  const files: PlannedFile[] = [];
  if (caFile !== null) files.push({ key: 'ca', path: caFile, content: desired.caBundle, mode: 0o644, secret: false });
  if (crlFile !== null && desired.crl !== null) files.push({ key: 'crl', path: crlFile, content: desired.crl, mode: 0o644, secret: false });
  if (passfile !== null) files.push({ key: 'passfile', path: layout.passfile, content: passfile, mode: 0o600, secret: true });
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
    clientConnections: clientConnections(desired, certs, caFile, crlFile, passfile !== null ? layout.passfile : null),
  };
}
