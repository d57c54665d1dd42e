/**
 * Grouped-query attention (num_key_value_heads < num_attention_heads): the KV cache holds only the key/value heads,
 * each serving `group` query heads. The gateway (per-sequence attention, and batched attention with the native kernel
 * and its TypeScript twin) against the TS reference, batch invariance bit for bit, and greedy decoding through the cache.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertOlmoeToGguf } from '../src/convert/olmoe-to-gguf.ts';
import { Engine } from '../src/engine/engine.ts';
import { LocalExpertRunner } from '../src/engine/expert-runner.ts';
import { MoeModel } from '../src/engine/model.ts';
import { loadModelPackage } from '../src/engine/package.ts';
import { argmax } from '../src/engine/sampling.ts';
import { ReferenceModel } from './reference/reference-model.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig, maxAbsDiff, request } from './helpers.ts';

const PROMPTS = ['Call me Ishmael.', 'a', 'The quick brown fox jumps over the lazy dog', 'naïve café ☕'];

for (const [heads, kvHeads] of [[4, 2], [4, 1]] as const) {
  describe(`${heads} query heads over ${kvHeads} key/value head${kvHeads > 1 ? 's' : ''}`, () => {
    const config = tinyConfig({
      hidden_size: 32, num_attention_heads: heads, num_key_value_heads: kvHeads,
      num_experts: 4, num_experts_per_tok: 2, max_position_embeddings: 256,
    });
    const dir = writeTinyPackage(config, 70 + kvHeads);
    const reference = ReferenceModel.fromPackage(dir, config);
    let engine: Engine;
    beforeAll(async () => {
      engine = await Engine.load(engineConfig(dir, { workers: 2 }));
    });
    afterAll(() => engine.close());

    it('keeps only the key/value heads in the cache', () => {
      expect(engine.model.newCache().rowSize).toBe(kvHeads * (32 / heads));
    });

    it('matches the reference at every position, on every attention path', async () => {
      const pkg = loadModelPackage(dir);
      const models = await Promise.all([
        MoeModel.load(pkg, LocalExpertRunner.fromPackage(pkg), { capacityFactor: null, trunkThreads: 1, executionProviders: ['cpu'], attention: 'per-sequence' }),
        MoeModel.load(pkg, LocalExpertRunner.fromPackage(pkg), { capacityFactor: null, trunkThreads: 1, executionProviders: ['cpu'], attentionKernel: 'typescript' }),
        Promise.resolve(engine.model),
      ]);
      for (const model of models) {
        for (const prompt of PROMPTS) {
          const ids = engine.codec.encode(prompt);
          const want = reference.forward(ids).logits;
          const got = await model.forward([{ cache: model.newCache(), tokens: ids }], { allPositions: true });
          ids.forEach((_, t) => expect(maxAbsDiff(got.logits[0].subarray(t * config.vocab_size, (t + 1) * config.vocab_size), want[t])).toBeLessThan(1e-4));
        }
      }
    });

    it('decodes through the KV cache as a full recompute would, alone and batched (bit for bit)', async () => {
      const model = engine.model;
      const greedy = async (batch: string[]) => {
        const caches = batch.map(() => model.newCache());
        let out = await model.forward(batch.map((p, i) => ({ cache: caches[i], tokens: engine.codec.encode(p) })));
        const logits: Float32Array[][] = batch.map(() => []);
        for (let step = 0; step < 6; step++) {
          out.logits.forEach((l, i) => logits[i].push(l));
          out = await model.forward(caches.map((cache, i) => ({ cache, tokens: [argmax(out.logits[i])] })));
        }
        return logits;
      };
      const together = await greedy(PROMPTS);
      for (const [i, prompt] of PROMPTS.entries()) {
        const alone = await greedy([prompt]);
        alone[0].forEach((l, step) => expect(maxAbsDiff(l, together[i][step])).toBe(0));
      }
      const result = await engine.generate(request('The whale', 8), { cache: false });
      expect(result.tokens.map((t) => t.id)).toEqual(reference.greedy(engine.codec.encode('The whale'), 8));
    });
  });
}

describe('grouped-query attention config', () => {
  it('does not convert to GGUF (llama.cpp\'s OLMoE graph wants k_norm over all heads)', () => {
    const dir = writeTinyPackage(tinyConfig({ hidden_size: 32, num_attention_heads: 4, num_key_value_heads: 2 }), 76);
    expect(() => convertOlmoeToGguf({ modelDir: dir, outFile: join(dir, 'model.gguf') })).toThrow(/grouped-query attention.*k_norm over all 4 heads/);
  });

  it('refuses key/value heads that do not divide the query heads, naming the field', async () => {
    const dir = writeTinyPackage(tinyConfig({ hidden_size: 24, num_attention_heads: 3, num_key_value_heads: 2 }), 75);
    await expect(Engine.load(engineConfig(dir))).rejects.toThrow(/num_key_value_heads 2 must divide num_attention_heads 3/);
  });
});
