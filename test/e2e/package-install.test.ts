// What ships: `npm pack` builds the tarball, `npm install -g` puts it in a fresh prefix, and the
// installed `pgaccord` runs there with plain node and production dependencies only (no tsx, no
// typescript): --version, the whole demo, and its systemd units pass systemd's checks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, '..', '..');
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

test('npm pack, npm install -g into a temporary prefix: the installed pgaccord runs --version and the demo', { timeout: 600_000 }, async () => {
  const tmp = await mkdtemp('/tmp/pgaccord-package-');
  // As npm's own global prefix is: agents that drop to the postgres user still read their code.
  await chmod(tmp, 0o755);
  try {
    const packed = await run('npm', ['pack', '--json', '--pack-destination', tmp], { cwd: ROOT, timeout: 180_000 });
    const [info] = JSON.parse(packed.stdout.slice(packed.stdout.indexOf('['))) as { filename: string; files: { path: string }[] }[];
    const shipped = info!.files.map((f) => f.path);
    assert.ok(shipped.includes('dist/bin/main.js') && shipped.includes('bin/pgaccord.mjs'), shipped.join(' '));
    assert.ok(shipped.includes('systemd/pgaccord-agent.service') && shipped.includes('systemd/pgaccord-coordinator.service'));
    assert.ok(!shipped.some((f) => f.endsWith('.ts') || f.startsWith('test/')), `no sources or tests shipped: ${shipped.filter((f) => f.endsWith('.ts'))}`);

    // --prefer-offline: `npm ci` already filled the cache with every dependency.
    const prefix = join(tmp, 'prefix');
    await run('npm', ['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', join(tmp, info!.filename)], { timeout: 300_000 });
    const installed = join(prefix, 'lib', 'node_modules', 'pgaccord');
    for (const dev of ['tsx', 'typescript', 'fast-check']) assert.equal(existsSync(join(installed, 'node_modules', dev)), false, `${dev} is not installed with the package`);
    const bin = join(prefix, 'bin', 'pgaccord');

    const version = await run(bin, ['--version'], { timeout: 30_000 });
    assert.equal(version.stdout.trim(), `pgaccord ${VERSION}`);

    const dir = join(tmp, 'demo');
    const demo = await run(bin, ['demo', '--exit', '--dir', dir, '--timeout', '180'], { timeout: 300_000, env: { ...process.env, PATH: `${join(prefix, 'bin')}:${process.env.PATH}` } });
    assert.match(demo.stdout, /cluster demo +generation 1 +auth cert +sslmode verify-full +CONVERGED/);
    for (const node of ['node-1', 'node-2', 'node-3']) assert.match(demo.stdout, new RegExp(`${node} +1 +1 +converged .* 2/2 ok`));

    for (const unit of ['pgaccord-agent.service', 'pgaccord-coordinator.service']) {
      const verify = await run('systemd-analyze', ['verify', join(installed, 'systemd', unit)], { env: { ...process.env, PATH: `${join(prefix, 'bin')}:${process.env.PATH}` } });
      assert.equal(`${verify.stdout}${verify.stderr}`.trim(), '', unit);
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
});
