// Coordinator URLs as agents and the admin CLI take them: one, or several coordinators sharing
// one store, from flags (repeated or comma-separated), a YAML list or the environment. No
// dependencies: the admin CLI loads this without typebox (see the cli-footprint test).

/** Why a coordinator URL is not usable (https only, no credentials, no query), or null. */
export function coordinatorUrlProblem(text: string): string | null {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    return `"${text}" is not a URL`;
  }
  if (u.protocol !== 'https:') return `must be https://, got ${u.protocol}//`;
  if (u.username || u.password || u.search || u.hash) return `"${u.host}" must be a plain https://HOST[:PORT] URL (no credentials, query or fragment)`;
  return null;
}

/**
 * A list of coordinator URLs from flags, a config file or the environment: each item may itself
 * be comma-separated ("https://a:7432,https://b:7432"). Trailing slashes dropped, duplicates
 * removed, order kept (it is the order they are tried in). Throws an Error naming the bad one.
 */
export function parseCoordinatorUrls(items: readonly string[]): string[] {
  const out: string[] = [];
  for (const item of items) {
    for (const raw of item.split(',')) {
      const text = raw.trim();
      if (text === '') continue;
      const bad = coordinatorUrlProblem(text);
      if (bad) throw new Error(bad);
      const url = new URL(text).toString().replace(/\/+$/, '');
      if (!out.includes(url)) out.push(url);
    }
  }
  return out;
}
