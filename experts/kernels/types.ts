/** What every expert kernel offers the worker, and what the worker reports about its choice. */

/**
 * Kernels an expert can run with. `structured` is `dense` (onnxruntime) on an expert whose FFN width pruning reduced;
 * `dense-native` is our native kernel over the same fp32 weights (any FFN width).
 */
export const KERNEL_NAMES = ['dense', 'structured', 'dense-native', 'int8', 'int4', 'sparse'] as const;
export type KernelName = (typeof KERNEL_NAMES)[number];

/** Config `experts.kernel`: 'auto' measures; the others force one kernel for every expert. */
export const KERNEL_SETTINGS = ['auto', 'dense', 'dense-native', 'int8', 'int4', 'sparse'] as const;
export type KernelSetting = (typeof KERNEL_SETTINGS)[number];

export interface ExpertKernel {
  readonly name: KernelName;
  /** Writes y [tokens, hidden] for x [tokens, hidden] into `out` (at least tokens·hidden floats). */
  run(x: Float32Array, tokens: number, out: Float32Array): Promise<void>;
  release(): Promise<void>;
}

/** The expert-side settings (config `experts`) the worker needs. */
export interface KernelSettings {
  kernel: KernelSetting;
  /** 'auto' considers the sparse kernel only for experts with at least this fraction of zero weights. */
  sparseMinSparsity: number;
  /** 'auto': ms each candidate is timed per batch size. */
  trialMs: number;
}

export const DEFAULT_KERNEL_SETTINGS: KernelSettings = { kernel: 'auto', sparseMinSparsity: 0.5, trialMs: 2 };

/** One candidate kernel's load-time check and timing. */
export interface KernelTrial {
  kernel: KernelName;
  /**
   * Error against the TypeScript reference FFN at load (relative max error for exact kernels, relative L2 for
   * quantized); absent when the kernel could not be built, or is the baseline dense kernel used without a check.
   */
  error?: number;
  tolerance: number;
  ok: boolean;
  /** Median µs per call at each timed batch size ("1", "8"); absent when not timed (a single candidate). */
  us?: Record<string, number>;
  /** Why it could not be built or used. */
  note?: string;
}

/** The kernel an expert runs with and how it was chosen (reported by the worker's `stats`). */
export interface KernelReport {
  kernel: KernelName;
  setting: KernelSetting;
  /** The expert's FFN width (smaller than the model's after structured pruning) and fraction of zero weights. */
  ffn: number;
  sparsity: number;
  trials: KernelTrial[];
  /** Set when the configured kernel could not be used and another was chosen instead. */
  fallback?: string;
}
