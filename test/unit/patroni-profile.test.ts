// Profile `patroni`, pure parts: what the compiler gives a member (rules, roles, certificates),
// the fragment the agent writes for Patroni to include, and what `apply --dry-run` shows of it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compileCluster, rolesNeedingPasswords } from '../../coordinator/cluster/compile.ts';
import { scramVerifier } from '../../shared/crypto/scram.ts';
import type { AuthModel, ClusterSpec, NodeDesired } from '../../shared/contract/schema.ts';
import { planNode } from '../../shared/pgconf/plan.ts';
import { previewNode } from '../../shared/pgconf/preview.ts';
import { layoutFor } from '../../shared/pgconf/layout.ts';
import { patroniBaseConf } from '../../shared/pgconf/patroni.ts';
import { validateSpec } from '../../coordinator/cluster/spec.ts';

const spec = (auth: AuthModel): ClusterSpec => ({
  name: 'pat',
  profile: 'patroni',
  auth,
  tls: { sslmode: 'verify-full' },
  nodes: [1, 2, 3].map((i) => ({ name: `m${i}`, host: `db${i}.example.com`, address: `10.0.0.${i}`, kind: 'member' })),
});

function compile(auth: AuthModel): Map<string, NodeDesired> {
  const s = spec(auth);
  const credentials = Object.fromEntries(rolesNeedingPasswords(s).map((r) => [r, { password: `pw-${r}`, verifier: scramVerifier(`pw-${r}`, Buffer.alloc(16, 1)) }]));
  return compileCluster({ spec: s, generation: 1, credentials, caBundle: 'CA', crl: 'CRL' });
}

test('patroni spec validates; every member gets the rules of all members for replicator and rewind_user, REST API and client certificates', () => {
  const v = validateSpec(spec('cert'));
  assert.ok(v.ok, JSON.stringify(v));
  const m1 = compile('cert').get('m1')!;
  const rules = m1.hba.map((r) => `${r.type} ${r.databases.map((d) => ('name' in d ? d.name : d.keyword)).join(',')} ${r.users.map((u) => ('name' in u ? u.name : u.keyword)).join(',')} ${r.address} ${r.method}`);
  for (const i of [1, 2, 3]) {
    assert.ok(rules.includes(`hostssl replication,postgres replicator 10.0.0.${i}/32 cert`), rules.join('\n'));
    assert.ok(rules.includes(`hostssl postgres rewind_user 10.0.0.${i}/32 cert`), rules.join('\n'));
  }
  assert.deepEqual(m1.roles.map((r) => [r.name, r.replication, r.external]), [['replicator', true, true], ['rewind_user', false, true]]);
  const slots = Object.fromEntries(m1.certificates.map((c) => [c.id, c]));
  assert.deepEqual(slots['patroni-api'], { id: 'patroni-api', usage: 'server', commonName: 'db1.example.com', dnsNames: ['db1.example.com'], ipAddresses: ['10.0.0.1'] });
  assert.equal(slots['patroni-client']!.usage, 'client');
  assert.ok(slots['client-replicator'] && slots['client-rewind_user']);
});

test('the fragment: restapi/ctl/etcd3 TLS and both users\' TLS files (cert) or passwords (scram); the reject line names the Patroni users', () => {
  for (const auth of ['cert', 'scram-sha-256'] as const) {
    const d = compile(auth).get('m2')!;
    const layout = layoutFor('/var/lib/pgaccord', { hbaFile: '/pg/pg_hba.conf', identFile: '/pg/pg_ident.conf', configFile: '/pg/postgresql.base.conf' }, '/home/pg');
    const pems = Object.fromEntries(d.certificates.map((c) => [c.id, { cert: `CERT-${c.id}`, key: `KEY-${c.id}` }]));
    const certificates = d.certificates.map((c) => ({ slot: c.id, certPath: `/x/${c.id}.crt`, keyPath: `/x/${c.id}.key`, serial: '01', notAfter: '' }));
    const plan = planNode({ desired: d, certificates, layout, localRole: 'postgres', localOsUsers: ['postgres'], existing: { hba: '', ident: '', config: '' }, pems });
    const byKey = Object.fromEntries(plan.files.map((f) => [f.key, f]));
    const frag = byKey['patroni-fragment']!;
    assert.equal(frag.path, '/var/lib/pgaccord/patroni/pgaccord.yml');
    assert.equal(frag.mode, 0o600);
    assert.equal(byKey['patroni-api']!.content, 'CERT-patroni-api\nKEY-patroni-api\n');
    assert.match(frag.content, /restapi:\n  certfile: "\/var\/lib\/pgaccord\/patroni\/api.pem"\n  keyfile: "\/var\/lib\/pgaccord\/patroni\/api.pem"\n  cafile: "\/var\/lib\/pgaccord\/patroni\/root.crt"\n  verify_client: "required"\n/);
    assert.match(frag.content, /ctl:\n  insecure: false\n  certfile: "\/var\/lib\/pgaccord\/patroni\/client.pem"/);
    assert.match(frag.content, /etcd3:\n  protocol: "https"\n  cert: "\/var\/lib\/pgaccord\/patroni\/client.pem"/);
    assert.match(frag.content, /    replication:\n      username: "replicator"\n      sslmode: "verify-full"\n      sslrootcert: "\/var\/lib\/pgaccord\/patroni\/root.crt"\n      sslcrl: "\/var\/lib\/pgaccord\/patroni\/root.crl"\n/);
    if (auth === 'cert') {
      assert.match(frag.content, /sslcert: "\/var\/lib\/pgaccord\/patroni\/rewind_user.crt"\n      sslkey: "\/var\/lib\/pgaccord\/patroni\/rewind_user.key"/);
      assert.doesNotMatch(frag.content, /password/);
    } else {
      assert.match(frag.content, /password: "pw-replicator"/);
      assert.equal(frag.secret, true);
    }
    assert.match(plan.hbaBlock, /host\s+all,replication\s+"replicator","rewind_user"\s+all\s+reject/);
    // the include line goes where the plan's config file is: postgresql.base.conf under Patroni
    assert.equal(byKey.config!.path, '/pg/postgresql.base.conf');
    // dry run: the fragment is shown, passwords masked
    const preview = previewNode(d).files.join('\n');
    assert.match(preview, /pgaccord\.yml \(0600.*\): Patroni configuration fragment:\n {6}# Written by the pgaccord agent/);
    assert.doesNotMatch(preview, /pw-replicator/);
    // ... and names the file the include line really goes to (issue 12: it said postgresql.conf)
    assert.match(preview, /^<PGDATA>\/postgresql\.base\.conf \(0600\): Patroni's base configuration, included first \(one include line appended\)$/m);
    assert.doesNotMatch(preview, /<PGDATA>\/postgresql\.conf\b|postgresql\.conf \(one include line appended\)/);
    if (auth === 'scram-sha-256') assert.match(preview, /password: "<the password, on the node only>"/);
  }
  assert.equal(patroniBaseConf('/pg/postgresql.conf'), '/pg/postgresql.base.conf');
});

test('the agent finds the Patroni that includes its fragment (not another one) and the port it listens on', async () => {
  const { mkdtemp, writeFile, mkdir, symlink, chmod, rm } = await import('node:fs/promises');
  const { spawn } = await import('node:child_process');
  const { createServer } = await import('node:net');
  const { join } = await import('node:path');
  const { findPatroni, listeningAddresses } = await import('../../agent/apply/patroni.ts');
  const dir = await mkdtemp('/tmp/pgaccord-patroni-unit-');
  const procs: ReturnType<typeof spawn>[] = [];
  try {
    // a stand-in named patroni: `patroni CONFIG_DIR`, as Debian's /usr/bin/patroni is run
    const bin = join(dir, 'patroni');
    await writeFile(bin, '#!/bin/sh\nsleep 60\n'); // no exec: the shell keeps `patroni CONFIG` as its command line
    await chmod(bin, 0o755);
    const fragment = join(dir, 'state', 'pgaccord.yml');
    await mkdir(join(dir, 'state'));
    await writeFile(fragment, '# fragment\n');
    for (const name of ['ours', 'theirs']) {
      await mkdir(join(dir, name));
      await writeFile(join(dir, name, 'patroni.yml'), 'scope: x\n');
    }
    await symlink(fragment, join(dir, 'ours', 'pgaccord.yml'));
    const theirs = spawn('/bin/sh', [bin, join(dir, 'theirs')], { stdio: 'ignore' });
    const ours = spawn('/bin/sh', [bin, 'ours'], { cwd: dir, stdio: 'ignore' }); // relative to its cwd
    procs.push(theirs, ours);
    const uid = process.getuid!();
    let found: number | null = null;
    for (const deadline = Date.now() + 10_000; found === null && Date.now() < deadline;) {
      found = await findPatroni(fragment, uid);
      if (found === null) await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(found, ours.pid, `ours ${ours.pid}, theirs ${theirs.pid}`);
    // no process includes a fragment nobody links to
    await writeFile(join(dir, 'state', 'other.yml'), '# other\n');
    assert.equal(await findPatroni(join(dir, 'state', 'other.yml'), uid), null);
    // the listening ports of a process, read from /proc (this one's)
    const server = createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as { port: number }).port;
    assert.ok((await listeningAddresses(process.pid)).some((a) => a.host === '127.0.0.1' && a.port === port));
    server.close();
  } finally {
    for (const p of procs) p.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
});
