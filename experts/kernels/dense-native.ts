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
}

export type DenseNativeStatus = NativeStatus<Addon>;

/** Loads the addon once per thread; never throws. */
export function nativeDense(): DenseNativeStatus {
  return loadKernelAddon<Addon>('dense_ffn.node', 'native dense kernel');
}

export class DenseNativeKernel extends NativeFfnKernel<Addon> implements ExpertKernel {
  readonly name = 'dense-native' as const;

  /** Throws when the addon is unavailable or the weights do not have the shapes hidden × ffn. */
  static create(w: ExpertWeights, hidden: number, ffn: number, native: DenseNativeStatus = nativeDense()): DenseNativeKernel {
    if (!native.available) throw new Error(native.reason);
    return new DenseNativeKernel(native.addon, native.addon.create(hidden, ffn, w.gate, w.up, w.down));
  }
}
