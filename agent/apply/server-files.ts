// The files the running server names (hba_file, ident_file, config_file), resolved and refused
// when they are not the PGDATA owner's regular files under PGDATA or the configuration
// directory; and their operator content, read without ever taking a failed read for empty.
import { lstat, readFile, realpath } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Problem } from '../../shared/contract/problem.ts';
import { isWithin, type ServerPaths } from '../../shared/pgconf/layout.ts';
import { PlanError } from '../../shared/pgconf/plan.ts';
import type { ServerInfo } from './pgconf.ts';
import type { NodeContext } from './types.ts';

/**
 * The files the server names (hba_file, ident_file, config_file), resolved. Refused, before
 * anything is read or written, when one resolves outside PGDATA and the server's configuration
 * directory (where config_file is, e.g. /etc/postgresql/15/main), is not a regular file, or is
 * not the PGDATA owner's: a symlink planted there must not make the agent read, rewrite or
 * report (PostgreSQL quotes a refused line) anyone else's file. A missing file (it is then
 * created) is judged by its directory.
 */
export async function serverFiles(ctx: NodeContext, info: ServerInfo): Promise<ServerPaths | Problem> {
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

/**
 * A server-named file with operator content (pg_hba.conf, pg_ident.conf, postgresql.conf). Only
 * "no such file" may read as empty (`missingOk`): taking any other read error for an empty file
 * would write back the managed block alone, and the operator's lines would be gone.
 */
export async function readOperatorFile(path: string, missingOk: boolean): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && missingOk) return '';
    throw new PlanError('E_FILE_READ', `cannot read ${path} (${code ?? (e as Error).message}): its operator lines would be lost; nothing written`);
  }
}
