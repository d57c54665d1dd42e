/**
 * Experts in the gateway's own process (config experts.execution 'in-process'): every expert's fp32 weights in the
 * native dense kernel, and each layer's batches run at once on the compute team — the calling thread and
 * `threads − 1` native helper threads that split the experts' weight rows (kernels/native/team.h). The trunk's
 * matrix products and the attention core run on the same team (MoeModel's `team` option), so a decode step is one
 * thread per core that never hands work to another thread and waits for it: llama.cpp's model of a step.
 *
 * Why: on a small machine the worker pool's hand-offs cost more than the arithmetic. Each layer wakes a worker and
 * waits to be woken (100–400 µs under load, 4 layers a step), and the main thread, which runs the trunk, competes
 * with the workers for the same cores (bench/RESULTS.md). What this gives up: placement across workers and live
 * rebalancing (there is one "worker", the team, holding every expert), crash isolation of expert threads, scale-out
 * over NATS, per-expert kernel choice (sparse, quantized, onnxruntime's execution providers). Those need
 * experts.execution 'workers'.
 *
 * Outputs are bit for bit those of the workers' dense-native kernel (each value is the same dot product, whichever
 * thread computes it).
 */
import { performance } from 'node:perf_hooks';
import { gatherRows, type DispatchPlan } from '../router/dispatch.ts';
import type { Gating } from '../router/gate.ts';
import type { TensorEntry } from '../src/format/safetensors.ts';
import { samePlacement, type ExpertKey, type Placement } from '../src/placement/placement.ts';
import { readExpertWeights } from './expert-weights.ts';
import { DenseNativeKernel, nativeDense, runBatchesOnTeam, runLayerOnTeam, type DenseNativeStatus } from './kernels/dense-native.ts';
import { weightSparsity } from './kernels/reference.ts';
import type { KernelReport } from './kernels/types.ts';
import type { LayerOutcome, PlacementChange, WorkerHealth, WorkerRestart } from './pool.ts';
import type { WorkerStats } from './protocol.ts';

/**
 * How long the team's helper threads stay awake after a loop, µs: long enough to bridge the short JS stretches
 * between a step's loops (routing, combine: tens of µs), short enough that they sleep through sampling and HTTP.
 * Through HTTP on 2 cores (load client on the same cores), tokens/s at 1/8/32 clients: spin 0 398-411 / 1089-1093 /
 * 1608-1653, 50: 417-431 / 1103-1214 / 1782-1830, 100 and 200 about as 50 (bench/peer.ts --no-peer, 2 repeats each).
 */
export const TEAM_SPIN_US = 50;

export interface InProcessOptions {
  weightsFile: string;
  /** The package's tensor index (ModelPackage.tensors: canonical names). */
  tensors: Map<string, TensorEntry>;
  layers: number;
  experts: number;
  hidden: number;
  /** Threads of the compute team, the caller included (config experts.teamThreads, default the machine's cores). */
  threads: number;
  /** Experts removed by pruning ("layer.expert"): not loaded, never routed to. */
  droppedExperts?: Iterable<string>;
  native?: DenseNativeStatus;
}

/** What the fused forward (src/engine/fused-forward.ts) needs of the experts; InProcessExperts provides it. */
export interface FusedExperts {
  /** Every expert's native dense kernel handle, [layers · experts] layer-major; null where pruning dropped it. */
  kernelHandles(): Array<object | null>;
  /** Counts a layer's batches in the experts' stats (tokens per expert, the MoE half's time in ms); its timing. */
  recordLayer(layer: number, tokensPerExpert: number[], ms: number): LayerOutcome['workers'];
}

export class InProcessExperts implements FusedExperts {
  /** One worker (the compute team) holding every expert that pruning kept. */
  readonly placement: Placement;
  /** Why the placement cannot change (the placement controller answers placement changes and rebalancing with it). */
  readonly fixedPlacement = "experts run in the gateway process (experts.execution 'in-process'): one worker, the compute team, holds "
    + "every expert and nothing can be moved; set experts.execution to 'workers' to place experts on worker threads";
  private readonly ran = new Map<string, { tasks: number; tokens: number }>();
  private busyMs = 0;
  private closed = false;

  private constructor(
    private readonly kernels: Map<string, DenseNativeKernel>,
    private readonly reports: Record<string, KernelReport>,
    private readonly hidden: number,
    readonly threads: number,
    /** The team as the trunk and attention addons take it (useTeam). */
    readonly team: object,
    private readonly native: DenseNativeStatus,
    layers: number,
    experts: number,
  ) {
    this.placement = {
      workers: 1,
      hosts: Array.from({ length: layers }, (_, l) => Array.from({ length: experts }, (_, e) => (kernels.has(`${l}.${e}`) ? [0] : []))),
    };
  }

  /**
   * Reads every kept expert (dense, F16/BF16 or sparse-bitmask storage, all as fp32) into the native dense kernel and
   * sizes the compute team. Throws, saying how to fix it, when the native addon is unavailable.
   */
  static load(options: InProcessOptions): InProcessExperts {
    const native = options.native ?? nativeDense();
    if (!native.available) {
      throw new Error(`experts.execution 'in-process' needs the native dense kernel: ${native.reason}; or set experts.execution to 'workers'`);
    }
    const dropped = new Set(options.droppedExperts ?? []);
    const kernels = new Map<string, DenseNativeKernel>();
    const reports: Record<string, KernelReport> = {};
    for (let layer = 0; layer < options.layers; layer++) {
      for (let expert = 0; expert < options.experts; expert++) {
        const key = `${layer}.${expert}`;
        if (dropped.has(key)) continue;
        const w = readExpertWeights(options.weightsFile, options.tensors, layer, expert, options.hidden);
        kernels.set(key, DenseNativeKernel.create(w, options.hidden, w.ffn, native));
        reports[key] = { kernel: 'dense-native', setting: 'dense-native', ffn: w.ffn, sparsity: weightSparsity(w), trials: [] };
      }
    }
    native.addon.configureTeam(options.threads - 1, TEAM_SPIN_US);
    return new InProcessExperts(kernels, reports, options.hidden, options.threads, native.addon.teamHandle(), native, options.layers, options.experts);
  }

  /** Runs one layer's dispatch plan over x [tokens, hidden] now, on the team (the promise is already settled). */
  async runLayer(layer: number, x: Float32Array, plan: DispatchPlan): Promise<LayerOutcome> {
    const d = this.hidden;
    const started = performance.now();
    const kernels = this.kernelsOf(layer, plan);
    const tokens = Uint32Array.from(plan.batches, (b) => b.rows.length);
    const total = tokens.reduce((n, t) => n + t, 0);
    const input = new Float32Array(total * d);
    let at = 0;
    for (const { rows } of plan.batches) {
      gatherRows(x, rows, d, input, at);
      at += rows.length;
    }
    const out = new Float32Array(total * d);
    runBatchesOnTeam(kernels, input, tokens, out, this.native);
    at = 0;
    const batches = plan.batches.map(({ expert, rows }) => ({ expert, rows, worker: 0, output: out.subarray(at * d, (at += rows.length) * d) }));
    return { batches, workers: this.account(layer, plan.batches, total, performance.now() - started) };
  }

  /**
   * runLayer with the gather and the combine on the team too: h [tokens, hidden] += each batch's output × its
   * token's gate × scale, in plan order (expert order), bit for bit moeLayer's combine of runLayer's outputs.
   */
  async runLayerInto(layer: number, x: Float32Array, plan: DispatchPlan, gating: Gating, h: Float32Array, scale: number): Promise<Omit<LayerOutcome, 'batches'>> {
    const started = performance.now();
    const kernels = this.kernelsOf(layer, plan);
    const tokens = Uint32Array.from(plan.batches, (b) => b.rows.length);
    const total = tokens.reduce((n, t) => n + t, 0);
    const rows = new Uint32Array(total);
    const gates = new Float32Array(total);
    let at = 0;
    for (const { expert, rows: batch } of plan.batches) {
      for (const row of batch) {
        let slot = row * gating.k;
        while (gating.expert[slot] !== expert) slot++; // the token's choice of this expert (it is in the batch)
        rows[at] = row;
        gates[at++] = scale === 1 ? gating.gate[slot] : Math.fround(gating.gate[slot] * scale);
      }
    }
    runLayerOnTeam(kernels, x, rows, tokens, gates, h, this.native);
    return { workers: this.account(layer, plan.batches, total, performance.now() - started) };
  }

  /** Every expert's kernel handle, [layers · experts] layer-major, null where pruning dropped it (the fused forward). */
  kernelHandles(): Array<object | null> {
    if (this.closed) throw new Error('the in-process experts are closed');
    return this.placement.hosts.flatMap((row, layer) => row.map((_, expert) => this.kernels.get(`${layer}.${expert}`)?.handle ?? null));
  }

  /** A layer the fused forward ran: its batches counted in the stats as runLayer counts them. */
  recordLayer(layer: number, tokensPerExpert: number[], ms: number): LayerOutcome['workers'] {
    const batches = tokensPerExpert.flatMap((n, expert) => (n > 0 ? [{ expert, rows: { length: n } }] : []));
    return this.account(layer, batches, batches.reduce((n, b) => n + b.rows.length, 0), ms);
  }

  /** The plan's experts' kernels, in plan order; throws for one that is not loaded. */
  private kernelsOf(layer: number, plan: DispatchPlan): DenseNativeKernel[] {
    if (this.closed) throw new Error('the in-process experts are closed');
    return plan.batches.map(({ expert }) => {
      const kernel = this.kernels.get(`${layer}.${expert}`);
      if (!kernel) throw new Error(`expert ${expert} of layer ${layer} is not loaded (dropped by pruning?)`);
      return kernel;
    });
  }

  /** Counts the layer's batches in the stats; the team's timing as the one worker's. */
  private account(layer: number, batches: ReadonlyArray<{ expert: number; rows: { length: number } }>, total: number, computeMs: number): LayerOutcome['workers'] {
    this.busyMs += computeMs;
    for (const { expert, rows } of batches) {
      const seen = this.ran.get(`${layer}.${expert}`) ?? { tasks: 0, tokens: 0 };
      this.ran.set(`${layer}.${expert}`, { tasks: seen.tasks + 1, tokens: seen.tokens + rows.length });
    }
    return total > 0 ? [{ worker: 0, tokens: total, experts: batches.map((b) => b.expert), queueMs: 0, computeMs }] : [];
  }

  health(): WorkerHealth[] {
    return [{ worker: 0, state: 'ready', restarts: 0 }];
  }

  /** Only the placement in use is accepted (nothing moves); anything else throws `fixedPlacement`. */
  async applyPlacement(next: Placement): Promise<PlacementChange> {
    if (!samePlacement(next, this.placement)) throw new Error(this.fixedPlacement);
    return { loaded: [], unloaded: [], workersAdded: [], workersRetired: [], ms: 0, loadMs: 0 };
  }

  /** No threads to restart: an error in a kernel fails the step like any other. */
  onWorkerRestart(_listener: (event: WorkerRestart) => void): () => void {
    return () => undefined;
  }

  async stats(): Promise<WorkerStats[]> {
    const resident: ExpertKey[] = [...this.kernels.keys()].map((k) => {
      const [layer, expert] = k.split('.').map(Number);
      return { layer, expert };
    });
    return [{
      workerId: 0, threadId: 0, resident, loaded: [...this.kernels.keys()],
      residency: { loads: this.kernels.size, evictions: 0, max: null },
      ran: Object.fromEntries(this.ran), busyMs: this.busyMs, kernels: this.reports,
      scheduling: { wanted: null, policy: null, reason: `in-process: a compute team of ${this.threads} threads` },
    }];
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const kernel of this.kernels.values()) await kernel.release();
    this.kernels.clear();
  }
}
