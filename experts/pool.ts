/**
 * The expert pool: one Piscina-managed thread per worker shard, each holding the experts its placement gives
 * it. A layer's dispatch plan becomes at most one task per worker; each worker runs its experts' batches and
 * sends the outputs back as transferred buffers.
 */
import { performance } from 'node:perf_hooks';
import { Piscina } from 'piscina';
import { chooseReplicas, expertsOfWorker, type Placement } from '../src/placement/placement.ts';
import type { DispatchPlan } from '../router/dispatch.ts';
import { gatherRows } from '../router/dispatch.ts';
import type { RunResult, WorkerSetup, WorkerStats, WorkerTask } from './protocol.ts';

const WORKER_BOOTSTRAP = new URL('./worker.mjs', import.meta.url).href;

export interface PoolOptions {
  weightsFile: string;
  hidden: number;
  ffn: number;
  placement: Placement;
  threadsPerWorker: number;
  executionProviders: string[];
  onError?: (error: Error) => void;
}

/** What happened to one expert batch of a layer. */
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
}

export interface LayerOutcome {
  batches: BatchOutcome[];
  workers: WorkerTiming[];
}

export class ExpertPool {
  private constructor(
    private readonly shards: Piscina[],
    readonly placement: Placement,
    private readonly hidden: number,
  ) {}

  static async start(options: PoolOptions): Promise<ExpertPool> {
    const { placement } = options;
    const shards = Array.from({ length: placement.workers }, (_, workerId) => {
      const setup: WorkerSetup = {
        workerId, weightsFile: options.weightsFile, hidden: options.hidden, ffn: options.ffn,
        experts: expertsOfWorker(placement, workerId), threads: options.threadsPerWorker,
        executionProviders: options.executionProviders,
      };
      // One thread per shard, kept for the pool's life: a shard is the unit that placement addresses.
      const shard = new Piscina({ filename: WORKER_BOOTSTRAP, minThreads: 1, maxThreads: 1, idleTimeout: 2 ** 31 - 1, workerData: setup });
      shard.on('error', (error: Error) => options.onError?.(error));
      return shard;
    });
    const pool = new ExpertPool(shards, placement, options.hidden);
    await pool.stats(); // every worker has loaded its experts (or start-up fails here)
    return pool;
  }

  get workerCount(): number {
    return this.shards.length;
  }

  /** Runs one layer's dispatch plan over x [tokens, hidden]: one task per worker, all workers in parallel. */
  async runLayer(layer: number, x: Float32Array, plan: DispatchPlan): Promise<LayerOutcome> {
    const hosts = chooseReplicas(this.placement, layer, plan.batches);
    const byWorker = new Map<number, number[]>();
    hosts.forEach((w, i) => byWorker.set(w, [...(byWorker.get(w) ?? []), i]));
    const batches: BatchOutcome[] = new Array(plan.batches.length);
    const timings = await Promise.all([...byWorker].map(async ([worker, indices]) => {
      const parts = indices.map((i) => gatherRows(x, plan.batches[i].rows, this.hidden));
      const input = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
      let offset = 0;
      for (const p of parts) {
        input.set(p, offset);
        offset += p.length;
      }
      const task: WorkerTask = {
        kind: 'run', input,
        items: indices.map((i) => ({ layer, expert: plan.batches[i].expert, tokens: plan.batches[i].rows.length })),
      };
      const submitted = performance.now();
      const result = (await this.shards[worker].run(task, { transferList: [input.buffer] })) as RunResult;
      const roundTripMs = performance.now() - submitted;
      offset = 0;
      for (const i of indices) {
        const size = plan.batches[i].rows.length * this.hidden;
        batches[i] = { ...plan.batches[i], worker, output: result.output.subarray(offset, offset + size) };
        offset += size;
      }
      return {
        worker, tokens: offset / this.hidden, experts: indices.map((i) => plan.batches[i].expert),
        queueMs: Math.max(0, roundTripMs - result.computeMs), computeMs: result.computeMs,
      };
    }));
    return { batches, workers: timings };
  }

  /** Each worker's own report: the experts it holds and what it ran. */
  async stats(): Promise<WorkerStats[]> {
    return Promise.all(this.shards.map((s) => s.run({ kind: 'stats' } satisfies WorkerTask) as Promise<WorkerStats>));
  }

  /**
   * Call only when no task is in flight (the scheduler has stopped): terminating a thread inside onnxruntime
   * aborts the whole process. Piscina's close() without force lets queued tasks finish first.
   */
  async close(): Promise<void> {
    await Promise.all(this.shards.map((s) => s.close()));
  }
}
