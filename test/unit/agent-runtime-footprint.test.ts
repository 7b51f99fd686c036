// The agent's runtime validates what the coordinator answers with checkers generated from the
// TypeBox schemas (shared/contract/checks.generated.ts), not with TypeBox itself: its 247 modules
// cost an idle agent ~3.5 MB resident. This loads the runtime as the unit runs it (dist/, built
// by bin/run-tests.mjs), with the modules agent/main.ts imports lazily.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { agentRuntimeLoaded } from '../helpers/loaded-modules.ts';

test("the agent's runtime loads no TypeBox module", () => {
  const r = agentRuntimeLoaded(join(import.meta.dirname, '..', '..', 'dist'));
  assert.equal(r.status, 0, r.stderr);
  assert.ok(r.modules.some((m) => m.endsWith('/dist/agent/runtime/loop.js')), 'the reconcile loop was loaded');
  const typebox = r.modules.filter((m) => m.includes('/@sinclair/typebox/'));
  assert.equal(typebox.length, 0, `${typebox.length} TypeBox modules loaded, the first ${typebox[0]}`);
});
