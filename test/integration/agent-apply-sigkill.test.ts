// At least 100 SIGKILLs at random instants while a child process applies two desired states in
// turn (scram + one server certificate, cert + another server certificate, an ident map and a
// CRL). After every kill, each managed file is wholly one of the two rendered versions with its
// owner and mode, and PostgreSQL finds no error in pg_hba.conf; restarts work; a final apply
// converges and leaves no temporary file behind.
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { lstat, readdir, readFile, realpath, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { applyDesired } from '../../agent/apply/apply.ts';
import { TEMP_PREFIX } from '../../shared/system/atomic-file.ts';
import { layoutFor } from '../../shared/pgconf/layout.ts';
import { planNode, type PlannedFile } from '../../shared/pgconf/plan.ts';
import type { ApplyInput } from '../../agent/apply/types.ts';
import { agentFixture, psqlAs, ROLE } from '../helpers/agent-fixture.ts';
import { makeCrl } from '../helpers/agent-certs.ts';
import { query } from '../helpers/pg.ts';
import type { ChildJob } from '../helpers/agent-apply-child.ts';

const KILLS = Number(process.env.PGACCORD_SIGKILLS ?? 100);
const f = await agentFixture();

interface Expected {
  /** path -> the allowed contents (null: the file may be absent) */
  contents: Map<string, (string | null)[]>;
  modes: Map<string, number>;
}

function expectedFrom(states: ApplyInput[], existing: { hba: string; ident: string; config: string }, layout: ReturnType<typeof layoutFor>): Expected {
  const pemsOf = (s: ApplyInput) => Object.fromEntries(s.certificates.map((c) => [c.slot, { cert: readFileSync(c.certPath, 'utf8'), key: readFileSync(c.keyPath, 'utf8') }]));
  const plans = states.map((s) => planNode({ desired: s.desired, certificates: s.certificates, layout, pems: pemsOf(s), localRole: f.ctx.pgUser, localOsUsers: [f.ctx.agentOsUser, f.ctx.serverOsUser.name], existing }));
  const contents = new Map<string, (string | null)[]>();
  const modes = new Map<string, number>();
  const all = new Set(plans.flatMap((p) => p.files.map((x: PlannedFile) => x.path)));
  for (const path of all) {
    contents.set(path, plans.map((p) => p.files.find((x) => x.path === path)?.content ?? null));
    modes.set(path, plans.flatMap((p) => p.files.filter((x) => x.path === path).map((x) => x.mode))[0]!);
  }
  return { contents, modes };
}

async function temps(dirs: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const d of dirs) for (const n of await readdir(d)) if (n.startsWith(TEMP_PREFIX)) out.push(join(d, n));
  return out;
}

async function assertWhole(exp: Expected, when: string): Promise<void> {
  for (const [path, allowed] of exp.contents) {
    let text: string | null = null;
    try {
      text = await readFile(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    assert.ok(allowed.includes(text), `${when}: ${path} is neither version (${text === null ? 'absent' : `${text.length} bytes`})`);
    if (text !== null) {
      const st = await lstat(path);
      assert.equal(st.mode & 0o7777, exp.modes.get(path), `${when}: mode of ${path}`);
      assert.equal(st.uid, f.pg.osUser.uid, `${when}: owner of ${path}`);
    }
  }
  const errors = await query(f.pg, 'SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL');
  assert.deepEqual(errors, [], `${when}: pg_hba_file_rules`);
  const settings = await query(f.pg, 'SELECT sourcefile, error FROM pg_file_settings WHERE error IS NOT NULL');
  assert.deepEqual(settings, [], `${when}: pg_file_settings`);
}

function runChild(jobFile: string, killAfterMs: number): Promise<{ applied: number; lines: string[] }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'test/helpers/agent-apply-child.ts', jobFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let timer: NodeJS.Timeout | undefined;
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (timer === undefined && out.includes('ready\n')) timer = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
    });
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (signal !== 'SIGKILL') return reject(new Error(`child exited with ${code}/${signal} before the kill: ${err}`));
      const lines = out.split('\n').filter((l) => l.startsWith('applied'));
      resolve({ applied: lines.length, lines });
    });
  });
}

test(`${KILLS} SIGKILLs at random instants during applies: every file wholly old or new, PostgreSQL happy, restart works, next apply converges`, { timeout: 600_000 }, async () => {
  // Operator lines below the block survive everything.
  const hbaPath = await realpath(`${f.pg.dataDir}/pg_hba.conf`);
  await writeFile(hbaPath, `${await readFile(hbaPath, 'utf8')}# operator: reporting replica\nhost all all 192.0.2.10/32 reject\n`);

  const certsA = await f.issue('scram-sha-256');
  const certsB = await f.issue('cert');
  const a: ApplyInput = { desired: f.desired({ auth: 'scram-sha-256', sslmode: 'verify-full', generation: 1, password: 'p:a\\ss' }), certificates: certsA };
  const b: ApplyInput = { desired: f.desired({ auth: 'cert', sslmode: 'verify-full', generation: 2, crl: await makeCrl(f.ca, 48) }), certificates: certsB };
  b.desired.ident.push({ map: 'pgd_cert', systemUser: ROLE, databaseUser: ROLE });
  const first = await applyDesired(f.ctx, a);
  assert.equal(first.phase, 'converged', JSON.stringify(first.errors));

  const hbaNow = await readFile(hbaPath, 'utf8');
  const configPath = await realpath(`${f.pg.dataDir}/postgresql.conf`);
  const existing = { hba: hbaNow, ident: await readFile(`${f.pg.dataDir}/pg_ident.conf`, 'utf8'), config: await readFile(configPath, 'utf8') };
  const layout = layoutFor(f.ctx.stateDir, { hbaFile: hbaPath, identFile: await realpath(`${f.pg.dataDir}/pg_ident.conf`), configFile: configPath });
  const exp = expectedFrom([a, b], existing, layout);
  for (const path of [layout.hbaFile, layout.identFile, layout.includeFile, layout.passfile]) {
    const [va, vb] = exp.contents.get(path)!;
    assert.notEqual(va, vb, `${path} differs between the two states`);
  }
  const dirs = [...new Set([dirname(hbaPath), layout.tlsDir, layout.clientDir])];

  const { ctx } = f;
  const job: ChildJob = { ctx: { pgdata: ctx.pgdata, pgHost: ctx.pgHost, pgPort: ctx.pgPort, pgUser: ctx.pgUser, stateDir: ctx.stateDir, serverOsUser: ctx.serverOsUser, agentOsUser: ctx.agentOsUser }, states: [b, a], start: 0 };
  const jobFile = join(f.pg.baseDir, 'child-job.json');
  await writeFile(jobFile, JSON.stringify(job), { mode: 0o600 });

  // Calibrate: how long one apply takes in a child, so that the kills land inside applies.
  const calibration = await runChild(jobFile, 3000);
  assert.ok(calibration.applied >= 2, `calibration child applied ${calibration.applied} times in 3 s`);
  for (const l of calibration.lines) assert.match(l, /^applied \d+ converged $/);
  const applyMs = 3000 / calibration.applied;
  await assertWhole(exp, 'after calibration');
  let completed = 0;
  let leftTemps = 0;
  for (let i = 0; i < KILLS; i++) {
    job.start = i % 2;
    await writeFile(jobFile, JSON.stringify(job));
    const delay = Math.floor(Math.random() * applyMs * 3);
    const { applied, lines } = await runChild(jobFile, delay);
    completed += applied;
    for (const l of lines) assert.match(l, /^applied \d+ converged $/, `kill ${i}: ${l}`);
    leftTemps += (await temps(dirs)).length;
    await assertWhole(exp, `after kill ${i} (delay ${delay} ms)`);
    if (i % 20 === 19) await f.pg.restart();
  }
  await f.pg.restart();
  // The next run converges, cleans up after the kills, and the client connection works.
  for (const state of [a, b]) {
    const r = await applyDesired(f.ctx, state);
    assert.equal(r.phase, 'converged', JSON.stringify(r.errors));
    assert.deepEqual(await temps(dirs), []);
    await assertWhole(exp, 'after the final apply');
    for (const [path, versions] of exp.contents) {
      const want = versions[state === a ? 0 : 1];
      const have = await readFile(path, 'utf8').catch(() => null);
      assert.equal(have, want, `final ${path}`);
    }
    assert.equal(await psqlAs(f.pg, r.clientConnections[0]!.conninfo), ROLE);
    await f.pg.restart();
  }
  assert.match(await readFile(hbaPath, 'utf8'), /# operator: reporting replica\nhost all all 192\.0\.2\.10\/32 reject\n$/);
  // Some kills must have landed mid-apply (not all before the first or after a finished one).
  console.log(`# ${KILLS} kills (one apply takes ${applyMs.toFixed(0)} ms), ${completed} applies completed in children, ${leftTemps} temp files seen after kills`);
  assert.ok(completed > 0, 'children completed some applies');
});
