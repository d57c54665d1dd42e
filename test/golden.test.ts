/**
 * The bundled model against the trainer's golden file: last-position logits within 1e-3, every router choice,
 * and the greedy next tokens, all through the real gateway path (ONNX trunk, worker pool, KV cache).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import { evaluate, readValidationSet } from '../src/eval/evaluate.ts';
import { BUNDLED_MODEL } from './fixtures/tiny-package.ts';
import { engineConfig, maxAbsDiff, request } from './helpers.ts';

interface GoldenCase {
  prompt: string;
  input_ids: number[];
  last_logits: number[];
  greedy_next_tokens: number[];
  router: Array<{ layer: number; expert: number[]; gate: number[] }>;
}

const golden = JSON.parse(readFileSync(join(BUNDLED_MODEL, 'golden.json'), 'utf8')) as { cases: GoldenCase[] };

describe('bundled model golden file', () => {
  let engine: Engine;
  beforeAll(async () => {
    engine = await Engine.load(engineConfig(BUNDLED_MODEL));
  });
  afterAll(() => engine.close());

  it("reproduces the trainer's validation bits per byte on the held-out windows", async () => {
    const training = JSON.parse(readFileSync(join(BUNDLED_MODEL, 'training.json'), 'utf8'));
    const result = await evaluate(engine.model, readValidationSet(BUNDLED_MODEL));
    expect(Math.abs(result.val_bpb - training.final_validation.val_bpb)).toBeLessThan(1e-4);
    expect(training.final_validation.val_bpb).toBeLessThanOrEqual(2.3);
  });

  it('has at least 3 prompts', () => {
    expect(golden.cases.length).toBeGreaterThanOrEqual(3);
  });

  for (const c of golden.cases) {
    it(`matches ${JSON.stringify(c.prompt)}`, async () => {
      expect(engine.codec.encode(c.prompt)).toEqual(c.input_ids);
      const out = await engine.model.forward([{ cache: engine.model.newCache(), tokens: c.input_ids }]);
      expect(maxAbsDiff(out.logits[0], c.last_logits)).toBeLessThan(1e-3);
      out.layers.forEach((layer, l) => expect(Array.from(layer.expert)).toEqual(c.router[l].expert));

      const eos = c.greedy_next_tokens.indexOf(engine.pkg.config.eos_token_id);
      const expected = eos >= 0 ? c.greedy_next_tokens.slice(0, eos + 1) : c.greedy_next_tokens;
      const result = await engine.generate(request(c.prompt, 8));
      expect(result.tokens.map((t) => t.id)).toEqual(expected);
    });
  }
});
