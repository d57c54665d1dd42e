/**
 * The `dense-native` kernel: our native N-API addon (native/dense_ffn.cc) running the whole SwiGLU FFN over the
 * expert's fp32 weights as stored, for the few tokens an expert gets per decode step, where onnxruntime's fixed cost
 * per run dominates. Every output value is one dot product in a fixed order, so a token's output does not depend on
 * its batch (bit for bit). Built by `npm ci` with the other addons; unavailable (never chosen) without them.
 */
import type { ExpertWeights } from '../expert-graph.ts';
import { loadKernelAddon, NativeFfnKernel, type FfnAddon, type NativeStatus } from './native-addon.ts';
import type { ExpertKernel } from './types.ts';

interface Addon extends FfnAddon {
  /** gate, up: [ffn, hidden]; down: [hidden, ffn] (torch Linear layout); copied into the handle. */
  create(hidden: number, ffn: number, gate: Float32Array, up: Float32Array, down: Float32Array): object;
  /** Batch i (tokens[i] rows of x after those of the batches before it) through handles[i], on the compute team. */
  runBatches(handles: object[], x: Float32Array, tokens: Uint32Array, out: Float32Array): void;
  /** runBatches with the gather from x's `rows` and the combine into residual (residual[row] += gate · output). */
  runLayerInto(handles: object[], x: Float32Array, rows: Uint32Array, tokens: Uint32Array, gates: Float32Array, residual: Float32Array): void;
  /** The compute team (process-wide): helper threads besides the caller, µs they stay awake after a loop. */
  configureTeam(helpers: number, spinUs: number): { helpers: number; spinUs: number };
  /** The team as a handle for the trunk and attention addons' useTeam. */
  teamHandle(): object;
}

export type DenseNativeStatus = NativeStatus<Addon>;

/** Loads the addon once per thread; never throws. */
export function nativeDense(): DenseNativeStatus {
  return loadKernelAddon<Addon>('model.node', 'native dense kernel', 'dense');
}

export class DenseNativeKernel extends NativeFfnKernel<Addon> implements ExpertKernel {
  readonly name = 'dense-native' as const;

  /** Throws when the addon is unavailable or the weights do not have the shapes hidden × ffn. */
  static create(w: ExpertWeights, hidden: number, ffn: number, native: DenseNativeStatus = nativeDense()): DenseNativeKernel {
    if (!native.available) throw new Error(native.reason);
    return new DenseNativeKernel(native.addon, native.addon.create(hidden, ffn, w.gate, w.up, w.down));
  }
}

/**
 * Runs several experts' batches at once on the compute team (native/team.h: this thread and the team's helper
 * threads split the experts' weight rows): batch i is tokens[i] rows of x [Σ tokens, hidden], after those of the
 * batches before it, through kernels[i]; the results land in the same rows of out. Bit for bit what runSync of each
 * kernel gives. An expert may appear once per call. Throws when the addon is unavailable.
 */
export function runBatchesOnTeam(kernels: DenseNativeKernel[], x: Float32Array, tokens: Uint32Array, out: Float32Array, native: DenseNativeStatus = nativeDense()): void {
  if (!native.available) throw new Error(native.reason);
  native.addon.runBatches(kernels.map((k) => k.handle), x, tokens, out);
}

/**
 * A layer's experts with the gather and combine done natively, on the compute team: batch i takes tokens[i] rows of
 * x [T, hidden] listed in `rows` (after those of the batches before it) through kernels[i], and each output row is
 * added into residual [T, hidden] at the same row, times its entry of `gates`, batch after batch in the order given.
 * Bit for bit what runBatchesOnTeam followed by router/dispatch.ts's combineInto gives. Throws when the addon is
 * unavailable or the shapes disagree.
 */
export function runLayerOnTeam(
  kernels: DenseNativeKernel[], x: Float32Array, rows: Uint32Array, tokens: Uint32Array, gates: Float32Array, residual: Float32Array,
  native: DenseNativeStatus = nativeDense(),
): void {
  if (!native.available) throw new Error(native.reason);
  native.addon.runLayerInto(kernels.map((k) => k.handle), x, rows, tokens, gates, residual);
}
