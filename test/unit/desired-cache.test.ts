// The per-generation desired-state cache (issue 13 item 1): a node is compiled at most once per
// cluster generation and trust files, only when asked for, from its own connections only.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ClusterDesired, DesiredCache, type ClusterInputs } from '../../coordinator/cluster/desired-cache.ts';
import { certificateSlots, compileCluster, compileNode, connections, incomingConnections, indexSpec, outgoingConnections, rolesNeedingPasswords, type CredentialSource, type NodeCompileInput } from '../../coordinator/cluster/compile.ts';
import { PROFILES } from '../../shared/pgconf/profiles.ts';
import type { ClusterSpec, NodeDesired, ProfileName } from '../../shared/contract/schema.ts';

const pgd = (n: number): ClusterSpec => ({
  name: 'mesh', profile: 'pgd', auth: 'cert', tls: { sslmode: 'verify-full' },
  nodes: Array.from({ length: n }, (_, i) => ({ name: `node-${i + 1}`, host: `db${i + 1}.example.com`, address: `10.0.0.${i + 1}`, kind: 'peer' })),
});

const streaming: ClusterSpec = {
  name: 'prod', profile: 'streaming', auth: 'scram-sha-256', tls: { sslmode: 'verify-full' },
  nodes: [
    { name: 'p', host: 'p.example', address: '10.0.0.1', kind: 'primary' },
    { name: 's1', host: 's1.example', address: '10.0.0.2', kind: 'standby' },
  ],
};

const inputs = (spec: ClusterSpec, generation: number, o: Partial<ClusterInputs> = {}): ClusterInputs => ({ spec, incarnation: 'inc-1', generation, caBundle: 'CA', crl: 'CRL', ...o });

/** A compile function that counts its calls, per node. */
function counting() {
  const calls: string[] = [];
  const compile = (input: NodeCompileInput, node: string): NodeDesired => {
    calls.push(node);
    return compileNode(input, node);
  };
  return { calls, compile };
}

/** Credentials that count what is read: which passwords were opened, how often they were loaded. */
function credentials(spec: ClusterSpec) {
  const log = { loads: 0, opened: [] as string[] };
  const load = async (): Promise<CredentialSource> => {
    log.loads++;
    const roles = new Set(rolesNeedingPasswords(spec));
    const need = (role: string) => {
      if (!roles.has(role)) throw new Error(`no credential for role ${role}`);
    };
    return {
      verifier: (role) => (need(role), `SCRAM-SHA-256$4096:AAAA$${role}:BBBB`),
      password: (role) => (need(role), log.opened.push(role), `pw-${role}`),
    };
  };
  return { log, load };
}

test('a second request of the same generation compiles nothing', async () => {
  const { calls, compile } = counting();
  const cache = new DesiredCache({ compile });
  const spec = pgd(20);
  const creds = credentials(spec);
  const first = await cache.entry('mesh', inputs(spec, 1), creds.load).node('node-3');
  assert.deepEqual(calls, ['node-3'], 'only the node asked for is compiled, not the cluster');
  // A new read of the same row (equal inputs, new objects), as the next request makes.
  const again = await cache.entry('mesh', inputs(structuredClone(spec), 1), creds.load).node('node-3');
  assert.deepEqual(calls, ['node-3']);
  assert.equal(again, first);
  assert.throws(() => {
    (again as { renewSerials?: string[] }).renewSerials = ['01'];
  }, TypeError, 'the shared state is frozen: a request adds to a copy');
  // Concurrent first requests for one node compile it once.
  await Promise.all(Array.from({ length: 5 }, () => cache.entry('mesh', inputs(spec, 1), creds.load).node('node-4')));
  assert.deepEqual(calls, ['node-3', 'node-4']);
  assert.equal(creds.log.loads, 1, 'credentials are read once per generation');
});

test('a new generation, CA bundle or CRL compiles again; the entry of the old one is dropped', async () => {
  const { calls, compile } = counting();
  const cache = new DesiredCache({ compile });
  const spec = pgd(5);
  const load = credentials(spec).load;
  await cache.entry('mesh', inputs(spec, 1), load).node('node-1');
  const g2 = await cache.entry('mesh', inputs(spec, 2), load).node('node-1');
  assert.equal(g2.generation, 2);
  assert.equal(calls.length, 2);
  // Same generation, another CRL (or CA bundle): not served from the entry made with the old one.
  const crl = await cache.entry('mesh', inputs(spec, 2, { crl: 'CRL-2' }), load).node('node-1');
  assert.equal(crl.crl, 'CRL-2');
  const ca = await cache.entry('mesh', inputs(spec, 2, { crl: 'CRL-2', caBundle: 'CA+NEW' }), load).node('node-1');
  assert.equal(ca.caBundle, 'CA+NEW');
  // A cluster deleted and created again under the same name (new incarnation), generation 1 again.
  await cache.entry('mesh', inputs(spec, 1, { incarnation: 'inc-2' }), load).node('node-1');
  assert.equal(calls.length, 5);
  assert.equal(cache.size, 1, 'one entry per cluster: only the latest inputs are kept');
});

test('a late read of an older generation does not push out the newer entry', async () => {
  const { calls, compile } = counting();
  const cache = new DesiredCache({ compile });
  const spec = pgd(3);
  const load = credentials(spec).load;
  await cache.entry('mesh', inputs(spec, 5), load).node('node-1');
  const old = await cache.entry('mesh', inputs(spec, 4), load).node('node-1');
  assert.equal(old.generation, 4);
  await cache.entry('mesh', inputs(spec, 5), load).node('node-1');
  assert.deepEqual(calls, ['node-1', 'node-1'], 'generation 5 is still cached');
});

test('bounded: past maxClusters the least recently used cluster goes', async () => {
  const { calls, compile } = counting();
  const cache = new DesiredCache({ compile, maxClusters: 2 });
  const spec = pgd(2);
  const load = credentials(spec).load;
  for (const c of ['a', 'b']) await cache.entry(c, inputs(spec, 1), load).node('node-1');
  await cache.entry('a', inputs(spec, 1), load).node('node-1'); // a used last
  await cache.entry('c', inputs(spec, 1), load).node('node-1'); // b goes
  assert.equal(cache.size, 2);
  assert.equal(calls.length, 3);
  await cache.entry('a', inputs(spec, 1), load).node('node-1');
  assert.equal(calls.length, 3, 'a kept');
  await cache.entry('b', inputs(spec, 1), load).node('node-1');
  assert.equal(calls.length, 4, 'b compiled again');
});

test('certificate slots (what a CSR is checked against) come from the spec alone: no compile, no credential', () => {
  const spec = pgd(50);
  const slots = certificateSlots(indexSpec(spec), 'node-7');
  assert.deepEqual(slots, compileCluster({ spec, generation: 1, credentials: {}, caBundle: 'CA', crl: 'CRL' }).get('node-7')!.certificates);
  assert.deepEqual(slots.map((s) => s.id), ['server', 'client-pgd_replication']);
  const scram = certificateSlots(indexSpec(streaming), 's1');
  assert.deepEqual(scram.map((s) => s.id), ['server'], 'no client certificate under scram');
});

test('a node is given only the passwords it connects with: the server side opens none', async () => {
  const { compile } = counting();
  const creds = credentials(streaming);
  const entry = new ClusterDesired(inputs(streaming, 1), creds.load, compile);
  const p = await entry.node('p');
  assert.deepEqual(creds.log.opened, [], 'the primary only stores verifiers');
  assert.equal(p.clientSecrets.length, 0);
  const s1 = await entry.node('s1');
  assert.deepEqual(creds.log.opened, ['replicator']);
  assert.deepEqual(s1.clientSecrets, [{ role: 'replicator', password: 'pw-replicator' }]);
});

test('every profile: the indexed connections of a node are exactly its share of the cluster, in order', () => {
  for (const profile of Object.keys(PROFILES) as ProfileName[]) {
    const p = PROFILES[profile];
    const nodes = p.kinds.flatMap((kind) => {
      const [, max] = p.kindCounts[kind]!;
      return Array.from({ length: Math.min(max, 3) }, (_, i) => ({ name: `${kind}-${i + 1}`, host: `${kind}-${i + 1}.example`, address: `10.1.${p.kinds.indexOf(kind)}.${i + 1}`, kind }));
    });
    const spec: ClusterSpec = { name: 'x', profile, auth: 'cert', tls: { sslmode: 'verify-full' }, nodes };
    const all = connections(spec);
    const ix = indexSpec(spec);
    for (const n of nodes) {
      assert.deepEqual(incomingConnections(ix, n.name), all.filter((c) => c.server.name === n.name), `${profile} ${n.name} incoming`);
      assert.deepEqual(outgoingConnections(ix, n.name), all.filter((c) => c.client.name === n.name), `${profile} ${n.name} outgoing`);
    }
  }
});

test('compile of one node in a big mesh does not scan the mesh', () => {
  // 400 nodes: the whole mesh has 159,600 connections; one node has 798 of them.
  const spec = pgd(400);
  const ix = indexSpec(spec);
  const input: NodeCompileInput = { index: ix, generation: 1, credentials: { verifier: () => 'v', password: () => 'p' }, caBundle: 'CA', crl: null };
  compileNode(input, 'node-1'); // warm-up
  const t0 = performance.now();
  for (let i = 1; i <= 50; i++) compileNode(input, `node-${i}`);
  const perNode = (performance.now() - t0) / 50;
  const d = compileNode(input, 'node-9');
  assert.equal(d.hba.length, 399);
  assert.equal(d.edges.length, 399);
  // Generous bound for a loaded CI machine: the whole-cluster compile took ~1.1 s at 400 nodes.
  assert.ok(perNode < 50, `one node took ${perNode.toFixed(1)} ms`);
});
