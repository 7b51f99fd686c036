// What the planner shares with the agent's runtime: the certificate pairs it is given and the
// connections it hands back for the probes and for status.

/**
 * A key and certificate pair already on disk, written by the certificate manager under
 * versioned names (e.g. tls/server-<serial>.crt), so that switching to a new pair is one atomic
 * rename of the settings include file or passfile that names it, never two separate renames.
 */
export interface InstalledCertificate {
  slot: string;
  certPath: string;
  keyPath: string;
  serial: string;
  notAfter: string;
}

export interface ClientConnection {
  to: string;
  role: string;
  /** libpq connection string the profile's client uses; never holds a password. */
  conninfo: string;
  replication: boolean;
}
