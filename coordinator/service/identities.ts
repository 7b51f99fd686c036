// Join tokens, enrolment and agent identities: a token is spent once for the node's first
// identity; an identity renews itself; the one issuer of identity certificates.
import { createHash, randomBytes } from 'node:crypto';
import type { CsrResponse, EnrollResponse, JoinTokenPayload } from '../../shared/contract/api.ts';
import { encodeJoinToken, parseCoordinatorUrls, parseJoinToken } from '../../shared/contract/join-token.ts';
import { publicKeyId, type SubjectPublicKey } from '../../shared/crypto/csr.ts';
import { badRequest, conflict, gone, unauthorized } from '../errors.ts';
import { StoreBusyError } from '../store/store-hosts.ts';
import type { Queryable } from '../store/store.ts';
import { Coalescer, type BatchOutcome } from './coalesce.ts';
import { hasNode, lockCluster, nodeGone, type AgentPrincipal, type ServiceContext } from './context.ts';

export const DEFAULT_TOKEN_TTL_S = 3600;
export const AGENT_CN = 'pgaccord-agent';
export const IDENTITY_URI_PREFIX = 'pgaccord://agent/';

export function identityUri(cluster: string, node: string): string {
  return `${IDENTITY_URI_PREFIX}${cluster}/${node}`;
}

/** cluster/node from an identity URI SAN, or null when it is not exactly one. */
export function parseIdentityUri(uri: string): { cluster: string; node: string } | null {
  const m = /^pgaccord:\/\/agent\/([a-z0-9-]{1,63})\/([a-z0-9-]{1,63})$/.exec(uri);
  return m ? { cluster: m[1]!, node: m[2]! } : null;
}

const sha256 = (s: string) => createHash('sha256').update(s).digest();

/**
 * The identity `serial` of cluster/node ($1, $2, $3) when it may authenticate: the node's current
 * one, or its previous one until the current one has been used; not revoked.
 */
/**
 * Which of many (cluster, node, serial) are a valid agent identity ($1, $2, $3 arrays): the
 * current or the previous identity of the node, not revoked; the valid ones, by their index.
 * Per key, a lateral lookup by the agents' and certificates' keys (LIMIT 1: not pulled up into a
 * join the planner may hash): a plain join hashed every agent for a batch of 50 or more, a scan
 * of the whole fleet per batch (issue 13). `lock`: the agent's row FOR UPDATE.
 */
const validIdentitiesSql = (lock: boolean) => `SELECT k.i, v.current, v.previous
  FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k(cluster, node, serial, i)
  CROSS JOIN LATERAL (SELECT a.identity_serial = k.serial AS current, a.previous_serial AS previous
    FROM agents a JOIN certificates c ON c.serial = k.serial AND c.cluster = a.cluster AND c.node = a.node AND c.slot = 'identity' AND c.revoked_at IS NULL
    WHERE a.cluster = k.cluster AND a.node = k.node AND (a.identity_serial = k.serial OR a.previous_serial = k.serial)
    LIMIT 1${lock ? ' FOR UPDATE OF a' : ''}) v`;
export const VALID_IDENTITIES_SQL = validIdentitiesSql(false);
/**
 * last_contact of many nodes at once ($1, $2, $3 arrays, a node once: latestContacts), only those
 * whose cluster exists (node_status references it), the rows in a fixed order (two coordinators'
 * batches never wait for each other's rows); `returning` adds columns (", ...") of each row
 * written, which may name node_status.cluster and node_status.node: a desired request's trust
 * files and renewals come back with its contact (desired-state.ts).
 */
export function contactsSql(returning = ''): string {
  return `INSERT INTO node_status (cluster, node, last_contact)
  SELECT k.cluster, k.node, k.at FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS k(cluster, node, at) JOIN clusters ON clusters.name = k.cluster
  ORDER BY k.cluster, k.node
  ON CONFLICT (cluster, node) DO UPDATE SET last_contact = EXCLUDED.last_contact
  RETURNING cluster, node${returning}`;
}
const CONTACTS_SQL = contactsSql();

export type ContactKey = { cluster: string; node: string; at: Date };
export const contactId = (k: { cluster: string; node: string }): string => JSON.stringify([k.cluster, k.node]);

/** A batch's contacts, a node once at its latest instant (one statement may not update a row twice). */
export function latestContacts(keys: ContactKey[]): ContactKey[] {
  const latest = new Map<string, ContactKey>();
  for (const k of keys) {
    const id = contactId(k);
    const seen = latest.get(id);
    if (!seen || k.at > seen.at) latest.set(id, k);
  }
  return [...latest.values()];
}
const IDENTITY_INVALID = 'this agent identity is not (or no longer) valid: enroll again with a new join token';

/**
 * Inside a transaction that issues for an agent (after it took the cluster row FOR SHARE): an
 * identity revoked or retired since it authenticated the request (its revocation committed
 * first) is refused (401).
 */
export async function assertIdentityValid(c: Queryable, agent: AgentPrincipal, forUpdate = false): Promise<{ current: boolean }> {
  const sql = validIdentitiesSql(forUpdate);
  const valid = (await c.query<{ current: boolean }>(sql, [[agent.cluster], [agent.node], [agent.serial]])).rows[0];
  if (!valid) throw unauthorized(IDENTITY_INVALID);
  return valid;
}

type IdentityKey = { cluster: string; node: string; serial: string };

export class Identities {
  readonly #ctx: ServiceContext;
  /**
   * Agent requests arriving together share one identity read and one last_contact write: in a
   * renewal storm each CSR's two queries queued in the store pool, ~2,000 for 1,000 agents, and
   * every long-poll's own queries waited behind them (issue 13).
   */
  readonly #identities: Coalescer<IdentityKey, { current: boolean; previous: string | null } | null>;
  readonly #contacts: Coalescer<ContactKey, void>;

  constructor(ctx: ServiceContext) {
    this.#ctx = ctx;
    // One batch of each at a time (coalesce.ts); ten batches' callers waiting at most, then 503 at once.
    const opts = { full: () => new StoreBusyError('too many agent requests waiting for it') };
    this.#identities = new Coalescer(async (keys) => {
      const rows = await ctx.store.query<{ i: string; current: boolean; previous: string | null }>(
        VALID_IDENTITIES_SQL, [keys.map((k) => k.cluster), keys.map((k) => k.node), keys.map((k) => k.serial)]);
      const valid = new Map(rows.map((r) => [Number(r.i) - 1, { current: r.current, previous: r.previous }]));
      return keys.map((_, i) => ({ ok: true, value: valid.get(i) ?? null }));
    }, opts);
    this.#contacts = new Coalescer((keys) => this.#writeContacts(keys), opts);
  }

  async createToken(cluster: string, node: string, ttlSeconds = DEFAULT_TOKEN_TTL_S): Promise<{ token: string; expiresAt: string }> {
    const ctx = this.#ctx;
    ctx.requireSpecNode(await ctx.requireCluster(cluster), node);
    if (!Number.isFinite(ttlSeconds) || ttlSeconds < 60 || ttlSeconds > 30 * 86400) throw badRequest('E_TTL', 'ttl must be between 1m and 30d');
    const id = randomBytes(12).toString('base64url');
    const secret = randomBytes(32).toString('base64url');
    const now = ctx.now();
    const expiresAt = new Date(now.getTime() + ttlSeconds * 1000);
    await ctx.store.query(
      `INSERT INTO join_tokens (id, cluster, node, secret_sha256, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)`,
      [id, cluster, node, sha256(secret), now, expiresAt],
    );
    ctx.log.info({ cluster, node, tokenId: id, expiresAt }, 'join token created');
    // Several coordinators (--public-url A,B): the token lists them all; `url` stays the first,
    // so an agent that knows only `url` still enrols, and a one-coordinator token is unchanged.
    const urls = parseCoordinatorUrls([ctx.publicUrl]);
    const token = encodeJoinToken({ v: 1, url: urls[0]!, ...(urls.length > 1 ? { urls } : {}), cluster, node, id, secret, caFingerprint: ctx.caFingerprint });
    return { token, expiresAt: expiresAt.toISOString() };
  }

  /**
   * Join token + CSR → agent identity certificate. The token is consumed atomically, once, and
   * names the identity it was spent for: the same token with a CSR of that identity's key (the
   * agent's retry after a lost answer) is answered with that certificate again; any other key
   * is refused as a spent token.
   */
  async enroll(token: string, csrPem: string): Promise<EnrollResponse> {
    const ctx = this.#ctx;
    const parsed = parseJoinToken(token);
    if (!parsed.ok) throw unauthorized('not a pgaccord join token');
    const { payload } = parsed;
    const now = ctx.now();
    // The token first (one indexed lookup of its hash): no public-key work for a caller who
    // does not hold a live token. It is consumed below, atomically, once the CSR is good.
    const live = await ctx.store.query<{ spent: boolean }>(
      `SELECT used_at IS NOT NULL AS spent FROM join_tokens WHERE id = $1 AND secret_sha256 = $2 AND cluster = $3 AND node = $4 AND expires_at > $5`,
      [payload.id, sha256(payload.secret), payload.cluster, payload.node, now],
    );
    if (live.length === 0) throw await this.#refuseToken(payload, now);
    const publicKey = await ctx.csrPublicKey(csrPem); // verifies the CSR's self-signature: the sender holds the key
    const result = live[0]!.spent ? null : await ctx.store.tx(async (c) => {
      const used = await c.query<{ cluster: string; node: string }>(
        `UPDATE join_tokens SET used_at = $5
          WHERE id = $1 AND secret_sha256 = $2 AND cluster = $3 AND node = $4 AND used_at IS NULL AND expires_at > $5
          RETURNING cluster, node`,
        [payload.id, sha256(payload.secret), payload.cluster, payload.node, now],
      );
      if (used.rowCount !== 1) return null;
      const row = await ctx.cluster(payload.cluster, c);
      if (!row || !hasNode(row.spec, payload.node)) throw gone(`node "${payload.cluster}/${payload.node}" no longer exists`);
      const issued = await this.#issue(c, payload, publicKey, now);
      await c.query(`UPDATE join_tokens SET identity_serial = $2 WHERE id = $1`, [payload.id, issued.serial]);
      await c.query(
        `INSERT INTO agents (cluster, node, identity_serial, previous_serial, enrolled_at) VALUES ($1, $2, $3, NULL, $4)
         ON CONFLICT (cluster, node) DO UPDATE SET identity_serial = EXCLUDED.identity_serial, previous_serial = NULL, enrolled_at = EXCLUDED.enrolled_at`,
        [payload.cluster, payload.node, issued.serial, now],
      );
      return issued;
    });
    const pem = result?.pem ?? (await this.#answerAgain(payload, publicKey, now));
    if (!pem) throw await this.#refuseToken(payload, now);
    if (result) ctx.log.info({ cluster: payload.cluster, node: payload.node, serial: result.serial }, 'agent enrolled');
    return { cluster: payload.cluster, node: payload.node, certificate: pem, coordinatorCa: ctx.coordinatorCa.certPem };
  }

  /**
   * A spent token's certificate again, for a CSR of the same key: the agent whose first answer
   * was lost (its coordinator died after the commit) retries with the key it kept. Not a second
   * issuance: the certificate issued at the spend, which only the holder of that key can use and
   * which nobody else could have received. Only while it is still the node's current identity,
   * unrevoked and unexpired, so that an old key can never push out a renewed or newer identity.
   */
  async #answerAgain(p: JoinTokenPayload, publicKey: SubjectPublicKey, now: Date): Promise<string | null> {
    const row = (await this.#ctx.store.query<{ pem: string; serial: string }>(
      `SELECT c.pem, c.serial FROM join_tokens t
         JOIN agents a ON a.cluster = t.cluster AND a.node = t.node AND a.identity_serial = t.identity_serial
         JOIN certificates c ON c.serial = t.identity_serial AND c.slot = 'identity' AND c.revoked_at IS NULL AND c.not_after > $5
        WHERE t.id = $1 AND t.secret_sha256 = $2 AND t.cluster = $3 AND t.node = $4 AND t.used_at IS NOT NULL AND t.expires_at > $5`,
      [p.id, sha256(p.secret), p.cluster, p.node, now],
    ))[0];
    if (!row || publicKeyId(row.pem) !== publicKeyId(publicKey)) return null;
    const who = { cluster: p.cluster, node: p.node, serial: row.serial, tokenId: p.id };
    this.#ctx.log.info(who, 'agent enrolment retried with the same key: its certificate answered again');
    return row.pem;
  }

  /** A new identity for an agent, signed with its current identity (or its previous one, retrying with the same key). */
  async renew(agent: AgentPrincipal, publicKey: SubjectPublicKey): Promise<CsrResponse> {
    const ctx = this.#ctx;
    const now = ctx.now();
    await ctx.requireNode(agent); // the node must still exist
    const issued = await ctx.store.tx(async (c) => {
      // Serialised with revoke (which holds the cluster row FOR UPDATE): an identity revoked or
      // retired since it authenticated this request gets no successor.
      await lockCluster(c, agent.cluster, 'share');
      const valid = await assertIdentityValid(c, agent, true);
      // The previous identity renews only with the current one's key: the retry of an agent
      // whose answer was lost (it keeps its pending key), never a holder of the old identity
      // pushing out the one the agent has just installed.
      if (!valid.current) {
        const cur = (await c.query<{ pem: string }>(
          `SELECT c.pem FROM agents a JOIN certificates c ON c.serial = a.identity_serial WHERE a.cluster = $1 AND a.node = $2`,
          [agent.cluster, agent.node],
        )).rows[0];
        if (!cur || publicKeyId(cur.pem) !== publicKeyId(publicKey)) {
          throw conflict('E_IDENTITY_SUPERSEDED',
            'this identity has already been renewed: renew with the newer identity (or, retrying a renewal whose answer was lost, with the same key)');
        }
      }
      const issued = await this.#issue(c, agent, publicKey, now);
      // The identity used for this call stays valid until the new one is used (or renewed again).
      await c.query(
        `UPDATE agents SET previous_serial = $3, identity_serial = $4 WHERE cluster = $1 AND node = $2`,
        [agent.cluster, agent.node, agent.serial, issued.serial],
      );
      return issued;
    });
    ctx.log.info({ cluster: agent.cluster, node: agent.node, serial: issued.serial }, 'agent identity renewed');
    return { certificate: issued.pem, serial: issued.serial, notAfter: issued.notAfter.toISOString() };
  }

  /** The one issuer of agent identities: signed by the coordinator CA, named by URI, recorded. */
  async #issue(c: Queryable, who: { cluster: string; node: string }, publicKey: SubjectPublicKey, now: Date) {
    const ctx = this.#ctx;
    const issued = await ctx.signing.issue(ctx.coordinatorCa, {
      publicKey,
      commonName: AGENT_CN,
      uris: [identityUri(who.cluster, who.node)],
      usage: 'client',
      lifetimeSeconds: ctx.identityLifetimeSeconds,
      now,
    });
    await ctx.recordCert(c, { cluster: who.cluster, node: who.node, slot: 'identity', issuer: 'coordinator', commonName: AGENT_CN, ...issued });
    return issued;
  }

  async #refuseToken(p: JoinTokenPayload, now: Date): Promise<Error> {
    const reason = await this.#tokenRefusal(p, now);
    this.#ctx.log.warn({ tokenId: p.id, cluster: p.cluster, node: p.node, reason }, 'enrollment refused');
    return unauthorized(`join token refused: ${reason}`);
  }

  async #tokenRefusal(p: JoinTokenPayload, now: Date): Promise<string> {
    const row = (await this.#ctx.store.query<{ cluster: string; node: string; secret_sha256: Buffer; expires_at: Date; used_at: Date | null }>(
      `SELECT cluster, node, secret_sha256, expires_at, used_at FROM join_tokens WHERE id = $1`,
      [p.id],
    ))[0];
    // Say why only to someone who holds the real secret; otherwise nothing about the token.
    if (!row || !row.secret_sha256.equals(sha256(p.secret))) return 'unknown token';
    if (row.cluster !== p.cluster || row.node !== p.node) return 'the token is bound to another node';
    if (row.used_at) return 'the token has already been used';
    if (row.expires_at.getTime() <= now.getTime()) return 'the token has expired';
    return 'the token cannot be used';
  }

  /**
   * The agent behind a verified client certificate: the identity it names must be the node's
   * current (or, until the current one has been used, the previous) identity and not revoked.
   */
  async authenticate(identity: { cluster: string; node: string }, serial: string): Promise<AgentPrincipal> {
    const ctx = this.#ctx;
    const valid = await this.#identities.call({ cluster: identity.cluster, node: identity.node, serial });
    if (!valid) {
      // Removing a node revokes its identity; its agent must still learn that the node is gone
      // (410, it stops) rather than retry forever with an identity it cannot renew.
      const row = await ctx.cluster(identity.cluster);
      const known = await ctx.store.query(
        `SELECT 1 FROM certificates WHERE serial = $1 AND cluster = $2 AND node = $3 AND slot = 'identity'`,
        [serial, identity.cluster, identity.node],
      );
      if (known.length > 0 && (!row || !hasNode(row.spec, identity.node))) {
        throw nodeGone(identity.cluster, identity.node);
      }
      throw unauthorized(IDENTITY_INVALID);
    }
    // The new identity has been used, so the agent has it: the one before it stops working.
    if (valid.current && valid.previous !== null) {
      const r = await ctx.store.query<{ node: string }>(
        `UPDATE agents SET previous_serial = NULL WHERE cluster = $1 AND node = $2 AND identity_serial = $3 AND previous_serial IS NOT NULL RETURNING node`,
        [identity.cluster, identity.node, serial],
      );
      const retired = valid.previous;
      if (r.length > 0) {
        ctx.log.info({ cluster: identity.cluster, node: identity.node, serial, retired }, 'agent used its new identity: the previous one no longer authenticates');
      }
    }
    return { ...identity, serial };
  }

  /** An authenticated agent request that is going to be served (not one refused by the rate limit): the node is in contact. */
  recordContact(agent: AgentPrincipal): Promise<void> {
    return this.#contacts.call({ cluster: agent.cluster, node: agent.node, at: this.#ctx.now() });
  }

  /**
   * One write for a batch of contacts: a node once, at its latest instant, the rows in a fixed
   * order (two coordinators' batches never wait for each other's rows). A node whose cluster is
   * gone fails alone.
   */
  async #writeContacts(keys: ContactKey[]): Promise<BatchOutcome<void>> {
    const rows = latestContacts(keys);
    const written = new Set((await this.#ctx.store.query<{ cluster: string; node: string }>(
      CONTACTS_SQL, [rows.map((k) => k.cluster), rows.map((k) => k.node), rows.map((k) => k.at)],
    )).map(contactId));
    return keys.map((k) => (written.has(contactId(k))
      ? { ok: true, value: undefined }
      : { ok: false, error: nodeGone(k.cluster, k.node) }));
  }
}
