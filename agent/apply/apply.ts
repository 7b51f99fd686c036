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
import { lstat, readdir, readFile, realpath } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { existsSync } from 'node:fs';
import type pg from 'pg';
import { certInfo } from '../../shared/crypto/x509.ts';
import type { CertReport, FileReport } from '../../shared/contract/status.ts';
import type { Static } from '@sinclair/typebox';
import { observeFile } from '../runtime/drift.ts';
import { ensureDirectory, InstallError, installFiles, removeFile, removeStaleTemps, restoreFile, snapshotFile, type FileSnapshot } from '../../shared/system/atomic-file.ts';
import { OWN_TLS_FILE, clientPaths, isWithin, layoutFor, stableServerPaths, type Layout, type ServerPaths } from '../../shared/pgconf/layout.ts';
import { fileSettings, hbaFileRules, openSession, identFileMappings, pendingRestart, reloadConf, serverDataDirectory, serverInfo, servedCertificate, tcpHostFor, waitForConfigHash, type ServerInfo } from './pgconf.ts';
import { planNode, PlanError, type Plan } from '../../shared/pgconf/plan.ts';
import { checkVerifiers, NO_ROLE_CHANGES, protectedRoleProblems, RoleError, stageRoles, type StagedRoles } from './roles.ts';
import { runSeedChecks, checkCertificates, checkCrl, checkFileSettings, checkHbaRows, checkIdentRows, keyModeProblem, type Problem } from './verify.ts';
import type { ApplyInput, ApplyResult, NodeContext } from './types.ts';
import type { InstalledCertificate } from '../../shared/pgconf/types.ts';
import { provePatroni, regularFileOf } from './patroni.ts';
import { isPatroni, patroniBaseConf, patroniPaths, patroniSlots } from '../../shared/pgconf/patroni.ts';

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

/** Raised inside a step to end the apply as failed with these problems. */
class StepFailure extends Error {
  constructor(
    readonly problems: Problem[],
    /** The failing state had been loaded: restoring the files needs another reload. */
    readonly reloaded = false,
  ) {
    super(problems.map((p) => p.message).join('; '));
  }
}

const asProblem = (e: unknown, fallback: string): Problem => ({
  code: typeof (e as { code?: unknown }).code === 'string' && String((e as { code: string }).code).startsWith('E_') ? (e as { code: string }).code : fallback,
  message: (e as Error).message ?? String(e),
});

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

function failed(problems: Problem[], extra: Partial<ApplyResult> = {}): ApplyResult {
  return { phase: 'failed', changed: false, errors: problems, files: [], pendingRestart: [], servedCertificate: null, clientConnections: [], ...extra };
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
  const material = await installMaterial(ctx, input).catch((err: unknown) => ({ written: [] as string[], errors: [asProblem(err, 'E_INSTALL')] }));
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
    return failed([asProblem(e, 'E_INSTALL')]);
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
    return failed([asProblem(e, e instanceof PlanError ? e.code : 'E_RENDER')]);
  }
  try {
    await ensurePlanDirs(ctx, plan.dirs);
  } catch (e) {
    return failed([asProblem(e, 'E_INSTALL')], { clientConnections: plan.clientConnections });
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
      const waitMs = Math.min(MAX_SWITCH_WAIT_MS, switchAt - Date.now());
      if (waitMs > 0) await new Promise((r) => setTimeout(r, waitMs));
      clock.lap('wait');
      await installAll(run, deferred);
      await roles.commit();
      log.info({ lateMs: Math.max(0, Date.now() - switchAt), waitedMs: Math.max(0, waitMs) }, 'password rotation: passfile and verifiers switched at the rotation instant');
    } else await roles.commit();
    clock.lap('prove');
    if (roles.actions.length > 0) log.info({ actions: roles.actions }, 'roles changed');
  } catch (e) {
    await roles.rollback();
    const problems = e instanceof StepFailure ? e.problems : [asProblem(e, e instanceof RoleError ? e.code : 'E_APPLY')];
    const restoreProblems = await restoreAll(run, e instanceof StepFailure && e.reloaded);
    log.error({ errors: problems, restored: run.changed }, 'apply failed; files and roles restored');
    return failed([...problems, ...restoreProblems], { files: await fileReports(run).catch(() => []), clientConnections: plan.clientConnections, changed: false });
  }

  // The new state is proved and committed. What follows only reports or tidies up: its
  // failures are reported, and never roll back a state PostgreSQL is already running.
  const problems: Problem[] = [];
  // Only settings pgaccord writes can hold its state back: pg_autoctl, for one, leaves its own
  // `port` and `recovery_target_timeline` pending a restart after every promotion.
  const serverPending = await pendingRestart(session).catch((e) => (problems.push(asProblem(e, 'E_PENDING_RESTART')), [] as string[]));
  const others = serverPending.filter((name) => !(name in run.plan.settings));
  if (others.length > 0) log.debug({ settings: others }, 'settings pgaccord does not manage are pending a restart; not ours to wait for');
  const pending = [...new Set([...serverPending.filter((name) => name in run.plan.settings), ...run.pendingFromFiles])].sort();
  await cleanup(run).catch((e) => problems.push(asProblem(e, 'E_CLEANUP')));
  // Patroni: its REST API serves the certificate on disk (SIGHUP when not), or the node has not converged
  const patroni = isPatroni(input.desired) ? await provePatroni({ uid: ctx.serverOsUser.uid, paths: patroniPaths(run.layout), caBundle: input.desired.caBundle, fragmentChanged: run.changed.includes(patroniPaths(run.layout).fragment) }).catch((e: unknown) => ({ problems: [asProblem(e, 'E_PATRONI')] })) : { problems: [] };
  problems.push(...patroni.problems);
  const checks = input.desired.profile === 'pgd' ? await runSeedChecks(session).catch((e) => (problems.push(asProblem(e, 'E_SEED_CHECKS')), undefined)) : undefined;
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

/**
 * The files the server names (hba_file, ident_file, config_file), resolved. Refused, before
 * anything is read or written, when one resolves outside PGDATA and the server's configuration
 * directory (where config_file is, e.g. /etc/postgresql/15/main), is not a regular file, or is
 * not the PGDATA owner's: a symlink planted there must not make the agent read, rewrite or
 * report (PostgreSQL quotes a refused line) anyone else's file. A missing file (it is then
 * created) is judged by its directory.
 */
async function serverFiles(ctx: NodeContext, info: ServerInfo): Promise<ServerPaths | Problem> {
  const refuse = (message: string): Problem => ({ code: 'E_SERVER_FILE', message });
  const roots = [...new Set(await Promise.all([ctx.pgdata, dirname(info.configFile)].map((d) => realpath(d).catch(() => d))))];
  const out: Partial<ServerPaths> = {};
  for (const [key, setting] of [['hbaFile', 'hba_file'], ['identFile', 'ident_file'], ['configFile', 'config_file']] as const) {
    const named = info[key];
    let real: string;
    let exists = true;
    try {
      real = await realpath(named);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') return refuse(`${setting} ${named}: cannot be resolved (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); nothing read or written`);
      const dir = await realpath(dirname(named)).catch(() => null);
      if (dir === null) return refuse(`${setting} ${named}: its directory does not exist`);
      real = join(dir, basename(named));
      exists = false;
    }
    if (!roots.some((r) => isWithin(r, real))) return refuse(`${setting} ${named} resolves to ${real}, outside PGDATA and the server's configuration directory (${roots.join(', ')}); nothing read or written`);
    if (exists) {
      const st = await lstat(real);
      if (!st.isFile()) return refuse(`${setting} ${real} is not a regular file; nothing read or written`);
      if (st.uid !== ctx.serverOsUser.uid) return refuse(`${setting} ${real} is owned by uid ${st.uid}, not by the PGDATA owner ${ctx.serverOsUser.name} (uid ${ctx.serverOsUser.uid}); nothing read or written`);
    }
    out[key] = real;
  }
  return out as ServerPaths;
}

/** Files of a plan that PostgreSQL's own files do not name and that need no server: copies under fixed names. */
const MATERIAL_KEYS = new Set(['server-pem', 'server-ca', 'server-crl', 'client-cert', 'client-key', 'client-ca', 'client-crl', 'passfile', 'patroni-api', 'patroni-client', 'patroni-fragment']);

/**
 * Install only the TLS material and client credentials the desired state puts under fixed
 * names (stable server files, the profile's client layout, the passfile), through the one
 * atomic writer, without PostgreSQL. Used before the server exists: pg_autoctl create refuses
 * --server-cert/--ssl-ca-file paths that do not exist, and connects to the monitor with
 * ~/.postgresql/postgresql.crt. Certificates are checked first, exactly as for a full apply.
 */
export async function installMaterial(ctx: NodeContext, input: ApplyInput, opts: { now?: () => Date } = {}): Promise<{ written: string[]; errors: Problem[] }> {
  const layout = layoutFor(ctx.stateDir, { hbaFile: join(ctx.pgdata, 'pg_hba.conf'), identFile: join(ctx.pgdata, 'pg_ident.conf'), configFile: join(ctx.pgdata, 'postgresql.conf') }, ctx.serverOsUser.home);
  let plan: Plan;
  try {
    plan = planNode({ desired: input.desired, certificates: input.certificates, layout, localRole: ctx.pgUser, localOsUsers: [ctx.agentOsUser], existing: { hba: '', ident: '', config: '' }, pems: await readPems(input) });
  } catch (e) {
    return { written: [], errors: [asProblem(e, e instanceof PlanError ? e.code : 'E_RENDER')] };
  }
  const problems = await checkCertificates({ certificates: input.certificates, neededSlots: neededSlots(input), caBundle: input.desired.caBundle, ownerUid: ctx.serverOsUser.uid, now: (opts.now ?? (() => new Date()))() });
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
async function ensureStateDirs(ctx: NodeContext, layout: Layout): Promise<void> {
  for (const dir of [ctx.stateDir, layout.tlsDir, layout.clientDir]) await ensureDirectory(dir, 0o700, ctx.serverOsUser);
}

/**
 * Directories of files the desired state puts under fixed names (stable server files, the
 * profile's client layout, e.g. ~/.postgresql): 0700, owned by the server's OS user.
 */
async function ensurePlanDirs(ctx: NodeContext, dirs: string[]): Promise<void> {
  for (const dir of dirs) await ensureDirectory(dir, 0o700, ctx.serverOsUser);
}

/** PEM contents of the pairs that must be copied under fixed names (only when the desired state wants copies). */
async function readPems(input: ApplyInput): Promise<Record<string, { cert: string; key: string }>> {
  const d = input.desired;
  if (d.stableServerFiles !== true && d.clientLayout === undefined) return {};
  const out: Record<string, { cert: string; key: string }> = {};
  const used = new Set(neededSlots(input));
  for (const c of input.certificates.filter((x) => used.has(x.slot))) {
    out[c.slot] = { cert: await readFile(c.certPath, 'utf8'), key: await readFile(c.keyPath, 'utf8') };
  }
  return out;
}

function neededSlots(input: ApplyInput): string[] {
  const slots = input.desired.tls ? ['server'] : [];
  for (const e of input.desired.edges) if (e.clientCertificate !== null) slots.push(e.clientCertificate);
  slots.push(...patroniSlots(input.desired));
  return [...new Set(slots)];
}

/**
 * A server-named file with operator content (pg_hba.conf, pg_ident.conf, postgresql.conf). Only
 * "no such file" may read as empty (`missingOk`): taking any other read error for an empty file
 * would write back the managed block alone, and the operator's lines would be gone.
 */
async function readOperatorFile(path: string, missingOk: boolean): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && missingOk) return '';
    throw new PlanError('E_FILE_READ', `cannot read ${path} (${code ?? (e as Error).message}): its operator lines would be lost; nothing written`);
  }
}

async function checkInputs(ctx: NodeContext, session: pg.Client, input: ApplyInput, plan: Plan, now: Date): Promise<Problem[]> {
  const problems = checkVerifiers(input.desired.roles);
  problems.push(...(await protectedRoleProblems(session, input.desired, ctx.pgUser)));
  problems.push(...(await checkCertificates({ certificates: input.certificates, neededSlots: neededSlots(input), caBundle: input.desired.caBundle, ownerUid: ctx.serverOsUser.uid, now })));
  if (plan.crlFile !== null && input.desired.crl !== null) problems.push(...checkCrl(input.desired.crl, input.desired.caBundle, now));
  return problems;
}

/** Consecutive files of one group (a client certificate and its key) go to installFiles together; every other file alone. */
function installGroups<F extends { group?: string }>(files: F[]): F[][] {
  const out: F[][] = [];
  for (const f of files) {
    const last = out[out.length - 1];
    if (f.group !== undefined && last !== undefined && last[0]!.group === f.group) last.push(f);
    else out.push([f]);
  }
  return out;
}

/** The longest an apply waits for a rotation instant (a coordinator clock far ahead must not stall the node). */
const MAX_SWITCH_WAIT_MS = 10_000;

/** The rotation instant of a desired state, ms since the epoch, or null. */
export function passwordSwitchAt(desired: { passwordsAt?: string }): number | null {
  if (desired.passwordsAt === undefined) return null;
  const at = Date.parse(desired.passwordsAt);
  return Number.isNaN(at) ? null : at;
}

async function installAll(run: Run, files = run.plan.files): Promise<void> {
  const { uid, gid } = run.ctx.serverOsUser;
  for (const group of installGroups(files)) {
    const specs = group.map((f) => {
      const snap = run.snapshots.get(f.path)!;
      // postgresql.conf keeps its own owner and mode: we only append one line to it.
      const owner = f.key === 'config' && snap.exists ? { uid: snap.uid, gid: snap.gid, mode: snap.mode } : { uid, gid, mode: f.mode };
      return { path: f.path, content: Buffer.from(f.content, 'utf8'), ...owner };
    });
    let wrote: boolean[];
    try {
      wrote = await installFiles(specs);
    } catch (e) {
      // A rename failed part way through the group: the files renamed before it are new and
      // go back with the rest; the others were not touched (nothing is renamed if staging failed).
      const renamed = e instanceof InstallError ? e.renamed : group.map((f) => f.path);
      for (const path of renamed) if (!run.changed.includes(path)) run.changed.push(path);
      throw e;
    }
    group.forEach((f, i) => wrote[i] && run.changed.push(f.path));
  }
  if (run.changed.length > 0) run.log.info({ files: run.changed }, 'installed');
}

/** What PostgreSQL's validation views say about the files on disk, against what we rendered. */
async function validationProblems(run: Run): Promise<{ problems: Problem[]; needRestart: string[] }> {
  const { session, plan, layout } = run;
  const sslTurningOn = plan.settings.ssl === 'on' && !run.info.ssl;
  const problems: Problem[] = [];
  problems.push(...checkHbaRows(await hbaFileRules(session), plan.hbaBlock, { sslTurningOn, file: layout.hbaFile }));
  problems.push(...checkIdentRows(await identFileMappings(session), plan.identBlock, layout.identFile));
  const settings = checkFileSettings(await fileSettings(session), layout.includeFile, [...Object.keys(plan.settings), 'pgaccord.config_hash']);
  problems.push(...settings.problems);
  return { problems, needRestart: settings.needRestart };
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

async function servedFor(run: Run): Promise<{ served: Awaited<ReturnType<typeof servedCertificate>>; problem: Problem | null }> {
  const host = tcpHostFor(run.info.listenAddresses);
  if (host === null) return { served: null, problem: { code: 'E_TLS_NOT_PROVED', message: 'listen_addresses is empty: no TCP address to prove the served certificate on' } };
  try {
    return { served: await servedCertificate(host, run.ctx.pgPort), problem: null };
  } catch (e) {
    return { served: null, problem: { code: 'E_TLS_NOT_PROVED', message: `TLS handshake with ${host}:${run.ctx.pgPort} failed: ${(e as Error).message}` } };
  }
}

async function proofProblems(run: Run, timeoutMs: number): Promise<{ problems: Problem[]; served: CertReport | null }> {
  const problems: Problem[] = [];
  const hash = await waitForConfigHash(run.ctx, run.plan.hash, timeoutMs);
  if (!hash.ok) {
    problems.push({ code: 'E_RELOAD_NOT_PROVED', message: `a new session sees configuration hash ${hash.seen ?? '(none)'} instead of ${run.plan.hash}: PostgreSQL did not load the new configuration` });
  }
  const cert = run.plan.serverCertificate;
  if (cert === null) return { problems, served: null };
  const expected = certInfo(await readFile(cert.certPath, 'utf8'));
  // The SSL context is rebuilt in the same SIGHUP as the settings: once the new hash is seen, an
  // old certificate is final (PostgreSQL refused the new SSL files); allow a short grace only.
  const deadline = Date.now() + (hash.ok ? Math.min(timeoutMs, 1000) : timeoutMs);
  for (;;) {
    const { served, problem } = await servedFor(run);
    if (problem === null && served !== null && served.fingerprint256 === expected.fingerprint256) {
      return { problems, served: { id: 'server', serial: served.serial, notAfter: served.notAfter } };
    }
    if (Date.now() >= deadline) {
      if (problem) problems.push(problem);
      else if (served === null) problems.push({ code: 'E_TLS_NOT_PROVED', message: 'the server answers the SSLRequest with N: ssl is not on' });
      else {
        const keyHint = keyModeProblem(cert.keyPath, await lstat(cert.keyPath), run.ctx.serverOsUser.uid);
        problems.push({
          code: 'E_TLS_NOT_PROVED',
          message: `the server still presents certificate serial ${served.serial} instead of ${expected.serial} (${cert.certPath}): PostgreSQL did not load the new SSL configuration ("SSL configuration was not reloaded" in its log)${keyHint ? `; ${keyHint.message}` : ''}`,
        });
      }
      return { problems, served: served ? { id: 'server', serial: served.serial, notAfter: served.notAfter } : null };
    }
    await new Promise((r) => setTimeout(r, 50));
  }
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

/** After the proof: our content-addressed TLS files and a passfile nothing references any more. */
async function cleanup(run: Run): Promise<void> {
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
async function fileReports(run: Run): Promise<Static<typeof FileReport>[]> {
  const paths = run.plan.files.map((f) => f.path);
  const used = new Set(neededSlots(run.input));
  for (const c of run.input.certificates.filter((x: InstalledCertificate) => used.has(x.slot))) paths.push(c.certPath, c.keyPath);
  const reports = await Promise.all([...new Set(paths)].map((p) => describe(p, run.ctx)));
  return reports.filter((r): r is Static<typeof FileReport> => r !== null);
}
