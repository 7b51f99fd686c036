// Where each managed file lives. pg_hba.conf, pg_ident.conf and postgresql.conf are the files
// the running server names (SHOW hba_file ...); everything else lives in the agent's state
// directory, outside PGDATA, because pg_basebackup and pg_rewind copy PGDATA.
import { createHash } from 'node:crypto';
import { dirname, join } from 'node:path';

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

export function layoutFor(stateDir: string, server: ServerPaths): Layout {
  return {
    hbaFile: server.hbaFile,
    identFile: server.identFile,
    configFile: server.configFile,
    includeFile: join(dirname(server.configFile), INCLUDE_FILE),
    tlsDir: join(stateDir, 'tls'),
    clientDir: join(stateDir, 'client'),
    passfile: join(stateDir, 'client', 'passfile'),
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
