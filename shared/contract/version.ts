// The pgaccord version, from package.json: one source for `--version` and agent status reports.
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The package's directory: two levels above this source (shared/contract/), three above its compiled copy in dist/. */
export const PACKAGE_ROOT: string = ['../..', '../../..'].map((up) => fileURLToPath(new URL(`${up}/`, import.meta.url))).find((dir) => existsSync(`${dir}package.json`))!;

export const PGACCORD_VERSION: string = (JSON.parse(readFileSync(`${PACKAGE_ROOT}package.json`, 'utf8')) as { version: string }).version;
