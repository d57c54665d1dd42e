/**
 * Weight quantization for onnxruntime's com.microsoft contrib operators, computed here in TypeScript.
 *
 * int8 — `DynamicQuantizeMatMul(A, B, b_scale, b_zero_point)`: B is the [K, N] right-hand matrix (K = in
 * features, N = out features) of 8-bit codes, symmetric per output column: code = 128 + round(w / scale) with
 * round(w / scale) in −127..127, stored as uint8 with zero point 128 (b_scale [N], b_zero_point [N] = 128).
 * onnxruntime quantizes A to uint8 per tensor at run time. Why uint8 weights and not int8: onnxruntime's u8×s8
 * kernel on x86 CPUs without VNNI (`vpmaddubsw`) adds pairs of products in saturating int16, and
 * 2 · 255 · 127 = 64 770 overflows it (relative error 0.09–0.19 on an AVX2-only AMD EPYC, < 0.05 with VNNI);
 * its u8×u8 kernels widen to int16 before multiplying and accumulate in int32 on every CPU, so they never
 * saturate, keep all 8 bits (unlike onnxruntime's own `reduce_range` 7-bit fix) and measured as fast here.
 *
 * int4 — `MatMulNBits(A, B, scales, zero_points)`, bits = 4: the torch weight W [N, K] is cut into blocks of
 * `blockSize` along K (the last block padded); each block has a float scale and a 4-bit zero point, and
 * W ≈ (q − zp) · scale with q in 0..15. B is uint8 [N, k_blocks, blockSize / 2] with two codes per byte, the
 * earlier K index in the low nibble; scales are float [N, k_blocks]; zero points are packed the same way as B,
 * [N, ceil(k_blocks / 2)] bytes (low nibble = even block). Blocks are asymmetric over [min(0, w), max(0, w)],
 * so a zero weight is stored exactly (pruned weights stay zero).
 */

/** Zero point of the uint8 weight codes: a code stands for (code − 128) · scale, so a zero weight is exact. */
export const INT8_ZERO_POINT = 128;

export interface Int8Weights {
  /** uint8 codes [K, N] (the MatMul right-hand side: transposed torch weight), zero point INT8_ZERO_POINT. */
  b: Uint8Array;
  /** [N] per output column. */
  scales: Float32Array;
  k: number;
  n: number;
}

/** Quantizes a torch Linear weight W [outF, inF] to 8-bit codes per output column (symmetric, 255 levels). */
export function quantizeInt8(w: Float32Array, outF: number, inF: number): Int8Weights {
  const b = new Uint8Array(inF * outF);
  const scales = new Float32Array(outF);
  for (let n = 0; n < outF; n++) {
    let max = 0;
    for (let k = 0; k < inF; k++) max = Math.max(max, Math.abs(w[n * inF + k]));
    const scale = max === 0 ? 1 : max / 127;
    scales[n] = scale;
    for (let k = 0; k < inF; k++) {
      b[k * outF + n] = INT8_ZERO_POINT + Math.max(-127, Math.min(127, Math.round(w[n * inF + k] / scale)));
    }
  }
  return { b, scales, k: inF, n: outF };
}

/** The weight the 8-bit codes stand for, in torch layout [N, K]. */
export function dequantizeInt8(q: Int8Weights): Float32Array {
  const w = new Float32Array(q.n * q.k);
  for (let n = 0; n < q.n; n++) {
    for (let k = 0; k < q.k; k++) w[n * q.k + k] = (q.b[k * q.n + n] - INT8_ZERO_POINT) * q.scales[n];
  }
  return w;
}

export interface Int4Weights {
  /** uint8 [N, kBlocks, blockSize / 2]. */
  b: Uint8Array;
  /** float [N, kBlocks]. */
  scales: Float32Array;
  /** uint8 [N, ceil(kBlocks / 2)], packed 4-bit. */
  zeroPoints: Uint8Array;
  k: number;
  n: number;
  kBlocks: number;
  blockSize: number;
}

/** Quantizes a torch Linear weight W [outF, inF] to 4 bits in K-blocks of `blockSize` (a power of two ≥ 16). */
export function quantizeInt4(w: Float32Array, outF: number, inF: number, blockSize = 32): Int4Weights {
  if (blockSize < 16 || (blockSize & (blockSize - 1)) !== 0) throw new Error(`block size ${blockSize}: must be a power of two ≥ 16`);
  const kBlocks = Math.ceil(inF / blockSize);
  const blob = blockSize / 2;
  const zpBytes = Math.ceil(kBlocks / 2);
  const b = new Uint8Array(outF * kBlocks * blob);
  const scales = new Float32Array(outF * kBlocks);
  const zeroPoints = new Uint8Array(outF * zpBytes);
  for (let n = 0; n < outF; n++) {
    for (let blk = 0; blk < kBlocks; blk++) {
      const k0 = blk * blockSize;
      const k1 = Math.min(inF, k0 + blockSize);
      let lo = 0;
      let hi = 0;
      for (let k = k0; k < k1; k++) {
        const v = w[n * inF + k];
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
      const scale = hi === lo ? 1 : (hi - lo) / 15;
      const zp = Math.max(0, Math.min(15, Math.round(-lo / scale)));
      scales[n * kBlocks + blk] = scale;
      zeroPoints[n * zpBytes + (blk >> 1)] |= zp << ((blk & 1) * 4);
      const base = (n * kBlocks + blk) * blob;
      for (let i = 0; i < blockSize; i++) {
        const k = k0 + i;
        const q = k < k1 ? Math.max(0, Math.min(15, Math.round(w[n * inF + k] / scale) + zp)) : zp;
        b[base + (i >> 1)] |= q << ((i & 1) * 4);
      }
    }
  }
  return { b, scales, zeroPoints, k: inF, n: outF, kBlocks, blockSize };
}

/** The weight 4-bit codes stand for, in torch layout [N, K] (what MatMulNBits multiplies with). */
export function dequantizeInt4(q: Int4Weights): Float32Array {
  const w = new Float32Array(q.n * q.k);
  const blob = q.blockSize / 2;
  const zpBytes = Math.ceil(q.kBlocks / 2);
  for (let n = 0; n < q.n; n++) {
    for (let k = 0; k < q.k; k++) {
      const blk = Math.floor(k / q.blockSize);
      const i = k % q.blockSize;
      const code = (q.b[(n * q.kBlocks + blk) * blob + (i >> 1)] >> ((i & 1) * 4)) & 15;
      const zp = (q.zeroPoints[n * zpBytes + (blk >> 1)] >> ((blk & 1) * 4)) & 15;
      w[n * q.k + k] = (code - zp) * q.scales[n * q.kBlocks + blk];
    }
  }
  return w;
}
