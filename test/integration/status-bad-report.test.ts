// One stored status report the coordinator cannot read (an older or newer coordinator's report
// shape during a rolling upgrade, a hand-edited row) must not fail its cluster's status view
// (GET /v1/clusters/{name}/status, `pgaccord status`) nor the status page, which renders every
// cluster's view: that node shows phase unknown with an error saying its stored report is
// unreadable, the others as usual. Rows go into node_status directly by SQL: the report route
// would refuse them.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Agent, request } from 'undici';
import { pgdSpec, startHarness, type Harness } from '../helpers/coordinator-harness.ts';
import { putStoredReport, RawJson } from '../helpers/stored-report.ts';

const execFileAsync = promisify(execFile);
const CLI = join(import.meta.dirname, '../../bin/pgaccord.mjs');
let h: Harness;
before(async () => {
  h = await startHarness();
});
after(async () => h?.close());

const at = new Date().toISOString();
const inDays = (d: number) => new Date(Date.now() + d * 86400_000).toISOString();
const good = (over: Record<string, unknown> = {}) => ({
  generation: 1, phase: 'converged', errors: [], files: [],
  servedCertificate: { id: 'server', serial: '0a', notAfter: inDays(60) }, certificates: [{ id: 'server', serial: '0a', notAfter: inDays(60) }],
  probes: [{ to: 'node-2', role: 'replicator', ok: true, conninfo: 'host=db2', tlsVersion: 'TLSv1.3', cipher: null, error: null, at }],
  pendingRestart: [], coordinatorReachable: true, versions: { agent: 'test', postgres: '16' },
  timings: { generation: 1, startedAt: at, phases: { render: 3 }, totalMs: 40 },
  ...over,
});
const putReport = (cluster: string, node: string, report: unknown) => putStoredReport(h.coord.store, cluster, node, report);

// Each shape in a cluster of its own: the ones that failed the view (500) and the ones it showed as
// if they were read (a string report as a node with nothing to say, an older shape as current).
const shapes: { name: string; report: unknown }[] = [
  { name: 'certificates an object', report: good({ certificates: { id: 'server', serial: '0a', notAfter: at } }) },
  { name: 'a served certificate notAfter that is no date', report: good({ servedCertificate: { id: 'server', serial: '0a', notAfter: 'soon' } }) },
  { name: 'an installed certificate notAfter that is no date', report: good({ certificates: [{ id: 'server', serial: '0a', notAfter: '2026-13-45' }] }) },
  { name: 'a probe without ok', report: good({ probes: [{ to: 'node-1', role: 'replicator', conninfo: 'x', tlsVersion: null, cipher: null, error: null, at }] }) },
  { name: 'probes an object', report: good({ probes: { to: 'node-1' } }) },
  { name: 'a phase no version knows', report: good({ phase: 'exploded' }) },
  { name: 'generation a string', report: good({ generation: 'seven' }) },
  { name: 'errors a string', report: good({ errors: 'boom' }) },
  { name: 'pendingRestart a string', report: good({ pendingRestart: 'all' }) },
  { name: 'timings phases a list', report: good({ timings: { generation: 1, startedAt: at, phases: [3], totalMs: 40 } }) },
  { name: 'checks an object', report: good({ checks: { name: 'bdr' } }) },
  { name: 'no versions (another shape)', report: (({ versions: _v, ...rest }) => rest)(good()) },
  { name: 'a field this version does not know', report: good({ futureField: { x: 1 } }) },
  { name: 'the report a JSON string', report: 'converged' },
  { name: 'the report a JSON list', report: [good()] },
  { name: 'generation over int range', report: new RawJson(JSON.stringify(good()).replace('"generation":1,"phase"', '"generation":1e400,"phase"')) },
];

function assertGoodNode(body: any, what: string) { // eslint-disable-line @typescript-eslint/no-explicit-any
  const n = body.nodes.find((x: { node: string }) => x.node === 'node-1');
  assert.equal(n.phase, 'converged', `${what}: node-1's phase`);
  assert.equal(n.appliedGeneration, 1, what);
  assert.deepEqual(n.errors, [], what);
  assert.equal(n.probes.length, 1, what);
  assert.equal(n.servedCertificate.serial, '0a', what);
  assert.ok(n.timings, what);
}

function assertUnreadable(body: any, node: string, what: string) { // eslint-disable-line @typescript-eslint/no-explicit-any
  const n = body.nodes.find((x: { node: string }) => x.node === node);
  assert.ok(n, `${what}: ${node} is listed`);
  assert.equal(n.phase, 'unknown', `${what}: ${node}'s phase`);
  assert.equal(n.appliedGeneration, 0, what);
  assert.equal(n.errors.length, 1, `${what}: ${JSON.stringify(n.errors)}`);
  assert.equal(n.errors[0].code, 'E_STORED_REPORT_UNREADABLE', what);
  assert.match(n.errors[0].message, /stored status report .*unreadable/, what);
  assert.deepEqual([n.probes, n.certificates, n.pendingRestart, n.servedCertificate], [[], [], [], null], `${what}: nothing of it is shown as read`);
  assert.ok(n.reportedAt && n.lastContact, `${what}: when it reported is still known`);
  assert.equal(body.converged, false, what);
}

for (const [i, shape] of shapes.entries()) {
  test(`a stored report with ${shape.name}: the cluster's status answers 200, that node unreadable, the others as usual`, async () => {
    const cluster = `shape-${i}`;
    await h.coord.service.putCluster(cluster, pgdSpec(cluster));
    try {
      await putReport(cluster, 'node-1', good());
      await putReport(cluster, 'node-2', shape.report);
      const r = await h.admin.call('GET', `/v1/clusters/${cluster}/status`);
      assert.equal(r.status, 200, `${shape.name}: ${r.text}`);
      assertGoodNode(r.body, shape.name);
      assertUnreadable(r.body, 'node-2', shape.name);
      assert.equal(r.body.nodes.find((x: { node: string }) => x.node === 'node-3').phase, 'unknown', 'a node that never reported');
      assert.deepEqual(r.body.nodes.find((x: { node: string }) => x.node === 'node-3').errors, [], 'never reported is not unreadable');
    } finally {
      await h.coord.store.query(`DELETE FROM clusters WHERE name = $1`, [cluster]);
    }
  });
}

test('pgaccord status and the status page show the cluster with one unreadable report', async () => {
  await h.coord.service.putCluster('shop', pgdSpec('shop'));
  await h.coord.service.putCluster('other', pgdSpec('other'));
  await putReport('shop', 'node-1', good());
  await putReport('shop', 'node-2', good({ certificates: { id: 'server' }, probes: [{ to: 'node-1' }] }));
  await putReport('other', 'node-1', good());

  const env = { ...process.env, PGACCORD_URL: h.coord.url };
  const json = await execFileAsync(process.execPath, [CLI, 'status', 'shop', '--json', '--data-dir', h.dir], { env });
  const doc = JSON.parse(json.stdout);
  assertGoodNode(doc, 'pgaccord status --json');
  assertUnreadable(doc, 'node-2', 'pgaccord status --json');
  const table = await execFileAsync(process.execPath, [CLI, 'status', '--data-dir', h.dir], { env });
  assert.match(table.stdout, /cluster other /, 'every cluster is listed');
  assert.match(table.stdout, /node-2 .*unknown.*E_STORED_REPORT_UNREADABLE/);

  const dispatcher = new Agent({ connect: { ca: h.caPem } });
  try {
    const login = await request(`${h.coord.url}/ui/login`, { dispatcher, method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `token=${encodeURIComponent(h.token)}` });
    await login.body.text();
    assert.equal(login.statusCode, 303);
    const cookie = String(login.headers['set-cookie']).split(';')[0]!;
    const page = await request(`${h.coord.url}/ui`, { dispatcher, headers: { cookie } });
    const html = await page.body.text();
    assert.equal(page.statusCode, 200, html.slice(0, 500));
    assert.match(html, /data-cluster="other"/);
    assert.match(html, /<tr data-node="node-2"><td>node-2<\/td><td><span class="badge warn">unknown/);
    assert.match(html, /<b>node-2<\/b> <code>E_STORED_REPORT_UNREADABLE<\/code>/);
    assert.match(html, /<tr data-node="node-1"><td>node-1<\/td><td><span class="badge good">converged/);
  } finally {
    await dispatcher.close();
  }
});
