// The apply-duration histogram is fed from the phases the agents report (shared/contract/schema.ts
// ApplyTimings): once per node and generation, each phase in pgaccord_apply_phase_seconds, the
// report phase (known from the next report on) once when it arrives; an agent that reports no
// timings is still observed the old way (delivery to report, as seen by the coordinator).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { CoordinatorMetrics } from '../../coordinator/http/metrics.ts';
import type { ApplyTimings } from '../../shared/contract/status.ts';

const store = { query: async () => [{ generation: 9, updated_at: new Date(0) }] } as never;

function series(text: string, name: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = new RegExp(`^${name}\\{([^}]*)\\} (\\S+)$`).exec(line);
    if (m) out.set(m[1]!, Number(m[2]));
  }
  return out;
}

test('apply duration: observed from the reported phases, once per generation; the report phase once it is known', async () => {
  let now = 1_000_000;
  const m = new CoordinatorMetrics({ store, log: pino({ level: 'silent' }), now: () => new Date(now) });
  const t: ApplyTimings = { generation: 7, startedAt: new Date(now).toISOString(), phases: { certs: 2, render: 10, install: 20, validate: 30, reload: 5, prove: 40, finish: 3, probe: 90 }, totalMs: 200 };
  m.delivered('c', 'node-1', 7);
  now += 60_000; // a minute between delivery and report: not what the histogram says
  await m.reported('c', 'node-1', 7, t);
  await m.reported('c', 'node-1', 7, t); // a heartbeat with the same timings
  await m.reported('c', 'node-1', 7, { ...t, phases: { ...t.phases, report: 25 } });
  await m.reported('c', 'node-1', 7, { ...t, phases: { ...t.phases, report: 25 } });
  const text = (await m.render()).body;
  assert.equal(series(text, 'pgaccord_apply_duration_seconds_count').get('cluster="c"'), 1);
  assert.equal(series(text, 'pgaccord_apply_duration_seconds_sum').get('cluster="c"'), 0.2);
  const counts = series(text, 'pgaccord_apply_phase_seconds_count');
  const sums = series(text, 'pgaccord_apply_phase_seconds_sum');
  for (const [phase, ms] of Object.entries({ ...t.phases, report: 25 })) {
    assert.equal(counts.get(`cluster="c",phase="${phase}"`), 1, phase);
    assert.ok(Math.abs(sums.get(`cluster="c",phase="${phase}"`)! - ms / 1000) < 1e-9, phase);
  }

  // The next generation is observed again; an agent without timings the old way.
  await m.reported('c', 'node-1', 8, { ...t, generation: 8, totalMs: 100 });
  m.delivered('c', 'node-2', 9);
  now += 1500;
  await m.reported('c', 'node-2', 9);
  const after = (await m.render()).body;
  assert.equal(series(after, 'pgaccord_apply_duration_seconds_count').get('cluster="c"'), 3);
  assert.ok(Math.abs(series(after, 'pgaccord_apply_duration_seconds_sum').get('cluster="c"')! - (0.2 + 0.1 + 1.5)) < 1e-9);
});
