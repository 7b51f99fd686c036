// The apply engine: make the local PostgreSQL match one NodeDesired, and prove it.
//
//   render (pure) -> check inputs -> snapshot -> install (atomic, in dependency order)
//   -> validate with PostgreSQL's views -> roles -> ONE pg_reload_conf() -> prove
//   (new session sees the new config hash; the TLS handshake serves the certificate on disk)
//   -> clean up files nothing references any more.
//
// Any failure before the proof puts every file back byte for byte (owner and mode too) and
// reports PostgreSQL's own message; a failed proof also reloads the restored files. Nothing
// here restarts PostgreSQL: settings that need it are reported as pending.
//
// The steps' parts live beside it: server-files.ts (what the server names, refused or read),
// material.ts (pairs and copies under fixed names, their directories), inspect.ts and verify.ts
// (the checks), proof.ts (views, hash, handshake), files.ts (cleanup, file reports), step.ts.
import { realpath } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type pg from 'pg';
import type { CertReport } from '../../shared/contract/status.ts';
import { problemOf, type Problem } from '../../shared/contract/problem.ts';
import { InstallError, installFiles, removeStaleTemps, restoreFile, snapshotFile, stageFiles, type FileSnapshot, type StagedFiles } from '../../shared/system/atomic-file.ts';
import { layoutFor, type Layout } from '../../shared/pgconf/layout.ts';
import { planNode, type Plan } from '../../shared/pgconf/plan.ts';
import { isPatroni, patroniBaseConf, patroniPaths } from '../../shared/pgconf/patroni.ts';
import { openSession, pendingRestart, reloadConf, serverDataDirectory, serverInfo, type ServerInfo } from './pgconf.ts';
import { checkVerifiers, NO_ROLE_CHANGES, protectedRoleProblems, stageRoles, type StagedRoles } from './roles.ts';
import { checkCrl } from './verify.ts';
import { checkCertificates, runSeedChecks } from './inspect.ts';
import { provePatroni, regularFileOf } from './patroni.ts';
import { failed, StepFailure } from './step.ts';
import { readOperatorFile, serverFiles } from './server-files.ts';
import { ensurePlanDirs, ensureStateDirs, installGroups, installMaterial, neededSlots, readPems } from './material.ts';
import { proofProblems, validationProblems } from './proof.ts';
import { cleanup, fileReports } from './files.ts';
import type { ApplyInput, ApplyResult, NodeContext } from './types.ts';

export interface ApplyOptions {
  /** The clock (certificate and CRL validity). */
  now?: () => Date;
  /** How long to wait for a new session to see the new configuration hash. */
  proofTimeoutMs?: number;
  /**
   * Fault injection for tests only (never set by the agent's runtime, no flag or config reaches
   * it): skip the validation before the reload, so that a file PostgreSQL refuses gets to the
   * reload and the proof must catch it.
   */
  testOnlySkipValidation?: boolean;
}

/**
 * Milliseconds per phase of one apply, on the monotonic clock: each lap charges the time since
 * the previous one to a phase, so the phases add up to the whole apply.
 */
export class PhaseClock {
  readonly phases: Record<string, number> = {};
  #at = performance.now();

  lap(phase: string): void {
    const now = performance.now();
    this.phases[phase] = Math.round(((this.phases[phase] ?? 0) + now - this.#at) * 10) / 10;
    this.#at = now;
  }
}

// One apply at a time per process: the temp-file sweep and the snapshots assume it.
let queue: Promise<unknown> = Promise.resolve();

export function applyDesired(ctx: NodeContext, input: ApplyInput, opts: ApplyOptions = {}): Promise<ApplyResult> {
  const run = queue.then(async () => {
    const clock = new PhaseClock();
    const result = await applyOnce(ctx, input, opts, clock);
    return { ...result, phases: clock.phases };
  });
  queue = run.catch(() => undefined);
  return run;
}

async function applyOnce(ctx: NodeContext, input: ApplyInput, opts: ApplyOptions, clock: PhaseClock): Promise<ApplyResult> {
  const now = opts.now ?? (() => new Date());
  const log = ctx.log.child({ generation: input.desired.generation });
  let session: pg.Client | null = null;
  let notOurs: Problem;
  try {
    session = await openSession(ctx);
    // The server on that socket must be the one in PGDATA: an agent started before its server
    // falls back to port 5432, where another cluster's server may run. Never touch that one.
    const dataDirectory = await serverDataDirectory(session);
    const [theirs, ours] = await Promise.all([realpath(dataDirectory).catch(() => dataDirectory), realpath(ctx.pgdata).catch(() => ctx.pgdata)]);
    if (theirs === ours) return await applyWith(ctx, input, { ...opts, now }, session, log, clock);
    notOurs = { code: 'E_WRONG_SERVER', message: `the server at ${ctx.pgHost}:${ctx.pgPort} runs ${theirs}, not --pgdata ${ours}: nothing applied to it (give --pg-port/--pg-host, or start this node's server)` };
  } catch (e) {
    if (session === null) {
      const why = existsSync(join(ctx.pgdata, 'postmaster.pid')) ? '' : ` (no server runs in ${ctx.pgdata} yet: no postmaster.pid; the agent finds its port there once it starts)`;
      notOurs = { code: 'E_PG_CONNECT', message: `cannot connect to the local PostgreSQL at ${ctx.pgHost}:${ctx.pgPort} as ${ctx.pgUser}: ${(e as Error).message}${why}` };
    } else throw e;
  } finally {
    await session?.end().catch(() => undefined);
  }
  // PostgreSQL is not there yet (pg_autoctl create has not run, or it is stopped): still put
  // the TLS material and client credentials under their fixed names, so that a tool that must
  // find them at create time (pg_autoctl --server-cert, ~/.postgresql) can.
  const material = await installMaterial(ctx, input).catch((err: unknown) => ({ written: [] as string[], errors: [problemOf(err, 'E_INSTALL')] }));
  if (material.written.length > 0) log.info({ files: material.written }, 'PostgreSQL not running in PGDATA: TLS material and client credentials installed');
  clock.lap('install');
  return failed([notOurs, ...material.errors]);
}

interface Run {
  ctx: NodeContext;
  input: ApplyInput;
  session: pg.Client;
  info: ServerInfo;
  layout: Layout;
  plan: Plan;
  snapshots: Map<string, FileSnapshot>;
  changed: string[];
  log: NodeContext['log'];
  now: () => Date;
  proofTimeoutMs: number;
  /** Settings pg_file_settings says need a restart. */
  pendingFromFiles: string[];
  /** ApplyOptions.testOnlySkipValidation */
  skipValidation: boolean;
}

async function applyWith(ctx: NodeContext, input: ApplyInput, opts: ApplyOptions & { now: () => Date }, session: pg.Client, log: NodeContext['log'], clock: PhaseClock): Promise<ApplyResult> {
  const info = await serverInfo(session);
  const server = await serverFiles(ctx, info);
  if ('code' in server) {
    log.error({ error: server }, 'a file the server names is refused; nothing read or written');
    return failed([server]);
  }
  // Patroni rewrites postgresql.conf; the include line goes into its postgresql.base.conf (shared/pgconf/patroni.ts)
  if (isPatroni(input.desired) && (await regularFileOf(patroniBaseConf(server.configFile), ctx.serverOsUser.uid))) server.configFile = patroniBaseConf(server.configFile);
  const layout = layoutFor(ctx.stateDir, server, ctx.serverOsUser.home);
  try {
    await ensureStateDirs(ctx, layout);
  } catch (e) {
    return failed([problemOf(e, 'E_INSTALL')]);
  }
  for (const dir of new Set([dirname(layout.hbaFile), dirname(layout.identFile), dirname(layout.includeFile), layout.tlsDir, layout.clientDir])) {
    const removed = await removeStaleTemps(dir);
    if (removed.length > 0) log.warn({ removed }, 'removed temporary files left by an interrupted apply');
  }

  // Render (pure) from the files as they are now.
  let plan: Plan;
  try {
    const existing = {
      hba: await readOperatorFile(layout.hbaFile, true),
      ident: await readOperatorFile(layout.identFile, true),
      config: await readOperatorFile(layout.configFile, false),
    };
    const pems = await readPems(input);
    plan = planNode({
      pems,
      desired: input.desired,
      certificates: input.certificates,
      layout,
      localRole: ctx.pgUser,
      localOsUsers: [ctx.agentOsUser, ctx.serverOsUser.name],
      existing,
    });
  } catch (e) {
    return failed([problemOf(e, 'E_RENDER')]);
  }
  try {
    await ensurePlanDirs(ctx, plan.dirs);
  } catch (e) {
    return failed([problemOf(e, 'E_INSTALL')], { clientConnections: plan.clientConnections });
  }
  for (const dir of plan.dirs) {
    const removed = await removeStaleTemps(dir);
    if (removed.length > 0) log.warn({ removed }, 'removed temporary files left by an interrupted apply');
  }
  clock.lap('render');

  // Inputs PostgreSQL would reject (or hash as plaintext) are refused before anything is written.
  const prechecks = await checkInputs(ctx, session, input, plan, opts.now());
  clock.lap('validate');
  if (prechecks.length > 0) {
    log.error({ errors: prechecks }, 'desired state refused before writing anything');
    return failed(prechecks, { clientConnections: plan.clientConnections });
  }

  const run: Run = { ctx, input, session, info, layout, plan, snapshots: new Map(), changed: [], log, now: opts.now, proofTimeoutMs: opts.proofTimeoutMs ?? 5000, pendingFromFiles: [], skipValidation: opts.testOnlySkipValidation === true };
  for (const f of plan.files) run.snapshots.set(f.path, await snapshotFile(f.path));

  let roles: StagedRoles = NO_ROLE_CHANGES;
  let served;
  let reloaded;
  // A password rotation: the passfile(s) and the verifiers switch together at the rotation
  // instant, on every node at once; the rest is staged and proved before it.
  const switchAt = passwordSwitchAt(input.desired);
  const deferred = switchAt === null ? [] : plan.files.filter((f) => f.key === 'passfile');
  let staged: StagedFiles | null = null;
  try {
    await installAll(run, plan.files.filter((f) => !deferred.includes(f)));
    clock.lap('install');
    await validate(run);
    roles = info.inRecovery ? NO_ROLE_CHANGES : await stageRoles(session, input.desired);
    clock.lap('validate');
    reloaded = await reloadIfNeeded(run);
    clock.lap('reload');
    served = await prove(run);
    clock.lap('prove');
    if (switchAt !== null) {
      // Only the COMMIT and a rename are left for the instant: the passfile is written and synced now.
      staged = await stageAll(run, deferred);
      clock.lap('install');
      const waitMs = Math.min(MAX_SWITCH_WAIT_MS, switchAt - Date.now());
      if (waitMs > 0) await new Promise((r) => setTimeout(r, waitMs));
      clock.lap('wait');
      // The passfile first (its renames run before the first await), the verifier's COMMIT
      // right after: a client reads its passfile before it connects, the server checks the
      // verifier a TLS handshake later.
      await Promise.all([staged.commit(), roles.commit()]);
      log.info({ lateMs: Math.max(0, Date.now() - switchAt), waitedMs: Math.max(0, waitMs) }, 'password rotation: passfile and verifiers switched at the rotation instant');
    } else await roles.commit();
    clock.lap('prove');
    if (roles.actions.length > 0) log.info({ actions: roles.actions }, 'roles changed');
  } catch (e) {
    await staged?.abort();
    await roles.rollback();
    const problems = e instanceof StepFailure ? e.problems : [problemOf(e, 'E_APPLY')];
    const restoreProblems = await restoreAll(run, e instanceof StepFailure && e.reloaded);
    log.error({ errors: problems, restored: run.changed }, 'apply failed; files and roles restored');
    return failed([...problems, ...restoreProblems], { files: await fileReports(run).catch(() => []), clientConnections: plan.clientConnections, changed: false });
  }

  // The new state is proved and committed. What follows only reports or tidies up: its
  // failures are reported, and never roll back a state PostgreSQL is already running.
  const problems: Problem[] = [];
  // Only settings pgaccord writes can hold its state back: pg_autoctl, for one, leaves its own
  // `port` and `recovery_target_timeline` pending a restart after every promotion.
  const serverPending = await pendingRestart(session).catch((e) => (problems.push(problemOf(e, 'E_PENDING_RESTART')), [] as string[]));
  const others = serverPending.filter((name) => !(name in run.plan.settings));
  if (others.length > 0) log.debug({ settings: others }, 'settings pgaccord does not manage are pending a restart; not ours to wait for');
  const pending = [...new Set([...serverPending.filter((name) => name in run.plan.settings), ...run.pendingFromFiles])].sort();
  await cleanup(run).catch((e) => problems.push(problemOf(e, 'E_CLEANUP')));
  // Patroni: its REST API serves the certificate on disk (SIGHUP when not), or the node has not converged
  const patroni = isPatroni(input.desired) ? await provePatroni({ uid: ctx.serverOsUser.uid, paths: patroniPaths(run.layout), caBundle: input.desired.caBundle, fragmentChanged: run.changed.includes(patroniPaths(run.layout).fragment) }).catch((e: unknown) => ({ problems: [problemOf(e, 'E_PATRONI')] })) : { problems: [] };
  problems.push(...patroni.problems);
  const checks = input.desired.profile === 'pgd' ? await runSeedChecks(session).catch((e) => (problems.push(problemOf(e, 'E_SEED_CHECKS')), undefined)) : undefined;
  const changed = run.changed.length > 0 || roles.changed || reloaded;
  const phase = patroni.problems.length > 0 ? 'failed' : pending.length > 0 ? 'pending-restart' : 'converged';
  // Level-triggered: most passes change nothing, and say so only at debug level.
  log[changed || phase !== 'converged' || problems.length > 0 ? 'info' : 'debug']({ changed, reloaded, files: run.changed, phase, pendingRestart: pending, problems }, 'desired state applied and proved');
  const files = await fileReports(run);
  clock.lap('finish');
  return {
    phase,
    changed,
    errors: problems,
    files,
    pendingRestart: pending,
    servedCertificate: served,
    clientConnections: plan.clientConnections,
    ...(checks ? { checks } : {}),
  };
}

async function checkInputs(ctx: NodeContext, session: pg.Client, input: ApplyInput, plan: Plan, now: Date): Promise<Problem[]> {
  const problems = checkVerifiers(input.desired.roles);
  problems.push(...(await protectedRoleProblems(session, input.desired, ctx.pgUser)));
  problems.push(...(await checkCertificates({ certificates: input.certificates, neededSlots: neededSlots(input), caBundle: input.desired.caBundle, ownerUid: ctx.serverOsUser.uid, now })));
  if (plan.crlFile !== null && input.desired.crl !== null) problems.push(...checkCrl(input.desired.crl, input.desired.caBundle, now));
  return problems;
}

/** The longest an apply waits for a rotation instant (a coordinator clock far ahead must not stall the node). */
const MAX_SWITCH_WAIT_MS = 10_000;

/** The rotation instant of a desired state, ms since the epoch, or null. */
export function passwordSwitchAt(desired: { passwordsAt?: string }): number | null {
  if (desired.passwordsAt === undefined) return null;
  const at = Date.parse(desired.passwordsAt);
  return Number.isNaN(at) ? null : at;
}

type PlanFile = Plan['files'][number];

function specsOf(run: Run, group: PlanFile[]) {
  const { uid, gid } = run.ctx.serverOsUser;
  return group.map((f) => {
    const snap = run.snapshots.get(f.path)!;
    // postgresql.conf keeps its own owner and mode: we only append one line to it.
    const owner = f.key === 'config' && snap.exists ? { uid: snap.uid, gid: snap.gid, mode: snap.mode } : { uid, gid, mode: f.mode };
    return { path: f.path, content: Buffer.from(f.content, 'utf8'), ...owner };
  });
}

/**
 * installAll in two halves: every file written and synced now (0600 from the instant it exists;
 * a staging failure removes every temp file already written), put in place by commit(). One
 * stageFiles over all the groups, in order: its renames then run back to back, before the first
 * await, which is what the rotation instant asks for.
 */
async function stageAll(run: Run, files: PlanFile[]): Promise<StagedFiles> {
  const staged = await stageFiles(specsOf(run, files));
  return { abort: staged.abort, commit: () => installGroup(run, files, staged.commit) };
}

async function installAll(run: Run, files = run.plan.files): Promise<void> {
  for (const group of installGroups(files)) await installGroup(run, group, () => installFiles(specsOf(run, group)));
  if (run.changed.length > 0) run.log.info({ files: run.changed }, 'installed');
}

/** One group put in place by `install`; what it changed is noted for the restore. Returns, per file, whether it was written. */
async function installGroup(run: Run, group: PlanFile[], install: () => Promise<boolean[]>): Promise<boolean[]> {
  let wrote: boolean[];
  try {
    wrote = await install();
  } catch (e) {
    // A rename failed part way through the group: the files renamed before it are new and
    // go back with the rest; the others were not touched (nothing is renamed if staging failed).
    const renamed = e instanceof InstallError ? e.renamed : group.map((f) => f.path);
    for (const path of renamed) if (!run.changed.includes(path)) run.changed.push(path);
    throw e;
  }
  group.forEach((f, i) => wrote[i] && run.changed.push(f.path));
  return wrote;
}

async function validate(run: Run): Promise<void> {
  if (run.skipValidation) return;
  const { problems, needRestart } = await validationProblems(run);
  run.pendingFromFiles = needRestart;
  if (problems.length > 0) throw new StepFailure(problems);
}

/** Reload once when something changed, or when the server has not loaded what is on disk. */
async function reloadIfNeeded(run: Run): Promise<boolean> {
  if (run.changed.length === 0) {
    const proof = await proofProblems(run, 0);
    if (proof.problems.length === 0) return false;
    run.log.warn({ errors: proof.problems }, 'files are current but not loaded: reloading');
  }
  await reloadConf(run.session);
  return true;
}

async function prove(run: Run): Promise<CertReport | null> {
  const { problems, served } = await proofProblems(run, run.proofTimeoutMs);
  // The new hash proves only that the settings were loaded: with one bad line PostgreSQL keeps
  // its previous pg_hba.conf or pg_ident.conf (pg_reload_conf() still returns true; only its log
  // says "was not reloaded"). The views parse the files on disk as the postmaster just did, so
  // any error there is a file it refused; and they say why when the hash is missing too.
  const refused = await validationProblems(run);
  run.pendingFromFiles = refused.needRestart;
  for (const p of refused.problems) problems.push({ code: 'E_RELOAD_NOT_PROVED', message: `PostgreSQL did not load the new configuration and keeps running the previous one: ${p.message}` });
  if (problems.length > 0) {
    throw new StepFailure(problems, true);
  }
  return served;
}

/** Put every file we changed back as it was; reload again when the failed state had been loaded. */
async function restoreAll(run: Run, reloaded: boolean): Promise<Problem[]> {
  const problems: Problem[] = [];
  // Reverse order: the files that name others go back first.
  for (const path of [...run.changed].reverse()) {
    try {
      await restoreFile(run.snapshots.get(path)!);
    } catch (e) {
      problems.push({ code: 'E_ROLLBACK', message: `could not restore ${path}: ${(e as Error).message}` });
    }
  }
  if (reloaded && run.changed.length > 0) {
    await reloadConf(run.session).catch((e: unknown) => problems.push({ code: 'E_ROLLBACK', message: `reload after restoring failed: ${(e as Error).message}` }));
  }
  return problems;
}

