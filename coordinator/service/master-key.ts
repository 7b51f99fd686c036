// The master key a coordinator runs with must be the one that sealed its store's secrets.
import type { SecretBox } from '../store/secrets.ts';
import type { Store } from '../store/store.ts';

const MASTER_KEY_MISMATCH =
  'master.key does not match the one this database was initialised with: coordinators sharing a database need copies of the same master.key';

/** Refuse to run with a master key other than the one that sealed this store's secrets. */
export async function checkMasterKey(store: Store, box: SecretBox): Promise<void> {
  const probe = 'pgaccord master key check';
  const rows = await store.query<{ value: string }>(`SELECT value FROM meta WHERE key = 'master_key_check'`);
  if (rows.length === 0) {
    // No check row (a store from before it, or one whose row was lost): before writing one with
    // this key, the key must open what the store already holds. Otherwise a second coordinator
    // with another key would write its own check row and lock out the right one.
    if (!(await opensStoredSecret(store, box))) throw new Error(MASTER_KEY_MISMATCH);
    await store.query(`INSERT INTO meta (key, value) VALUES ('master_key_check', $1) ON CONFLICT (key) DO NOTHING`, [box.seal(probe, 'meta:master_key_check')]);
    return checkMasterKey(store, box);
  }
  try {
    if (box.open(rows[0]!.value, 'meta:master_key_check') === probe) return;
  } catch {
    // fall through
  }
  throw new Error(MASTER_KEY_MISMATCH);
}

/** Whether this master key opens a secret the store holds (true when it holds none yet). */
async function opensStoredSecret(store: Store, box: SecretBox): Promise<boolean> {
  const ca = (await store.query<{ cluster: string; key_sealed: string }>(`SELECT cluster, key_sealed FROM cluster_cas LIMIT 1`))[0];
  const role = ca
    ? undefined
    : (await store.query<{ cluster: string; role: string; password_sealed: string }>(`SELECT cluster, role, password_sealed FROM role_credentials LIMIT 1`))[0];
  try {
    if (ca) box.open(ca.key_sealed, `cluster-ca:${ca.cluster}`);
    else if (role) box.open(role.password_sealed, `role-password:${role.cluster}/${role.role}`);
    return true;
  } catch {
    return false;
  }
}

