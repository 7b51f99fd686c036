// The probe's second quoting layer against the real client: one psql run probes several edges,
// each after the first with `\connect <conninfo>` (agent/probe/probes.ts batchArgs), over a
// connection string the compiler built with shared/pgconf/escape.ts conninfo(). What reaches
// libpq must be exactly that string, whatever the values in it hold. The oracle is the server:
// a role per sample, and `SELECT current_user` after its \connect must name it exactly (compared
// as the hex of its bytes). (psql's
// \echo would not do: it reads its argument as a plain option, \connect as an identifier, whose
// double quotes psql strips.)
//
// What a conninfo can hold: conninfoValue refuses only NUL, so a value may hold any other
// character (quotes, backslashes, spaces, '=', newlines, control characters, any Unicode; argv
// cannot carry NUL anyway). The samples are role names, the one value here that the server
// echoes back unchanged: at most 63 bytes (NAMEDATALEN) and not a reserved role name.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { test } from 'node:test';
import fc from 'fast-check';
import { batchArgs, resolvePsql } from '../../agent/probe/probes.ts';
import { conninfo, sqlIdentifier } from '../../shared/pgconf/escape.ts';
import type { ClientConnection } from '../../shared/pgconf/types.ts';
import { query, throwawayPg } from '../helpers/pg.ts';

const pg = await throwawayPg(); // local connections trusted, over its private socket
const MARK = '@@quoting ';

const ascii = fc.string({ unit: fc.integer({ min: 1, max: 0x7f }).map((c) => String.fromCharCode(c)), minLength: 1, maxLength: 24 });
const unicode = fc.string({ unit: 'binary', minLength: 1, maxLength: 12 });
// Built from what means something to libpq's conninfo parser, psql's lexer or its identifier dequoting.
const nasty = fc.array(fc.constantFrom("'", "''", '"', '""', '\\', '\\\\', ' ', '=', '\n', '\r', '\t', ';', ':', ':USER', '`', '|', '\\n', '\\x41', '\\101', 'é', '😀', '\x01', '\x7f', 'a', 'Z'), { minLength: 1, maxLength: 10 })
  .map((parts) => parts.join(''));
const RESERVED = new Set(['public', 'none', 'current_user', 'session_user', 'current_role']);
const roleName = fc.oneof(ascii, unicode, nasty)
  .filter((s) => !s.includes('\0') && Buffer.byteLength(s) <= 63 && !s.startsWith('pg_') && !RESERVED.has(s));

const created = new Set<string>(['postgres']);
async function ensureRoles(names: string[]): Promise<void> {
  const fresh = [...new Set(names)].filter((n) => !created.has(n));
  if (fresh.length === 0) return;
  await query(pg, fresh.map((n) => `CREATE ROLE ${sqlIdentifier(n)} LOGIN;`).join('\n'));
  for (const n of fresh) created.add(n);
}

const edge = (user: string): ClientConnection => ({
  to: 'peer', role: user, replication: false,
  conninfo: conninfo({ host: pg.socketDir, port: pg.port, dbname: 'postgres', user, sslmode: 'disable' }),
});

/** One psql run: the first connection as batchArgs passes it, then per name batchArgs' own \connect and the server's current_user. */
function runPsql(names: string[]): Promise<{ stdout: string; stderr: string }> {
  const conns = [edge('postgres'), ...names.map(edge)];
  const args = batchArgs(conns);
  const connects = args.filter((a) => a.startsWith('\\connect '));
  assert.equal(connects.length, names.length);
  const script = [conns[0]!.conninfo, '-X', '-q', '-w', '-A', '-t'];
  // current_user as the hex of its UTF-8 bytes: psql's display drops some characters (U+10FFFE came
  // back as an empty line under LC_ALL=C), which the oracle must not take for a wrong role.
  connects.forEach((c, i) => script.push('-c', `\\echo ${MARK}${i}`, '-c', c, '-c', "SELECT encode(convert_to(current_user, 'UTF8'), 'hex')"));
  return new Promise((resolve, reject) => {
    const child = spawn(resolvePsql(), script, {
      env: { PATH: process.env.PATH, LC_ALL: 'C', HOME: pg.baseDir, PGCONNECT_TIMEOUT: '10' },
      cwd: '/', stdio: ['ignore', 'pipe', 'pipe'], uid: pg.osUser.uid, gid: pg.osUser.gid,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    child.on('error', reject);
    child.on('close', () => resolve({ stdout, stderr }));
  });
}

test('\\connect with batchArgs\' quoting reaches the server as exactly the role named in the conninfo, for any role name', async () => {
  let samples = 0;
  let runs = 0;
  const t0 = performance.now();
  await fc.assert(fc.asyncProperty(fc.array(roleName, { minLength: 10, maxLength: 40 }), async (names) => {
    await ensureRoles(names);
    const { stdout, stderr } = await runPsql(names);
    samples += names.length;
    runs++;
    const got = stdout.split(new RegExp(`^${MARK}`, 'm')).slice(1);
    names.forEach((name, i) => {
      const want = `${i}\n${Buffer.from(name, 'utf8').toString('hex')}\n`;
      assert.equal(got[i], want, `role ${JSON.stringify(name)} (conninfo ${JSON.stringify(edge(name).conninfo)}): psql said ${JSON.stringify(got[i])}; stderr ${JSON.stringify(stderr.slice(0, 400))}`);
    });
    assert.equal(got.length, names.length);
  }), {
    numRuns: 15,
    examples: [[['\u{10FFFE}', 'we"ird', '"', '""', "it's", 'a\\b', 'sp ace', 'nl\nx', 'x;', ':USER', '`id`', 'é😀']]],
  });
  const t = (performance.now() - t0) / 1000;
  console.log(`# ${samples} role names through batchArgs' \\connect in ${runs} psql runs, ${t.toFixed(1)} s`);
  assert.ok(samples >= 100, `${samples} role names through \\connect`);
});
