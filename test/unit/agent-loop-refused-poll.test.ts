// A long-poll the coordinator refused (429 rate limited, 503 busy) is logged as a refusal, with
// its status code, the coordinator's error code and the retry delay: the coordinator answered,
// it is not "unreachable" (an operator reading the log would look for a network fault).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { ReconcileLoop } from '../../agent/runtime/loop.ts';
import type { CoordinatorApi } from '../../agent/runtime/loop-deps.ts';
import { CertificateManager } from '../../agent/runtime/certs.ts';
import { CoordinatorError } from '../../agent/runtime/client.ts';
import { RenewalSchedule, seededRandom } from '../../agent/runtime/backoff.ts';
import type { ApplyResult, NodeContext } from '../../agent/apply/types.ts';

const dirs: string[] = [];
after(async () => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

/** A loop whose polls meet `failures` in turn, then stop; the log records it wrote. */
async function run(failures: Error[]): Promise<Record<string, unknown>[]> {
  const stateDir = await mkdtemp(join(tmpdir(), 'pgaccord-loop-refused-'));
  dirs.push(stateDir);
  const records: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void records.push(JSON.parse(line) as Record<string, unknown>) });
  let loop: ReconcileLoop;
  const client: CoordinatorApi = {
    async desired() {
      const e = failures.shift();
      if (e) throw e;
      loop.stop();
      return { kind: 'unchanged' };
    },
    async status() {},
  };
  const apply = async (): Promise<ApplyResult> => ({ phase: 'converged', changed: false, errors: [], files: [], pendingRestart: [], servedCertificate: null, clientConnections: [] });
  const certs = new CertificateManager({ stateDir, owner: { uid: process.getuid!(), gid: process.getgid!() }, requestCertificate: async () => assert.fail('no certificate expected'), now: Date.now, schedule: new RenewalSchedule(seededRandom(1)), log });
  loop = new ReconcileLoop({
    ctx: { stateDir, log } as unknown as NodeContext, cluster: 'sales', node: 'node-1', client, apply, certs, probe: { osUser: { name: 'x', uid: 0, gid: 0, home: '/' } },
    now: Date.now, random: seededRandom(3), backoff: { baseMs: 1, capMs: 4 }, minCycleMs: 1, resyncMs: 60_000, log,
    postgresVersion: async () => '15.18',
  });
  assert.equal(await loop.run(), 'stopped');
  return records;
}

const refused = (status: number, apiCode: string) =>
  new CoordinatorError('E_HTTP', `GET /v1/agent/desired?after=0: ${apiCode}: too many requests`, status, { apiCode });

test('a long-poll refused with 429 or 503 is logged as refused (status, code, retry delay), never as the coordinator unreachable', async () => {
  for (const [status, apiCode] of [[429, 'E_RATE_LIMITED'], [503, 'E_STORE_BUSY']] as const) {
    const records = await run([refused(status, apiCode)]);
    const said = records.map((r) => String(r.msg));
    assert.deepEqual(said.filter((m) => /unreachable/.test(m)), [], `${status}: nothing says unreachable`);
    const line = records.find((r) => r.msg === 'coordinator refused the long-poll: retrying after a delay');
    assert.ok(line, `${status}: the refusal is logged (${JSON.stringify(said)})`);
    assert.equal(line.status, status);
    assert.equal(line.code, apiCode);
    assert.equal(typeof line.retryInMs, 'number');
    assert.equal(line.level, 40, 'a warning');
  }
});

test('a long-poll that did not reach the coordinator is still logged as unreachable', async () => {
  const records = await run([new CoordinatorError('E_UNREACHABLE', 'GET /v1/agent/desired?after=0: ECONNREFUSED')]);
  assert.ok(records.some((r) => r.msg === 'coordinator unreachable: serving the last good state (stale)'));
  assert.ok(records.some((r) => r.msg === 'retrying the coordinator after a delay' && typeof r.retryInMs === 'number'));
  assert.ok(!records.some((r) => r.msg === 'coordinator refused the long-poll: retrying after a delay'));
});
