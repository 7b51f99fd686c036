// Where each managed file lives. pg_hba.conf, pg_ident.conf and postgresql.conf are the files
// the running server names (SHOW hba_file ...); everything else lives in the agent's state
// directory, outside PGDATA, because pg_basebackup and pg_rewind copy PGDATA.
import { createHash } from 'node:crypto';
import { dirname, join } from 'node:path';
import type { ClientLayout } from '../contract/schema.ts';
import { CodedError } from '../contract/problem.ts';

/** The settings include file, next to postgresql.conf. */
export const INCLUDE_FILE = 'pgaccord.conf';
export const INCLUDE_LINE = `include '${INCLUDE_FILE}'`;

/** What the server reports about itself (see pgconf.ts serverPaths). */
export interface ServerPaths {
  hbaFile: string;
  identFile: string;
  configFile: string;
}

export interface Layout {
  stateDir: string;
  /** Home of the OS user that runs the profile's client (the PGDATA owner), for `home` client layouts. */
  home: string | null;
  hbaFile: string;
  identFile: string;
  configFile: string;
  includeFile: string;
  /** CA bundle and CRL, content-addressed, plus the runtime's versioned key/cert pairs. */
  tlsDir: string;
  /** Client credentials: the passfile. */
  clientDir: string;
  passfile: string;
}

/**
 * The agent's state directory: the one place its entries are named. The planner needs tls/,
 * client/ and server/, the runtime the rest; each module owns what goes inside its directory.
 */
export function stateDirLayout(stateDir: string) {
  return {
    /** The last good desired state (0600: it holds client passwords). */
    desired: join(stateDir, 'desired.json'),
    /** The local mirror of the last status report. */
    status: join(stateDir, 'status.json'),
    /** The agent identity: coordinator CA, enrolment, identity-<serial>.{crt,key}. */
    identityDir: join(stateDir, 'identity'),
    /** Versioned key/certificate pairs and the content-addressed CA bundle and CRL. */
    tlsDir: join(stateDir, 'tls'),
    clientDir: join(stateDir, 'client'),
    passfile: join(stateDir, 'client', 'passfile'),
    /** The server's TLS files under fixed names (stableServerPaths). */
    serverDir: join(stateDir, 'server'),
    /** Patroni's fragment and certificate files (patroniPaths). */
    patroniDir: join(stateDir, 'patroni'),
  };
}

export function layoutFor(stateDir: string, server: ServerPaths, home: string | null = null): Layout {
  const dirs = stateDirLayout(stateDir);
  return {
    stateDir,
    home,
    hbaFile: server.hbaFile,
    identFile: server.identFile,
    configFile: server.configFile,
    includeFile: join(dirname(server.configFile), INCLUDE_FILE),
    tlsDir: dirs.tlsDir,
    clientDir: dirs.clientDir,
    passfile: dirs.passfile,
  };
}

const shortHash = (content: string): string => createHash('sha256').update(content).digest('hex').slice(0, 16);

/**
 * Content-addressed names: a new CA bundle or CRL gets a new file, so switching to it is the one
 * atomic rename of the settings file (or client connection string) that names it.
 */
export const caBundlePath = (layout: Layout, pem: string): string => join(layout.tlsDir, `ca-${shortHash(pem)}.crt`);
export const crlPath = (layout: Layout, pem: string): string => join(layout.tlsDir, `crl-${shortHash(pem)}.pem`);

/** Names of our own content-addressed files in tlsDir (for cleanup of unreferenced ones). */
export const OWN_TLS_FILE = /^(ca|crl)-[0-9a-f]{16}\.(crt|pem)$/;

/** The server's TLS files under fixed names (NodeDesired.stableServerFiles). */
export interface StableServerPaths {
  dir: string;
  /** Certificate chain followed by the key, one 0600 file: ssl_cert_file and ssl_key_file both. */
  pem: string;
  ca: string;
  crl: string;
}

export const stableServerPaths = (layout: Layout): StableServerPaths => {
  const dir = stateDirLayout(layout.stateDir).serverDir;
  return { dir, pem: join(dir, 'server.pem'), ca: join(dir, 'root.crt'), crl: join(dir, 'root.crl') };
};

export const md5Hex = (text: string): string => createHash('md5').update(text, 'utf8').digest('hex');

/** Where a client layout's files are for one role (`{md5}` = md5 hex of the role name, as TimescaleDB names them). */
export interface ClientPaths {
  base: string;
  dir: string;
  cert: string | null;
  key: string | null;
  ca: string | null;
  crl: string | null;
  passfile: string;
}

export class LayoutError extends CodedError {
  constructor(message: string) {
    super('E_LAYOUT', message);
  }
}

export function clientPaths(layout: Layout, cl: ClientLayout, role: string): ClientPaths {
  const base = cl.base === 'home' ? layout.home : layout.stateDir;
  if (base === null || base === '' || base === '/') {
    throw new LayoutError(`the client layout needs the home directory of the client's OS user, and it has none (${JSON.stringify(base)})`);
  }
  const dir = join(base, cl.dir);
  // {role}: the role name itself (ROLE_PATTERN: lower-case letters, digits, underscores)
  const name = (pattern: string | null): string | null =>
    (pattern === null ? null : join(dir, pattern.replace(/\{md5\}/g, md5Hex(role)).replace(/\{role\}/g, role)));
  const paths = { base, dir, cert: name(cl.cert), key: name(cl.key), ca: name(cl.ca), crl: name(cl.crl), passfile: join(base, cl.passfile) };
  // The schema already refuses '..' and absolute paths; a desired state must never reach outside its base.
  for (const p of [paths.dir, paths.cert, paths.key, paths.ca, paths.crl, paths.passfile]) {
    if (p !== null && p !== base && !p.startsWith(`${base}/`)) throw new LayoutError(`client layout path ${p} is outside ${base}`);
  }
  return paths;
}

/** Whether `path` is `root` or lies under it (both already resolved, no `..`). */
export function isWithin(root: string, path: string): boolean {
  return path === root || path.startsWith(root === '/' ? '/' : `${root}/`);
}

/** Every directory between base and `path`'s directory (parents first), which the agent creates 0700. */
export function dirsBetween(base: string, path: string): string[] {
  const out: string[] = [];
  let d = dirname(path);
  while (d.startsWith(`${base}/`) && d !== base) {
    out.unshift(d);
    d = dirname(d);
  }
  return out;
}
