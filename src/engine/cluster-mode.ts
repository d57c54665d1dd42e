/**
 * The gateway's side of scale-out (config `nats`): join the expert cluster, publish or read the cluster placement,
 * and derive the gateway's own worker placement (the experts the cluster placement gives `gateway`, round-robin
 * over its workers; the others unhosted here until a local fallback loads them).
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import type { Config } from '../config.ts';
import { joinCluster, PLACEMENT_KEY, type ClusterConnection } from '../../experts/remote/cluster.ts';
import { clusterPlacementToFile, GATEWAY_HOST, hostsOf, parseClusterPlacement, type ClusterPlacement } from '../placement/cluster.ts';
import { log } from '../log.ts';
import { placeOnWorkers, type Placement } from '../placement/placement.ts';
import { PackageError } from './package.ts';

export interface ClusterMode {
  connection: ClusterConnection;
  placement: ClusterPlacement;
}

/**
 * Keeps the gateway in step with the cluster placement in the bucket: the runner dispatches by the new one, and the
 * gateway's own workers load what it gives `gateway` (and drop the rest). Returns a function that stops following.
 */
export async function followClusterPlacement(
  mode: ClusterMode, layers: number, experts: number, apply: (placement: ClusterPlacement) => Promise<void>,
): Promise<() => void> {
  // From the latest value, not only later updates: a change published while the gateway was loading is not missed
  // (applying the placement it already follows changes nothing).
  const watch = await mode.connection.kv.watch({ key: PLACEMENT_KEY });
  let chain = Promise.resolve();
  let stopped = false;
  void (async () => {
    for await (const entry of watch) {
      if (entry.operation !== 'PUT') continue;
      chain = chain.then(async () => {
        const placement = parseClusterPlacement(entry.json(), layers, experts);
        await apply(placement);
        mode.placement = placement; // what the admin API shows: what the gateway routes by
        log.info('gateway follows the cluster placement', { hosts: hostsOf(placement) });
      }).catch((error) => log.error('gateway could not apply the cluster placement; it keeps the one it had', { error: (error as Error).message }));
    }
    // The bucket was deleted or NATS lost its store: placement changes no longer reach this gateway until it restarts.
    if (!stopped) log.error('the cluster placement watch ended: restart the gateway to follow placement changes again');
  })();
  return () => {
    stopped = true;
    watch.stop();
  };
}

/**
 * Joins the cluster named by config.nats; with nats.placementFile, validates it and publishes it to the bucket (hosts
 * follow it); without, reads the one published before. Throws with what to fix when neither exists or it is invalid.
 */
export async function joinAsGateway(config: Config, layers: number, experts: number): Promise<ClusterMode> {
  const nats = config.nats;
  const connection = await joinCluster({ url: nats.url!, cluster: nats.cluster, token: nats.token, credentialsFile: nats.credentialsFile, tls: nats.tls },
    `switchyard-gateway ${hostname()} ${process.pid}`);
  try {
    let placement: ClusterPlacement;
    if (nats.placementFile) {
      let raw: unknown;
      try {
        raw = JSON.parse(readFileSync(nats.placementFile, 'utf8'));
      } catch (error) {
        throw new PackageError(`${nats.placementFile}: cannot read the cluster placement file (${(error as Error).message})`);
      }
      placement = parseClusterPlacement(raw, layers, experts);
      await connection.kv.put(PLACEMENT_KEY, JSON.stringify(clusterPlacementToFile(placement)));
    } else {
      const entry = await connection.kv.get(PLACEMENT_KEY);
      if (!entry || entry.operation !== 'PUT') {
        throw new PackageError(`the cluster '${nats.cluster}' has no placement yet: start one gateway with nats.placementFile naming which hosts serve which experts`);
      }
      placement = parseClusterPlacement(entry.json(), layers, experts);
    }
    return { connection, placement };
  } catch (error) {
    await connection.close();
    throw error;
  }
}

/** The gateway's own workers' placement at start: the experts `placement` gives the gateway, round-robin over `workers`. */
export function gatewayWorkerPlacement(placement: ClusterPlacement, workers: number): Placement {
  const empty = { workers, hosts: placement.hosts.map((row) => row.map(() => [])) };
  return placeOnWorkers(empty, (layer, expert) => placement.hosts[layer][expert].includes(GATEWAY_HOST));
}
