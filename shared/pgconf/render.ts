// Pure renderers: desired state in, file bytes out. No clock, no I/O; the same input renders
// the same bytes, so a restarted agent changes nothing and reloads nothing.
import { createHash } from 'node:crypto';
import type { HbaRule, HbaToken, IdentLine } from '../contract/schema.ts';
import { EscapeError, confName, confString, hbaName, identMapName, identSystemUser, passfileField } from './escape.ts';
import { parseCidr } from './net.ts';
import { CodedError } from '../contract/problem.ts';

export const BLOCK_BEGIN = '# BEGIN pgaccord managed block: do not edit, the pgaccord agent rewrites it';
export const BLOCK_END = '# END pgaccord managed block';
/** The ident map that lets the agent's OS user (postgres, or root) in over the local socket. */
export const LOCAL_MAP = 'pgaccord_local';

function token(t: HbaToken): string {
  return 'keyword' in t ? t.keyword : hbaName(t.name);
}

function hbaAddress(address: string | undefined, type: HbaRule['type']): string {
  if (type === 'local') {
    if (address !== undefined) throw new EscapeError('hba address', 'a local rule has no address');
    return '';
  }
  if (address === 'all') return 'all';
  if (address === undefined || parseCidr(address) === null || !address.includes('/')) {
    throw new EscapeError('hba address', `${JSON.stringify(address)} is not a CIDR`);
  }
  return address;
}

function optionText(options: Record<string, string> | undefined): string {
  if (!options) return '';
  return Object.keys(options)
    .sort()
    .map((k) => {
      if (!/^[a-z_]+$/.test(k)) throw new EscapeError('hba option', `bad option name ${JSON.stringify(k)}`);
      const v = options[k]!;
      if (k === 'map') return `map=${identMapName(v)}`;
      if (!/^[a-z0-9_-]+$/.test(v)) throw new EscapeError('hba option', `bad value for ${k}`);
      return `${k}=${v}`;
    })
    .join(' ');
}

/** One pg_hba.conf line. Columns are separated by single spaces so the output is stable. */
export function renderHbaLine(rule: HbaRule): string {
  const cols = [
    rule.type,
    rule.databases.map(token).join(','),
    rule.users.map(token).join(','),
    hbaAddress(rule.address, rule.type),
    rule.method,
    optionText(rule.options),
  ].filter((c) => c !== '');
  return cols.join(' ');
}

export interface HbaBlockInput {
  cluster: string;
  /** The database role the agent connects as over the local socket (normally postgres). */
  localRole: string;
  /** Managed inter-node rules, then the spec's operator rules, in order. */
  rules: HbaRule[];
  /** Roles that must not get in by any other path than the rules above. */
  managedRoles: string[];
}

/**
 * The managed pg_hba.conf block: anti-lockout prologue, the rules, then reject lines for the
 * managed roles so that an operator's broad rule below cannot let them in another way.
 */
export function renderHbaBlock(input: HbaBlockInput): string {
  const lines = [BLOCK_BEGIN, `# cluster ${input.cluster}`];
  lines.push('# anti-lockout: the agent itself, over the local socket');
  const local: HbaRule = { type: 'local', databases: [{ keyword: 'all' }], users: [{ name: input.localRole }], method: 'peer', options: { map: LOCAL_MAP } };
  lines.push(renderHbaLine(local));
  for (const rule of input.rules) {
    // PostgreSQL 15 joins a line ending in a backslash with the next one: a comment ending in
    // a backslash would swallow the rule below it (pg_hba_file_rules then simply has no row for it).
    if (rule.comment) lines.push(`# ${rule.comment.replace(/[\r\n\0]/g, ' ').replace(/\\+$/, '')}`);
    lines.push(renderHbaLine(rule));
  }
  if (input.managedRoles.length > 0) {
    lines.push('# managed roles get in only through the rules above');
    const users = [...input.managedRoles].sort().map((name) => ({ name }));
    lines.push(renderHbaLine({ type: 'host', databases: [{ keyword: 'all' }, { keyword: 'replication' }], users, address: 'all', method: 'reject' }));
  }
  lines.push(BLOCK_END);
  return `${lines.join('\n')}\n`;
}

export function renderIdentLine(line: IdentLine): string {
  return `${identMapName(line.map)} ${identSystemUser(line.systemUser)} ${hbaName(line.databaseUser)}`;
}

export interface IdentBlockInput {
  cluster: string;
  localRole: string;
  /** OS users allowed to act as localRole over the socket (the agent's user, and root). */
  localOsUsers: string[];
  lines: IdentLine[];
}

export function renderIdentBlock(input: IdentBlockInput): string {
  const lines = [BLOCK_BEGIN, `# cluster ${input.cluster}`];
  for (const osUser of [...new Set(input.localOsUsers)].sort()) {
    lines.push(renderIdentLine({ map: LOCAL_MAP, systemUser: osUser, databaseUser: input.localRole }));
  }
  for (const l of input.lines) lines.push(renderIdentLine(l));
  lines.push(BLOCK_END);
  return `${lines.join('\n')}\n`;
}

export class BlockError extends CodedError {
  constructor(message: string) {
    super('E_MANAGED_BLOCK', message);
  }
}

/**
 * Put the managed block at the top of a file, replacing the previous one. Every line outside
 * the block is the operator's and is kept byte for byte.
 */
export function withManagedBlock(existing: string, block: string): string {
  const { rest } = splitManagedBlock(existing);
  return block + rest;
}

/** The managed block (or null) and the operator's part of a file. */
export function splitManagedBlock(text: string): { block: string | null; rest: string } {
  const begin = text.indexOf(`${BLOCK_BEGIN}\n`);
  const endMarker = `${BLOCK_END}\n`;
  if (begin === -1) {
    if (text.includes(BLOCK_END)) throw new BlockError('managed block end marker without its begin marker');
    return { block: null, rest: text };
  }
  if (begin !== 0 && text[begin - 1] !== '\n') throw new BlockError('managed block begin marker is not at the start of a line');
  const end = text.indexOf(endMarker, begin);
  if (end === -1) throw new BlockError('managed block has no end marker: refusing to guess where the operator lines start');
  const block = text.slice(begin, end + endMarker.length);
  const rest = text.slice(0, begin) + text.slice(end + endMarker.length);
  if (rest.includes(BLOCK_BEGIN)) throw new BlockError('more than one managed block');
  return { block, rest };
}

export const CONFIG_HASH_SETTING = 'pgaccord.config_hash';

/** sha256 over everything that makes up the node's managed configuration. */
export function configHash(parts: Record<string, string>): string {
  const h = createHash('sha256');
  for (const key of Object.keys(parts).sort()) h.update(`${key}\0${parts[key]}\0`);
  return h.digest('hex').slice(0, 32);
}

/** The include file the agent owns. Settings sorted; the hash proves a reload took effect. */
export function renderSettings(settings: Record<string, string>, hash: string): string {
  const lines = ['# Managed by the pgaccord agent: do not edit, it is rewritten on every change.'];
  for (const name of Object.keys(settings).sort()) lines.push(`${confName(name)} = ${confString(settings[name]!)}`);
  lines.push(`${CONFIG_HASH_SETTING} = ${confString(hash)}`);
  return `${lines.join('\n')}\n`;
}

export interface PassfileEntry {
  host: string;
  port: number;
  database: string;
  user: string;
  password: string;
}

export function renderPassfile(entries: PassfileEntry[]): string {
  return entries
    .map((e) => {
      const database = e.database === '*' ? '*' : passfileField(e.database);
      return [passfileField(e.host), String(e.port), database, passfileField(e.user), passfileField(e.password)].join(':');
    })
    .map((l) => `${l}\n`)
    .join('');
}
