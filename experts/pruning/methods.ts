/**
 * One-shot pruning of expert weight matrices, pure functions over row-major Float32Arrays ([out, in], the torch
 * Linear layout). Each unstructured method removes exactly round(sparsity · size) weights; N:M keeps n of every
 * m consecutive inputs per row. Calibration-aware methods take the inputs X [tokens, in] the matrix really sees.
 */
import { inverseSpd, upperCholesky } from './linalg.ts';
import { swigluHidden } from '../kernels/reference.ts';

export interface Matrix {
  data: Float32Array;
  rows: number;
  cols: number;
}

export interface Pattern {
  /** Unstructured: the fraction to remove. */
  sparsity: number;
  /** Semi-structured N:M (e.g. 2:4): keep `n` of every `m` consecutive weights in a row. */
  nm?: { n: number; m: number };
}

/** Sets to zero the `count` entries with the smallest scores (ties by index), in place; returns the mask (1 = kept). */
function pruneLowest(data: Float32Array, scores: ArrayLike<number>, indices: number[], count: number, mask: Uint8Array): void {
  const order = [...indices].sort((a, b) => scores[a] - scores[b] || a - b);
  for (let i = 0; i < count; i++) {
    data[order[i]] = 0;
    mask[order[i]] = 0;
  }
}

/** Per row, within each group of m consecutive columns, removes the m − n lowest-scoring weights. */
function pruneNm(m: Matrix, scores: ArrayLike<number>, nm: { n: number; m: number }, mask: Uint8Array): void {
  if (m.cols % nm.m !== 0) throw new Error(`${nm.n}:${nm.m} needs a column count divisible by ${nm.m} (got ${m.cols})`);
  for (let r = 0; r < m.rows; r++) {
    for (let c = 0; c < m.cols; c += nm.m) {
      const group = Array.from({ length: nm.m }, (_, k) => r * m.cols + c + k);
      pruneLowest(m.data, scores, group, nm.m - nm.n, mask);
    }
  }
}

/** Distributes round(sparsity · total) removals over `parts` of the given sizes, as evenly as their sizes allow. */
export function removalCounts(sizes: number[], sparsity: number): number[] {
  let done = 0;
  let seen = 0;
  return sizes.map((size) => {
    seen += size;
    const target = Math.round(sparsity * seen);
    const count = Math.min(size, target - done);
    done += count;
    return count;
  });
}

function checkSparsity(p: Pattern): void {
  if (!(p.sparsity >= 0 && p.sparsity < 1)) throw new Error(`sparsity must be in [0, 1) (got ${p.sparsity})`);
}

/** Magnitude pruning of one matrix: the smallest |w| go (or, with N:M, the smallest in each group). */
export function magnitude(w: Matrix, p: Pattern): { weights: Matrix; mask: Uint8Array } {
  checkSparsity(p);
  const data = Float32Array.from(w.data);
  const mask = new Uint8Array(data.length).fill(1);
  const scores = Float32Array.from(data, Math.abs);
  if (p.nm) pruneNm({ ...w, data }, scores, p.nm, mask);
  else pruneLowest(data, scores, Array.from(data.keys()), Math.round(p.sparsity * data.length), mask);
  return { weights: { ...w, data }, mask };
}

/** Global magnitude pruning: one threshold over all the given matrices (removes round(sparsity · all) weights). */
export function globalMagnitude(ws: Matrix[], sparsity: number): Array<{ weights: Matrix; mask: Uint8Array }> {
  checkSparsity({ sparsity });
  const total = ws.reduce((n, w) => n + w.data.length, 0);
  const entries: Array<[number, number, number]> = []; // |w|, matrix, index
  ws.forEach((w, m) => w.data.forEach((v, i) => entries.push([Math.abs(v), m, i])));
  entries.sort((a, b) => a[0] - b[0] || a[1] - b[1] || a[2] - b[2]);
  const out = ws.map((w) => ({ weights: { ...w, data: Float32Array.from(w.data) }, mask: new Uint8Array(w.data.length).fill(1) }));
  for (let k = 0; k < Math.round(sparsity * total); k++) {
    const [, m, i] = entries[k];
    out[m].weights.data[i] = 0;
    out[m].mask[i] = 0;
  }
  return out;
}

/** Column norms ‖X_j‖₂ of calibration inputs X [tokens, cols]. */
export function inputNorms(x: Float32Array, tokens: number, cols: number): Float64Array {
  const norms = new Float64Array(cols);
  for (let t = 0; t < tokens; t++) for (let j = 0; j < cols; j++) norms[j] += x[t * cols + j] ** 2;
  return norms.map(Math.sqrt);
}

/** Wanda (Sun et al. 2023): score |W_ij|·‖X_j‖, compared within each output row. */
export function wanda(w: Matrix, norms: Float64Array, p: Pattern): { weights: Matrix; mask: Uint8Array } {
  checkSparsity(p);
  const data = Float32Array.from(w.data);
  const mask = new Uint8Array(data.length).fill(1);
  const scores = Float64Array.from(data, (v, i) => Math.abs(v) * norms[i % w.cols]);
  if (p.nm) pruneNm({ ...w, data }, scores, p.nm, mask);
  else {
    const counts = removalCounts(new Array(w.rows).fill(w.cols), p.sparsity);
    for (let r = 0; r < w.rows; r++) pruneLowest(data, scores, Array.from({ length: w.cols }, (_, c) => r * w.cols + c), counts[r], mask);
  }
  return { weights: { ...w, data }, mask };
}

/**
 * SparseGPT (Frantar & Alistarh 2023): columns are pruned left to right in blocks; each removed weight's error is
 * spread over the not-yet-processed columns through the inverse Hessian H⁻¹ of the layer inputs (H = XᵀX, damped),
 * so the layer's output on the calibration data changes as little as possible.
 */
export function sparseGpt(
  w: Matrix,
  h: Float64Array,
  p: Pattern,
  options: { blockSize?: number; percentDamp?: number } = {},
): { weights: Matrix; mask: Uint8Array } {
  checkSparsity(p);
  const { rows, cols } = w;
  const blockSize = options.blockSize ?? 128;
  const hd = Float64Array.from(h);
  const work = Float64Array.from(w.data);
  for (let i = 0; i < cols; i++) {
    if (hd[i * cols + i] === 0) {
      hd[i * cols + i] = 1; // an input that is always zero: its weights cannot matter
      for (let r = 0; r < rows; r++) work[r * cols + i] = 0;
    }
  }
  let meanDiag = 0;
  for (let i = 0; i < cols; i++) meanDiag += hd[i * cols + i] / cols;
  for (let i = 0; i < cols; i++) hd[i * cols + i] += (options.percentDamp ?? 0.01) * meanDiag;
  const hinv = upperCholesky(inverseSpd(hd, cols), cols);

  const mask = new Uint8Array(rows * cols).fill(1);
  const blockCounts = removalCounts(Array.from({ length: Math.ceil(cols / blockSize) }, (_, b) => Math.min(blockSize, cols - b * blockSize) * rows), p.sparsity);
  for (let b = 0, i1 = 0; i1 < cols; b++, i1 += blockSize) {
    const i2 = Math.min(i1 + blockSize, cols);
    const count = i2 - i1;
    const err = new Float64Array(rows * count);
    if (!p.nm) {
      // The block's mask: the weights whose removal costs least, w² / [H⁻¹]_jj².
      const scores = new Float64Array(rows * cols);
      const indices: number[] = [];
      for (let r = 0; r < rows; r++) {
        for (let j = i1; j < i2; j++) {
          scores[r * cols + j] = work[r * cols + j] ** 2 / hinv[j * cols + j] ** 2;
          indices.push(r * cols + j);
        }
      }
      const order = indices.sort((a, c) => scores[a] - scores[c] || a - c);
      for (let k = 0; k < blockCounts[b]; k++) mask[order[k]] = 0;
    }
    for (let j = i1; j < i2; j++) {
      if (p.nm && (j - i1) % p.nm.m === 0) {
        for (let r = 0; r < rows; r++) {
          const group = Array.from({ length: Math.min(p.nm.m, i2 - j) }, (_, k) => j + k);
          group.sort((a, c) => work[r * cols + a] ** 2 / hinv[a * cols + a] ** 2 - work[r * cols + c] ** 2 / hinv[c * cols + c] ** 2 || a - c);
          for (let k = 0; k < p.nm.m - p.nm.n; k++) mask[r * cols + group[k]] = 0;
        }
      }
      const d = hinv[j * cols + j];
      for (let r = 0; r < rows; r++) {
        const wv = work[r * cols + j];
        const q = mask[r * cols + j] ? wv : 0;
        const e = (wv - q) / d;
        work[r * cols + j] = q;
        err[r * count + (j - i1)] = e;
        if (e !== 0) for (let k = j + 1; k < i2; k++) work[r * cols + k] -= e * hinv[j * cols + k];
      }
    }
    // Spread the block's accumulated error over the columns after it.
    for (let r = 0; r < rows; r++) {
      for (let j = i1; j < i2; j++) {
        const e = err[r * count + (j - i1)];
        if (e === 0) continue;
        for (let k = i2; k < cols; k++) work[r * cols + k] -= e * hinv[j * cols + k];
      }
    }
  }
  const data = Float32Array.from(work, (v, i) => (mask[i] ? v : 0));
  return { weights: { ...w, data }, mask };
}

/**
 * Structured pruning of one SwiGLU expert: whole FFN neurons go, giving smaller dense matrices. A neuron's
 * importance is its mean |silu(gate)·up| activation on calibration inputs (or, without them, the product of its
 * weight norms) times the norm of its down-projection column.
 */
export function structuredExpert(
  expert: { gate: Matrix; up: Matrix; down: Matrix },
  fraction: number,
  calibration?: { x: Float32Array; tokens: number },
): { gate: Matrix; up: Matrix; down: Matrix; kept: number[] } {
  checkSparsity({ sparsity: fraction });
  const f = expert.gate.rows;
  const d = expert.gate.cols;
  const rowNorm = (m: Matrix, r: number) => Math.hypot(...m.data.subarray(r * m.cols, (r + 1) * m.cols));
  const downNorm = (j: number) => Math.hypot(...Array.from({ length: d }, (_, i) => expert.down.data[i * f + j]));
  const activation = new Float64Array(f);
  if (calibration && calibration.tokens > 0) {
    const h = swigluHidden(expert.gate.data, expert.up.data, d, f, calibration.x, calibration.tokens);
    for (let t = 0; t < calibration.tokens; t++) {
      for (let j = 0; j < f; j++) activation[j] += Math.abs(h[t * f + j]) / calibration.tokens;
    }
  } else {
    for (let j = 0; j < f; j++) activation[j] = rowNorm(expert.gate, j) * rowNorm(expert.up, j);
  }
  const importance = Array.from({ length: f }, (_, j) => activation[j] * downNorm(j));
  const keep = f - Math.round(fraction * f);
  const kept = Array.from({ length: f }, (_, j) => j).sort((a, b) => importance[b] - importance[a] || a - b).slice(0, keep).sort((a, b) => a - b);
  const rowsOf = (m: Matrix) => ({ rows: keep, cols: d, data: Float32Array.from(kept.flatMap((j) => Array.from(m.data.subarray(j * d, (j + 1) * d)))) });
  const down = { rows: d, cols: keep, data: new Float32Array(d * keep) };
  for (let i = 0; i < d; i++) kept.forEach((j, k) => (down.data[i * keep + k] = expert.down.data[i * f + j]));
  return { gate: rowsOf(expert.gate), up: rowsOf(expert.up), down, kept };
}
