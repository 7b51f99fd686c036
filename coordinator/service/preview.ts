// A spec's plan before it is stored: what every node would be given (the managed blocks, settings,
// files as the agent's own planner lays them out) and what changes against the current generation.
import type { PlanResponse } from '../../shared/contract/api.ts';
import type { NodeDesired } from '../../shared/contract/schema.ts';
import { previewNode } from '../../shared/pgconf/preview.ts';
import { renderHbaLine, renderIdentLine } from '../../shared/pgconf/render.ts';
import { indexSpec } from '../cluster/compile.ts';
import type { ClusterCas } from './cluster-cas.ts';
import { insecureWarnings } from './clusters.ts';
import type { ServiceContext } from './context.ts';
import type { DesiredStates } from './desired-state.ts';
import type { Passwords } from './passwords.ts';
import { canonicalJson } from './stored-specs.ts';

export interface PreviewDeps {
  cas: ClusterCas;
  passwords: Passwords;
  desired: DesiredStates;
}

export async function planCluster(ctx: ServiceContext, deps: PreviewDeps, name: string, body: unknown): Promise<PlanResponse> {
  const spec = ctx.specs.validate(name, body);
  const current = await ctx.cluster(name);
  const changed = !current || current.spec_canonical !== canonicalJson(spec);
  const generation = current ? current.generation + (changed ? 1 : 0) : 1;
  // A role without a credential yet gets one when the spec is stored.
  const credentials = await deps.passwords.source(name, { password: '(new)', verifier: '(new)' });
  const caBundle = current ? await deps.cas.bundle(name) : '';
  // A new cluster gets its CRL with its first generation; an existing one keeps its current one.
  const crl = current
    ? ((await ctx.store.query<{ pem: string }>(`SELECT pem FROM cluster_crls WHERE cluster = $1`, [name]))[0]?.pem ?? null)
    : '(the CRL issued with the cluster)';
  const index = indexSpec(spec);
  const proposed = new Map(spec.nodes.map((n) => [n.name, ctx.compileNode({ index, generation, credentials, caBundle, crl }, n.name)]));
  const before = current ? await deps.desired.ofCluster(current) : new Map<string, NodeDesired>();
  const nodes = [...proposed.values()].map((d) => {
    const old = before.get(d.node);
    // The managed blocks as the agent's own planner writes them (one renderer, shared/pgconf).
    const preview = previewNode(d);
    const names = (c: NodeDesired['certificates'][number]) => [...c.dnsNames, ...c.ipAddresses];
    return {
      node: d.node,
      hba: preview.hba,
      ident: preview.ident,
      settings: preview.settings,
      roles: d.roles.map((r) => r.name),
      certificates: d.certificates.map((c) => `${c.id}: CN=${c.commonName}${names(c).length ? ` SAN=${names(c).join(',')}` : ''} (${c.usage})`),
      files: preview.files,
      changes: old ? diffNodes(old, d) : ['new node: every file will be written'],
    };
  });
  const warnings = insecureWarnings(spec);
  for (const gone of before.keys()) if (!proposed.has(gone)) warnings.push(`node "${gone}" is removed from the cluster: its agent will be told it is gone`);
  return { cluster: name, generation, nodes, warnings };
}

/** What changes on a node between two desired states, line by line, as the operator reads it. */
function diffNodes(old: NodeDesired, next: NodeDesired): string[] {
  const changes: string[] = [];
  const lines = (d: NodeDesired) => d.hba.map(renderHbaLine);
  const a = new Set(lines(old));
  const b = new Set(lines(next));
  for (const l of b) if (!a.has(l)) changes.push(`+ hba: ${l}`);
  for (const l of a) if (!b.has(l)) changes.push(`- hba: ${l}`);
  const ia = new Set(old.ident.map(renderIdentLine));
  const ib = new Set(next.ident.map(renderIdentLine));
  for (const l of ib) if (!ia.has(l)) changes.push(`+ ident: ${l}`);
  for (const l of ia) if (!ib.has(l)) changes.push(`- ident: ${l}`);
  for (const k of new Set([...Object.keys(old.settings), ...Object.keys(next.settings)])) {
    if (old.settings[k] !== next.settings[k]) changes.push(`~ setting ${k}: ${old.settings[k] ?? '(unset)'} -> ${next.settings[k] ?? '(unset)'}`);
  }
  const ra = new Set(old.roles.map((r) => r.name));
  const rb = new Set(next.roles.map((r) => r.name));
  for (const r of rb) if (!ra.has(r)) changes.push(`+ role ${r}`);
  for (const r of ra) if (!rb.has(r)) changes.push(`- role ${r} (no longer managed; not dropped)`);
  const ca = new Map(old.certificates.map((c) => [c.id, canonicalJson(c)]));
  const cb = new Map(next.certificates.map((c) => [c.id, canonicalJson(c)]));
  for (const [id, v] of cb) if (ca.get(id) !== v) changes.push(`${ca.has(id) ? '~' : '+'} certificate ${id} (new certificate will be issued)`);
  for (const id of ca.keys()) if (!cb.has(id)) changes.push(`- certificate ${id}`);
  if (old.auth !== next.auth) changes.push(`~ auth: ${old.auth} -> ${next.auth}`);
  if (old.sslmode !== next.sslmode) changes.push(`~ sslmode: ${old.sslmode} -> ${next.sslmode}`);
  if (old.certLifetimeSeconds !== next.certLifetimeSeconds) changes.push(`~ certificate lifetime: ${old.certLifetimeSeconds}s -> ${next.certLifetimeSeconds}s`);
  return changes.length > 0 ? changes : ['no change'];
}
