// The check of a stored spec (its seal and its validation) is remembered for the exact row read
// (issue 13: it was a third of the coordinator's busy time in a 200-node fan-out): an unchanged
// row is not re-serialised nor its seal opened again, and a row changed in any way after good
// reads (the spec under the same seal, the seal swapped for an earlier one or another
// cluster's) is still refused.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { SecretBox } from '../../coordinator/store/secrets.ts';
import { pgdSpec, startHarness, type Harness } from '../helpers/coordinator-harness.ts';

let h: Harness;
before(async () => {
  h = await startHarness();
});
after(async () => {
  await h?.close();
});

/** How many times the seal of cluster `name`'s spec is opened while `fn` runs. */
async function sealOpens(name: string, fn: () => Promise<void>): Promise<number> {
  const open = SecretBox.prototype.open;
  let n = 0;
  SecretBox.prototype.open = function (this: SecretBox, sealed: string, context: string) {
    if (context === `cluster-spec:${name}`) n += 1;
    return open.call(this, sealed, context);
  };
  try {
    await fn();
  } finally {
    SecretBox.prototype.open = open;
  }
  return n;
}

const row = async (name: string) => (await h.coord.store.query<{ spec_seal: string; generation: number }>(`SELECT spec_seal, generation FROM clusters WHERE name = $1`, [name]))[0]!;

async function assertServed(name: string): Promise<void> {
  const r = await h.admin.call('GET', `/v1/clusters/${name}`);
  assert.equal(r.status, 200, r.text);
}

async function assertRefused(name: string, what: string): Promise<void> {
  const r = await h.admin.call('GET', `/v1/clusters/${name}`);
  assert.equal(r.status, 500, `${what}: ${r.text}`);
  assert.equal(r.body.code, 'E_STORED_SPEC_INVALID', `${what}: ${r.text}`);
  assert.doesNotMatch(r.text, /trust/);
}

test('an unchanged stored spec read again is not checked again (its seal is not reopened)', async () => {
  assert.equal((await h.admin.call('PUT', '/v1/clusters/memo', { body: pgdSpec('memo') })).status, 200);
  assert.ok((await sealOpens('memo', () => assertServed('memo'))) >= 1, 'the first read checks the seal');
  assert.equal(await sealOpens('memo', async () => {
    for (let i = 0; i < 5; i++) await assertServed('memo');
  }), 0, 'reads of the same row open the seal again');
  // A new generation is checked once, then remembered in its turn.
  assert.equal((await h.admin.call('PUT', '/v1/clusters/memo', { body: pgdSpec('memo', { auth: 'scram-sha-256' }) })).status, 200);
  assert.ok((await sealOpens('memo', () => assertServed('memo'))) >= 1, 'a new generation is checked');
  assert.equal(await sealOpens('memo', () => assertServed('memo')), 0);
});

test('a row changed after good reads is still refused: spec under the same seal, an earlier seal, another cluster\'s seal', async () => {
  const name = 'memotamper';
  assert.equal((await h.admin.call('PUT', '/v1/clusters/other', { body: pgdSpec('other') })).status, 200);
  assert.equal((await h.admin.call('PUT', `/v1/clusters/${name}`, { body: pgdSpec(name) })).status, 200);
  const earlier = await row(name);
  assert.equal((await h.admin.call('PUT', `/v1/clusters/${name}`, { body: pgdSpec(name, { auth: 'scram-sha-256' }) })).status, 200);
  const good = await row(name);
  const readTwice = async () => {
    await assertServed(name);
    await assertServed(name);
  };
  await readTwice();

  // The spec changed, its seal, generation and canonical text column left as they were.
  await h.coord.store.query(`UPDATE clusters SET spec = jsonb_set(spec, '{auth}', '"trust"') WHERE name = $1`, [name]);
  await assertRefused(name, 'spec changed under the same seal');
  await assertRefused(name, 'spec changed under the same seal, read again');
  await h.coord.store.query(`UPDATE clusters SET spec = jsonb_set(spec, '{auth}', '"scram-sha-256"') WHERE name = $1`, [name]);
  await readTwice(); // the genuine row again: served

  // The seal of an earlier generation of the same cluster, on the current spec and generation.
  await h.coord.store.query(`UPDATE clusters SET spec_seal = $2 WHERE name = $1`, [name, earlier.spec_seal]);
  await assertRefused(name, 'an earlier seal');
  // Another cluster's seal.
  await h.coord.store.query(`UPDATE clusters SET spec_seal = $2 WHERE name = $1`, [name, (await row('other')).spec_seal]);
  await assertRefused(name, "another cluster's seal");
  // The generation changed under the same spec and seal.
  await h.coord.store.query(`UPDATE clusters SET spec_seal = $2, generation = generation + 1 WHERE name = $1`, [name, good.spec_seal]);
  await assertRefused(name, 'another generation under the same seal');
  await h.coord.store.query(`UPDATE clusters SET generation = $2 WHERE name = $1`, [name, good.generation]);
  await readTwice();
});

test('a spec applied through PUT is not validated again when first read (its validation compiles every node: ~0.3 s at 200 nodes)', async () => {
  const { StoredSpecs } = await import('../../coordinator/service/stored-specs.ts');
  const validate = StoredSpecs.prototype.validate;
  let validations = 0;
  StoredSpecs.prototype.validate = function (this: InstanceType<typeof StoredSpecs>, name: string, body: unknown) {
    if (name === 'memo-put') validations += 1;
    return validate.call(this, name, body);
  };
  try {
    assert.equal((await h.admin.call('PUT', '/v1/clusters/memo-put', { body: pgdSpec('memo-put') })).status, 200);
    await assertServed('memo-put');
    assert.equal(validations, 1, 'validations of one spec for its PUT and its first read');
  } finally {
    StoredSpecs.prototype.validate = validate;
  }
});
