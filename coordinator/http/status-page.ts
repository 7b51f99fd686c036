// Pure: the read-only status page, one self-contained HTML document rendered from the same
// ClusterStatusResponse documents the API returns. No script, no external asset: the only
// thing the browser may load is the one inline stylesheet, allowed by its hash in the CSP.
// Every value from a status goes through `esc` (node names, PostgreSQL's messages, conninfo).
import { createHash } from 'node:crypto';
import type { ClusterStatusResponse, NodeStatusView } from '../../shared/contract/api.ts';
import { probeFailed, probeMatrix, type EdgeState } from '../cluster/probe-matrix.ts';
import { ago, applyTime } from '../cluster/lifecycle.ts';

/** The one escaper: text and double-quoted attribute values alike. */
export function esc(value: unknown): string {
  return String(value).replace(/[&<>"'`]/g, (c) => `&#${c.charCodeAt(0)};`);
}

const CSS = `
:root{color-scheme:light;font:14px/1.4 system-ui,sans-serif;color:#1b1f24;background:#f6f7f9}
body{margin:0 auto;max-width:1200px;padding:16px 24px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px}h3{font-size:14px;margin:16px 0 6px}
.meta{color:#57606a;margin:0 0 8px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;vertical-align:middle}
.good{background:#d4f4dd;color:#116329}.bad{background:#ffd8d3;color:#a40e26}.warn{background:#fff1c2;color:#7a4d00}
table{border-collapse:collapse;background:#fff}
.nodes td,.nodes th{border:1px solid #d0d7de;padding:3px 8px;text-align:left}
.nodes th{background:#eef1f4}
.matrix th,.matrix td{border:1px solid #d0d7de;width:26px;height:26px;padding:0;text-align:center;font-size:13px}
.matrix th{background:#eef1f4;font-weight:600;font-size:12px}
.matrix th.from{text-align:right;padding:0 6px;width:auto;white-space:nowrap}
.matrix th.to{height:auto;padding:6px 0;vertical-align:bottom}
.matrix th.to span{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap}
.cell-ok{background:#2da44e;color:#fff}.cell-failing{background:#cf222e;color:#fff;font-weight:700}.cell-awaiting{background:#d4a72c;color:#fff}
.cell-none{background:#eaeef2;color:#8c959f}.cell-self{background:#fff;color:#d0d7de}
.legend span{display:inline-block;padding:0 6px;margin-right:6px;border-radius:3px}
ul.errors{margin:0;padding-left:18px}ul.errors li{margin:3px 0}
code,.pg{font-family:ui-monospace,monospace;font-size:12px}
.pg{white-space:pre-wrap;color:#a40e26}
form{background:#fff;border:1px solid #d0d7de;padding:16px;max-width:420px}
form.logout{border:0;padding:0;background:none;margin:0 0 8px}
input[type=password]{width:100%;box-sizing:border-box;margin:6px 0 10px;padding:4px}
`;

/** The CSP source for the stylesheet above; the page carries no other inline content. */
export const STYLE_HASH = `sha256-${createHash('sha256').update(CSS).digest('base64')}`;

/** Headers every page response carries (the login form included). */
export function pageHeaders(): Record<string, string> {
  return {
    'content-type': 'text/html; charset=utf-8',
    // default-src 'none': no script, image, font, frame or connection; form-action does not
    // fall back to default-src, so it is named: the login form posts to this origin only.
    'content-security-policy': `default-src 'none'; style-src '${STYLE_HASH}'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'`,
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
    'cache-control': 'no-store',
    'x-frame-options': 'DENY',
  };
}

function doc(title: string, body: string): string {
  const head = `<meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>${esc(title)}</title><style>${CSS}</style>`;
  return `<!DOCTYPE html>\n<html lang="en"><head>${head}</head><body>\n${body}\n</body></html>\n`;
}

/** The page a visitor without a session gets (401): a form for the admin token, nothing about any cluster. */
export function renderLoginPage(message: string | null): string {
  return doc('pgaccord: sign in', `<h1>pgaccord status</h1>
<p class="meta">This page needs the coordinator's admin token. It is sent once and exchanged for a session cookie; the cookie never holds the token.</p>
${message ? `<p class="badge bad" id="login-error">${esc(message)}</p>` : ''}
<form method="post" action="/ui/login"><label for="token">Admin token</label>
<input type="password" id="token" name="token" autocomplete="off" required>
<button type="submit">Sign in</button></form>`);
}

/** The fewest days left of any certificate the node uses (served, installed, identity). */
function certDaysLeft(n: NodeStatusView, now: Date): number | null {
  const days = n.expiry?.length
    ? n.expiry.map((e) => e.daysLeft)
    : [n.servedCertificate, ...n.certificates].filter((c) => c !== null).map((c) => (Date.parse(c.notAfter) - now.getTime()) / 86400_000);
  return days.length ? Math.min(...days) : null;
}

const ms = (v: number): string => `${Math.round(v * 10) / 10} ms`;

/**
 * The node's apply of its generation (total, slowest phase) and its last probe-only pass (where
 * most edges are probed), as `pgaccord status` words them; every phase in the title.
 */
function timingsCell(n: NodeStatusView): string {
  const t = n.timings;
  if (!t) return '<td class="timings">-</td>';
  const p = t.probePass;
  const title = Object.entries(t.phases).map(([phase, v]) => `${phase} ${ms(v)}`).join(', ')
    + (p ? `; probe-only pass (${p.reason}, ${p.passes} pass${p.passes === 1 ? '' : 'es'}): ${p.edges} edges in ${ms(p.ms)}` : '');
  return `<td class="timings" title="${esc(title)}">${esc(applyTime(n))}</td>`;
}

const CELL_TEXT: Record<EdgeState, string> = { ok: '✓', failing: '✗', awaiting: '…', none: '·', self: '' };
const CELL_WORD: Record<EdgeState, string> = { ok: 'ok', failing: 'FAILING', awaiting: 'awaiting its peer', none: 'not probed', self: 'self' };

function nodesTable(s: ClusterStatusResponse, now: Date): string {
  const rows = s.nodes.map((n) => {
    const lag = s.generation - n.appliedGeneration;
    const days = certDaysLeft(n, now);
    const phaseClass = n.phase === 'converged' && !n.stale ? 'good' : n.phase === 'failed' || n.stale ? 'bad' : 'warn';
    const phase = `${n.phase}${n.stale ? ' (stale)' : ''}${n.enrolled ? '' : ' (not enrolled)'}`;
    const daysClass = days === null ? '' : days < 0 ? 'bad' : days < 14 ? 'warn' : 'good';
    return `<tr data-node="${esc(n.node)}"><td>${esc(n.node)}</td><td><span class="badge ${phaseClass}">${esc(phase)}</span></td>`
      + `<td>${lag === 0 ? '0' : `<span class="badge warn">${esc(lag)}</span>`} `
      + `<span class="meta">(${esc(n.appliedGeneration)} of ${esc(s.generation)})</span></td>`
      + `<td title="${esc(n.lastContact ?? '')}">${esc(ago(n.lastContact, now))}</td>`
      + `<td>${days === null ? '-' : `<span class="badge ${daysClass}">${days < 0 ? 'EXPIRED' : esc(days.toFixed(days < 10 ? 1 : 0))}</span>`}</td>`
      + `<td>${n.pendingRestart.length ? esc(n.pendingRestart.join(', ')) : '-'}</td>${timingsCell(n)}</tr>`;
  });
  const heads = ['Node', 'Phase', 'Generation lag', 'Last contact', 'Certificate days left', 'Pending restart', 'Apply time'].map((h) => `<th>${h}</th>`).join('');
  return `<table class="nodes"><thead><tr>${heads}</tr></thead><tbody>${rows.join('')}</tbody></table>`;
}

function matrixTable(s: ClusterStatusResponse): string {
  const m = probeMatrix(s);
  if (m.nodes.length < 2) return '<p class="meta">A single node: no inter-node probes.</p>';
  const head = `<tr><th class="from">from \\ to</th>${m.nodes.map((n) => `<th class="to" scope="col"><span>${esc(n)}</span></th>`).join('')}</tr>`;
  const rows = m.cells.map((row, i) => `<tr><th class="from" scope="row">${esc(m.nodes[i])}</th>${row.map((c) => {
    const detail = c.probes.map((p) => `${p.role}: ${p.ok ? `ok${p.tlsVersion ? ` (${p.tlsVersion})` : ''}` : p.error ?? 'failed'}`).join('; ');
    const title = `${c.from} → ${c.to}: ${CELL_WORD[c.state]}${detail ? ` (${detail})` : ''}`;
    const attrs = `class="cell-${c.state}" data-from="${esc(c.from)}" data-to="${esc(c.to)}" data-state="${c.state}" title="${esc(title)}"`;
    return `<td ${attrs}>${CELL_TEXT[c.state]}</td>`;
  }).join('')}</tr>`);
  const legend = '<p class="legend meta"><span class="cell-ok">✓ ok</span><span class="cell-failing">✗ failing</span><span class="cell-awaiting">… awaiting its peer</span><span class="cell-none">· not probed</span>'
    + 'rows: from, columns: to</p>';
  return `<table class="matrix">${head}${rows.join('')}</table>${legend}`;
}

function errorList(s: ClusterStatusResponse): string {
  const items = s.nodes.flatMap((n) => [
    ...n.errors.map((e) => `<li><b>${esc(n.node)}</b> <code>${esc(e.code)}</code> <span class="pg">${esc(e.message)}</span></li>`),
    ...n.probes.filter(probeFailed).map((p) => `<li class="probe-error"><b>${esc(n.node)} → ${esc(p.to)}</b> as <code>${esc(p.role)}</code> `
      + `at ${esc(p.at)}: <span class="pg">${esc(p.error ?? 'failed')}</span></li>`),
    ...(n.checks ?? []).filter((c) => !c.ok).map((c) => `<li><b>${esc(n.node)}</b> check <code>${esc(c.name)}</code> `
      + `failed${c.note ? `: <span class="pg">${esc(c.note)}</span>` : ''}</li>`),
  ]);
  return items.length ? `<ul class="errors">${items.join('')}</ul>` : '<p class="meta">None.</p>';
}

function clusterSection(s: ClusterStatusResponse, now: Date): string {
  const warnings = [...(s.insecure ? ['INSECURE: trust rules'] : []), ...(s.warnings ?? [])];
  return `<section class="cluster" data-cluster="${esc(s.cluster)}">
<h2>${esc(s.cluster)} <span class="badge ${s.converged ? 'good' : 'bad'}">${s.converged ? 'converged' : 'not converged'}</span></h2>
<p class="meta">generation ${esc(s.generation)} · auth ${esc(s.auth)} · sslmode ${esc(s.sslmode)} · ${esc(s.nodes.length)} nodes</p>
${warnings.length ? `<ul class="errors">${warnings.map((w) => `<li class="badge warn">${esc(w)}</li>`).join('')}</ul>` : ''}
<h3>Nodes</h3>${nodesTable(s, now)}
<h3>Probe matrix</h3>${matrixTable(s)}
<h3>Recent errors</h3>${errorList(s)}
</section>`;
}

/** The whole page for every cluster, as of `now` (the clock is the caller's: the same input renders the same page). */
export function renderStatusPage(statuses: ClusterStatusResponse[], now: Date): string {
  return doc('pgaccord status', `<h1>pgaccord status</h1>
<p class="meta">As of ${esc(now.toISOString())} (reload for newer) · ${esc(statuses.length)} cluster${statuses.length === 1 ? '' : 's'}</p>
<form method="post" action="/ui/logout" class="logout"><button type="submit">Sign out</button></form>
${statuses.length ? statuses.map((s) => clusterSection(s, now)).join('\n') : '<p>No clusters.</p>'}`);
}
