/**
 * Batched attention (src/engine/attention.ts, cached-attention.ts) against the per-sequence path it replaced and the
 * TS reference model: mixed prefill and decode lengths in one step, empty and long pasts; a sequence's outputs do
 * not depend on the other sequences of its step, nor on how its prompt was chunked (bit for bit); the native trunk
 * stages against the onnxruntime graphs for every architecture's features.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { MoeModel, splitMicroBatches, type ModelOptions, type SequenceInput, type StepOutput } from '../src/engine/model.ts';
import { LocalExpertRunner } from '../src/engine/expert-runner.ts';
import { loadModelPackage } from '../src/engine/package.ts';
import { KvCache } from '../src/engine/kv-cache.ts';
import { ReferenceModel } from './reference/reference-model.ts';
import { tinyConfig, writeTinyPackage, type TinyPackageOptions } from './fixtures/tiny-package.ts';
import { maxAbsDiff } from './helpers.ts';

const config = tinyConfig({ max_position_embeddings: 256 });
const dir = writeTinyPackage(config, 11);
const reference = ReferenceModel.fromPackage(dir, config);

/** Deterministic pseudo-random token ids below 256 (byte tokens). */
function tokens(count: number, seed: number): number[] {
  let s = seed * 2654435761;
  return Array.from({ length: count }, () => ((s = (s * 1103515245 + 12345) >>> 0) >>> 8) % 256);
}

async function load(attention: 'batched' | 'per-sequence', options: Partial<ModelOptions> = {}): Promise<MoeModel> {
  const pkg = loadModelPackage(dir);
  return MoeModel.load(pkg, LocalExpertRunner.fromPackage(pkg), {
    capacityFactor: null, trunkThreads: 1, executionProviders: ['cpu'], attention, ...options,
  });
}

/** A cache holding `ids` (prefilled with the model alone, in one run). */
async function prefilled(model: MoeModel, ids: number[]): Promise<KvCache> {
  const cache = model.newCache();
  if (ids.length > 0) await model.forward([{ cache, tokens: ids }]);
  return cache;
}

// (past length, new tokens) per sequence: decode after empty/short/long pasts, prefill chunks after none or some.
const SHAPES: Array<[number, number]> = [[0, 1], [5, 1], [120, 1], [0, 9], [17, 4], [64, 1], [3, 23], [0, 2], [90, 7]];

describe('batched attention', () => {
  let batched: MoeModel;
  let typescript: MoeModel;
  let perSequence: MoeModel;
  beforeAll(async () => {
    [batched, typescript, perSequence] = await Promise.all([load('batched'), load('batched', { attentionKernel: 'typescript' }), load('per-sequence')]);
  });


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

  it('gives the same logits with the native kernel and its TypeScript twin', async () => {
    // Where the addon is not built both models run the TypeScript kernel and agree trivially; CI builds it.
    const run = async (model: MoeModel) => {
      const caches = await Promise.all(SHAPES.map(([p], i) => prefilled(model, tokens(p, i + 1))));
      return model.forward(caches.map((cache, i) => ({ cache, tokens: tokens(SHAPES[i][1], 100 + i), allPositions: true })));
    };
    const [a, b] = [await run(batched), await run(typescript)];
    SHAPES.forEach((_, i) => expect(maxAbsDiff(a.logits[i], b.logits[i])).toBeLessThan(1e-5));
  });

  it('gives bit-identical logits and caches whether a prompt is prefilled at once or in chunks', async () => {
    const prompt = tokens(61, 12);
    const decode = async (cache: KvCache, from: Float32Array) => {
      const logits = [from];
      for (let t = 0; t < 4; t++) logits.push((await batched.forward([{ cache, tokens: [(t * 37) % 256] }])).logits[0]);
      return logits;
    };
    const whole = batched.newCache();
    const a = await decode(whole, (await batched.forward([{ cache: whole, tokens: prompt }])).logits[0]);
    const chunked = batched.newCache();
    let last: Float32Array = new Float32Array(0);
    for (const [from, to] of [[0, 7], [7, 20], [20, 21], [21, 61]]) {
      // Each chunk shares its step with an unrelated sequence, as under load.
      const other = { cache: await prefilled(batched, tokens(9, from + 1)), tokens: tokens(3, from + 2) };
      last = (await batched.forward([other, { cache: chunked, tokens: prompt.slice(from, to) }])).logits[1];
    }
    const b = await decode(chunked, last);
    a.forEach((l, i) => expect(maxAbsDiff(l, b[i])).toBe(0));
    for (let l = 0; l < config.num_hidden_layers; l++) expect(maxAbsDiff(whole.past(l).keys, chunked.past(l).keys)).toBe(0);
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

describe('the native trunk (native-trunk.ts) against the onnxruntime graphs', () => {
  // Each architecture feature the trunk stages carry: q/k norms or none, q/k/v biases, grouped-query heads, a
  // residual multiplier, a shared expert with and without its sigmoid gate; widths multiples of 8 as the kernel needs.
  const VARIANTS: Array<[string, Partial<typeof config>, TinyPackageOptions['architecture']]> = [
    ['OLMoE (q/k norms)', {}, undefined],
    ['Mixtral (no q/k norms, grouped-query)', { model_type: 'mixtral', hidden_size: 32, num_attention_heads: 4, num_key_value_heads: 2, qk_norm: false }, 'mixtral'],
    ['Qwen2-MoE (biases, gated shared expert)', {
      model_type: 'qwen2_moe', hidden_size: 32, num_attention_heads: 4, num_key_value_heads: 2, qk_norm: false, attention_bias: true,
      shared_expert_intermediate_size: 40, shared_expert_gated: true,
    }, 'qwen2_moe'],
    ['Granite-MoE (residual multiplier)', {
      model_type: 'granitemoe', hidden_size: 32, num_attention_heads: 4, num_key_value_heads: 2, qk_norm: false, tie_word_embeddings: true,
      embedding_multiplier: 12, attention_multiplier: 0.015625, residual_multiplier: 0.22, logits_scaling: 6,
    }, 'granitemoe'],
  ];
  for (const [name, overrides, architecture] of VARIANTS) {
    it(`${name}: logits at every position and cache rows within 1e-5, the same routing`, async () => {
      const c = tinyConfig({ max_position_embeddings: 256, ...overrides });
      const pkg = loadModelPackage(writeTinyPackage(c, 23, undefined, architecture ? { architecture } : undefined));
      const make = (trunkKernel: 'native' | 'onnx') => MoeModel.load(pkg, LocalExpertRunner.fromPackage(pkg), {
        capacityFactor: null, trunkThreads: 1, executionProviders: ['cpu'], trunkKernel,
      });
      const [native, onnx] = await Promise.all([make('native'), make('onnx')]);
      expect(onnx.trunkKernel).toBe('onnx');
      // Where the addon is not built 'native' falls back to onnx and says why; CI builds it.
      if (native.trunkKernel === 'onnx') expect(native.trunkKernelNote).toMatch(/not built|SWITCHYARD_NATIVE/);
      const run = async (model: MoeModel) => {
        const caches = await Promise.all(SHAPES.map(([p], i) => prefilled(model, tokens(p, i + 1))));
        const out = await model.forward(caches.map((cache, i) => ({ cache, tokens: tokens(SHAPES[i][1], 100 + i), allPositions: true })));
        return { caches, out };
      };
      const [a, b] = [await run(native), await run(onnx)];
      SHAPES.forEach((_, i) => expect(maxAbsDiff(a.out.logits[i], b.out.logits[i]), `sequence ${i}`).toBeLessThan(1e-5));
      a.out.layers.forEach((layer, l) => expect(Array.from(layer.expert)).toEqual(Array.from(b.out.layers[l].expert)));
      SHAPES.forEach((_, i) => {
        for (let l = 0; l < c.num_hidden_layers; l++) expect(maxAbsDiff(a.caches[i].past(l).keys, b.caches[i].past(l).keys)).toBeLessThan(1e-5);
      });
    });
  }

  it('runs a step of zero tokens, and steps longer than its 64-token chunks, as the onnxruntime path does', async () => {
    const pkg = loadModelPackage(dir);
    const make = (trunkKernel: 'native' | 'onnx') => MoeModel.load(pkg, LocalExpertRunner.fromPackage(pkg), {
      capacityFactor: null, trunkThreads: 1, executionProviders: ['cpu'], trunkKernel,
    });
    const [native, onnx] = await Promise.all([make('native'), make('onnx')]);
    const empty = await Promise.all([native, onnx].map((m) => m.forward([{ cache: m.newCache(), tokens: [] }])));
    expect(Array.from(empty[0].logits[0])).toEqual(Array.from(empty[1].logits[0]));
    const long = tokens(150, 77);
    const [a, b] = [await native.forward([{ cache: native.newCache(200), tokens: long, allPositions: true }]),
      await onnx.forward([{ cache: onnx.newCache(200), tokens: long, allPositions: true }])];
    expect(maxAbsDiff(a.logits[0], b.logits[0])).toBeLessThan(1e-5);
  });

  it("'auto' keeps onnxruntime for other execution providers, and a model whose widths do not fit the kernel", async () => {
    const pkg = loadModelPackage(dir);
    const model = await MoeModel.load(pkg, LocalExpertRunner.fromPackage(pkg), { capacityFactor: null, trunkThreads: 1, executionProviders: ['webgpu', 'cpu'] });
    expect(model.trunkKernel).toBe('onnx');
    expect(model.trunkKernelNote).toMatch(/not built|executionProviders\.trunk is \["webgpu","cpu"\]/);
    const odd = loadModelPackage(writeTinyPackage(tinyConfig({ hidden_size: 12, num_attention_heads: 2, num_key_value_heads: 2 }), 5));
    const narrow = await MoeModel.load(odd, LocalExpertRunner.fromPackage(odd), { capacityFactor: null, trunkThreads: 1, executionProviders: ['cpu'], trunkKernel: 'native' });
    expect(narrow.trunkKernel).toBe('onnx');
    expect(narrow.trunkKernelNote).toMatch(/not built|must be multiples of 8/);
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
    const [whole, halves] = await Promise.all([load('batched', { microBatchMinTokens: Infinity }), load('batched', { microBatchMinTokens: 2 })]);
    const schedule = async (model: MoeModel) => {
      const caches = Array.from({ length: 9 }, () => model.newCache());
      const steps: StepOutput[] = [];
      const step = async (entries: Array<[number, number[]]>) => steps.push(await model.forward(entries.map(([i, t]) => ({ cache: caches[i], tokens: t }))));
      await step([[0, ids(20, 1)], [1, ids(5, 2)], [2, ids(100, 3)], [3, ids(7, 4)]]);
      for (let t = 0; t < 4; t++) await step([[0, [t]], [1, [t + 1]], [2, [t + 2]], [3, [t + 3]]]);
      await step([[4, ids(30, 5)], [0, [9]], [2, [8]], [5, ids(2, 6)]]); // a long prefill takes a half to itself
      for (let t = 0; t < 40; t++) {
        // Sequences join and leave, so a sequence's half changes from step to step.
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
