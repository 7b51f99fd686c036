// Role passwords: one generator (made when a role first needs one, and at each rotation), sealed
// with the master key; the servers get SCRAM verifiers only; rotations switch at one instant.
import { randomBytes } from 'node:crypto';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import type { AgentStatus } from '../../shared/contract/status.ts';
import { scramVerifier } from '../../shared/crypto/scram.ts';
import { rolesNeedingPasswords, type CredentialSource, type RoleCredential } from '../cluster/compile.ts';
import { notFound } from '../errors.ts';
import type { SecretBox } from '../store/secrets.ts';
import type { Queryable } from '../store/store.ts';
import type { ServiceContext } from './context.ts';

/** A new password for a role of a cluster: sealed for the store, with its SCRAM verifier. */
function newPassword(box: SecretBox, cluster: string, role: string): { sealed: string; verifier: string } {
  const password = randomBytes(24).toString('base64url'); // 32 url-safe characters
  return { sealed: box.seal(password, `role-password:${cluster}/${role}`), verifier: scramVerifier(password, randomBytes(16)) };
}

export class Passwords {
  readonly #ctx: ServiceContext;
  /** Per cluster, the instant its last password rotation switches at (NodeDesired.passwordsAt), for that generation. In process. */
  readonly #passwordsAt = new Map<string, { generation: number; at: Date }>();
  /** Per cluster and node, how long the node's last apply took to stage and prove (its reported phases certs..prove), ms. */
  readonly #stagingMs = new Map<string, Map<string, number>>();

  constructor(ctx: ServiceContext) {
    this.#ctx = ctx;
  }

  /** A password for every role of the spec that needs one and has none yet (a stored spec's transaction). */
  async ensure(c: Queryable, spec: ClusterSpec, now: Date): Promise<void> {
    for (const role of rolesNeedingPasswords(spec)) {
      const { sealed, verifier } = newPassword(this.#ctx.box, spec.name, role);
      await c.query(
        `INSERT INTO role_credentials (cluster, role, password_sealed, verifier, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (cluster, role) DO NOTHING`,
        [spec.name, role, sealed, verifier, now],
      );
    }
  }

  /**
   * The cluster's role credentials as compile reads them: verifiers as stored, and each password
   * opened only when a node that connects as its role is compiled (the servers get verifiers
   * only). `fallback` stands in for a role that has none yet (plan); otherwise that throws.
   */
  async source(cluster: string, fallback?: RoleCredential): Promise<CredentialSource> {
    const rows = new Map((await this.#ctx.store.query<{ role: string; password_sealed: string; verifier: string }>(
      `SELECT role, password_sealed, verifier FROM role_credentials WHERE cluster = $1`,
      [cluster],
    )).map((r) => [r.role, r]));
    const opened = new Map<string, string>();
    const row = (role: string) => {
      const r = rows.get(role);
      if (!r && !fallback) throw new Error(`no credential for role ${role}`);
      return r;
    };
    return {
      verifier: (role) => row(role)?.verifier ?? fallback!.verifier,
      password: (role) => {
        const r = row(role);
        if (!r) return fallback!.password;
        let pw = opened.get(role);
        if (pw === undefined) opened.set(role, (pw = this.#ctx.box.open(r.password_sealed, `role-password:${cluster}/${role}`)));
        return pw;
      },
    };
  }

  /**
   * New passwords (and SCRAM verifiers) for the cluster's roles, or one role, in ONE new
   * generation: every agent's long-poll answers at once, and each agent writes the passfile and
   * alters the role (verifier) in the same apply. PostgreSQL keeps one password per role and libpq
   * reads only the first matching passfile line, so a short window is unavoidable: a client whose
   * passfile is updated before (or after) the server's ALTER ROLE fails until the other side has
   * applied too (measured in test/e2e/password-rotation.test.ts, docs/lifecycle.md). So the
   * generation names an instant a little ahead (passwordsAt: what the slowest node's last apply
   * took to stage and prove, with a margin), and each agent switches its passfile and commits its
   * verifiers then, after staging and proving the rest: both halves of every edge change together.
   */
  async rotate(cluster: string, role?: string): Promise<{ cluster: string; generation: number; roles: string[] }> {
    const ctx = this.#ctx;
    const row = await ctx.requireCluster(cluster);
    const all = rolesNeedingPasswords(row.spec);
    const roles = role === undefined ? all : all.filter((r) => r === role);
    if (roles.length === 0) {
      throw notFound(role === undefined
        ? `cluster "${cluster}" has no role with a password (auth ${row.spec.auth})`
        : `cluster "${cluster}" has no role "${role}" with a password (roles: ${all.join(', ') || 'none'})`);
    }
    const now = ctx.now();
    const generation = (await ctx.change(cluster, async (c) => {
      for (const r of roles) {
        const { sealed, verifier } = newPassword(ctx.box, cluster, r);
        await c.query(`UPDATE role_credentials SET password_sealed = $3, verifier = $4 WHERE cluster = $1 AND role = $2`, [cluster, r, sealed, verifier]);
      }
      const g = await ctx.bump(c, cluster, now);
      // Before the commit wakes the long-polls (NOTIFY): the first answer must carry the instant.
      this.#passwordsAt.set(cluster, { generation: g, at: new Date(Date.now() + this.#switchLeadMs(cluster)) });
      return g;
    }).catch((e: unknown) => {
      this.#passwordsAt.delete(cluster);
      throw e;
    }))!;
    ctx.log.warn({ cluster, roles, generation }, 'role passwords rotated');
    return { cluster, generation, roles };
  }

  /** The switch instant of the cluster's last rotation, when it is of `generation`. */
  switchAt(cluster: string, generation: number): Date | undefined {
    const rotation = this.#passwordsAt.get(cluster);
    return rotation?.generation === generation ? rotation.at : undefined;
  }

  /** A node's reported timings: how long its apply takes to stage and prove. */
  noteTimings(agent: { cluster: string; node: string }, timings: AgentStatus['timings']): void {
    if (!timings) return;
    const p = timings.phases;
    const staging = ['certs', 'render', 'install', 'validate', 'reload', 'prove'].reduce((sum, k) => sum + (p[k] ?? 0), 0);
    let m = this.#stagingMs.get(agent.cluster);
    if (!m) this.#stagingMs.set(agent.cluster, (m = new Map()));
    m.set(agent.node, staging);
  }

  forget(cluster: string): void {
    this.#passwordsAt.delete(cluster);
    this.#stagingMs.delete(cluster);
  }

  /**
   * How far ahead a rotation's switch instant is: 1.5 times the slowest node's last staging
   * (reported timings) plus 250 ms for the long-polls to answer, within 0.3..3 s; 1 s when no
   * node has reported timings.
   */
  #switchLeadMs(cluster: string): number {
    const m = this.#stagingMs.get(cluster);
    if (!m || m.size === 0) return 1000;
    return Math.round(Math.min(3000, Math.max(300, 1.5 * Math.max(...m.values()) + 250)));
  }
}
