/** The prefix cache: reused prompt prefixes skip prefill and change no output; its byte bound holds under pressure. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import { KvCache } from '../src/engine/kv-cache.ts';
import { PrefixCache } from '../src/engine/prefix-cache.ts';
import type { ConfigInput } from '../src/config.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig, maxAbsDiff, request } from './helpers.ts';

const dir = writeTinyPackage(tinyConfig({ max_position_embeddings: 256 }), 5);
const SYSTEM = 'You are a helpful assistant aboard the Pequod. Answer briefly. ';
const QUESTIONS = ['Who is Ahab?', 'Where is the white whale?', 'Call me Ishmael.', 'Who is Ahab?', 'naïve café ☕'];
const NO_RESPONSE_CACHE: ConfigInput['cache'] = { response: { maxEntries: 0 } };

/** An engine with a counter of the tokens its forward passes processed (prefill and decode). */
async function countingEngine(cache: ConfigInput['cache'], limits: ConfigInput['limits'] = {}) {
  const counter = { tokens: 0 };
  const engine = await Engine.load(engineConfig(dir, { cache, limits }), {
    onStep: ({ output }) => {
      counter.tokens += output.layers[0].expert.length;
    },
  });
  return { engine, counter };
}

describe('prefix cache on the engine', () => {
  let cached: Awaited<ReturnType<typeof countingEngine>>;
  let plain: Engine;
  beforeAll(async () => {
    cached = await countingEngine({ prefix: { blockTokens: 4 }, ...NO_RESPONSE_CACHE });
    plain = await Engine.load(engineConfig(dir, { cache: { prefix: { maxBytes: 0 }, ...NO_RESPONSE_CACHE } }));
  });
  afterAll(async () => {
    await cached.engine.close();
    await plain.close();
  });

  it('gives the same greedy tokens and logprobs as an engine without it, while skipping cached prefill', async () => {
    const { engine, counter } = cached;
    const shared = engine.codec.encode(SYSTEM).length; // BOS + the system prompt's bytes
    let reusedSoFar = 0;
    for (const [i, question] of QUESTIONS.entries()) {
      const prompt = SYSTEM + question;
      const promptTokens = engine.codec.encode(prompt).length;
      const before = counter.tokens;
      const a = await engine.generate(request(prompt, 8));
      const b = await plain.generate(request(prompt, 8));
      expect(a.tokens.map((t) => t.id)).toEqual(b.tokens.map((t) => t.id));
      expect(maxAbsDiff(a.tokens.map((t) => t.logprob), b.tokens.map((t) => t.logprob))).toBeLessThan(1e-5);

      const reused = engine.caches.prefix.stats().tokensReused! - reusedSoFar;
      reusedSoFar += reused;
      if (i === 0) expect(reused).toBe(0);
      else expect(reused).toBeGreaterThanOrEqual(Math.floor(shared / 4) * 4);
      if (question === QUESTIONS[0] && i > 0) expect(reused).toBe(Math.floor((promptTokens - 1) / 4) * 4); // the whole prompt but its tail
      // Forward passes saw exactly the uncached rest of the prompt plus one token per decode step.
      expect(counter.tokens - before).toBe(promptTokens - reused + a.generatedTokens - 1);
    }
    const stats = engine.caches.prefix.stats();
    expect(stats).toMatchObject({ enabled: true, hits: QUESTIONS.length - 1, misses: 1, evictions: 0 });
    expect(stats.bytes).toBeGreaterThan(0);
  });

  it('gives bit-identical logits for a prompt resumed from cached blocks', async () => {
    const { engine } = cached;
    const ids = engine.codec.encode(`${SYSTEM}Tell me of the sea.`);
    const full = await engine.model.forward([{ cache: engine.model.newCache(), tokens: ids }]);
    engine.caches.prefix.store(ids, (await forwardWithCache(engine, ids)).cache);
    const cache = engine.model.newCache();
    const reused = engine.caches.prefix.lookup(ids, cache);
    expect(reused).toBe(Math.floor((ids.length - 1) / 4) * 4);
    expect(cache.length).toBe(reused);
    const resumed = await engine.model.forward([{ cache, tokens: ids.slice(reused) }]);
    expect(maxAbsDiff(resumed.logits[0], full.logits[0])).toBe(0);
  });

  it('always runs the last prompt token, even when the whole prompt is cached', async () => {
    const { engine, counter } = cached;
    // BOS + 15 bytes = 16 tokens: four whole blocks, all stored by the first request.
    const prompt = 'abcdefghijklmno';
    expect(engine.codec.encode(prompt)).toHaveLength(16);
    const first = await engine.generate(request(prompt, 1));
    const before = counter.tokens;
    const second = await engine.generate(request(prompt, 1));
    expect(counter.tokens - before).toBe(4); // the last block runs again: its last token must produce logits
    expect(second.tokens.map((t) => t.id)).toEqual(first.tokens.map((t) => t.id));
  });

  it('is emptied by a placement change', async () => {
    const { engine } = cached;
    expect(engine.caches.prefix.stats().entries).toBeGreaterThan(0);
    engine.notifyPlacementChange();
    expect(engine.caches.prefix.stats()).toMatchObject({ entries: 0, bytes: 0 });
  });
});

describe('prefix cache with chunked prefill and concurrent requests', () => {
  it('keeps outputs equal when prefill runs in small chunks and requests share a batch', async () => {
    const { engine } = await countingEngine({ prefix: { blockTokens: 8 }, ...NO_RESPONSE_CACHE }, { maxBatchTokens: 5 });
    const plain = await Engine.load(engineConfig(dir, { cache: { prefix: { maxBytes: 0 }, ...NO_RESPONSE_CACHE } }));
    try {
      await engine.generate(request(SYSTEM + 'warm up', 2));
      const prompts = QUESTIONS.map((q) => SYSTEM + q);
      const got = await Promise.all(prompts.map((p) => engine.generate(request(p, 6))));
      for (const [i, p] of prompts.entries()) {
        const want = await plain.generate(request(p, 6));
        expect(got[i].tokens.map((t) => t.id)).toEqual(want.tokens.map((t) => t.id));
      }
      expect(engine.caches.prefix.stats().hits).toBeGreaterThanOrEqual(prompts.length);
    } finally {
      await engine.close();
      await plain.close();
    }
  });
});

describe('prefix cache bounds', () => {
  it('evicts least recently used blocks and never holds more than maxBytes', async () => {
    const config = tinyConfig({ max_position_embeddings: 256 });
    const blockBytes = 2 * config.num_hidden_layers * 4 * config.hidden_size * 4 + 4 * 4; // K and V rows + token ids
    const maxBytes = 5 * blockBytes + 100;
    const { engine } = await countingEngine({ prefix: { blockTokens: 4, maxBytes }, ...NO_RESPONSE_CACHE });
    try {
      for (let i = 0; i < 12; i++) {
        await engine.generate(request(`Prompt number ${i} is different from the others.`, 1));
        const stats = engine.caches.prefix.stats();
        expect(stats.bytes).toBeLessThanOrEqual(maxBytes);
        expect(stats.entries).toBeLessThanOrEqual(5);
      }
      expect(engine.caches.prefix.stats().evictions).toBeGreaterThan(0);
    } finally {
      await engine.close();
    }
  });

  it('maxBytes 0 disables it', async () => {
    const { engine, counter } = await countingEngine({ prefix: { maxBytes: 0 }, ...NO_RESPONSE_CACHE });
    try {
      const prompt = SYSTEM + QUESTIONS[0];
      await engine.generate(request(prompt, 1));
      const before = counter.tokens;
      await engine.generate(request(prompt, 1));
      expect(counter.tokens - before).toBe(engine.codec.encode(prompt).length);
      expect(engine.caches.prefix.stats()).toMatchObject({ enabled: false, hits: 0, misses: 0, entries: 0, bytes: 0 });
    } finally {
      await engine.close();
    }
  });
});

describe('PrefixCache (unit)', () => {
  const layers = 2;
  const rowSize = 3;
  /** A cache whose row t of layer l holds t + l/10 (keys) and −(t + l/10) (values). */
  function filled(length: number): KvCache {
    const cache = new KvCache(layers, rowSize, 1);
    for (let l = 0; l < layers; l++) {
      const k = Float32Array.from({ length: length * rowSize }, (_, i) => Math.floor(i / rowSize) + l / 10);
      cache.write(l, k, k.map((v) => -v));
    }
    cache.length = length;
    return cache;
  }
  const ids = (n: number, offset = 0) => Array.from({ length: n }, (_, i) => i + offset);

  it('copies the cached rows of whole blocks, leaves the last prompt token, and stops where the prompt diverges', () => {
    const pc = new PrefixCache({ modelId: 'm', blockTokens: 2, maxBytes: 1 << 20, layers });
    pc.store(ids(7), filled(7)); // blocks [0,1] [2,3] [4,5]
    expect(pc.stats().entries).toBe(3);
    const cache = new KvCache(layers, rowSize, 1);
    expect(pc.lookup(ids(7), cache)).toBe(6);
    expect(cache.length).toBe(6);
    for (let l = 0; l < layers; l++) {
      expect(Array.from(cache.past(l).keys)).toEqual(Array.from(filled(6).past(l).keys));
      expect(Array.from(cache.past(l).values)).toEqual(Array.from(filled(6).past(l).values));
    }
    expect(pc.lookup(ids(6), new KvCache(layers, rowSize))).toBe(4); // token 5 must run
    expect(pc.lookup([0, 1, 2, 99, 4, 5, 6], new KvCache(layers, rowSize))).toBe(2); // diverges in block 2
    expect(pc.lookup(ids(7, 1), new KvCache(layers, rowSize))).toBe(0);
    expect(pc.lookup([0], new KvCache(layers, rowSize))).toBe(0); // too short: not counted
    expect(pc.stats()).toMatchObject({ hits: 3, misses: 1, tokensReused: 12 });
  });

  it('does not store a prompt whose sequence joined before a clear()', () => {
    const pc = new PrefixCache({ modelId: 'm', blockTokens: 2, maxBytes: 1 << 20, layers });
    const before = filled(7);
    pc.lookup(ids(7), before); // joins (its cache is not empty, so nothing is attached)
    pc.clear();
    pc.store(ids(7), before);
    expect(pc.stats().entries).toBe(0);
    const after = filled(7);
    pc.lookup(ids(7), after);
    pc.store(ids(7), after);
    expect(pc.stats().entries).toBe(3);
  });

  it('reports its counters and bound as CacheStats (no maxEntries); clear() empties it without counting evictions', () => {
    const blockBytes = 2 * layers * 2 * rowSize * 4 + 2 * 4;
    const pc = new PrefixCache({ modelId: 'm', blockTokens: 2, maxBytes: 1 << 20, layers });
    pc.store(ids(5), filled(5)); // blocks [0,1] [2,3]
    expect(pc.lookup(ids(5), new KvCache(layers, rowSize))).toBe(4);
    expect(pc.lookup(ids(5, 1), new KvCache(layers, rowSize))).toBe(0);
    expect(pc.stats()).toStrictEqual({ enabled: true, hits: 1, misses: 1, evictions: 0, entries: 2, bytes: 2 * blockBytes, maxBytes: 1 << 20, tokensReused: 4 });
    pc.clear();
    expect(pc.stats()).toStrictEqual({ enabled: true, hits: 1, misses: 1, evictions: 0, entries: 0, bytes: 0, maxBytes: 1 << 20, tokensReused: 4 });
    expect(new PrefixCache({ modelId: 'm', blockTokens: 2, maxBytes: 0, layers }).stats())
      .toStrictEqual({ enabled: false, hits: 0, misses: 0, evictions: 0, entries: 0, bytes: 0, maxBytes: 0, tokensReused: 0 });
  });

  it('evicts the tail of a chain before its head', () => {
    const blockBytes = 2 * layers * 2 * rowSize * 4 + 2 * 4;
    const pc = new PrefixCache({ modelId: 'm', blockTokens: 2, maxBytes: 3 * blockBytes, layers });
    pc.store(ids(9), filled(9)); // four blocks, room for three: the deepest goes
    expect(pc.stats()).toMatchObject({ entries: 3, evictions: 1, bytes: 3 * blockBytes });
    expect(pc.lookup(ids(9), new KvCache(layers, rowSize))).toBe(6);
    pc.store(ids(4, 100), filled(4)); // two new blocks: the old chain loses its tail again, its head stays
    expect(pc.stats().bytes).toBeLessThanOrEqual(3 * blockBytes);
    expect(pc.lookup(ids(9), new KvCache(layers, rowSize))).toBe(2);
  });
});

async function forwardWithCache(engine: Engine, ids: number[]) {
  const cache = engine.model.newCache();
  await engine.model.forward([{ cache, tokens: ids }]);
  return { cache };
}
