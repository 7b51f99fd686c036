// What the coordinator's served OpenAPI document declares, for the API fuzz test: its operations
// (method, path, security, parameters, body and response schemas), and whether an answer
// conforms to the response the document declares for its status.
import { Ajv, type ValidateFunction } from 'ajv';

export type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any

export interface Operation {
  method: string;
  path: string;
  security: 'admin' | 'agent' | 'none';
  pathParams: { name: string; schema: Json }[];
  query: { name: string; schema: Json }[];
  body: Json | null;
  responses: Record<string, { contentType: string | null; schema: Json | null }>;
}

/** Every operation of the document, with what it takes and may answer. */
export function operations(document: Json): Operation[] {
  const ops: Operation[] = [];
  for (const [path, methods] of Object.entries<Json>(document.paths)) {
    for (const [method, op] of Object.entries<Json>(methods)) {
      const security = op.security.length === 0 ? 'none' : 'adminToken' in op.security[0] ? 'admin' : 'agent';
      const responses: Operation['responses'] = {};
      for (const [code, r] of Object.entries<Json>(op.responses)) {
        const [contentType, media] = r.content ? Object.entries<Json>(r.content)[0]! : [null, null];
        responses[code] = { contentType, schema: media?.schema ?? null };
      }
      ops.push({
        method: method.toUpperCase(),
        path,
        security,
        pathParams: op.parameters.filter((p: Json) => p.in === 'path').map((p: Json) => ({ name: p.name, schema: p.schema })),
        query: op.parameters.filter((p: Json) => p.in === 'query').map((p: Json) => ({ name: p.name, schema: p.schema })),
        body: op.requestBody?.content['application/json']?.schema ?? null,
        responses,
      });
    }
  }
  return ops;
}

const ajv = new Ajv({ strict: false, allErrors: false, validateFormats: false });
// Compiled once per schema text (every route's ErrorBody is the same), found by object after.
const validators = new Map<string, ValidateFunction>();
const validatorOf = new Map<Json, ValidateFunction>();
function validatorFor(schema: Json): ValidateFunction {
  let v = validatorOf.get(schema);
  if (!v) {
    const key = JSON.stringify(schema);
    v = validators.get(key) ?? ajv.compile(schema);
    validators.set(key, v);
    validatorOf.set(schema, v);
  }
  return v;
}

/** What is wrong with an answer, per the document; null when it conforms. */
export function violation(op: Operation, status: number, contentType: string, text: string): string | null {
  const declared = op.responses[String(status)];
  if (!declared) return `status ${status} is not declared (declared: ${Object.keys(op.responses).join(', ')})`;
  if (declared.contentType === null) return text === '' ? null : `a ${status} has no body, got ${JSON.stringify(text.slice(0, 80))}`;
  if (!contentType.startsWith(declared.contentType)) return `content type ${contentType}, declared ${declared.contentType}`;
  let value: unknown = text;
  if (declared.contentType.includes('json')) {
    try {
      value = JSON.parse(text);
    } catch {
      return `not JSON: ${JSON.stringify(text.slice(0, 80))}`;
    }
  }
  const validate = validatorFor(declared.schema ?? {});
  return validate(value) ? null : `body breaks the declared schema: ${ajv.errorsText(validate.errors)}`;
}
