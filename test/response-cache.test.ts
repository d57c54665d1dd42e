/** The response cache: identical deterministic requests answered from memory (streams replayed), bounds, opt-outs. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import { ResponseCache, cacheControlOptsOut, canonicalJson } from '../src/engine/response-cache.ts';
import type { GenerateResult, GeneratedToken } from '../src/engine/types.ts';
import { startServer, type RunningServer } from '../src/serve.ts';
import { createLogger } from '../src/log.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig, request } from './helpers.ts';

const dir = writeTinyPackage(tinyConfig({ max_position_embeddings: 128 }), 11);

describe('response cache on the engine', () => {
  let engine: Engine;
  let steps = 0;
  beforeAll(async () => {
    engine = await Engine.load(engineConfig(dir, { cache: { prefix: { maxBytes: 0 } } }), { onStep: () => void steps++ });
  });
  afterAll(() => engine.close());

  /** Runs a request and says whether the model ran (any scheduler step). */
  async function run(...args: Parameters<Engine['generate']>): Promise<{ result: GenerateResult; ran: boolean }> {
    const before = steps;
    const result = await engine.generate(...args);
    return { result, ran: steps > before };
  }

  it('answers an identical greedy request from the cache with the same result, and replays its tokens', async () => {
    const first = await run(request('Call me Ishmael.', 10));
    expect(first.ran).toBe(true);
    const streamed: Array<[GeneratedToken, GenerateResult | null]> = [];
    const second = await run(request('Call me Ishmael.', 10), { onToken: (t, finished) => streamed.push([t, finished]) });
    expect(second.ran).toBe(false);
    expect(second.result).toEqual(first.result);
    expect(streamed.map(([t]) => t)).toEqual(first.result.tokens);
    expect(streamed.map(([, f]) => f)).toEqual([...first.result.tokens.slice(1).map(() => null), first.result]);
    // A fresh engine without the cache gives the same answer.
    const plain = await Engine.load(engineConfig(dir, { cache: { response: { maxEntries: 0 } } }));
    try {
      expect(await plain.generate(request('Call me Ishmael.', 10))).toEqual(first.result);
    } finally {
      await plain.close();
    }
  });

  it('hands out copies: changing a returned result does not change the cache', async () => {
    const a = await run(request('copy me', 4));
    a.result.tokens[0].text = 'changed';
    a.result.generatedText = 'changed';
    const b = await run(request('copy me', 4));
    expect(b.ran).toBe(false);
    expect(b.result.generatedText).not.toBe('changed');
    expect(b.result.tokens[0].text).not.toBe('changed');
  });

  it('keys on everything that affects the output', async () => {
    await run(request('The whale', 6));
    const variants = [
      request('The whale ', 6),
      request('The whale', 7),
      request('The whale', 6, {}, ['e']),
      request('The whale', 6, { repetitionPenalty: 1.3 }),
      request('The whale', 6, { doSample: true, seed: 1 }),
      request('The whale', 6, { doSample: true, seed: 2 }),
      request('The whale', 6, { doSample: true, seed: 1, temperature: 0.5 }),
      request('The whale', 6, { doSample: true, seed: 1, topK: 3 }),
      request('The whale', 6, { doSample: true, seed: 1, topP: 0.5 }),
    ];
    for (const v of variants) expect((await run(v)).ran).toBe(true);
    for (const v of variants) expect((await run(v)).ran).toBe(false); // each is cached under its own key
  });

  it('caches seeded sampling but never sampling without a seed', async () => {
    const seeded = request('Sample me', 12, { doSample: true, seed: 42, temperature: 1.5 });
    const a = await run(seeded);
    const b = await run(seeded);
    expect([a.ran, b.ran]).toEqual([true, false]);
    expect(b.result).toEqual(a.result);
    expect(a.result.seed).toBe(42);

    const unseeded = request('Sample me', 12, { doSample: true, temperature: 1.5 });
    const hits = engine.caches.response.stats().hits;
    const runs = [await run(unseeded), await run(unseeded), await run(unseeded)];
    expect(runs.map((r) => r.ran)).toEqual([true, true, true]);
    expect(engine.caches.response.stats().hits).toBe(hits);
  });

  it('honours the opt-out: neither answered from nor stored in the cache', async () => {
    expect((await run(request('Opt out', 5), { cache: false })).ran).toBe(true);
    expect((await run(request('Opt out', 5))).ran).toBe(true); // nothing was stored
    expect((await run(request('Opt out', 5), { cache: false })).ran).toBe(true); // a stored answer is not used
    expect((await run(request('Opt out', 5))).ran).toBe(false);
  });

  it('does not answer a request whose client already went away', async () => {
    await run(request('gone', 3));
    const controller = new AbortController();
    controller.abort();
    await expect(engine.generate(request('gone', 3), { signal: controller.signal })).rejects.toThrow(/went away/);
  });

  it('is emptied by a placement change', async () => {
    await run(request('placement', 3));
    let notified = 0;
    const off = engine.onPlacementChange(() => void notified++);
    engine.notifyPlacementChange();
    off();
    engine.notifyPlacementChange();
    expect(notified).toBe(1);
    expect(engine.caches.response.stats()).toMatchObject({ entries: 0, bytes: 0 });
    expect((await run(request('placement', 3))).ran).toBe(true);
  });
});

describe('ResponseCache bounds (unit)', () => {
  const result = (text: string): GenerateResult => ({
    generatedText: text, finishReason: 'length', generatedTokens: 1, promptTokens: 1, seed: null,
    tokens: [{ id: 1, text, logprob: -1, special: false }],
  });

  it('holds at most maxEntries answers, evicting the least recently used', () => {
    const cache = new ResponseCache({ modelId: 'm', maxEntries: 2, maxBytes: 1 << 20 });
    const keys = ['a', 'b', 'c'].map((p) => cache.keyOf(request(p))!);
    cache.set(keys[0], result('a'));
    cache.set(keys[1], result('b'));
    expect(cache.get(keys[0])?.generatedText).toBe('a'); // a is now more recent than b
    cache.set(keys[2], result('c'));
    expect(cache.stats()).toMatchObject({ entries: 2, evictions: 1 });
    expect(cache.get(keys[1])).toBeUndefined();
    expect(cache.get(keys[0])?.generatedText).toBe('a');
  });

  it('never holds more than maxBytes, and skips an answer larger than the bound', () => {
    const maxBytes = 2000;
    const cache = new ResponseCache({ modelId: 'm', maxEntries: 1000, maxBytes });
    for (let i = 0; i < 50; i++) {
      cache.set(cache.keyOf(request(`prompt ${i}`))!, result('x'.repeat(100 + i)));
      expect(cache.stats().bytes).toBeLessThanOrEqual(maxBytes);
    }
    expect(cache.stats().evictions).toBeGreaterThan(0);
    const big = cache.keyOf(request('big'))!;
    cache.set(big, result('y'.repeat(5000)));
    expect(cache.get(big)).toBeUndefined();
    expect(cache.stats().bytes).toBeLessThanOrEqual(maxBytes);
  });

  it('does not store an answer whose key was made before a clear()', () => {
    const cache = new ResponseCache({ modelId: 'm', maxEntries: 10, maxBytes: 1 << 20 });
    const stale = cache.keyOf(request('x'))!;
    cache.clear();
    cache.set(stale, result('old experts'));
    expect(cache.stats().entries).toBe(0);
    const fresh = cache.keyOf(request('x'))!;
    expect(fresh).not.toBe(stale);
    cache.set(fresh, result('new experts'));
    expect(cache.get(fresh)?.generatedText).toBe('new experts');
  });

  it('reports its counters and bounds as CacheStats; clear() empties it without counting evictions', () => {
    const cache = new ResponseCache({ modelId: 'm', maxEntries: 10, maxBytes: 1 << 20 });
    const key = cache.keyOf(request('x'))!;
    cache.get(key);
    cache.set(key, result('a'));
    cache.get(key);
    const bytes = cache.stats().bytes;
    expect(bytes).toBeGreaterThan(0);
    expect(cache.stats()).toStrictEqual({ enabled: true, hits: 1, misses: 1, evictions: 0, entries: 1, bytes, maxBytes: 1 << 20, maxEntries: 10 });
    cache.clear();
    expect(cache.stats()).toStrictEqual({ enabled: true, hits: 1, misses: 1, evictions: 0, entries: 0, bytes: 0, maxBytes: 1 << 20, maxEntries: 10 });
    expect(new ResponseCache({ modelId: 'm', maxEntries: 0, maxBytes: 100 }).stats())
      .toStrictEqual({ enabled: false, hits: 0, misses: 0, evictions: 0, entries: 0, bytes: 0, maxBytes: 100, maxEntries: 0 });
  });

  it('is disabled by maxEntries 0 or maxBytes 0', () => {
    for (const bounds of [{ maxEntries: 0, maxBytes: 100 }, { maxEntries: 10, maxBytes: 0 }]) {
      const cache = new ResponseCache({ modelId: 'm', ...bounds });
      expect(cache.keyOf(request('x'))).toBeNull();
      expect(cache.stats().enabled).toBe(false);
    }
  });

  it('keys include the model id; canonical JSON ignores key order', () => {
    const a = new ResponseCache({ modelId: 'a', maxEntries: 1, maxBytes: 100 });
    const b = new ResponseCache({ modelId: 'b', maxEntries: 1, maxBytes: 100 });
    expect(a.keyOf(request('x'))).not.toBe(b.keyOf(request('x')));
    expect(a.keyOf(request('x'))).toBe(a.keyOf(request('x')));
    expect(canonicalJson({ b: 1, a: { d: [2, { f: 1, e: 0 }], c: null } })).toBe('{"a":{"c":null,"d":[2,{"e":0,"f":1}]},"b":1}');
  });

  it('reads Cache-Control opt-outs', () => {
    expect(cacheControlOptsOut('no-cache')).toBe(true);
    expect(cacheControlOptsOut('max-age=0, No-Store')).toBe(true);
    expect(cacheControlOptsOut('max-age=60')).toBe(false);
    expect(cacheControlOptsOut('no-transform')).toBe(false);
    expect(cacheControlOptsOut(undefined)).toBe(false);
  });
});

describe('response cache over HTTP', () => {
  let server: RunningServer;
  const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(server.url + path, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
  const info = async () => (await (await fetch(`${server.url}/info`)).json()).caches.response;
  const events = async (r: Response) =>
    (await r.text()).split('\n\n').map((b) => b.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n')).filter((d) => d !== '');

  beforeAll(async () => {
    server = await startServer(engineConfig(dir, { port: 0, limits: { maxNewTokens: 40 } }), {
      logger: createLogger({ level: 'silent' }), closeGraceMs: 200,
    });
  });
  afterAll(() => server.close());

  it('/generate: a repeat is a hit; Cache-Control: no-cache and options.use_cache false bypass it', async () => {
    const body = { inputs: 'Over HTTP', parameters: { max_new_tokens: 8, details: true } };
    const a = await (await post('/generate', body)).json();
    expect(await info()).toMatchObject({ hits: 0, misses: 1, entries: 1 });
    const b = await (await post('/generate', body)).json();
    expect(b).toEqual(a);
    expect(await info()).toMatchObject({ hits: 1, misses: 1 });
    expect(await (await post('/generate', body, { 'cache-control': 'no-cache' })).json()).toEqual(a);
    expect(await (await post('/generate', { ...body, options: { use_cache: false } })).json()).toEqual(a);
    expect(await info()).toMatchObject({ hits: 1, misses: 1 });
    const bad = await post('/generate', { ...body, options: { use_cache: 'no' } });
    expect(bad.status).toBe(422);
    expect((await bad.json()).error).toMatch(/options\.use_cache: must be true or false/);
  });

  it('/generate_stream replays a cached answer as the same token events', async () => {
    const body = { inputs: 'Stream me', parameters: { max_new_tokens: 12 } };
    const live = await events(await post('/generate_stream', body));
    const hitsBefore = (await info()).hits;
    const replayed = await events(await post('/generate_stream', body));
    expect((await info()).hits).toBe(hitsBefore + 1);
    expect(replayed).toEqual(live);
    expect(replayed.length).toBeGreaterThan(1);
  });

  it('OpenAI completions: temperature 0 is cached and streams from the cache; default sampling is not', async () => {
    const body = { model: 'tiny', prompt: 'OpenAI side', max_tokens: 8, temperature: 0 };
    const modelId = (await (await fetch(`${server.url}/v1/models`)).json()).data[0].id;
    const plain = await (await post('/v1/completions', { ...body, model: modelId })).json();
    const before = await info();
    const streamed = await events(await post('/v1/completions', { ...body, model: modelId, stream: true }));
    expect((await info()).hits).toBe(before.hits + 1);
    const text = streamed.filter((d) => d !== '[DONE]').map((d) => JSON.parse(d).choices[0]?.text ?? '').join('');
    expect(text).toBe(plain.choices[0].text);

    const sampled = { model: modelId, prompt: 'OpenAI side', max_tokens: 8 };
    await post('/v1/completions', sampled);
    await post('/v1/completions', sampled);
    const after = await info();
    expect(after.hits).toBe(before.hits + 1);
    expect(after.misses).toBe(before.misses);
  });

  it('/metrics and /info report both caches', async () => {
    const text = await (await fetch(`${server.url}/metrics`)).text();
    for (const name of ['hits', 'misses', 'evictions']) {
      expect(text).toMatch(new RegExp(`^switchyard_cache_${name}(_total)?\\{[^}]*switchyard_cache="response"[^}]*\\} \\d+`, 'm'));
      expect(text).toMatch(new RegExp(`^switchyard_cache_${name}(_total)?\\{[^}]*switchyard_cache="prefix"[^}]*\\} \\d+`, 'm'));
    }
    expect(text).toMatch(/^switchyard_cache_bytes(_bytes)?\{[^}]*switchyard_cache="response"[^}]*\} [1-9]/m);
    expect(text).toMatch(/^switchyard_cache_entries\{[^}]*switchyard_cache="response"[^}]*\} [1-9]/m);
    const caches = (await (await fetch(`${server.url}/info`)).json()).caches;
    expect(caches.prefix).toMatchObject({ enabled: true, max_bytes: 64 * 2 ** 20 });
    expect(caches.response).toMatchObject({ enabled: true, max_entries: 1024, max_bytes: 16 * 2 ** 20 });
  });
});
