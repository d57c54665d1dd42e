/**
 * The `sparse` kernel: our native N-API addon (native/sparse_ffn.cc) running the whole SwiGLU FFN over CSR weights
 * (16-bit column indices, AVX2/FMA when the CPU has it). `npm ci` builds it (native/build.mjs); when the build
 * failed, or SWITCHYARD_NATIVE=off, the kernel is unavailable and never chosen.
 */
import { loadKernelAddon, NativeFfnKernel, type FfnAddon, type NativeStatus as NativeStatusOf } from './native-addon.ts';
import type { ExpertWeights } from '../expert-graph.ts';
import type { ExpertKernel } from './types.ts';

/** Compressed sparse rows of a [rows, cols] matrix. */
export interface Csr {
  rows: number;
  cols: number;
  values: Float32Array;
  /** Column of each value. */
  columns: Uint16Array;
  /** rows + 1 offsets into values. */
  rowOffsets: Uint32Array;
}

export function toCsr(dense: Float32Array, rows: number, cols: number): Csr {
  if (dense.length !== rows * cols) throw new Error(`matrix holds ${dense.length} values, expected ${rows}×${cols}`);
  if (cols > 65535) throw new Error(`${cols} columns: the sparse kernel's 16-bit column indices allow at most 65535`);
  let nnz = 0;
  for (let i = 0; i < dense.length; i++) if (dense[i] !== 0) nnz++;
  const values = new Float32Array(nnz);
  const columns = new Uint16Array(nnz);
  const rowOffsets = new Uint32Array(rows + 1);
  let k = 0;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const v = dense[r * cols + c];
      if (v === 0) continue;
      values[k] = v;
      columns[k++] = c;
    }
    rowOffsets[r + 1] = k;
  }
  return { rows, cols, values, columns, rowOffsets };
}

interface Addon extends FfnAddon {
  create(hidden: number, ffn: number, ...csr: Array<Float32Array | Uint16Array | Uint32Array>): object;
  /** For tests and benchmarks (process-wide): batches of at most n tokens use the per-token gather path. */
  perTokenMax(n?: number): number;
}

export type NativeStatus = NativeStatusOf<Addon>;

/** Loads the addon once per thread; never throws. */
export function nativeSparse(): NativeStatus {
  return loadKernelAddon<Addon>('sparse_ffn.node', 'native sparse kernel');
}

export class SparseKernel extends NativeFfnKernel<Addon> implements ExpertKernel {
  readonly name = 'sparse' as const;

  /** Throws when the addon is unavailable or the expert does not fit it. */
  static create(w: ExpertWeights, hidden: number, ffn: number, native: NativeStatus = nativeSparse()): SparseKernel {
    if (!native.available) throw new Error(native.reason);
    const parts = [toCsr(w.gate, ffn, hidden), toCsr(w.up, ffn, hidden), toCsr(w.down, hidden, ffn)]
      .flatMap((m) => [m.values, m.columns, m.rowOffsets]);
    return new SparseKernel(native.addon, native.addon.create(hidden, ffn, ...parts));
  }
}
