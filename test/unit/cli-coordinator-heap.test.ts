// `pgaccord coordinator` runs with a bounded V8 heap (issue 13): with V8's defaults the heap grew
// to gigabytes of garbage while 10,000 long-polls were held, and the native memory of closed
// connections went back only when their JS wrappers were collected. bin/pgaccord.mjs re-executes
// the coordinator (same pid) with heap limits, unless the operator set a limit of their own.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const skip = typeof (process as { execve?: unknown }).execve !== 'function' && 'this node has no process.execve';

/** Each process image `pgaccord ARGS` starts (a preload records pid and execArgv), with its exit status and stderr. */
function images(args: string[], env: NodeJS.ProcessEnv = {}): { status: number | null; stderr: string; images: { pid: number; execArgv: string[] }[] } {
  const dir = mkdtempSync('/tmp/pgaccord-cli-heap-');
  try {
    const trace = join(dir, 'trace');
    writeFileSync(trace, '');
    writeFileSync(join(dir, 'record.mjs'), `import { appendFileSync } from 'node:fs';\nappendFileSync(${JSON.stringify(trace)}, JSON.stringify({ pid: process.pid, execArgv: process.execArgv }) + '\\n');\n`);
    const r = spawnSync(process.execPath, ['--import', join(dir, 'record.mjs'), 'bin/pgaccord.mjs', ...args], { encoding: 'utf8', timeout: 30_000, env: { ...process.env, ...env } });
    return { status: r.status, stderr: r.stderr, images: readFileSync(trace, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { pid: number; execArgv: string[] }) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const limitOf = (execArgv: string[], flag: string) => execArgv.filter((f) => f.startsWith(`${flag}=`)).map((f) => Number(f.slice(flag.length + 1)));

test('pgaccord coordinator re-executes itself, same pid, with a bounded old and young generation', { skip }, () => {
  const r = images(['coordinator', '--no-such-flag'], { NODE_OPTIONS: '' });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /pgaccord coordinator: Unknown option '--no-such-flag'/);
  assert.equal(r.images.length, 2, JSON.stringify(r.images));
  assert.equal(r.images[1]!.pid, r.images[0]!.pid, 'execve keeps the pid');
  const [old] = limitOf(r.images[1]!.execArgv, '--max-old-space-size');
  const [semi] = limitOf(r.images[1]!.execArgv, '--max-semi-space-size');
  assert.ok(old !== undefined && old >= 512 && old <= 2048, `old generation bounded: ${JSON.stringify(r.images[1])}`);
  assert.ok(semi !== undefined && semi <= 8, `young generation bounded: ${JSON.stringify(r.images[1])}`);
  assert.ok(r.images[1]!.execArgv.includes('--import'), 'the node options it was started with are kept');
  assert.equal(images(['coordinator', '--help']).images.length, 1, 'coordinator --help prints without a second start');
});

test('an operator\'s own heap limit (on node\'s command line or in NODE_OPTIONS) is kept, not overridden', { skip }, () => {
  for (const env of [{ NODE_OPTIONS: '--max-old-space-size=3000' }, { NODE_OPTIONS: '--max_old_space_size=3000' }]) {
    const r = images(['coordinator', '--no-such-flag'], env);
    assert.equal(r.status, 2, r.stderr);
    const last = r.images.at(-1)!;
    assert.deepEqual(limitOf(last.execArgv, '--max-old-space-size'), [], `no limit of ours beside NODE_OPTIONS's: ${JSON.stringify(r.images)}`);
  }
  const dir = mkdtempSync('/tmp/pgaccord-cli-heap-');
  try {
    const out = join(dir, 'limit');
    writeFileSync(join(dir, 'limit.mjs'), `import { writeFileSync } from 'node:fs';\nwriteFileSync(${JSON.stringify(out)}, JSON.stringify(process.execArgv));\n`);
    const r = spawnSync(process.execPath, ['--max-old-space-size=3000', '--import', join(dir, 'limit.mjs'), 'bin/pgaccord.mjs', 'coordinator', '--no-such-flag'], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 2, r.stderr);
    assert.deepEqual(limitOf(JSON.parse(readFileSync(out, 'utf8')) as string[], '--max-old-space-size'), [3000]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('on a node without process.execve the coordinator says, in one line, that its heap is not bounded and how to bound it', () => {
  const dir = mkdtempSync('/tmp/pgaccord-cli-heap-');
  try {
    // The preload takes execve away, as an older node has none.
    writeFileSync(join(dir, 'no-execve.mjs'), 'delete process.execve;\n');
    const run = (args: string[], env: NodeJS.ProcessEnv) => spawnSync(process.execPath, ['--import', join(dir, 'no-execve.mjs'), 'bin/pgaccord.mjs', ...args], { encoding: 'utf8', timeout: 30_000, env: { ...process.env, ...env } });
    const r = run(['coordinator', '--no-such-flag'], { NODE_OPTIONS: '' });
    assert.equal(r.status, 2, r.stderr);
    const warnings = r.stderr.split('\n').filter((l) => /heap/.test(l));
    assert.equal(warnings.length, 1, r.stderr);
    assert.match(warnings[0]!, /^pgaccord coordinator: warning: .*not bounded.*NODE_OPTIONS=--max-old-space-size=1024/);
    for (const [args, env] of [[['coordinator', '--no-such-flag'], { NODE_OPTIONS: '--max-old-space-size=3000' }], [['coordinator', '--help'], { NODE_OPTIONS: '' }], [['agent', '--no-such-flag'], { NODE_OPTIONS: '' }]] as const) {
      assert.doesNotMatch(run([...args], env).stderr, /heap/, `no warning for ${args.join(' ')} with ${JSON.stringify(env)}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
