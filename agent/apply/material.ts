// The TLS material and client credentials under fixed names, and what every apply needs of the
// certificate pairs: the slots in use, their PEMs for the copies, the private directories they
// go in, and the groups of files installed together.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { problemOf, type Problem } from '../../shared/contract/problem.ts';
import { installFiles } from '../../shared/system/atomic-file.ts';
import { layoutFor, type Layout } from '../../shared/pgconf/layout.ts';
import { planNode, type Plan } from '../../shared/pgconf/plan.ts';
import { patroniSlots } from '../../shared/pgconf/patroni.ts';
import { ensurePrivateDir } from '../runtime/statefile.ts';
import { checkCertificates } from './inspect.ts';
import type { ApplyInput, NodeContext } from './types.ts';

/** PEM contents of the pairs that must be copied under fixed names (only when the desired state wants copies). */
export async function readPems(input: ApplyInput): Promise<Record<string, { cert: string; key: string }>> {
  const d = input.desired;
  if (d.stableServerFiles !== true && d.clientLayout === undefined) return {};
  const out: Record<string, { cert: string; key: string }> = {};
  const used = new Set(neededSlots(input));
  for (const c of input.certificates.filter((x) => used.has(x.slot))) {
    out[c.slot] = { cert: await readFile(c.certPath, 'utf8'), key: await readFile(c.keyPath, 'utf8') };
  }
  return out;
}

export function neededSlots(input: ApplyInput): string[] {
  const slots = input.desired.tls ? ['server'] : [];
  for (const e of input.desired.edges) if (e.clientCertificate !== null) slots.push(e.clientCertificate);
  slots.push(...patroniSlots(input.desired));
  return [...new Set(slots)];
}

/** Consecutive files of one group (a client certificate and its key) go to installFiles together; every other file alone. */
export function installGroups<F extends { group?: string }>(files: F[]): F[][] {
  const out: F[][] = [];
  for (const f of files) {
    const last = out[out.length - 1];
    if (f.group !== undefined && last !== undefined && last[0]!.group === f.group) last.push(f);
    else out.push([f]);
  }
  return out;
}

/** Files of a plan that PostgreSQL's own files do not name and that need no server: copies under fixed names. */
const MATERIAL_KEYS = new Set([
  'server-pem', 'server-ca', 'server-crl',
  'client-cert', 'client-key', 'client-ca', 'client-crl', 'passfile',
  'patroni-api', 'patroni-client', 'patroni-fragment',
]);

/**
 * Install only the TLS material and client credentials the desired state puts under fixed
 * names (stable server files, the profile's client layout, the passfile), through the one
 * atomic writer, without PostgreSQL. Used before the server exists: pg_autoctl create refuses
 * --server-cert/--ssl-ca-file paths that do not exist, and connects to the monitor with
 * ~/.postgresql/postgresql.crt. Certificates are checked first, exactly as for a full apply.
 */
export async function installMaterial(ctx: NodeContext, input: ApplyInput, opts: { now?: () => Date } = {}): Promise<{ written: string[]; errors: Problem[] }> {
  const server = { hbaFile: join(ctx.pgdata, 'pg_hba.conf'), identFile: join(ctx.pgdata, 'pg_ident.conf'), configFile: join(ctx.pgdata, 'postgresql.conf') };
  const layout = layoutFor(ctx.stateDir, server, ctx.serverOsUser.home);
  let plan: Plan;
  try {
    const existing = { hba: '', ident: '', config: '' };
    const pems = await readPems(input);
    plan = planNode({ desired: input.desired, certificates: input.certificates, layout, localRole: ctx.pgUser, localOsUsers: [ctx.agentOsUser], existing, pems });
  } catch (e) {
    return { written: [], errors: [problemOf(e, 'E_RENDER')] };
  }
  const now = (opts.now ?? (() => new Date()))();
  const { certificates, desired } = input;
  const problems = await checkCertificates({ certificates, neededSlots: neededSlots(input), caBundle: desired.caBundle, ownerUid: ctx.serverOsUser.uid, now });
  if (problems.length > 0) return { written: [], errors: problems };
  await ensureStateDirs(ctx, layout);
  await ensurePlanDirs(ctx, plan.dirs);
  const { uid, gid } = ctx.serverOsUser;
  const written: string[] = [];
  for (const group of installGroups(plan.files.filter((x) => MATERIAL_KEYS.has(x.key)))) {
    const wrote = await installFiles(group.map((f) => ({ path: f.path, content: Buffer.from(f.content, 'utf8'), uid, gid, mode: f.mode })));
    group.forEach((f, i) => wrote[i] && written.push(f.path));
  }
  return { written, errors: [] };
}

/** The state directory and its TLS and client directories: the server's OS user's, 0700, never through a symlink. */
export async function ensureStateDirs(ctx: NodeContext, layout: Layout): Promise<void> {
  for (const dir of [ctx.stateDir, layout.tlsDir, layout.clientDir]) await ensurePrivateDir(dir, ctx.serverOsUser);
}

/**
 * Directories of files the desired state puts under fixed names (stable server files, the
 * profile's client layout, e.g. ~/.postgresql): 0700, owned by the server's OS user.
 */
export async function ensurePlanDirs(ctx: NodeContext, dirs: string[]): Promise<void> {
  for (const dir of dirs) await ensurePrivateDir(dir, ctx.serverOsUser);
}
