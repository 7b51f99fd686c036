// End to end, the coordinators' shared store fails over (issue 11, item 3). The store is a
// primary and a synchronous streaming standby (two real PostgreSQL 15 servers on loopback); two
// coordinator processes share it through a multi-host URL with target_session_attrs=read-write.
// Admin writes go to coordinator A; both agents (real nodes) long-poll coordinator B, whose way to
// the store goes through a TCP relay the test can cut: so B is made deaf first, and every change
// can reach B's long-polls only through the re-read B does once it LISTENs again (their NOTIFYs
// went to nobody on B). With B deaf: a change through A, at once the primary is SIGKILLed
// (postmaster and backends), an admin write during the outage gets a coded 503 without hanging,
// the standby is promoted, the first admin write that succeeds is timed, B's way is restored,
// and the time until every agent runs the new generation is measured; a probe loop checks that
// the nodes serve their last good state throughout.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { createWriteStream, existsSync } from 'node:fs';
import { cp, mkdtemp, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LocalCluster } from '../../bin/local-cluster.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import { freePort } from '../../shared/system/pgserver.ts';
import { PACKAGE_ROOT } from '../../shared/contract/version.ts';
import { query } from '../helpers/pg.ts';
import { watchCluster } from '../helpers/lifecycle-e2e.ts';
import { storePair, type StorePair } from '../helpers/store-pair.ts';
import { waitFor } from '../helpers/wait.ts';
import { httpsClient, type Client } from '../helpers/coordinator-harness.ts';

const PGACCORD = join(PACKAGE_ROOT, 'bin', 'pgaccord.mjs');
// For measuring by hand: a longer outage before the promotion (a failover manager's own delay).
const OUTAGE_MS = Number(process.env.PGACCORD_STORE_OUTAGE_S ?? 0) * 1000;

interface Scenario {
  longPollS: number;
  /** Promote only once every agent's held long-poll has run out and its next one has come in. */
  outlastLongPolls: boolean;
}

/** A TCP relay to a server that can be cut (every connection dropped, new ones refused) and restored. */
async function relay(port: number): Promise<{ port: number; cut(): void; restore(): void; close(): Promise<void> }> {
  let open = true;
  const sockets = new Set<Socket>();
  const server: Server = createServer((s) => {
    if (!open) return void s.destroy();
    const up = connect(port, '127.0.0.1');
    for (const [x, y] of [[s, up], [up, s]] as const) {
      sockets.add(x);
      x.on('error', () => y.destroy());
      x.on('close', () => {
        sockets.delete(x);
        y.destroy();
      });
      x.pipe(y);
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as { port: number }).port,
    cut() {
      open = false;
      for (const x of sockets) x.destroy();
    },
    restore() {
      open = true;
    },
    close: () => new Promise<void>((r) => {
      for (const x of sockets) x.destroy();
      server.close(() => r());
    }),
  };
}

test('the store fails over: coordinators reconnect, LISTEN again, no change lost (only the re-read after LISTEN can wake B), agents serve throughout', async () => {
  await failover({ longPollS: 120, outlastLongPolls: false });
});

test('an outage longer than the long-poll: the agents\' next long-polls are held at B until the store is back, not refused into their backoff', async () => {
  await failover({ longPollS: 4, outlastLongPolls: true });
});

async function failover(sc: Scenario): Promise<void> {
  const dir = await mkdtemp('/tmp/pgaccord-e2e-storefo-');
  const cluster = await LocalCluster.create({ dir });
  const coordinators: ChildProcess[] = [];
  const clients: Client[] = [];
  let store: StorePair | null = null;
  let watch: ReturnType<typeof watchCluster> | null = null;
  let passed = false;
  after(async () => {
    await watch?.stop();
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
    for (const c of coordinators) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await store?.destroy();
    await cluster.close({ keep: !passed }); // the logs of a failed run stay in dir
    if (!passed) console.log(`# store failover: logs kept in ${dir}`);
  });

  // --- the two-node store -------------------------------------------------------------------
  store = await storePair(dir);
  const { primary, standby } = store;
  // B reaches both servers through relays.
  const toPrimary = await relay(primary.port);
  const toStandby = await relay(standby.port);
  after(() => Promise.all([toPrimary.close(), toStandby.close()]));

  // --- two coordinators on it (B is given A's data directory: CA, master key, admin token) --
  const startCoordinator = async (name: string, dataDir: string, databaseUrl: string): Promise<{ url: string; client: Client }> => {
    const port = await freePort();
    const child = spawn(process.execPath, [PGACCORD, 'coordinator', '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, '--long-poll', String(sc.longPollS), '--log-level', 'debug'], { // debug: the test reads the request lines
      env: { ...process.env, PGACCORD_DATABASE_URL: databaseUrl }, // not on the command line: it holds the password
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    coordinators.push(child);
    const log = createWriteStream(join(dir, `${name}.log`));
    child.stdout!.pipe(log);
    child.stderr!.pipe(log);
    const url = `https://127.0.0.1:${port}`;
    await waitFor(`coordinator ${name} serving`, async () => {
      if (child.exitCode !== null) throw new Error(`coordinator ${name} exited ${child.exitCode}: ${await readFile(join(dir, `${name}.log`), 'utf8')}`);
      return existsSync(join(dir, `${name}.log`)) && (await readFile(join(dir, `${name}.log`), 'utf8')).includes('pgaccord coordinator listening on');
    }, 60_000, 300, { throwEnds: true });
    const client = httpsClient(url, await readFile(join(dataDir, 'ca.crt'), 'utf8'));
    clients.push(client);
    assert.equal((await client.call('GET', '/healthz')).status, 200);
    return { url, client };
  };
  const a = await startCoordinator('coordinator-a', cluster.coordinatorDir, store.url());
  const dirB = join(dir, 'coordinator-b');
  await cp(cluster.coordinatorDir, dirB, { recursive: true });
  const b = await startCoordinator('coordinator-b', dirB, store.url(toPrimary.port, toStandby.port));
  const token = (await readFile(join(cluster.coordinatorDir, 'admin.token'), 'utf8')).trim();

  // --- two real nodes whose agents long-poll B; admin writes through A ---------------------
  cluster.coordinatorUrl = a.url;
  const n1 = await cluster.addNode('node-1', '127.0.0.81');
  const n2 = await cluster.addNode('node-2', '127.0.0.82');
  const spec = (rules: number): ClusterSpec => ({
    name: 'storefo', profile: 'pgd', auth: 'cert', tls: { sslmode: 'verify-full' },
    nodes: [n1, n2].map((n) => ({ name: n.name, host: n.host, address: '127.0.0.1', port: n.pg.port, kind: 'peer' })),
    // Each write adds one rule: which writes a node has applied shows in its pg_hba.conf.
    hba: Array.from({ length: rules }, (_, i) => ({ type: 'hostssl' as const, database: 'all', user: 'all', address: `10.77.0.${i + 1}/32`, method: 'reject' as const })),
  });
  const put = (rules: number) => a.client.call('PUT', '/v1/clusters/storefo', { token, body: spec(rules) });
  assert.equal((await put(0)).status, 200);
  cluster.coordinatorUrl = b.url;
  await cluster.startAgent('storefo', 'node-1');
  await cluster.startAgent('storefo', 'node-2');
  cluster.coordinatorUrl = a.url;
  const converged = await cluster.waitConverged('storefo', 90_000);
  const bLog = () => readFile(join(dir, 'coordinator-b.log'), 'utf8');
  // Both agents are held in a long-poll on B for the generation after the current one.
  const g0 = converged.generation;
  await waitFor('both agents long-polling B', async () => (await bLog()).split(`desired?after=${g0}`).length - 1 >= 2, 30_000, 100, { throwEnds: true });
  const startTimes = async () => Promise.all([n1, n2].map(async (n) => (await query<{ t: Date }>(n.pg, 'SELECT pg_postmaster_start_time() AS t'))[0]!.t.toISOString()));
  const started = await startTimes();
  const applied = async (n: typeof n1) => (JSON.parse(await readFile(join(n.stateDir, 'status.json'), 'utf8')) as { status: { generation: number } }).status.generation;
  const rejects = async (n: typeof n1) => (await query<{ a: string }>(n.pg, `SELECT address AS a FROM pg_hba_file_rules WHERE auth_method = 'reject' AND address LIKE '10.77.%' ORDER BY address`)).map((r) => r.a);
  watch = watchCluster(cluster, 1000);

  // --- B deaf; a change; at once the primary dies -----------------------------------------
  const retries = async () => (await bLog()).split('LISTEN not re-established yet').length - 1;
  const answerAtOnce = async () => (await bLog()).split(`desired?after=${g0}&wait=0`).length - 1;
  const atOnceBefore = await answerAtOnce();
  toPrimary.cut();
  toStandby.cut();
  await waitFor('coordinator B deaf (its LISTEN lost)', async () => (await bLog()).includes('LISTEN connection lost'), 10_000, 50, { throwEnds: true });
  const before = await put(1);
  assert.equal(before.status, 200, before.text);
  await store.killPrimary();
  const diedAt = Date.now();

  // During the outage (the standby not yet promoted): a coded refusal, quickly, not a hang.
  const t = Date.now();
  const during = await put(2);
  const duringMs = Date.now() - t;
  assert.equal(during.status, 503, during.text);
  assert.equal(during.body.code, 'E_STORE_UNAVAILABLE');
  assert.ok(duringMs < 10_000, `the refused write took ${duringMs} ms`);
  assert.equal((await a.client.call('GET', '/healthz')).status, 503);

  // A failover manager takes a while: promote once B has retried LISTEN a few times.
  await waitFor('coordinator B retrying LISTEN', async () => (await retries()) >= 3, 20_000, 100, { throwEnds: true });
  // Each agent's held poll ran out (503) and its next one (wait=0) came in: held at authentication.
  if (sc.outlastLongPolls) await waitFor('both agents polling B again', async () => (await answerAtOnce()) >= atOnceBefore + 2, 30_000, 100, { throwEnds: true });
  if (OUTAGE_MS > 0) await new Promise((r) => setTimeout(r, Math.max(0, diedAt + OUTAGE_MS - Date.now())));
  await store.promote();
  const promotedAt = Date.now();
  let refusals = 1;
  const written = await waitFor('the first admin write after the failover', async () => {
    const r = await put(2);
    if (r.status === 200) return r.body as { generation: number };
    assert.equal(r.body?.code, 'E_STORE_UNAVAILABLE', r.text);
    refusals += 1;
    return null;
  }, 30_000, 100, { throwEnds: true });
  const firstWriteAt = Date.now();
  // B's way to the store is back: its LISTEN holds again, then its held long-polls re-read.
  toPrimary.restore();
  toStandby.restore();
  await waitFor('both agents on the new generation', async () => (await applied(n1)) >= written.generation && (await applied(n2)) >= written.generation, 30_000, 50, { throwEnds: true });
  const agentsAt = Date.now();
  await cluster.waitConverged('storefo', 30_000);
  await watch.stop();

  const relisten = (await bLog()).split('\n').find((l) => l.includes('LISTEN re-established'));
  const figures = {
    primaryDeathToFirstWriteMs: firstWriteAt - diedAt,
    promoteToFirstWriteMs: firstWriteAt - promotedAt,
    firstWriteToAllAgentsMs: agentsAt - firstWriteAt,
    outageBeforePromoteMs: promotedAt - diedAt,
    longPollS: sc.longPollS,
    refusedWritesDuringOutage: refusals,
    refusedWriteMs: duringMs,
    bListenRetries: await retries(),
    bRelistenAfterFirstWriteMs: relisten ? (JSON.parse(relisten) as { time: number }).time - firstWriteAt : null,
    // Times an agent found the coordinator failing (and backed off) instead of staying held.
    agentRetries: await Promise.all([n1, n2].map(async (n) => (await readFile(join(dir, `agent-${n.name}.log`), 'utf8')).split('retrying the coordinator after a delay').length - 1)),
    generation: written.generation,
    probes: watch.probes,
    probeFailures: watch.failures.length,
  };
  assert.ok(watch.probes > 0 && relisten, 'probes ran; B listened again');
  console.log(`# store failover: ${JSON.stringify(figures)}`);
  // The change acknowledged just before the primary died survived it, and both writes reached both nodes.
  for (const n of [n1, n2]) assert.deepEqual(await rejects(n), ['10.77.0.1', '10.77.0.2'], `${n.name} pg_hba.conf`);
  assert.ok(figures.primaryDeathToFirstWriteMs <= 30_000, `first admin write ${figures.primaryDeathToFirstWriteMs} ms after the primary died`);
  assert.ok(figures.firstWriteToAllAgentsMs <= 5_000, `every agent on the new generation ${figures.firstWriteToAllAgentsMs} ms after the first write`);
  // The only refusal an agent may see is the end of a long-poll that ran out with the store away.
  for (const r of figures.agentRetries) assert.ok(r <= (sc.outlastLongPolls ? 1 : 0), `agent retries: ${figures.agentRetries.join(', ')}`);
  assert.deepEqual(watch.failures, [], 'the nodes served their last good state throughout (no probe failed)');
  assert.deepEqual(await startTimes(), started, 'PostgreSQL was never restarted');
  assert.equal((await b.client.call('GET', '/healthz')).status, 200);
  passed = true;
}
