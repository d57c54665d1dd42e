/**
 * Request features beyond the next token, checked against the plain TypeScript reference model: prompt-token log
 * probabilities (TGI decoder_input_details, also with chunked prefill and next to other sequences), the most likely
 * alternatives per generated token (top_n_tokens / top_logprobs), and prompt truncation (ignore_eos: decode-text).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import { argmax, logSoftmax, topLogprobs } from '../src/engine/sampling.ts';
import { ReferenceModel } from './reference/reference-model.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig, request } from './helpers.ts';

const config = tinyConfig();
const dir = writeTinyPackage(config, 5);
const reference = ReferenceModel.fromPackage(dir, config);
const PROMPT = 'The quick brown fox jumps over the lazy dog';

describe('engine request extras', () => {
  let wide: Engine;
  let narrow: Engine;
  beforeAll(async () => {
    wide = await Engine.load(engineConfig(dir));
    narrow = await Engine.load(engineConfig(dir, { limits: { maxBatchTokens: 5 } })); // prefill in chunks of ≤ 5
  });
  afterAll(async () => {
    await wide.close();
    await narrow.close();
  });

  it('reports every prompt token\'s log probability as the reference computes it, in one step or in chunks', async () => {
    const ids = wide.codec.encode(PROMPT);
    const ref = reference.forward(ids).logits;
    const want = ids.map((id, i) => (i === 0 ? null : logSoftmax(Float32Array.from(ref[i - 1]))[id]));
    for (const engine of [wide, narrow]) {
      // Alongside another sequence, so the all-positions rows are cut out of a mixed step.
      const [result] = await Promise.all([
        engine.generate({ ...request(PROMPT, 3), promptLogprobs: true }, { cache: false }),
        engine.generate(request('Call me Ishmael.', 5), { cache: false }),
      ]);
      expect(result.prefill!.map((t) => t.id)).toEqual(ids);
      expect(result.prefill![0].logprob).toBeNull();
      result.prefill!.slice(1).forEach((t, i) => expect(t.logprob!).toBeCloseTo(want[i + 1]!, 4));
      expect(result.prefill![0]).toMatchObject({ special: true, text: '<|bos|>' });
      // The generated tokens are those of a request without prompt log probabilities.
      const plain = await engine.generate(request(PROMPT, 3), { cache: false });
      expect(result.tokens.map((t) => t.id)).toEqual(plain.tokens.map((t) => t.id));
    }
  });

  it('lists the most likely tokens at each position, the greedy choice first', async () => {
    const result = await wide.generate({ ...request(PROMPT, 4), topTokens: 3 }, { cache: false });
    const ids = wide.codec.encode(PROMPT);
    for (const token of result.tokens) {
      const logp = logSoftmax(Float32Array.from(reference.forward(ids).logits[ids.length - 1]));
      expect(token.top!.map((t) => t.id)).toEqual(topLogprobs(logp, 3).map((t) => t.id));
      expect(token.top![0].id).toBe(token.id);
      expect(token.top![0].logprob).toBeCloseTo(token.logprob, 6);
      token.top!.forEach((t) => expect(t.logprob).toBeCloseTo(logp[t.id], 4));
      ids.push(token.id);
    }
  });

  it('topLogprobs returns the n largest, largest first, lower id first on ties', () => {
    const logp = Float64Array.from([-3, -1, -2, -1, -5, -0.5]);
    expect(topLogprobs(logp, 3).map((t) => t.id)).toEqual([5, 1, 3]);
    expect(topLogprobs(logp, 10).map((t) => t.id)).toEqual([5, 1, 3, 2, 0, 4]);
    expect(topLogprobs(logp, 0)).toEqual([]);
  });

  it('truncate keeps the BOS and the prompt\'s last tokens', async () => {
    const ids = wide.codec.encode(PROMPT);
    const kept = [ids[0], ...ids.slice(ids.length - 7)];
    const cut = await wide.generate({ ...request(PROMPT, 3), truncate: 8, promptLogprobs: true }, { cache: false });
    expect(cut.promptTokens).toBe(8);
    expect(cut.prefill!.map((t) => t.id)).toEqual(kept);
    const want = argmax(reference.forward(kept).logits[kept.length - 1]);
    expect(cut.tokens[0].id).toBe(want);
  });
});
