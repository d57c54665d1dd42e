/**
 * Admission limits and cancellation in the continuous-batching scheduler, and the scheduler releasing each request's
 * abort listener however the request ends (real engine, tiny package).
 */
import { getEventListeners } from 'node:events';
import { describe, expect, it, vi } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import { KvCache } from '../src/engine/kv-cache.ts';
import { CancelledError, OverloadedError, RequestTimeoutError } from '../src/engine/types.ts';
import { writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig, request } from './helpers.ts';

const dir = writeTinyPackage();

describe('scheduler limits', () => {
  it('refuses requests beyond the queue depth with OverloadedError, and serves the rest', async () => {
    const engine = await Engine.load(engineConfig(dir, { limits: { maxBatchSequences: 1, queueDepth: 1 } }));
    try {
      // Submitted in one tick: the first takes the batch slot, the second waits in the queue, the third finds it full.
      const results = await Promise.allSettled([1, 2, 3].map((i) => engine.generate(request(`prompt ${i}`, 5))));
      expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'rejected']);
      const refused = (results[2] as PromiseRejectedResult).reason;
      expect(refused).toBeInstanceOf(OverloadedError);
      expect(refused.retryAfterSeconds).toBeGreaterThan(0);
      expect(() => engine.admit(request('fits', 5))).not.toThrow();
    } finally {
      await engine.close();
    }
  });

  it('queueDepth 0 admits maxBatchSequences concurrent requests and refuses the next', async () => {
    const engine = await Engine.load(engineConfig(dir, { limits: { maxBatchSequences: 3, queueDepth: 0 } }));
    try {
      // generate() reaches submit() synchronously, so these four arrive in one tick, before any step runs.
      const pending = [1, 2, 3, 4].map((i) => engine.generate(request(`prompt ${i}`, 4)));
      expect(() => engine.admit(request('one more', 4))).toThrow(OverloadedError); // admit() agrees with submit()
      const results = await Promise.allSettled(pending);
      expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'fulfilled', 'rejected']);
      expect((results[3] as PromiseRejectedResult).reason).toBeInstanceOf(OverloadedError);
      expect(() => engine.admit(request('fits again', 4))).not.toThrow();
    } finally {
      await engine.close();
    }
  });

  it('a burst of maxBatchSequences + queueDepth into an idle engine is all admitted; one more is refused', async () => {
    const engine = await Engine.load(engineConfig(dir, { limits: { maxBatchSequences: 2, queueDepth: 3 } }));
    try {
      const pending = [1, 2, 3, 4, 5, 6].map((i) => engine.generate(request(`burst ${i}`, 3)));
      const results = await Promise.allSettled(pending);
      expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'fulfilled', 'fulfilled', 'fulfilled', 'rejected']);
      expect((results[5] as PromiseRejectedResult).reason).toBeInstanceOf(OverloadedError);
    } finally {
      await engine.close();
    }
  });

  it('cancels a sequence whose signal aborts, freeing its slot', async () => {
    const engine = await Engine.load(engineConfig(dir));
    try {
      const controller = new AbortController();
      let tokens = 0;
      const pending = engine.generate(request('cancel me', 30), {
        signal: controller.signal,
        onToken: () => {
          if (++tokens === 3) controller.abort();
        },
      });
      await expect(pending).rejects.toBeInstanceOf(CancelledError);
      expect(tokens).toBe(3);
      expect(engine.info().activeSequences).toBe(0);
      expect((await engine.generate(request('next', 3))).generatedTokens).toBe(3);
    } finally {
      await engine.close();
    }
  });
});

const abortListeners = (signal: AbortSignal) => getEventListeners(signal, 'abort').length;

describe('the scheduler releases a request\'s abort listener however the request ends', () => {
  // The listener holds the sequence and its KV cache; a signal that outlives the request must not keep them.
  it('finish (length), stop sequence, client gone, error in a token callback, and a failing step', async () => {
    const engine = await Engine.load(engineConfig(dir));
    try {
      const signal = new AbortController().signal; // one long-lived signal shared by every request below
      const first = await engine.generate(request('listeners', 6), { signal, cache: false });
      expect(first.finishReason).toBe('length');
      expect(abortListeners(signal)).toBe(0);

      const stop = first.generatedText.slice(0, 2);
      const stopped = await engine.generate(request('listeners', 6, {}, [stop]), { signal, cache: false });
      expect(stopped.finishReason).toBe('stop_sequence');
      expect(abortListeners(signal)).toBe(0);

      const client = new AbortController();
      const gone = engine.generate(request('listeners', 20), { signal: client.signal, cache: false, onToken: () => client.abort() });
      await expect(gone).rejects.toBeInstanceOf(CancelledError);
      expect(abortListeners(client.signal)).toBe(0);

      const throwing = engine.generate(request('listeners', 20), { signal, cache: false, onToken: () => {
        throw new Error('the writer failed');
      } });
      await expect(throwing).rejects.toThrow('the writer failed');
      expect(abortListeners(signal)).toBe(0);

      const forward = engine.model.forward;
      engine.model.forward = () => Promise.reject(new Error('expert worker failed'));
      try {
        await expect(engine.generate(request('listeners', 5), { signal, cache: false })).rejects.toThrow('expert worker failed');
      } finally {
        engine.model.forward = forward;
      }
      expect(abortListeners(signal)).toBe(0);
      expect(engine.info().activeSequences + engine.info().queuedRequests).toBe(0);
    } finally {
      await engine.close();
    }
  });

  it('a timeout (limits.requestTimeoutMs), with the clock moved on by each step instead of waiting', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const engine = await Engine.load(engineConfig(dir, { limits: { requestTimeoutMs: 1_000 } }), {
      onStep: () => vi.setSystemTime(Date.now() + 5_000),
    });
    try {
      const signal = new AbortController().signal;
      await expect(engine.generate(request('too slow', 20), { signal, cache: false })).rejects.toBeInstanceOf(RequestTimeoutError);
      expect(abortListeners(signal)).toBe(0);
    } finally {
      vi.useRealTimers();
      await engine.close();
    }
  });

  it('close() with one request running and one queued', async () => {
    const engine = await Engine.load(engineConfig(dir, { limits: { maxBatchSequences: 1 } }));
    const signals = [new AbortController().signal, new AbortController().signal];
    let started!: () => void;
    const running = new Promise<void>((resolve) => (started = resolve));
    const pending = signals.map((signal, i) => engine.generate(request(`closing ${i}`, 40), { signal, cache: false, onToken: () => started() }));
    const settled = Promise.allSettled(pending);
    await running; // the first has produced a token; the second waits for the batch slot
    await engine.close();
    for (const r of await settled) expect(r.status === 'rejected' && String(r.reason)).toMatch(/shut/);
    expect(signals.map(abortListeners)).toEqual([0, 0]);
  });
});

describe('KV caches of finished requests', () => {
  it('a released cache\'s arrays serve the next cache of its size, and what they held is never read', async () => {
    const engine = await Engine.load(engineConfig(dir));
    try {
      const model = engine.model;
      const earlier = engine.codec.encode('Call me Ishmael. Some years ago');
      const tokens = engine.codec.encode('never mind');
      const want = (await model.forward([{ cache: model.newCache(40), tokens }])).logits[0]; // arrays the pool never had
      const first = model.newCache(40);
      await model.forward([{ cache: first, tokens: earlier }]);
      const arrays = [...first.keys, ...first.values];
      first.release();
      expect([...first.keys, ...first.values].every((a) => a.length === 0)).toBe(true);
      const second = model.newCache(40);
      const got = (await model.forward([{ cache: second, tokens }])).logits[0];
      expect([...second.keys, ...second.values].every((a) => arrays.includes(a))).toBe(true);
      expect(Array.from(got)).toEqual(Array.from(want));
    } finally {
      await engine.close();
    }
  });

  it('cache.kvPool.maxBytes 0 keeps none: a new cache gets new arrays', async () => {
    const engine = await Engine.load(engineConfig(dir, { cache: { kvPool: { maxBytes: 0 } } }));
    try {
      const model = engine.model;
      const tokens = engine.codec.encode('Call me Ishmael.');
      const first = model.newCache(40);
      await model.forward([{ cache: first, tokens }]);
      const arrays = [...first.keys, ...first.values];
      first.release();
      const second = model.newCache(40);
      await model.forward([{ cache: second, tokens }]);
      expect([...second.keys, ...second.values].some((a) => arrays.includes(a))).toBe(false);
    } finally {
      await engine.close();
    }
  });

  it('go back to the pool between steps, never while a step that holds them runs', async () => {
    for (const execution of ['workers', 'in-process'] as const) {
      const engine = await Engine.load(engineConfig(dir, { workers: execution === 'workers' ? 2 : null, experts: { execution } }));
      const released: KvCache[] = [];
      const duringStep: KvCache[] = [];
      const inStep = new Set<KvCache>();
      const forward = engine.model.forward.bind(engine.model);
      const release = KvCache.prototype.release;
      const spies = [
        vi.spyOn(KvCache.prototype, 'release').mockImplementation(function (this: KvCache) {
          if (inStep.has(this)) duringStep.push(this);
          released.push(this);
          release.call(this);
        }),
        vi.spyOn(engine.model, 'forward').mockImplementation(async (inputs, options) => {
          for (const s of inputs) inStep.add(s.cache);
          try {
            return await forward(inputs, options);
          } finally {
            for (const s of inputs) inStep.delete(s.cache);
          }
        }),
      ];
      try {
        // One is cancelled just after its first token, from the event loop (where the fused forward lets it in
        // while its next step runs); one finishes; the scheduler must hold both caches until no step uses them.
        const cancel = new AbortController();
        const cancelled = engine.generate({ ...request('cancelled mid-generation', 20), ignoreEos: true }, {
          signal: cancel.signal, onToken: () => setImmediate(() => cancel.abort()),
        });
        const finished = engine.generate(request('finishes', 6));
        await expect(cancelled).rejects.toBeInstanceOf(CancelledError);
        expect((await finished).tokens.length).toBeGreaterThan(0);
        await new Promise((resolve) => setTimeout(resolve, 50));
        expect(released, execution).toHaveLength(2);
        expect(duringStep, `${execution}: caches released while their step ran`).toEqual([]);
      } finally {
        for (const spy of spies) spy.mockRestore();
        await engine.close();
      }
    }
  });

  it('a request submitted just as the scheduler\'s loop ends is served (not left in the queue)', async () => {
    const engine = await Engine.load(engineConfig(dir));
    try {
      for (let i = 0; i < 5; i++) expect((await engine.generate(request(`one after another ${i}`, 3))).tokens).toHaveLength(3);
    } finally {
      await engine.close();
    }
  });
});
