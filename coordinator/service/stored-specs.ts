// Cluster specs as stored: validated before they are stored, sealed with the master key, and
// checked on every read (seal, current validation rules, never an older generation put back).
import { createHash } from 'node:crypto';
import pg from 'pg';
import type { Logger } from 'pino';
import { compileCluster, rolesNeedingPasswords, type RoleCredential } from '../cluster/compile.ts';
import { validateSpec } from '../cluster/spec.ts';
import { EscapeError } from '../../shared/pgconf/escape.ts';
import { renderHbaLine, renderIdentLine } from '../../shared/pgconf/render.ts';
import type { ClusterSpec } from '../../shared/contract/schema.ts';
import { ApiError, badRequest } from '../errors.ts';
import type { SecretBox } from '../store/secrets.ts';
import { SPEC_SEAL_BINDING_MIGRATION, SPEC_SEAL_MIGRATION, type Queryable, type Store } from '../store/store.ts';

export interface ClusterRow {
  name: string;
  spec: ClusterSpec;
  spec_canonical: string;
  generation: number;
  /** Random, per creation of the row: a deleted cluster's seals do not open for a new one of the same name. */
  incarnation: string;
  /** The spec's digest with the incarnation and generation, sealed with the master key (see StoredSpecs.seal). */
  spec_seal?: string | null;
}

export const CLUSTER_COLUMNS = 'name, spec, spec_canonical, generation, incarnation, spec_seal';
/** The spec column as PostgreSQL sent it (jsonb text), parsed by read() itself: what its check remembers. */
const JSONB_OID = 3802;
const specAsText = (oid: number, format?: 'text' | 'binary') => (oid === JSONB_OID ? (text: string) => text : pg.types.getTypeParser(oid, format));
const SPEC_AS_TEXT = { getTypeParser: specAsText as typeof pg.types.getTypeParser };
/** Clusters whose last checked row is remembered (#checkStored); the oldest is forgotten first. */
const CHECKED_ROWS_MAX = 10_000;

/** JSON with object keys sorted: equal specs give equal text. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    const obj = value as Record<string, unknown>;
    return `{${Object.keys(obj).filter((k) => obj[k] !== undefined).sort().map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

const sha256Hex = (s: string) => createHash('sha256').update(s).digest('hex');

/** What a stored spec's seal holds: the form, the row's incarnation and generation, the spec's digest. */
function sealedText(row: Pick<ClusterRow, 'incarnation' | 'generation'>, canonical: string): string {
  return `v2 ${row.incarnation} ${row.generation} ${sha256Hex(canonical)}`;
}

function storedSpecInvalid(cluster: string, why: string): ApiError {
  const message = `the stored spec of cluster "${cluster}" is refused: ${why}; check the spec and apply it again (pgaccord apply -f FILE)`;
  return new ApiError(500, 'E_STORED_SPEC_INVALID', message);
}

export class StoredSpecs {
  readonly #store: Store;
  readonly #box: SecretBox;
  readonly #log: Logger;
  /** Per cluster, the canonical spec last found valid when read (validation compiles it). */
  readonly #validated = new Map<string, string>();
  /** Per cluster, the last row that passed #checkStored (incarnation, generation, seal, spec text digest). */
  readonly #checked = new Map<string, string>();
  /** Per cluster, the highest generation read (see read) and when (#reads, a counter of reads issued and completed). */
  readonly #highWater = new Map<string, { incarnation: string; generation: number; at: number }>();
  #reads = 0;

  constructor(store: Store, box: SecretBox, log: Logger) {
    this.#store = store;
    this.#box = box;
    this.#log = log;
  }

  /** The spec of a request body for cluster `name`, valid and renderable (400 E_SPEC_INVALID otherwise). */
  validate(name: string, body: unknown): ClusterSpec {
    const result = validateSpec(body);
    if (!result.ok) {
      throw badRequest('E_SPEC_INVALID', `the cluster spec is invalid: ${result.errors.map((e) => `${e.field}: ${e.message}`).join('; ')}`, result.errors);
    }
    if (result.spec.name !== name) {
      const message = `does not match the cluster in the URL ("${name}")`;
      throw badRequest('E_SPEC_INVALID', `name: "${result.spec.name}" ${message}`, [{ field: 'name', message }]);
    }
    // Everything the spec would produce must be renderable by the one escaper.
    try {
      renderCheck(result.spec);
    } catch (e) {
      if (e instanceof EscapeError) throw badRequest('E_SPEC_INVALID', e.message, [{ field: 'hba', message: e.message }]);
      throw e;
    }
    // The first read of the row a PUT stores is then not validated again (renderCheck compiles every node).
    this.#validated.set(name, canonicalJson(result.spec));
    return result.spec;
  }

  /**
   * Every read of a stored spec goes through here: it is checked (#checkStored) before any use,
   * and refused if its generation is lower than one this process already read for the same
   * incarnation (a whole older row put back, seal and generation included). Only reads that
   * completed before this one was issued count (a slower concurrent read may see an older,
   * committed generation), and only reads outside a transaction (which cannot see its own
   * uncommitted bump, later rolled back).
   */
  async read(name: string, c: Queryable = this.#store.pool): Promise<ClusterRow | null> {
    const issued = ++this.#reads;
    const text = `SELECT ${CLUSTER_COLUMNS} FROM clusters WHERE name = $1`;
    const read = (await c.query<Omit<ClusterRow, 'spec'> & { spec: string }>({ text, values: [name], types: SPEC_AS_TEXT })).rows[0] ?? null;
    if (!read) return null;
    const row: ClusterRow = { ...read, spec: JSON.parse(read.spec) as ClusterSpec };
    this.#checkStored(row, read.spec);
    const seen = this.#highWater.get(name);
    if (seen && seen.incarnation === row.incarnation && row.generation < seen.generation && seen.at < issued) {
      throw storedSpecInvalid(name, `its generation ${row.generation} is lower than generation ${seen.generation} already served (an older row put back)`);
    }
    if (c === this.#store.pool && (!seen || seen.incarnation !== row.incarnation || row.generation > seen.generation)) {
      this.#highWater.set(name, { incarnation: row.incarnation, generation: row.generation, at: ++this.#reads });
    }
    return row;
  }

  /**
   * The seal of a stored spec: its digest with the row's incarnation and generation, sealed for
   * this cluster. Every change of the generation re-seals (putCluster, bump), so a pair copied
   * from an earlier generation or from a deleted row of the same name does not open.
   */
  seal(row: Pick<ClusterRow, 'name' | 'incarnation' | 'generation'>, canonical: string): string {
    return this.#box.seal(sealedText(row, canonical), `cluster-spec:${row.name}`);
  }

  sealHolds(row: ClusterRow): boolean {
    return this.#sealOpens(row) === sealedText(row, canonicalJson(row.spec));
  }

  #sealOpens(row: ClusterRow): string | null {
    if (!row.spec_seal) return null;
    try {
      return this.#box.open(row.spec_seal, `cluster-spec:${row.name}`);
    } catch {
      return null;
    }
  }

  /**
   * A stored spec is used only when the master key's seal holds (whoever reaches the database
   * cannot write one) and it still validates under this version's rules; anything else is
   * refused with E_STORED_SPEC_INVALID, never compiled.
   */
  #checkStored(row: ClusterRow, specText?: string): ClusterRow {
    // A row already checked, read again: the same incarnation, generation, seal and spec text
    // (the spec is parsed from that text, so it gives the same verdict). Serialising the spec
    // and opening its seal on every read was a third of the coordinator's busy time at 200
    // nodes; anything read that differs is checked in full below.
    const checked = specText === undefined ? null : `${row.incarnation}\n${row.generation}\n${row.spec_seal ?? ''}\n${sha256Hex(specText)}`;
    if (checked !== null && this.#checked.get(row.name) === checked) return row;
    const canonical = canonicalJson(row.spec);
    if (this.#sealOpens(row) !== sealedText(row, canonical)) {
      throw storedSpecInvalid(row.name, row.spec_seal
        ? 'it does not match its seal (changed other than through the API, an earlier version put back, or sealed with another master key)'
        : 'it has no seal (written other than through the API)');
    }
    if (this.#validated.get(row.name) !== canonical) {
      try {
        this.validate(row.name, row.spec);
      } catch (e) {
        if (e instanceof ApiError) throw storedSpecInvalid(row.name, `it no longer validates: ${e.message}`);
        throw e;
      }
      this.#validated.set(row.name, canonical);
    }
    if (checked !== null) {
      this.#checked.delete(row.name);
      this.#checked.set(row.name, checked);
      if (this.#checked.size > CHECKED_ROWS_MAX) this.#checked.delete(this.#checked.keys().next().value!);
    }
    return row;
  }

  /**
   * Right after the migrations that changed seals (only then): seal the rows older versions
   * wrote unsealed (migration 4), if they validate; re-seal the rows whose seal of the older
   * form (the digest alone) holds (migration 5). Any other row stays refused until applied again.
   */
  async resealAfterMigrations(applied: number[]): Promise<void> {
    if (!applied.includes(SPEC_SEAL_BINDING_MIGRATION)) return;
    for (const row of await this.#store.query<ClusterRow>(`SELECT ${CLUSTER_COLUMNS} FROM clusters`)) {
      const canonical = canonicalJson(row.spec);
      const opened = this.#sealOpens(row);
      if (opened === sealedText(row, canonical)) continue;
      if (opened !== sha256Hex(canonical)) {
        if (row.spec_seal || !applied.includes(SPEC_SEAL_MIGRATION)) {
          this.#log.warn({ cluster: row.name }, 'stored spec left as is: its seal does not hold; it is refused until applied again');
          continue;
        }
        try {
          this.validate(row.name, row.spec);
        } catch (e) {
          this.#log.warn({ cluster: row.name, err: (e as Error).message }, 'stored spec left unsealed: it does not validate; it is refused until applied again');
          continue;
        }
      }
      await this.#store.query(
        `UPDATE clusters SET spec_seal = $4 WHERE name = $1 AND incarnation = $2 AND generation = $3`,
        [row.name, row.incarnation, row.generation, this.seal(row, canonical)],
      );
      this.#log.info({ cluster: row.name }, 'stored spec sealed');
    }
  }
}

/** Compiles the spec with placeholder credentials and renders every line: what the escaper refuses, the spec does. */
function renderCheck(spec: ClusterSpec): void {
  const placeholder: Record<string, RoleCredential> = {};
  for (const r of rolesNeedingPasswords(spec)) placeholder[r] = { password: 'x', verifier: 'x' };
  for (const d of compileCluster({ spec, generation: 1, credentials: placeholder, caBundle: '', crl: null }).values()) {
    d.hba.forEach(renderHbaLine);
    d.ident.forEach(renderIdentLine);
  }
}
