#!/usr/bin/env node
// Launcher: runs the compiled JavaScript in dist/ with plain node (`npm run build` makes it;
// .ci/setup, `npm test` and `npm pack` run the build). A checkout without it gets told so.
import { existsSync } from 'node:fs';

const entry = new URL('../dist/bin/main.js', import.meta.url);
if (!existsSync(entry)) {
  console.error('pgaccord: not built (dist/bin/main.js is missing): run `npm run build` in this checkout first');
  process.exit(1);
}
const { main } = await import(entry.href);
process.exitCode = await main(process.argv.slice(2));
