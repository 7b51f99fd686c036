// Validation of a cluster spec: structure from the schema, then the rules a schema cannot say.
// A spec is accepted whole or refused whole, with every problem named by its field path.
import { Value } from '@sinclair/typebox/value';
import { parse as parseYaml } from 'yaml';
import { ClusterSpec } from '../../shared/contract/schema.ts';
import { parseDuration } from './duration.ts';
import { isHostname, isIP, parseCidr } from '../../shared/pgconf/net.ts';
import { PROFILES } from '../../shared/pgconf/profiles.ts';

export interface FieldError {
  field: string;
  message: string;
}

export type SpecResult = { ok: true; spec: ClusterSpec } | { ok: false; errors: FieldError[] };

export const DEFAULT_CERT_LIFETIME = '90d';
export const MIN_CERT_LIFETIME_S = 60;
export const MAX_CERT_LIFETIME_S = 20 * 365 * 86400;

/** Names PostgreSQL reads as something other than a role, or reserves. */
const RESERVED_ROLES = new Set(['all', 'public', 'none', 'replication', 'sameuser', 'samerole', 'samegroup', 'current_user', 'current_role', 'session_user', 'user']);
const HBA_DATABASE_KEYWORDS = new Set(['all', 'replication', 'sameuser', 'samerole']);
const HBA_USER_KEYWORDS = new Set(['all']);
const HBA_NAME = /^[a-zA-Z_][a-zA-Z0-9_]{0,62}$/;
/**
 * The bootstrap superuser, which the agent itself connects as: managing it would make the agent
 * ALTER its own login (NOREPLICATION, PASSWORD NULL under cert). Refused in every profile.
 */
const BOOTSTRAP_SUPERUSER = 'postgres';
/**
 * An IPv6 zone ID (fe80::1%eth0) is accepted by isIP, but pg_hba.conf and a certificate SAN
 * cannot carry it: the line and the SAN would name different addresses. Refused everywhere.
 */
const ZONE_ID = 'has an IPv6 zone ID (%...): zone IDs cannot be written in pg_hba.conf or a certificate SAN; give the address without it';

function fieldOf(instancePath: string): string {
  const parts = instancePath.split('/').slice(1);
  return parts.reduce((acc, p) => (/^\d+$/.test(p) ? `${acc}[${p}]` : acc ? `${acc}.${p}` : p), '') || '(document)';
}

/** Parse YAML or JSON text into a value; syntax errors become a FieldError. */
export function parseSpecText(text: string): { ok: true; value: unknown } | { ok: false; errors: FieldError[] } {
  try {
    return { ok: true, value: parseYaml(text, { uniqueKeys: true, maxAliasCount: 0 }) };
  } catch (e) {
    return { ok: false, errors: [{ field: '(document)', message: `not valid YAML or JSON: ${(e as Error).message.split('\n')[0]}` }] };
  }
}

export function validateSpec(input: unknown): SpecResult {
  const structural = [...Value.Errors(ClusterSpec, input)];
  if (structural.length > 0) {
    const seen = new Set<string>();
    const errors: FieldError[] = [];
    for (const e of structural) {
      const field = fieldOf(e.path);
      const message = e.schema && 'pattern' in e.schema && typeof e.value === 'string'
        ? `${JSON.stringify(e.value)} does not match ${e.schema.pattern}`
        : e.message.toLowerCase();
      const key = `${field}: ${message}`;
      if (!seen.has(key)) {
        seen.add(key);
        errors.push({ field, message });
      }
    }
    // Unknown properties are reported by name, not only by their parent.
    return { ok: false, errors: errors.slice(0, 50) };
  }
  const spec = input as ClusterSpec;
  const errors = semanticErrors(spec);
  return errors.length > 0 ? { ok: false, errors } : { ok: true, spec };
}

function semanticErrors(spec: ClusterSpec): FieldError[] {
  const errors: FieldError[] = [];
  const add = (field: string, message: string) => errors.push({ field, message });
  const profile = PROFILES[spec.profile];

  if (spec.auth === 'cert' && spec.tls.sslmode !== 'verify-ca' && spec.tls.sslmode !== 'verify-full') {
    add('tls.sslmode', `auth "cert" needs sslmode verify-ca or verify-full, not "${spec.tls.sslmode}"`);
  }
  const lifetime = spec.tls.certLifetime ?? DEFAULT_CERT_LIFETIME;
  const seconds = parseDuration(lifetime);
  if (seconds === null) add('tls.certLifetime', `"${lifetime}" is not a duration (examples: 90d, 12h, 2m, 1y)`);
  else if (seconds < MIN_CERT_LIFETIME_S || seconds > MAX_CERT_LIFETIME_S) add('tls.certLifetime', `must be between 1m and 20y`);

  const names = new Set<string>();
  const endpoints = new Set<string>();
  const kindCount: Record<string, number> = {};
  spec.nodes.forEach((n, i) => {
    const at = `nodes[${i}]`;
    if (names.has(n.name)) add(`${at}.name`, `duplicate node name "${n.name}"`);
    names.add(n.name);
    if (!profile.kinds.includes(n.kind)) add(`${at}.kind`, `"${n.kind}" is not a node kind of profile ${spec.profile} (${profile.kinds.join(', ')})`);
    kindCount[n.kind] = (kindCount[n.kind] ?? 0) + 1;
    if (n.host.includes('%')) add(`${at}.host`, `"${n.host}" ${ZONE_ID}`);
    else if (!isIP(n.host) && !isHostname(n.host)) add(`${at}.host`, `"${n.host}" is neither a hostname nor an IP address`);
    if (n.address?.includes('%')) add(`${at}.address`, `"${n.address}" ${ZONE_ID}`);
    else if (n.address !== undefined && !isIP(n.address)) add(`${at}.address`, `"${n.address}" is not an IP address`);
    if (n.address === undefined && !isIP(n.host) && !n.host.includes('%')) add(`${at}.address`, `required when host "${n.host}" is not an IP address`);
    const endpoint = `${n.host}:${n.port ?? 5432}`;
    if (endpoints.has(endpoint)) add(`${at}.port`, `${endpoint} is used by another node`);
    endpoints.add(endpoint);
  });
  for (const [kind, [min, max]] of Object.entries(profile.kindCounts)) {
    const count = kindCount[kind] ?? 0;
    if (count < min || count > max) add('nodes', `profile ${spec.profile} needs ${min === max ? min : `${min} to ${max}`} node(s) of kind "${kind}", got ${count}`);
  }

  const roleNames = new Set(profile.roles.map((r) => r.name));
  (spec.roles ?? []).forEach((r, i) => {
    if (r.name === BOOTSTRAP_SUPERUSER) add(`roles[${i}].name`, `"${r.name}" is the bootstrap superuser the agent connects as: pgaccord does not manage it`);
    else if (RESERVED_ROLES.has(r.name) || r.name.startsWith('pg_')) add(`roles[${i}].name`, `"${r.name}" is reserved by PostgreSQL`);
    else if (roleNames.has(r.name)) add(`roles[${i}].name`, `duplicate or profile-owned role "${r.name}"`);
    roleNames.add(r.name);
  });
  if (spec.profile === 'timescaledb-multinode' && (spec.roles ?? []).length === 0) add('roles', 'timescaledb-multinode needs at least one role (the users the access node connects as)');

  (spec.hba ?? []).forEach((rule, i) => {
    const at = `hba[${i}]`;
    checkHbaNames(`${at}.database`, rule.database, HBA_DATABASE_KEYWORDS, add);
    checkHbaNames(`${at}.user`, rule.user, HBA_USER_KEYWORDS, add);
    if (rule.type === 'local') {
      if (rule.address !== undefined) add(`${at}.address`, 'a local rule has no address');
      if (rule.method === 'cert') add(`${at}.method`, 'cert is not possible on a local rule');
    } else {
      if (rule.address === undefined) add(`${at}.address`, `required for type ${rule.type}`);
      else if (rule.address.includes('%')) add(`${at}.address`, `"${rule.address}" ${ZONE_ID}`);
      else if (parseCidr(rule.address) === null) add(`${at}.address`, `"${rule.address}" is not an IP address or CIDR`);
      if (rule.method === 'cert' && rule.type !== 'hostssl') add(`${at}.method`, 'cert needs type hostssl');
      if (rule.method === 'peer') add(`${at}.method`, 'peer is only for local rules');
    }
  });
  return errors;
}

function checkHbaNames(field: string, value: string | string[], keywords: Set<string>, add: (f: string, m: string) => void): void {
  const list = Array.isArray(value) ? value : [value];
  list.forEach((name, j) => {
    const f = Array.isArray(value) ? `${field}[${j}]` : field;
    if (keywords.has(name)) return;
    if (!HBA_NAME.test(name)) add(f, `${JSON.stringify(name)} is not a plain name (letters, digits, _; no quotes, commas, #, +, @ or spaces) or one of: ${[...keywords].join(', ')}`);
  });
}
