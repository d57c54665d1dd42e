/** One-shot pruning methods: exact sparsity, N:M patterns, and SparseGPT's lower reconstruction error. */
import { describe, expect, it } from 'vitest';
import { cholesky, gram, inverseSpd } from '../experts/pruning/linalg.ts';
import { globalMagnitude, inputNorms, magnitude, sparseGpt, structuredExpert, wanda, type Matrix } from '../experts/pruning/methods.ts';
import { randomValues } from './fixtures/tiny-package.ts';

const zeros = (a: Float32Array) => a.reduce((n, v) => n + (v === 0 ? 1 : 0), 0);
const matrix = (rows: number, cols: number, seed: number): Matrix => ({ rows, cols, data: randomValues(rows * cols, seed, 1) });

/** Calibration inputs with correlated features and uneven scales, where the Hessian matters. */
function calibration(tokens: number, cols: number, seed: number): Float32Array {
  const base = randomValues(tokens * 4, seed, 1);
  const mix = randomValues(4 * cols, seed + 1, 1);
  const noise = randomValues(tokens * cols, seed + 2, 0.1);
  const x = new Float32Array(tokens * cols);
  for (let t = 0; t < tokens; t++) {
    for (let j = 0; j < cols; j++) {
      let v = noise[t * cols + j];
      for (let k = 0; k < 4; k++) v += base[t * 4 + k] * mix[k * cols + j];
      x[t * cols + j] = v * (1 + (j % 5));
    }
  }
  return x;
}

/** ‖X·Wᵀ − X·Ŵᵀ‖² over the calibration batch. */
function reconstructionError(x: Float32Array, tokens: number, w: Matrix, pruned: Matrix): number {
  let err = 0;
  for (let t = 0; t < tokens; t++) {
    for (let r = 0; r < w.rows; r++) {
      let diff = 0;
      for (let c = 0; c < w.cols; c++) diff += x[t * w.cols + c] * (w.data[r * w.cols + c] - pruned.data[r * w.cols + c]);
      err += diff * diff;
    }
  }
  return err;
}

function checkNm(m: Matrix, n: number, group: number) {
  for (let r = 0; r < m.rows; r++) {
    for (let c = 0; c < m.cols; c += group) {
      const kept = Array.from({ length: group }, (_, k) => m.data[r * m.cols + c + k]).filter((v) => v !== 0).length;
      expect(kept).toBeLessThanOrEqual(n);
    }
  }
}

describe('linear algebra', () => {
  it('inverts a symmetric positive definite matrix through Cholesky', () => {
    const x = calibration(40, 6, 3);
    const h = gram(x, 40, 6);
    for (let i = 0; i < 6; i++) h[i * 6 + i] += 0.1;
    const inv = inverseSpd(h, 6);
    for (let i = 0; i < 6; i++) {
      for (let j = 0; j < 6; j++) {
        let s = 0;
        for (let k = 0; k < 6; k++) s += h[i * 6 + k] * inv[k * 6 + j];
        expect(s).toBeCloseTo(i === j ? 1 : 0, 8);
      }
    }
    expect(() => cholesky(Float64Array.of(1, 2, 2, 1), 2)).toThrow(/not positive definite/);
  });
});

describe('pruning methods', () => {
  const w = matrix(12, 16, 5);
  const tokens = 64;
  const x = calibration(tokens, 16, 9);

  for (const sparsity of [0.5, 0.7, 0.9]) {
    it(`reach ${sparsity * 100}% sparsity exactly`, () => {
      const target = Math.round(sparsity * w.data.length);
      expect(zeros(magnitude(w, { sparsity }).weights.data)).toBe(target);
      expect(zeros(wanda(w, inputNorms(x, tokens, 16), { sparsity }).weights.data)).toBe(target);
      expect(zeros(sparseGpt(w, gram(x, tokens, 16), { sparsity }, { blockSize: 8 }).weights.data)).toBe(target);
      const global = globalMagnitude([w, matrix(4, 16, 6)], sparsity);
      expect(global.reduce((n, g) => n + zeros(g.weights.data), 0)).toBe(Math.round(sparsity * (w.data.length + 64)));
    });
  }

  it('magnitude keeps exactly the largest weights', () => {
    const { weights, mask } = magnitude(w, { sparsity: 0.75 });
    const keptMin = Math.min(...Array.from(w.data).filter((_, i) => mask[i]).map(Math.abs));
    const prunedMax = Math.max(...Array.from(w.data).filter((_, i) => !mask[i]).map(Math.abs));
    expect(keptMin).toBeGreaterThanOrEqual(prunedMax);
    expect(weights.data.filter((v, i) => mask[i] && v !== w.data[i])).toHaveLength(0);
  });

  it('2:4 keeps two of every four weights in each row, for every method', () => {
    const nm = { n: 2, m: 4 };
    for (const pruned of [magnitude(w, { sparsity: 0.5, nm }), wanda(w, inputNorms(x, tokens, 16), { sparsity: 0.5, nm }), sparseGpt(w, gram(x, tokens, 16), { sparsity: 0.5, nm }, { blockSize: 8 })]) {
      checkNm(pruned.weights, 2, 4);
      expect(zeros(pruned.weights.data)).toBe(w.data.length / 2);
    }
  });

  it('SparseGPT reconstructs the calibration outputs better than magnitude and Wanda', () => {
    for (const sparsity of [0.5, 0.7]) {
      const h = gram(x, tokens, 16);
      const errGpt = reconstructionError(x, tokens, w, sparseGpt(w, h, { sparsity }, { blockSize: 8 }).weights);
      const errMag = reconstructionError(x, tokens, w, magnitude(w, { sparsity }).weights);
      const errWanda = reconstructionError(x, tokens, w, wanda(w, inputNorms(x, tokens, 16), { sparsity }).weights);
      expect(errGpt).toBeLessThan(errMag);
      expect(errGpt).toBeLessThan(errWanda);
    }
  });

  it('structured pruning removes whole neurons, the least important ones, into smaller matrices', () => {
    const d = 8, f = 12;
    const expert = { gate: matrix(f, d, 21), up: matrix(f, d, 22), down: matrix(d, f, 23) };
    // Make neuron 3 dominant and neuron 7 negligible.
    expert.down.data.forEach((_, i) => { if (i % f === 7) expert.down.data[i] = 1e-6; if (i % f === 3) expert.down.data[i] *= 50; });
    const out = structuredExpert(expert, 0.25, { x: calibration(32, d, 4), tokens: 32 });
    expect(out.kept).toHaveLength(9);
    expect(out.kept).toContain(3);
    expect(out.kept).not.toContain(7);
    expect([out.gate.rows, out.gate.cols, out.up.rows, out.down.rows, out.down.cols]).toEqual([9, d, 9, d, 9]);
    const k = out.kept.indexOf(3);
    expect(Array.from(out.gate.data.subarray(k * d, (k + 1) * d))).toEqual(Array.from(expert.gate.data.subarray(3 * d, 4 * d)));
    expect(out.down.data[2 * 9 + k]).toBe(expert.down.data[2 * f + 3]);
  });
});
