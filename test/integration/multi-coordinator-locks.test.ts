// Lock order of the CA-rotation steps (issue 11 item 1): every writer of a CRL or a generation
// takes the cluster row first. A revocation (on another coordinator, or this one) holds the
// cluster row and then takes the CRL number; a rotation step that took the CRL number before the
// cluster row deadlocked with it (PostgreSQL aborts one of the two). Here the "revocation" is a
// transaction of the test that holds the cluster row while the step runs, then takes the CRL
// number: both must complete. The nodes' evidence is written to the store as their reports.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type pg from 'pg';
import { pgdSpec, startHarness, type Harness } from '../helpers/coordinator-harness.ts';
import { waitFor } from '../helpers/agent-process.ts';
import { minimalReport, putStoredReport } from '../helpers/stored-report.ts';

let h: Harness;
before(async () => {
  h = await startHarness();
  await h.coord.service.putCluster('locks', pgdSpec('locks'));
});
after(() => h?.close());

/** Every node reports it applied `generation`, converged, every probe ok (a report of today's shape: a partial one is unreadable, never proof). */
async function proved(generation: number): Promise<void> {
  for (const node of ['node-1', 'node-2', 'node-3']) await putStoredReport(h.coord.store, 'locks', node, minimalReport(generation));
}

/**
 * Hold the cluster row as a revocation does, run `step`, wait until it waits on a lock, then take
 * the next CRL number as the revocation's CRL issue (coordinator/service/crls.ts) does, and commit.
 */
async function raceWithRevocation<T>(step: () => Promise<T>): Promise<T> {
  const c: pg.PoolClient = await h.coord.store.pool.connect();
  try {
    await c.query('BEGIN');
    await c.query(`SELECT 1 FROM clusters WHERE name = 'locks' FOR UPDATE`);
    const pid = (await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
    let settled: unknown = null;
    const running = step();
    running.then((v) => (settled = { resolved: v }), (e: unknown) => (settled = { rejected: String(e) }));
    await waitFor('the rotation step to wait on a lock', async () => {
      if (settled) throw new Error(`the step ended without waiting: ${JSON.stringify(settled).slice(0, 300)}`);
      // From another session: pg_stat_activity is a snapshot per transaction.
      return (await h.coord.store.query(`SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND pid <> $1 AND wait_event_type = 'Lock'`, [pid])).length > 0;
    }, 10_000, 20);
    await c.query(`INSERT INTO crl_numbers (cluster, last_number) VALUES ('locks', 1) ON CONFLICT (cluster) DO UPDATE SET last_number = crl_numbers.last_number + 1`);
    await c.query('COMMIT');
    return await running;
  } catch (e) {
    await c.query('ROLLBACK').catch(() => undefined);
    throw e;
  } finally {
    c.release();
  }
}

test('a CA rotation step and a revocation holding the cluster row both complete: no deadlock (advance to reissue, then finish)', async () => {
  const started = await h.coord.service.startCaRotation('locks');
  assert.equal(started.phase, 'trust');
  const trustGeneration = started.trustGeneration!;
  await proved(trustGeneration);
  const advanced = await raceWithRevocation(() => h.coord.service.caRotationStatus('locks'));
  assert.equal(advanced.phase, 'reissue', 'the step was taken');
  await proved(advanced.reissueGeneration!);
  const finished = await raceWithRevocation(() => h.coord.service.finishCaRotation('locks'));
  assert.equal(finished.phase, 'none', 'the rotation finished');
  // The CRL numbers stayed consecutive: the revocations' two and each step's own.
  const n = (await h.coord.store.query<{ last_number: string; number: string }>(`SELECT k.last_number, c.number FROM crl_numbers k JOIN cluster_crls c USING (cluster) WHERE cluster = 'locks'`))[0]!;
  assert.equal(n.number, n.last_number, 'the stored CRL has the last number taken');
});
