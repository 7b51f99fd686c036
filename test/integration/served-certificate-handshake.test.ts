// The agent's served-certificate check (agent/apply/pgconf.ts servedCertificate) against a real
// PostgreSQL 15 with ssl on: it runs at every proof, so it must leave nothing in the server's log.
// A client that drops the socket as soon as it has the server certificate (under TLS 1.3, before
// the server has read the client's Finished) makes every check log
// `could not accept SSL connection: EOF detected` (issue 12). A completed handshake followed by
// close_notify, before any startup packet, is an EOF PostgreSQL does not complain about.
import assert from 'node:assert/strict';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { servedCertificate } from '../../agent/apply/pgconf.ts';
import { issueLeaf, makeCa } from '../helpers/agent-certs.ts';
import { query, throwawayPg } from '../helpers/pg.ts';
import { waitFor } from '../helpers/wait.ts';

/** Children of the postmaster still under its own process title: backends before a startup packet. */
async function unstartedBackends(postmaster: number): Promise<number> {
  const title = await readFile(`/proc/${postmaster}/cmdline`, 'latin1');
  let n = 0;
  for (const pid of (await readdir('/proc')).filter((p) => /^\d+$/.test(p))) {
    const st = await readFile(`/proc/${pid}/stat`, 'latin1').catch(() => '');
    const ppid = Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]);
    if (ppid === postmaster && (await readFile(`/proc/${pid}/cmdline`, 'latin1').catch(() => '')) === title) n++;
  }
  return n;
}

test('five served-certificate checks of a PostgreSQL 15 with ssl on: the serial each time, nothing in the server log but the connections', async () => {
  const ca = await makeCa('served certificate handshake test CA');
  try {
    const pg = await throwawayPg();
    const leaf = await issueLeaf(ca, { slot: 'server', commonName: '127.0.0.1', ips: ['127.0.0.1'], usage: 'server', dir: join(pg.dataDir, 'tls'), owner: pg.osUser });
    await query(pg, `ALTER SYSTEM SET ssl_cert_file = '${leaf.certPath}'`);
    await query(pg, `ALTER SYSTEM SET ssl_key_file = '${leaf.keyPath}'`);
    await query(pg, 'ALTER SYSTEM SET ssl = on');
    await query(pg, 'SELECT pg_reload_conf()');
    await waitFor('ssl on after the reload', async () => (await query<{ ssl: string }>(pg, 'SHOW ssl'))[0]!.ssl === 'on', 15_000, 50);
    const postmaster = Number((await readFile(join(pg.dataDir, 'postmaster.pid'), 'latin1')).split('\n')[0]);
    const from = (await stat(pg.logFile)).size;
    const N = 5;
    for (let i = 0; i < N; i++) {
      const served = await servedCertificate('127.0.0.1', pg.port);
      assert.equal(served?.serial.replace(/^0+/, ''), leaf.serial.replace(/^0+/, ''));
    }
    // Each backend logs its complaint, if any, before it exits: wait for all of them to be gone.
    await waitFor('the checks\' backends to exit', async () => (await unstartedBackends(postmaster)) === 0, 30_000, 50);
    const lines = (await readFile(pg.logFile, 'utf8')).slice(from).split('\n').filter((l) => l.trim() !== '');
    const connections = lines.filter((l) => /connection received: host=127\.0\.0\.1/.test(l));
    assert.equal(connections.length, N, lines.join('\n'));
    assert.deepEqual(lines.filter((l) => /could not accept SSL connection|EOF|could not receive data/.test(l)), []);
    assert.deepEqual(lines.filter((l) => !connections.includes(l)), [], 'nothing but the connections is logged');
  } finally {
    await ca.destroy();
  }
});
