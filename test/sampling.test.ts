/** Token choice: greedy, seeded sampling, top-k, top-p, temperature and repetition penalty. */
import { describe, expect, it } from 'vitest';
import { applyRepetitionPenalty, chooseToken, logSoftmax, seededRandom } from '../src/engine/sampling.ts';
import { GREEDY } from './helpers.ts';

const logits = Float32Array.from([1, 3, 2, 0.5, 2.9]);
const sample = { ...GREEDY, doSample: true };

describe('sampling', () => {
  it('greedy takes the argmax and reports its log probability', () => {
    const c = chooseToken(logits, GREEDY, [], () => 0.5);
    expect(c.id).toBe(1);
    expect(c.logprob).toBeCloseTo(logSoftmax(logits)[1], 10);
  });

  it('is reproducible with a seed and varies across seeds', () => {
    const draw = (seed: number) => {
      const random = seededRandom(seed);
      return Array.from({ length: 30 }, () => chooseToken(logits, sample, [], random).id);
    };
    expect(draw(42)).toEqual(draw(42));
    expect(draw(42)).not.toEqual(draw(43));
  });

  it('draws with the softmax frequencies', () => {
    const random = seededRandom(7);
    const counts = new Array(5).fill(0);
    const n = 20000;
    for (let i = 0; i < n; i++) counts[chooseToken(logits, sample, [], random).id]++;
    const p = Array.from(logSoftmax(logits), Math.exp);
    counts.forEach((c, i) => expect(Math.abs(c / n - p[i])).toBeLessThan(0.015));
  });

  it('top_k = 1 and a tiny top_p both reduce to greedy', () => {
    const random = seededRandom(1);
    for (let i = 0; i < 20; i++) {
      expect(chooseToken(logits, { ...sample, topK: 1 }, [], random).id).toBe(1);
      expect(chooseToken(logits, { ...sample, topP: 0.01 }, [], random).id).toBe(1);
    }
  });

  it('top_k = 2 never leaves the two best tokens, and renormalises their probabilities', () => {
    const random = seededRandom(3);
    const seen = new Set<number>();
    for (let i = 0; i < 200; i++) {
      const c = chooseToken(logits, { ...sample, topK: 2 }, [], random);
      seen.add(c.id);
      const p = Math.exp(c.logprob);
      expect(p).toBeCloseTo(Math.exp(logits[c.id]) / (Math.exp(3) + Math.exp(2.9)), 5);
    }
    expect([...seen].sort()).toEqual([1, 4]);
  });

  it('low temperature concentrates on the argmax', () => {
    const random = seededRandom(9);
    const ids = Array.from({ length: 200 }, () => chooseToken(logits, { ...sample, temperature: 0.01 }, [], random).id);
    expect(ids.every((id) => id === 1)).toBe(true);
  });

  it('repetition penalty divides positive and multiplies negative logits of seen tokens', () => {
    const out = applyRepetitionPenalty(Float32Array.from([2, -2, 1]), [0, 1, 1], 2);
    expect(Array.from(out)).toEqual([1, -4, 1]);
    // With the penalty, greedy moves off a repeated argmax.
    expect(chooseToken(logits, { ...GREEDY, repetitionPenalty: 1.5 }, [1], () => 0).id).toBe(4);
  });
});

describe('sampling edge cases (TGI and transformers semantics)', () => {
  it('temperatures at or below 1e-5 are greedy, with a finite log probability', () => {
    for (const temperature of [1e-5, 1e-9, 1e-30]) {
      const c = chooseToken(logits, { ...sample, temperature }, [], seededRandom(1));
      expect(c.id).toBe(1);
      expect(Number.isFinite(c.logprob)).toBe(true);
    }
    // Just above the threshold it still samples from a (very peaked) distribution without NaN.
    const c = chooseToken(logits, { ...sample, temperature: 2e-5 }, [], seededRandom(1));
    expect(c.id).toBe(1);
    expect(Number.isFinite(c.logprob)).toBe(true);
  });

  it('a huge repetition penalty keeps every logit and log probability finite', () => {
    const neg = Float32Array.from([-1, -3, -2, -0.5, -2.9]);
    const penalised = applyRepetitionPenalty(neg, [0, 1, 2, 3, 4], 1e300);
    expect([...penalised].every(Number.isFinite)).toBe(true);
    for (const params of [{ ...GREEDY, repetitionPenalty: 1e300 }, { ...sample, repetitionPenalty: 1e300 }]) {
      expect(Number.isFinite(chooseToken(neg, params, [0, 1, 2, 3, 4], seededRandom(3)).logprob)).toBe(true);
    }
  });

  it('top-p after top-k counts mass over the top-k tokens renormalised (as chained warpers do)', () => {
    // p ∝ e^[1, 3, 2, 0.5, 2.9]; top-k 2 keeps ids 1 and 4 with renormalised masses ≈ 0.525 / 0.475: top-p 0.5 keeps
    // only id 1. Without renormalising, their raw masses (≈ 0.43, 0.39) would need both to reach 0.5.
    const random = seededRandom(5);
    const ids = new Set(Array.from({ length: 200 }, () => chooseToken(logits, { ...sample, topK: 2, topP: 0.5 }, [], random).id));
    expect([...ids]).toEqual([1]);
  });

  it('typical-p keeps the tokens whose surprisal is closest to the entropy (Meister et al. 2022)', () => {
    // Plain reference: entropy H of softmax(logits); order by |−log p − H|; keep up to mass typical_p.
    const lp = Array.from(logSoftmax(logits));
    const h = -lp.reduce((s, v) => s + Math.exp(v) * v, 0);
    const order = lp.map((v, id) => ({ id, d: Math.abs(-v - h) })).sort((a, b) => a.d - b.d).map((x) => x.id);
    const want = new Set<number>();
    let mass = 0;
    for (const id of order) {
      want.add(id);
      mass += Math.exp(lp[id]);
      if (mass >= 0.5) break;
    }
    const random = seededRandom(9);
    const got = new Set(Array.from({ length: 400 }, () => chooseToken(logits, { ...sample, typicalP: 0.5 }, [], random).id));
    expect([...got].sort()).toEqual([...want].sort());
    expect(want.size).toBeLessThan(logits.length); // the case is not trivial
  });
});
