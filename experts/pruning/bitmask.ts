/**
 * compressed-tensors' "sparse-bitmask" storage for a 2-D weight: the non-zero values in row-major order
 * (`.compressed`), one bit per weight packed little-endian into bytes per row (`.bitmask`, [rows, ceil(cols/8)]),
 * the dense shape (`.shape`) and where each row's values start (`.row_offsets`).
 */

export interface BitmaskTensor {
  compressed: Float32Array;
  bitmask: Uint8Array;
  shape: [number, number];
  rowOffsets: BigInt64Array;
}

export const BITMASK_SUFFIXES = ['compressed', 'bitmask', 'shape', 'row_offsets'] as const;

export function compressBitmask(dense: Float32Array, rows: number, cols: number): BitmaskTensor {
  const rowBytes = Math.ceil(cols / 8);
  const bitmask = new Uint8Array(rows * rowBytes);
  const rowOffsets = new BigInt64Array(rows);
  const values: number[] = [];
  for (let r = 0; r < rows; r++) {
    rowOffsets[r] = BigInt(values.length);
    for (let c = 0; c < cols; c++) {
      const v = dense[r * cols + c];
      if (v !== 0) {
        bitmask[r * rowBytes + (c >> 3)] |= 1 << (c & 7);
        values.push(v);
      }
    }
  }
  return { compressed: Float32Array.from(values), bitmask, shape: [rows, cols], rowOffsets };
}

export function decompressBitmask(t: Pick<BitmaskTensor, 'compressed' | 'bitmask' | 'shape'>): Float32Array {
  const [rows, cols] = t.shape;
  const rowBytes = Math.ceil(cols / 8);
  if (t.bitmask.length !== rows * rowBytes) throw new Error(`bitmask holds ${t.bitmask.length} bytes, expected ${rows * rowBytes} for shape [${rows}, ${cols}]`);
  const dense = new Float32Array(rows * cols);
  let k = 0;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      if (t.bitmask[r * rowBytes + (c >> 3)] & (1 << (c & 7))) {
        if (k >= t.compressed.length) throw new Error('bitmask marks more weights than are stored');
        dense[r * cols + c] = t.compressed[k++];
      }
    }
  }
  if (k !== t.compressed.length) throw new Error(`bitmask marks ${k} weights but ${t.compressed.length} are stored`);
  return dense;
}
