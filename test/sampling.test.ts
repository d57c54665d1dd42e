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
