// The parse cache of agents' client certificates (coordinator/http/peer-cache.ts): at 20,000
// entries keys of the whole base64 DER held ~30 MB; a digest of the DER is the key (note 7, left).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { PeerCache } from '../../coordinator/http/peer-cache.ts';

test('a certificate is keyed by a digest of its DER, not by the DER: a key is a few dozen characters whatever the certificate\'s size', () => {
  const cache = new PeerCache<number>(100);
  for (let i = 0; i < 50; i++) cache.get(randomBytes(1100), () => i); // an agent identity's DER is ~1.1 kB
  assert.equal(cache.size, 50);
  const perKey = cache.keyChars() / cache.size;
  assert.ok(perKey <= 64, `${perKey} characters per key`);
  let parses = 0;
  const der = randomBytes(1100);
  for (const copy of [der, Buffer.from(der)]) cache.get(copy, () => ++parses);
  assert.equal(parses, 1, 'the same DER (another Buffer of the same bytes) is the same entry');
  cache.get(Buffer.concat([der.subarray(0, 1099), Buffer.from([der[1099]! ^ 1])]), () => ++parses);
  assert.equal(parses, 2, 'a DER differing in its last bit is another entry');
});

test('at its bound the least recently used entry goes, not the oldest inserted; a parse that throws caches nothing', () => {
  const cache = new PeerCache<string>(3);
  const [a, b, c, d] = [1, 2, 3, 4].map(() => randomBytes(1100)) as [Buffer, Buffer, Buffer, Buffer];
  const parsed: string[] = [];
  const get = (der: Buffer, name: string) => cache.get(der, () => (parsed.push(name), name));
  get(a, 'a'); get(b, 'b'); get(c, 'c');
  assert.equal(get(a, 'a'), 'a'); // a is used again: b is now the least recently used
  get(d, 'd');
  assert.equal(cache.size, 3);
  get(a, 'a'); get(c, 'c'); get(d, 'd');
  assert.deepEqual(parsed, ['a', 'b', 'c', 'd'], 'a, c and d stayed');
  get(b, 'b');
  assert.deepEqual(parsed, ['a', 'b', 'c', 'd', 'b'], 'b was evicted');
  assert.throws(() => cache.get(randomBytes(1100), () => { throw new Error('not an agent identity'); }), /not an agent identity/);
  assert.equal(cache.size, 3);
});
