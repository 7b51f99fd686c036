// A stand-in `psql` for the reconcile loop's unit tests: a shell script that speaks the batched
// probe protocol of agent/probe/probes.ts (psql <first conninfo> ... then, per edge, `-c \echo
// MARK`, `-c \warn MARK`, a `-c \connect <conninfo>` for every edge after the first, `-c \conninfo`
// and `-c 'SELECT 1'`): the marks echoed to stdout and stderr, a row per query of a connected edge.
import { chmod, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface StandInPsqlOptions {
  /** Each run first sleeps this long (what a probe pass's measured duration must account for). */
  delayMs?: number;
  /**
   * Connect to a host only once the flag file `<dir>/up-<host>` exists (else psql's refusal on
   * stderr), and append every host asked for, in order, to `<dir>/probed`. Without it every edge
   * connects.
   */
  upFlags?: boolean;
}

/** Writes the script as `<dir>/psql`, executable, and returns its path. */
export async function writeStandInPsql(dir: string, opts: StandInPsqlOptions = {}): Promise<string> {
  const path = join(dir, 'psql');
  const lines = ['#!/bin/sh'];
  if (opts.delayMs) lines.push(`sleep ${opts.delayMs / 1000}`);
  if (opts.upFlags) {
    lines.push(
      String.raw`host() { printf '%s\n' "$1" | sed 's/.*host=\([^ ]*\).*/\1/'; }`,
      'h=$(host "$1"); shift',
      'echo "$h" >> DIR/probed',
      '[ -e "DIR/up-$h" ] || { echo "psql: error: $h not ready" >&2; exit 2; }',
    );
  }
  lines.push(
    'up=1',
    'while [ $# -gt 0 ]; do',
    '  if [ "$1" = "-c" ]; then',
    '    c="$2"; shift 2',
    '    case "$c" in',
    String.raw`      '\echo '*) printf '%s\n' "$c" | cut -c7-;;`,
    String.raw`      '\warn '*) printf '%s\n' "$c" | cut -c7- >&2;;`,
  );
  if (opts.upFlags) {
    lines.push(String.raw`      '\connect '*) h=$(host "$c"); echo "$h" >> DIR/probed; if [ -e "DIR/up-$h" ]; then up=1; else up=0; echo "$h not ready" >&2; fi;;`);
  }
  lines.push(
    "      'SELECT 1') [ $up = 1 ] && echo 1;;",
    '    esac',
    '  else shift; fi',
    'done',
    '',
  );
  await writeFile(path, lines.join('\n').replaceAll('DIR', dir));
  await chmod(path, 0o755);
  return path;
}
