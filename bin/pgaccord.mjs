#!/usr/bin/env node
// Launcher: runs the compiled JavaScript in dist/ with plain node (`npm run build` makes it;
// .ci/setup, `npm test` and `npm pack` run the build). A checkout without it gets told so.
import { existsSync } from 'node:fs';

// The agent is a daemon that mostly waits: without V8's optimising compilers (TurboFan, Maglev;
// WebAssembly, which undici's HTTP parser is, kept on its baseline compiler) it is ~18 MB smaller
// (94 -> 77 MB resident idle, Node 24): no 10 MB malloc arena of background compilation, ~9 MB of
// compiler code pages never touched. node takes these V8 flags only on its own command line (not
// in NODE_OPTIONS; set at run time they do nothing), so `pgaccord agent` re-executes itself with
// them: execve keeps the pid, so systemd's MAINPID and NOTIFY_SOCKET stay right. A node without
// process.execve runs as it is. --lite-mode and --jitless turn WebAssembly off.
const AGENT_NODE_FLAGS = ['--no-opt', '--no-maglev', '--liftoff-only', '--no-wasm-tier-up'];
const agentHelp = process.argv.includes('--help') || process.argv.includes('-h'); // printed without a second start
if (process.argv[2] === 'agent' && !agentHelp && typeof process.execve === 'function' && !AGENT_NODE_FLAGS.every((f) => process.execArgv.includes(f))) {
  process.execve(process.execPath, [process.execPath, ...AGENT_NODE_FLAGS, ...process.execArgv, ...process.argv.slice(1)]);
}

const entry = new URL('../dist/bin/main.js', import.meta.url);
if (!existsSync(entry)) {
  console.error('pgaccord: not built (dist/bin/main.js is missing): run `npm run build` in this checkout first');
  process.exit(1);
}
const { main } = await import(entry.href);
process.exitCode = await main(process.argv.slice(2));
