// Cluster specs through the API: stored (with the cluster's CA, role passwords and first CRL),
// read, listed, deleted. Nodes removed from a spec lose every certificate they held.
import { randomUUID } from 'node:crypto';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import { trustWarnings } from '../cluster/compile.ts';
import { CertificateAuthority } from '../ca/ca.ts';
import { notFound } from '../errors.ts';
import type { ClusterCas } from './cluster-cas.ts';
import type { ServiceContext } from './context.ts';
import type { Crls } from './crls.ts';
import type { DesiredStates } from './desired-state.ts';
import type { Passwords } from './passwords.ts';
import { canonicalJson, CLUSTER_COLUMNS, type ClusterRow } from './stored-specs.ts';

/** What an operator is warned of in a spec: every trust rule, and TLS that does not protect. */
export function insecureWarnings(spec: ClusterSpec): string[] {
  // Every rendered rule with method trust, operator rules included (issue 14).
  const w = trustWarnings(spec);
  if (spec.tls.sslmode === 'disable') w.push('TLS is disabled: inter-node traffic and SCRAM exchanges are not encrypted');
  else if (spec.tls.sslmode === 'require') w.push('sslmode "require" does not verify the server certificate (use verify-full)');
  return w;
}

export interface ClusterDeps {
  cas: ClusterCas;
  crls: Crls;
  passwords: Passwords;
  desired: DesiredStates;
}

export class Clusters {
  readonly #ctx: ServiceContext;
  readonly #deps: ClusterDeps;

  constructor(ctx: ServiceContext, deps: ClusterDeps) {
    this.#ctx = ctx;
    this.#deps = deps;
  }

  async put(name: string, body: unknown): Promise<{ generation: number; spec: ClusterSpec; warnings: string[]; changed: boolean }> {
    const ctx = this.#ctx;
    const { specs, box } = ctx;
    const spec = specs.validate(name, body);
    const canonical = canonicalJson(spec);
    const now = ctx.now();
    const existingCa = await ctx.store.query(`SELECT 1 FROM cluster_cas WHERE cluster = $1`, [name]);
    // Keys are made outside the transaction (tens of ms); an unused one is simply dropped.
    const newCa = existingCa.length === 0 ? await CertificateAuthority.create(`pgaccord ${name} CA`, now) : null;
    const result = (await ctx.change(name, async (c) => {
      const incarnation = randomUUID();
      const inserted = await c.query(
        `INSERT INTO clusters (name, spec, spec_canonical, generation, created_at, updated_at, incarnation, spec_seal)
         VALUES ($1, $2, $3, 1, $4, $4, $5, $6) ON CONFLICT (name) DO NOTHING`,
        [name, JSON.stringify(spec), canonical, now, incarnation, specs.seal({ name, incarnation, generation: 1 }, canonical)],
      );
      const row = (await c.query<ClusterRow>(`SELECT ${CLUSTER_COLUMNS} FROM clusters WHERE name = $1 FOR UPDATE`, [name])).rows[0]!;
      let generation = row.generation;
      // A row changed behind the API (seal broken) is rewritten by applying the spec again.
      const changed = inserted.rowCount === 1 || row.spec_canonical !== canonical || !specs.sealHolds(row);
      if (changed && inserted.rowCount !== 1) {
        generation += 1;
        const kept = new Set(spec.nodes.map((n) => n.name));
        const removed = row.spec.nodes.map((n) => n.name).filter((n) => !kept.has(n));
        if (removed.length > 0) await this.#deps.crls.revokeNodes(c, name, removed, now);
        await c.query(
          `UPDATE clusters SET spec = $2, spec_canonical = $3, generation = $4, updated_at = $5, spec_seal = $6 WHERE name = $1`,
          [name, JSON.stringify(spec), canonical, generation, now, specs.seal({ name, incarnation: row.incarnation, generation }, canonical)],
        );
      }
      if (newCa) {
        await c.query(`INSERT INTO cluster_cas (cluster, cert_pem, key_sealed, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (cluster) DO NOTHING`, [
          name,
          newCa.ca.certPem,
          box.seal(newCa.keyPem, `cluster-ca:${name}`),
          now,
        ]);
      }
      await this.#deps.passwords.ensure(c, spec, now);
      // A cluster has a CRL from its first generation: pg_autoctl create refuses an
      // --ssl-crl-file that does not exist yet, and a server should check revocation from day one.
      if (inserted.rowCount === 1) await this.#deps.crls.issue(c, name, now);
      if (changed) await ctx.store.notify(c, name);
      return { generation, changed };
    }))!;
    ctx.log.info({ cluster: name, generation: result.generation, changed: result.changed }, 'cluster spec stored');
    return { generation: result.generation, spec, warnings: insecureWarnings(spec), changed: result.changed };
  }

  async get(name: string): Promise<{ generation: number; spec: ClusterSpec; warnings: string[] }> {
    const row = await this.#ctx.requireCluster(name);
    return { generation: row.generation, spec: row.spec, warnings: insecureWarnings(row.spec) };
  }

  async list(): Promise<{ name: string; generation: number }[]> {
    return this.#ctx.store.query<{ name: string; generation: number }>(`SELECT name, generation FROM clusters ORDER BY name`);
  }

  async delete(name: string): Promise<void> {
    const ctx = this.#ctx;
    await ctx.change(name, async (c) => {
      const r = await c.query(`DELETE FROM clusters WHERE name = $1`, [name]);
      if (r.rowCount === 0) throw notFound(`no cluster "${name}"`);
      await ctx.store.notify(c, name);
      return true;
    });
    // What this process keeps of the cluster goes with it (a new cluster of the same name starts afresh).
    this.#deps.cas.forget(name);
    this.#deps.desired.forget(name);
    this.#deps.passwords.forget(name);
    ctx.log.info({ cluster: name }, 'cluster deleted');
  }
}
