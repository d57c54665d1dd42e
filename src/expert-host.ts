/**
 * `switchyard expert-host`: the process that serves experts to gateways on other machines. It loads only what an
 * expert host needs — the model package's header and its experts' weights (in its workers), no trunk, no HTTP —
 * joins the cluster on NATS, and follows the cluster placement (experts/remote/host.ts). No signal handling here
 * (the CLI owns that).
 */
import { availableParallelism, hostname } from 'node:os';
import type { Config } from './config.ts';
import { ExpertPool } from '../experts/pool.ts';
import { joinCluster } from '../experts/remote/cluster.ts';
import { ExpertHost } from '../experts/remote/host.ts';
import { poolOptions } from './engine/engine.ts';
import { loadModelPackage } from './engine/package.ts';
import { log } from './log.ts';

export interface RunningHost {
  host: ExpertHost;
  /** Leaves the cluster (answering the batches already received), then stops the workers. */
  close(): Promise<void>;
}

/** Starts an expert host for config.model on config.nats with `hostId` (default: this machine's name). */
export async function startExpertHost(config: Config, hostId = defaultHostId()): Promise<RunningHost> {
  if (!config.nats.url) throw new Error('an expert host needs a NATS server: pass --nats URL (or set nats.url)');
  const pkg = loadModelPackage(config.model);
  const c = pkg.config;
  const workers = config.workers ?? availableParallelism();
  // No experts until the cluster placement names some for this host.
  const pool = await ExpertPool.start(poolOptions(config, pkg,
    { workers, hosts: Array.from({ length: c.num_hidden_layers }, () => Array.from({ length: c.num_experts }, () => [])) }));
  let connection;
  try {
    connection = await joinCluster({ url: config.nats.url, cluster: config.nats.cluster, token: config.nats.token, credentialsFile: config.nats.credentialsFile, tls: config.nats.tls },
      `switchyard-expert-host ${hostId}`);
  } catch (error) {
    await pool.close();
    throw error;
  }
  let host: ExpertHost;
  try {
    host = await ExpertHost.start(connection, pool, {
      hostId, cluster: config.nats.cluster, layers: c.num_hidden_layers, experts: c.num_experts, hidden: c.hidden_size,
      heartbeatMs: Math.max(50, Math.floor(config.nats.hostTimeoutMs / 3)),
    });
  } catch (error) {
    await connection.close();
    await pool.close();
    throw error;
  }
  log.info('expert host ready', { host: hostId, model: pkg.dir, workers });
  return {
    host,
    close: async () => {
      await host.close();
      await connection.close();
      await pool.close();
    },
  };
}

/** The machine's name, made a valid host id. */
export function defaultHostId(): string {
  return hostname().replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 64) || 'host';
}
