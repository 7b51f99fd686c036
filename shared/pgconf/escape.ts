// The one escaper. Every identifier or value that reaches pg_hba.conf, pg_ident.conf, a
// passfile, postgresql.conf, a libpq connection string or SQL goes through a function here.
// Values that cannot be represented safely are refused with an error, never mangled.
import { CodedError } from '../contract/problem.ts';

/** PostgreSQL silently truncates identifiers to NAMEDATALEN-1 bytes: refuse instead. */
export const MAX_IDENTIFIER_BYTES = 63;

export class EscapeError extends CodedError {
  constructor(what: string, reason: string) {
    super('E_UNSAFE_VALUE', `${what}: ${reason}`);
  }
}

const LINE_BREAKS = /[\r\n\0]/;

function refuseLineBreaks(what: string, value: string): void {
  if (LINE_BREAKS.test(value)) throw new EscapeError(what, 'contains a line break or NUL byte');
}

function refuseLongIdentifier(what: string, value: string): void {
  if (value.length === 0) throw new EscapeError(what, 'is empty');
  if (Buffer.byteLength(value, 'utf8') > MAX_IDENTIFIER_BYTES) {
    throw new EscapeError(what, `is longer than ${MAX_IDENTIFIER_BYTES} bytes`);
  }
}

/**
 * A name (role or database) as one pg_hba.conf / pg_ident.conf token that can only mean itself.
 * Always double-quoted: quoting disables the keywords (all, sameuser, samerole, replication),
 * group membership (+), file inclusion (@), list splitting (,) and comments (#). A literal
 * double quote is written twice. Line breaks cannot be represented in these files at all.
 */
export function hbaName(name: string): string {
  refuseLineBreaks('name', name);
  refuseLongIdentifier('name', name);
  return `"${name.replace(/"/g, '""')}"`;
}

/**
 * The system-user column of pg_ident.conf. A leading slash would make it a regular expression
 * (PostgreSQL 15 decides that before looking at quotes), so it is refused.
 */
export function identSystemUser(name: string): string {
  if (name.startsWith('/')) throw new EscapeError('ident system user', 'starts with "/" (regular expression)');
  return hbaName(name);
}

/** The map-name column of pg_ident.conf and the map= option of pg_hba.conf. */
export function identMapName(name: string): string {
  if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new EscapeError('ident map name', 'must match [a-z_][a-z0-9_]*');
  return name;
}

/** One field of a ~/.pgpass line: backslash and colon are backslash-escaped. */
export function passfileField(value: string): string {
  refuseLineBreaks('passfile field', value);
  if (value.length === 0) throw new EscapeError('passfile field', 'is empty');
  return value.replace(/[\\:]/g, (c) => `\\${c}`);
}

/** A SQL identifier, always quoted (never concatenated raw into a statement). */
export function sqlIdentifier(name: string): string {
  if (name.includes('\0')) throw new EscapeError('identifier', 'contains a NUL byte');
  refuseLongIdentifier('identifier', name);
  return `"${name.replace(/"/g, '""')}"`;
}

/** A SQL string literal (standard_conforming_strings on: only the quote needs doubling). */
export function sqlLiteral(value: string): string {
  if (value.includes('\0')) throw new EscapeError('literal', 'contains a NUL byte');
  return `'${value.replace(/'/g, "''")}'`;
}

/** A postgresql.conf value: a single-quoted string; line breaks cannot be represented. */
export function confString(value: string): string {
  refuseLineBreaks('setting value', value);
  return `'${value.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

/** A postgresql.conf parameter name (custom ones need a dot, e.g. pgaccord.config_hash). */
export function confName(name: string): string {
  if (!/^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$/.test(name)) {
    throw new EscapeError('setting name', `"${name}" is not a valid parameter name`);
  }
  return name;
}

/** One keyword=value pair of a libpq connection string. */
export function conninfoValue(value: string): string {
  if (value.includes('\0')) throw new EscapeError('connection string value', 'contains a NUL byte');
  if (value !== '' && /^[^\s'\\=]+$/.test(value)) return value;
  return `'${value.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

export function conninfo(params: Record<string, string | number | undefined>): string {
  return Object.entries(params)
    .filter((e): e is [string, string | number] => e[1] !== undefined && e[1] !== '')
    .map(([k, v]) => `${k}=${conninfoValue(String(v))}`)
    .join(' ');
}
