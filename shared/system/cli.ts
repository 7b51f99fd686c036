// Argument parsing shared by every subcommand: node's parseArgs, a --help that helps, and
// usage errors that say what is wrong (exit status 2).
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { CodedError } from '../contract/problem.ts';

export class UsageError extends CodedError {
  constructor(message: string) {
    super('E_USAGE', message);
  }
}

export interface CommandDef<O extends NonNullable<ParseArgsConfig['options']>> {
  usage: string;
  summary: string;
  /** Lines describing each option, printed under --help. */
  details: string;
  options: O;
  positionals?: { min: number; max: number };
}

export function parseCommand<O extends NonNullable<ParseArgsConfig['options']>>(def: CommandDef<O>, argv: string[]) {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`usage: ${def.usage}\n\n${def.summary}\n\n${def.details.trim()}\n`);
    return null;
  }
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: def.options, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError(`${(e as Error).message}\nusage: ${def.usage}`);
  }
  const { min, max } = def.positionals ?? { min: 0, max: 0 };
  if (parsed.positionals.length < min || parsed.positionals.length > max) {
    throw new UsageError(`expected ${min === max ? min : `${min} to ${max}`} argument(s), got ${parsed.positionals.length}\nusage: ${def.usage}`);
  }
  return parsed;
}
