// One coded error type for both sides (issue 10): every error class of shared/ is a CodedError, so
// problemOf gives its own code, never the fallback; codes and messages are the ones they always were.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CodedError, problemOf } from '../../shared/contract/problem.ts';
import { crlInfo } from '../../shared/crypto/crl.ts';
import { readCsrKey } from '../../shared/crypto/csr.ts';
import { certInfo } from '../../shared/crypto/x509.ts';
import { hbaName } from '../../shared/pgconf/escape.ts';
import { clientPaths, layoutFor } from '../../shared/pgconf/layout.ts';
import { PlanError } from '../../shared/pgconf/plan.ts';
import { splitManagedBlock } from '../../shared/pgconf/render.ts';
import { parseCommand } from '../../shared/system/cli.ts';
import type { ClientLayout } from '../../shared/contract/schema.ts';

function thrown(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  assert.fail('expected a throw');
}

test('shared error classes are CodedErrors with their own codes and unchanged messages', () => {
  const layout = layoutFor('/var/lib/pgaccord', { hbaFile: '/pg/pg_hba.conf', identFile: '/pg/pg_ident.conf', configFile: '/pg/postgresql.conf' }, null);
  const homeLayout = { base: 'home', dir: '.pg', cert: null, key: null, ca: null, crl: null, chain: false, passfile: '.pgpass', passfileLines: 'each', conninfo: 'names-files', settings: {} } as unknown as ClientLayout;
  const cases: [string, unknown, string, RegExp][] = [
    ['CrlError', thrown(() => crlInfo('garbage')), 'E_CRL_INVALID', /^not a PEM X509 CRL$/],
    ['X509Error', thrown(() => certInfo('garbage')), 'E_X509', /^not a valid certificate: /],
    ['X509Error (CSR)', thrown(() => readCsrKey('-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n')), 'E_X509', /^CSR cannot be parsed: /],
    ['EscapeError', thrown(() => hbaName('a\nb')), 'E_UNSAFE_VALUE', /line break/],
    ['BlockError', thrown(() => splitManagedBlock('# END pgaccord managed block\n')), 'E_MANAGED_BLOCK', /^managed block end marker without its begin marker$/],
    ['LayoutError', thrown(() => clientPaths(layout, homeLayout, 'r')), 'E_LAYOUT', /^the client layout needs the home directory/],
    ['PlanError', new PlanError('E_RENDER', 'x'), 'E_RENDER', /^x$/],
    ['UsageError', thrown(() => parseCommand({ usage: 'u', summary: 's', details: 'd', options: {} }, ['--nope'])), 'E_USAGE', /\nusage: u$/],
  ];
  for (const [name, err, code, message] of cases) {
    assert.ok(err instanceof CodedError, `${name} is a CodedError`);
    assert.equal(err.code, code, name);
    assert.match(err.message, message, name);
    assert.deepEqual(problemOf(err, 'E_FALLBACK'), { code, message: err.message }, name);
  }
});
