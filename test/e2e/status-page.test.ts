// End to end: the status page of a real coordinator over a real three-node cluster, with the
// probes into node-3 failing on purpose (its pgd_replication role given CONNECTION LIMIT 0, which
// the agent does not manage: PostgreSQL itself refuses, with its own message), read in real
// headless Chromium: sign in with the admin token, see the red cells and PostgreSQL's message,
// save a screenshot. Without a session the page is a 401 with no cluster data.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { demoSpec } from '../../bin/demo.ts';
import { query } from '../helpers/pg.ts';
import { Chromium } from '../helpers/chromium.ts';
import { startLocalNodes } from '../helpers/local-nodes.ts';
import { waitFor } from '../helpers/wait.ts';

const SCREENSHOT = process.env.PGACCORD_SCREENSHOT ?? '/tmp/pgaccord-status-page.png';
const REFUSAL = 'too many connections for role "pgd_replication"';

test('status page in headless Chromium: the failing probe cells and PostgreSQL\'s message; 401 without a session', async (t) => {
  const { cluster, ports } = await startLocalNodes();
  const applied = await cluster.apply({ ...demoSpec(ports), name: 'shop' });
  assert.equal(applied.code, 0, applied.stderr);
  // A role's CONNECTION LIMIT is outside what the agents manage: a converged node sees it at its
  // next steady proof (--prove-every), not at once.
  for (const name of Object.keys(ports)) await cluster.startAgent('shop', name, ['--prove-every', '5']);
  await cluster.waitConverged('shop', 180_000);

  const base = cluster.coordinatorUrl;
  const token = (await readFile(join(cluster.coordinatorDir, 'admin.token'), 'utf8')).trim();
  const dispatcher = new Agent({ connect: { ca: await readFile(cluster.adminEnv.PGACCORD_CA!, 'utf8') } });
  after(() => dispatcher.close());

  // --- without a session: 401, the login form only, the headers ---------------------------
  const anon = await request(`${base}/ui`, { dispatcher });
  const anonBody = await anon.body.text();
  assert.equal(anon.statusCode, 401);
  assert.match(String(anon.headers['content-security-policy']), /^default-src 'none'; style-src 'sha256-[A-Za-z0-9+/]+=*'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'$/);
  assert.equal(anon.headers['x-content-type-options'], 'nosniff');
  assert.equal(anon.headers['referrer-policy'], 'no-referrer');
  assert.equal(anon.headers['cache-control'], 'no-store');
  assert.match(anonBody, /action="\/ui\/login"/);
  for (const secret of ['shop', 'node-1', 'pgd_replication', '127.0.0.1']) assert.ok(!anonBody.includes(secret), `the 401 page names ${secret}`);
  // the bearer header is the API's way, not the page's: the page takes its session cookie only
  const bearer = await request(`${base}/ui`, { dispatcher, headers: { authorization: `Bearer ${token}` } });
  assert.equal(bearer.statusCode, 401);
  assert.ok(!(await bearer.body.text()).includes('node-1'));
  const wrong = await request(`${base}/ui/login`, { dispatcher, method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'token=not-the-token' });
  assert.equal(wrong.statusCode, 401);
  assert.equal(wrong.headers['set-cookie'], undefined);
  await wrong.body.text();
  // the form encoding is the login route's alone: the JSON API still refuses it
  const api = await request(`${base}/v1/clusters/shop/plan`, { dispatcher, method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/x-www-form-urlencoded' }, body: 'a=b' });
  assert.equal(api.statusCode, 415);
  await api.body.text();
  // a forged cookie is no session
  const forged = await request(`${base}/ui`, { dispatcher, headers: { cookie: `__Host-pgaccord-ui=v1.9999999999.${'A'.repeat(43)}` } });
  assert.equal(forged.statusCode, 401);
  await forged.body.text();

  // --- break the edges into node-3 and wait until the status shows it ---------------------
  await query(cluster.nodes.get('node-3')!.pg, 'ALTER ROLE pgd_replication CONNECTION LIMIT 0');
  await waitFor('the probes into node-3 failing, the others passing', async () => {
    const s = await cluster.status('shop');
    const failing = s.nodes.flatMap((n) => n.probes.filter((p) => !p.ok).map((p) => `${n.node}->${p.to}`)).sort();
    const ok = s.nodes.flatMap((n) => n.probes.filter((p) => p.ok)).length;
    if (failing.join() === 'node-1->node-3,node-2->node-3' && ok === 4) return true;
    throw new Error(JSON.stringify(s.nodes.map((n) => ({ node: n.node, probes: n.probes.map((p) => [p.to, p.ok, p.error]) }))));
  }, 180_000, 1000);

  // the same matrix in `pgaccord status`
  const text = await cluster.cli(['status', 'shop']);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /\n1 node-1  - ✓ ✗\n2 node-2  ✓ - ✗\n3 node-3  ✓ ✓ -\n/);
  t.diagnostic(text.stdout);

  // --- the browser ------------------------------------------------------------------------
  const browser = await Chromium.launch();
  after(() => browser.close());
  await browser.send('Emulation.setDeviceMetricsOverride', { width: 1100, height: 900, deviceScaleFactor: 1, mobile: false });
  await browser.goto(`${base}/ui`);
  assert.equal(await browser.evaluate('document.title'), 'pgaccord: sign in');
  assert.equal(await browser.evaluate('document.body.innerText.includes("node-1")'), false, 'no cluster data before signing in');
  const signedIn = browser.event('Page.loadEventFired');
  await browser.evaluate(`document.getElementById('token').value = ${JSON.stringify(token)}; document.querySelector('form').submit(); true`);
  await signedIn;
  assert.equal(await browser.evaluate('document.title'), 'pgaccord status');
  const cookies = await browser.send<{ cookies: { name: string; value: string; httpOnly: boolean; secure: boolean; sameSite: string }[] }>('Network.getCookies', { urls: [base] });
  const session = cookies.cookies.find((c) => c.name === '__Host-pgaccord-ui');
  assert.ok(session, 'the session cookie is set');
  assert.deepEqual([session.httpOnly, session.secure, session.sameSite], [true, true, 'Strict']);
  assert.ok(!session.value.includes(token), 'the cookie does not hold the token');
  assert.equal(await browser.evaluate('document.cookie'), '', 'HttpOnly: the page cannot read it');

  const cell = (from: string, to: string) => browser.evaluate<{ state: string; text: string; bg: string; title: string } | null>(`(() => {
    const td = document.querySelector('td[data-from="${from}"][data-to="${to}"]');
    return td && { state: td.dataset.state, text: td.textContent, bg: getComputedStyle(td).backgroundColor, title: td.title };
  })()`);
  const failed = await cell('node-1', 'node-3');
  assert.equal(failed?.state, 'failing');
  assert.equal(failed?.text, '✗');
  // the colour proves the stylesheet ran under the CSP (its hash allowed it)
  assert.equal(failed?.bg, 'rgb(207, 34, 46)');
  assert.ok(failed?.title.includes(REFUSAL), failed?.title);
  assert.equal((await cell('node-2', 'node-3'))?.state, 'failing');
  for (const [from, to] of [['node-1', 'node-2'], ['node-2', 'node-1'], ['node-3', 'node-1'], ['node-3', 'node-2']]) {
    const c = await cell(from!, to!);
    assert.equal(c?.state, 'ok', `${from} -> ${to}`);
    assert.equal(c?.bg, 'rgb(45, 164, 78)');
  }
  const errors = await browser.evaluate<string[]>(`[...document.querySelectorAll('li.probe-error')].map((li) => li.innerText)`);
  assert.equal(errors.length, 2, errors.join('\n'));
  for (const e of errors) assert.match(e, new RegExp(`^node-[12] → node-3 as pgd_replication at .*: .*${REFUSAL.replace(/"/g, '"')}`));
  const rows = await browser.evaluate<string[]>(`[...document.querySelectorAll('table.nodes tbody tr')].map((tr) => tr.innerText.replace(/\\s+/g, ' '))`);
  assert.equal(rows.length, 3);
  for (const r of rows) assert.match(r, /^node-\d \w+ 0 \(\d+ of \d+\) \d+ s ago \d+(\.\d)? - \d+ms \(\w+ \d+\)(, probed \d+ in \d+ms)?$/, r);

  const shot = await browser.send<{ data: string }>('Page.captureScreenshot', { format: 'png', captureBeyondViewport: true });
  await writeFile(SCREENSHOT, Buffer.from(shot.data, 'base64'));
  console.log(`screenshot of the status page: ${SCREENSHOT}`);
  t.diagnostic(`screenshot: ${SCREENSHOT}`);

  // signing out ends the session in the browser
  const signedOut = browser.event('Page.loadEventFired');
  await browser.evaluate(`document.querySelector('form.logout').submit(); true`);
  await signedOut;
  assert.equal(await browser.evaluate('document.title'), 'pgaccord: sign in');
});
