// Checks of what was written, before PostgreSQL is told to reload, pure: the validation views
// compared with what was rendered (over their rows), and the TLS material (key matches
// certificate, chain, validity, the key's owner and mode as PostgreSQL and libpq demand them,
// over the bytes and the stat already read). The reads and the SQL are agent/apply/inspect.ts.
import { certInfo, certMatchesKey, normaliseIp, verifiesAgainst } from '../../shared/crypto/x509.ts';
import { parseCidr } from '../../shared/pgconf/net.ts';
import type { Problem } from '../../shared/contract/problem.ts';
import type { FileSettingRow, HbaRow, IdentRow } from './pgconf.ts';
import type { InstalledCertificate } from '../../shared/pgconf/types.ts';
import { crlInfo, crlSignedBy } from '../../shared/crypto/crl.ts';

/** PostgreSQL's tokenizer, enough for the lines we render: space-separated, "quoted", comma lists. */
export function tokenizeConfLine(line: string): string[][] {
  const fields: string[][] = [];
  let i = 0;
  while (i < line.length) {
    while (i < line.length && (line[i] === ' ' || line[i] === '\t')) i++;
    if (i >= line.length || line[i] === '#') break;
    const field: string[] = [];
    let cur = '';
    for (;;) {
      if (line[i] === '"') {
        i++;
        while (i < line.length) {
          if (line[i] === '"' && line[i + 1] === '"') {
            cur += '"';
            i += 2;
          } else if (line[i] === '"') {
            i++;
            break;
          } else cur += line[i++];
        }
      } else if (line[i] === ',') {
        field.push(cur);
        cur = '';
        i++;
      } else if (i >= line.length || line[i] === ' ' || line[i] === '\t') {
        field.push(cur);
        break;
      } else cur += line[i++];
    }
    fields.push(field);
  }
  return fields;
}

/** The non-comment lines of a managed block with their line numbers (block at the top). */
function blockRuleLines(block: string): { lineNumber: number; fields: string[][] }[] {
  return block
    .split('\n')
    .map((text, idx) => ({ text, lineNumber: idx + 1 }))
    .filter((l) => l.text.trim() !== '' && !l.text.trimStart().startsWith('#'))
    .map((l) => ({ lineNumber: l.lineNumber, fields: tokenizeConfLine(l.text) }));
}

const blockLineCount = (block: string): number => block.split('\n').length - 1;

function prefixFromNetmask(mask: string): number {
  if (mask.includes('.')) return mask.split('.').reduce((n, o) => n + (Number(o) >>> 0).toString(2).replace(/0/g, '').length, 0);
  const [head, tail] = mask.split('::') as [string, string | undefined];
  const groups = head === '' ? [] : head.split(':');
  const tailGroups = tail === undefined || tail === '' ? [] : tail.split(':');
  const all = [...groups, ...Array(8 - groups.length - tailGroups.length).fill('0'), ...tailGroups];
  return all.reduce((n, g) => n + parseInt(g || '0', 16).toString(2).replace(/0/g, '').length, 0);
}

const sameList = (a: string[] | null, b: string[]): boolean => a !== null && a.length === b.length && a.every((x, i) => x === b[i]);

/**
 * pg_hba_file_rules against the rendered managed block: no error anywhere in the file, and for
 * every line of the block exactly the row we rendered (a line that lost its file has no row).
 * `sslTurningOn`: the new settings switch ssl on, so "hostssl record cannot match because SSL
 * is disabled" (the view judges with this session's ssl=off) is expected until the reload.
 */
export function checkHbaRows(rows: HbaRow[], block: string, opts: { sslTurningOn: boolean; file: string }): Problem[] {
  const problems: Problem[] = [];
  for (const r of rows) {
    if (r.error === null) continue;
    if (opts.sslTurningOn && r.type === 'hostssl' && /SSL is disabled/.test(r.error)) continue;
    problems.push({ code: 'E_HBA_INVALID', message: `${opts.file} line ${r.line_number}: ${r.error}` });
  }
  const expected = blockRuleLines(block);
  const last = blockLineCount(block);
  const inBlock = rows.filter((r) => r.line_number <= last);
  const mismatch = (lineNumber: number, what: string) => problems.push({ code: 'E_HBA_MISMATCH', message: `${opts.file} line ${lineNumber}: ${what}` });
  for (const exp of expected) {
    const row = inBlock.find((r) => r.line_number === exp.lineNumber);
    if (!row) {
      mismatch(exp.lineNumber, 'PostgreSQL has no rule for a line we wrote');
      continue;
    }
    if (row.error !== null) continue;
    const [type, db, user, ...rest] = exp.fields;
    if (row.type !== type![0]) mismatch(exp.lineNumber, `type ${row.type} instead of ${type![0]}`);
    if (!sameList(row.database, db!)) mismatch(exp.lineNumber, `databases ${JSON.stringify(row.database)} instead of ${JSON.stringify(db)}`);
    if (!sameList(row.user_name, user!)) mismatch(exp.lineNumber, `users ${JSON.stringify(row.user_name)} instead of ${JSON.stringify(user)}`);
    const tail = type![0] === 'local' ? rest : rest.slice(1);
    const address = type![0] === 'local' ? null : rest[0]![0]!;
    const method = tail[0]![0]!;
    if (row.auth_method !== method) mismatch(exp.lineNumber, `method ${row.auth_method} instead of ${method}`);
    if (address !== null) {
      if (address === 'all') {
        if (row.address !== 'all') mismatch(exp.lineNumber, `address ${row.address} instead of all`);
      } else {
        const cidr = parseCidr(address);
        const ok = cidr !== null && row.address !== null && normaliseIp(row.address) === normaliseIp(cidr.ip) && row.netmask !== null && prefixFromNetmask(row.netmask) === cidr.prefix;
        if (!ok) mismatch(exp.lineNumber, `address ${row.address}/${row.netmask} instead of ${address}`);
      }
    }
    for (const opt of tail.slice(1).map((f) => f.join(','))) {
      if (!(row.options ?? []).includes(opt)) mismatch(exp.lineNumber, `option ${opt} missing (has ${JSON.stringify(row.options)})`);
    }
  }
  for (const row of inBlock) {
    if (!expected.some((e) => e.lineNumber === row.line_number)) mismatch(row.line_number, 'a rule PostgreSQL sees that we did not write');
  }
  return problems;
}

export function checkIdentRows(rows: IdentRow[], block: string, file: string): Problem[] {
  const problems: Problem[] = rows.filter((r) => r.error !== null).map((r) => ({ code: 'E_IDENT_INVALID', message: `${file} line ${r.line_number}: ${r.error}` }));
  const expected = blockRuleLines(block);
  const last = blockLineCount(block);
  for (const exp of expected) {
    const row = rows.find((r) => r.line_number === exp.lineNumber);
    const [map, sys, user] = exp.fields.map((f) => f.join(','));
    if (!row) problems.push({ code: 'E_IDENT_MISMATCH', message: `${file} line ${exp.lineNumber}: PostgreSQL has no mapping for a line we wrote` });
    else if (row.error === null && (row.map_name !== map || row.sys_name !== sys || row.pg_username !== user)) {
      problems.push({ code: 'E_IDENT_MISMATCH', message: `${file} line ${exp.lineNumber}: ${row.map_name} ${row.sys_name} ${row.pg_username} instead of ${map} ${sys} ${user}` });
    }
  }
  for (const row of rows.filter((r) => r.line_number <= last)) {
    if (!expected.some((e) => e.lineNumber === row.line_number)) problems.push({ code: 'E_IDENT_MISMATCH', message: `${file} line ${row.line_number}: a mapping we did not write` });
  }
  return problems;
}

/**
 * pg_file_settings: every error is a problem, except "could not be applied" for a parameter
 * that needs a restart (a pending restart, reported when it is one of ours); each of our settings must
 * be the one that wins (not overridden by a later line or by ALTER SYSTEM).
 */
export function checkFileSettings(rows: FileSettingRow[], includeFile: string, ourNames: string[]): { problems: Problem[]; needRestart: string[] } {
  const problems: Problem[] = [];
  const needRestart: string[] = [];
  for (const r of rows) {
    if (r.error === null) continue;
    // A postmaster setting changed on disk is pending a restart, not an invalid file; only ours
    // hold the node back (pg_autoctl rewrites its recovery_target_timeline and port in its own file).
    const restart = r.error === 'setting could not be applied' && r.context === 'postmaster' ? r.name : /^parameter "([^"]+)" cannot be changed without restarting the server$/.exec(r.error)?.[1];
    if (restart) {
      if (ourNames.includes(restart)) needRestart.push(restart);
      continue;
    }
    problems.push({ code: 'E_SETTINGS_INVALID', message: `${r.sourcefile ?? 'configuration'}${r.sourceline !== null ? ` line ${r.sourceline}` : ''}: ${r.error}${r.name ? ` (${r.name})` : ''}` });
  }
  for (const name of ourNames) {
    const ours = rows.filter((r) => r.sourcefile === includeFile && r.name === name);
    if (ours.length === 0) {
      problems.push({ code: 'E_SETTINGS_NOT_READ', message: `${includeFile}: PostgreSQL does not read ${name} from it (is the include line in place?)` });
      continue;
    }
    const winner = rows.filter((r) => r.name === name).at(-1)!;
    if (winner.sourcefile !== includeFile) {
      problems.push({ code: 'E_SETTING_OVERRIDDEN', message: `${name} from ${includeFile} is overridden by ${winner.sourcefile} line ${winner.sourceline}` });
    }
  }
  return { problems, needRestart: [...new Set(needRestart)].sort() };
}

/** The owner/mode rule PostgreSQL (server key) and libpq (client key) apply to private keys. */
export function keyModeProblem(path: string, st: { uid: number; mode: number }, ownerUid: number): Problem | null {
  const mode = st.mode & 0o777;
  if (st.uid === ownerUid && (mode & 0o077) === 0) return null;
  if (st.uid === 0 && (mode & 0o037) === 0) return null;
  return {
    code: 'E_KEY_PERMISSIONS',
    message: `${path} is owned by uid ${st.uid} with mode ${mode.toString(8).padStart(4, '0')}: PostgreSQL and libpq need it owned by the database user with mode 0600 or stricter (or by root with 0640 or stricter), and would refuse it`,
  };
}

/**
 * One installed pair, from its bytes: a certificate, matching its key, signed by the cluster CA
 * bundle, valid now. `parsed` false: not a certificate at all (nothing else was judged).
 */
export function pairProblems(c: Pick<InstalledCertificate, 'certPath' | 'keyPath'>, certPem: string, keyPem: string, caBundle: string, now: Date): { problems: Problem[]; parsed: boolean } {
  let info;
  try {
    info = certInfo(certPem);
  } catch (e) {
    return { problems: [{ code: 'E_CERT_INVALID', message: `${c.certPath}: ${(e as Error).message}` }], parsed: false };
  }
  const problems: Problem[] = [];
  if (!certMatchesKey(certPem, keyPem)) problems.push({ code: 'E_CERT_KEY_MISMATCH', message: `${c.certPath} does not match the key ${c.keyPath}` });
  if (!verifiesAgainst(certPem, caBundle)) problems.push({ code: 'E_CERT_CHAIN', message: `${c.certPath} (serial ${info.serial}) is not signed by the cluster CA bundle` });
  if (info.notAfter.getTime() <= now.getTime()) problems.push({ code: 'E_CERT_EXPIRED', message: `${c.certPath} (serial ${info.serial}) expired at ${info.notAfter.toISOString()}` });
  if (info.notBefore.getTime() > now.getTime()) problems.push({ code: 'E_CERT_NOT_YET_VALID', message: `${c.certPath} (serial ${info.serial}) is valid only from ${info.notBefore.toISOString()}` });
  return { problems, parsed: true };
}

/**
 * A CRL is installed only when it is signed by a CA of the bundle, current, and not from the
 * future: an expired or foreign CRL breaks every client-certificate login, and the handshake
 * proof (which presents no client certificate) would not notice.
 */
export function checkCrl(pem: string, caBundle: string, now: Date): Problem[] {
  try {
    const { thisUpdate, nextUpdate } = crlInfo(pem);
    if (!crlSignedBy(pem, caBundle)) return [{ code: 'E_CRL_SIGNATURE', message: 'the CRL is not signed by a CA of the cluster bundle: PostgreSQL would refuse every client certificate' }];
    if (nextUpdate !== null && nextUpdate.getTime() <= now.getTime()) {
      return [{ code: 'E_CRL_EXPIRED', message: `the CRL's nextUpdate ${nextUpdate.toISOString()} is past: PostgreSQL would refuse every client certificate` }];
    }
    if (thisUpdate.getTime() > now.getTime() + 5 * 60_000) return [{ code: 'E_CRL_NOT_YET_VALID', message: `the CRL's thisUpdate ${thisUpdate.toISOString()} is in the future` }];
    return [];
  } catch (e) {
    return [{ code: 'E_CRL_INVALID', message: `CRL: ${(e as Error).message}` }];
  }
}

/** One of the seed's verification queries, run by the agent, with its rows or why it could not run. */
export interface SeedCheck {
  name: string;
  query: string;
  ok: boolean;
  rows: Record<string, unknown>[];
  /** e.g. "bdr not installed" */
  note: string | null;
}

/** Seed 004's three verification queries, verbatim; the BDR one only where bdr.node_summary exists. */
export const PGD_CHECKS: { name: string; query: string; needs?: string }[] = [
  { name: 'replication over SSL', query: 'SELECT pid, ssl, version, cipher, bits\nFROM pg_stat_ssl\nJOIN pg_stat_replication USING (pid);' },
  { name: 'authentication methods in pg_hba.conf', query: "SELECT type, database, user_name, address, auth_method\nFROM pg_hba_file_rules\nWHERE auth_method IN ('cert', 'scram-sha-256');" },
  { name: 'BDR node states', query: 'SELECT node_name, peer_state_name, peer_target_state_name\nFROM bdr.node_summary;', needs: 'bdr.node_summary' },
];
