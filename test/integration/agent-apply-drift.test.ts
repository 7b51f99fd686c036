// Drift: a hand edit of the managed block, a chmod, an edit of the operator's own lines and a
// removed include file are each noticed by the watcher within seconds and repaired by the
// re-apply the runtime then runs; the operator's lines stay exactly as the operator wrote them.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, lstat, readFile, realpath, unlink, writeFile } from 'node:fs/promises';
import { applyDesired } from '../../agent/apply/apply.ts';
import { ownerNamer } from '../../agent/apply/files.ts';
import { watchManagedFiles, type DriftEvent } from '../../agent/runtime/drift.ts';
import type { ApplyInput, ApplyResult } from '../../agent/apply/types.ts';
import { splitManagedBlock } from '../../shared/pgconf/render.ts';
import { agentFixture, psqlAs, ROLE } from '../helpers/agent-fixture.ts';
import { query } from '../helpers/pg.ts';

const f = await agentFixture();

/** Resolve with the next drift event for `path` (fails after `ms`). */
function nextDrift(events: DriftEvent[], waiters: ((e: DriftEvent) => void)[], path: string, ms = 6000): Promise<DriftEvent> {
  const seen = events.find((e) => e.path === path);
  if (seen) {
    events.splice(events.indexOf(seen), 1);
    return Promise.resolve(seen);
  }
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no drift reported for ${path} within ${ms} ms`)), ms);
    waiters.push((e) => {
      if (e.path !== path) return;
      clearTimeout(t);
      events.splice(events.indexOf(e), 1);
      resolve(e);
    });
  });
}

test('drift in the managed block, chmods, operator edits and a removed file: reported within seconds and repaired; operator lines untouched', { timeout: 120_000 }, async () => {
  const hbaPath = await realpath(`${f.pg.dataDir}/pg_hba.conf`);
  const operatorLines = '# operator: backup host\nhost all all 192.0.2.20/32 reject\n';
  await writeFile(hbaPath, `${await readFile(hbaPath, 'utf8')}${operatorLines}`);
  const input: ApplyInput = { desired: f.desired({ auth: 'scram-sha-256', sslmode: 'verify-full' }), certificates: await f.issue('scram-sha-256') };
  let result: ApplyResult = await applyDesired(f.ctx, input);
  assert.equal(result.phase, 'converged', JSON.stringify(result.errors));

  const events: DriftEvent[] = [];
  const waiters: ((e: DriftEvent) => void)[] = [];
  const watcher = watchManagedFiles(result.files, (e) => {
    events.push(e);
    for (const w of [...waiters]) w(e);
  }, { ownerName: ownerNamer(f.ctx), pollMs: 1000, onError: (e) => assert.fail(String(e)) });
  after(() => watcher.close());
  await watcher.ready;

  /** What the runtime does on drift: pause the watcher, re-apply, new baseline. */
  const reapply = async (): Promise<ApplyResult> => {
    watcher.pause();
    const r = await applyDesired(f.ctx, input);
    assert.equal(r.phase, 'converged', JSON.stringify(r.errors));
    watcher.setExpected(r.files);
    return r;
  };
  const operatorPart = async () => splitManagedBlock(await readFile(hbaPath, 'utf8')).rest;
  const original = await readFile(hbaPath, 'utf8');

  // 1. A hand edit inside the managed block: a trust line slipped in.
  const tampered = original.replace('# managed roles get in only through the rules above\n', 'host all all 0.0.0.0/0 trust\n# managed roles get in only through the rules above\n');
  assert.notEqual(tampered, original);
  let t0 = Date.now();
  await writeFile(hbaPath, tampered);
  let ev = await nextDrift(events, waiters, hbaPath);
  assert.deepEqual(ev.kinds, ['content']);
  const detectMs = Date.now() - t0;
  result = await reapply();
  assert.equal(result.changed, true);
  assert.equal(await readFile(hbaPath, 'utf8'), original, 'managed block repaired, operator lines byte for byte');
  const trust = await query(f.pg, "SELECT line_number FROM pg_hba_file_rules WHERE auth_method = 'trust' AND line_number < 20");
  assert.deepEqual(trust, []);

  // 2. chmod of pg_hba.conf (mtime unchanged: only the poll or the raw event sees it).
  t0 = Date.now();
  await chmod(hbaPath, 0o644);
  ev = await nextDrift(events, waiters, hbaPath);
  assert.deepEqual(ev.kinds, ['mode']);
  result = await reapply();
  assert.equal((await lstat(hbaPath)).mode & 0o777, 0o600);

  // 3. chmod of the passfile: libpq would silently ignore it and the login would fail.
  const passfile = result.files.find((x) => x.path.endsWith('/passfile'))!.path;
  await chmod(passfile, 0o644);
  ev = await nextDrift(events, waiters, passfile);
  assert.deepEqual(ev.kinds, ['mode']);
  result = await reapply();
  assert.equal((await lstat(passfile)).mode & 0o777, 0o600);
  assert.equal(await psqlAs(f.pg, result.clientConnections[0]!.conninfo), ROLE);

  // 4. The operator edits their own lines: reported, and the re-apply keeps their edit exactly.
  const edited = (await readFile(hbaPath, 'utf8')).replace('192.0.2.20/32', '192.0.2.21/32');
  await writeFile(hbaPath, edited);
  await nextDrift(events, waiters, hbaPath);
  result = await reapply();
  assert.equal(await readFile(hbaPath, 'utf8'), edited);
  assert.ok((await operatorPart()).endsWith(operatorLines.replace('192.0.2.20/32', '192.0.2.21/32')));

  // 5. The include file removed by hand: recreated (restart would otherwise lose ssl).
  const include = result.files.find((x) => x.path.endsWith('/pgaccord.conf'))!.path;
  await unlink(include);
  ev = await nextDrift(events, waiters, include);
  assert.deepEqual(ev.kinds, ['missing']);
  result = await reapply();
  assert.equal(result.changed, true);
  await lstat(include);
  await f.pg.restart();
  assert.equal(await psqlAs(f.pg, result.clientConnections[0]!.conninfo), ROLE);

  // Our own re-apply is not reported as drift once the baseline is set.
  events.length = 0;
  await reapply();
  await new Promise((r) => setTimeout(r, 1500));
  assert.deepEqual(events, []);
  console.log(`# hand edit detected in ${detectMs} ms`);
});
