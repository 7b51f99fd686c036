// `pgaccord agent`'s configuration: flags over a YAML file over defaults, checked, and what
// PGDATA/postmaster.pid says of the local server (its port, socket directory, and whether it
// restarted). The runtime wiring is agent/main.ts.
import { closeSync, existsSync, fstatSync, openSync, readFileSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import { UsageError } from '../shared/system/cli.ts';
import { DEFAULT_SOCKET_DIR, DEFAULT_STATE_DIR, KEYS, LOG_LEVELS, camel, type Key } from './options.ts';
import { parseCoordinatorUrls, tokenUrls } from '../shared/contract/join-token.ts';
import { NAME_PATTERN } from '../shared/contract/schema.ts';
import { decodeJoinToken } from './runtime/client.ts';
import type { AgentConfig, NodeContext } from './apply/types.ts';

export type RawConfig = Partial<Record<Key, string>>;

/** Read a YAML config file into flag-named keys; unknown keys are errors that name the key. */
export async function readConfigFile(path: string): Promise<RawConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read config file ${path}: ${(e as Error).message}`);
  }
  // yaml (+13 MB resident) only for an agent that has a config file.
  const YAML = await import('yaml');
  let doc: unknown;
  try {
    doc = YAML.parse(text);
  } catch (e) {
    throw new UsageError(`config file ${path} is not valid YAML: ${(e as Error).message.split('\n')[0]}`);
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new UsageError(`config file ${path} must be a YAML mapping of option: value`);
  const out: RawConfig = {};
  for (const [k, v] of Object.entries(doc as Record<string, unknown>)) {
    const key = KEYS.find((flag) => flag === k || camel(flag) === k);
    if (!key) throw new UsageError(`config file ${path}: unknown key "${k}" (known: ${KEYS.map(camel).join(', ')})`);
    if (key === 'coordinator' && Array.isArray(v)) {
      // A YAML list of coordinators: kept as the comma-separated form the flag also takes.
      if (v.length === 0 || !v.every((x) => typeof x === 'string')) throw new UsageError(`config file ${path}: "${k}" must be a URL or a non-empty list of URLs`);
      out[key] = v.join(',');
      continue;
    }
    if (typeof v !== 'string' && typeof v !== 'number') throw new UsageError(`config file ${path}: "${k}" must be a string or number`);
    out[key] = String(v);
  }
  return out;
}

export interface ResolvedConfig extends AgentConfig {
  /** Every coordinator, in the order tried; coordinatorUrl is the first. */
  coordinatorUrls: string[];
  logLevel: string;
  /** The probe safety timer, ms (--probe-retry). */
  probeRetryMs: number;
  /** The steady state's proving cadence, ms (--prove-every). */
  proveEveryMs: number;
  configFile?: string;
  /** Port and socket directory not given: follow PGDATA/postmaster.pid, which changes when the server is (re)created. */
  followPostmasterPid: { port: boolean; socketDir: boolean };
}

/** postmaster.pid line 4 is the port, line 5 the first socket directory (when the server runs). */
export function readPostmasterPid(pgdata: string): { port?: number; socketDir?: string } {
  try {
    const lines = readFileSync(join(pgdata, 'postmaster.pid'), 'utf8').split('\n');
    const port = Number(lines[3]);
    const socketDir = lines[4]?.trim();
    return { ...(Number.isInteger(port) && port > 0 ? { port } : {}), ...(socketDir ? { socketDir } : {}) };
  } catch {
    return {};
  }
}

/**
 * An idle node proves its state again (apply, SQL checks, probes) this often; in between, each
 * long-poll cycle checks the files and the server's postmaster.pid and reports the last proof
 * (docs/lifecycle.md, "Steady state").
 */
export const PROOF_EVERY_MS = 300_000;

/** postmaster.pid's pid, data directory and start time: new when the server (re)starts; null while it does not run. */
export function serverFingerprint(pgdata: string): string | null {
  try {
    return readFileSync(join(pgdata, 'postmaster.pid'), 'utf8').split('\n').slice(0, 3).join('\n');
  } catch {
    return null;
  }
}

/** The join token from its file, and the file's permission bits (a token others can read is warned about). */
export function readJoinTokenFile(path: string): { token: string; mode: number } {
  try {
    const fd = openSync(path, 'r');
    try {
      return { token: readFileSync(fd, 'utf8').trim(), mode: fstatSync(fd).mode & 0o777 };
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    throw new UsageError(`cannot read --join-token-file ${path}: ${(e as Error).message}`);
  }
}

/** Merge flags over the config file over defaults, and check everything. */
export function resolveConfig(flags: RawConfig, file: RawConfig, configFile?: string): ResolvedConfig {
  const get = (k: Key): string | undefined => flags[k] ?? file[k];
  let joinToken = get('join-token');
  const tokenFile = get('join-token-file');
  if (joinToken === undefined && tokenFile !== undefined) joinToken = readJoinTokenFile(tokenFile).token;
  let tokenUrlList: string[] | undefined;
  if (joinToken !== undefined) {
    try {
      tokenUrlList = tokenUrls(decodeJoinToken(joinToken));
    } catch (e) {
      throw new UsageError(`--join-token: ${(e as Error).message}`);
    }
  }
  const coordinatorText = get('coordinator') ?? tokenUrlList?.join(',');
  let coordinatorUrls: string[];
  try {
    coordinatorUrls = parseCoordinatorUrls(coordinatorText !== undefined ? [coordinatorText] : []);
  } catch (e) {
    throw new UsageError(`--coordinator: ${(e as Error).message}`);
  }
  if (coordinatorUrls.length === 0) throw new UsageError('--coordinator URL is required (or a join token that carries it)');
  const nodeArg = get('node');
  if (!nodeArg) throw new UsageError('--node CLUSTER/NODE is required');
  const parts = nodeArg.split('/');
  const nameRe = new RegExp(NAME_PATTERN);
  if (parts.length !== 2 || !nameRe.test(parts[0]!) || !nameRe.test(parts[1]!)) {
    throw new UsageError(`--node: "${nodeArg}" is not CLUSTER/NODE (each 1-63 of [a-z0-9-], not starting or ending with -)`);
  }
  const pgdataArg = get('pgdata');
  if (!pgdataArg) throw new UsageError('--pgdata DIR is required');
  const pgdata = resolve(pgdataArg);
  if (!existsSync(pgdata) || !statSync(pgdata).isDirectory()) throw new UsageError(`--pgdata: ${pgdata} is not a directory`);
  const pid = readPostmasterPid(pgdata);
  const portText = get('pg-port');
  let pgPort = pid.port ?? 5432;
  if (portText !== undefined) {
    if (!/^\d+$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) throw new UsageError(`--pg-port: "${portText}" is not a port number (1-65535)`);
    pgPort = Number(portText);
  }
  const logLevel = get('log-level') ?? 'info';
  if (!LOG_LEVELS.includes(logLevel)) throw new UsageError(`--log-level: "${logLevel}" is not one of ${LOG_LEVELS.join(', ')}`);
  const probeRetryText = get('probe-retry') ?? '2';
  if (!/^\d+(\.\d+)?$/.test(probeRetryText) || Number(probeRetryText) < 0.1 || Number(probeRetryText) > 3600) throw new UsageError(`--probe-retry: "${probeRetryText}" is not a number of seconds (0.1-3600)`);
  const proveEveryText = get('prove-every') ?? String(PROOF_EVERY_MS / 1000);
  if (!/^\d+$/.test(proveEveryText) || Number(proveEveryText) < 1 || Number(proveEveryText) > 86_400) throw new UsageError(`--prove-every: "${proveEveryText}" is not a whole number of seconds (1-86400)`);
  const stateDir = resolve(get('state-dir') ?? DEFAULT_STATE_DIR);
  const clientHomeArg = get('client-home');
  if (clientHomeArg !== undefined && (clientHomeArg === '' || resolve(clientHomeArg) === '/')) throw new UsageError(`--client-home: "${clientHomeArg}" is not a home directory`);
  const pgHost = get('pg-host') ?? pid.socketDir ?? DEFAULT_SOCKET_DIR;
  if (pgHost.startsWith('/') && !isAbsolute(pgHost)) throw new UsageError(`--pg-host: ${pgHost} is not an absolute path`);
  return {
    coordinatorUrl: coordinatorUrls[0]!,
    coordinatorUrls,
    cluster: parts[0]!,
    node: parts[1]!,
    pgdata,
    pgHost,
    pgPort,
    pgUser: get('pg-user') ?? 'postgres',
    stateDir,
    ...(clientHomeArg !== undefined ? { clientHome: resolve(clientHomeArg) } : {}),
    ...(joinToken !== undefined ? { joinToken } : {}),
    logLevel,
    probeRetryMs: Math.round(Number(probeRetryText) * 1000),
    proveEveryMs: Number(proveEveryText) * 1000,
    followPostmasterPid: { port: portText === undefined, socketDir: get('pg-host') === undefined },
    ...(configFile ? { configFile } : {}),
  };
}

/**
 * The context with the port and socket directory PostgreSQL now runs on, where they were not
 * given: an agent started before its server (pg_autoctl create --pgport P) learns the port
 * when the server appears, without a restart.
 */
export function followPostmaster(ctx: NodeContext, follow: ResolvedConfig['followPostmasterPid']): NodeContext {
  if (!follow.port && !follow.socketDir) return ctx;
  const pid = readPostmasterPid(ctx.pgdata);
  const pgPort = follow.port && pid.port !== undefined ? pid.port : ctx.pgPort;
  const pgHost = follow.socketDir && pid.socketDir !== undefined ? pid.socketDir : ctx.pgHost;
  if (pgPort === ctx.pgPort && pgHost === ctx.pgHost) return ctx;
  ctx.log.info({ pgHost, pgPort, was: { pgHost: ctx.pgHost, pgPort: ctx.pgPort } }, 'local server found at a new address (postmaster.pid)');
  return { ...ctx, pgHost, pgPort };
}
