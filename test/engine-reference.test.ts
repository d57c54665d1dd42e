/** The gateway's forward pass (ONNX trunk, TS router, worker experts, KV cache) against a plain TS reference. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import { ReferenceModel } from './reference/reference-model.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig, maxAbsDiff, request } from './helpers.ts';

const config = tinyConfig();
const dir = writeTinyPackage(config, 3);
const reference = ReferenceModel.fromPackage(dir, config);
const PROMPTS = ['Call me Ishmael.', 'a', 'The quick brown fox jumps over the lazy dog', 'naïve café ☕'];

describe('tiny random package', () => {
  let engine: Engine;
  beforeAll(async () => {
    engine = await Engine.load(engineConfig(dir));
  });
  afterAll(() => engine.close());

  it('matches the reference logits and router choices at every layer', async () => {
    for (const prompt of PROMPTS) {
      const ids = engine.codec.encode(prompt);
      const want = reference.forward(ids);
      const got = await engine.model.forward([{ cache: engine.model.newCache(), tokens: ids }]);
      expect(maxAbsDiff(got.logits[0], want.logits[ids.length - 1])).toBeLessThan(1e-4);
      got.layers.forEach((layer, l) => {
        expect(Array.from(layer.expert)).toEqual(want.router[l].map((r) => r.expert));
        expect(maxAbsDiff(layer.gate, want.router[l].map((r) => r.gate))).toBeLessThan(1e-5);
      });
    }
  });

  it('decodes with the KV cache exactly as a full recompute would (greedy)', async () => {
    const prompt = 'The whale';
    const ids = engine.codec.encode(prompt);
    const expected = reference.greedy(ids, 10);
    const result = await engine.generate(request(prompt, 10));
    expect(result.tokens.map((t) => t.id)).toEqual(expected);
  });

  it('gives each sequence the same logits alone or batched with others', async () => {
    const alone: Float32Array[] = [];
    for (const prompt of PROMPTS) {
      alone.push((await engine.model.forward([{ cache: engine.model.newCache(), tokens: engine.codec.encode(prompt) }])).logits[0]);
    }
    const together = await engine.model.forward(PROMPTS.map((p) => ({ cache: engine.model.newCache(), tokens: engine.codec.encode(p) })));
    together.logits.forEach((logits, i) => expect(maxAbsDiff(logits, alone[i])).toBeLessThan(1e-5));
  });
});

describe('scheduling limits do not change outputs', () => {
  it('chunked prefill (tiny token budget) gives the same greedy tokens', async () => {
    const wide = await Engine.load(engineConfig(dir));
    const narrow = await Engine.load(engineConfig(dir, { limits: { maxBatchTokens: 3 } }));
    try {
      for (const prompt of PROMPTS) {
        const a = await wide.generate(request(prompt, 6));
        const b = await narrow.generate(request(prompt, 6));
        expect(b.tokens.map((t) => t.id)).toEqual(a.tokens.map((t) => t.id));
      }
    } finally {
      await wide.close();
      await narrow.close();
    }
  });
});
