// Roles, with SQL, on a server that is not in recovery. Identifiers and literals go through the
// one escaper; passwords reach the server only as SCRAM verifiers, each checked well-formed
// before ALTER ROLE (a malformed one would be silently hashed as a plaintext password) and
// compared with pg_authid afterwards, inside the same transaction.
import type pg from 'pg';
import { sqlIdentifier, sqlLiteral } from '../../shared/pgconf/escape.ts';
import { isScramVerifier } from '../../shared/crypto/scram.ts';
import type { HbaRule, NodeDesired, RoleDesired } from '../../shared/contract/schema.ts';
import { PROFILES, type Profile, type ProfileRole } from '../../shared/pgconf/profiles.ts';
import { CodedError, type Problem } from '../../shared/contract/problem.ts';

/** Pure, before any SQL: every verifier must be one PostgreSQL stores as a verifier. */
export function checkVerifiers(roles: RoleDesired[]): Problem[] {
  return roles
    .filter((r) => r.verifier !== null && !isScramVerifier(r.verifier))
    .map((r) => ({ code: 'E_BAD_VERIFIER', message: `role ${r.name}: the password is not a well-formed SCRAM-SHA-256 verifier; refusing to send it (PostgreSQL would hash it as a plaintext password)` }));
}

/**
 * The profile's own role exactly as this agent's profile table defines it: trusted because the
 * agent's code says so, not because the desired state does.
 */
function profileRole(desired: NodeDesired, role: RoleDesired): ProfileRole | undefined {
  const own = (PROFILES[desired.profile] as Profile | undefined)?.roles.find((p) => p.name === role.name && (p.kinds === undefined || p.kinds.includes(desired.kind)));
  const same = own !== undefined && (own.external === true) === (role.external === true) && own.superuser === role.superuser && (own.password !== false || role.verifier === null);
  return same ? own : undefined;
}

/**
 * Pure: roles the agent refuses to create or alter, whoever sent the desired state: postgres,
 * the role it connects as and every superuser of the node (NOREPLICATION, PASSWORD NULL or a
 * verifier the coordinator knows would lock the node out or hand it over), and any role made
 * SUPERUSER. Exempt: a profile's own superuser (pg_auto_failover's replicator, which pg_rewind
 * needs) and its external roles (TimescaleDB's postgres, which only ever gets a verifier).
 */
export function checkProtectedRoles(desired: NodeDesired, agentRole: string, superusers: ReadonlySet<string>): Problem[] {
  const problems: Problem[] = [];
  for (const role of desired.roles) {
    const own = profileRole(desired, role);
    if (own !== undefined && (own.superuser === true || own.external === true)) continue;
    const why = role.name === 'postgres' ? 'is the bootstrap superuser'
      : role.name === agentRole ? 'is the database user the agent connects as'
      : superusers.has(role.name) ? 'is a superuser on this node'
      : role.superuser === true ? `would be made SUPERUSER, which the ${desired.profile} profile does not do`
      : null;
    if (why !== null) problems.push({ code: 'E_ROLE_PROTECTED', message: `role ${role.name} ${why}: the agent never creates or alters it; refused, nothing changed` });
  }
  return problems;
}

/** checkProtectedRoles with the node's superusers among the desired roles (before anything is written). */
export async function protectedRoleProblems(c: pg.Client, desired: NodeDesired, agentRole: string): Promise<Problem[]> {
  const { rows } = await c.query<{ rolname: string }>('SELECT rolname FROM pg_roles WHERE rolsuper AND rolname = ANY($1::text[])', [desired.roles.map((r) => r.name)]);
  return checkProtectedRoles(desired, agentRole, new Set(rows.map((r) => r.rolname)));
}

const PASSWORD_METHODS: HbaRule['method'][] = ['scram-sha-256', 'md5'];

/**
 * A role with no verifier keeps an existing password only when some desired rule still lets it
 * in with a password (an operator's scram rule); otherwise (say scram switched to cert) the old
 * password is removed so it cannot be used anywhere.
 */
export function keepsPassword(role: string, hba: HbaRule[]): boolean {
  return hba.some((r) => PASSWORD_METHODS.includes(r.method) && r.users.some((u) => ('keyword' in u ? u.keyword === 'all' : u.name === role)));
}

interface AuthRow {
  rolname: string;
  rolcanlogin: boolean;
  rolreplication: boolean;
  rolsuper: boolean;
  rolpassword: string | null;
}

export class RoleError extends CodedError {}

export interface RolesOutcome {
  changed: boolean;
  /** What was done, without any secret (for the log). */
  actions: string[];
}

async function memberships(c: pg.Client, role: string): Promise<Set<string>> {
  const { rows } = await c.query<{ rolname: string }>(
    'SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = $1',
    [role],
  );
  return new Set(rows.map((r) => r.rolname));
}

async function ensureRole(c: pg.Client, role: RoleDesired, keep: boolean, actions: string[]): Promise<void> {
  const id = sqlIdentifier(role.name);
  // SUPERUSER is named only for roles that say so (pg_auto_failover's replicator): others keep
  // what they have (NOSUPERUSER when we create them).
  const superAttr = role.superuser === undefined ? '' : role.superuser ? ' SUPERUSER' : ' NOSUPERUSER';
  const attrs = `${role.login ? 'LOGIN' : 'NOLOGIN'} ${role.replication ? 'REPLICATION' : 'NOREPLICATION'}${superAttr}`;
  const existing = await c.query<{ rolname: string }>('SELECT rolname FROM pg_roles WHERE rolname = ANY($1::text[])', [role.inRoles]);
  const joinable = existing.rows.map((r) => r.rolname).sort();
  const { rows } = await c.query<AuthRow>('SELECT rolname, rolcanlogin, rolreplication, rolsuper, rolpassword FROM pg_authid WHERE rolname = $1', [role.name]);
  const cur = rows[0];
  if (role.external === true) {
    // The system's own role (pg_autoctl's, initdb's postgres): only its verifier, if we hold one.
    if (cur && role.verifier !== null && cur.rolpassword !== role.verifier) {
      await c.query(`ALTER ROLE ${id} WITH PASSWORD ${sqlLiteral(role.verifier)}`);
      actions.push(`set verifier of ${role.name}`);
    }
    if (!cur || role.verifier === null) return;
  } else if (!cur) {
    const inRole = joinable.length > 0 ? ` IN ROLE ${joinable.map(sqlIdentifier).join(', ')}` : '';
    const password = role.verifier !== null ? ` PASSWORD ${sqlLiteral(role.verifier)}` : '';
    const limit = role.connectionLimit !== undefined ? ` CONNECTION LIMIT ${Math.trunc(role.connectionLimit)}` : '';
    await c.query(`CREATE ROLE ${id} WITH ${attrs}${limit}${password}${inRole}`);
    actions.push(`create role ${role.name}${superAttr ? ` ${superAttr.trim()}` : ''}${joinable.length ? ` in ${joinable.join(',')}` : ''}`);
  } else {
    if (cur.rolcanlogin !== role.login || cur.rolreplication !== role.replication || (role.superuser !== undefined && cur.rolsuper !== role.superuser)) {
      await c.query(`ALTER ROLE ${id} WITH ${attrs}`);
      actions.push(`alter role ${role.name} ${attrs}`);
    }
    if (role.verifier !== null && cur.rolpassword !== role.verifier) {
      await c.query(`ALTER ROLE ${id} WITH PASSWORD ${sqlLiteral(role.verifier)}`);
      actions.push(`set verifier of ${role.name}`);
    } else if (role.verifier === null && cur.rolpassword !== null && !keep) {
      await c.query(`ALTER ROLE ${id} WITH PASSWORD NULL`);
      actions.push(`remove password of ${role.name}`);
    }
    const member = await memberships(c, role.name);
    for (const g of joinable.filter((x) => !member.has(x))) {
      await c.query(`GRANT ${sqlIdentifier(g)} TO ${id}`);
      actions.push(`grant ${g} to ${role.name}`);
    }
  }
  if (role.verifier !== null) {
    const after = await c.query<{ rolpassword: string | null }>('SELECT rolpassword FROM pg_authid WHERE rolname = $1', [role.name]);
    if (after.rows[0]?.rolpassword !== role.verifier) {
      throw new RoleError('E_VERIFIER_MISMATCH', `role ${role.name}: pg_authid does not hold the verifier that was sent (PostgreSQL hashed it as a plaintext password?); rolled back`);
    }
  }
}

export interface StagedRoles extends RolesOutcome {
  /** Make the role changes permanent: only once the new configuration is proved. */
  commit(): Promise<void>;
  /** Undo them, with the files, when the apply fails after this point. */
  rollback(): Promise<void>;
}

/**
 * Make the desired roles exist with their attributes, memberships and verifiers, in one
 * transaction that is left open: the caller commits it only after the reload is proved, so a
 * failed apply rolls roles back together with the files (a scram -> cert switch must not leave
 * a role without its password when the cert state is rolled back). Roles not in the desired
 * state are never dropped.
 */
export async function stageRoles(c: pg.Client, desired: NodeDesired): Promise<StagedRoles> {
  const bad = checkVerifiers(desired.roles);
  if (bad.length > 0) throw new RoleError(bad[0]!.code, bad.map((p) => p.message).join('; '));
  const actions: string[] = [];
  const rollback = async () => {
    await c.query('ROLLBACK').catch(() => undefined);
  };
  await c.query('BEGIN');
  try {
    for (const role of desired.roles) await ensureRole(c, role, keepsPassword(role.name, desired.hba), actions);
  } catch (e) {
    await rollback();
    if (e instanceof RoleError) throw e;
    throw new RoleError('E_ROLE', `roles: ${(e as Error).message}`);
  }
  return {
    changed: actions.length > 0,
    actions,
    commit: async () => {
      await c.query('COMMIT');
    },
    rollback,
  };
}

/** No role changes (a standby: roles replicate from the primary). */
export const NO_ROLE_CHANGES: StagedRoles = { changed: false, actions: [], commit: async () => undefined, rollback: async () => undefined };
