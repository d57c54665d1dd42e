/**
 * The plain TypeScript reference every expert kernel is checked against: the SwiGLU FFN
 * y = down · (silu(gate · x) ⊙ (up · x)) with float64 accumulation, and the error measures used by the checks.
 */
import type { ExpertWeights } from '../expert-graph.ts';

/**
 * h = silu(gate · x) ⊙ (up · x), [tokens, ffn] in float64: what a SwiGLU expert's down projection sees (also the
 * calibration input of pruning's down projection and its neuron importance).
 */
export function swigluHidden(gate: Float32Array, up: Float32Array, hidden: number, ffn: number, x: Float32Array, tokens: number): Float64Array {
  const h = new Float64Array(tokens * ffn);
  for (let t = 0; t < tokens; t++) {
    const xo = t * hidden;
    for (let j = 0; j < ffn; j++) {
      let g = 0;
      let u = 0;
      const wo = j * hidden;
      for (let k = 0; k < hidden; k++) {
        const v = x[xo + k];
        g += gate[wo + k] * v;
        u += up[wo + k] * v;
      }
      h[t * ffn + j] = (g / (1 + Math.exp(-g))) * u;
    }
  }
  return h;
}

/** y [tokens, hidden] for x [tokens, hidden]; weights in torch Linear layout (gate, up [ffn, hidden]; down [hidden, ffn]). */
export function referenceFfn(w: ExpertWeights, hidden: number, ffn: number, x: Float32Array, tokens: number): Float32Array {
  const y = new Float32Array(tokens * hidden);
  const h = swigluHidden(w.gate, w.up, hidden, ffn, x, tokens);
  for (let t = 0; t < tokens; t++) {
    for (let i = 0; i < hidden; i++) {
      let s = 0;
      const wo = i * ffn;
      for (let j = 0; j < ffn; j++) s += w.down[wo + j] * h[t * ffn + j];
      y[t * hidden + i] = s;
    }
  }
  return y;
}

/** max |y − ref| / max |ref| (0 when both are all zeros): "exact up to float rounding" checks. */
export function relativeMaxError(y: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (y.length !== ref.length) throw new Error(`output has ${y.length} values, the reference ${ref.length}`);
  let err = 0;
  let scale = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(y[i] - ref[i]);
    err = Number.isNaN(d) ? Number.POSITIVE_INFINITY : Math.max(err, d);
    scale = Math.max(scale, Math.abs(ref[i]));
  }
  return scale === 0 ? err : err / scale;
}

/** ‖y − ref‖₂ / ‖ref‖₂: the quantized kernels' tolerance. */
export function relativeL2Error(y: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (y.length !== ref.length) throw new Error(`output has ${y.length} values, the reference ${ref.length}`);
  let err = 0;
  let norm = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = y[i] - ref[i];
    err += d * d;
    norm += ref[i] * ref[i];
  }
  if (Number.isNaN(err)) return Number.POSITIVE_INFINITY;
  return norm === 0 ? Math.sqrt(err) : Math.sqrt(err / norm);
}

/** Fraction of exactly-zero weights over the expert's three matrices. */
export function weightSparsity(w: ExpertWeights): number {
  let zeros = 0;
  let total = 0;
  for (const m of [w.gate, w.up, w.down]) {
    total += m.length;
    for (let i = 0; i < m.length; i++) if (m[i] === 0) zeros++;
  }
  return total === 0 ? 0 : zeros / total;
}

/** Deterministic roughly normal values (a sum of three xorshift uniforms, variance scale²/4) from a seed. */
export function randomValues(count: number, seed: number, scale: number): Float32Array {
  let s = seed >>> 0 || 1;
  const next = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
  return Float32Array.from({ length: count }, () => (next() + next() + next() - 1.5) * scale);
}

/** Deterministic activations with unit RMS (like the RMS-normalised hidden states experts receive). */
export function checkInput(tokens: number, hidden: number, seed = 12345): Float32Array {
  return randomValues(tokens * hidden, seed, 2);
}
