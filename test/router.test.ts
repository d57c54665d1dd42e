/** Routing math against a naive reference: fp32 softmax, top-1, capacity and overflow, combine. */
import { describe, expect, it } from 'vitest';
import { routerLogits, top1, topK, planDispatch, expertCapacity, gatherRows, combineInto, balancedness, tokensPerExpert } from '../router/index.ts';
import { chooseReplicas, roundRobinPlacement, placementFromFile, PlacementError } from '../src/placement/placement.ts';
import { randomValues } from './fixtures/tiny-package.ts';

function naiveTop1(x: number[][], w: number[][]) {
  return x.map((row) => {
    const logits = w.map((we) => we.reduce((s, v, i) => s + v * row[i], 0));
    const z = logits.reduce((s, l) => s + Math.exp(l), 0);
    const probs = logits.map((l) => Math.exp(l) / z);
    const sorted = probs.map((p, e) => ({ p, e })).sort((a, b) => b.p - a.p || a.e - b.e);
    return { expert: sorted[0].e, gate: sorted[0].p };
  });
}

const rows = (data: Float32Array, n: number, width: number) => Array.from({ length: n }, (_, i) => Array.from(data.subarray(i * width, (i + 1) * width)));

describe('top-1 gating', () => {
  it('matches a naive softmax-and-sort reference', () => {
    const tokens = 50, hidden = 12, experts = 8;
    const x = randomValues(tokens * hidden, 11, 1);
    const w = randomValues(experts * hidden, 12, 1);
    const gating = top1(routerLogits(x, w, tokens, hidden, experts), tokens, experts);
    const want = naiveTop1(rows(x, tokens, hidden), rows(w, experts, hidden));
    expect(Array.from(gating.expert)).toEqual(want.map((r) => r.expert));
    want.forEach((r, t) => expect(gating.gate[t]).toBeCloseTo(r.gate, 6));
    for (let t = 0; t < tokens; t++) {
      const sum = gating.probs.subarray(t * experts, (t + 1) * experts).reduce((a, b) => a + b, 0);
      expect(sum).toBeCloseTo(1, 5);
    }
  });

  it('is stable for large logits and breaks ties towards the lower expert', () => {
    const g = top1(Float32Array.from([1000, 1000, -5, 999]), 1, 4);
    expect(g.expert[0]).toBe(0);
    expect(g.gate[0]).toBeCloseTo(Math.exp(0) / (2 + Math.exp(-1005) + Math.exp(-1)), 6);
  });
});

describe('dispatch plan', () => {
  const choice = Int32Array.from([0, 1, 0, 0, 2, 0, 1, 0]);

  it('without a capacity factor drops nothing and partitions the tokens by expert', () => {
    const plan = planDispatch(choice, 4, null);
    expect(plan.overflow).toEqual([]);
    expect(plan.batches).toEqual([{ expert: 0, rows: [0, 2, 3, 5, 7] }, { expert: 1, rows: [1, 6] }, { expert: 2, rows: [4] }]);
  });

  it('with a capacity factor keeps the first tokens and overflows the rest', () => {
    expect(expertCapacity(8, 4, 1.25)).toBe(3);
    const plan = planDispatch(choice, 4, 1.25);
    expect(plan.batches[0]).toEqual({ expert: 0, rows: [0, 2, 3] });
    expect(plan.overflow).toEqual([5, 7]);
  });

  it('combines gate × expert output into the residual, leaving overflow tokens on the residual alone', () => {
    const hidden = 2;
    const residual = Float32Array.from([1, 1, 2, 2, 3, 3]);
    const gate = Float32Array.from([0.5, 0.25, 0.9]);
    const x = Float32Array.from([10, 20, 30, 40, 50, 60]);
    const picked = gatherRows(x, [0, 2], hidden);
    expect(Array.from(picked)).toEqual([10, 20, 50, 60]);
    combineInto(residual, Float32Array.from([4, 8, 10, 20]), [0, 2], 1, { k: 1, expert: Int32Array.from([1, 0, 1]), gate }, hidden);
    expect(Array.from(residual)).toEqual([3, 5, 2, 2, 12, 21]);
  });
});

describe('top-k routing', () => {
  // Two tokens, four experts; softmax of [2, 1, 0, 3] and of [0, 0, 1, 0] (a tie between experts 0, 1 and 3).
  const logits = Float32Array.from([2, 1, 0, 3, 0, 0, 1, 0]);
  const softmax = (row: number[]) => {
    const e = row.map((v) => Math.exp(v - Math.max(...row)));
    const sum = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / sum);
  };
  const p = [softmax([2, 1, 0, 3]), softmax([0, 0, 1, 0])];

  it('chooses the k most probable experts per token, ties to the lower index, gates the raw probabilities', () => {
    const g = topK(logits, 2, 4, 2);
    expect(g.k).toBe(2);
    expect(Array.from(g.expert)).toEqual([3, 0, 2, 0]);
    [p[0][3], p[0][0], p[1][2], p[1][0]].forEach((want, i) => expect(g.gate[i]).toBeCloseTo(want, 6));
  });

  it('renormalises the chosen probabilities when asked (norm_topk_prob)', () => {
    const g = topK(logits, 2, 4, 2, true);
    expect(Array.from(g.expert)).toEqual([3, 0, 2, 0]);
    expect(g.gate[0]).toBeCloseTo(p[0][3] / (p[0][3] + p[0][0]), 6);
    expect(g.gate[0] + g.gate[1]).toBeCloseTo(1, 6);
    expect(g.gate[2] + g.gate[3]).toBeCloseTo(1, 6);
  });

  it('is top1 when k = 1, and refuses k outside 1..experts', () => {
    const a = topK(logits, 2, 4, 1);
    const b = top1(logits, 2, 4);
    expect(Array.from(a.expert)).toEqual(Array.from(b.expert));
    expect(Array.from(a.gate)).toEqual(Array.from(b.gate));
    expect(() => topK(logits, 2, 4, 5)).toThrow(/1\.\.4/);
    expect(() => topK(logits, 2, 4, 0)).toThrow(RangeError);
  });

  it('dispatches every assignment, counts them against the capacity, and combines each token\'s k outputs', () => {
    // Tokens' choices (k = 2): t0 → 3, 0; t1 → 2, 0; t2 → 3, 1.
    const choice = Int32Array.from([3, 0, 2, 0, 3, 1]);
    const plan = planDispatch(choice, 4, null, 2);
    expect(plan.batches).toEqual([{ expert: 0, rows: [0, 1] }, { expert: 1, rows: [2] }, { expert: 2, rows: [1] }, { expert: 3, rows: [0, 2] }]);
    expect(plan.capacity).toBe(6);
    // Capacity ceil(0.5 · 6 / 4) = 1 assignment per expert: expert 0 drops t1, expert 3 drops t2.
    const tight = planDispatch(choice, 4, 0.5, 2);
    expect(tight.capacity).toBe(1);
    expect(tight.batches.map((b) => b.rows)).toEqual([[0], [2], [1], [0]]);
    expect(tight.overflow).toEqual([1, 2]);

    const gating = { k: 2, expert: choice, gate: Float32Array.from([0.5, 0.25, 0.75, 0.125, 1, 0.5]) };
    const residual = new Float32Array(3);
    const out = (v: number, n: number) => new Float32Array(n).fill(v);
    for (const b of plan.batches) combineInto(residual, out(b.expert + 1, b.rows.length), b.rows, b.expert, gating, 1);
    // t0: 0.25·1 + 0.5·4; t1: 0.125·1 + 0.75·3; t2: 0.5·2 + 1·4
    expect(Array.from(residual)).toEqual([2.25, 2.375, 5]);
  });
});

describe('statistics and replicas', () => {
  it('counts tokens per expert and balancedness', () => {
    expect(tokensPerExpert(Int32Array.from([0, 0, 3]), 4)).toEqual([2, 0, 0, 1]);
    expect(balancedness([5, 5, 5, 5])).toBe(1);
    expect(balancedness([8, 0, 0, 0])).toBe(0.25);
  });

  it('places round-robin and spreads replica load', () => {
    const p = roundRobinPlacement(2, 4, 3);
    expect(p.hosts[0].map((h) => h[0])).toEqual([0, 1, 2, 0]);
    expect(p.hosts[1].map((h) => h[0])).toEqual([1, 2, 0, 1]);
    const replicated = { workers: 2, hosts: [[[0, 1], [0, 1]]] };
    const hosts = chooseReplicas(replicated, 0, [{ expert: 0, rows: [0, 1, 2] }, { expert: 1, rows: [3, 4] }]);
    expect(hosts).toEqual([0, 1]);
  });

  it('rejects a placement that leaves an expert unplaced or names a missing worker', () => {
    expect(() => placementFromFile({ workers: 2, assignments: [{ layer: 0, expert: 0, workers: [0] }] }, 1, 2)).toThrow(/unplaced \(layer\.expert\): 0\.1/);
    expect(() => placementFromFile({ workers: 1, assignments: [{ layer: 0, expert: 0, workers: [3] }] }, 1, 1)).toThrow(PlacementError);
  });
});
