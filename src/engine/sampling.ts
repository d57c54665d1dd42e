/**
 * Choosing the next token from logits, as Text Generation Inference does: repetition penalty, then temperature,
 * top-k and top-p; greedy takes the argmax. Pure functions over Float32Arrays plus a seeded generator.
 */
import type { SamplingParams } from './types.ts';

/** mulberry32: a small, fast 32-bit generator; the same seed always gives the same stream. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** CTRL-style penalty (as in transformers and TGI): seen tokens' positive logits are divided, negative multiplied. */
export function applyRepetitionPenalty(logits: Float32Array, seen: Iterable<number>, penalty: number): Float32Array {
  const out = Float32Array.from(logits);
  for (const id of new Set(seen)) out[id] = out[id] > 0 ? out[id] / penalty : out[id] * penalty;
  return out;
}

export function logSoftmax(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  let total = 0;
  for (const v of logits) total += Math.exp(v - max);
  const logTotal = Math.log(total) + max;
  return Float64Array.from(logits, (v) => v - logTotal);
}

export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

export interface Choice {
  id: number;
  /** Log probability of the chosen token under the distribution it was drawn from. */
  logprob: number;
}

/**
 * One token. `history` is every token so far (prompt and generated), for the repetition penalty.
 * Sampling keeps the tokens allowed by top-k and top-p, renormalises, and draws with `random`.
 */
export function chooseToken(logits: Float32Array, params: SamplingParams, history: readonly number[], random: () => number): Choice {
  const penalised = params.repetitionPenalty && params.repetitionPenalty !== 1
    ? applyRepetitionPenalty(logits, history, params.repetitionPenalty)
    : logits;
  if (!params.doSample) {
    const id = argmax(penalised);
    return { id, logprob: logSoftmax(penalised)[id] };
  }
  const scaled = params.temperature === 1 ? penalised : Float32Array.from(penalised, (v) => v / params.temperature);
  const logp = logSoftmax(scaled);
  const order = Array.from(logp.keys()).sort((a, b) => logp[b] - logp[a] || a - b);
  let keep = params.topK ? Math.min(params.topK, order.length) : order.length;
  if (params.topP !== null && params.topP < 1) {
    let mass = 0;
    for (let i = 0; i < keep; i++) {
      mass += Math.exp(logp[order[i]]);
      if (mass >= params.topP) {
        keep = i + 1;
        break;
      }
    }
  }
  const kept = order.slice(0, keep);
  const total = kept.reduce((sum, id) => sum + Math.exp(logp[id]), 0);
  let r = random() * total;
  for (const id of kept) {
    r -= Math.exp(logp[id]);
    if (r <= 0) return { id, logprob: logp[id] - Math.log(total) };
  }
  const last = kept[kept.length - 1];
  return { id: last, logprob: logp[last] - Math.log(total) };
}
