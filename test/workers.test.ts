/** Experts really run in the worker threads, each worker only its placed experts, one expert per token and layer. */
import { threadId } from 'node:worker_threads';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import { threadPolicy } from '../experts/thread-scheduling.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig, maxAbsDiff } from './helpers.ts';

const config = tinyConfig();
const dir = writeTinyPackage(config, 5);
const PROMPTS = ['Sperm whales dive deep.', 'Hello, world', 'Ahab'];

describe('expert workers', () => {
  it.runIf(process.platform === 'linux')("run under SCHED_BATCH by default (experts.workerScheduling), SCHED_OTHER with 'normal'; the main thread keeps its policy", async () => {
    for (const [scheduling, policy] of [['batch', 3], ['normal', 0]] as const) {
      const engine = await Engine.load(engineConfig(dir, { workers: 2, experts: { workerScheduling: scheduling } }));
      try {
        for (const s of await engine.pool.stats()) expect(s.scheduling, `worker ${s.workerId}`).toEqual({ wanted: scheduling, policy });
      } finally {
        await engine.close();
      }
    }
    expect(threadPolicy()).toBe(0);
  });

  it('run every expert batch off the main thread, and report exactly the router\'s load', async () => {
    const engine = await Engine.load(engineConfig(dir, { workers: 2 }));
    try {
      const inputs = PROMPTS.map((p) => ({ cache: engine.model.newCache(), tokens: engine.codec.encode(p) }));
      const tokens = inputs.reduce((n, s) => n + s.tokens.length, 0);
      const out = await engine.model.forward(inputs);
      const stats = await engine.pool.stats();

      expect(stats.map((s) => s.workerId)).toEqual([0, 1]);
      const threads = new Set(stats.map((s) => s.threadId));
      expect(threads.size).toBe(2);
      expect(threads.has(threadId)).toBe(false);

      for (const layer of out.layers) {
        // Each token went to exactly one expert: the per-expert counts partition the step's tokens.
        expect(layer.expert.length).toBe(tokens);
        expect(layer.tokensPerExpert.reduce((a, b) => a + b, 0)).toBe(tokens);
        for (let e = 0; e < config.num_experts; e++) {
          const routed = Array.from(layer.expert).filter((x) => x === e).length;
          const ran = stats.reduce((n, s) => n + (s.ran[`${layer.layer}.${e}`]?.tokens ?? 0), 0);
          expect(ran).toBe(routed);
        }
      }
      // A worker runs only experts its placement gave it.
      for (const s of stats) {
        const resident = new Set(s.resident.map((r) => `${r.layer}.${r.expert}`));
        for (const key of Object.keys(s.ran)) expect(resident.has(key)).toBe(true);
        expect(s.resident.length).toBe((config.num_hidden_layers * config.num_experts) / 2);
      }
    } finally {
      await engine.close();
    }
  });

  it('give the same outputs with a placement file that replicates experts', async () => {
    const placement = {
      workers: 3,
      assignments: Array.from({ length: config.num_hidden_layers * config.num_experts }, (_, g) => ({
        layer: Math.floor(g / config.num_experts), expert: g % config.num_experts, workers: g % 2 === 0 ? [0, 1, 2] : [g % 3],
      })),
    };
    const file = join(mkdtempSync(join(tmpdir(), 'placement-')), 'placement.json');
    writeFileSync(file, JSON.stringify(placement));
    const plain = await Engine.load(engineConfig(dir, { workers: 1 }));
    const replicated = await Engine.load(engineConfig(dir, { placementFile: file }));
    try {
      expect(replicated.info().placement.workers).toBe(3);
      for (const prompt of PROMPTS) {
        const ids = plain.codec.encode(prompt);
        const a = await plain.model.forward([{ cache: plain.model.newCache(), tokens: ids }]);
        const b = await replicated.model.forward([{ cache: replicated.model.newCache(), tokens: ids }]);
        expect(maxAbsDiff(a.logits[0], b.logits[0])).toBeLessThan(1e-5);
      }
      const stats = await replicated.pool.stats();
      const hosted = [0, 1, 2].map((w) => placement.assignments.filter((a) => a.workers.includes(w)).length);
      expect(stats.map((s) => s.resident.length)).toEqual(hosted); // [5, 6, 5]
    } finally {
      await plain.close();
      await replicated.close();
    }
  });
});
