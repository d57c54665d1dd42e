/** Messages between the gateway and an expert worker. Activations travel as transferred Float32Arrays. */
import type { KernelReport, KernelSettings } from './kernels/types.ts';

export interface WorkerSetup {
  workerId: number;
  weightsFile: string;
  hidden: number;
  ffn: number;
  experts: Array<{ layer: number; expert: number }>;
  threads: number;
  executionProviders: string[];
  /** How experts pick their kernel (config `experts`); default 'auto'. */
  kernel?: KernelSettings;
  /** Most experts kept loaded (the rest of those hosted load on demand, LRU); null or absent: all. */
  maxResident?: number | null;
  /** Experts removed by pruning ("layer.expert"): placed like any other, never loaded, never routed. */
  dropped?: string[];
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

export type WorkerTask = RunTask | StatsTask | LoadTask | UnloadTask;

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
  residency: { loads: number; evictions: number };
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
}

export const expertKey = (layer: number, expert: number) => `${layer}.${expert}`;
