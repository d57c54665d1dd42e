/**
 * Choosing the next token from logits, as Text Generation Inference does: repetition penalty, then temperature,
 * top-k, top-p and typical-p; greedy takes the argmax. Pure functions over Float32Arrays plus a seeded generator.
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

/** Largest finite float32: penalised logits are clamped to it so that no logit (and no logprob) becomes infinite. */
const FLOAT32_MAX = 3.4028234663852886e38;

/** CTRL-style penalty (as in transformers and TGI): seen tokens' positive logits are divided, negative multiplied. */
export function applyRepetitionPenalty(logits: Float32Array, seen: Iterable<number>, penalty: number): Float32Array {
  const out = Float32Array.from(logits);
  for (const id of new Set(seen)) {
    const v = out[id] > 0 ? out[id] / penalty : out[id] * penalty;
    out[id] = Math.max(-FLOAT32_MAX, Math.min(FLOAT32_MAX, v));
  }
  return out;
}

/**
 * Temperatures at or below this sample as greedy: dividing logits by them overflows float32 (NaN probabilities),
 * and the distribution they ask for is the argmax anyway.
 */
export const GREEDY_TEMPERATURE = 1e-5;

export function logSoftmax(logits: Float32Array): Float64Array {
  const logTotal = logSumExp(logits);
  // Indexed loops: typed-array iterators and Float64Array.from with a map function cost ~40 µs per 258-entry row,
  // which at 32 sequences was a tenth of a decode step.
  const out = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i] - logTotal;
  return out;
}

/** log Σ exp(logits), max-subtracted: what logSoftmax subtracts from every logit. */
export function logSumExp(logits: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let total = 0;
  for (let i = 0; i < logits.length; i++) total += Math.exp(logits[i] - max);
  return Math.log(total) + max;
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
  /**
   * With `topN`: the topN most likely tokens, most likely first, under the distribution before truncation (after
   * the repetition penalty and, when sampling, the temperature); for greedy choices top[0] is the choice.
   */
  top?: Array<{ id: number; logprob: number }>;
}

/** The n largest of `logp`, largest first (ties: lower id first). */
export function topLogprobs(logp: Float64Array, n: number): Array<{ id: number; logprob: number }> {
  const best: number[] = [];
  for (let id = 0; id < logp.length; id++) {
    if (best.length === n && logp[id] <= logp[best[n - 1]]) continue;
    let at = best.length === n ? n - 1 : best.length;
    while (at > 0 && logp[best[at - 1]] < logp[id]) at--;
    best.splice(at, 0, id);
    if (best.length > n) best.pop();
  }
  return best.map((id) => ({ id, logprob: logp[id] }));
}

/**
 * One token. `history` is every token so far (prompt and generated), for the repetition penalty.
 * Sampling applies temperature, then keeps the tokens allowed by top-k, top-p and typical-p (in that order, as
 * transformers' and TGI's warpers do), renormalises, and draws with `random`. The returned logprob is always finite.
 */
export function chooseToken(logits: Float32Array, params: SamplingParams, history: readonly number[], random: () => number, topN = 0): Choice {
  const penalised = params.repetitionPenalty && params.repetitionPenalty !== 1
    ? applyRepetitionPenalty(logits, history, params.repetitionPenalty)
    : logits;
  const withTop = (choice: Choice, logp: Float64Array): Choice => (topN > 0 ? { ...choice, top: topLogprobs(logp, topN) } : choice);
  if (!params.doSample || params.temperature <= GREEDY_TEMPERATURE) {
    const id = argmax(penalised);
    if (topN === 0) return { id, logprob: penalised[id] - logSumExp(penalised) };
    const logp = logSoftmax(penalised);
    return withTop({ id, logprob: logp[id] }, logp);
  }
  const scaled = params.temperature === 1 ? penalised : Float32Array.from(penalised, (v) => v / params.temperature);
  const logp = logSoftmax(scaled);
  const order = Array.from(logp.keys()).sort((a, b) => logp[b] - logp[a] || a - b);
  let kept = order.slice(0, params.topK ? Math.min(params.topK, order.length) : order.length);
  if (params.topP !== null && params.topP < 1) kept = kept.slice(0, massPrefix(kept, logp, params.topP));
  if (params.typicalP != null && params.typicalP < 1) kept = typical(kept, logp, params.typicalP);
  const total = kept.reduce((sum, id) => sum + Math.exp(logp[id]), 0);
  let r = random() * total;
  let chosen = kept[kept.length - 1];
  for (const id of kept) {
    r -= Math.exp(logp[id]);
    if (r <= 0) {
      chosen = id;
      break;
    }
  }
  return withTop({ id: chosen, logprob: logp[chosen] - Math.log(total) }, logp);
}

/** log Σ exp(logp[id]) over `ids`: renormalises a filtered distribution. */
function logMass(ids: readonly number[], logp: Float64Array): number {
  let max = -Infinity;
  for (const id of ids) max = Math.max(max, logp[id]);
  let total = 0;
  for (const id of ids) total += Math.exp(logp[id] - max);
  return Math.log(total) + max;
}

/**
 * How many of `ids` (in their order) it takes to reach probability mass `p` of the distribution renormalised over
 * `ids` — each warper sees the previous one's output, as in transformers (at least one).
 */
function massPrefix(ids: readonly number[], logp: Float64Array, p: number): number {
  const norm = logMass(ids, logp);
  let mass = 0;
  for (let i = 0; i < ids.length; i++) {
    mass += Math.exp(logp[ids[i]] - norm);
    if (mass >= p) return i + 1;
  }
  return ids.length;
}

/**
 * Locally typical sampling (Meister et al. 2022, transformers' TypicalLogitsWarper): over the candidates `ids`
 * (renormalised), keep the tokens whose surprisal −log p is closest to the entropy, up to mass `p`.
 */
function typical(ids: readonly number[], logp: Float64Array, p: number): number[] {
  const norm = logMass(ids, logp);
  let entropy = 0;
  for (const id of ids) entropy -= Math.exp(logp[id] - norm) * (logp[id] - norm);
  const surprise = (id: number) => Math.abs(norm - logp[id] - entropy);
  const byTypicality = [...ids].sort((a, b) => surprise(a) - surprise(b) || a - b);
  return byTypicality.slice(0, massPrefix(byTypicality, logp, p));
}
