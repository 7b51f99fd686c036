// Each cluster's CRL: issued with the cluster, after every revocation, and kept fresh; one
// number sequence per cluster, whichever coordinator issues.
import { verifiesAgainst } from '../../shared/crypto/x509.ts';
import type { Queryable } from '../store/store.ts';
import type { ClusterCas } from './cluster-cas.ts';
import { lockCluster, TASK_CRL_REFRESH, tryClusterTask, type ServiceContext } from './context.ts';

/** A not-due answer is trusted at most this long (a CRL issued elsewhere with a shorter lifetime). */
const DUE_RECHECK_MS = 60_000;

/**
 * Whether cluster $1's CRL is due at $2, and from when: less than half its validity left, or no
 * CRL at all (a cluster stored by a coordinator older than CRLs-from-creation). No row: no such
 * cluster. One query for the long-poll's read and the transaction's re-check, so they cannot
 * drift apart.
 */
const DUE_SQL = `SELECT (r.cluster IS NULL OR r.next_update - $2::timestamptz < (r.next_update - r.this_update) / 2) AS due,
                        r.this_update + (r.next_update - r.this_update) / 2 AS due_at
                   FROM clusters k LEFT JOIN cluster_crls r ON r.cluster = k.name WHERE k.name = $1`;
type DueRow = { due: boolean; due_at: Date | null };

export class Crls {
  readonly #ctx: ServiceContext;
  readonly #cas: ClusterCas;
  /**
   * Per cluster, until when its CRL is not due, as last read: trusted by the long-poll's passes
   * (recentRead; issue 13: the check was a store query on every pass of every long-poll). A CRL
   * is replaced only by a fresher one, so before the instant read nothing can be due; re-read at
   * least every DUE_RECHECK_MS. The timer's and the admin's refreshes always read.
   */
  readonly #notDueUntil = new Map<string, number>();

  constructor(ctx: ServiceContext, cas: ClusterCas) {
    this.#ctx = ctx;
    this.#cas = cas;
  }

  /**
   * Build and store a new CRL for the cluster: every revoked cluster certificate not yet expired,
   * a CRL number one above the last, nextUpdate = now + the CRL lifetime.
   */
  async issue(c: Queryable, cluster: string, now: Date): Promise<string> {
    const ca = await this.#cas.issuing(cluster, c);
    const other = await this.#cas.other(cluster, c);
    const revokedRows = (await c.query<{ serial: string; revoked_at: Date; pem: string }>(
      `SELECT serial, revoked_at, pem FROM certificates WHERE cluster = $1 AND issuer = 'cluster' AND revoked_at IS NOT NULL AND not_after > $2 ORDER BY serial`,
      [cluster, now],
    )).rows;
    // Each CA signs its own CRL, listing what it issued. During a rotation both are published in
    // one PEM file: with CRL checking on, OpenSSL (the server's ssl_crl_file, libpq's sslcrl)
    // refuses a certificate whose issuer has no CRL, so the new CA needs one from the start.
    const revoked = other ? revokedRows.filter((r) => !verifiesAgainst(r.pem, other.ca.certPem)) : revokedRows;
    const otherRevoked = other ? revokedRows.filter((r) => verifiesAgainst(r.pem, other.ca.certPem)) : [];
    // The number comes from the store, whichever coordinator issues: one UPSERT takes the next
    // one under the counter row's lock, held until this transaction ends, so concurrent issuers
    // (on any coordinator) queue there and each gets its own; a rollback gives it back.
    const number = Number((await c.query<{ last_number: string }>(
      `INSERT INTO crl_numbers (cluster, last_number) VALUES ($1, 1)
       ON CONFLICT (cluster) DO UPDATE SET last_number = crl_numbers.last_number + 1 RETURNING last_number`,
      [cluster],
    )).rows[0]!.last_number);
    const prev = (await c.query<{ this_update: Date }>(`SELECT this_update FROM cluster_crls WHERE cluster = $1`, [cluster])).rows[0];
    // thisUpdate a little in the past: a node whose clock lags must not see a CRL from the future;
    // and never before the last CRL's (another coordinator's clock may be ahead of this one's).
    const thisUpdate = new Date(Math.max(Math.floor(now.getTime() / 1000) * 1000 - 60_000, prev?.this_update.getTime() ?? 0));
    const nextUpdate = new Date(Math.floor(now.getTime() / 1000) * 1000 + this.#ctx.crlLifetimeSeconds * 1000);
    const entries = (rows: typeof revokedRows) => rows.map((r) => ({ serial: r.serial, revokedAt: r.revoked_at }));
    let pem = await this.#ctx.signing.issueCrl(ca, { revoked: entries(revoked), number, thisUpdate, nextUpdate });
    if (other) {
      const otherPem = await this.#ctx.signing.issueCrl(other.ca, { revoked: entries(otherRevoked), number, thisUpdate, nextUpdate });
      pem = `${pem.trimEnd()}\n${otherPem.trimEnd()}\n`;
    }
    await c.query(
      `INSERT INTO cluster_crls (cluster, pem, number, this_update, next_update) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (cluster) DO UPDATE SET pem = EXCLUDED.pem, number = EXCLUDED.number, this_update = EXCLUDED.this_update, next_update = EXCLUDED.next_update`,
      [cluster, pem, number, thisUpdate, nextUpdate],
    );
    this.#ctx.log.info({ cluster, number, revoked: revoked.length, nextUpdate }, 'CRL issued');
    return pem;
  }

  /** Revoke every live certificate of removed nodes (cluster leaves and agent identities). */
  async revokeNodes(c: Queryable, cluster: string, nodes: string[], now: Date): Promise<void> {
    const r = await c.query<{ serial: string; issuer: string }>(
      `UPDATE certificates SET revoked_at = $3 WHERE cluster = $1 AND node = ANY($2) AND revoked_at IS NULL AND not_after > $3 RETURNING serial, issuer`,
      [cluster, nodes, now],
    );
    this.#ctx.log.info({ cluster, nodes, revoked: r.rows.map((x) => x.serial) }, 'certificates of removed nodes revoked');
    if (r.rows.some((x) => x.issuer === 'cluster')) await this.issue(c, cluster, now);
  }

  /**
   * Re-issue the cluster's CRL when less than half of its validity is left (and bump the
   * generation so that every node installs it). Called on every desired-state poll and by the
   * maintenance timer; cheap when nothing is due. Returns true when it re-issued.
   */
  async refresh(cluster: string, opts: { recentRead?: boolean } = {}): Promise<boolean> {
    const ctx = this.#ctx;
    const now = ctx.now();
    if (opts.recentRead && now.getTime() < (this.#notDueUntil.get(cluster) ?? 0)) return false;
    const due = (await ctx.store.query<DueRow>(DUE_SQL, [cluster, now]))[0];
    if (!due) return false; // no such cluster
    if (!due.due) {
      this.#notDueUntil.set(cluster, Math.min(due.due_at!.getTime(), now.getTime() + DUE_RECHECK_MS));
      return false;
    }
    this.#notDueUntil.delete(cluster);
    const number = await ctx.change(cluster, async (c) => {
      // One coordinator refreshes: the others skip at once rather than queue behind it.
      if (!(await tryClusterTask(c, TASK_CRL_REFRESH, cluster))) return null;
      await lockCluster(c, cluster, 'update');
      if (!(await c.query<DueRow>(DUE_SQL, [cluster, now])).rows[0]?.due) return null; // another coordinator did it
      await this.issue(c, cluster, now);
      await ctx.bump(c, cluster, now);
      return (await c.query<{ number: string }>(`SELECT number FROM cluster_crls WHERE cluster = $1`, [cluster])).rows[0]!.number;
    });
    if (number === null) return false;
    ctx.log.info({ cluster, number: Number(number) }, 'CRL refreshed');
    return true;
  }

  /** Refresh every cluster's CRL that is due (the coordinator runs this on a timer). */
  async refreshAll(): Promise<void> {
    for (const r of await this.#ctx.store.query<{ cluster: string }>(`SELECT name AS cluster FROM clusters`)) {
      await this.refresh(r.cluster).catch((e) => this.#ctx.log.error({ cluster: r.cluster, err: e }, 'CRL refresh failed'));
    }
  }

  /** The cluster CRL (PEM), issued with the cluster and kept fresh. */
  async pem(cluster: string): Promise<string> {
    await this.#ctx.requireCluster(cluster);
    await this.refresh(cluster);
    return (await this.#ctx.store.query<{ pem: string }>(`SELECT pem FROM cluster_crls WHERE cluster = $1`, [cluster]))[0]!.pem;
  }
}
