// The status page renderer, its one escaper, the probe matrix (page grid and CLI text grid) and
// the page's session cookies: pure functions, hostile input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type { ClusterStatusResponse, NodeStatusView } from '../../shared/contract/api.ts';
import type { ProbeResult } from '../../shared/contract/status.ts';
import { AWAITING_PEER } from '../../shared/contract/awaiting-peer.ts';
import { esc, pageHeaders, renderLoginPage, renderStatusPage, STYLE_HASH } from '../../coordinator/http/status-page.ts';
import { formatProbeMatrix, probeMatrix } from '../../coordinator/cluster/probe-matrix.ts';
import { formatStatus } from '../../coordinator/cli/status.ts';
import { SESSION_COOKIE, SESSION_TTL_S, UiSessions } from '../../coordinator/http/ui-session.ts';

const NOW = new Date('2026-12-01T09:00:00Z');
const HOSTILE = `<script>alert("x")</script>'&\`<img src=x onerror=alert(1)>`;

function probe(to: string, ok: boolean, error: string | null = null, role = 'pgd_replication'): ProbeResult {
  return { to, role, ok, conninfo: `host=${to} sslmode=verify-full`, tlsVersion: ok ? 'TLSv1.3' : null, cipher: null, error, at: '2026-12-01T08:59:50Z' };
}

function node(name: string, probes: ProbeResult[], extra: Partial<NodeStatusView> = {}): NodeStatusView {
  return {
    node: name, desiredGeneration: 3, appliedGeneration: 3, phase: 'converged', enrolled: true,
    lastContact: '2026-12-01T08:59:30Z', reportedAt: '2026-12-01T08:59:30Z', stale: false, errors: [],
    servedCertificate: { id: 'server', serial: 'ab', notAfter: '2026-12-31T09:00:00Z' }, certificates: [], probes, pendingRestart: [],
    ...extra,
  };
}

function cluster(nodes: NodeStatusView[], name = 'prod'): ClusterStatusResponse {
  return { cluster: name, generation: 3, auth: 'cert', sslmode: 'verify-full', insecure: false, converged: false, nodes };
}

test('esc escapes every character that can open a tag, an attribute or an entity', () => {
  assert.equal(esc(`<a href="x" title='y'>&\`</a>`), '&#60;a href=&#34;x&#34; title=&#39;y&#39;&#62;&#38;&#96;&#60;/a&#62;');
  assert.equal(esc(42), '42');
  assert.equal(esc('plain node-1'), 'plain node-1');
});

test('hostile names and PostgreSQL messages reach the page escaped, never as markup', () => {
  const s = cluster([
    node(HOSTILE, [probe('node-2', false, `FATAL:  no pg_hba.conf entry for host "127.0.0.1", user "${HOSTILE}"`)], { errors: [{ code: 'E_APPLY', message: HOSTILE }], pendingRestart: [HOSTILE] }),
    node('node-2', [probe(HOSTILE, true, null, HOSTILE)]),
  ], HOSTILE);
  const html = renderStatusPage([{ ...s, warnings: [HOSTILE] }], NOW);
  assert.doesNotMatch(html, /<script|<img|onerror=alert\(1\)>/i);
  assert.ok(html.includes(esc(HOSTILE)), 'the name is shown, escaped');
  // outside the one <style>, the only tags are the page's own
  const tags = new Set([...html.replace(/<style>[\s\S]*?<\/style>/, '').matchAll(/<\/?([a-z0-9]+)/gi)].map((m) => m[1]!.toLowerCase()));
  assert.deepEqual([...tags].filter((t) => !['html', 'head', 'meta', 'title', 'style', 'body', 'h1', 'h2', 'h3', 'p', 'form', 'button', 'section', 'span', 'ul', 'li', 'table', 'thead', 'tbody', 'tr', 'th', 'td', 'b', 'code', 'label', 'input'].includes(t)), []);
  assert.ok(html.includes(esc('FATAL:  no pg_hba.conf entry for host "127.0.0.1"')), 'PostgreSQL\'s message is on the page');
});

test('the page: nodes with phase, generation lag, last contact, certificate days left; the grid; the errors', () => {
  const s = cluster([
    node('node-1', [probe('node-2', true), probe('node-3', false, 'FATAL:  too many connections for role "pgd_replication"')]),
    node('node-2', [probe('node-1', true), probe('node-3', true)], { appliedGeneration: 1, phase: 'applying' }),
    node('node-3', [], { stale: true, lastContact: '2026-12-01T07:00:00Z' }),
  ]);
  const html = renderStatusPage([s], NOW);
  const cell = (from: string, to: string) => new RegExp(`<td class="cell-([a-z]+)" data-from="${from}" data-to="${to}" data-state="\\1"`).exec(html)?.[1];
  assert.equal(cell('node-1', 'node-2'), 'ok');
  assert.equal(cell('node-1', 'node-3'), 'failing');
  assert.equal(cell('node-3', 'node-1'), 'none');
  assert.equal(cell('node-2', 'node-2'), 'self');
  assert.match(html, /too many connections for role &#34;pgd_replication&#34;/);
  assert.match(html, /<tr data-node="node-2">.*?applying.*?<span class="badge warn">2<\/span>/);
  assert.match(html, /<tr data-node="node-3">.*?converged \(stale\).*?2 h ago/);
  assert.match(html, /<tr data-node="node-1">.*?30 s ago.*?<span class="badge good">30<\/span>/);
  assert.match(html, /not converged/);
});

test('a node\'s apply time, its slowest phase and its last probe-only pass are in its row (every phase in the title); none reported: -', () => {
  const timings = { generation: 3, startedAt: '2026-12-01T08:59:00Z', phases: { certs: 2, render: 5, prove: 80.4, probe: 1 }, totalMs: 123.4, probePass: { startedAt: '2026-12-01T08:59:10Z', reason: 'peer-applied', edges: 9, ms: 950.2, passes: 2 } };
  const html = renderStatusPage([cluster([node('node-1', [], { timings }), node('node-2', [], { timings: { ...timings, probePass: undefined } }), node('node-3', [])])], NOW);
  assert.match(html, /<th>Apply time<\/th>/);
  const row = (n: string) => new RegExp(`<tr data-node="${n}">.*?</tr>`).exec(html)?.[0] ?? '';
  assert.match(row('node-1'), /<td class="timings" title="certs 2 ms, render 5 ms, prove 80\.4 ms, probe 1 ms; probe-only pass \(peer-applied, 2 passes\): 9 edges in 950\.2 ms">123ms \(prove 80\), probed 9 in 950ms<\/td>/);
  assert.match(row('node-2'), /<td class="timings" title="certs 2 ms, render 5 ms, prove 80\.4 ms, probe 1 ms">123ms \(prove 80\)<\/td>/);
  assert.match(row('node-3'), /<td class="timings">-<\/td>/);
});

test('the CSP names the hash of the one inline stylesheet, and nothing else may load', () => {
  const html = renderStatusPage([], NOW);
  const css = /<style>([\s\S]*?)<\/style>/.exec(html)![1]!;
  assert.equal(STYLE_HASH, `sha256-${createHash('sha256').update(css).digest('base64')}`);
  const h = pageHeaders();
  assert.equal(h['content-security-policy'], `default-src 'none'; style-src '${STYLE_HASH}'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'`);
  assert.equal(h['x-content-type-options'], 'nosniff');
  assert.equal(h['referrer-policy'], 'no-referrer');
  assert.equal(h['cache-control'], 'no-store');
  assert.doesNotMatch(html, /<script|src=|href=/);
  assert.equal((html.match(/<style>/g) ?? []).length, 1);
});

test('the login page says nothing about any cluster and escapes its message', () => {
  const html = renderLoginPage(HOSTILE);
  assert.doesNotMatch(html, /<script|<img/);
  assert.match(html, /<form method="post" action="\/ui\/login">/);
  assert.match(html, /type="password"/);
});

test('probe matrix: rows from, columns to; failing wins over ok across roles; unknown targets get a column', () => {
  const m = probeMatrix(cluster([
    node('a', [probe('b', true, null, 'r1'), probe('b', false, 'boom', 'r2'), probe('zz', true)]),
    node('b', [probe('a', true)]),
  ]));
  assert.deepEqual(m.nodes, ['a', 'b', 'zz']);
  assert.deepEqual(m.cells.map((r) => r.map((c) => c.state)), [['self', 'failing', 'ok'], ['ok', 'self', 'none'], ['none', 'none', 'self']]);
  assert.equal(m.cells[0]![1]!.probes.length, 2);
});

test('an edge awaiting its peer (not probed yet at this generation) is neither ok nor an error: page, CLI and grid say so', () => {
  const awaiting: ProbeResult = { ...probe('node-2', false, 'not probed yet: node-2 is not known to have applied generation 3'), reason: AWAITING_PEER, peerGeneration: 0 };
  const s = cluster([
    node('node-1', [awaiting, probe('node-3', true)]),
    node('node-2', [probe('node-1', false, 'FATAL:  password authentication failed'), { ...awaiting, to: 'node-3' }]),
  ]);
  const m = probeMatrix(s);
  assert.deepEqual(m.cells.map((r) => r.map((c) => c.state)), [['self', 'awaiting', 'ok'], ['failing', 'self', 'awaiting'], ['none', 'none', 'self']]);
  const html = renderStatusPage([s], NOW);
  assert.match(html, /data-from="node-1" data-to="node-2" data-state="awaiting"/);
  const errors = /<ul class="errors">.*?<\/ul>/s.exec(html)?.[0] ?? '';
  assert.doesNotMatch(errors, /not probed yet/, 'not among the errors');
  assert.match(errors, /password authentication failed/, 'a probe that ran and failed still is');
  const text = formatStatus(s);
  assert.doesNotMatch(text, /probe node-1 -> node-2/, 'the CLI lists no awaiting edge as a failed probe');
  assert.match(text, /probe node-2 -> node-1 as pgd_replication: FATAL/);
  assert.match(formatProbeMatrix(m), /~ awaiting its peer/);
});

test('text grid: one character per edge; a ten-node cluster in twelve lines', () => {
  const three = formatProbeMatrix(probeMatrix(cluster([
    node('node-1', [probe('node-2', true), probe('node-3', false, 'x')]),
    node('node-2', [probe('node-1', true), probe('node-3', true)]),
    node('node-3', []),
  ])));
  assert.equal(three, [
    'probes (row: from, column: to; ✓ ok, ✗ failing, ~ awaiting its peer, . not probed):',
    '          1 2 3',
    '1 node-1  - ✓ ✗',
    '2 node-2  ✓ - ✓',
    '3 node-3  . . -',
    '',
  ].join('\n'));
  const names = Array.from({ length: 10 }, (_, i) => `node-${i + 1}`);
  const ten = formatProbeMatrix(probeMatrix(cluster(names.map((n, i) => node(n, names.filter((t) => t !== n).map((t) => probe(t, !(i === 3 && t === 'node-7'))))))));
  const lines = ten.trimEnd().split('\n');
  assert.equal(lines.length, 12);
  assert.equal(lines[1], '             1  2  3  4  5  6  7  8  9 10');
  assert.equal(lines[5], ' 4 node-4    ✓  ✓  ✓  -  ✓  ✓  ✗  ✓  ✓  ✓');
  assert.equal(lines[11], '10 node-10   ✓  ✓  ✓  ✓  ✓  ✓  ✓  ✓  ✓  -');
  assert.equal((ten.match(/✓/g) ?? []).length, 89 + 1, '89 ok edges and the legend');
});

test('pgaccord status (text) carries the grid', () => {
  const out = formatStatus(cluster([node('node-1', [probe('node-2', false, 'FATAL: no')]), node('node-2', [probe('node-1', true)])]));
  assert.match(out, /\n1 node-1  - ✗\n2 node-2  ✓ -\n/);
  assert.match(out, /probe node-1 -> node-2 as pgd_replication: FATAL: no/);
  assert.doesNotMatch(formatStatus(cluster([node('solo', [])])), /probes \(row/);
});

test('sessions: a cookie from this process and this admin token, unexpired and untampered, is the only one accepted', () => {
  const t0 = NOW.getTime();
  const s = new UiSessions('the-admin-token');
  const setCookie = s.issue(t0);
  assert.match(setCookie, new RegExp(`^${SESSION_COOKIE}=v1\\.\\d+\\.[A-Za-z0-9_-]{43}; Path=/; Max-Age=${SESSION_TTL_S}; HttpOnly; Secure; SameSite=Strict$`));
  assert.doesNotMatch(setCookie, /the-admin-token/);
  const value = setCookie.split(';')[0]!;
  assert.equal(s.valid(`other=1; ${value}`, t0 + 1000), true);
  assert.equal(s.valid(value, t0 + SESSION_TTL_S * 1000 + 1), false, 'expired');
  assert.equal(new UiSessions('the-admin-token').valid(value, t0), false, 'another process (restart)');
  assert.equal(new UiSessions('another-token', Buffer.alloc(32)).valid(new UiSessions('the-admin-token', Buffer.alloc(32)).issue(t0).split(';')[0], t0), false, 'another admin token');
  const [, exp, mac] = value.split('=')[1]!.split('.');
  assert.equal(s.valid(`${SESSION_COOKIE}=v1.${Number(exp) + 100000}.${mac}`, t0), false, 'a later expiry with the old MAC');
  assert.equal(s.valid(`${SESSION_COOKIE}=v1.${exp}.${mac!.slice(0, -1)}A`, t0), mac!.endsWith('A'), 'a changed MAC');
  assert.equal(s.valid(undefined, t0), false);
  assert.equal(s.valid('the-admin-token', t0), false);
});
