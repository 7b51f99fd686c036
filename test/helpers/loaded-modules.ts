// What a node process loads: a module resolve hook records every ESM import, and the CommonJS
// cache (what is require()d: createRequire, a package's own requires) is listed at exit.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface Loaded {
  /** Every module URL or CommonJS path the process loaded. */
  modules: string[];
  /** The npm packages among them (by their node_modules folder). */
  packages: string[];
  status: number | null;
  stderr: string;
}

/** Runs `node --import <recorder> ...args` in the repository and lists what it loaded. */
export function modulesLoaded(args: string[]): Loaded {
  const dir = mkdtempSync('/tmp/pgaccord-loaded-');
  try {
    const trace = join(dir, 'trace');
    writeFileSync(trace, '');
    writeFileSync(join(dir, 'hooks.mjs'), `import { appendFileSync } from 'node:fs';
export async function resolve(specifier, context, next) {
  const r = await next(specifier, context);
  appendFileSync(${JSON.stringify(trace)}, r.url + '\\n');
  return r;
}`);
    writeFileSync(
      join(dir, 'register.mjs'),
      `import { register, createRequire } from 'node:module';\nimport { appendFileSync } from 'node:fs';\n` +
        `register(${JSON.stringify(`file://${join(dir, 'hooks.mjs')}`)});\n` +
        `const cache = createRequire(import.meta.url).cache;\n` +
        `process.on('exit', () => appendFileSync(${JSON.stringify(trace)}, Object.keys(cache).join('\\n') + '\\n'));`,
    );
    const r = spawnSync(process.execPath, ['--import', join(dir, 'register.mjs'), ...args], { encoding: 'utf8', timeout: 30_000 });
    const modules = [...new Set(readFileSync(trace, 'utf8').split('\n').filter(Boolean))];
    const packages = [...new Set(modules.map((u) => /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(u)?.[1]).filter((p): p is string => p !== undefined))];
    return { modules, packages, status: r.status, stderr: r.stderr };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The agent's runtime as its unit runs it: agent/main.js of a dist/, and what main.ts imports lazily. */
export const AGENT_RUNTIME = ['agent/main.js', 'agent/apply/apply.js', 'agent/runtime/drift.js', 'agent/apply/files.js'];

/** What loading the agent's runtime from `dist` loads. */
export function agentRuntimeLoaded(dist: string): Loaded {
  return modulesLoaded(['--input-type=module', '-e', AGENT_RUNTIME.map((m) => `await import(${JSON.stringify(join(dist, m))});`).join('\n')]);
}
