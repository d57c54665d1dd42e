/**
 * Joining a Switchyard cluster on NATS: the connection (token or credentials from config), the JetStream key-value
 * bucket that holds the cluster placement and the hosts' announcements, and the subject names.
 *
 *   <cluster>.expert.<layer>.<expert>   request/reply: one expert batch (wire.ts); every host serving that expert
 *                                       subscribes in the queue group <cluster>-experts, so NATS sends each batch
 *                                       to one live replica
 *   KV bucket <cluster>: `placement`     the cluster placement (src/placement/cluster.ts), JSON
 *                        `host.<id>`     a host's announcement (id, workers, cores, memory), JSON
 */
import { readFileSync } from 'node:fs';
import { connect, credsAuthenticator, errors, type NatsConnection } from '@nats-io/transport-node';
import { Kvm, type KV } from '@nats-io/kv';

export interface ClusterOptions {
  /** nats://host:port (several, comma-separated, for a NATS cluster). */
  url: string;
  /** Names the cluster: the subject prefix and the key-value bucket. Letters, digits, _ and -. */
  cluster: string;
  /** NATS token auth; null: none. */
  token: string | null;
  /** A NATS credentials file (JWT + nkey seed, `nsc` style); null: none. */
  credentialsFile: string | null;
  /** PEM files for TLS: a private CA, a client certificate and its key (config nats.tls); absent: system CAs. */
  tls?: { caFile: string | null; certFile: string | null; keyFile: string | null };
}

export const PLACEMENT_KEY = 'placement';
export const hostKey = (hostId: string) => `host.${hostId}`;
export const expertSubject = (cluster: string, layer: number, expert: number) => `${cluster}.expert.${layer}.${expert}`;
export const expertQueue = (cluster: string) => `${cluster}-experts`;

/** What a host announces when it joins (KV `host.<id>`). */
export interface HostAnnouncement {
  hostId: string;
  workers: number;
  cores: number;
  memoryBytes: number;
  startedAt: string;
  /** The host renews this entry every heartbeatMs; gateways judge it by the entry's age. */
  heartbeatMs: number;
}

export interface ClusterConnection {
  nc: NatsConnection;
  kv: KV;
  close(): Promise<void>;
}

/** Connects and opens (creating if needed) the cluster's key-value bucket; `name` shows in the server's monitoring. */
export async function joinCluster(options: ClusterOptions, name: string): Promise<ClusterConnection> {
  let authenticator;
  if (options.credentialsFile) {
    try {
      authenticator = credsAuthenticator(readFileSync(options.credentialsFile));
    } catch (error) {
      throw new Error(`cannot read the NATS credentials file ${options.credentialsFile} (${(error as Error).message}): fix nats.credentialsFile`, { cause: error });
    }
  }
  for (const [field, file] of Object.entries(options.tls ?? {})) {
    if (!file) continue;
    try {
      readFileSync(file);
    } catch (error) {
      throw new Error(`cannot read nats.tls.${field} ${file} (${(error as Error).message}): fix the path`, { cause: error });
    }
  }
  if (options.tls && Boolean(options.tls.certFile) !== Boolean(options.tls.keyFile)) {
    throw new Error('nats.tls.certFile and nats.tls.keyFile go together: set both (a client certificate and its key) or neither');
  }
  let nc: NatsConnection;
  try {
    nc = await connect({
      servers: options.url.split(',').map((s) => s.trim()), name,
      ...(options.token ? { token: options.token } : {}), ...(authenticator ? { authenticator } : {}),
      // TLS is used whenever the server offers or requires it; these name a private CA and a client certificate.
      ...(options.tls && (options.tls.caFile || options.tls.certFile) ? {
        tls: {
          ...(options.tls.caFile ? { caFile: options.tls.caFile } : {}),
          ...(options.tls.certFile ? { certFile: options.tls.certFile } : {}),
          ...(options.tls.keyFile ? { keyFile: options.tls.keyFile } : {}),
        },
      } : {}),
      // Keep trying to reconnect after a NATS server restart; requests in the meantime fail and are retried.
      maxReconnectAttempts: -1, reconnectTimeWait: 250,
    });
  } catch (error) {
    if (error instanceof errors.AuthorizationError || (error as { cause?: unknown })?.cause instanceof errors.AuthorizationError) {
      throw new Error(`NATS at ${options.url} refused this client's credentials: set nats.token ($SWITCHYARD_NATS_TOKEN) or nats.credentialsFile to what the server expects`, { cause: error });
    }
    const message = (error as Error).message;
    const cause = (error as { cause?: { code?: string; message?: string } })?.cause;
    if (/certificate|altnames|TLS|SSL/i.test(`${message} ${cause?.code ?? ''} ${cause?.message ?? ''}`)) {
      throw new Error(`TLS to NATS at ${options.url} failed (${message}): set nats.tls.caFile to the CA that signed the server's certificate, or fix the certificate's names`, { cause: error });
    }
    const tlsHint = options.tls?.caFile || options.tls?.certFile ? '; if the server verifies clients (tls verify), set nats.tls.certFile and keyFile' : '';
    throw new Error(`cannot reach NATS at ${options.url} (${message}): start nats-server with JetStream (nats-server -js) or fix nats.url${tlsHint}`, { cause: error });
  }
  try {
    const kv = await new Kvm(nc).create(options.cluster, { history: 1 });
    return { nc, kv, close: async () => { await nc.drain().catch(() => nc.close()); } };
  } catch (error) {
    await nc.close();
    const message = (error as Error).message;
    const hint = /jetstream not enabled|no responders/i.test(message) ? 'start nats-server with -js (JetStream)'
      : `check that this NATS user may use JetStream and the key-value bucket '${options.cluster}' ($KV.${options.cluster}.>)`;
    throw new Error(`cannot open the cluster's key-value bucket on NATS at ${options.url} (${message}): ${hint}`, { cause: error });
  }
}
