/** The rebalancing planner, load-aware dispatch and placement validation on hand-made loads with known answers. */
import { describe, expect, it } from 'vitest';
import { hostStepTime } from '../src/planning/capacity.ts';
import { hostsOf, parseClusterPlacement } from '../src/placement/cluster.ts';
import {
  assignBatches, placeOnWorkers, roundRobinPlacement, validatePlacement, waterFill, waterFillIntegers, type Placement,
} from '../src/placement/placement.ts';
import { planPlacement, predictBalance, PlanError } from '../src/placement/rebalance.ts';
import { LoadTracker } from '../src/placement/load-window.ts';
import type { LayerTrace } from '../src/engine/model.ts';

const maxOf = (xs: number[]) => Math.max(...xs);
const perWorker = (p: Placement) => Array.from({ length: p.workers }, (_, w) => p.hosts.flat().filter((ws) => ws.includes(w)).length);

describe('water-filling', () => {
  it('fills the lowest bins first and levels them', () => {
    expect(waterFill([0, 5], 3)).toEqual([3, 0]);
    expect(waterFill([0, 5], 11)).toEqual([8, 3]);
    expect(waterFill([2, 2, 2], 3)).toEqual([1, 1, 1]);
    expect(waterFillIntegers([0, 0, 0], 10).reduce((a, b) => a + b)).toBe(10);
    expect(waterFillIntegers([0, 4], 7)).toEqual([6, 1]);
    expect(waterFillIntegers([0, 4], 6)).toEqual([5, 1]);
  });
});

describe('predictBalance', () => {
  it('scores round-robin placement of a skewed layer: mean/max of worker load', () => {
    const b = predictBalance(roundRobinPlacement(1, 4, 2), [[6, 2, 2, 2]]);
    expect(b.workerLoad).toEqual([[8, 4]]);
    expect(b.perLayer[0]).toBeCloseTo(0.75);
    expect(b.overall).toBeCloseTo(0.75);
  });

  it('splits a replicated expert over its hosts as the pool does', () => {
    const p: Placement = { workers: 2, hosts: [[[0, 1], [0], [1], [1]]] };
    expect(predictBalance(p, [[60, 20, 10, 10]]).workerLoad[0]).toEqual([50, 50]);
  });

  it('overall is Σ mean / Σ max over layers', () => {
    const p = roundRobinPlacement(2, 2, 2); // layer 0: e0→w0, e1→w1; layer 1: e0→w0, e1→w1
    const b = predictBalance(p, [[10, 10], [30, 10]]);
    expect(b.perLayer).toEqual([1, 20 / 30]);
    expect(b.overall).toBeCloseTo((10 + 20) / (10 + 30));
  });
});

describe('planPlacement', () => {
  it('leaves an even load unreplicated and perfectly balanced', () => {
    const plan = planPlacement({ load: [[5, 5, 5, 5], [5, 5, 5, 5]], workers: 2, maxExpertsPerWorker: null });
    expect(plan.replicas.flat().every((r) => r === 1)).toBe(true);
    expect(plan.predicted.overall).toBe(1);
    expect(perWorker(plan.placement)).toEqual([4, 4]);
  });

  it('packs longest-first: [40, 30, 20, 10] on 2 workers → {40, 10} and {30, 20}', () => {
    const plan = planPlacement({ load: [[40, 30, 20, 10]], workers: 2, maxExpertsPerWorker: null });
    expect(plan.predicted.workerLoad[0]).toEqual([50, 50]);
    const [h] = plan.placement.hosts;
    expect(h[0][0]).toBe(h[3][0]);
    expect(h[1][0]).toBe(h[2][0]);
    expect(h[0][0]).not.toBe(h[1][0]);
  });

  it('replicates a hot expert when memory allows, reaching perfect balance', () => {
    const plan = planPlacement({ load: [[70, 10, 10, 10]], workers: 2, maxExpertsPerWorker: null });
    expect(plan.replicas[0]).toEqual([2, 1, 1, 1]);
    expect(plan.placement.hosts[0][0]).toEqual([0, 1]);
    expect(plan.predicted.overall).toBeCloseTo(1);
    // Before: round-robin puts 70 + 10 on one worker.
    expect(predictBalance(roundRobinPlacement(1, 4, 2), [[70, 10, 10, 10]]).overall).toBeCloseTo(50 / 80);
  });

  it('does not replicate without spare memory: two experts per worker, the hot one with a cold one, is the best there is', () => {
    const plan = planPlacement({ load: [[70, 10, 10, 10]], workers: 2, maxExpertsPerWorker: 2 });
    expect(plan.replicas[0]).toEqual([1, 1, 1, 1]);
    expect(plan.predicted.workerLoad[0].slice().sort((a, b) => a - b)).toEqual([20, 80]);
    expect(perWorker(plan.placement)).toEqual([2, 2]);
  });

  it('spends spare memory on the layer that needs replicas, within the per-worker budget', () => {
    // 2 layers × 4 experts on 2 workers, 5 experts each: one spare slot per worker → one layer gets replicas.
    const plan = planPlacement({ load: [[25, 25, 25, 25], [70, 10, 10, 10]], workers: 2, maxExpertsPerWorker: 5 });
    expect(plan.replicas[0]).toEqual([1, 1, 1, 1]);
    expect(plan.replicas[1]).toEqual([2, 1, 1, 1]);
    expect(maxOf(perWorker(plan.placement))).toBeLessThanOrEqual(5);
    expect(plan.predicted.perLayer[0]).toBe(1);
    expect(plan.predicted.perLayer[1]).toBeCloseTo(1);
    expect(plan.expertsPerWorker).toEqual(perWorker(plan.placement));
  });

  it('replicates the heaviest per-replica load first across layers', () => {
    // Layer 1's hot expert is hotter; with room for only one layer's replicas, layer 1 gets them.
    const plan = planPlacement({ load: [[60, 20, 10, 10], [90, 4, 3, 3]], workers: 2, maxExpertsPerWorker: 5 });
    expect(plan.replicas[1][0]).toBe(2);
    expect(plan.replicas[0]).toEqual([1, 1, 1, 1]);
  });

  it('uses at most one replica per worker, and every expert at least one', () => {
    const plan = planPlacement({ load: [[1000, 1, 1, 1, 1, 1]], workers: 3, maxExpertsPerWorker: null });
    expect(plan.replicas[0][0]).toBe(3);
    for (const hosts of plan.placement.hosts[0]) {
      expect(hosts.length).toBeGreaterThanOrEqual(1);
      expect(new Set(hosts).size).toBe(hosts.length);
    }
  });

  it('stays within LPT\'s bound when no replica helps', () => {
    // Optimum is 9 per worker ({5,4}, {5,4}, {3,3,3}); LPT guarantees at most (4/3 − 1/9)·9 = 11.
    const plan = planPlacement({ load: [[5, 5, 4, 4, 3, 3, 3]], workers: 3, maxExpertsPerWorker: null });
    expect(maxOf(plan.predicted.workerLoad[0])).toBeLessThanOrEqual(11);
  });

  it('keeps experts where they are when that is as good (ties go to the current host)', () => {
    const current: Placement = { workers: 2, hosts: [[[1], [0], [1], [0]]] };
    const plan = planPlacement({ load: [[1, 1, 1, 1]], workers: 2, maxExpertsPerWorker: null, current });
    expect(plan.placement).toEqual(current);
  });

  it('refuses a budget the experts cannot fit in', () => {
    expect(() => planPlacement({ load: [[1, 1, 1, 1], [1, 1, 1, 1]], workers: 2, maxExpertsPerWorker: 3 })).toThrow(PlanError);
    expect(() => planPlacement({ load: [[1, 1, 1, 1], [1, 1, 1, 1]], workers: 2, maxExpertsPerWorker: 3 })).toThrow(/8 experts do not fit on 2 workers with at most 3/);
  });

  it('packs without replicas under a budget too tight for an even split per layer', () => {
    // 3 experts per layer on 2 workers with 3 slots each: ceil(3/2)·2 layers = 4 > 3, still all 6 fit.
    const plan = planPlacement({ load: [[3, 2, 1], [1, 2, 3]], workers: 2, maxExpertsPerWorker: 3 });
    expect(perWorker(plan.placement)).toEqual([3, 3]);
    expect(plan.placement.hosts.flat().every((h) => h.length === 1)).toBe(true);
  });
});

describe('assignBatches', () => {
  const rows = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);

  it('splits a large batch of a replicated expert over its hosts, covering every row once', () => {
    const p: Placement = { workers: 2, hosts: [[[0, 1], [0]]] };
    const parts = assignBatches(p, 0, [{ expert: 0, rows: rows(100) }, { expert: 1, rows: rows(20, 100) }], 8);
    const load = [0, 0];
    for (const part of parts) load[part.worker] += part.rows.length;
    expect(load).toEqual([60, 60]);
    expect(parts.flatMap((x) => x.rows).sort((a, b) => a - b)).toEqual(rows(120));
  });

  it('keeps small batches whole (minSplitRows) on the least-loaded replica', () => {
    const p: Placement = { workers: 2, hosts: [[[0, 1], [0]]] };
    const parts = assignBatches(p, 0, [{ expert: 0, rows: rows(10) }, { expert: 1, rows: rows(3, 10) }], 32);
    expect(parts.filter((x) => x.batch === 0)).toEqual([{ batch: 0, worker: 1, rows: rows(10) }]);
  });
});

describe('validatePlacement', () => {
  const limits = { layers: 2, experts: 2, maxWorkers: 3, maxExpertsPerWorker: 3 };
  const all = (workers: number[]) => [0, 1].flatMap((layer) => [0, 1].map((expert) => ({ layer, expert, workers })));

  it('accepts a valid placement with replicas and a new worker', () => {
    const assignments = [
      { layer: 0, expert: 0, workers: [0] }, { layer: 0, expert: 1, workers: [1] },
      { layer: 1, expert: 0, workers: [0] }, { layer: 1, expert: 1, workers: [2, 1] },
    ];
    const r = validatePlacement({ workers: 3, assignments }, limits);
    expect(r.errors).toEqual([]);
    expect(r.placement?.hosts[1][1]).toEqual([1, 2]);
  });

  it('lists every problem in one answer', () => {
    const r = validatePlacement({
      workers: 4,
      assignments: [{ layer: 0, expert: 0, workers: [0, 5] }, { layer: 3, expert: 0, workers: [0] }, { layer: 0, expert: 9, workers: [1] }],
    }, limits);
    expect(r.placement).toBeNull();
    const text = r.errors.join('\n');
    expect(text).toMatch(/workers is 4, but at most 3 are allowed \(admin.maxWorkers\)/);
    expect(text).toMatch(/placed on worker 5, but workers are 0\.\.3/);
    expect(text).toMatch(/layer 3 does not exist; the model has layers 0\.\.1/);
    expect(text).toMatch(/expert 9 does not exist; the model has experts 0\.\.1/);
    expect(text).toMatch(/not placed on any worker \(layer\.expert\): 0\.1, 1\.0, 1\.1/);
  });

  it('enforces the memory budget per worker', () => {
    const r = validatePlacement({ workers: 2, assignments: all([0, 1]) }, limits);
    expect(r.errors).toEqual([
      'worker 0 would hold 4 experts, over the memory budget of 3 per worker (placement.maxExpertsPerWorker); move some to other workers or drop replicas',
      'worker 1 would hold 4 experts, over the memory budget of 3 per worker (placement.maxExpertsPerWorker); move some to other workers or drop replicas',
    ]);
  });

  it('explains a body of the wrong shape', () => {
    const r = validatePlacement({ workers: 'two' }, limits);
    expect(r.errors.join('\n')).toMatch(/workers: .*number/);
    expect(r.errors.join('\n')).toMatch(/assignments/);
  });
});

describe('LoadTracker', () => {
  const trace = (layer: number, expert: number[], workers: Array<[number, number, number]>): LayerTrace => ({
    layer, k: 1, expert: Int32Array.from(expert), gate: new Float32Array(expert.length), tokensPerExpert: [], overflow: 0, capacity: expert.length,
    workers: workers.map(([worker, tokens, computeMs]) => ({ worker, tokens, experts: [], queueMs: 0, computeMs })), dispatchMs: 0,
  });

  it('sums steps over the last N seconds and since start, with busy fraction and balancedness', () => {
    let now = 0;
    const t = new LoadTracker({ layers: 1, experts: 2, maxWorkers: 2, horizonSeconds: 60, now: () => now });
    t.record([trace(0, [0, 0, 0, 1], [[0, 3, 30], [1, 1, 10]])]);
    now = 30_000;
    t.record([trace(0, [1, 1], [[1, 2, 20]])]);
    now = 35_000;
    const recent = t.window(10);
    expect(recent.steps).toBe(1);
    expect(recent.tokensPerExpert).toEqual([[0, 2]]);
    expect(recent.seconds).toBe(10);
    expect(recent.workers.map((w) => w.busyFraction)).toEqual([0, 20 / 10_000]);
    expect(recent.balancedness.overall).toBeCloseTo(0.5);
    const all = t.window(null);
    expect(all.tokensPerExpert).toEqual([[3, 3]]);
    expect(all.workers.map((w) => w.tokens)).toEqual([3, 3]);
    expect(all.balancedness.overall).toBe(1);
    expect(all.seconds).toBe(35);
    now = 200_000; // the ring forgot; since-start did not
    expect(t.window(60).steps).toBe(0);
    expect(t.window(null).steps).toBe(2);
  });
});

describe('capacity planning over a load trace', () => {
  /** A synthetic trace: expert 0 of every layer takes 70 % of the tokens; compute = 20 µs/batch + 10 µs/row. */
  function syntheticTrace(steps: number): string {
    const lines: string[] = [];
    const placement = roundRobinPlacement(2, 4, 2);
    for (let step = 0; step < steps; step++) {
      const tokens = 20;
      for (let layer = 0; layer < 2; layer++) {
        const perExpert = [14, 2, 2, 2];
        const workers = [0, 1].map((w) => {
          const experts = [0, 1, 2, 3].filter((e) => placement.hosts[layer][e][0] === w);
          const rows = experts.reduce((n, e) => n + perExpert[e], 0);
          return { worker: w, tokens: rows, experts, queue_ms: 0.05, compute_ms: 0.02 * experts.length + 0.01 * rows };
        });
        const slowest = Math.max(...workers.map((w) => w.queue_ms + w.compute_ms));
        lines.push(JSON.stringify({
          ts: new Date(Date.UTC(2026, 0, 1) + step * 10).toISOString(), step, layer, tokens, tokens_per_expert: perExpert,
          overflow: 0, capacity: tokens, sequences: tokens, step_ms: 1 + 0.01 * tokens + 2 * (slowest + 0.1), dispatch_ms: slowest + 0.1, workers,
        }));
      }
    }
    return lines.join('\n') + '\n{not json\n';
  }

  it('parses steps, fits the cost model, and recommends a placement that beats round-robin', async () => {
    const { parseLoadTrace } = await import('../src/planning/trace.ts');
    const { fitCost, planCapacity } = await import('../src/planning/capacity.ts');
    const trace = parseLoadTrace(syntheticTrace(50));
    expect(trace.steps).toHaveLength(50);
    expect(trace.skipped).toBe(1);
    expect([trace.layers, trace.experts, trace.workers]).toEqual([2, 4, 2]);
    const cost = fitCost(trace);
    expect(cost.perTokenMs).toBeCloseTo(0.01, 6);
    expect(cost.perExpertMs).toBeCloseTo(0.02, 6);
    expect(cost.taskOverheadMs).toBeCloseTo(0.05, 6);
    expect(cost.dispatchOverheadMs).toBeCloseTo(0.1, 6);
    expect(cost.trunkFixedMs + cost.trunkPerTokenMs * 20).toBeCloseTo(1.2, 6);

    const plan = planCapacity(trace, { workersMax: 4, cores: 4, maxExpertsPerWorker: null, minSplitRows: 1 });
    expect(plan.scenarios.map((s) => s.workers)).toEqual([1, 2, 3, 4]);
    // The model reproduces the trace on its own placement.
    expect(plan.calibration.predictedStepMs).toBeCloseTo(plan.calibration.measuredStepMs, 6);
    const two = plan.scenarios[1];
    expect(two.before.balance.overall).toBeCloseTo(10 / 16); // round-robin: {14+2, 2+2} per layer
    expect(two.after.balance.overall).toBeCloseTo(1);
    expect(two.after.replay.outputTokensPerS).toBeGreaterThan(two.before.replay.outputTokensPerS);
    // A target nobody reaches falls back to the fastest count and says so.
    const unreachable = planCapacity(trace, { workersMax: 2, cores: 2, maxExpertsPerWorker: null, targetTokensPerS: 1e9 });
    expect(unreachable.reason).toMatch(/no worker count up to 2 meets the targets/);
  });

  it('`switchyard plan` prints the recommendation and writes the SVG and placement', async () => {
    const { mkdtempSync, readFileSync, writeFileSync } = await import('node:fs');
    const { join } = await import('node:path');
    const { tmpdir } = await import('node:os');
    const { main } = await import('../src/cli.ts');
    const dir = mkdtempSync(join(tmpdir(), 'switchyard-plan-'));
    writeFileSync(join(dir, 'trace.jsonl'), syntheticTrace(30));
    const out: string[] = [];
    const err: string[] = [];
    const io = { stdout: (t: string) => out.push(t), stderr: (t: string) => err.push(t) };
    const code = await main(['plan', '--trace', join(dir, 'trace.jsonl'), '--workers-max', '3', '--cores', '2',
      '--svg', join(dir, 'plan.svg'), '--out', join(dir, 'placement.json')], io);
    expect(code).toBe(0);
    expect(err.join('\n')).toMatch(/skipped 1 malformed lines/);
    expect(out.join('\n')).toMatch(/recommended: \d workers?/);
    expect(out.join('\n')).toMatch(/calibration: on the trace's own dispatches \(2 workers/);
    const svg = readFileSync(join(dir, 'plan.svg'), 'utf8');
    expect(svg).toMatch(/^<\?xml/);
    expect(svg).toMatch(/<svg [^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
    expect(svg).toMatch(/Per-worker load at \d workers/);
    const placement = JSON.parse(readFileSync(join(dir, 'placement.json'), 'utf8'));
    expect(validatePlacement(placement, { layers: 2, experts: 4, maxWorkers: 3, maxExpertsPerWorker: null }).errors).toEqual([]);

    expect(await main(['plan'], io)).toBe(2);
    expect(await main(['plan', '--trace', join(dir, 'missing.jsonl')], io)).toBe(1);

    // Expert hosts: a cluster placement over host-0.., which a gateway accepts.
    out.length = 0;
    expect(await main(['plan', '--trace', join(dir, 'trace.jsonl'), '--hosts-max', '3', '--workers-per-host', '2', '--cores-per-host', '2',
      '--host-rtt-ms', '0.5', '--out', join(dir, 'cluster.json')], io)).toBe(0);
    expect(out.join('\n')).toMatch(/recommended: \d hosts?/);
    const cluster = JSON.parse(readFileSync(join(dir, 'cluster.json'), 'utf8'));
    const parsed = parseClusterPlacement(cluster, 2, 4);
    expect(hostsOf(parsed).every((h) => /^host-[0-2]$/.test(h))).toBe(true);
    expect(await main(['plan', '--trace', join(dir, 'trace.jsonl'), '--p99-ms', 'fast'], io)).toBe(2);
  });
});

describe('placeOnWorkers', () => {
  it('keeps an expert on the workers it has, puts a new one on the least-held worker, and drops the unwanted', () => {
    const current = { workers: 3, hosts: [[[0], [0], [1], []], [[2], [], [], []]] };
    const wanted = new Set(['0.0', '0.2', '0.3', '1.1', '1.2']);
    // Held now: worker 0 two experts, 1 one, 2 one; 0.1 and 1.0 are dropped, the new 0.3, 1.1, 1.2 fill 1, 2, then 0.
    expect(placeOnWorkers(current, (l, e) => wanted.has(`${l}.${e}`)).hosts).toEqual([[[0], [], [1], [1]], [[], [2], [0], []]]);
    const empty = { workers: 2, hosts: [[[], [], []]] };
    expect(placeOnWorkers(empty, () => true).hosts).toEqual([[[0], [1], [0]]]); // round-robin from nothing
  });
});

describe('capacity over expert hosts', () => {
  const cost = { perTokenMs: 0.01, perExpertMs: 0.1, taskOverheadMs: 0.2, dispatchOverheadMs: 0.1, trunkFixedMs: 1, trunkPerTokenMs: 0.01, tasks: 1, steps: 1 };
  const step = { step: 0, tokens: 40, sequences: 40, stepMs: 0, layers: [{ layer: 0, tokensPerExpert: [10, 10, 10, 10], workers: [] }] } as unknown as Parameters<typeof hostStepTime>[0];
  it('charges each layer one network round trip and waits for its slowest host, whose batches share its workers', () => {
    const shape = { hostsMax: 2, workersPerHost: 2, coresPerHost: 2, rttMs: 1 };
    const one = { workers: 1, hosts: [[[0], [0], [0], [0]]] };
    const two = { workers: 2, hosts: [[[0], [1], [0], [1]]] };
    const batch = cost.perExpertMs + cost.perTokenMs * 10; // 0.2 ms
    const trunk = cost.trunkFixedMs + cost.trunkPerTokenMs * 40;
    const fixed = cost.dispatchOverheadMs + cost.taskOverheadMs + shape.rttMs;
    // One host: 4 batches over its 2 workers; two hosts: 2 batches each over 2 workers.
    expect(hostStepTime(step, one, cost, shape)).toBeCloseTo(trunk + fixed + (4 * batch) / 2, 9);
    expect(hostStepTime(step, two, cost, shape)).toBeCloseTo(trunk + fixed + (2 * batch) / 2, 9);
    expect(hostStepTime(step, two, cost, { ...shape, rttMs: 3 }) - hostStepTime(step, two, cost, shape)).toBeCloseTo(2, 9);
    // A hot expert on both hosts still runs its whole batch on one of them (NATS gives a request to one replica).
    const hot = { ...step, layers: [{ layer: 0, tokensPerExpert: [256, 0, 0, 0], workers: [] }] } as unknown as typeof step;
    const replicated = { workers: 2, hosts: [[[0, 1], [0], [0], [1]]] };
    expect(hostStepTime(hot, replicated, cost, shape)).toBeCloseTo(trunk + fixed + cost.perExpertMs + cost.perTokenMs * 256, 9);
  });
});

describe('automatic rebalancing', () => {
  it('rebalances only when the recent window is below the threshold and the plan gains enough', async () => {
    const { PlacementController } = await import('../src/engine/placement-controller.ts');
    let placement = roundRobinPlacement(1, 4, 2);
    const applied: Placement[] = [];
    const pool = {
      get placement() { return placement; },
      applyPlacement: async (p: Placement) => {
        applied.push(p);
        placement = p;
        return { loaded: [], unloaded: [], workersAdded: [], workersRetired: [], ms: 0, loadMs: 0 };
      },
    };
    let now = 0;
    const quiet = { info: () => {}, warn: () => {} };
    const controller = new PlacementController(pool, {
      layers: 1, experts: 4, maxWorkers: 2, maxExpertsPerWorker: null, rebalanceWindowSeconds: 60,
      auto: { intervalSeconds: 60, threshold: 0.8, minTokens: 10 },
    }, quiet, () => now);
    let changes = 0;
    controller.onChange = () => changes++;
    const step = (experts: number[]) => {
      const trace: LayerTrace = {
        layer: 0, k: 1, expert: Int32Array.from(experts), gate: new Float32Array(experts.length), tokensPerExpert: [], overflow: 0,
        capacity: experts.length, workers: [], dispatchMs: 0,
      };
      controller.tracker.record([trace]);
    };

    expect(await controller.autoRebalance()).toBeNull(); // no load yet
    step([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]); // even: round-robin is balanced
    now = 1000;
    expect(await controller.autoRebalance()).toBeNull();
    expect(applied).toHaveLength(0);

    for (let i = 0; i < 5; i++) step([0, 0, 0, 0, 0, 0, 2, 1, 3]); // expert 0 and 2 share worker 0 under round-robin
    now = 2000;
    const result = await controller.autoRebalance();
    expect(result?.applied).toBe(true);
    expect(result!.after.overall).toBeGreaterThan(result!.before.overall + 0.05);
    expect(applied).toHaveLength(1);
    expect(changes).toBe(1);
  });
});
