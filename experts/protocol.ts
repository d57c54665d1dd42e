/**
 * Messages between the gateway and an expert worker. Layer batches go through the worker's shared-memory channel
 * (channel.ts) by default; in a RunTask (config experts.channel 'tasks') activations travel as transferred Float32Arrays.
 */
import type { ChannelSetup } from './channel.ts';
import type { KernelReport, KernelSettings } from './kernels/types.ts';
import type { WorkerScheduling } from './thread-scheduling.ts';

export interface WorkerSetup {
  workerId: number;
  weightsFile: string;
  /** config.json's model_type: the checkpoint's tensor names map to canonical ones (src/format/architectures.ts). */
  modelType?: string;
  hidden: number;
  ffn: number;
  experts: Array<{ layer: number; expert: number }>;
  threads: number;
  executionProviders: string[];
  /** How experts pick their kernel (config `experts`); default 'auto'. */
  kernel?: KernelSettings;
  /** The thread's scheduling policy (config experts.workerScheduling, thread-scheduling.ts); absent: unchanged. */
  scheduling?: WorkerScheduling;
  /** Most experts kept loaded (the rest of those hosted load on demand, LRU); null or absent: all. */
  maxResident?: number | null;
  /** Experts removed by pruning ("layer.expert"): placed like any other, never loaded, never routed. */
  dropped?: string[];
  /**
   * The experts this worker hosts *now*, in memory shared with the pool (layout: createHosting). The pool rewrites
   * it before every load and unload it sends, so a thread that Piscina starts to replace one that died loads the
   * worker's current experts, not the start-up `experts`. Absent: use `experts`.
   */
  hosting?: { map: SharedArrayBuffer; expertsPerLayer: number };
}

export interface ExpertItem {
  layer: number;
  expert: number;
  tokens: number;
}

/** Run several experts' batches; `input` holds their rows back to back, in item order. */
export interface RunTask {
  kind: 'run';
  items: ExpertItem[];
  input: Float32Array;
}

export interface StatsTask {
  kind: 'stats';
}

/** Build sessions for these experts (those already resident are kept as they are). Answers a ResidencyResult. */
export interface LoadTask {
  kind: 'load';
  experts: Array<{ layer: number; expert: number }>;
}

/** Release these experts' sessions (those not resident are ignored). Answers a ResidencyResult. */
export interface UnloadTask {
  kind: 'unload';
  experts: Array<{ layer: number; expert: number }>;
}

/**
 * Test-only fault injection: makes this thread fail inside a later `run` task. The pool sends it only from
 * ExpertPool.injectFault, which nothing in the gateway calls (no HTTP route reaches it). A thread that replaces
 * one that died starts without a fault. Answers `{ workerId }`.
 */
export interface FaultTask {
  kind: 'fault';
  /** null clears a fault not yet triggered. */
  fault: WorkerFault | null;
}

export interface WorkerFault {
  /** 'throw': the run task rejects with an Error; 'exit': the thread calls process.exit(1) (only it ends). */
  kind: 'throw' | 'exit';
  /** Run tasks that complete normally first (default 0: the next run task fails). */
  afterRuns?: number;
  /** How many run tasks in a row fail, for 'throw' (default 1). */
  times?: number;
}

/**
 * Serve layer batches from this shared-memory channel (channel.ts) from now on, instead of any earlier one (the pool
 * stops that first). Answers `{ workerId }`. Sent again after a thread restarts, and with a larger buffer when a
 * batch does not fit.
 */
export interface ChannelTask {
  kind: 'channel';
  channel: ChannelSetup;
}

export type WorkerTask = RunTask | StatsTask | LoadTask | UnloadTask | FaultTask | ChannelTask;

export interface ResidencyResult {
  workerId: number;
  /** The experts the worker holds after the task. */
  resident: Array<{ layer: number; expert: number }>;
  /** How long building (load) or releasing (unload) the sessions took (ms). */
  ms: number;
}

export interface RunResult {
  workerId: number;
  /** The items' outputs back to back, same layout as the input. */
  output: Float32Array;
  computeMs: number;
  /** Since start: experts loaded on demand, and released to stay within maxResident. */
  /** Since this thread started (a replacement thread counts from 0 again): experts loaded on demand and released. */
  residency: { loads: number; evictions: number; thread: number };
}

export interface WorkerStats {
  workerId: number;
  threadId: number;
  /** The experts this worker hosts (its placement); with a residency limit, not all of them are loaded. */
  resident: Array<{ layer: number; expert: number }>;
  /** The hosted experts loaded right now ("layer.expert"), at most residency.max. */
  loaded: string[];
  residency: { loads: number; evictions: number; max: number | null };
  /** Per "layer.expert": tasks run and tokens processed since start. */
  ran: Record<string, { tasks: number; tokens: number }>;
  busyMs: number;
  /** Per resident "layer.expert": the kernel it runs with and how that was chosen. */
  kernels: Record<string, KernelReport>;
  /** The thread's scheduling: what was asked, the policy /proc reports (0 SCHED_OTHER, 3 SCHED_BATCH), why not. */
  scheduling: { wanted: WorkerScheduling | null; policy: number | null; reason?: string };
}

export const expertKey = (layer: number, expert: number) => `${layer}.${expert}`;

/**
 * The shared hosting map (WorkerSetup.hosting): an Int32 version, then one byte per expert. The pool writes it
 * (writeHosting, main thread) while a starting thread may read it (readHosting): the version is odd during a write,
 * and a reader retries until it saw the same even version before and after, so it never sees half of a change.
 */
export function createHosting(layers: number, expertsPerLayer: number, experts: Iterable<{ layer: number; expert: number }>): NonNullable<WorkerSetup['hosting']> {
  const hosting = { map: new SharedArrayBuffer(4 + layers * expertsPerLayer), expertsPerLayer };
  writeHosting(hosting, [...experts].map((k) => expertKey(k.layer, k.expert)));
  return hosting;
}

/** Replaces the hosted set with `keys` ("layer.expert"). */
export function writeHosting(hosting: NonNullable<WorkerSetup['hosting']>, keys: Iterable<string>): void {
  const version = new Int32Array(hosting.map, 0, 1);
  const bytes = new Uint8Array(hosting.map, 4);
  Atomics.add(version, 0, 1); // odd: writing
  for (let i = 0; i < bytes.length; i++) Atomics.store(bytes, i, 0);
  for (const key of keys) {
    const [layer, expert] = key.split('.').map(Number);
    Atomics.store(bytes, layer * hosting.expertsPerLayer + expert, 1);
  }
  Atomics.add(version, 0, 1); // even: done
}

/** The hosted experts, in layer then expert order. */
export function readHosting(hosting: NonNullable<WorkerSetup['hosting']>): Array<{ layer: number; expert: number }> {
  const version = new Int32Array(hosting.map, 0, 1);
  const bytes = new Uint8Array(hosting.map, 4);
  const per = hosting.expertsPerLayer;
  for (;;) {
    const before = Atomics.load(version, 0);
    if (before % 2 === 1) continue; // a write is in progress on the main thread (a few microseconds)
    const experts: Array<{ layer: number; expert: number }> = [];
    for (let i = 0; i < bytes.length; i++) if (Atomics.load(bytes, i) === 1) experts.push({ layer: Math.floor(i / per), expert: i % per });
    if (Atomics.load(version, 0) === before) return experts;
  }
}
