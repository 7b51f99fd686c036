// The agent's generated checkers (shared/contract/checks.generated.ts) answer as TypeBox does:
// the committed file is what tools/gen-checks.ts makes from today's schemas, each check agrees
// with Value.Check, and first-error.ts names the path and message Value.Errors gives first, on
// every field of real answers broken every way we can think of, and on arbitrary JSON.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import fc from 'fast-check';
import { Value } from '@sinclair/typebox/value';
import type { TSchema } from '@sinclair/typebox';
import { compileCluster } from '../../coordinator/cluster/compile.ts';
import { scramVerifier } from '../../shared/crypto/scram.ts';
import { NodeDesired, type ClusterSpec } from '../../shared/contract/schema.ts';
import { CsrResponse, EnrollResponse, JoinTokenPayload, PeerWake } from '../../shared/contract/api.ts';
import * as checks from '../../shared/contract/checks.generated.ts';
import { firstError } from '../../shared/contract/first-error.ts';

const ROOT = join(import.meta.dirname, '..', '..');

test('checks.generated.ts is what tools/gen-checks.ts makes from the schemas (npm run gen:checks)', () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'tools/gen-checks.ts', '--check'], { cwd: ROOT, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
});

const password = (r: string) => ({ password: `pw-${r}`, verifier: scramVerifier(`pw-${r}`, Buffer.alloc(16, 1)) });
function desired(auth: ClusterSpec['auth'], sslmode: ClusterSpec['tls']['sslmode']): NodeDesired[] {
  const spec: ClusterSpec = {
    name: 'sales',
    profile: 'streaming',
    auth,
    tls: { sslmode },
    roles: [{ name: 'app' }],
    nodes: [
      { name: 'node-1', host: '10.0.0.1', kind: 'primary' },
      { name: 'node-2', host: 'db2.example.com', address: '10.0.0.2', kind: 'standby' },
    ],
  };
  const credentials = { replicator: password('replicator'), app: password('app') };
  return [...compileCluster({ spec, generation: 3, credentials, caBundle: 'CA', crl: null }).values()];
}

const CASES: [keyof typeof checks, TSchema, unknown[]][] = [
  ['NodeDesiredCheck', NodeDesired, [
    ...desired('trust', 'disable'),
    ...desired('scram-sha-256', 'verify-full'),
    // The optional fields present, and a CRL.
    ...desired('cert', 'verify-ca').map((d) => ({ ...d, crl: 'CRL', keyType: 'ecdsa-p256', renewSerials: ['01'], stableServerFiles: true, alone: true, passwordsAt: 'x' })),
  ]],
  ['EnrollResponseCheck', EnrollResponse, [{ cluster: 'sales', node: 'node-1', certificate: 'PEM', coordinatorCa: 'PEM' }]],
  ['CsrResponseCheck', CsrResponse, [{ certificate: 'PEM', serial: '01ab', notAfter: '2030-01-01T00:00:00.000Z' }]],
  ['PeerWakeCheck', PeerWake, [{ wake: 'peers-applied', applied: [{ node: 'node-2', generation: 3 }] }, { wake: 'peers-applied', applied: [] }]],
  ['JoinTokenPayloadCheck', JoinTokenPayload, [
    { v: 1, url: 'https://c:8443', cluster: 'sales', node: 'node-1', id: 'i', secret: 's', caFingerprint: 'ab'.repeat(32) },
    { v: 1, url: 'https://c:8443', urls: ['https://c:8443', 'https://d:8443'], cluster: 'sales', node: 'node-1', id: 'i', secret: 's', caFingerprint: 'ab' },
  ]],
];

const DELETE = Symbol('delete');
const REPLACEMENTS: unknown[] = [
  DELETE, undefined, null, '', 'x', 'UPPER case/~', 'a'.repeat(300), 0, -1, 1.5, 2 ** 40, Number.NaN, true, false, [], [1], {}, { x: 1 },
];

/** The value with the thing at `path` replaced (DELETE: deleted). */
function replaced(value: unknown, path: (string | number)[], by: unknown): unknown {
  if (path.length === 0) return by === DELETE ? undefined : by;
  const copy: any = structuredClone(value);
  let at = copy;
  for (const p of path.slice(0, -1)) at = at[p];
  const last = path.at(-1)!;
  if (by === DELETE) {
    if (Array.isArray(at)) at.splice(Number(last), 1);
    else delete at[last];
  } else at[last] = by;
  return copy;
}

/** Every broken variant of a valid value: each field replaced by each of REPLACEMENTS, an extra key in each object, an extra array item. */
function* variants(value: unknown, root = value, path: (string | number)[] = []): Generator<unknown> {
  for (const r of REPLACEMENTS) yield replaced(root, path, r);
  if (Array.isArray(value)) {
    yield replaced(root, path, [...value, ...value.slice(0, 1), 'extra']);
    for (let i = 0; i < value.length; i++) yield* variants(value[i], root, [...path, i]);
  } else if (typeof value === 'object' && value !== null) {
    yield replaced(root, path, { ...value, 'zz/extra~': 1 });
    for (const [k, v] of Object.entries(value)) yield* variants(v, root, [...path, k]);
  }
}

function agrees(name: keyof typeof checks, schema: TSchema, v: unknown): void {
  const checker = checks[name] as checks.Checker<unknown>;
  const ok = Value.Check(schema, v);
  assert.equal(checker.check(v), ok, `${name}.check of ${JSON.stringify(v)?.slice(0, 300)}`);
  const e = Value.Errors(schema, v).First();
  assert.deepEqual(firstError(checker.schema, v), e && { path: e.path, message: e.message }, `${name} first error of ${JSON.stringify(v)?.slice(0, 300)}`);
}

test('each checker agrees with Value.Check, and first-error with Value.Errors, on every field broken every way', () => {
  let n = 0;
  for (const [name, schema, samples] of CASES) {
    for (const sample of samples) {
      assert.equal(Value.Check(schema, sample), true, `${name} sample is valid`);
      for (const v of variants(sample)) {
        agrees(name, schema, v);
        n++;
      }
    }
  }
  assert.ok(n > 3000, `${n} variants`);
});

test('each checker agrees with TypeBox on arbitrary JSON', () => {
  for (const [name, schema] of CASES) fc.assert(fc.property(fc.jsonValue(), (v) => agrees(name, schema, v)), { numRuns: 300 });
});
