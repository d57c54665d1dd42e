/** Queue limits and cancellation in the continuous-batching scheduler (real engine, tiny package). */
import { describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import { CancelledError, OverloadedError } from '../src/engine/types.ts';
import { writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig, request } from './helpers.ts';

const dir = writeTinyPackage();

describe('scheduler limits', () => {
  it('refuses requests beyond the queue depth with OverloadedError, and serves the rest', async () => {
    const engine = await Engine.load(engineConfig(dir, { limits: { maxBatchSequences: 1, queueDepth: 1 } }));
    try {
      // Submitted in one tick: the first becomes active, the second waits in the queue, the third finds it full.
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
