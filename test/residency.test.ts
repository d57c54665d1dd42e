/** Expert residency: a worker keeps at most K experts loaded, loads others on demand, and outputs do not change. */
import { describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import { createTelemetry } from '../src/telemetry/index.ts';
import { writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig, maxAbsDiff, request } from './helpers.ts';

const dir = writeTinyPackage(undefined, 31);
const PROMPTS = ['Call me Ishmael.', 'The whale', 'Sperm whales dive deep.', 'Hello, world'];
const noCaches = { cache: { prefix: { maxBytes: 0 }, response: { maxEntries: 0 } } };

describe('expert residency', () => {
  it('gives the same outputs with K = all, half and 1 experts resident per worker, within the bound', async () => {
    const runs: string[][] = [];
    for (const k of [null, 4, 1]) {
      const telemetry = createTelemetry({ exporter: 'none', otlpEndpoint: null, loadTraceFile: null }, { modelId: 'tiny' });
      const engine = await Engine.load(engineConfig(dir, { workers: 1, ...noCaches, experts: { maxResidentPerWorker: k } }), telemetry.observer);
      try {
        const texts: string[] = [];
        for (const p of PROMPTS) texts.push((await engine.generate(request(p, 12))).generatedText);
        runs.push(texts);
        const [stats] = await engine.pool.stats();
        expect(stats.resident).toHaveLength(8); // the worker still hosts all 8 experts of the placement
        expect(stats.loaded.length).toBeLessThanOrEqual(k ?? 8);
        expect(stats.residency.max).toBe(k);
        const metrics = await telemetry.metricsText();
        if (k === null) {
          expect(stats.residency).toMatchObject({ loads: 0, evictions: 0 });
        } else {
          expect(stats.residency.loads).toBeGreaterThan(0);
          expect(stats.residency.evictions).toBeGreaterThan(0);
          expect(metrics).toMatch(new RegExp(`^moe_worker_expert_loads_total\\{[^}]*\\} ${stats.residency.loads}$`, 'm'));
          expect(metrics).toMatch(new RegExp(`^moe_worker_expert_evictions_total\\{[^}]*\\} ${stats.residency.evictions}$`, 'm'));
        }
      } finally {
        await engine.close();
        await telemetry.shutdown();
      }
    }
    expect(runs[1]).toEqual(runs[0]);
    expect(runs[2]).toEqual(runs[0]);
  });

  it('runs a task that needs more experts than fit, never dropping the one at work', async () => {
    const all = await Engine.load(engineConfig(dir, { workers: 1, ...noCaches }));
    const one = await Engine.load(engineConfig(dir, { workers: 1, ...noCaches, experts: { maxResidentPerWorker: 1 } }));
    try {
      // A long prompt routes to several experts per layer in one step: one task with several items per layer.
      const ids = all.codec.encode('Many different bytes route to many experts: 0123456789 ABCDEFG xyz!?');
      const a = await all.model.forward([{ cache: all.model.newCache(), tokens: ids }]);
      const b = await one.model.forward([{ cache: one.model.newCache(), tokens: ids }]);
      expect(a.layers.some((l) => l.tokensPerExpert.filter((n) => n > 0).length > 1)).toBe(true);
      expect(maxAbsDiff(a.logits[0], b.logits[0])).toBe(0);
      const [stats] = await one.pool.stats();
      expect(stats.loaded).toHaveLength(1);
    } finally {
      await all.close();
      await one.close();
    }
  });
});
