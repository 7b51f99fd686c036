// The layout is the architecture (docs/architecture.md): coordinator/ and agent/ never import
// each other, shared/ imports neither, no module cycle, no source file over 400 lines. Read from
// the sources' own import statements, so a new arrow fails here rather than in a review.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '..', '..');
const PRODUCT = ['agent', 'coordinator', 'shared', 'bin'];
const MAX_LINES = 400;

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return sources(path);
    return /\.(ts|mjs)$/.test(name) ? [path] : [];
  });
}

/** Relative modules a file imports, statically, dynamically or for types, as repository paths. */
export function importsOf(file: string, text: string): string[] {
  const specifiers = [...text.matchAll(/(?:\bfrom\s+|\bimport\s*\(\s*|^import\s+)(['"])(\.\.?\/[^'"]+)\1/gm)].map((m) => m[2]!);
  return specifiers.map((s) => relative(ROOT, resolve(dirname(file), s)).replace(/\.js$/, '.ts'));
}

const graph = new Map(PRODUCT.flatMap((d) => sources(join(ROOT, d))).map((f) => [relative(ROOT, f), importsOf(f, readFileSync(f, 'utf8'))]));
const side = (path: string): string => path.split('/')[0]!;

test('importsOf reads static, dynamic and type imports, and only relative ones', () => {
  const text = `import { a } from './a.ts';\nimport type { B } from '../shared/b.ts';\nconst c = await import('./c.js');\nimport pino from 'pino';\nimport './side-effect.ts';`;
  assert.deepEqual(importsOf(join(ROOT, 'agent', 'x.ts'), text), ['agent/a.ts', 'shared/b.ts', 'agent/c.ts', 'agent/side-effect.ts']);
});

test('coordinator/ and agent/ never import each other; shared/ imports neither', () => {
  assert.ok(graph.size > 50, `read ${graph.size} modules`);
  const forbidden: Record<string, string[]> = { coordinator: ['agent'], agent: ['coordinator'], shared: ['agent', 'coordinator', 'bin'] };
  const arrows = [...graph].flatMap(([from, to]) => to.filter((t) => forbidden[side(from)]?.includes(side(t))).map((t) => `${from} -> ${t}`));
  assert.deepEqual(arrows, []);
});

test('every relative import names a file that exists', () => {
  const missing = [...graph].flatMap(([from, to]) => to.filter((t) => !graph.has(t)).map((t) => `${from} -> ${t}`));
  assert.deepEqual(missing, []);
});

test('no import cycle among the product modules', () => {
  // Tarjan's strongly connected components: any component of more than one module is a cycle.
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[][] = [];
  let next = 0;
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1 || (graph.get(v) ?? []).includes(v)) cycles.push(component.sort());
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  assert.deepEqual(cycles, []);
});

test(`no source file over ${MAX_LINES} lines (product, tests, benchmarks)`, () => {
  const files = [...PRODUCT, 'test', 'bench'].flatMap((d) => sources(join(ROOT, d)));
  const long = files.map((f) => ({ f: relative(ROOT, f), n: readFileSync(f, 'utf8').split('\n').length - 1 })).filter(({ n }) => n > MAX_LINES);
  assert.deepEqual(long.map(({ f, n }) => `${f}: ${n}`), []);
});

test('every source path the README and docs/ name exists', () => {
  const docs = ['README.md', ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
  const named = docs.flatMap((doc) =>
    [...readFileSync(join(ROOT, doc), 'utf8').matchAll(/(?<![\w./])((?:agent|coordinator|shared|bin|bench|test|systemd)\/[\w./-]+\.(?:ts|mjs|service))\b/g)].map((m) => ({ doc, path: m[1]! })),
  );
  assert.ok(named.length > 20, `found ${named.length} paths`);
  const missing = named.filter(({ path }) => !existsSync(join(ROOT, path))).map(({ doc, path }) => `${doc}: ${path}`);
  assert.deepEqual([...new Set(missing)], []);
});
