/**
 * Switch top-1 gating, in fp32 as the Switch Transformer prescribes: logits = x · Wᵀ, probabilities by softmax,
 * the argmax expert is chosen and its probability (not renormalised) scales the expert's output.
 */

export interface Gating {
  /** Chosen expert per token. */
  expert: Int32Array;
  /** The chosen expert's softmax probability per token. */
  gate: Float32Array;
  /** Full probability table [tokens, experts], for statistics. */
  probs: Float32Array;
}

/** Router logits for `tokens` rows of x [tokens, hidden] against W [experts, hidden]. */
export function routerLogits(x: Float32Array, weight: Float32Array, tokens: number, hidden: number, experts: number): Float32Array {
  const out = new Float32Array(tokens * experts);
  for (let t = 0; t < tokens; t++) {
    const row = t * hidden;
    for (let e = 0; e < experts; e++) {
      const w = e * hidden;
      let sum = 0;
      for (let i = 0; i < hidden; i++) sum += x[row + i] * weight[w + i];
      out[t * experts + e] = sum;
    }
  }
  return out;
}

/** Row-wise softmax (max-subtracted for stability) and top-1 choice; ties go to the lower index, as torch's max. */
export function top1(logits: Float32Array, tokens: number, experts: number): Gating {
  const probs = new Float32Array(tokens * experts);
  const expert = new Int32Array(tokens);
  const gate = new Float32Array(tokens);
  for (let t = 0; t < tokens; t++) {
    const base = t * experts;
    let max = -Infinity;
    for (let e = 0; e < experts; e++) max = Math.max(max, logits[base + e]);
    let total = 0;
    for (let e = 0; e < experts; e++) total += Math.exp(logits[base + e] - max);
    let best = 0;
    for (let e = 0; e < experts; e++) {
      probs[base + e] = Math.exp(logits[base + e] - max) / total;
      if (probs[base + e] > probs[base + best]) best = e;
    }
    expert[t] = best;
    gate[t] = probs[base + best];
  }
  return { expert, gate, probs };
}
