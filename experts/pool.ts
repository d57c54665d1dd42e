/**
 * The expert pool: one Piscina-managed thread per worker shard, each holding the experts its placement gives
 * it. A layer's dispatch plan becomes at most one task per worker; each worker runs its experts' batches and
 * sends the outputs back as transferred buffers.
 *
 * Live placement changes (applyPlacement), in this order, so that no step ever finds an expert missing:
 *   1. start shards for new workers (they load their experts while starting) and send `load` tasks to existing
 *      workers that gain experts; wait until every new host holds its experts;
 *   2. swap the placement: layers dispatched from now on use it (runLayer reads the placement once, when it
 *      starts, and the scheduler awaits each layer, so a swap falls between two layer calls);
 *   3. wait until no layer dispatched with an older placement is still running;
 *   4. send `unload` tasks for experts a worker no longer hosts, and retire workers beyond the new count once they
 *      are idle (no task in flight or queued), so a thread is never terminated inside onnxruntime.
 * Changes are serialized; close() waits for one in progress.
 */
import { performance } from 'node:perf_hooks';
import { Piscina } from 'piscina';
import { assignBatches, expertsOfWorker, MIN_SPLIT_ROWS, type ExpertKey, type Placement } from '../src/placement/placement.ts';
import type { DispatchPlan } from '../router/dispatch.ts';
import { gatherRows } from '../router/dispatch.ts';
import type { KernelSettings } from './kernels/types.ts';
import { expertKey, type ResidencyResult, type RunResult, type WorkerSetup, type WorkerStats, type WorkerTask } from './protocol.ts';

const WORKER_BOOTSTRAP = new URL('./worker.mjs', import.meta.url).href;

export interface PoolOptions {
  weightsFile: string;
  hidden: number;
  ffn: number;
  placement: Placement;
  threadsPerWorker: number;
  executionProviders: string[];
  /** How each expert picks its kernel (config `experts`); default 'auto'. */
  kernel?: KernelSettings;
  /** Most experts each worker keeps loaded (config experts.maxResidentPerWorker); null: all. */
  maxResidentPerWorker?: number | null;
  /** Experts removed by pruning ("layer.expert"): never loaded. */
  droppedExperts?: string[];
  /** A replicated expert's batch is split over its hosts only in parts of at least this many rows (default 32). */
  minSplitRows?: number;
  onError?: (error: Error) => void;
}

/** What happened to one expert batch (or, for a replicated expert, one part of it) of a layer. */
export interface BatchOutcome {
  expert: number;
  rows: number[];
  worker: number;
  output: Float32Array;
}

export interface WorkerTiming {
  worker: number;
  tokens: number;
  experts: number[];
  /** From submitting the task to the worker starting it, and its compute time (ms). */
  queueMs: number;
  computeMs: number;
  /** The worker's on-demand expert loads and evictions since start (expert residency). */
  residency?: { loads: number; evictions: number };
}

export interface LayerOutcome {
  batches: BatchOutcome[];
  workers: WorkerTiming[];
}

/** What a placement change did. */
export interface PlacementChange {
  /** Experts loaded on workers that were already running, and on new workers. */
  loaded: Array<ExpertKey & { worker: number }>;
  unloaded: Array<ExpertKey & { worker: number }>;
  workersAdded: number[];
  workersRetired: number[];
  /** Wall time of the whole change, and of loading (step 1), in ms. */
  ms: number;
  loadMs: number;
}

/** One worker thread and the tasks it has in flight, so it is closed only when idle. */
class Shard {
  private inflight = 0;
  private waiters: Array<() => void> = [];

  constructor(readonly id: number, private readonly piscina: Piscina) {}

  async run<T>(task: WorkerTask, transferList?: ArrayBuffer[]): Promise<T> {
    this.inflight++;
    try {
      return (await this.piscina.run(task, transferList ? { transferList } : {})) as T;
    } finally {
      if (--this.inflight === 0) for (const wake of this.waiters.splice(0)) wake();
    }
  }

  idle(): Promise<void> {
    return this.inflight === 0 ? Promise.resolve() : new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Waits for its tasks, then ends the thread (Piscina's close without force). */
  async close(): Promise<void> {
    await this.idle();
    await this.piscina.close();
  }
}

export class ExpertPool {
  private shards: Shard[];
  private current: Placement;
  /** Residency per worker as the pool has arranged it ("layer.expert" keys). */
  private resident: Array<Set<string>>;
  private epoch = 0;
  /** Layer dispatches in flight per placement epoch. */
  private readonly running = new Map<number, number>();
  private drainWaiters: Array<{ epoch: number; wake: () => void }> = [];
  private changing: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(private readonly options: PoolOptions, shards: Shard[]) {
    this.shards = shards;
    this.current = options.placement;
    this.resident = shards.map((_, w) => new Set(expertsOfWorker(options.placement, w).map((k) => expertKey(k.layer, k.expert))));
  }

  static async start(options: PoolOptions): Promise<ExpertPool> {
    const { placement } = options;
    const shards = Array.from({ length: placement.workers }, (_, w) => startShard(options, w, expertsOfWorker(placement, w)));
    const pool = new ExpertPool(options, shards);
    try {
      await pool.stats(); // every worker has loaded its experts (or start-up fails here)
    } catch (error) {
      await Promise.allSettled(shards.map((s) => s.close()));
      throw error;
    }
    return pool;
  }

  get placement(): Placement {
    return this.current;
  }

  /** Increases with every placement swap. */
  get generation(): number {
    return this.epoch;
  }

  get workerCount(): number {
    return this.shards.length;
  }

  /** Runs one layer's dispatch plan over x [tokens, hidden]: one task per worker, all workers in parallel. */
  async runLayer(layer: number, x: Float32Array, plan: DispatchPlan): Promise<LayerOutcome> {
    // Read once: a placement swap during this layer does not affect it, and its hosts stay loaded until it ends.
    const placement = this.current;
    const shards = this.shards;
    const epoch = this.epoch;
    this.running.set(epoch, (this.running.get(epoch) ?? 0) + 1);
    try {
      return await this.dispatch(placement, shards, layer, x, plan);
    } finally {
      const left = this.running.get(epoch)! - 1;
      if (left === 0) this.running.delete(epoch);
      else this.running.set(epoch, left);
      this.wakeDrained();
    }
  }

  private async dispatch(placement: Placement, shards: Shard[], layer: number, x: Float32Array, plan: DispatchPlan): Promise<LayerOutcome> {
    const hidden = this.options.hidden;
    const parts = assignBatches(placement, layer, plan.batches, this.options.minSplitRows ?? MIN_SPLIT_ROWS);
    const byWorker = new Map<number, typeof parts>();
    for (const part of parts) byWorker.set(part.worker, [...(byWorker.get(part.worker) ?? []), part]);
    const batches: BatchOutcome[] = [];
    const timings = await Promise.all([...byWorker].map(async ([worker, mine]) => {
      const rows = mine.reduce((n, p) => n + p.rows.length, 0);
      const input = new Float32Array(rows * hidden);
      let offset = 0;
      for (const p of mine) {
        input.set(gatherRows(x, p.rows, hidden), offset);
        offset += p.rows.length * hidden;
      }
      const task: WorkerTask = {
        kind: 'run', input,
        items: mine.map((p) => ({ layer, expert: plan.batches[p.batch].expert, tokens: p.rows.length })),
      };
      const submitted = performance.now();
      const result = await shards[worker].run<RunResult>(task, [input.buffer as ArrayBuffer]);
      const roundTripMs = performance.now() - submitted;
      offset = 0;
      for (const p of mine) {
        const size = p.rows.length * hidden;
        batches.push({ expert: plan.batches[p.batch].expert, rows: p.rows, worker, output: result.output.subarray(offset, offset + size) });
        offset += size;
      }
      return {
        worker, tokens: rows, experts: [...new Set(mine.map((p) => plan.batches[p.batch].expert))],
        queueMs: Math.max(0, roundTripMs - result.computeMs), computeMs: result.computeMs, residency: result.residency,
      };
    }));
    return { batches, workers: timings };
  }

  /** Each worker's own report: the experts it holds and what it ran. */
  async stats(): Promise<WorkerStats[]> {
    return Promise.all(this.shards.map((s) => s.run<WorkerStats>({ kind: 'stats' })));
  }

  /**
   * Changes the placement while serving (see the file comment for the order of events). The placement must be
   * valid for the model (validatePlacement). Rejects if a new host fails to load its experts; the old placement
   * then stays in force.
   */
  applyPlacement(next: Placement): Promise<PlacementChange> {
    const change = this.changing.then(() => this.change(next));
    this.changing = change.catch(() => undefined);
    return change;
  }

  private async change(next: Placement): Promise<PlacementChange> {
    if (this.closed) throw new Error('the expert pool is closed');
    const started = performance.now();
    const keyOf = (k: ExpertKey) => expertKey(k.layer, k.expert);
    const parse = (key: string): ExpertKey => {
      const [layer, expert] = key.split('.').map(Number);
      return { layer, expert };
    };
    const loaded: PlacementChange['loaded'] = [];
    const unloaded: PlacementChange['unloaded'] = [];

    // 1. Load new hosts.
    const oldCount = this.shards.length;
    const added: Shard[] = [];
    const loads: Array<Promise<unknown>> = [];
    const wanted = Array.from({ length: next.workers }, (_, w) => expertsOfWorker(next, w));
    for (let w = 0; w < next.workers; w++) {
      if (w >= oldCount) {
        const shard = startShard(this.options, w, wanted[w]);
        added.push(shard);
        loads.push(shard.run({ kind: 'stats' }));
        loaded.push(...wanted[w].map((k) => ({ ...k, worker: w })));
        continue;
      }
      const missing = wanted[w].filter((k) => !this.resident[w].has(keyOf(k)));
      if (missing.length === 0) continue;
      loaded.push(...missing.map((k) => ({ ...k, worker: w })));
      loads.push(this.shards[w].run<ResidencyResult>({ kind: 'load', experts: missing }).then((r) => {
        for (const k of r.resident) this.resident[w].add(keyOf(k));
      }));
    }
    const settled = await Promise.allSettled(loads);
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) {
      // Experts loaded on existing workers stay resident (harmless; a later change unloads what is not placed).
      await Promise.allSettled(added.map((s) => s.close()));
      throw new Error(`placement not applied: a worker failed to load its experts (${(failed.reason as Error)?.message ?? failed.reason})`);
    }
    const loadMs = performance.now() - started;

    // 2. Swap.
    const previousEpoch = this.epoch;
    const retiring = this.shards.slice(next.workers);
    this.shards = [...this.shards.slice(0, next.workers), ...added];
    this.resident = [...this.resident.slice(0, next.workers), ...added.map((_, i) => new Set(wanted[oldCount + i].map(keyOf)))];
    this.current = next;
    this.epoch++;

    // 3. Drain layers dispatched with older placements.
    await this.drained(previousEpoch);

    // 4. Let go of what is no longer placed.
    const releases: Array<Promise<unknown>> = [];
    for (let w = 0; w < next.workers; w++) {
      const keep = new Set(wanted[w].map(keyOf));
      const extra = [...this.resident[w]].filter((k) => !keep.has(k));
      if (extra.length === 0) continue;
      const experts = extra.map(parse);
      unloaded.push(...experts.map((k) => ({ ...k, worker: w })));
      for (const k of extra) this.resident[w].delete(k);
      releases.push(this.shards[w].run({ kind: 'unload', experts }));
    }
    releases.push(...retiring.map((s) => s.close()));
    const released = await Promise.allSettled(releases);
    for (const r of released) if (r.status === 'rejected') this.options.onError?.(r.reason as Error);

    return {
      loaded, unloaded,
      workersAdded: added.map((s) => s.id), workersRetired: retiring.map((s) => s.id),
      ms: performance.now() - started, loadMs,
    };
  }

  /** Resolves when no layer dispatched in `epoch` or before is running. */
  private drained(epoch: number): Promise<void> {
    return new Promise((wake) => {
      this.drainWaiters.push({ epoch, wake });
      this.wakeDrained();
    });
  }

  private wakeDrained(): void {
    if (this.drainWaiters.length === 0) return;
    const oldest = this.running.size === 0 ? Number.POSITIVE_INFINITY : Math.min(...this.running.keys());
    this.drainWaiters = this.drainWaiters.filter(({ epoch, wake }) => {
      if (oldest <= epoch) return true;
      wake();
      return false;
    });
  }

  /**
   * Call only when no task is in flight (the scheduler has stopped): terminating a thread inside onnxruntime
   * aborts the whole process. Waits for a placement change in progress; each shard closes once idle.
   */
  async close(): Promise<void> {
    this.closed = true;
    await this.changing;
    await Promise.all(this.shards.map((s) => s.close()));
  }
}

function startShard(options: PoolOptions, workerId: number, experts: ExpertKey[]): Shard {
  const setup: WorkerSetup = {
    workerId, weightsFile: options.weightsFile, hidden: options.hidden, ffn: options.ffn,
    experts, threads: options.threadsPerWorker, executionProviders: options.executionProviders,
    ...(options.kernel ? { kernel: options.kernel } : {}),
    maxResident: options.maxResidentPerWorker ?? null,
    dropped: options.droppedExperts ?? [],
  };
  // One thread per shard, kept for the pool's life: a shard is the unit that placement addresses.
  const piscina = new Piscina({ filename: WORKER_BOOTSTRAP, minThreads: 1, maxThreads: 1, idleTimeout: 2 ** 31 - 1, workerData: setup });
  piscina.on('error', (error: Error) => options.onError?.(error));
  return new Shard(workerId, piscina);
}
