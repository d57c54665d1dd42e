/**
 * Live placement changes under load: 16 concurrent closed-loop clients keep generating (real server, real HTTP,
 * tiny random package) while the placement is changed three times — replicas on the same workers, a new worker,
 * then that worker retired. No request may fail, and every greedy output must equal the one from a run without
 * any change.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import type { StepObserver } from '../src/engine/scheduler.ts';
import { createLogger } from '../src/log.ts';
import { startServer, type RunningServer } from '../src/serve.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig } from './helpers.ts';

const TOKEN = 'live-token';
const CLIENTS = 16;
const MAX_NEW_TOKENS = 24;
const dir = writeTinyPackage(tinyConfig({ max_position_embeddings: 128 }), 21); // 2 layers × 4 experts
const PROMPTS = Array.from({ length: CLIENTS }, (_, i) => `${['Call me Ishmael', 'The whale', 'Ahab said', 'Queequeg'][i % 4]} ${i}: ${'xyzw'.slice(0, 1 + (i % 4))}`);

let server: RunningServer;
let engine: Engine;
/** Placement generation of every step each sequence took part in. */
const generationsOf = new Map<number, Set<number>>();
const stepWaiters: Array<{ test: (generation: number, sequences: number) => boolean; wake: () => void }> = [];

const probe: StepObserver = {
  onStep({ sequences }) {
    const generation = engine.workerPool.generation;
    for (const s of sequences) {
      const seen = generationsOf.get(s.id) ?? new Set<number>();
      seen.add(generation);
      generationsOf.set(s.id, seen);
    }
    for (const w of stepWaiters.splice(0)) {
      if (w.test(generation, sequences.length)) w.wake();
      else stepWaiters.push(w);
    }
  },
};
const nextStep = (test: (generation: number, sequences: number) => boolean) => new Promise<void>((wake) => stepWaiters.push({ test, wake }));

beforeAll(async () => {
  const config = engineConfig(dir, {
    port: 0, workers: 2, admin: { token: TOKEN, maxWorkers: 3 },
    // Split replicated experts' batches even when small, so the split path runs during the test.
    placement: { minSplitRows: 1 },
    limits: { maxNewTokens: MAX_NEW_TOKENS, maxBatchSequences: CLIENTS },
  });
  server = await startServer(config, {
    logger: createLogger({ level: 'silent' }), closeGraceMs: 200,
    loadEngine: async (c, observer) => (engine = await Engine.load(c, [observer ?? {}, probe])),
  });
});
afterAll(() => server.close());

/** A greedy completion; a unique never-matching stop string keeps any response cache out of the comparison. */
async function generate(prompt: string, tag: string): Promise<{ status: number; ids: number[] }> {
  const r = await fetch(`${server.url}/generate`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ inputs: prompt, parameters: { max_new_tokens: MAX_NEW_TOKENS, details: true, stop: [`~~never ${tag}~~`] } }),
  });
  const body = await r.json();
  return { status: r.status, ids: r.status === 200 ? body.details.tokens.map((t: { id: number }) => t.id) : [] };
}

const putPlacement = (workers: number, hostsOf: (layer: number, expert: number) => number[]) =>
  fetch(`${server.url}/admin/placement`, {
    method: 'PUT', headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` },
    body: JSON.stringify({
      workers,
      assignments: Array.from({ length: 8 }, (_, g) => ({ layer: Math.floor(g / 4), expert: g % 4, workers: hostsOf(Math.floor(g / 4), g % 4) })),
    }),
  });

describe('live placement change', () => {
  it('serves 16 concurrent clients through three placement changes with no failure and unchanged greedy outputs', async () => {
    // Reference outputs, no placement change.
    const baseline = await Promise.all(PROMPTS.map((p, i) => generate(p, `base ${i}`)));
    expect(baseline.map((b) => b.status)).toEqual(PROMPTS.map(() => 200));
    const startGeneration = engine.workerPool.generation;

    let done = false;
    const results: Array<{ prompt: number; status: number; ids: number[] }> = [];
    const clients = Array.from({ length: CLIENTS }, async (_, c) => {
      for (let k = 0; !done; k++) {
        const prompt = (c + k) % PROMPTS.length;
        results.push({ prompt, ...(await generate(PROMPTS[prompt], `live ${c} ${k}`)) });
      }
    });

    // All clients are in the batch.
    await nextStep((_, sequences) => sequences >= CLIENTS / 2);

    // 1. Same workers, every layer-0 expert replicated on both, layer-1 experts swapped between workers.
    const a = await putPlacement(2, (layer, expert) => (layer === 0 ? [0, 1] : [(expert + 1) % 2]));
    expect(a.status).toBe(200);
    expect((await a.json()).change).toMatchObject({ workers_added: [], workers_retired: [] });
    await nextStep((g) => g === startGeneration + 1);

    // 2. A third worker joins and takes over layer 1 alone; layer 0 stays replicated.
    const b = await putPlacement(3, (layer, expert) => (layer === 1 ? [2] : expert % 2 === 0 ? [0, 1] : [1, 2]));
    expect(b.status).toBe(200);
    const bChange = (await b.json()).change;
    expect(bChange.workers_added).toEqual([2]);
    expect(bChange.unloaded.length).toBeGreaterThan(0);
    await nextStep((g) => g === startGeneration + 2);

    // 3. Back to two workers: worker 2 is retired once idle.
    const back = await putPlacement(2, (layer, expert) => [(layer + expert) % 2]);
    expect(back.status).toBe(200);
    expect((await back.json()).change).toMatchObject({ workers_added: [], workers_retired: [2] });
    await nextStep((g) => g === startGeneration + 3);

    done = true;
    await Promise.all(clients);

    expect(results.length).toBeGreaterThanOrEqual(CLIENTS);
    expect(results.filter((r) => r.status !== 200)).toEqual([]);
    for (const r of results) expect(r.ids, PROMPTS[r.prompt]).toEqual(baseline[r.prompt].ids);

    // Some sequences were in flight across a swap (their steps ran under two placements).
    const spanning = [...generationsOf.values()].filter((g) => g.size > 1).length;
    expect(spanning).toBeGreaterThan(0);
    // The retired worker really served while it was placed, and only two threads are left.
    const load = await (await fetch(`${server.url}/admin/load`, { headers: { authorization: `Bearer ${TOKEN}` } })).json();
    expect(load.windows.since_start.workers[2].tokens).toBeGreaterThan(0);
    const stats = await engine.pool.stats();
    expect(stats.map((s) => s.workerId)).toEqual([0, 1]);
    expect(stats.map((s) => s.resident.length)).toEqual([4, 4]);
  });
});
