/**
 * Top-k gating in fp32, as the Switch Transformer prescribes for its router: logits = x · Wᵀ, probabilities by
 * softmax over all experts, the k most probable experts are chosen. Each chosen expert's output is scaled by its
 * probability — not renormalised (Switch, k = 1; OLMoE with norm_topk_prob false), or renormalised over the k chosen
 * (norm_topk_prob true: Mixtral, Qwen2-MoE). With k = 1 and no renormalisation this is exactly Switch top-1 gating.
 */

export interface Gating {
  /** Experts chosen per token. */
  k: number;
  /** Chosen experts [tokens, k], most probable first (ties: the lower index, as torch.topk). */
  expert: Int32Array;
  /** Each choice's gate value [tokens, k]: its softmax probability, renormalised over the k chosen when asked. */
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

/**
 * Row-wise softmax (max-subtracted for stability) over logits [tokens, experts], then the k largest probabilities
 * per row. `renormalize`: divide the k chosen probabilities by their sum. Throws a RangeError unless 1 ≤ k ≤ experts.
 */
export function topK(logits: Float32Array, tokens: number, experts: number, k: number, renormalize = false): Gating {
  if (!Number.isInteger(k) || k < 1 || k > experts) throw new RangeError(`top-k: k must be an integer in 1..${experts} (got ${k})`);
  const probs = new Float32Array(tokens * experts);
  const expert = new Int32Array(tokens * k);
  const gate = new Float32Array(tokens * k);
  const exps = new Float64Array(experts); // each exp once, in double as before, then divided
  for (let t = 0; t < tokens; t++) {
    const base = t * experts;
    let max = -Infinity;
    for (let e = 0; e < experts; e++) max = Math.max(max, logits[base + e]);
    let total = 0;
    for (let e = 0; e < experts; e++) total += (exps[e] = Math.exp(logits[base + e] - max));
    for (let e = 0; e < experts; e++) probs[base + e] = exps[e] / total;
    // Selection by repeated argmax: k is small (1–8) and ties go to the lower index.
    let chosenSum = 0;
    for (let j = 0; j < k; j++) {
      let best = -1;
      for (let e = 0; e < experts; e++) {
        if (isChosen(expert, t * k, j, e)) continue;
        if (best < 0 || probs[base + e] > probs[base + best]) best = e;
      }
      expert[t * k + j] = best;
      gate[t * k + j] = probs[base + best];
      chosenSum += probs[base + best];
    }
    if (renormalize) for (let j = 0; j < k; j++) gate[t * k + j] = gate[t * k + j] / chosenSum;
  }
  return { k, expert, gate, probs };
}

function isChosen(expert: Int32Array, from: number, count: number, e: number): boolean {
  for (let j = 0; j < count; j++) if (expert[from + j] === e) return true;
  return false;
}

/** Switch top-1 gating: topK with k = 1, gate = the raw softmax probability. */
export function top1(logits: Float32Array, tokens: number, experts: number): Gating {
  return topK(logits, tokens, experts, 1, false);
}
