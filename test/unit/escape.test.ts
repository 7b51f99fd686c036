import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { EscapeError, conninfo, hbaName, passfileField, sqlIdentifier, sqlLiteral, confString } from '../../shared/pgconf/escape.ts';

/** PostgreSQL 15's pg_hba.conf tokenizer (hba.c next_token), transcribed to check the escaper. */
function pgTokens(line: string): { text: string; quoted: boolean }[] {
  const out: { text: string; quoted: boolean }[] = [];
  let i = 0;
  const blank = (c: string) => c === ' ' || c === '\t';
  while (i < line.length) {
    while (i < line.length && blank(line[i]!)) i++;
    if (i >= line.length || line[i] === '#') break;
    let buf = '';
    let inQuote = false;
    let wasQuote = false;
    let sawQuote = false;
    while (i < line.length && (!blank(line[i]!) || inQuote)) {
      const c = line[i]!;
      if (c === '#' && !inQuote) { i = line.length; break; }
      if (c === ',' && !inQuote) { i++; break; }
      if (c !== '"' || wasQuote) buf += c;
      if (inQuote && c === '"') wasQuote = !wasQuote; else wasQuote = false;
      if (c === '"') { inQuote = !inQuote; sawQuote = true; }
      i++;
    }
    out.push({ text: buf, quoted: sawQuote });
  }
  return out;
}

const representable = fc.string({ unit: 'binary', minLength: 1, maxLength: 40 })
  .filter((s) => !/[\r\n\0]/.test(s) && Buffer.byteLength(s) <= 63);

test('hbaName: any representable name is exactly one quoted token that reads back as itself', () => {
  fc.assert(fc.property(representable, (name) => {
    const tokens = pgTokens(`host ${hbaName(name)} all 127.0.0.1/32 scram-sha-256`);
    assert.equal(tokens.length, 5);
    assert.deepEqual(tokens[1], { text: name, quoted: true });
  }), { numRuns: 5000 });
});

test('hbaName: keywords, lists, groups, file references and comments can only mean themselves', () => {
  for (const name of ['all', 'replication', 'sameuser', 'samerole', 'a,b', '+admins', '@users.txt', 'x#y', 'has space', 'say "hi"', 'trust']) {
    const tokens = pgTokens(`host ${hbaName(name)} all 0.0.0.0/0 md5`);
    assert.equal(tokens.length, 5, name);
    assert.deepEqual(tokens[1], { text: name, quoted: true }, name);
  }
});

test('hbaName: a newline, NUL or over-long name is refused, never written as a second line', () => {
  assert.throws(() => hbaName('x\nlocal all all trust'), EscapeError);
  assert.throws(() => hbaName('x\rhost'), EscapeError);
  assert.throws(() => hbaName('x\0'), EscapeError);
  assert.throws(() => hbaName('a'.repeat(64)), /longer than 63 bytes/);
  assert.throws(() => hbaName('é'.repeat(32)), /longer than 63 bytes/);
  assert.throws(() => hbaName(''), /empty/);
  fc.assert(fc.property(fc.string({ unit: 'binary' }), (s) => {
    try {
      const out = hbaName(s);
      assert.ok(!/[\r\n]/.test(out));
    } catch (e) {
      assert.ok(e instanceof EscapeError);
    }
  }), { numRuns: 3000 });
});

test('passfileField escapes colon and backslash so the line splits into exactly five fields', () => {
  fc.assert(fc.property(fc.array(representable, { minLength: 5, maxLength: 5 }), (fields) => {
    const line = fields.map(passfileField).join(':');
    // libpq's reading: a backslash escapes the next character; an unescaped colon ends a field
    const parsed: string[] = [''];
    for (let i = 0; i < line.length; i++) {
      if (line[i] === '\\') parsed[parsed.length - 1] += line[++i];
      else if (line[i] === ':') parsed.push('');
      else parsed[parsed.length - 1] += line[i];
    }
    assert.deepEqual(parsed, fields);
  }), { numRuns: 2000 });
  assert.throws(() => passfileField('pw\nx'), EscapeError);
});

test('SQL identifiers and literals are quoted, never concatenated raw', () => {
  assert.equal(sqlIdentifier('a"b'), '"a""b"');
  assert.equal(sqlIdentifier('Robert"); DROP TABLE x; --'), '"Robert""); DROP TABLE x; --"');
  assert.equal(sqlLiteral("it's"), "'it''s'");
  assert.throws(() => sqlIdentifier('x\0'), EscapeError);
  assert.throws(() => sqlIdentifier('a'.repeat(64)), EscapeError);
  fc.assert(fc.property(representable, (s) => {
    const q = sqlIdentifier(s);
    assert.equal(q.slice(1, -1).replace(/""/g, '"'), s);
    assert.ok(!/(^|[^"])"([^"]|$)/.test(q.slice(1, -1).replace(/""/g, '')), 'no lone quote inside');
  }), { numRuns: 2000 });
});

test('conninfo quotes values with spaces, quotes and backslashes; postgresql.conf strings refuse line breaks', () => {
  assert.equal(conninfo({ host: 'db1', port: 5432, sslkey: "/a b/it's\\k" , passfile: undefined }), "host=db1 port=5432 sslkey='/a b/it\\'s\\\\k'");
  assert.equal(conninfo({ dbname: '' }), '');
  assert.equal(confString("/x/it's"), "'/x/it''s'");
  assert.throws(() => confString('a\nssl = off'), EscapeError);
});
