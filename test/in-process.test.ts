/**
 * experts.execution 'in-process': the compute team's kernels against one thread (bit for bit), the whole step against
 * the worker pool's dense-native experts (bit for bit) and the plain TypeScript reference, and what the gateway
 * answers about placement, health and conflicting configuration.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DenseNativeKernel, nativeDense, runBatchesOnTeam, runLayerOnTeam } from '../experts/kernels/dense-native.ts';
import { combineInto, gatherRows, planDispatch } from '../router/dispatch.ts';
import { checkInput, randomValues } from '../experts/kernels/reference.ts';
import { ConfigSchema, loadConfig } from '../src/config.ts';
import { Engine } from '../src/engine/engine.ts';
import { createLogger } from '../src/log.ts';
import { startServer, type RunningServer } from '../src/serve.ts';
import { prunePackage } from '../src/pruning/prune-package.ts';
import { ReferenceModel } from './reference/reference-model.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig, maxAbsDiff, request, tokensBeforeAnImmediate } from './helpers.ts';

const dense = nativeDense();
const BUNDLED = path.join(import.meta.dirname, '..', 'models', 'switchyard-moe');
const inProcess = { workers: null, experts: { execution: 'in-process' as const } };

function expert(hidden: number, ffn: number, seed: number) {
  return { gate: randomValues(ffn * hidden, seed, 0.3), up: randomValues(ffn * hidden, seed + 1, 0.3), down: randomValues(hidden * ffn, seed + 2, 0.3), ffn };
}

describe.skipIf(!dense.available)('runBatches on the compute team', () => {
  afterAll(() => {
    if (dense.available) dense.addon.configureTeam(1, 100);
  });

  // Widths off the multiple of 8 (padded rows) and of the 64-row units, structured-pruned widths side by side, and
  // batches of 0, 1, a few and more than one 64-token chunk.
  for (const helpers of [0, 1, 3]) {
    for (const hidden of [37, 256]) {
      it(`${helpers} helper thread(s), hidden ${hidden}: every batch as its kernel computes it alone, bit for bit`, () => {
        if (!dense.available) return;
        expect(dense.addon.configureTeam(helpers, 50)).toEqual({ helpers, spinUs: 50 });
        const widths = [53, 512, 130, 24];
        const tokens = Uint32Array.from([1, 0, 70, 5]);
        const kernels = widths.map((ffn, i) => DenseNativeKernel.create(expert(hidden, ffn, 10 * i + hidden), hidden, ffn));
        const total = tokens.reduce((a, b) => a + b, 0);
        const x = checkInput(total, hidden, 7);
        const out = new Float32Array(total * hidden).fill(Number.NaN);
        for (let round = 0; round < 3; round++) { // helpers asleep, spinning, and again
          runBatchesOnTeam(kernels, x, tokens, out);
          let row = 0;
          kernels.forEach((kernel, i) => {
            const n = tokens[i];
            const alone = new Float32Array(n * hidden);
            kernel.runSync(x.subarray(row * hidden, (row + n) * hidden), n, alone);
            expect(Array.from(out.subarray(row * hidden, (row + n) * hidden)), `batch ${i}`).toEqual(Array.from(alone));
            row += n;
          });
        }
        for (const k of kernels) void k.release();
      });
    }
  }

  it('runLayerInto: gather, experts and combine in one call equal runBatches plus combineInto, bit for bit (top-2, scaled)', () => {
    if (!dense.available) return;
    const hidden = 40;
    const T = 75;
    const k = 2;
    const kernels = [24, 64, 33].map((ffn, i) => DenseNativeKernel.create(expert(hidden, ffn, 50 + i), hidden, ffn));
    const x = checkInput(T, hidden, 3);
    // Each token chooses two different experts of the three; gates from a fixed pattern.
    const expertOf = Int32Array.from({ length: T * k }, (_, slot) => ((slot >> 1) + (slot & 1)) % 3);
    const gating = { k, expert: expertOf, gate: Float32Array.from({ length: T * k }, (_, i) => 0.1 + ((i * 37) % 11) / 13) };
    const plan = planDispatch(expertOf, 3, null, k);
    for (const scale of [1, 0.22]) {
      const want = checkInput(T, hidden, 9);
      const got = Float32Array.from(want);
      for (const { expert, rows } of plan.batches) {
        const out = new Float32Array(rows.length * hidden);
        runBatchesOnTeam([kernels[expert]], gatherRows(x, rows, hidden), Uint32Array.from([rows.length]), out);
        combineInto(want, out, rows, expert, gating, hidden, scale);
      }
      const rows = Uint32Array.from(plan.batches.flatMap((b) => b.rows));
      const gates = Float32Array.from(plan.batches.flatMap(({ expert, rows: batch }) => batch.map((row) => {
        const g = gating.gate[row * k + (gating.expert[row * k] === expert ? 0 : 1)];
        return scale === 1 ? g : Math.fround(g * scale);
      })));
      runLayerOnTeam(plan.batches.map((b) => kernels[b.expert]), x, rows, Uint32Array.from(plan.batches, (b) => b.rows.length), gates, got);
      expect(Array.from(got), `scale ${scale}`).toEqual(Array.from(want));
    }
    expect(() => runLayerOnTeam([kernels[0]], x, Uint32Array.from([T]), Uint32Array.from([1]), new Float32Array(1), new Float32Array(x.length))).toThrow(/outside x/);
    expect(() => runLayerOnTeam([kernels[0]], x, Uint32Array.from([0, 1]), Uint32Array.from([1]), new Float32Array(2), new Float32Array(x.length))).toThrow(/Σ tokens/);
    for (const kernel of kernels) void kernel.release();
  });

  it('refuses what it cannot run, saying what is wrong', () => {
    if (!dense.available) return;
    const a = DenseNativeKernel.create(expert(16, 24, 1), 16, 24);
    const b = DenseNativeKernel.create(expert(8, 24, 2), 8, 24);
    const x = new Float32Array(32);
    const out = new Float32Array(32);
    expect(() => runBatchesOnTeam([a, a], x, Uint32Array.from([1, 1]), out)).toThrow(/appears twice/);
    expect(() => runBatchesOnTeam([a, b], x, Uint32Array.from([1, 1]), out)).toThrow(/one hidden width/);
    expect(() => runBatchesOnTeam([a], x, Uint32Array.from([3]), out)).toThrow(/Σ tokens × hidden/);
    expect(() => runBatchesOnTeam([a], x, Uint32Array.from([1, 1]), out)).toThrow(/one count per handle/);
    expect(() => dense.addon.runBatches([{}], x, Uint32Array.from([1]), out)).toThrow(/made by this addon's create/);
    expect(() => dense.addon.configureTeam(-1, 0)).toThrow(/helpers a whole number/);
    void a.release();
    expect(() => runBatchesOnTeam([a], x, Uint32Array.from([1]), out)).toThrow(/after release/);
  });
});

describe.skipIf(!dense.available)('in-process experts, bundled model', () => {
  let workers: Engine;
  let team: Engine;
  beforeAll(async () => {
    // The workers' dense-native kernel: the same arithmetic, so the two must agree bit for bit.
    workers = await Engine.load(engineConfig(BUNDLED, { experts: { kernel: 'dense-native' } }));
    team = await Engine.load(engineConfig(BUNDLED, inProcess));
  }, 60_000);
  afterAll(async () => {
    await workers?.close();
    await team?.close();
  });

  it('one worker, the team, holds every expert; the trunk runs natively', () => {
    expect(team.pool.placement.workers).toBe(1);
    expect(team.pool.placement.hosts.flat().every((hosts) => hosts.length === 1 && hosts[0] === 0)).toBe(true);
    expect(team.health()).toEqual({ status: 'ok', workers: [{ worker: 0, state: 'ready', restarts: 0 }] });
    expect(team.model.trunkKernel).toBe('native');
    expect(() => team.workerPool).toThrow(/in-process/);
  });

  it('a step of prefills and decodes gives the worker pool\'s logits and routing, bit for bit', async () => {
    const prompts = ['Call me Ishmael. Some years ago, never mind how long precisely', 'a', 'The quick brown fox', 'naïve café'];
    const run = async (engine: Engine) => {
      const caches = prompts.map(() => engine.model.newCache(256));
      const first = await engine.model.forward(prompts.map((p, i) => ({ cache: caches[i], tokens: engine.codec.encode(p) })));
      // Then decode steps with more sequences than the attention kernel has threads, one of them a new prefill.
      const second = await engine.model.forward([
        ...caches.map((cache, i) => ({ cache, tokens: [(i * 37 + 11) % 256] })),
        { cache: engine.model.newCache(256), tokens: engine.codec.encode('Ahab') },
      ]);
      return [first, second];
    };
    const [want, got] = [await run(workers), await run(team)];
    for (const [s, step] of got.entries()) {
      step.logits.forEach((logits, i) => expect(Array.from(logits), `step ${s} sequence ${i}`).toEqual(Array.from(want[s].logits[i])));
      step.layers.forEach((layer, l) => expect(Array.from(layer.expert), `step ${s} layer ${l}`).toEqual(Array.from(want[s].layers[l].expert)));
    }
  });

  it('greedy generation equals the worker pool\'s, alone and batched', async () => {
    const prompts = ['Once upon a time', 'To be or not to be', 'The sea'];
    const alone = await Promise.all(prompts.map(async (p) => (await workers.generate(request(p, 24))).tokens.map((t) => t.id)));
    const batched = await Promise.all(prompts.map((p) => team.generate(request(p, 24))));
    expect(batched.map((r) => r.tokens.map((t) => t.id))).toEqual(alone);
  });
});

describe.skipIf(!dense.available)('in-process experts, tiny random package', () => {
  const config = tinyConfig({ hidden_size: 24, intermediate_size: 40, num_experts: 6 });
  const dir = writeTinyPackage(config, 5);
  const reference = ReferenceModel.fromPackage(dir, config);
  let engine: Engine;
  beforeAll(async () => {
    engine = await Engine.load(engineConfig(dir, inProcess));
  });
  afterAll(() => engine?.close());

  it('lets the event loop in at every step: an immediate queued with a request runs before its second token', async () => {
    // Its forward awaits only settled promises: without a yield per step the scheduler held the thread until every
    // sequence finished (a health check waited 1.1 s behind 16 generations).
    const seen = await tokensBeforeAnImmediate(engine, 40);
    expect(seen).toBeGreaterThanOrEqual(0);
    expect(seen).toBeLessThan(2);
  });

  it('matches the TypeScript reference model\'s logits and router choices', async () => {
    for (const prompt of ['Call me Ishmael.', 'The whale surfaced and', 'x']) {
      const ids = engine.codec.encode(prompt);
      const want = reference.forward(ids);
      const got = await engine.model.forward([{ cache: engine.model.newCache(), tokens: ids }]);
      expect(maxAbsDiff(got.logits[0], want.logits[ids.length - 1])).toBeLessThan(1e-4);
      got.layers.forEach((layer, l) => expect(Array.from(layer.expert)).toEqual(want.router[l].map((r) => r.expert)));
    }
  });
});

describe.skipIf(!dense.available)('in-process experts on pruned packages', () => {
  // Sparse-bitmask experts with some dropped, and structured-pruned (narrower) experts: read dense, run dense-native.
  const base = writeTinyPackage(tinyConfig({ hidden_size: 24, intermediate_size: 48 }), 31);
  writeFileSync(path.join(base, 'calibration.txt'), 'Call me Ishmael. Some years ago, never mind how long precisely, having little money. '.repeat(6));
  for (const [name, options] of [
    ['magnitude 50 % with a quarter of the experts dropped', { method: 'magnitude', sparsity: 0.5, dropExperts: 0.25 }],
    ['structured 25 %', { method: 'structured', sparsity: 0.25 }],
  ] as const) {
    it(`${name}: the worker pool's logits and routing, bit for bit; dropped experts never chosen`, async () => {
      const dir = mkdtempSync(path.join(tmpdir(), 'in-process-pruned-'));
      const pruned = await prunePackage({ modelDir: base, outDir: dir, ...options });
      const workers = await Engine.load(engineConfig(dir, { experts: { kernel: 'dense-native' } }));
      const team = await Engine.load(engineConfig(dir, inProcess));
      try {
        const dropped = new Set(pruned.dropped.map((d) => `${d.layer}.${d.expert}`));
        expect(team.pool.placement.hosts.flatMap((row, l) => row.map((hosts, e) => [`${l}.${e}`, hosts.length] as const))
          .filter(([key, n]) => (n === 0) !== dropped.has(key))).toEqual([]);
        const ids = team.codec.encode('Call me Ishmael. Some years ago');
        const [a, b] = await Promise.all([workers, team].map((engine) => engine.model.forward([{ cache: engine.model.newCache(), tokens: ids, allPositions: true }])));
        expect(Array.from(b.logits[0])).toEqual(Array.from(a.logits[0]));
        b.layers.forEach((layer, l) => {
          expect(Array.from(layer.expert)).toEqual(Array.from(a.layers[l].expert));
          expect(Array.from(layer.expert).some((e) => dropped.has(`${l}.${e}`))).toBe(false);
        });
      } finally {
        await workers.close();
        await team.close();
      }
    });
  }
});

describe.skipIf(!dense.available)('in-process experts behind the admin API', () => {
  const TOKEN = 'in-process-admin';
  const dir = writeTinyPackage(tinyConfig(), 13);
  let server: RunningServer;
  const admin = (route: string, init: RequestInit = {}) =>
    fetch(server.url + route, { ...init, headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` } });
  beforeAll(async () => {
    server = await startServer(engineConfig(dir, { ...inProcess, port: 0, admin: { token: TOKEN } }), { logger: createLogger({ level: 'silent' }), closeGraceMs: 200 });
    const r = await fetch(`${server.url}/generate`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ inputs: 'Ahab', parameters: { max_new_tokens: 4 } }),
    });
    expect(r.status).toBe(200);
  });
  afterAll(() => server?.close());

  it('accepts the placement in use and refuses any other, or a rebalance, with 422 saying how to change it', async () => {
    const current = await (await admin('/admin/placement')).json();
    expect(current.workers).toBe(1);
    expect((await admin('/admin/placement', { method: 'PUT', body: JSON.stringify(current) })).status).toBe(200);
    const moved = { workers: 2, assignments: current.assignments.map((a: { layer: number; expert: number }) => ({ ...a, workers: [a.expert % 2] })) };
    const refused = await admin('/admin/placement', { method: 'PUT', body: JSON.stringify(moved) });
    expect(refused.status).toBe(422);
    expect((await refused.json()).error).toMatch(/experts.execution to 'workers'/);
    const rebalance = await admin('/admin/rebalance', { method: 'POST', body: '{}' });
    expect(rebalance.status).toBe(422);
    expect((await rebalance.json()).error).toMatch(/in-process/);
    const health = await (await fetch(`${server.url}/health`)).json();
    expect(health).toMatchObject({ status: 'ok', workers: [{ worker: 0, state: 'ready' }] });
  });
});

describe('experts.execution in the configuration', () => {
  it("defaults to 'workers' and refuses settings that only the worker pool has, naming each", () => {
    expect(ConfigSchema.parse({}).experts.execution).toBe('workers');
    const conflicts: Array<[object, RegExp]> = [
      [{ nats: { url: 'nats://127.0.0.1:4222' } }, /nats\.url.*NATS/],
      [{ experts: { execution: 'in-process', kernel: 'sparse' } }, /experts\.kernel/],
      [{ onnx: { executionProviders: { experts: ['webgpu', 'cpu'] } } }, /executionProviders\.experts/],
      [{ experts: { execution: 'in-process', maxResidentPerWorker: 4 } }, /maxResidentPerWorker/],
      [{ workers: 2 }, /workers.*teamThreads/],
      [{ placementFile: 'placement.json' }, /placementFile/],
    ];
    for (const [extra, message] of conflicts) {
      const input = { ...extra, experts: { execution: 'in-process' as const, ...(extra as { experts?: object }).experts } };
      expect(() => loadConfig({ env: {}, overrides: input }), JSON.stringify(extra)).toThrow(message);
      expect(() => loadConfig({ env: {}, overrides: input })).toThrow(/experts\.execution to 'workers'/);
    }
    expect(loadConfig({ env: {}, overrides: { experts: { execution: 'in-process', kernel: 'dense-native', teamThreads: 3 } } }).experts)
      .toMatchObject({ execution: 'in-process', teamThreads: 3 });
  });
});
