// pgaccord apply: validate a spec file here, then PUT it (or POST it to /plan with --dry-run).
import { readFile } from 'node:fs/promises';
import type { Static } from '@sinclair/typebox';
import type { PlanResponse } from '../../shared/contract/api.ts';
import { parseCommand, UsageError } from '../../shared/system/cli.ts';
import { call, CONNECTION_HELP, CONNECTION_OPTIONS, withConn } from './http.ts';

const APPLY = {
  usage: 'pgaccord apply -f FILE [--dry-run] [--json] [connection options]',
  summary: 'Create or update a cluster from a spec file (YAML or JSON). An invalid spec is refused whole, each problem named by its field.',
  details: `
options:
  -f, --file FILE     the cluster spec ("-" for standard input)
  --dry-run           print what each node would get and what would change; change nothing
  --json              print the coordinator's answer as JSON
${CONNECTION_HELP}`,
  options: { file: { type: 'string', short: 'f' }, 'dry-run': { type: 'boolean' }, json: { type: 'boolean' }, ...CONNECTION_OPTIONS },
} as const;

export async function runApply(argv: string[]): Promise<number> {
  const parsed = parseCommand(APPLY, argv);
  if (!parsed) return 0;
  const v = parsed.values;
  if (!v.file) throw new UsageError(`-f FILE is required\nusage: ${APPLY.usage}`);
  const text = v.file === '-' ? await readStdin() : await readFile(v.file, 'utf8');
  const { parseSpecText, validateSpec } = await import('../cluster/spec.ts');
  const doc = parseSpecText(text);
  const checked = doc.ok ? validateSpec(doc.value) : doc;
  if (!checked.ok) {
    process.stderr.write(`error: ${v.file}: the cluster spec is invalid\n`);
    for (const e of checked.errors) process.stderr.write(`  ${e.field}: ${e.message}\n`);
    return 1;
  }
  const spec = checked.spec;
  return withConn(v, async (conn) => {
    if (v['dry-run']) {
      const plan = await call<Static<typeof PlanResponse>>(conn, 'POST', `/v1/clusters/${spec.name}/plan`, spec);
      if (v.json) process.stdout.write(`${JSON.stringify(plan, null, 2)}\n`);
      else process.stdout.write(formatPlan(plan));
      return 0;
    }
    const res = await call<{ generation: number; warnings: string[] }>(conn, 'PUT', `/v1/clusters/${spec.name}`, spec);
    if (v.json) process.stdout.write(`${JSON.stringify(res, null, 2)}\n`);
    else process.stdout.write(`cluster ${spec.name}: generation ${res.generation}\n`);
    for (const w of res.warnings) process.stderr.write(`warning: ${w}\n`);
    return 0;
  });
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

export function formatPlan(plan: Static<typeof PlanResponse>): string {
  const out: string[] = [`cluster ${plan.cluster}: would be generation ${plan.generation} (dry run: nothing changed)`];
  for (const w of plan.warnings) out.push(`warning: ${w}`);
  for (const n of plan.nodes) {
    out.push('', `== node ${n.node}`, 'changes:', ...n.changes.map((c) => `  ${c}`));
    out.push('pg_hba.conf managed block:', ...n.hba.trimEnd().split('\n').map((l) => `  ${l}`));
    out.push('pg_ident.conf managed block:', ...n.ident.trimEnd().split('\n').map((l) => `  ${l}`));
    out.push('settings:', ...Object.entries(n.settings).map(([k, val]) => `  ${k} = ${val}`));
    out.push(`roles: ${n.roles.join(', ') || '(none)'}`);
    out.push('certificates:', ...(n.certificates.length ? n.certificates.map((c) => `  ${c}`) : ['  (none)']));
    out.push('files:', ...n.files.map((f) => `  ${f}`));
  }
  return `${out.join('\n')}\n`;
}
