// After the proof: the files nothing references any more are removed, and every managed file
// (and the pairs the configuration names) is reported as it is on disk.
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Static } from '@sinclair/typebox';
import type { FileReport } from '../../shared/contract/status.ts';
import { removeFile } from '../../shared/system/atomic-file.ts';
import { OWN_TLS_FILE, clientPaths, stableServerPaths, type Layout } from '../../shared/pgconf/layout.ts';
import type { Plan } from '../../shared/pgconf/plan.ts';
import { observeFile } from '../runtime/drift.ts';
import { neededSlots } from './material.ts';
import type { ApplyInput, NodeContext } from './types.ts';

/** What cleanup and the file reports look at: the node, the input applied, its layout and plan. */
export interface AppliedFiles {
  ctx: NodeContext;
  input: ApplyInput;
  layout: Layout;
  plan: Plan;
  log: NodeContext['log'];
}

/** After the proof: our content-addressed TLS files and a passfile nothing references any more. */
export async function cleanup(run: AppliedFiles): Promise<void> {
  const keep = new Set(run.plan.files.map((f) => f.path));
  const removed: string[] = [];
  for (const name of await readdir(run.layout.tlsDir).catch(() => [] as string[])) {
    const path = join(run.layout.tlsDir, name);
    if (OWN_TLS_FILE.test(name) && !keep.has(path) && (await removeFile(path))) removed.push(path);
  }
  if (!keep.has(run.layout.passfile) && (await removeFile(run.layout.passfile))) removed.push(run.layout.passfile);
  // Files under fixed names in the state directory that this desired state no longer writes
  // (say cert switched to scram: the client key goes). Files in a home directory are left alone.
  const owned: string[] = [];
  const stable = stableServerPaths(run.layout);
  owned.push(stable.pem, stable.ca, stable.crl);
  const cl = run.input.desired.clientLayout;
  if (cl !== undefined && cl.base === 'state-dir') {
    const roles = new Set([...run.input.desired.roles.map((r) => r.name), ...run.input.desired.edges.map((e) => e.role)]);
    for (const role of roles) {
      const p = clientPaths(run.layout, cl, role);
      owned.push(...[p.cert, p.key, p.ca, p.crl, p.passfile].filter((x): x is string => x !== null));
    }
  }
  for (const path of new Set(owned)) if (!keep.has(path) && (await removeFile(path))) removed.push(path);
  if (removed.length > 0) run.log.info({ removed }, 'removed files no longer referenced');
}

/** The owner name FileReport (and the drift watcher) use for a uid. */
export function ownerNamer(ctx: Pick<NodeContext, 'serverOsUser'>): (uid: number) => string {
  return (uid) => (uid === ctx.serverOsUser.uid ? ctx.serverOsUser.name : uid === 0 ? 'root' : String(uid));
}

async function describe(path: string, ctx: NodeContext): Promise<Static<typeof FileReport> | null> {
  try {
    return await observeFile(path, ownerNamer(ctx));
  } catch {
    return null;
  }
}

/** Every managed file, plus the key/certificate pairs the configuration names. */
export async function fileReports(run: AppliedFiles): Promise<Static<typeof FileReport>[]> {
  const paths = run.plan.files.map((f) => f.path);
  const used = new Set(neededSlots(run.input));
  for (const c of run.input.certificates.filter((x) => used.has(x.slot))) paths.push(c.certPath, c.keyPath);
  const reports = await Promise.all([...new Set(paths)].map((p) => describe(p, run.ctx)));
  return reports.filter((r): r is Static<typeof FileReport> => r !== null);
}
