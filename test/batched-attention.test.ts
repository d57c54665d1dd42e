/**
 * Batched attention (src/engine/attention.ts) against the per-sequence path it replaced and the TS reference:
 * mixed prefill and decode lengths in one step, empty and long pasts; a sequence's outputs do not depend on the
 * other sequences of its step (bit for bit).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { MoeModel, splitMicroBatches, type SequenceInput, type StepOutput } from '../src/engine/model.ts';
import { LocalExpertRunner } from '../src/engine/expert-runner.ts';
import { loadModelPackage } from '../src/engine/package.ts';
import { groupSequences, type StepSequence } from '../src/engine/attention.ts';
import { KvCache } from '../src/engine/kv-cache.ts';
import { ReferenceModel } from './reference/reference-model.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { maxAbsDiff } from './helpers.ts';

const config = tinyConfig({ max_position_embeddings: 256 });
const dir = writeTinyPackage(config, 11);
const reference = ReferenceModel.fromPackage(dir, config);

/** Deterministic pseudo-random token ids below 256 (byte tokens). */
function tokens(count: number, seed: number): number[] {
  let s = seed * 2654435761;
  return Array.from({ length: count }, () => ((s = (s * 1103515245 + 12345) >>> 0) >>> 8) % 256);
}

/** fusedAttentionMaxFloats 0: always the two-run path (projection, then core); the default fuses small steps. */
async function load(attention: 'batched' | 'per-sequence', fusedAttentionMaxFloats?: number, kvSlab?: boolean, microBatchMinTokens?: number): Promise<MoeModel> {
  const pkg = loadModelPackage(dir);
  return MoeModel.load(pkg, LocalExpertRunner.fromPackage(pkg), {
    // Length buckets never merge here (the tiny width would merge them all), so decode steps span several slabs.
    capacityFactor: null, trunkThreads: 1, executionProviders: ['cpu'], attention, fusedAttentionMaxFloats, kvSlab, bucketMergeFloats: 0,
    microBatchMinTokens,
  });
}

/** A cache holding `ids` (prefilled with the model alone, in one run). */
async function prefilled(model: MoeModel, ids: number[]): Promise<KvCache> {
  const cache = model.newCache();
  if (ids.length > 0) await model.forward([{ cache, tokens: ids }]);
  return cache;
}

describe('batched attention', () => {
  let batched: MoeModel;
  let twoRun: MoeModel;
  let perSequence: MoeModel;
  beforeAll(async () => {
    [batched, twoRun, perSequence] = await Promise.all([load('batched'), load('batched', 0), load('per-sequence')]);
  });

  // (past length, new tokens) per sequence: decode after empty/short/long pasts, prefill chunks after none or some.
  const SHAPES: Array<[number, number]> = [[0, 1], [5, 1], [120, 1], [0, 9], [17, 4], [64, 1], [3, 23], [0, 2], [90, 7]];

  it('equals the per-sequence path (logits at every position, cache rows) for a mixed step', async () => {
    const pasts = SHAPES.map(([p], i) => tokens(p, i + 1));
    const news = SHAPES.map(([, n], i) => tokens(n, 100 + i));
    const run = async (model: MoeModel) => {
      const caches = await Promise.all(pasts.map((p) => prefilled(model, p)));
      const out = await model.forward(caches.map((cache, i): SequenceInput => ({ cache, tokens: news[i], allPositions: true })));
      return { caches, out };
    };
    const a = await run(batched);
    const b = await run(perSequence);
    SHAPES.forEach((_, i) => expect(maxAbsDiff(a.out.logits[i], b.out.logits[i])).toBeLessThan(1e-5));
    a.out.layers.forEach((layer, l) => expect(Array.from(layer.expert)).toEqual(Array.from(b.out.layers[l].expert)));
    SHAPES.forEach(([p, n], i) => {
      expect(a.caches[i].length).toBe(p + n);
      for (let l = 0; l < config.num_hidden_layers; l++) {
        expect(maxAbsDiff(a.caches[i].past(l).keys, b.caches[i].past(l).keys)).toBeLessThan(1e-5);
        expect(maxAbsDiff(a.caches[i].past(l).values, b.caches[i].past(l).values)).toBeLessThan(1e-5);
      }
    });
  });

  it('gives bit-identical outputs and caches on the fused (one run per layer) and two-run paths', async () => {
    for (const shapes of [SHAPES, SHAPES.filter(([, n]) => n === 1), [[37, 1]] as Array<[number, number]>]) {
      const run = async (model: MoeModel) => {
        const caches = await Promise.all(shapes.map(([p], i) => prefilled(model, tokens(p, i + 1))));
        const out = await model.forward(caches.map((cache, i) => ({ cache, tokens: tokens(shapes[i][1], 100 + i), allPositions: true })));
        return { caches, out };
      };
      const a = await run(batched);
      const b = await run(twoRun);
      shapes.forEach((_, i) => {
        expect(maxAbsDiff(a.out.logits[i], b.out.logits[i])).toBe(0);
        expect(maxAbsDiff(a.caches[i].past(1).keys, b.caches[i].past(1).keys)).toBe(0);
      });
    }
  });

  it('keeps decode groups\' keys in slabs across steps with joins, departures, prefill, rewinds and bucket changes, bit for bit', async () => {
    const plain = await load('batched', 0, false);
    // Each model gets the same schedule on its own caches; logits of every step must be identical.
    const schedule = async (model: MoeModel) => {
      const caches = Array.from({ length: 6 }, () => model.newCache());
      const logits: Float32Array[] = [];
      const step = async (entries: Array<[number, number[]]>) => {
        const out = await model.forward(entries.map(([i, ids]) => ({ cache: caches[i], tokens: ids })));
        logits.push(...out.logits);
      };
      await step([[0, tokens(20, 1)], [1, tokens(5, 2)], [2, tokens(100, 3)]]);
      for (let t = 0; t < 3; t++) await step([[0, [t]], [1, [t + 1]], [2, [t + 2]]]);
      await step([[0, [9]], [2, [8]], [3, tokens(12, 4)]]); // 1 sits out, 3 prefills
      for (let t = 0; t < 2; t++) await step([[3, [t]], [2, [t]], [1, [t]], [0, [t]]]); // new order, 3 joins
      caches[2].length = 90; // a rewind: the slab's copy of 2 is stale
      await step([[2, [5]], [0, [6]], [4, tokens(9, 5)]]);
      for (let t = 0; t < 70; t++) await step([[0, [t % 200]], [2, [(t * 3) % 200]], [4, [t % 7]]]); // 2 moves past 128 positions: another bucket
      await step([[5, tokens(3, 6)], [4, [1]]]);
      return logits;
    };
    const a = await schedule(twoRun);
    const b = await schedule(plain);
    expect(a.length).toBe(b.length);
    a.forEach((l, i) => expect(maxAbsDiff(l, b[i])).toBe(0));
  });

  it('matches the reference model at every position of a mixed step', async () => {
    const pick: Array<[number, number]> = [[0, 6], [40, 1], [11, 5], [0, 1]];
    const ids = pick.map(([p, n], i) => tokens(p + n, 50 + i));
    const caches = await Promise.all(pick.map(([p], i) => prefilled(batched, ids[i].slice(0, p))));
    const out = await batched.forward(caches.map((cache, i) => ({ cache, tokens: ids[i].slice(pick[i][0]), allPositions: true })));
    pick.forEach(([p, n], i) => {
      const want = reference.forward(ids[i]).logits;
      for (let t = 0; t < n; t++) {
        expect(maxAbsDiff(out.logits[i].subarray(t * config.vocab_size, (t + 1) * config.vocab_size), want[p + t])).toBeLessThan(1e-4);
      }
    });
  });

  it('gives a sequence bit-identical logits alone or in a step with longer, shorter and prefilling sequences', async () => {
    const mine = tokens(30, 7);
    const others: Array<[number, number]> = [[150, 1], [2, 1], [0, 40], [60, 3]];
    // Decode: one token after a 30-token past; prefill: an 8-token chunk after it.
    for (const n of [1, 8]) {
      const next = tokens(n, 8);
      const alone = await batched.forward([{ cache: await prefilled(batched, mine), tokens: next }]);
      const othersIn = await Promise.all(others.map(async ([p, m], i) => ({ cache: await prefilled(batched, tokens(p, 200 + i)), tokens: tokens(m, 300 + i) })));
      const together = await batched.forward([othersIn[0], othersIn[1], { cache: await prefilled(batched, mine), tokens: next }, othersIn[2], othersIn[3]]);
      expect(maxAbsDiff(together.logits[2], alone.logits[0])).toBe(0);
    }
  });

  it('continues decoding from caches written by the batched path as the per-sequence path does (greedy)', async () => {
    const prompts = [tokens(12, 1), tokens(3, 2), tokens(33, 3)];
    const greedy = async (model: MoeModel) => {
      const caches = prompts.map(() => model.newCache());
      let out = await model.forward(caches.map((cache, i) => ({ cache, tokens: prompts[i] })));
      const chosen: number[][] = prompts.map(() => []);
      for (let step = 0; step < 6; step++) {
        const next = out.logits.map((l) => l.indexOf(Math.max(...l)));
        next.forEach((t, i) => chosen[i].push(t));
        out = await model.forward(caches.map((cache, i) => ({ cache, tokens: [next[i]] })));
      }
      return chosen;
    };
    expect(await greedy(batched)).toEqual(await greedy(perSequence));
  });
});

describe('two micro-batches (attention of one overlapping the experts of the other)', () => {
  const ids = (n: number, seed: number) => tokens(n, seed);

  it('splits in input order into halves of about equal tokens, only when the step is large enough', () => {
    const input = (n: number): SequenceInput => ({ cache: new KvCache(1, 4), tokens: ids(n, n) });
    const sizes = (parts: SequenceInput[][]) => parts.map((p) => p.map((s) => s.tokens.length));
    expect(sizes(splitMicroBatches([1, 1, 1, 1, 1, 1, 1, 1].map(input), 8))).toEqual([[1, 1, 1, 1], [1, 1, 1, 1]]);
    expect(sizes(splitMicroBatches([1, 1, 1, 1, 1, 1, 1].map(input), 8))).toEqual([[1, 1, 1, 1, 1, 1, 1]]); // 7 < 8 tokens
    expect(sizes(splitMicroBatches([20, 1, 1, 1].map(input), 8))).toEqual([[20], [1, 1, 1]]);
    expect(sizes(splitMicroBatches([1, 1, 1, 20].map(input), 8))).toEqual([[1, 1, 1], [20]]);
    expect(sizes(splitMicroBatches([5, 3, 4, 4].map(input), 8))).toEqual([[5, 3], [4, 4]]);
    expect(sizes(splitMicroBatches([30].map(input), 8))).toEqual([[30]]); // one sequence is never split
  });

  it('gives bit-identical logits, caches and layer traces to one batch, over steps whose halves change', async () => {
    const [whole, halves] = await Promise.all([load('batched', undefined, undefined, Infinity), load('batched', undefined, undefined, 2)]);
    const schedule = async (model: MoeModel) => {
      const caches = Array.from({ length: 9 }, () => model.newCache());
      const steps: StepOutput[] = [];
      const step = async (entries: Array<[number, number[]]>) => steps.push(await model.forward(entries.map(([i, t]) => ({ cache: caches[i], tokens: t }))));
      await step([[0, ids(20, 1)], [1, ids(5, 2)], [2, ids(100, 3)], [3, ids(7, 4)]]);
      for (let t = 0; t < 4; t++) await step([[0, [t]], [1, [t + 1]], [2, [t + 2]], [3, [t + 3]]]);
      await step([[4, ids(30, 5)], [0, [9]], [2, [8]], [5, ids(2, 6)]]); // a long prefill takes a half to itself
      for (let t = 0; t < 40; t++) {
        // Sequences join and leave, so a sequence's half (and its slab) changes from step to step.
        const active = [0, 1, 2, 3, 4, 5, 6, 7, 8].filter((i) => (i + t) % 5 !== 0 && caches[i].length > 0 || (i >= 6 && t === 10 + i));
        await step(active.map((i) => [i, caches[i].length === 0 ? ids(3 + i, 40 + i) : [(t * 7 + i) % 256]]));
      }
      return { steps, caches };
    };
    const a = await schedule(whole);
    const b = await schedule(halves);
    expect(b.steps.length).toBe(a.steps.length);
    a.steps.forEach((step, k) => {
      step.logits.forEach((l, i) => expect(maxAbsDiff(l, b.steps[k].logits[i])).toBe(0));
      step.layers.forEach((layer, l) => {
        const other = b.steps[k].layers[l];
        expect(Array.from(other.expert)).toEqual(Array.from(layer.expert));
        expect(Array.from(other.gate)).toEqual(Array.from(layer.gate));
        expect(other.tokensPerExpert).toEqual(layer.tokensPerExpert);
        expect(other.workers.reduce((n, w) => n + w.tokens, 0)).toBe(layer.workers.reduce((n, w) => n + w.tokens, 0));
      });
    });
    a.caches.forEach((cache, i) => {
      expect(b.caches[i].length).toBe(cache.length);
      if (cache.length > 0) expect(maxAbsDiff(b.caches[i].past(1).keys, cache.past(1).keys)).toBe(0);
    });
  });
});

describe('groupSequences', () => {
  const seq = (past: number, n: number, row = 0): StepSequence => {
    const cache = new KvCache(1, 4);
    cache.length = past;
    return { cache, row, n };
  };
  it('puts decode tokens in one group and keeps a long prefill chunk apart from short ones', () => {
    const groups = groupSequences([seq(10, 1), seq(0, 200), seq(300, 1), seq(0, 3), seq(4, 2)]);
    expect(groups[0].map((s) => s.n)).toEqual([1, 1]);
    expect(groups.slice(1).map((g) => g.map((s) => s.n))).toEqual([[2, 3], [200]]);
  });
});
