// A command loads only what it uses: `--version`, `--help` and the admin CLI's requests start
// without fastify, pg, node-forge, typebox or undici (each costs tens of milliseconds and MB).
// A module resolve hook and the CommonJS cache record every package the process loads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const HEAVY = ['fastify', 'pg', 'node-forge', '@sinclair/typebox', 'undici', 'pino', 'yaml', 'chokidar'];

function packagesLoaded(args: string[]): { packages: string[]; status: number | null; stderr: string } {
  const dir = mkdtempSync('/tmp/pgaccord-cli-footprint-');
  try {
    const trace = join(dir, 'trace');
    writeFileSync(trace, '');
    writeFileSync(join(dir, 'hooks.mjs'), `import { appendFileSync } from 'node:fs';
export async function resolve(specifier, context, next) {
  const r = await next(specifier, context);
  appendFileSync(${JSON.stringify(trace)}, r.url + '\\n');
  return r;
}`);
    // The resolve hook sees ESM imports; what is require()d (createRequire, a package's own
    // CommonJS requires) is in the shared CommonJS cache, listed at exit.
    writeFileSync(
      join(dir, 'register.mjs'),
      `import { register, createRequire } from 'node:module';\nimport { appendFileSync } from 'node:fs';\n` +
        `register(${JSON.stringify(`file://${join(dir, 'hooks.mjs')}`)});\n` +
        `const cache = createRequire(import.meta.url).cache;\n` +
        `process.on('exit', () => appendFileSync(${JSON.stringify(trace)}, Object.keys(cache).join('\\n') + '\\n'));`,
    );
    const r = spawnSync(process.execPath, ['--import', join(dir, 'register.mjs'), 'bin/pgaccord.mjs', ...args], { encoding: 'utf8', timeout: 30_000 });
    const urls = readFileSync(trace, 'utf8').split('\n').filter(Boolean);
    const packages = [...new Set(urls.map((u) => /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(u)?.[1]).filter((p): p is string => p !== undefined))];
    return { packages, status: r.status, stderr: r.stderr };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('--version, --help and status --help load none of the heavy packages', () => {
  for (const args of [['--version'], ['--help'], ['status', '--help'], ['apply', '--help'], ['token', '--help'], ['cert', '--help']]) {
    const r = packagesLoaded(args);
    assert.equal(r.status, 0, `${args.join(' ')}: ${r.stderr}`);
    assert.deepEqual(r.packages.filter((p) => HEAVY.includes(p)), [], `pgaccord ${args.join(' ')} loaded`);
  }
});

test('agent --help loads only the CLI: no HTTP client, no PostgreSQL driver, no CA code, no logger', () => {
  const r = packagesLoaded(['agent', '--help']);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(r.packages.filter((p) => HEAVY.includes(p)), [], 'pgaccord agent --help loaded');
});

test('an agent usage error (a bad flag) is told without loading the runtime either', () => {
  const r = packagesLoaded(['agent', '--no-such-flag']);
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /pgaccord agent: Unknown option '--no-such-flag'/);
  assert.deepEqual(r.packages.filter((p) => HEAVY.includes(p)), [], 'pgaccord agent --no-such-flag loaded');
});

test('an admin request (status against an unreachable coordinator) loads no HTTP client package, no CA code', () => {
  const dir = mkdtempSync('/tmp/pgaccord-cli-footprint-');
  try {
    writeFileSync(join(dir, 'ca.crt'), '-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n');
    writeFileSync(join(dir, 'token'), 'x');
    const r = packagesLoaded(['status', 'demo', '--coordinator', 'https://127.0.0.1:1', '--ca', join(dir, 'ca.crt'), '--token-file', join(dir, 'token')]);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /cannot reach the coordinator at https:\/\/127\.0\.0\.1:1/);
    assert.deepEqual(r.packages.filter((p) => HEAVY.includes(p)), [], 'pgaccord status loaded');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('coordinator --help and its flag errors load only the CLI: no HTTP server, PostgreSQL driver, CA code or logger', () => {
  const cases: { args: string[]; status: number; stderr?: RegExp }[] = [
    { args: ['coordinator', '--help'], status: 0 },
    { args: ['coordinator', '--no-such-flag'], status: 2, stderr: /pgaccord coordinator: Unknown option '--no-such-flag'/ },
    // Checked before the runtime loads: a bad flag in a unit starts nothing (no store, no CA).
    { args: ['coordinator', '--long-poll', '0'], status: 1, stderr: /--long-poll must be 1\.\.300 seconds/ },
    { args: ['coordinator', '--tls-key-type', 'dsa'], status: 1, stderr: /--tls-key-type: "dsa" is not one of/ },
    { args: ['coordinator', '--max-connections', '0'], status: 1, stderr: /--max-connections: "0" is not a number of connections/ },
    { args: ['coordinator', '--identity-lifetime', '30s'], status: 1, stderr: /--identity-lifetime: "30s" is not a duration of at least 1m/ },
  ];
  for (const c of cases) {
    const r = packagesLoaded(c.args);
    assert.equal(r.status, c.status, `${c.args.join(' ')}: ${r.stderr}`);
    if (c.stderr) assert.match(r.stderr, c.stderr);
    assert.deepEqual(r.packages.filter((p) => HEAVY.includes(p)), [], `pgaccord ${c.args.join(' ')} loaded`);
  }
});

test('coordinator --help starts about as fast as --version (it loaded the whole coordinator: ~10 times slower)', () => {
  // Against --version measured in the same moments rather than a fixed bound in ms: a loaded
  // machine slows both alike. Medians of interleaved runs: the lazy command costs 1.1-1.4 times
  // --version (measured at a load average of 10 on two cores), the whole coordinator 7-10 times.
  const wall = (args: string[]) => {
    const t0 = process.hrtime.bigint();
    const r = spawnSync(process.execPath, ['bin/pgaccord.mjs', ...args], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 0, `${args.join(' ')}: ${r.stderr}`);
    return Number(process.hrtime.bigint() - t0) / 1e6;
  };
  const median = (xs: number[]) => xs.sort((a, b) => a - b)[(xs.length - 1) >> 1]!;
  const version: number[] = [];
  const help: number[] = [];
  wall(['coordinator', '--help']); // the page cache
  for (let i = 0; i < 7; i++) {
    version.push(wall(['--version']));
    help.push(wall(['coordinator', '--help']));
  }
  assert.ok(median(help) < 2.5 * median(version), `coordinator --help ${median(help).toFixed(0)} ms against --version ${median(version).toFixed(0)} ms`);
});

test('pgaccord agent re-executes itself, same pid, without the optimising compilers of V8; the other commands run as started', { skip: typeof (process as { execve?: unknown }).execve !== 'function' && 'this node has no process.execve' }, () => {
  // A preload records each process image that starts: the launcher's, then the agent's after execve.
  const dir = mkdtempSync('/tmp/pgaccord-cli-footprint-');
  try {
    const trace = join(dir, 'trace');
    writeFileSync(join(dir, 'record.mjs'), `import { appendFileSync } from 'node:fs';\nappendFileSync(${JSON.stringify(trace)}, JSON.stringify({ pid: process.pid, execArgv: process.execArgv }) + '\\n');\n`);
    const images = (args: string[], status: number) => {
      writeFileSync(trace, '');
      const r = spawnSync(process.execPath, ['--import', join(dir, 'record.mjs'), 'bin/pgaccord.mjs', ...args], { encoding: 'utf8', timeout: 30_000 });
      assert.equal(r.status, status, `${args.join(' ')}: ${r.stderr}`);
      return { stderr: r.stderr, images: readFileSync(trace, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { pid: number; execArgv: string[] }) };
    };
    const agent = images(['agent', '--no-such-flag'], 2);
    assert.match(agent.stderr, /pgaccord agent: Unknown option '--no-such-flag'/);
    assert.equal(agent.images.length, 2, JSON.stringify(agent.images));
    assert.equal(agent.images[1]!.pid, agent.images[0]!.pid, 'execve keeps the pid');
    assert.ok(!agent.images[0]!.execArgv.includes('--no-opt'));
    for (const f of ['--no-opt', '--no-maglev', '--liftoff-only']) assert.ok(agent.images[1]!.execArgv.includes(f), JSON.stringify(agent.images[1]));
    assert.ok(agent.images[1]!.execArgv.includes('--import'), 'the node options it was started with are kept');
    for (const args of [['--version'], ['status', '--help'], ['agent', '--help']]) assert.equal(images(args, 0).images.length, 1, `pgaccord ${args.join(' ')} re-executed`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
