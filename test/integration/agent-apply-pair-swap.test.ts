// A client certificate and its key under fixed names (pgd's <state>/client/bdr_client.{crt,key},
// the same code path as pg_auto_failover's ~/.postgresql and TimescaleDB's <md5>.{crt,key})
// are two files that libpq opens one after the other: sslcert, then sslkey. No pair of renames
// is atomic for such a reader; the agent stages both files and renames them back to back.
// Measured here with real libpq against a real server:
//  - a tight hammer (a C program linked with libpq, connecting as fast as it can as the
//    server's OS user) while the pair is swapped as fast as possible, once the old way (two
//    separate installFile calls) and once with installFiles: the mismatch rate of each;
//  - psql loops with the client's own connection string while applyDesired alternates two
//    certificate sets with different keys (a re-key storm): no failure other than a mismatch,
//    and the mismatch rate is reported. Zero cannot be asserted: with fixed names a reader that
//    opens sslcert just before the two renames and sslkey just after them sees a new key with
//    the old certificate (docs/profiles.md, "Client certificate renewal under fixed names");
//  - the same two storms with two certificates for the SAME client key, as the certificate
//    manager (agent/runtime/certs.ts) now renews fixed-name client slots: zero mismatches, asserted.
// Also pinned: libpq accepts one file holding certificate and key given as both sslcert and
// sslkey (it still opens it twice, so that alone does not make a swap atomic).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, writeFile, chown } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { applyDesired } from '../../agent/apply/apply.ts';
import { installFile, installFiles, type FileSpec } from '../../shared/system/atomic-file.ts';
import type { InstalledCertificate } from '../../shared/pgconf/types.ts';
import { agentFixture, psqlAs, ROLE } from '../helpers/agent-fixture.ts';
import { editConninfo } from '../helpers/libpq.ts';

const execFileAsync = promisify(execFile);
const f = await agentFixture();
const SECONDS = Number(process.env.PGACCORD_SWAP_SECONDS ?? 8);

const work = await mkdtemp('/tmp/pgaccord-pair-swap-');
await chmod(work, 0o755);
const hammerBin = join(work, 'hammer');
const { stdout: includeDir } = await execFileAsync('pg_config', ['--includedir']);
await execFileAsync('gcc', ['-O2', '-o', hammerBin, join(import.meta.dirname, '..', 'helpers', 'libpq-hammer.c'), `-I${includeDir.trim()}`, '-lpq']);

interface Counts { ok: number; mismatch: number; other: number }

/** The hammer, as the server's OS user (libpq insists the key is its own), for `seconds`. */
function hammer(conninfo: string, seconds: number): Promise<Counts> {
  return new Promise((resolve, reject) => {
    const child = spawn(hammerBin, [conninfo, String(seconds)], { uid: f.pg.osUser.uid, gid: f.pg.osUser.gid, env: { PATH: '/usr/bin:/bin', HOME: f.pg.osUser.home }, cwd: '/' });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d));
    child.stderr.on('data', (d: Buffer) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out) as Counts) : reject(new Error(`hammer exited ${code}: ${err}`))));
  });
}

const rate = (c: Counts): string => `${c.mismatch}/${c.ok + c.mismatch + c.other} (${((100 * c.mismatch) / Math.max(1, c.ok + c.mismatch + c.other)).toFixed(3)} %)`;

test.after(() => rm(work, { recursive: true, force: true }));

// Two certificate sets, as two renewals would leave them.
const setA = await f.issue('cert');
const setB = await f.issue('cert');

/**
 * A new certificate (new serial) for the same key as `c`, under new versioned names in the tls
 * directory: what a routine renewal of a fixed-name client slot now leaves (agent/runtime/certs.ts).
 */
async function recertify(c: InstalledCertificate): Promise<InstalledCertificate> {
  const serial = `7${randomBytes(8).toString('hex')}`;
  const tmp = await mkdtemp('/tmp/pgaccord-recert-');
  try {
    const csr = join(tmp, 'leaf.csr');
    const ext = join(tmp, 'ext.cnf');
    const crt = join(tmp, 'leaf.crt');
    await execFileAsync('openssl', ['req', '-new', '-key', c.keyPath, '-out', csr, '-subj', `/CN=${ROLE}`]);
    await writeFile(ext, 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n');
    await execFileAsync('openssl', ['x509', '-req', '-in', csr, '-CA', f.ca.certPath, '-CAkey', f.ca.keyPath, '-set_serial', `0x${serial}`, '-extfile', ext, '-days', '1', '-out', crt]);
    const keyPath = join(f.tlsDir, `${c.slot}-${serial}.key`);
    const certPath = join(f.tlsDir, `${c.slot}-${serial}.crt`);
    await writeFile(keyPath, await readFile(c.keyPath), { mode: 0o600 });
    await writeFile(certPath, await readFile(crt), { mode: 0o644 });
    if (process.getuid?.() === 0) for (const p of [keyPath, certPath]) await chown(p, f.pg.osUser.uid, f.pg.osUser.gid);
    const { stdout } = await execFileAsync('openssl', ['x509', '-in', certPath, '-noout', '-enddate']);
    return { slot: c.slot, certPath, keyPath, serial, notAfter: new Date(stdout.trim().replace(/^notAfter=/, '')).toISOString() };
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

// A renewal of set A as the agent now makes it: a new server pair (new key, switched atomically
// under versioned names) and a new client certificate for the same client key.
const clientA = setA.find((c) => c.slot.startsWith('client-'))!;
const setA2 = [...(await f.issue('scram-sha-256')), await recertify(clientA)];
const desired = f.desired({ auth: 'cert', sslmode: 'verify-full' });
const first = await applyDesired(f.ctx, { desired, certificates: setA });
assert.equal(first.phase, 'converged', JSON.stringify(first.errors));
const conninfo = first.clientConnections[0]!.conninfo;
const fixedCert = join(f.ctx.stateDir, 'client', 'bdr_client.crt');
const fixedKey = join(f.ctx.stateDir, 'client', 'bdr_client.key');

test('the pgd connection string names the fixed client files, and they work', async () => {
  assert.match(conninfo, new RegExp(`sslcert=${fixedCert}`));
  assert.match(conninfo, new RegExp(`sslkey=${fixedKey}`));
  assert.equal(await psqlAs(f.pg, conninfo), ROLE);
});

test('libpq: one file with certificate and key, named as both sslcert and sslkey, is accepted', async () => {
  const client = setA.find((c) => c.slot.startsWith('client-'))!;
  const combined = join(f.ctx.stateDir, 'client', 'combined.pem');
  await writeFile(combined, (await readFile(client.certPath, 'utf8')) + (await readFile(client.keyPath, 'utf8')), { mode: 0o600 });
  if (process.getuid?.() === 0) await chown(combined, f.pg.osUser.uid, f.pg.osUser.gid);
  try {
    assert.equal(await psqlAs(f.pg, editConninfo(conninfo, { sslcert: combined, sslkey: combined })), ROLE);
  } finally {
    await rm(combined, { force: true });
  }
});

async function pairSpecs(set: InstalledCertificate[]): Promise<[FileSpec, FileSpec]> {
  const c = set.find((x) => x.slot.startsWith('client-'))!;
  const { uid, gid } = f.pg.osUser;
  return [
    { path: fixedCert, content: await readFile(c.certPath), mode: 0o644, uid, gid },
    { path: fixedKey, content: await readFile(c.keyPath), mode: 0o600, uid, gid },
  ];
}

/** Swap the fixed pair A, B, A, ... (or A, A2, ...) as fast as the writer can while the hammer connects. */
async function storm(write: (pair: [FileSpec, FileSpec]) => Promise<void>, other = setB): Promise<{ counts: Counts; swaps: number }> {
  const pairs = [await pairSpecs(setA), await pairSpecs(other)];
  let swaps = 0;
  let stop = false;
  const hammering = hammer(conninfo, SECONDS).finally(() => (stop = true));
  while (!stop) {
    await write(pairs[swaps % 2]!);
    swaps++;
  }
  return { counts: await hammering, swaps };
}

test('fixed names: mismatch rate of a reader under a swap storm, two installFile calls vs installFiles', { timeout: 120_000 }, async () => {
  const before = await storm(async ([cert, key]) => {
    await installFile(cert);
    await installFile(key);
  });
  const after = await storm(async (pair) => {
    await installFiles(pair);
  });
  console.log(`# separate renames (before): ${before.swaps} swaps, mismatches ${rate(before.counts)}`);
  console.log(`# installFiles (after):      ${after.swaps} swaps, mismatches ${rate(after.counts)}`);
  for (const r of [before, after]) {
    assert.equal(r.counts.other, 0, 'only key/certificate mismatches may fail');
    assert.ok(r.counts.ok > 50 && r.swaps > 50, `the storm ran (${JSON.stringify(r)})`);
  }
  const per = (r: typeof before) => r.counts.mismatch / (r.counts.ok + r.counts.mismatch);
  assert.ok(per(before) > 0, 'the storm does catch the old writer between its two renames');
  assert.ok(per(after) * 2 < per(before), `back-to-back renames fail far less often than separate ones (${rate(after.counts)} vs ${rate(before.counts)})`);
  // put set A back for the next test
  await installFiles(await pairSpecs(setA));
});

test('same key, two certificates: a swap storm of the fixed pair gives no mismatch at all', { timeout: 120_000 }, async () => {
  const c = setA2.find((x) => x.slot.startsWith('client-'))!;
  assert.equal(await readFile(c.keyPath, 'utf8'), await readFile(clientA.keyPath, 'utf8'));
  assert.notEqual(await readFile(c.certPath, 'utf8'), await readFile(clientA.certPath, 'utf8'));
  // The worst writer (two separate renames, the widest window) and the agent's own.
  const separate = await storm(async ([cert, key]) => {
    await installFile(cert);
    await installFile(key);
  }, setA2);
  const staged = await storm(async (pair) => {
    await installFiles(pair);
  }, setA2);
  console.log(`# same key, separate renames: ${separate.swaps} swaps, mismatches ${rate(separate.counts)}`);
  console.log(`# same key, installFiles:     ${staged.swaps} swaps, mismatches ${rate(staged.counts)}`);
  for (const r of [separate, staged]) {
    assert.ok(r.counts.ok > 50 && r.swaps > 50, `the storm ran (${JSON.stringify(r)})`);
    assert.deepEqual({ mismatch: r.counts.mismatch, other: r.counts.other }, { mismatch: 0, other: 0 }, 'every old/new combination matches');
  }
  await installFiles(await pairSpecs(setA));
});

/** psql loops with the client connection string while applyDesired alternates `sets`, `rounds` times. */
async function applyStorm(sets: [InstalledCertificate[], InstalledCertificate[]], rounds: number): Promise<{ connections: number; failures: string[] }> {
  let stop = false;
  const failures: string[] = [];
  let connections = 0;
  const loop = async () => {
    while (!stop) {
      try {
        assert.equal(await psqlAs(f.pg, conninfo), ROLE);
        connections++;
      } catch (e) {
        failures.push((e as Error).message);
      }
    }
  };
  const loops = [loop(), loop()];
  try {
    for (let i = 0; i < rounds; i++) {
      const r = await applyDesired(f.ctx, { desired, certificates: sets[(i + 1) % 2]! });
      assert.equal(r.phase, 'converged', JSON.stringify(r.errors));
      assert.equal(r.clientConnections[0]!.conninfo, conninfo, 'the connection string does not change with a renewal');
    }
  } finally {
    stop = true;
    await Promise.all(loops);
  }
  return { connections, failures };
}

const ROUNDS = Number(process.env.PGACCORD_SWAP_ROUNDS ?? 30);

test('re-key storm through applyDesired: psql with the client connection string fails only by a rare mismatch', { timeout: 300_000 }, async () => {
  const { connections, failures } = await applyStorm([setA, setB], ROUNDS);
  console.log(`# ${ROUNDS} applies alternating two certificate sets (re-key): ${connections} psql connections, ${failures.length} failures`);
  assert.deepEqual(failures.filter((m) => !/key values mismatch|does not match private key/.test(m)), [], 'no failure but a key/certificate mismatch');
  assert.ok(failures.length * 20 < connections + failures.length, `mismatches stay rare (${failures.length} of ${connections + failures.length})`);
  assert.ok(connections > ROUNDS);
});

test('renewal storm for the same client key through applyDesired: no failure at all', { timeout: 300_000 }, async () => {
  const { connections, failures } = await applyStorm([setA, setA2], ROUNDS);
  console.log(`# ${ROUNDS} applies alternating two certificate sets (same client key): ${connections} psql connections, ${failures.length} failures`);
  assert.deepEqual(failures, []);
  assert.ok(connections > ROUNDS);
});
