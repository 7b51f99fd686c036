// The trust files every node is given, of one row (cluster-cas.ts trustFilesOf): the rule is
// written once and used by ClusterCas.trustFiles and by the desired request's merged read.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { trustFilesOf, trustFilesSql } from '../../coordinator/service/cluster-cas.ts';

const A = '-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n';
const B = '-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n';

test('outside a rotation the bundle is the issuing CA alone, with the CRL', () => {
  assert.deepEqual(trustFilesOf('c', { cert_pem: A, other: null, crl: 'CRL' }), { caBundle: A, crl: 'CRL' });
  assert.deepEqual(trustFilesOf('c', { cert_pem: A, other: null, crl: null }), { caBundle: A, crl: null });
});

test('during a rotation the issuing CA comes first, then the other one, one newline between', () => {
  assert.equal(trustFilesOf('c', { cert_pem: `${A}\n\n`, other: B.trimEnd(), crl: null }).caBundle, `${A}${B}`);
});

test('a cluster without a CA row is a 404 naming it', () => {
  assert.throws(() => trustFilesOf('gone', undefined), (e: { status?: number; message?: string }) => e.status === 404 && /"gone" has no CA/.test(e.message ?? ''));
});

test('the read selects the row trustFilesOf takes, with the columns a caller adds', () => {
  const sql = trustFilesSql(', 1 AS extra');
  assert.match(sql, /a\.cert_pem, r\.other_cert_pem AS other, l\.pem AS crl, 1 AS extra\s+FROM cluster_cas a LEFT JOIN ca_rotations r/);
  assert.match(sql, /WHERE a\.cluster = \$1$/);
});
