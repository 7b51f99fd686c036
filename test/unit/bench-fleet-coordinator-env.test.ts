// bench:fleet's FLEET_COORDINATOR_ENV: an environment (an allocator setting a unit would ship)
// for the coordinator process alone, so a run measures it on the coordinator, not the agents.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { coordinatorEnv } from '../../bench/fleet-processes.ts';

test('FLEET_COORDINATOR_ENV: space-separated VAR=value pairs, a value may hold = and :', () => {
  assert.deepEqual(coordinatorEnv(''), {});
  assert.deepEqual(coordinatorEnv('GLIBC_TUNABLES=glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=131072  LD_PRELOAD=/x.so'), {
    GLIBC_TUNABLES: 'glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=131072',
    LD_PRELOAD: '/x.so',
  });
});

test('FLEET_COORDINATOR_ENV: anything else is refused, not passed on half-read', () => {
  assert.throws(() => coordinatorEnv('GLIBC_TUNABLES'), /FLEET_COORDINATOR_ENV: "GLIBC_TUNABLES" is not VAR=value pairs/);
  assert.throws(() => coordinatorEnv('1X=2'), /not VAR=value pairs/);
});
