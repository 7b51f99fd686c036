// Where a value first fails a schema, for a refusal's message: the path (RFC 6901) and message
// TypeBox's Value.Errors gives first, from the plain JSON copy of the schema that
// checks.generated.ts carries (so the agent loads no TypeBox). Only the kinds our contract
// uses; the checkers test compares it with Value.Errors on every field of every checked schema.
// Whether a value passes is the generated checker's answer, never this walker's.

/** A TypeBox schema as JSON, its Kind symbol kept as "~kind". */
export interface PlainSchema {
  '~kind': string;
  properties?: Record<string, PlainSchema>;
  required?: string[];
  additionalProperties?: boolean | PlainSchema;
  patternProperties?: Record<string, PlainSchema>;
  items?: PlainSchema;
  anyOf?: PlainSchema[];
  const?: unknown;
  minItems?: number;
  maxItems?: number;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  minProperties?: number;
  maxProperties?: number;
}

export interface SchemaError {
  path: string;
  message: string;
}

const key = (k: string) => k.replace(/~/g, '~0').replace(/\//g, '~1');
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function bounds(s: PlainSchema, path: string, v: number, what: string): SchemaError | undefined {
  if (s.exclusiveMaximum !== undefined && !(v < s.exclusiveMaximum)) return { path, message: `Expected ${what} to be less than ${s.exclusiveMaximum}` };
  if (s.exclusiveMinimum !== undefined && !(v > s.exclusiveMinimum)) return { path, message: `Expected ${what} to be greater than ${s.exclusiveMinimum}` };
  if (s.maximum !== undefined && !(v <= s.maximum)) return { path, message: `Expected ${what} to be less or equal to ${s.maximum}` };
  if (s.minimum !== undefined && !(v >= s.minimum)) return { path, message: `Expected ${what} to be greater or equal to ${s.minimum}` };
  return undefined;
}

function sizes(s: PlainSchema, path: string, v: object): SchemaError | undefined {
  const n = Object.getOwnPropertyNames(v).length;
  if (s.minProperties !== undefined && !(n >= s.minProperties)) return { path, message: `Expected object to have at least ${s.minProperties} properties` };
  if (s.maxProperties !== undefined && !(n <= s.maxProperties)) return { path, message: `Expected object to have no more than ${s.maxProperties} properties` };
  return undefined;
}

function fromObject(s: PlainSchema, path: string, v: unknown): SchemaError | undefined {
  if (!isObject(v)) return { path, message: 'Expected object' };
  const sized = sizes(s, path, v);
  if (sized) return sized;
  const known = Object.getOwnPropertyNames(s.properties ?? {});
  const present = Object.getOwnPropertyNames(v);
  const missing = (s.required ?? []).find((k) => !present.includes(k));
  if (missing !== undefined) return { path: `${path}/${key(missing)}`, message: 'Expected required property' };
  for (const k of present) {
    if (known.includes(k)) continue;
    if (s.additionalProperties === false) return { path: `${path}/${key(k)}`, message: 'Unexpected property' };
    if (typeof s.additionalProperties === 'object') {
      const e = firstError(s.additionalProperties, v[k], `${path}/${key(k)}`);
      if (e) return e;
    }
  }
  for (const k of known) {
    // An optional property counts when it is not undefined (TypeBox's default policy).
    if (!(s.required ?? []).includes(k) && v[k] === undefined) continue;
    const e = firstError(s.properties![k]!, v[k], `${path}/${key(k)}`);
    if (e) return e;
  }
  return undefined;
}

function fromRecord(s: PlainSchema, path: string, v: unknown): SchemaError | undefined {
  if (!isObject(v)) return { path, message: 'Expected object' };
  const sized = sizes(s, path, v);
  if (sized) return sized;
  const [pattern, each] = Object.entries(s.patternProperties ?? {})[0]!;
  const re = new RegExp(pattern);
  for (const [k, x] of Object.entries(v)) {
    const e = re.test(k) ? firstError(each, x, `${path}/${key(k)}`) : undefined;
    if (e) return e;
  }
  for (const [k, x] of Object.entries(v)) {
    if (re.test(k)) continue;
    if (typeof s.additionalProperties === 'object') {
      const e = firstError(s.additionalProperties, x, `${path}/${key(k)}`);
      if (e) return e;
    }
  }
  const extra = s.additionalProperties === false ? Object.keys(v).find((k) => !re.test(k)) : undefined;
  return extra === undefined ? undefined : { path: `${path}/${key(extra)}`, message: 'Unexpected property' };
}

function fromArray(s: PlainSchema, path: string, v: unknown): SchemaError | undefined {
  if (!Array.isArray(v)) return { path, message: 'Expected array' };
  if (s.minItems !== undefined && !(v.length >= s.minItems)) return { path, message: `Expected array length to be greater or equal to ${s.minItems}` };
  if (s.maxItems !== undefined && !(v.length <= s.maxItems)) return { path, message: `Expected array length to be less or equal to ${s.maxItems}` };
  for (let i = 0; i < v.length; i++) {
    const e = firstError(s.items!, v[i], `${path}/${i}`);
    if (e) return e;
  }
  return undefined;
}

function fromString(s: PlainSchema, path: string, v: unknown): SchemaError | undefined {
  if (typeof v !== 'string') return { path, message: 'Expected string' };
  if (s.minLength !== undefined && !(v.length >= s.minLength)) return { path, message: `Expected string length greater or equal to ${s.minLength}` };
  if (s.maxLength !== undefined && !(v.length <= s.maxLength)) return { path, message: `Expected string length less or equal to ${s.maxLength}` };
  if (typeof s.pattern === 'string' && !new RegExp(s.pattern).test(v)) return { path, message: `Expected string to match '${s.pattern}'` };
  return undefined;
}

/** The first error TypeBox's Value.Errors(schema, value) yields, or undefined. */
export function firstError(s: PlainSchema, v: unknown, path = ''): SchemaError | undefined {
  switch (s['~kind']) {
    case 'Object':
      return fromObject(s, path, v);
    case 'Record':
      return fromRecord(s, path, v);
    case 'Array':
      return fromArray(s, path, v);
    case 'String':
      return fromString(s, path, v);
    case 'Integer':
      return Number.isInteger(v) ? bounds(s, path, v as number, 'integer') : { path, message: 'Expected integer' };
    case 'Number':
      return Number.isFinite(v) ? bounds(s, path, v as number, 'number') : { path, message: 'Expected number' };
    case 'Boolean':
      return typeof v === 'boolean' ? undefined : { path, message: 'Expected boolean' };
    case 'Null':
      return v === null ? undefined : { path, message: 'Expected null' };
    case 'Literal':
      return v === s.const ? undefined : { path, message: `Expected ${typeof s.const === 'string' ? `'${s.const}'` : String(s.const)}` };
    case 'Union':
      return s.anyOf!.some((x) => firstError(x, v, path) === undefined) ? undefined : { path, message: 'Expected union value' };
    case 'Unknown':
    case 'Any':
      return undefined;
    default:
      throw new Error(`first-error: schema kind ${s['~kind']} is not supported`);
  }
}
