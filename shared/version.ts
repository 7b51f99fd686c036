// The pgaccord version, from package.json: one source for `--version` and agent status reports.
import { readFileSync } from 'node:fs';

export const PGACCORD_VERSION: string = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
