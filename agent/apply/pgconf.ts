// Local PostgreSQL, as the agent sees it over its Unix socket: where the server keeps its files,
// what the validation views say about the files on disk, the one reload, and the proofs that
// the reload took (a new session's configuration hash, the certificate served in a handshake).
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import pg from 'pg';
import { CONFIG_HASH_SETTING } from '../../shared/pgconf/render.ts';
import type { ServerPaths } from '../../shared/pgconf/layout.ts';
import { peerCertificateThenClose, type ServedCertificate } from '../probe/tls-probe.ts';

export interface LocalPg {
  pgHost: string;
  pgPort: number;
  pgUser: string;
}

/** A fresh session over the local socket (peer authentication through the anti-lockout rule). */
export async function openSession(local: LocalPg, database = 'postgres'): Promise<pg.Client> {
  const client = new pg.Client({ host: local.pgHost, port: local.pgPort, user: local.pgUser, database, connectionTimeoutMillis: 10_000, application_name: 'pgaccord-agent' });
  // An error event on an idle client must not crash the agent; the next query reports it.
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

export async function withSession<T>(local: LocalPg, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = await openSession(local);
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => undefined);
  }
}

export interface ServerInfo extends ServerPaths {
  dataDirectory: string;
  listenAddresses: string;
  version: string;
  inRecovery: boolean;
  ssl: boolean;
}

export async function serverInfo(c: pg.Client): Promise<ServerInfo> {
  const { rows } = await c.query<{ hba_file: string; ident_file: string; config_file: string; data_directory: string; listen_addresses: string; server_version: string; in_recovery: boolean; ssl: string }>(
    `SELECT current_setting('hba_file') AS hba_file, current_setting('ident_file') AS ident_file,
            current_setting('config_file') AS config_file, current_setting('data_directory') AS data_directory,
            current_setting('listen_addresses') AS listen_addresses, current_setting('server_version') AS server_version,
            pg_is_in_recovery() AS in_recovery, current_setting('ssl') AS ssl`,
  );
  const r = rows[0]!;
  return {
    hbaFile: r.hba_file,
    identFile: r.ident_file,
    configFile: r.config_file,
    dataDirectory: r.data_directory,
    listenAddresses: r.listen_addresses,
    version: r.server_version,
    inRecovery: r.in_recovery,
    ssl: r.ssl === 'on',
  };
}

export interface HbaRow {
  line_number: number;
  type: string | null;
  database: string[] | null;
  user_name: string[] | null;
  address: string | null;
  netmask: string | null;
  auth_method: string | null;
  options: string[] | null;
  error: string | null;
}

/** pg_hba_file_rules reads the file on disk, not what is loaded: the check before a reload. */
export async function hbaFileRules(c: pg.Client): Promise<HbaRow[]> {
  return (await c.query<HbaRow>('SELECT line_number, type, database, user_name, address, netmask, auth_method, options, error FROM pg_hba_file_rules ORDER BY line_number')).rows;
}

export interface IdentRow {
  line_number: number;
  map_name: string | null;
  sys_name: string | null;
  pg_username: string | null;
  error: string | null;
}

export async function identFileMappings(c: pg.Client): Promise<IdentRow[]> {
  return (await c.query<IdentRow>('SELECT line_number, map_name, sys_name, pg_username, error FROM pg_ident_file_mappings ORDER BY line_number')).rows;
}

export interface FileSettingRow {
  sourcefile: string | null;
  sourceline: number | null;
  seqno: number;
  name: string | null;
  setting: string | null;
  applied: boolean;
  error: string | null;
  /** pg_settings.context of the parameter (postmaster = needs a restart). */
  context: string | null;
}

export async function fileSettings(c: pg.Client): Promise<FileSettingRow[]> {
  return (
    await c.query<FileSettingRow>(
      `SELECT f.sourcefile, f.sourceline, f.seqno, f.name, f.setting, f.applied, f.error, s.context
         FROM pg_file_settings f LEFT JOIN pg_settings s ON s.name = f.name ORDER BY f.seqno`,
    )
  ).rows;
}

export async function serverDataDirectory(c: pg.Client): Promise<string> {
  return (await c.query<{ d: string }>(`SELECT current_setting('data_directory') AS d`)).rows[0]!.d;
}

export async function pendingRestart(c: pg.Client): Promise<string[]> {
  return (await c.query<{ name: string }>('SELECT name FROM pg_settings WHERE pending_restart ORDER BY name')).rows.map((r) => r.name);
}

export async function reloadConf(c: pg.Client): Promise<void> {
  const { rows } = await c.query<{ ok: boolean }>('SELECT pg_reload_conf() AS ok');
  if (!rows[0]?.ok) throw new Error('pg_reload_conf() returned false');
}

/** The configuration hash a brand-new session sees (null when the setting is not loaded). */
export async function loadedConfigHash(local: LocalPg): Promise<string | null> {
  return withSession(local, async (c) => {
    const { rows } = await c.query<{ h: string | null }>('SELECT current_setting($1, true) AS h', [CONFIG_HASH_SETTING]);
    const h = rows[0]?.h ?? null;
    return h === '' ? null : h;
  });
}

/** Poll until a new session sees `expected` (the postmaster handles SIGHUP asynchronously). */
export async function waitForConfigHash(local: LocalPg, expected: string, timeoutMs = 5000): Promise<{ ok: boolean; seen: string | null }> {
  const deadline = Date.now() + timeoutMs;
  let seen: string | null = null;
  for (;;) {
    seen = await loadedConfigHash(local);
    if (seen === expected || Date.now() >= deadline) return { ok: seen === expected, seen };
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The TCP address to reach the local server at, from listen_addresses (null: socket only). */
export function tcpHostFor(listenAddresses: string): string | null {
  const first = listenAddresses.split(',').map((s) => s.trim()).find((s) => s !== '');
  if (first === undefined) return null;
  if (first === '*' || first === '0.0.0.0') return '127.0.0.1';
  if (first === '::') return '::1';
  return first;
}

export type { ServedCertificate };

const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);

/**
 * The certificate the server presents right now: SSLRequest over TCP, 'S', then a TLS
 * handshake on that socket. null when the server answers 'N' (ssl is off).
 */
export async function servedCertificate(host: string, port: number, timeoutMs = 5000): Promise<ServedCertificate | null> {
  const socket: Socket = netConnect({ host, port });
  socket.setTimeout(timeoutMs, () => socket.destroy(new Error(`TLS probe of ${host}:${port} timed out`)));
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    socket.write(SSL_REQUEST);
    const answer = await new Promise<string>((resolve, reject) => {
      socket.once('data', (d: Buffer) => resolve(d.subarray(0, 1).toString('latin1')));
      socket.once('error', reject);
      socket.once('close', () => reject(new Error('server closed the connection after SSLRequest')));
    });
    if (answer === 'N') return null;
    if (answer !== 'S') throw new Error(`unexpected answer ${JSON.stringify(answer)} to SSLRequest`);
    const tlsSocket = tlsConnect({ socket, rejectUnauthorized: false, ...(host.match(/^[\d.:]+$/) ? {} : { servername: host }) });
    try {
      // No startup packet follows: after close_notify the backend exits without logging.
      return await peerCertificateThenClose(tlsSocket, 'server');
    } finally {
      tlsSocket.destroy();
    }
  } finally {
    socket.destroy();
  }
}
