/**
 * The expert pool: one Piscina-managed thread per worker shard, each holding the experts its placement gives
 * it. A layer's dispatch plan becomes at most one batch per worker; each worker runs its experts' batches. With
 * `channel: 'shared-memory'` (default) a batch goes through the worker's SharedArrayBuffer channel (channel.ts: rows
 * written in place, Atomics to wake either side, no message per layer); with 'tasks' it is a Piscina task whose
 * input and output travel as transferred buffers. Load, unload, stats and fault always go as Piscina tasks; the
 * worker runs those and channel batches one at a time. A channel batch whose thread dies is cancelled (workerDestroy)
 * and runs again on the replacement, which is handed the channel again first.
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
 *
 * Worker recovery: each worker's current experts also live in shared memory (WorkerSetup.hosting), rewritten before
 * every load and unload. When a worker's thread dies, Piscina starts a new one with the same workerData, and that
 * thread loads the experts the shared map names — what the placement says now, after any live change. The pool
 * logs the death and tells onWorkerRestart listeners (telemetry counts `moe.worker.restarts`); the tasks the thread
 * was running are run again on the new thread (they are pure functions of their input), so no request fails.
 */
import { performance } from 'node:perf_hooks';
import { Piscina } from 'piscina';
import { log } from '../src/log.ts';
import { assignBatches, expertsOfWorker, MIN_SPLIT_ROWS, type ExpertKey, type Placement } from '../src/placement/placement.ts';
import type { DispatchPlan } from '../router/dispatch.ts';
import { gatherRows } from '../router/dispatch.ts';
import { ChannelView } from './channel.ts';
import type { KernelSettings } from './kernels/types.ts';
import type { WorkerScheduling } from './thread-scheduling.ts';
import {
  createHosting, expertKey, type ExpertItem, readHosting, writeHosting, type ResidencyResult, type RunResult, type WorkerFault, type WorkerSetup, type WorkerStats, type WorkerTask,
} from './protocol.ts';

const WORKER_BOOTSTRAP = new URL('./worker.mjs', import.meta.url).href;
/** Most times one task is run again (after its thread died or it threw); of those, after throwing: once. */
export const MAX_TASK_RETRIES = 2;
const MAX_RETRIES_AFTER_THROW = 1;

export interface PoolOptions {
  weightsFile: string;
  /** config.json's model_type (how the workers read tensor names); default 'olmoe'. */
  modelType?: string;
  hidden: number;
  ffn: number;
  placement: Placement;
  threadsPerWorker: number;
  executionProviders: string[];
  /** How each expert picks its kernel (config `experts`); default 'auto'. */
  kernel?: KernelSettings;
  /** The worker threads' scheduling policy (config experts.workerScheduling); absent: unchanged. */
  scheduling?: WorkerScheduling;
  /** Most experts each worker keeps loaded (config experts.maxResidentPerWorker); null: all. */
  maxResidentPerWorker?: number | null;
  /** Experts removed by pruning ("layer.expert"): never loaded. */
  droppedExperts?: string[];
  /** A replicated expert's batch is split over its hosts only in parts of at least this many rows (default 32). */
  minSplitRows?: number;
  onError?: (error: Error) => void;
  /**
   * How layer batches reach the workers (config experts.channel): 'shared-memory' (channel.ts, no message per
   * layer) or 'tasks' (one Piscina task per worker per layer). Default DEFAULT_CHANNEL.
   */
  channel?: ChannelMode;
  /** µs each side spins before waiting on the channel (bench/dispatch.ts tunes these); default DEFAULT_SPIN. */
  channelSpin?: ChannelSpin;
}

export type ChannelMode = 'shared-memory' | 'tasks';
export const DEFAULT_CHANNEL: ChannelMode = 'shared-memory';
/** mainUs: the pool's wait for a batch; workerUs: the worker's wait for the next batch. */
export interface ChannelSpin {
  mainUs: number;
  workerUs: number;
}
export const DEFAULT_SPIN: ChannelSpin = { mainUs: 0, workerUs: 0 };

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
  /** The worker's on-demand expert loads and evictions since its thread `thread` started (expert residency). */
  residency?: { loads: number; evictions: number; thread?: number };
}

/** An expert host's share of one layer (scale-out over NATS): what it ran, and how long the gateway waited for it. */
export interface HostTiming {
  host: string;
  tokens: number;
  experts: number[];
  /** Σ of the host's reported compute time over its batches (ms). */
  computeMs: number;
  /** The longest request round trip among its batches (ms). */
  roundTripMs: number;
}

export interface LayerOutcome {
  batches: BatchOutcome[];
  workers: WorkerTiming[];
  /** Expert hosts that ran batches of this layer (ClusterExpertRunner); absent when every expert ran here. */
  hosts?: HostTiming[];
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

/** A worker thread died and Piscina started a new one, which loads `experts` (the worker's experts now). */
export interface WorkerRestart {
  worker: number;
  /** Restarts of this worker since the pool started, this one included. */
  restarts: number;
  experts: ExpertKey[];
}

/**
 * A worker's thread now: 'ready' (it has started and loaded its experts), 'starting' (a replacement is starting),
 * or 'failed' (its replacement could not start; `error` says why; the next task to it makes Piscina try again).
 */
export interface WorkerHealth {
  worker: number;
  state: 'ready' | 'starting' | 'failed';
  restarts: number;
  error?: string;
}

/** What an observer of the expert runtime may hear about (telemetry counts restarts and failovers). */
export interface PoolObserver {
  onWorkerRestart?(event: WorkerRestart): void;
  /** An expert batch an expert host did not answer (scale-out, experts/remote/runner.ts). */
  onHostFailover?(event: { layer: number; expert: number; action: 'retry' | 'local' }): void;
}

interface Submission {
  task: WorkerTask;
  transferList?: ArrayBuffer[];
}

/**
 * One worker: a Piscina instance with one thread, the tasks it has in flight (so it is closed only when idle), and
 * its hosted experts in shared memory (WorkerSetup.hosting), which a replacement thread loads when it starts.
 */
class Shard {
  private inflight = 0;
  private waiters: Array<() => void> = [];
  private closing = false;
  /** Piscina's start-up workerCreate comes before the thread has loaded anything, so it is not taken as ready. */
  private creates = 0;
  /** Whether the current thread (at most one at a time) has started: a workerCreate after start-up, or a task done. */
  private threadReady = false;
  /** Threads lost (died, or failed to start); a task that fails while this grows lost its thread. */
  private lost = 0;
  private restarts = 0;
  private lastThreadError: Error | null = null;
  /** Why the last replacement thread failed to start; null once a thread runs again. */
  private startFailure: string | null = null;
  /**
   * Rejects the tasks waiting for a thread when a replacement failed to start: Piscina then starts no other by
   * itself, so they would wait forever (a later task makes it try again).
   */
  private stalled = rejector();

  /** The shared-memory channel (null until first used, or in 'tasks' mode), and `lost` when it was attached. */
  private channel: ChannelView | null = null;
  private attachedLost = -1;
  private channelTail: Promise<unknown> = Promise.resolve();
  /** Cancels the channel batch being awaited, when the thread dies. */
  private readonly channelWaiters = new Set<() => void>();

  constructor(
    readonly id: number,
    private readonly piscina: Piscina,
    private readonly hosting: NonNullable<WorkerSetup['hosting']>,
    private readonly onRestart: (event: WorkerRestart) => void,
    onError: ((error: Error) => void) | undefined,
    private readonly hidden: number,
    private readonly spin: ChannelSpin,
  ) {
    piscina.on('workerCreate', () => this.threadStarted());
    piscina.on('workerDestroy', () => this.threadGone());
    piscina.on('error', (error: Error) => {
      this.lastThreadError = error;
      if (onError) onError(error);
      else log.warn('expert worker error', { worker: id, err: error });
    });
  }

  /** Sets the experts a replacement thread would load ("layer.expert" keys); call before sending load or unload. */
  publish(keys: Iterable<string>): void {
    writeHosting(this.hosting, keys);
  }

  /**
   * Runs a task on this worker's thread and resolves with its answer. If the thread dies meanwhile, the task runs
   * again on the replacement; if the task throws, it runs once more; at most MAX_TASK_RETRIES times in all.
   * `make` builds the task for each attempt (a run task's input is transferred, so an attempt consumes it).
   * `retry: false` runs it once. Rejects with an Error naming the worker, the task kind, the attempts and the last
   * failure (as `cause`).
   */
  async run<T>(make: Submission | (() => Submission), retry = true): Promise<T> {
    return this.withRetries((make as Submission).task?.kind ?? 'run', () => {
      const { task, transferList } = typeof make === 'function' ? make() : make;
      return this.attempt<T>(task, transferList);
    }, retry);
  }

  /**
   * Runs one layer batch over the shared-memory channel (channel.ts), with run()'s retries: `fill` writes the rows
   * (items back to back) into the channel's input, and is called again for each attempt. Resolves with the outputs
   * copied out of the channel ([Σ tokens, hidden], item order). One batch at a time per worker: concurrent callers
   * queue here (the scheduler awaits each layer, so normally there is no queue).
   */
  runChannel(items: ExpertItem[], fill: (input: Float32Array) => void): Promise<RunResult> {
    const floats = items.reduce((n, item) => n + item.tokens, 0) * this.hidden;
    this.inflight++; // counted while queued too, so close() waits for it
    const queued = this.channelTail.then(() => this.withRetries('run', () => this.channelAttempt(items, floats, fill), true));
    this.channelTail = queued.catch(() => undefined);
    return queued.finally(() => this.settled());
  }

  private async channelAttempt(items: ExpertItem[], floats: number, fill: (input: Float32Array) => void): Promise<RunResult> {
    let view = this.channel;
    if (!view || view.setup.capacity < floats || view.setup.maxItems < items.length) {
      // Grow: a fresh buffer (at least double, so growth is rare), handed to the thread in a Piscina task. The old
      // loop is told to stop first; no batch is in flight (runChannel serializes).
      const capacity = Math.max(floats, (view?.setup.capacity ?? 0) * 2, this.hidden * 8);
      const maxItems = Math.max(items.length, view?.setup.maxItems ?? 0, 64);
      view?.stop();
      view = ChannelView.create(capacity, maxItems, this.spin.workerUs);
      this.channel = view;
      this.attachedLost = -1;
    }
    if (this.attachedLost !== this.lost) {
      // First use, a new buffer, or the thread that served it died: (re)attach it to the current thread.
      const lostBefore = this.lost;
      await this.attempt({ kind: 'channel', channel: view.setup });
      this.attachedLost = lostBefore;
      if (this.lost !== lostBefore) throw new Error(`worker ${this.id}: thread died while taking the channel`);
    }
    const seq = view.post(items, fill);
    const lostAtPost = this.lost;
    const waiting = view;
    const cancel = { error: null as Error | null };
    const waiter = () => {
      cancel.error = new Error(`worker ${this.id}: thread died during a channel batch`);
      waiting.wake();
    };
    this.channelWaiters.add(waiter);
    try {
      // A death between post and here has already bumped `lost` (events run between tasks, not inside this code).
      await view.awaitDone(seq, this.spin.mainUs, () => cancel.error ?? (this.lost !== lostAtPost ? new Error(`worker ${this.id}: thread died`) : null));
    } finally {
      this.channelWaiters.delete(waiter);
    }
    const result = view.result();
    if ('error' in result) throw new Error(result.error);
    return { workerId: this.id, output: view.output.slice(0, floats), computeMs: result.computeMs, residency: result.residency };
  }

  /**
   * Runs `once` and resolves with its answer. If the thread dies meanwhile, it runs again (on the replacement); if it
   * throws, it runs once more; at most MAX_TASK_RETRIES times in all. `retry: false` runs it once. Rejects with an
   * Error naming the worker, the task kind, the attempts and the last failure (as `cause`).
   */
  private async withRetries<T>(kind: string, once: () => Promise<T>, retry: boolean): Promise<T> {
    this.inflight++;
    try {
      let died = 0;
      let threw = 0;
      for (;;) {
        const lostBefore = this.lost;
        try {
          const result = await once();
          this.threadReady = true;
          this.startFailure = null;
          return result;
        } catch (error) {
          const lostThread = this.lost > lostBefore;
          if (lostThread) died++;
          else threw++;
          const message = (error as Error)?.message ?? String(error);
          if (!retry || this.closing || died + threw > MAX_TASK_RETRIES || threw > MAX_RETRIES_AFTER_THROW) {
            const attempts = died + threw;
            throw new Error(`expert worker ${this.id}: ${kind} task failed ${attempts === 1 ? 'once' : `${attempts} times`} `
              + `(thread died ${died}, task threw ${threw}); last: ${message}`, { cause: error });
          }
          log.warn('expert task failed; running it again', {
            worker: this.id, task: kind, attempt: died + threw, reason: lostThread ? 'thread died' : 'task threw', error: message,
          });
        }
      }
    } finally {
      this.settled();
    }
  }

  private settled(): void {
    if (--this.inflight === 0) for (const wake of this.waiters.splice(0)) wake();
  }

  private attempt<T>(task: WorkerTask, transferList?: ArrayBuffer[]): Promise<T> {
    const running = this.piscina.run(task, transferList ? { transferList } : {}) as Promise<T>;
    running.catch(() => undefined); // it may lose the race below; its rejection is then nobody's business
    // Not Promise.race with the long-lived stalled promise: every race left a reaction on it that kept this task's
    // result (a step's expert outputs) reachable until a thread failed to start, i.e. normally forever.
    const stalled = this.stalled;
    return new Promise<T>((resolve, reject) => {
      stalled.waiting.add(reject);
      void running.then(resolve, reject).finally(() => stalled.waiting.delete(reject));
    });
  }

  private threadStarted(): void {
    if (this.creates++ === 0) return; // Piscina's start-up announcement, before the thread loaded its experts
    this.threadReady = true;
    this.startFailure = null;
    if (this.restarts > 0) log.info('expert worker replaced', { worker: this.id, restarts: this.restarts, experts: readHosting(this.hosting).length });
  }

  private threadGone(): void {
    if (this.closing) return;
    this.lost++;
    for (const cancel of [...this.channelWaiters]) cancel();
    const started = this.threadReady;
    this.threadReady = false;
    if (started) {
      this.restarts++;
      const experts = readHosting(this.hosting);
      log.warn('expert worker thread died; a new thread loads its current experts', { worker: this.id, restarts: this.restarts, experts: experts.length });
      this.onRestart({ worker: this.id, restarts: this.restarts, experts });
      return;
    }
    // Piscina emits the thread's error (if it had one) right after this event: wait for it to name the cause.
    const stalled = this.stalled;
    this.stalled = rejector();
    queueMicrotask(() => {
      const cause = this.lastThreadError?.message ?? 'it exited while starting';
      this.startFailure = cause;
      log.error('expert worker thread failed to start', { worker: this.id, error: cause });
      stalled.reject(new Error(`worker ${this.id}'s thread failed to start (${cause})`));
    });
  }

  health(): WorkerHealth {
    const state = this.startFailure !== null ? 'failed' : this.threadReady ? 'ready' : 'starting';
    return { worker: this.id, state, restarts: this.restarts, ...(this.startFailure !== null ? { error: this.startFailure } : {}) };
  }

  idle(): Promise<void> {
    return this.inflight === 0 ? Promise.resolve() : new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Waits for its tasks, then ends the thread (Piscina's close without force). */
  async close(): Promise<void> {
    await this.idle();
    this.closing = true; // from here a thread's end is not a death
    await this.piscina.close();
  }
}

/** Rejects, when told to, the attempts waiting on it then; each attempt removes itself when it settles. */
function rejector(): { waiting: Set<(error: Error) => void>; reject: (error: Error) => void } {
  const waiting = new Set<(error: Error) => void>();
  return {
    waiting,
    reject: (error) => {
      for (const reject of [...waiting]) reject(error);
      waiting.clear();
    },
  };
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
  private readonly restartListeners = new Set<(event: WorkerRestart) => void>();
  private readonly channelMode: ChannelMode;

  private constructor(private readonly options: PoolOptions) {
    this.channelMode = options.channel ?? DEFAULT_CHANNEL;
    this.current = options.placement;
    this.shards = Array.from({ length: options.placement.workers }, (_, w) => this.startShard(w, expertsOfWorker(options.placement, w)));
    this.resident = this.shards.map((_, w) => new Set(expertsOfWorker(options.placement, w).map((k) => expertKey(k.layer, k.expert))));
  }

  static async start(options: PoolOptions): Promise<ExpertPool> {
    const pool = new ExpertPool(options);
    const shards = pool.shards;
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

  /** Each worker's thread state (see WorkerHealth), in worker order; cheap enough for every health check. */
  health(): WorkerHealth[] {
    return this.shards.map((shard) => shard.health());
  }

  /**
   * Calls `listener` whenever a worker's thread dies and a new one starts with the worker's current experts (after
   * the pool has logged it). Returns a function that removes the listener. A listener that throws is logged.
   */
  onWorkerRestart(listener: (event: WorkerRestart) => void): () => void {
    this.restartListeners.add(listener);
    return () => this.restartListeners.delete(listener);
  }

  /**
   * Test-only fault injection (FaultTask): worker `worker`'s current thread fails in a later run task — throws, or
   * ends with process.exit(1) — after `afterRuns` run tasks that pass; null clears a pending fault. Nothing in the
   * gateway calls this: no HTTP route can reach it. Resolves once the thread has the fault; throws a RangeError for
   * a worker the placement does not have.
   */
  async injectFault(worker: number, fault: WorkerFault | null): Promise<void> {
    if (!Number.isInteger(worker) || worker < 0 || worker >= this.shards.length) {
      throw new RangeError(`no worker ${worker}: the pool has workers 0..${this.shards.length - 1}`);
    }
    await this.shards[worker].run({ task: { kind: 'fault', fault } }, false);
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
    // A batch for an expert no worker hosts would otherwise come back as nothing (its tokens silently skipping the
    // expert): only an expert host can be asked for one (a batch racing a placement change), and it must say so.
    const orphan = plan.batches.find((b) => placement.hosts[layer][b.expert].length === 0);
    if (orphan) throw new Error(`expert ${layer}.${orphan.expert} is hosted by no worker of this pool`);
    const parts = assignBatches(placement, layer, plan.batches, this.options.minSplitRows ?? MIN_SPLIT_ROWS);
    const byWorker = new Map<number, typeof parts>();
    for (const part of parts) byWorker.set(part.worker, [...(byWorker.get(part.worker) ?? []), part]);
    const batches: BatchOutcome[] = [];
    const timings = await Promise.all([...byWorker].map(async ([worker, mine]) => {
      const rows = mine.reduce((n, p) => n + p.rows.length, 0);
      const items = mine.map((p) => ({ layer, expert: plan.batches[p.batch].expert, tokens: p.rows.length }));
      // Built again if the task has to run again: its input is transferred to the thread, and x stays here.
      const makeTask = () => {
        const input = new Float32Array(rows * hidden);
        let at = 0;
        for (const p of mine) {
          input.set(gatherRows(x, p.rows, hidden), at);
          at += p.rows.length * hidden;
        }
        return { task: { kind: 'run', input, items } satisfies WorkerTask, transferList: [input.buffer as ArrayBuffer] };
      };
      const submitted = performance.now();
      const result = this.channelMode === 'shared-memory'
        ? await shards[worker].runChannel(items, (input) => {
          let at = 0;
          for (const p of mine) {
            for (const row of p.rows) {
              input.set(x.subarray(row * hidden, (row + 1) * hidden), at);
              at += hidden;
            }
          }
        })
        : await shards[worker].run<RunResult>(makeTask);
      const roundTripMs = performance.now() - submitted;
      let offset = 0;
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
    return Promise.all(this.shards.map((s) => s.run<WorkerStats>({ task: { kind: 'stats' } })));
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
        const shard = this.startShard(w, wanted[w]);
        added.push(shard);
        loads.push(shard.run({ task: { kind: 'stats' } }));
        loaded.push(...wanted[w].map((k) => ({ ...k, worker: w })));
        continue;
      }
      const missing = wanted[w].filter((k) => !this.resident[w].has(keyOf(k)));
      if (missing.length === 0) continue;
      loaded.push(...missing.map((k) => ({ ...k, worker: w })));
      // Published first: a thread that replaces this one while it loads then loads them too.
      this.shards[w].publish([...this.resident[w], ...missing.map(keyOf)]);
      loads.push(this.shards[w].run<ResidencyResult>({ task: { kind: 'load', experts: missing } }).then((r) => {
        for (const k of r.resident) this.resident[w].add(keyOf(k));
      }));
    }
    const settled = await Promise.allSettled(loads);
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) {
      // Experts loaded on existing workers stay resident (harmless; a later change unloads what is not placed).
      for (let w = 0; w < Math.min(oldCount, next.workers); w++) this.shards[w].publish(this.resident[w]);
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
      this.shards[w].publish(this.resident[w]);
      releases.push(this.shards[w].run({ task: { kind: 'unload', experts } }));
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

  /** A worker's Piscina instance (one thread), hosting `experts` and recovering its thread as the file comment says. */
  private startShard(workerId: number, experts: ExpertKey[]): Shard {
    const options = this.options;
    const hosts = options.placement.hosts;
    const setup: WorkerSetup = {
      workerId, weightsFile: options.weightsFile, ...(options.modelType ? { modelType: options.modelType } : {}),
      hidden: options.hidden, ffn: options.ffn, experts, threads: options.threadsPerWorker, executionProviders: options.executionProviders,
      ...(options.kernel ? { kernel: options.kernel } : {}),
      ...(options.scheduling ? { scheduling: options.scheduling } : {}),
      maxResident: options.maxResidentPerWorker ?? null,
      dropped: options.droppedExperts ?? [],
      hosting: createHosting(hosts.length, hosts[0]?.length ?? 0, experts),
    };
    // One thread per shard, kept for the pool's life: a shard is the unit that placement addresses. Piscina restarts
    // the thread if it dies (minThreads), with this workerData: `hosting` is shared memory, so it is current.
    // atomics 'disabled': in Piscina's default 'sync' mode an idle thread blocks in Atomics.wait for its next task,
    // so the channel loop (which runs on the thread's event loop) would never run.
    const piscina = new Piscina({
      filename: WORKER_BOOTSTRAP, minThreads: 1, maxThreads: 1, idleTimeout: 2 ** 31 - 1, workerData: setup,
      ...(this.channelMode === 'shared-memory' ? { atomics: 'disabled' as const } : {}),
    });
    return new Shard(workerId, piscina, setup.hosting!, (event) => this.restarted(event), options.onError, options.hidden, options.channelSpin ?? DEFAULT_SPIN);
  }

  private restarted(event: WorkerRestart): void {
    for (const listener of this.restartListeners) {
      try {
        listener(event);
      } catch (error) {
        log.warn('worker restart listener failed', { worker: event.worker, err: error });
      }
    }
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

