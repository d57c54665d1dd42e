/**
 * The rebalancing planner: pure math, no I/O. Given the load of every expert (tokens, or any cost measure, per
 * layer) it decides how many replicas each expert gets and which workers host them, in the manner of DeepSeek's
 * EPLB (expert-parallel load balancer):
 *
 * 1. Replication. Repeatedly give one more replica to the expert with the heaviest load per replica, across all
 *    layers, while that load is above its layer's even share per worker (layer load / workers) — below that a
 *    replica cannot lower the layer's maximum — and while the memory budget has room. Loads are compared as
 *    multiples of their layer's even share, so layers with different totals compare fairly.
 * 2. Packing. Per layer, longest-processing-time first: replicas (each carrying load / replicas) in decreasing
 *    order, each onto the worker with the least load in that layer that does not already hold that expert and has
 *    a free slot. Ties go to a worker that hosts the expert now (fewer experts to move), then to the worker holding
 *    fewer experts, then the lower id.
 *
 * Memory budget: at most `maxExpertsPerWorker` experts per worker over all layers. Each layer gets a per-worker
 * slot count k_l, starting at ceil(experts / workers); spare budget raises the k_l of layers that want replicas
 * (each +1 gives the layer one more slot on every worker). If even ceil(experts / workers) per layer does not fit,
 * the planner packs without replicas under the global budget only.
 *
 * Layers run one after another and each waits for its slowest worker, so a placement is judged per layer:
 * balancedness = mean / max of the workers' load in that layer, and overall = Σ_l mean_l / Σ_l max_l (the share
 * of the time spent in expert layers that is useful when every layer waits for its slowest worker). Loads are
 * predicted the way the pool dispatches (`assignBatches`): experts with one host load it; replicated experts
 * are water-filled over their hosts.
 */
import { waterFill, type Placement } from './placement.ts';

export interface Balance {
  /** Predicted load per worker, [layer][worker]. */
  workerLoad: number[][];
  /** mean / max of the workers' load, per layer (1 when a layer has no load). */
  perLayer: number[];
  /** Σ_l mean_l / Σ_l max_l. */
  overall: number;
}

/** How `load` ([layer][expert]) spreads over the workers of `placement`, the way the pool dispatches it. */
export function predictBalance(placement: Placement, load: readonly (readonly number[])[]): Balance {
  const workerLoad = placement.hosts.map((row, l) => {
    const w = new Array<number>(placement.workers).fill(0);
    const replicated: number[] = [];
    row.forEach((hosts, e) => {
      if (hosts.length === 1) w[hosts[0]] += load[l]?.[e] ?? 0;
      else replicated.push(e);
    });
    replicated.sort((a, b) => (load[l]?.[b] ?? 0) - (load[l]?.[a] ?? 0) || a - b);
    for (const e of replicated) {
      const hosts = row[e];
      const shares = waterFill(hosts.map((h) => w[h]), load[l]?.[e] ?? 0);
      hosts.forEach((h, j) => (w[h] += shares[j]));
    }
    return w;
  });
  return { workerLoad, ...balanceOf(workerLoad) };
}

/** Balancedness of per-layer worker loads ([layer][worker]): per layer, and Σ mean / Σ max overall. */
export function balanceOf(workerLoad: readonly (readonly number[])[]): { perLayer: number[]; overall: number } {
  let means = 0;
  let maxes = 0;
  const perLayer = workerLoad.map((w) => {
    const max = w.length === 0 ? 0 : Math.max(...w);
    const mean = w.length === 0 ? 0 : w.reduce((a, b) => a + b, 0) / w.length;
    means += mean;
    maxes += max;
    return max === 0 ? 1 : mean / max;
  });
  return { perLayer, overall: maxes === 0 ? 1 : means / maxes };
}

export interface PlanInput {
  /** Load per expert, [layer][expert] (tokens routed, or a cost). */
  load: readonly (readonly number[])[];
  workers: number;
  /** Most experts per worker over all layers; null: no limit. */
  maxExpertsPerWorker: number | null;
  /** The placement in use: ties are broken towards its hosts, so fewer experts move. */
  current?: Placement;
}

export interface Plan {
  placement: Placement;
  /** Replicas per expert, [layer][expert]. */
  replicas: number[][];
  /** Predicted balance of the new placement under `load`. */
  predicted: Balance;
  /** Experts each worker holds (all layers). */
  expertsPerWorker: number[];
}

export class PlanError extends Error {
  override readonly name = 'PlanError';
}

export function planPlacement(input: PlanInput): Plan {
  const { load, workers } = input;
  const layers = load.length;
  const experts = layers === 0 ? 0 : load[0].length;
  if (!Number.isInteger(workers) || workers < 1) throw new PlanError(`workers must be a positive integer (got ${workers})`);
  const budget = input.maxExpertsPerWorker ?? Number.POSITIVE_INFINITY;
  if (budget * workers < layers * experts) {
    throw new PlanError(`${layers * experts} experts do not fit on ${workers} workers with at most ${budget} experts each (placement.maxExpertsPerWorker); add workers or raise the budget`);
  }
  for (const row of load) for (const x of row) if (!(x >= 0) || !Number.isFinite(x)) throw new PlanError(`loads must be finite and >= 0 (got ${x})`);

  // Per-layer slots per worker; fallback: no replicas, the global budget only.
  const base = Math.ceil(experts / workers);
  const perLayerFits = base * layers <= budget;
  const slots = new Array<number>(layers).fill(perLayerFits ? base : Number.POSITIVE_INFINITY);
  let spare = perLayerFits ? budget - base * layers : 0;

  // 1. Replication.
  const replicas = load.map((row) => row.map(() => 1));
  const even = load.map((row) => row.reduce((a, b) => a + b, 0) / workers);
  if (perLayerFits) {
    const used = load.map((row) => row.length);
    const full = new Array<boolean>(layers).fill(false);
    for (;;) {
      let best: [number, number] | null = null;
      let bestScore = 1;
      for (let l = 0; l < layers; l++) {
        if (full[l] || even[l] === 0) continue;
        for (let e = 0; e < experts; e++) {
          if (replicas[l][e] >= workers) continue;
          const score = load[l][e] / replicas[l][e] / even[l];
          if (score > bestScore + 1e-12) {
            bestScore = score;
            best = [l, e];
          }
        }
      }
      if (best === null) break;
      const [l, e] = best;
      if (used[l] + 1 > slots[l] * workers) {
        if (spare > 0) {
          slots[l]++;
          spare--;
        } else {
          full[l] = true;
          continue;
        }
      }
      replicas[l][e]++;
      used[l]++;
    }
  }

  // 2. Packing, heaviest layers first (matters only under the global budget).
  const held = new Array<number>(workers).fill(0);
  const hosts: number[][][] = load.map((row) => row.map(() => []));
  const layerOrder = load.map((_, l) => l).sort((a, b) => {
    const peak = (l: number) => (even[l] === 0 ? 0 : Math.max(...load[l]) / even[l]);
    return peak(b) - peak(a) || a - b;
  });
  for (const l of layerOrder) {
    const items: Array<{ expert: number; weight: number; primary: boolean }> = [];
    for (let e = 0; e < experts; e++) {
      for (let r = 0; r < replicas[l][e]; r++) items.push({ expert: e, weight: load[l][e] / replicas[l][e], primary: r === 0 });
    }
    // Heavier first; among equals, experts with more replicas first (they are the hardest to fit on distinct workers).
    items.sort((a, b) => b.weight - a.weight || replicas[l][b.expert] - replicas[l][a.expert] || a.expert - b.expert || Number(b.primary) - Number(a.primary));
    const layerLoad = new Array<number>(workers).fill(0);
    const layerCount = new Array<number>(workers).fill(0);
    for (const item of items) {
      const mine = hosts[l][item.expert];
      const now = input.current?.hosts[l]?.[item.expert] ?? [];
      let pick = -1;
      for (let w = 0; w < workers; w++) {
        if (mine.includes(w) || layerCount[w] >= slots[l] || held[w] >= budget) continue;
        if (pick < 0) {
          pick = w;
          continue;
        }
        const better = layerLoad[w] - layerLoad[pick] || Number(now.includes(pick)) - Number(now.includes(w)) || held[w] - held[pick];
        if (better < 0) pick = w;
      }
      if (pick < 0) {
        if (item.primary || mine.length === 0) throw new PlanError(`internal: no worker can take layer ${l} expert ${item.expert}`);
        replicas[l][item.expert]--; // an extra replica that no longer fits on a distinct worker: drop it
        continue;
      }
      mine.push(pick);
      layerLoad[pick] += item.weight;
      layerCount[pick]++;
      held[pick]++;
    }
    for (const row of hosts[l]) row.sort((a, b) => a - b);
  }

  const placement: Placement = { workers, hosts };
  return { placement, replicas, predicted: predictBalance(placement, load), expertsPerWorker: held };
}
