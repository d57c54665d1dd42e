/**
 * The shared-memory channel (experts/channel.ts): layer batches sent through it give bit-identical outputs to the
 * Piscina task path and match the reference FFN; a batch larger than the channel grows it; concurrent runLayer calls
 * queue per worker; a thread that exits inside a channel batch is replaced and the batch gives the same output; live
 * placement changes (load/unload Piscina tasks) interleave with channel batches.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExpertPool, type LayerOutcome, type PoolOptions, type WorkerRestart } from '../experts/pool.ts';
import { readExpertWeights } from '../experts/expert-weights.ts';
import { referenceFfn } from '../experts/kernels/reference.ts';
import type { DispatchPlan } from '../router/dispatch.ts';
import { readSafetensorsHeader } from '../src/format/safetensors.ts';
import { placementFromFile, roundRobinPlacement } from '../src/placement/placement.ts';
import { randomValues, tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';

const config = tinyConfig(); // 2 layers × 4 experts, hidden 16
const dir = writeTinyPackage(config, 12);
const weightsFile = join(dir, 'model.safetensors');
const hidden = config.hidden_size;

function options(channel: 'shared-memory' | 'tasks'): PoolOptions {
  return {
    weightsFile, hidden, ffn: config.intermediate_size, placement: roundRobinPlacement(2, 4, 2),
    threadsPerWorker: 1, executionProviders: ['cpu'], channel,
    kernel: { kernel: 'dense', sparseMinSparsity: 0.5, trialMs: 0 }, // one kernel on both paths: outputs bit-identical
  };
}

/** A plan routing token t to expert (t·7 + salt) mod 4 (one expert per token). */
function plan(tokens: number, salt: number): DispatchPlan {
  const batches = Array.from({ length: 4 }, (_, expert) => ({ expert, rows: [] as number[] }));
  for (let t = 0; t < tokens; t++) batches[(t * 7 + salt) % 4].rows.push(t);
  return { batches: batches.filter((b) => b.rows.length > 0), overflow: [], capacity: tokens };
}

/** Outputs scattered back to token rows [tokens, hidden] (one expert per token). */
function byRow(outcome: LayerOutcome, tokens: number): Float32Array {
  const y = new Float32Array(tokens * hidden);
  for (const b of outcome.batches) b.rows.forEach((row, i) => y.set(b.output.subarray(i * hidden, (i + 1) * hidden), row * hidden));
  return y;
}

const header = readSafetensorsHeader(weightsFile);
function reference(layer: number, x: Float32Array, p: DispatchPlan): Float32Array {
  const y = new Float32Array(x.length);
  for (const b of p.batches) {
    const w = readExpertWeights(weightsFile, header, layer, b.expert, hidden);
    const rows = new Float32Array(b.rows.length * hidden);
    b.rows.forEach((row, i) => rows.set(x.subarray(row * hidden, (row + 1) * hidden), i * hidden));
    const out = referenceFfn(w, hidden, w.ffn, rows, b.rows.length);
    b.rows.forEach((row, i) => y.set(out.subarray(i * hidden, (i + 1) * hidden), row * hidden));
  }
  return y;
}

const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);

describe('shared-memory expert channel', () => {
  let shared: ExpertPool;
  let tasks: ExpertPool;
  const restarts: WorkerRestart[] = [];

  beforeAll(async () => {
    [shared, tasks] = await Promise.all([ExpertPool.start(options('shared-memory')), ExpertPool.start(options('tasks'))]);
    shared.onWorkerRestart((event) => restarts.push(event));
  }, 60_000);
  afterAll(async () => {
    await Promise.all([shared?.close(), tasks?.close()]);
  });

  it('gives the task path\'s outputs, bit for bit, over many layers in sequence, and matches the reference FFN', async () => {
    // Sizes go up and down: 1 token first (the channel starts small), later 200 rows, more than it holds: it grows.
    const sizes = [1, 1, 3, 8, 1, 32, 2, 200, 1, 17, 64, 1];
    for (const [step, tokens] of sizes.entries()) {
      for (let layer = 0; layer < config.num_hidden_layers; layer++) {
        const x = randomValues(tokens * hidden, 1000 + step * 10 + layer, 1);
        const p = plan(tokens, step + layer);
        const [a, b] = [await shared.runLayer(layer, x, p), await tasks.runLayer(layer, x, p)];
        const ya = byRow(a, tokens);
        expect(ya).toEqual(byRow(b, tokens));
        expect(maxDiff(ya, reference(layer, x, p))).toBeLessThan(1e-5);
        expect(a.workers.reduce((n, w) => n + w.tokens, 0)).toBe(tokens);
      }
    }
  }, 60_000);

  it('queues concurrent runLayer calls per worker and gives each its own output', async () => {
    const calls = Array.from({ length: 12 }, (_, i) => ({ layer: i % 2, tokens: 1 + ((i * 5) % 40), salt: i }));
    const inputs = calls.map((c, i) => randomValues(c.tokens * hidden, 5000 + i, 1));
    const together = await Promise.all(calls.map((c, i) => shared.runLayer(c.layer, inputs[i], plan(c.tokens, c.salt))));
    for (const [i, c] of calls.entries()) {
      const alone = await tasks.runLayer(c.layer, inputs[i], plan(c.tokens, c.salt));
      expect(byRow(together[i], c.tokens)).toEqual(byRow(alone, c.tokens));
    }
  }, 60_000);

  it('runs a batch again on the replacement when its thread exits inside it, with the same output', async () => {
    const x = randomValues(24 * hidden, 77, 1);
    const p = plan(24, 3);
    const expected = byRow(await tasks.runLayer(1, x, p), 24);
    const before = restarts.length;
    await shared.injectFault(1, { kind: 'exit' });
    const after = await shared.runLayer(1, x, p);
    expect(restarts.length).toBe(before + 1);
    expect(restarts.at(-1)!.worker).toBe(1);
    expect(byRow(after, 24)).toEqual(expected);
    // The replacement serves the channel from then on; a batch that throws runs once more.
    await shared.injectFault(0, { kind: 'throw' });
    expect(byRow(await shared.runLayer(1, x, p), 24)).toEqual(expected);
    for (let i = 0; i < 5; i++) expect(byRow(await shared.runLayer(1, x, p), 24)).toEqual(expected);
  }, 60_000);

  it('keeps serving while a live placement change loads and unloads experts between batches', async () => {
    const swapped = placementFromFile({
      workers: 2,
      assignments: Array.from({ length: 8 }, (_, g) => ({ layer: Math.floor(g / 4), expert: g % 4, workers: [(g + 1) % 2] })),
    }, 2, 4);
    const x = randomValues(9 * hidden, 91, 1);
    const p = plan(9, 1);
    const expected = byRow(await tasks.runLayer(0, x, p), 9);
    const change = shared.applyPlacement(swapped);
    const during: Array<Promise<LayerOutcome>> = [];
    for (let i = 0; i < 6; i++) during.push(shared.runLayer(0, x, p));
    await change;
    for (const outcome of await Promise.all(during)) expect(byRow(outcome, 9)).toEqual(expected);
    const after = await shared.runLayer(0, x, p);
    expect(byRow(after, 9)).toEqual(expected);
    expect(new Set(after.workers.map((w) => w.worker))).toEqual(new Set(p.batches.map((b) => (b.expert + 1) % 2)));
  }, 60_000);
});
