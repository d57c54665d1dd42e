/** Routing math against a naive reference: fp32 softmax, top-1, capacity and overflow, combine. */
import { describe, expect, it } from 'vitest';
import { routerLogits, top1, planDispatch, expertCapacity, gatherRows, combineInto, balancedness, tokensPerExpert } from '../router/index.ts';
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
    combineInto(residual, Float32Array.from([4, 8, 10, 20]), [0, 2], gate, hidden);
    expect(Array.from(residual)).toEqual([3, 5, 2, 2, 12, 21]);
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
