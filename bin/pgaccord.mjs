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
// The coordinator holds a long-poll (a TLS connection) per agent: with V8's default limits its
// heap grew to gigabytes, mostly garbage, and the native memory of closed connections (OpenSSL's
// buffers) goes back only when their JS wrappers are collected. A bounded old generation is
// collected long before that (issue 13, bench:fleet with 512 MB: 2,500 agents 854 -> 503 MB at
// the peak, the same CPU per change; 10,000 agents 2,147 -> 1,430 MB, most of it malloc'd TLS
// memory). 1 GB keeps a margin over the 200-node cluster (~600 MB resident, unbounded). An
// operator's own limit, on node's command line or in NODE_OPTIONS, is kept.
const COORDINATOR_NODE_FLAGS = ['--max-old-space-size=1024', '--max-semi-space-size=4'];
const help = process.argv.includes('--help') || process.argv.includes('-h'); // printed without a second start
// V8 reads --max_old_space_size as --max-old-space-size: either spelling is the operator's limit.
const given = `${process.execArgv.join(' ')} ${process.env.NODE_OPTIONS ?? ''}`.replaceAll('_', '-');
const flags = process.argv[2] === 'agent' ? AGENT_NODE_FLAGS
  : process.argv[2] === 'coordinator' ? COORDINATOR_NODE_FLAGS.filter((f) => !given.includes(f.split('=')[0]))
  : [];
if (flags.length > 0 && !help && !flags.every((f) => process.execArgv.includes(f))) {
  if (typeof process.execve === 'function') {
    process.execve(process.execPath, [process.execPath, ...flags, ...process.execArgv, ...process.argv.slice(1)]);
  } else if (process.argv[2] === 'coordinator' && flags.includes(COORDINATOR_NODE_FLAGS[0])) {
    // Without execve the flags cannot be applied here: an unbounded coordinator heap is said, once.
    console.error(`pgaccord coordinator: warning: this node has no process.execve, so the V8 heap is not bounded; bound it with NODE_OPTIONS=${COORDINATOR_NODE_FLAGS[0]}`);
  }
}

const entry = new URL('../dist/bin/main.js', import.meta.url);
if (!existsSync(entry)) {
  console.error('pgaccord: not built (dist/bin/main.js is missing): run `npm run build` in this checkout first');
  process.exit(1);
}
const { main } = await import(entry.href);
process.exitCode = await main(process.argv.slice(2));
