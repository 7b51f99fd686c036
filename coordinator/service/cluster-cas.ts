// Each cluster's CA (and, during a rotation, the other one) and the trust files every node gets.
import { CertificateAuthority } from '../ca/ca.ts';
import { notFound } from '../errors.ts';
import type { Queryable } from '../store/store.ts';
import type { ServiceContext } from './context.ts';

export type TrustFiles = { caBundle: string; crl: string | null };

/** The row trustFilesOf reads: the issuing CA, the other one during a rotation, the CRL. */
export interface TrustRow {
  cert_pem: string;
  other: string | null;
  crl: string | null;
}

/**
 * The read of a cluster's TrustRow (`cluster` the cluster's expression, `$1` unless told), with
 * `columns` a caller adds (", ..."), which may use the aliases a (cluster_cas), r (ca_rotations)
 * and l (cluster_crls): a desired request reads its node's renewals in the same query, as a
 * subquery of its last_contact write (issue 13).
 */
export function trustFilesSql(columns = '', cluster = '$1'): string {
  return `SELECT a.cert_pem, r.other_cert_pem AS other, l.pem AS crl${columns}
         FROM cluster_cas a LEFT JOIN ca_rotations r USING (cluster) LEFT JOIN cluster_crls l USING (cluster) WHERE a.cluster = ${cluster}`;
}

/**
 * The trust files of a cluster's TrustRow: the CA bundle is the issuing CA, and during a rotation
 * the other one (the new CA in phase 'trust', the old one in phase 'reissue') after it; the CRL.
 * No row: the cluster has no CA (404).
 */
export function trustFilesOf(cluster: string, row: TrustRow | undefined): TrustFiles {
  if (!row) throw notFound(`cluster "${cluster}" has no CA`);
  return { caBundle: row.other ? `${row.cert_pem.trimEnd()}\n${row.other.trimEnd()}\n` : row.cert_pem, crl: row.crl };
}

export class ClusterCas {
  readonly #ctx: ServiceContext;
  readonly #cas = new Map<string, { certPem: string; ca: CertificateAuthority }>();

  constructor(ctx: ServiceContext) {
    this.#ctx = ctx;
  }

  /** The issuing CA of a cluster; its key is opened once and kept while that CA issues. */
  async issuing(name: string, c: Queryable = this.#ctx.store.pool): Promise<CertificateAuthority> {
    const row = (await c.query<{ cert_pem: string; key_sealed: string }>(`SELECT cert_pem, key_sealed FROM cluster_cas WHERE cluster = $1`, [name])).rows[0];
    if (!row) throw notFound(`cluster "${name}" has no CA`);
    const cached = this.#cas.get(name);
    if (cached && cached.certPem === row.cert_pem) return cached.ca;
    const ca = new CertificateAuthority(row.cert_pem, this.#ctx.box.open(row.key_sealed, `cluster-ca:${name}`));
    this.#cas.set(name, { certPem: row.cert_pem, ca });
    return ca;
  }

  /** The CA that is not issuing during a rotation (its key signs its own CRL), or null. */
  async other(name: string, c: Queryable): Promise<{ ca: CertificateAuthority; phase: 'trust' | 'reissue' } | null> {
    const row = (await c.query<{ other_cert_pem: string; other_key_sealed: string; phase: 'trust' | 'reissue' }>(
      `SELECT other_cert_pem, other_key_sealed, phase FROM ca_rotations WHERE cluster = $1`,
      [name],
    )).rows[0];
    if (!row) return null;
    return { ca: new CertificateAuthority(row.other_cert_pem, this.#ctx.box.open(row.other_key_sealed, `cluster-ca:${name}`)), phase: row.phase };
  }

  /** The cluster's CA bundle (trustFilesOf). */
  async bundle(name: string, c: Queryable = this.#ctx.store.pool): Promise<string> {
    if (!(await this.#ctx.cluster(name, c))) throw notFound(`no cluster "${name}"`);
    return (await this.trustFiles(name, c)).caBundle;
  }

  /**
   * The cluster's trust files alone, in one read: the admin's CA bundle. A node's are read with
   * its renewals, by the one read of desired-state.ts (#trustAndRenewals), of the same row and rule.
   */
  async trustFiles(name: string, c: Queryable = this.#ctx.store.pool): Promise<TrustFiles> {
    return trustFilesOf(name, (await c.query<TrustRow>(trustFilesSql(), [name])).rows[0]);
  }

  /** Forget the opened key (the cluster is gone, or its issuing CA changed). */
  forget(name: string): void {
    this.#cas.delete(name);
  }
}
