/**
 * The admin API's side of an expert cluster (scale-out over NATS): the hosts that announced themselves, the cluster
 * placement, publishing a new one (hosts and gateways follow it: load, subscribe, drain, unload), and rebalancing
 * across hosts with the same planner as local workers (EPLB-style: replicate and pack hot experts), fed by the
 * per-expert load this gateway routed; and healing: hosts that stop renewing their announcement are taken out of the
 * placement.
 */
import { hostKey, PLACEMENT_KEY, type HostAnnouncement } from '../../experts/remote/cluster.ts';
import { clusterPlacementToFile, GATEWAY_HOST, hostsOf, parseClusterPlacement, withoutHosts, type ClusterPlacement, type ClusterPlacementFile } from '../placement/cluster.ts';
import type { LoadTracker } from '../placement/load-window.ts';
import type { Placement } from '../placement/placement.ts';
import { planPlacement, predictBalance, type Balance } from '../placement/rebalance.ts';
import type { ClusterMode } from './cluster-mode.ts';
import { log } from '../log.ts';

export interface ClusterRebalance {
  dryRun: boolean;
  /** The hosts planned over (every live announced host), in the order of `placement`'s worker indices. */
  hosts: string[];
  windowSeconds: number | null;
  tokens: number;
  before: Balance;
  after: Balance;
  placement: ClusterPlacementFile;
  /** Experts that change hosts: [layer, expert, hosts before, hosts after]. */
  moves: Array<{ layer: number; expert: number; from: string[]; to: string[] }>;
}

export class ClusterRebalanceError extends Error {
  override readonly name = 'ClusterRebalanceError';
}

export class ClusterAdmin {
  constructor(
    private readonly mode: ClusterMode,
    private readonly tracker: LoadTracker,
    private readonly shape: { layers: number; experts: number; cluster: string; hostTimeoutMs: number },
  ) {}

  get cluster(): string {
    return this.shape.cluster;
  }

  placementFile(): ClusterPlacementFile {
    return clusterPlacementToFile(this.mode.placement);
  }

  /**
   * The hosts that announced themselves in the bucket (a host deletes its entry when it leaves cleanly), with how long
   * ago each renewed it (by the NATS server's clock against this machine's: keep clocks in sync).
   */
  async hosts(): Promise<Array<HostAnnouncement & { lastSeenMsAgo: number }>> {
    // A set: the key listing is a consumer over the bucket, and a host that renews its announcement while it runs is
    // listed again (a duplicate host made rebalancing plan over three hosts of two).
    const keys = new Set<string>();
    for await (const key of await this.mode.connection.kv.keys(hostKey('*'))) keys.add(key);
    const found: Array<HostAnnouncement & { lastSeenMsAgo: number }> = [];
    for (const key of keys) {
      const entry = await this.mode.connection.kv.get(key);
      if (!entry || entry.operation !== 'PUT') continue;
      try {
        found.push({ ...entry.json<HostAnnouncement>(), lastSeenMsAgo: Math.max(0, Date.now() - entry.created.getTime()) });
      } catch {
        log.warn('skipping an unreadable host announcement in the cluster bucket', { key });
      }
    }
    return found.sort((a, b) => a.hostId.localeCompare(b.hostId));
  }

  /**
   * Heals the placement twice per host timeout (a host that went silent leaves it: its replicas carry on, or its
   * experts move to live hosts, so batches stop waiting for it). Returns a function that stops; the timer never keeps
   * the process alive.
   */
  startHealing(): () => void {
    let healing = false;
    const timer = setInterval(() => {
      if (healing) return;
      healing = true;
      this.heal().then((gone) => {
        if (gone.length > 0) log.warn('expert hosts stopped renewing their announcement: the cluster placement no longer names them', { hosts: gone });
      }).catch((error) => log.warn('could not check the expert hosts', { error: (error as Error).message }))
        .finally(() => (healing = false));
    }, Math.max(50, Math.floor(this.shape.hostTimeoutMs / 2)));
    timer.unref();
    return () => clearInterval(timer);
  }

  /**
   * Takes hosts that announced themselves and then stopped renewing it (killed, frozen, cut off) out of the cluster
   * placement (withoutHosts). Silence is judged by max(hostTimeoutMs, 3 × the host's own heartbeat). A host the
   * placement names that never announced (not started yet) or left cleanly (it deletes its entry) is not taken out.
   * Publishes only if nobody changed the placement meanwhile (another gateway healing, an operator). Returns the hosts
   * taken out, or [] when none was.
   */
  async heal(hostTimeoutMs = this.shape.hostTimeoutMs): Promise<string[]> {
    const entry = await this.mode.connection.kv.get(PLACEMENT_KEY);
    if (!entry || entry.operation !== 'PUT') return [];
    const placement = parseClusterPlacement(entry.json(), this.shape.layers, this.shape.experts);
    const announced = await this.hosts();
    const silent = (h: (typeof announced)[number]) => h.lastSeenMsAgo > Math.max(hostTimeoutMs, 3 * (h.heartbeatMs ?? 0));
    const gone = new Set(announced.filter(silent).map((h) => h.hostId).filter((h) => hostsOf(placement).includes(h)));
    const healed = withoutHosts(placement, gone, announced.filter((h) => !silent(h)).map((h) => h.hostId));
    if (!healed) return [];
    try {
      await this.mode.connection.kv.update(PLACEMENT_KEY, JSON.stringify(clusterPlacementToFile(healed)), entry.revision);
    } catch (error) {
      // JetStream's "wrong last sequence": the placement changed meanwhile, and the next round looks again.
      if ((error as { api_error?: { err_code?: number } })?.api_error?.err_code === 10071 || /wrong last sequence/i.test((error as Error).message)) return [];
      throw error;
    }
    return [...gone].sort();
  }

  /** Validates and publishes a cluster placement; throws ClusterPlacementError naming each problem. */
  async publish(raw: unknown): Promise<ClusterPlacement> {
    const placement = parseClusterPlacement(raw, this.shape.layers, this.shape.experts);
    await this.mode.connection.kv.put(PLACEMENT_KEY, JSON.stringify(clusterPlacementToFile(placement)));
    return placement;
  }

  /**
   * Plans a placement over the announced hosts from the load of the last `windowSeconds` (null: since start), and
   * publishes it unless `dryRun`. Throws ClusterRebalanceError when no host announced itself or no load was seen.
   */
  async rebalance(options: { dryRun: boolean; windowSeconds: number | null }): Promise<ClusterRebalance> {
    const hosts = (await this.hosts()).filter((h) => h.lastSeenMsAgo <= Math.max(this.shape.hostTimeoutMs, 3 * (h.heartbeatMs ?? 0))).map((h) => h.hostId);
    if (hosts.length === 0) throw new ClusterRebalanceError('no live expert host has announced itself in the cluster: start `switchyard expert-host` first');
    const window = this.tracker.window(options.windowSeconds);
    if (window.tokens === 0) throw new ClusterRebalanceError('no load seen in the window yet: send traffic first, or widen window_s');
    const index = new Map(hosts.map((h, i) => [h, i]));
    const toWorkers = (p: ClusterPlacement): Placement => ({
      workers: hosts.length,
      hosts: p.hosts.map((row) => row.map((hs) => hs.flatMap((h) => (index.has(h) ? [index.get(h)!] : [])))),
    });
    const current = toWorkers(this.mode.placement);
    const plan = planPlacement({ load: window.tokensPerExpert, workers: hosts.length, maxExpertsPerWorker: null, current });
    const next: ClusterPlacement = { hosts: plan.placement.hosts.map((row) => row.map((ws) => ws.map((w) => hosts[w]).sort())) };
    const moves = next.hosts.flatMap((row, layer) => row.flatMap((to, expert) => {
      const from = this.mode.placement.hosts[layer][expert];
      return from.join() === to.join() ? [] : [{ layer, expert, from: [...from], to }];
    }));
    if (!options.dryRun) await this.publish(clusterPlacementToFile(next));
    return {
      dryRun: options.dryRun, hosts, windowSeconds: options.windowSeconds, tokens: window.tokens,
      before: predictBalance(current, window.tokensPerExpert), after: plan.predicted, placement: clusterPlacementToFile(next), moves,
    };
  }
}
