// Cluster certificates: signing a node's CSR for one of its slots, revocation (with a new CRL and
// generation), forced renewal, and the admin's list.
import type { CsrResponse } from '../../shared/contract/api.ts';
import { normaliseSerial } from '../../shared/crypto/crl.ts';
import { publicKeyId, type SubjectPublicKey } from '../../shared/crypto/csr.ts';
import { certificateSlots, certLifetimeSeconds, indexSpec } from '../cluster/compile.ts';
import { daysLeft, expiryLevel } from '../cluster/lifecycle.ts';
import { badRequest, conflict, notFound } from '../errors.ts';
import type { ClusterCas } from './cluster-cas.ts';
import { lockCluster, type AgentPrincipal, type ServiceContext } from './context.ts';
import type { Crls } from './crls.ts';
import { Gate } from './gate.ts';
import { assertIdentityValid } from './identities.ts';
import type { SigningPool } from '../ca/signing-pool.ts';

/** Fewer than half the store's connections (store.ts opens 10). */
const MAX_CSR_TRANSACTIONS = 4;

/**
 * The gate of CSRs' store work: a few per signing thread. Its waiters count against the signing
 * pool's maxQueue with the pool's jobs: one bound on the requests a storm leaves waiting,
 * wherever they wait (a CSR check, the gate, a signature), before E_SIGNING_BUSY.
 */
export function csrGate(signing: SigningPool): Gate {
  return new Gate(Math.min(2 * signing.size, MAX_CSR_TRANSACTIONS), signing);
}

export interface Revocation {
  cluster: string;
  serial: string;
  revokedAt: string;
  generation: number;
  alreadyRevoked: boolean;
  sameKey: string[];
}

interface CertificateRow {
  serial: string;
  node: string;
  slot: string;
  common_name: string;
  not_before: Date;
  not_after: Date;
  revoked_at: Date | null;
  renew_requested_at: Date | null;
}

export class Certificates {
  readonly #ctx: ServiceContext;
  readonly #cas: ClusterCas;
  readonly #crls: Crls;
  /**
   * CSRs in their store work at once: a few per signing thread, at most half the store's
   * connections. In a renewal storm every CSR took a connection for its transaction (and its
   * reads before it), and a long-poll or status report beside it waited for a connection behind
   * them all, at each of its queries (issue 13). The others wait here, holding nothing.
   */
  readonly #gate: Gate;

  constructor(ctx: ServiceContext, cas: ClusterCas, crls: Crls) {
    this.#ctx = ctx;
    this.#cas = cas;
    this.#crls = crls;
    this.#gate = csrGate(ctx.signing);
  }

  /** A certificate of the cluster CA for one of the node's slots, never for a key whose certificate was revoked. */
  sign(agent: AgentPrincipal, slot: string, publicKey: SubjectPublicKey): Promise<CsrResponse> {
    return this.#gate.run(() => this.#sign(agent, slot, publicKey));
  }

  async #sign(agent: AgentPrincipal, slot: string, publicKey: SubjectPublicKey): Promise<CsrResponse> {
    const ctx = this.#ctx;
    const now = ctx.now();
    const row = await ctx.requireNode(agent);
    // The node's slots follow from the spec alone: nothing is compiled to check a CSR.
    const slots = certificateSlots(indexSpec(row.spec), agent.node);
    const s = slots.find((c) => c.id === slot);
    if (!s) {
      const known = slots.map((c) => c.id).join(', ') || 'none';
      throw badRequest('E_SLOT', `node "${agent.node}" has no certificate slot "${slot}" in generation ${row.generation} (slots: ${known})`);
    }
    const ca = await this.#cas.issuing(agent.cluster);
    const keyId = publicKeyId(publicKey);
    const issued = await ctx.store.tx(async (c) => {
      // Shared lock on the cluster row: a revocation (FOR UPDATE) waits for this issue, or this
      // issue sees its result. A key whose certificate was revoked is never certified again.
      await lockCluster(c, agent.cluster, 'share');
      // Under that lock, as for an identity: an identity revoked since it authenticated this
      // request (its revocation committed first) gets no certificate.
      await assertIdentityValid(c, agent);
      const revoked = (await c.query<{ serial: string; pem: string }>(
        `SELECT serial, pem FROM certificates WHERE cluster = $1 AND node = $2 AND issuer = 'cluster' AND revoked_at IS NOT NULL`,
        [agent.cluster, agent.node],
      )).rows;
      const hit = revoked.find((r) => publicKeyId(r.pem) === keyId);
      if (hit) throw conflict('E_KEY_REVOKED', `the key in this CSR belongs to revoked certificate ${hit.serial}: make a new key`);
      const { commonName, dnsNames, ipAddresses, usage } = s;
      const cert = await ctx.signing.issue(ca, { publicKey, commonName, dnsNames, ipAddresses, usage, lifetimeSeconds: certLifetimeSeconds(row.spec), now });
      await ctx.recordCert(c, { cluster: agent.cluster, node: agent.node, slot, issuer: 'cluster', commonName, ...cert });
      return cert;
    });
    ctx.log.info({ cluster: agent.cluster, node: agent.node, slot, serial: issued.serial, notAfter: issued.notAfter }, 'certificate issued');
    return { certificate: issued.pem, serial: issued.serial, notAfter: issued.notAfter.toISOString() };
  }

  /**
   * Revoke one certificate. A cluster certificate goes into a new CRL and the generation moves
   * on, so every node installs it at once; the node that held it gets a new pair (its agent
   * stops using a revoked one) and every agent ends the sessions it authenticated. An agent
   * identity stops authenticating at once.
   */
  async revoke(cluster: string, serialText: string): Promise<Revocation> {
    const ctx = this.#ctx;
    await ctx.requireCluster(cluster);
    const serial = normaliseSerial(serialText);
    const now = ctx.now();
    const out = (await ctx.change(cluster, async (c) => {
      // The cluster row first: it serialises revocations with each other and with signCsr (which
      // holds it FOR SHARE), so a certificate for this key cannot be issued while it is revoked.
      const locked = (await c.query<{ generation: number }>(`SELECT generation FROM clusters WHERE name = $1 FOR UPDATE`, [cluster])).rows[0];
      if (!locked) throw notFound(`no cluster "${cluster}"`); // deleted since the look-up above
      const gen = locked.generation;
      const row = (await c.query<{ issuer: string; node: string; pem: string; revoked_at: Date | null }>(
        `SELECT issuer, node, pem, revoked_at FROM certificates WHERE cluster = $1 AND serial = $2 FOR UPDATE`,
        [cluster, serial],
      )).rows[0];
      if (!row) throw notFound(`cluster "${cluster}" has no certificate with serial ${serial}`);
      if (row.revoked_at) return { revokedAt: row.revoked_at, generation: gen, alreadyRevoked: true, sameKey: [] };
      // Agents renew fixed-name client certificates for the same key: revoking one certificate
      // revokes the key, so every live certificate of that node that carries it goes too.
      const keyId = publicKeyId(row.pem);
      const live = (await c.query<{ serial: string; pem: string }>(
        `SELECT serial, pem FROM certificates WHERE cluster = $1 AND node = $2 AND issuer = $3 AND serial <> $4 AND revoked_at IS NULL AND not_after > $5`,
        [cluster, row.node, row.issuer, serial, now],
      )).rows;
      const sameKey = live.filter((x) => publicKeyId(x.pem) === keyId).map((x) => x.serial);
      // An agent identity: every live identity of the node goes with it. The one before a renewal
      // (or its successor) would otherwise go on authenticating and renew itself.
      const identities = row.issuer === 'coordinator' ? live.map((x) => x.serial).filter((x) => !sameKey.includes(x)) : [];
      if (identities.length > 0) {
        ctx.log.warn({ cluster, node: row.node, serial, identities }, 'agent identity revoked: every live identity of the node goes with it');
      }
      await c.query(`UPDATE certificates SET revoked_at = $3 WHERE cluster = $1 AND serial = ANY($2)`, [cluster, [serial, ...sameKey, ...identities], now]);
      let generation = gen;
      if (row.issuer === 'cluster') {
        await this.#crls.issue(c, cluster, now);
        generation = await ctx.bump(c, cluster, now);
      }
      return { revokedAt: now, generation, alreadyRevoked: false, sameKey };
    }))!;
    ctx.log.warn({ cluster, serial, sameKey: out.sameKey, generation: out.generation }, 'certificate revoked');
    return { cluster, serial, revokedAt: out.revokedAt.toISOString(), generation: out.generation, alreadyRevoked: out.alreadyRevoked, sameKey: out.sameKey };
  }

  /**
   * Ask for new certificates before their time: one serial, or every live cluster certificate of
   * a node (or of the cluster). The serials go into the nodes' desired state (renewSerials) with
   * a new generation; the agent re-keys and replaces those pairs, the old ones stay valid.
   */
  async requestRenewal(cluster: string, target: { serial?: string; node?: string }): Promise<{ cluster: string; generation: number; serials: string[] }> {
    const ctx = this.#ctx;
    const row = await ctx.requireCluster(cluster);
    if (target.node !== undefined) ctx.requireSpecNode(row, target.node);
    const now = ctx.now();
    const out = (await ctx.change(cluster, async (c) => {
      const params: unknown[] = [cluster, now];
      let where = `cluster = $1 AND issuer = 'cluster' AND revoked_at IS NULL AND not_after > $2`;
      if (target.serial !== undefined) {
        params.push(normaliseSerial(target.serial));
        where += ` AND serial = $${params.length}`;
      }
      if (target.node !== undefined) {
        params.push(target.node);
        where += ` AND node = $${params.length}`;
      }
      const r = await c.query<{ serial: string }>(`UPDATE certificates SET renew_requested_at = $2 WHERE ${where} RETURNING serial`, params);
      if (r.rowCount === 0) {
        throw notFound(`no live cluster certificate matches${target.serial ? ` serial ${target.serial}` : ''}${target.node ? ` on node ${target.node}` : ''}`);
      }
      const generation = await ctx.bump(c, cluster, now);
      return { generation, serials: r.rows.map((x) => x.serial).sort() };
    }))!;
    ctx.log.info({ cluster, ...out }, 'renewal requested');
    return { cluster, ...out };
  }

  /** Every certificate of a cluster, with which one of each node and slot is current. */
  async list(name: string) {
    const ctx = this.#ctx;
    await ctx.requireCluster(name);
    const rows = await ctx.store.query<CertificateRow>(
      `SELECT serial, node, slot, common_name, not_before, not_after, revoked_at, renew_requested_at FROM certificates
        WHERE cluster = $1 ORDER BY node, slot, not_before, not_after`,
      [name],
    );
    const now = ctx.now().getTime();
    // The current certificate of a node and slot: the last issued one that is neither revoked nor expired.
    const current = new Map<string, string>();
    for (const r of rows) if (!r.revoked_at && r.not_after.getTime() > now) current.set(`${r.node}/${r.slot}`, r.serial);
    return {
      cluster: name,
      certificates: rows.map((r) => ({
        serial: r.serial,
        node: r.node,
        slot: r.slot,
        commonName: r.common_name,
        notBefore: r.not_before.toISOString(),
        notAfter: r.not_after.toISOString(),
        daysLeft: daysLeft(r.not_after, now),
        revoked: r.revoked_at !== null,
        level: expiryLevel({ notBefore: r.not_before, notAfter: r.not_after }, now),
        current: current.get(`${r.node}/${r.slot}`) === r.serial,
        renewRequested: r.renew_requested_at !== null,
      })),
    };
  }
}
