/**
 * Recent expert load, for GET /admin/load and the rebalancer. A StepObserver adds every scheduler step to a ring
 * of one-second buckets (bounded: `horizonSeconds` buckets, whatever the step rate) and to running totals since
 * start. Each bucket holds tokens routed per (layer, expert), per (layer, worker) the tokens each worker ran and its
 * compute time, and per expert host (scale-out) the same summed over layers. Reading a window sums the buckets that fall inside it.
 */
import { performance } from 'node:perf_hooks';
import { balanceOf } from './rebalance.ts';

/** What the tracker reads of one layer's trace in a step (the engine's LayerTrace is one). */
export interface LayerLoadTrace {
  layer: number;
  /** Chosen experts of the step's tokens [tokens, k]. */
  expert: ArrayLike<number> & Iterable<number>;
  workers: ReadonlyArray<{ worker: number; tokens: number; computeMs: number }>;
  hosts?: ReadonlyArray<{ host: string; tokens: number; computeMs: number }>;
}

interface Counts {
  steps: number;
  tokens: number;
  /** [layer * experts + expert] */
  expertTokens: Float64Array;
  /** [layer * maxWorkers + worker] */
  workerTokens: Float64Array;
  workerComputeMs: Float64Array;
  /** Expert hosts (scale-out): host id → tokens and compute ms over all layers. */
  hosts: Map<string, { tokens: number; computeMs: number }>;
}

export interface WorkerLoad {
  worker: number;
  tokens: number;
  tokensPerLayer: number[];
  computeMs: number;
  /** Compute time / window length: the share of the window the worker spent running experts. */
  busyFraction: number;
}

/** An expert host's load (scale-out over NATS): tokens it ran for this gateway and its compute time. */
export interface HostLoad {
  host: string;
  tokens: number;
  computeMs: number;
  /** Compute time / window length (the host's own workers may serve other gateways too). */
  busyFraction: number;
}

export interface LoadWindow {
  /** Length of time the window covers (shorter than asked while the gateway is younger than the window). */
  seconds: number;
  steps: number;
  tokens: number;
  /** Tokens the router sent to each expert, [layer][expert]. */
  tokensPerExpert: number[][];
  workers: WorkerLoad[];
  /** Expert hosts that ran batches in the window, by host id (empty without scale-out). */
  hosts: HostLoad[];
  /** mean / max of the tokens each worker ran, per layer; overall = Σ_l mean_l / Σ_l max_l. */
  balancedness: { perLayer: number[]; overall: number };
}

export interface LoadTrackerOptions {
  layers: number;
  experts: number;
  /** Worker ids are below this (admin.maxWorkers). */
  maxWorkers: number;
  /** Longest window that can be asked for, in seconds (the ring's length). */
  horizonSeconds: number;
  /** Milliseconds, monotonic (default performance.now). */
  now?: () => number;
  /** Worker count to report (default: the highest worker id seen + 1). */
  workers?: () => number;
}

export class LoadTracker {
  private readonly ring: Array<Counts & { second: number }>;
  private readonly total: Counts;
  private readonly started: number;
  private readonly now: () => number;
  private highestWorker = -1;

  constructor(private readonly options: LoadTrackerOptions) {
    this.now = options.now ?? (() => performance.now());
    this.started = this.now();
    this.ring = Array.from({ length: Math.max(1, Math.ceil(options.horizonSeconds)) + 1 }, () => ({ ...this.emptyCounts(), second: -1 }));
    this.total = this.emptyCounts();
  }

  /** The engine hook (a StepObserver): add to the engine's observers. */
  readonly observer = {
    onStep: (step: { output: { layers: readonly LayerLoadTrace[] } }) => this.record(step.output.layers),
  };

  /** Adds one step (its per-layer traces). */
  record(layers: readonly LayerLoadTrace[]): void {
    const second = Math.floor((this.now() - this.started) / 1000);
    const slot = this.ring[second % this.ring.length];
    if (slot.second !== second) {
      Object.assign(slot, this.emptyCounts(), { second });
    }
    for (const counts of [slot, this.total]) this.add(counts, layers);
  }

  private add(counts: Counts, layers: readonly LayerLoadTrace[]): void {
    const { experts, maxWorkers } = this.options;
    counts.steps++;
    counts.tokens += layers[0]?.expert.length ?? 0;
    for (const t of layers) {
      if (t.layer >= this.options.layers) continue;
      for (const e of t.expert) if (e >= 0 && e < experts) counts.expertTokens[t.layer * experts + e]++;
      for (const w of t.workers) {
        if (w.worker >= maxWorkers) continue;
        this.highestWorker = Math.max(this.highestWorker, w.worker);
        counts.workerTokens[t.layer * maxWorkers + w.worker] += w.tokens;
        counts.workerComputeMs[t.layer * maxWorkers + w.worker] += w.computeMs;
      }
      for (const h of t.hosts ?? []) {
        const held = counts.hosts.get(h.host) ?? { tokens: 0, computeMs: 0 };
        held.tokens += h.tokens;
        held.computeMs += h.computeMs;
        counts.hosts.set(h.host, held);
      }
    }
  }

  private emptyCounts(): Counts {
    const { layers, experts, maxWorkers } = this.options;
    return {
      steps: 0, tokens: 0, expertTokens: new Float64Array(layers * experts),
      workerTokens: new Float64Array(layers * maxWorkers), workerComputeMs: new Float64Array(layers * maxWorkers),
      hosts: new Map(),
    };
  }

  /** Seconds since the tracker started. */
  uptimeSeconds(): number {
    return (this.now() - this.started) / 1000;
  }

  /** The last `seconds` (at most the horizon), or everything since start when null. */
  window(seconds: number | null): LoadWindow {
    const uptime = this.uptimeSeconds();
    let counts: Counts;
    let span: number;
    if (seconds === null) {
      counts = this.total;
      span = uptime;
    } else {
      const wanted = Math.min(seconds, this.ring.length - 1);
      const current = Math.floor(uptime);
      // Whole buckets whose second lies within the window: (current - wanted, current].
      counts = this.emptyCounts();
      for (const slot of this.ring) {
        if (slot.second < 0 || slot.second <= current - wanted || slot.second > current) continue;
        counts.steps += slot.steps;
        counts.tokens += slot.tokens;
        for (const key of ['expertTokens', 'workerTokens', 'workerComputeMs'] as const) {
          const into = counts[key];
          slot[key].forEach((x, i) => (into[i] += x));
        }
        for (const [host, h] of slot.hosts) {
          const held = counts.hosts.get(host) ?? { tokens: 0, computeMs: 0 };
          held.tokens += h.tokens;
          held.computeMs += h.computeMs;
          counts.hosts.set(host, held);
        }
      }
      span = Math.min(wanted, uptime);
    }
    return this.describe(counts, span);
  }

  private describe(counts: Counts, seconds: number): LoadWindow {
    const { layers, experts, maxWorkers } = this.options;
    const workerCount = Math.min(maxWorkers, Math.max(this.options.workers?.() ?? 0, this.highestWorker + 1));
    const tokensPerExpert = Array.from({ length: layers }, (_, l) => Array.from(counts.expertTokens.subarray(l * experts, (l + 1) * experts)));
    const perLayerWorker = Array.from({ length: layers }, (_, l) => Array.from(counts.workerTokens.subarray(l * maxWorkers, l * maxWorkers + workerCount)));
    const workers = Array.from({ length: workerCount }, (_, w): WorkerLoad => {
      const tokensPerLayer = perLayerWorker.map((row) => row[w]);
      let computeMs = 0;
      for (let l = 0; l < layers; l++) computeMs += counts.workerComputeMs[l * maxWorkers + w];
      return {
        worker: w, tokens: tokensPerLayer.reduce((a, b) => a + b, 0), tokensPerLayer, computeMs,
        busyFraction: seconds > 0 ? Math.min(1, computeMs / (seconds * 1000)) : 0,
      };
    });
    const hosts = [...counts.hosts].sort(([a], [b]) => a.localeCompare(b)).map(([host, h]): HostLoad => ({
      host, tokens: h.tokens, computeMs: h.computeMs, busyFraction: seconds > 0 ? Math.min(1, h.computeMs / (seconds * 1000)) : 0,
    }));
    return { seconds, steps: counts.steps, tokens: counts.tokens, tokensPerExpert, workers, hosts, balancedness: balanceOf(perLayerWorker) };
  }
}
