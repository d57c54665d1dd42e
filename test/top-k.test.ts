/**
 * Top-k routing (num_experts_per_tok > 1) end to end on tiny random packages, with and without norm_topk_prob: the
 * gateway (ONNX trunk, TS router, worker pool, KV cache) against the plain TS reference, batch invariance (bit for
 * bit), capacity counting assignments, and the load telemetry counting each assignment.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { convertOlmoeToGguf } from '../src/convert/olmoe-to-gguf.ts';
import { Engine } from '../src/engine/engine.ts';
import { checkModelPackage } from '../src/engine/package-check.ts';
import { ReferenceModel } from './reference/reference-model.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig, maxAbsDiff, request } from './helpers.ts';

const PROMPTS = ['Call me Ishmael.', 'a', 'The quick brown fox jumps over the lazy dog', 'naïve café ☕'];

for (const [k, renormalize] of [[2, false], [2, true], [3, true]] as const) {
  describe(`top-${k} routing, norm_topk_prob ${renormalize}`, () => {
    const config = tinyConfig({ num_experts: 6, num_experts_per_tok: k, norm_topk_prob: renormalize, max_position_embeddings: 128 });
    const dir = writeTinyPackage(config, 20 + k);
    const reference = ReferenceModel.fromPackage(dir, config);
    let engine: Engine;
    beforeAll(async () => {
      engine = await Engine.load(engineConfig(dir, { workers: 2 }));
    });
    afterAll(() => engine.close());

    it('matches the reference logits, choices and gates at every layer', async () => {
      for (const prompt of PROMPTS) {
        const ids = engine.codec.encode(prompt);
        const want = reference.forward(ids);
        const got = await engine.model.forward([{ cache: engine.model.newCache(), tokens: ids }], { allPositions: true });
        ids.forEach((_, t) => {
          expect(maxAbsDiff(got.logits[0].subarray(t * config.vocab_size, (t + 1) * config.vocab_size), want.logits[t])).toBeLessThan(1e-4);
        });
        got.layers.forEach((layer, l) => {
          expect(layer.k).toBe(k);
          expect(Array.from(layer.expert)).toEqual(want.router[l].flatMap((r) => r.choices.map((ch) => ch.expert)));
          expect(maxAbsDiff(layer.gate, want.router[l].flatMap((r) => r.choices.map((ch) => ch.gate)))).toBeLessThan(1e-5);
          // Load counts assignments: k per token.
          expect(layer.tokensPerExpert.reduce((a, b) => a + b, 0)).toBe(ids.length * k);
        });
        if (renormalize) {
          for (const layer of got.layers) {
            for (let t = 0; t < ids.length; t++) expect(layer.gate.subarray(t * k, (t + 1) * k).reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
          }
        }
      }
    });

    it('gives each sequence bit-identical logits alone or batched with others', async () => {
      const alone: Float32Array[] = [];
      for (const prompt of PROMPTS) {
        alone.push((await engine.model.forward([{ cache: engine.model.newCache(), tokens: engine.codec.encode(prompt) }])).logits[0]);
      }
      const together = await engine.model.forward(PROMPTS.map((p) => ({ cache: engine.model.newCache(), tokens: engine.codec.encode(p) })));
      together.logits.forEach((logits, i) => expect(maxAbsDiff(logits, alone[i])).toBe(0));
    });

    it('generates the reference\'s greedy tokens through the KV cache', async () => {
      const prompt = 'The whale';
      const expected = reference.greedy(engine.codec.encode(prompt), 8);
      const result = await engine.generate(request(prompt, 8), { cache: false });
      expect(result.tokens.map((t) => t.id)).toEqual(expected);
    });

    it('reports k experts per token and the active parameters of k experts', () => {
      const info = engine.info();
      expect(info.expertsPerToken).toBe(k);
      const perExpert = 3 * config.hidden_size * config.intermediate_size;
      expect(info.parameters.total - info.parameters.activePerToken).toBe(config.num_hidden_layers * (config.num_experts - k) * perExpert);
    });
  });
}

describe('top-k with a capacity factor', () => {
  it('counts every assignment against the capacity', async () => {
    const config = tinyConfig({ num_experts: 4, num_experts_per_tok: 2, max_position_embeddings: 128 });
    const dir = writeTinyPackage(config, 41);
    const engine = await Engine.load(engineConfig(dir, { workers: 2, routing: { capacityFactor: 1 } }));
    try {
      const ids = engine.codec.encode('The quick brown fox jumps over the lazy dog');
      const out = await engine.model.forward([{ cache: engine.model.newCache(), tokens: ids }]);
      for (const layer of out.layers) {
        expect(layer.capacity).toBe(Math.ceil((ids.length * 2) / 4));
        expect(layer.tokensPerExpert.every((n) => n <= layer.capacity)).toBe(true);
        expect(layer.tokensPerExpert.reduce((a, b) => a + b, 0) + layer.overflow).toBe(ids.length * 2);
      }
    } finally {
      await engine.close();
    }
  });

  it('converts to GGUF only without norm_topk_prob (llama.cpp\'s OLMoE graph does not renormalise)', () => {
    const renormalized = writeTinyPackage(tinyConfig({ num_experts: 4, num_experts_per_tok: 2, norm_topk_prob: true }), 43);
    const out = join(mkdtempSync(join(tmpdir(), 'switchyard-gguf-')), 'model.gguf');
    expect(() => convertOlmoeToGguf({ modelDir: renormalized, outFile: out })).toThrow(/norm_topk_prob is true/);
    const plain = writeTinyPackage(tinyConfig({ num_experts: 4, num_experts_per_tok: 2 }), 44);
    expect(convertOlmoeToGguf({ modelDir: plain, outFile: out }).tensors).toBeGreaterThan(0);
  });

  it('refuses pruning that leaves a layer fewer experts than k', () => {
    const dir = writeTinyPackage(tinyConfig({ num_experts: 4, num_experts_per_tok: 2 }), 45);
    const file = join(dir, 'config.json');
    const config = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    writeFileSync(file, JSON.stringify({ ...config, switchyard_pruning: { dropped_experts: [0, 1, 2].map((expert) => ({ layer: 1, expert })) } }));
    expect(checkModelPackage(dir).problems.map((p) => p.message).join('\n'))
      .toMatch(/layer 1 keeps 1 expert after pruning, but the router chooses 2 per token \(num_experts_per_tok\)/);
  });

  it('refuses a package whose num_experts_per_tok exceeds num_experts, naming the field', async () => {
    const dir = writeTinyPackage(tinyConfig({ num_experts: 4, num_experts_per_tok: 5 }), 42);
    await expect(Engine.load(engineConfig(dir))).rejects.toThrow(/num_experts_per_tok 5 must not exceed the number of experts, 4/);
  });
});
