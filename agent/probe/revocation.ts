// Revocation on the node. PostgreSQL checks the CRL only when a connection is made: sessions
// that authenticated with a certificate revoked since then live on (FIELD-NOTES). Once the new CRL
// is loaded (the apply engine proved the reload), the agent ends every backend whose client
// certificate serial is in it. pg_stat_ssl.client_serial is numeric (decimal); CRL serials are hex.
import type pg from 'pg';
import { crlInfo, normaliseSerial } from '../../shared/crypto/crl.ts';

export interface TerminatedSession {
  pid: number;
  serial: string;
  user: string | null;
  clientAddr: string | null;
}

/** Decimal text of pg_stat_ssl.client_serial to certInfo's hex form. */
export function decimalSerialToHex(decimal: string): string {
  return normaliseSerial(BigInt(decimal).toString(16));
}

/** Backends of other sessions whose client certificate serial is revoked, as (pid, hex serial). */
export async function revokedSessions(session: Pick<pg.Client, 'query'>, revoked: Set<string>): Promise<TerminatedSession[]> {
  if (revoked.size === 0) return [];
  const r = await session.query<{ pid: number; serial: string; usename: string | null; client_addr: string | null }>(
    `SELECT s.pid, s.client_serial::text AS serial, a.usename, a.client_addr::text AS client_addr
       FROM pg_stat_ssl s LEFT JOIN pg_stat_activity a USING (pid)
      WHERE s.client_serial IS NOT NULL AND s.pid <> pg_backend_pid()`,
  );
  return r.rows
    .map((row) => ({ pid: row.pid, serial: decimalSerialToHex(row.serial), user: row.usename, clientAddr: row.client_addr }))
    .filter((x) => revoked.has(x.serial));
}

/** End the sessions of revoked certificates; returns those it ended. */
export async function terminateRevokedSessions(session: Pick<pg.Client, 'query'>, crlPem: string | null): Promise<TerminatedSession[]> {
  if (crlPem === null) return [];
  const revoked = new Set(crlInfo(crlPem).revoked.map((x) => x.serial));
  const victims = await revokedSessions(session, revoked);
  const ended: TerminatedSession[] = [];
  for (const v of victims) {
    const r = await session.query<{ ok: boolean }>('SELECT pg_terminate_backend($1) AS ok', [v.pid]);
    if (r.rows[0]?.ok) ended.push(v);
  }
  return ended;
}
