/** Unit tests for bench/peer.ts's pure logic and the step profiler's aggregation (no processes, no timing assertions). */
import { describe, expect, it } from 'vitest';
import { UsageError } from '../bench/cli-common.ts';
import { bestPeer, OURS, parsePeerArgs, peerParallels, profileTable, runOrder, sideBySideTable, tokenCountNotes } from '../bench/peer-lib.ts';
import type { LevelMetrics, LevelResult } from '../bench/run-load.ts';
import { layerTimes, StepProfiler, summarizeProfile, timeForward, type StepSample } from '../src/engine/step-profile.ts';

function metrics(over: Partial<LevelMetrics>): LevelMetrics {
  return {
    ok: 8, errors: 0, tokens: 512, tokensPerS: 100, ttftP50Ms: 20, ttftP99Ms: 40, decodeTps: 50, meanTokens: 64, countMismatches: 0,
    ...over,
  };
}
const result = (target: string, clients: number, over: Partial<LevelMetrics> = {}): LevelResult =>
  ({ target, clients, requests: 8, repeats: 3, metrics: metrics(over) });

describe('parsePeerArgs', () => {
  it('defaults: levels 1,8,32, 64 tokens, 3 repeats, threads = cores, recorded', () => {
    const o = parsePeerArgs([], 2)!;
    expect(o.levels).toEqual([1, 8, 32]);
    expect(o.maxTokens).toBe(64);
    expect(o.repeats).toBe(3);
    expect(o.threads).toBe(2);
    expect(o.execution).toBe('in-process');
    expect(o.record).toBe(true);
    expect(o.requestsFor(1)).toBe(8);
    expect(o.requestsFor(32)).toBe(64);
  });

  it('--quick is a small run that is never recorded; explicit flags still win', () => {
    const o = parsePeerArgs(['--quick', '--max-tokens', '8'], 4)!;
    expect(o.record).toBe(false);
    expect(o.levels).toEqual([1, 4]);
    expect(o.maxTokens).toBe(8);
    expect(o.repeats).toBe(1);
    expect(o.requestsFor(4)).toBe(4);
  });

  it('reads the flags and rejects bad ones', () => {
    const o = parsePeerArgs(['--clients', '2,16', '--requests', '5', '--repeats', '4', '--threads', '3', '--execution', 'workers', '--profile', '--no-record'], 2)!;
    expect(o).toMatchObject({ levels: [2, 16], repeats: 4, threads: 3, peerThreads: 3, execution: 'workers', profile: true, record: false });
    // The in-process compute team has one thread per core: other thread counts need the worker pool.
    expect(() => parsePeerArgs(['--threads', '3'], 2)).toThrow(/--execution workers/);
    expect(() => parsePeerArgs(['--execution', 'gpu'], 2)).toThrow(UsageError);
    expect(parsePeerArgs(['--peer-threads', '1'], 2)).toMatchObject({ threads: 2, peerThreads: 1 });
    expect(o.requestsFor(16)).toBe(5);
    expect(parsePeerArgs(['--help'], 2)).toBeNull();
    expect(() => parsePeerArgs(['--clients', '0'], 2)).toThrow(UsageError);
    expect(() => parsePeerArgs(['--max-tokens', '100000'], 2)).toThrow(UsageError);
    expect(() => parsePeerArgs(['--peer', '/x', '--no-peer'], 2)).toThrow(UsageError);
    expect(() => parsePeerArgs(['--bogus'], 2)).toThrow(UsageError);
  });
});

describe('peer configurations and run order', () => {
  it('uses 8 slots up to 8 clients, and both 8 and one per client above', () => {
    expect(peerParallels(1)).toEqual([8]);
    expect(peerParallels(8)).toEqual([8]);
    expect(peerParallels(32)).toEqual([8, 32]);
  });

  it('alternates peer, ours, peer within a repeat', () => {
    expect(runOrder(1).map((s) => s.target)).toEqual(['peer -np 8', OURS]);
    expect(runOrder(32)).toEqual([{ target: 'peer -np 8', parallel: 8 }, { target: OURS }, { target: 'peer -np 32', parallel: 32 }]);
  });

  it('takes the better peer configuration for the ratios', () => {
    const results = [result('peer -np 8', 32, { tokensPerS: 800 }), result(OURS, 32, { tokensPerS: 400 }), result('peer -np 32', 32, { tokensPerS: 560 })];
    expect(bestPeer(results, 32)?.target).toBe('peer -np 8');
    expect(bestPeer(results, 1)).toBeUndefined();
    const table = sideBySideTable(results);
    expect(table).toContain('-np 8');
    expect(table).toContain('0.50'); // 400 / 800
  });

  it('prints a dash for the ratios when there is no peer', () => {
    const table = sideBySideTable([result(OURS, 1)]);
    expect(table.split('\n')[2]).toContain('—');
  });

  it('notes unequal token counts', () => {
    expect(tokenCountNotes([result(OURS, 1), result('peer -np 8', 1)], 64)).toEqual([]);
    const notes = tokenCountNotes([result(OURS, 1), result('peer -np 8', 1, { meanTokens: 60.5 })], 64);
    expect(notes).toHaveLength(1);
    expect(notes[0]).toContain('peer -np 8');
  });
});

describe('step profiler aggregation', () => {
  const sample = (over: Partial<StepSample>): StepSample => ({
    batch: 1, tokens: 1, decode: true, stepMs: 10, forwardMs: 9, dispatchMs: 5, computeMs: 2, computeSumMs: 3, routingMs: 0.5, ...over,
  });

  it('sums dispatch per layer and takes the slowest worker as the critical-path compute', () => {
    const t = layerTimes([
      { dispatchMs: 1, workers: [{ worker: 0, tokens: 1, experts: [0], queueMs: 0, computeMs: 0.25 }, { worker: 1, tokens: 1, experts: [1], queueMs: 0, computeMs: 0.5 }] },
      { dispatchMs: 2, workers: [{ worker: 0, tokens: 1, experts: [0], queueMs: 0, computeMs: 1 }] },
    ]);
    expect(t).toEqual({ dispatchMs: 3, computeMs: 1.5, computeSumMs: 1.75 });
  });

  it('groups decode steps by batch with medians, trunk = forward − dispatch − routing, sampling = step − forward', () => {
    const rows = summarizeProfile([
      sample({ stepMs: 10, forwardMs: 9 }),
      sample({ stepMs: 12, forwardMs: 11 }),
      sample({ stepMs: 14, forwardMs: 13 }),
      sample({ batch: 8, tokens: 8, stepMs: 20, forwardMs: 18, dispatchMs: 8, routingMs: Number.NaN }),
      sample({ batch: 8, tokens: 20, decode: false, stepMs: 99, forwardMs: 98 }),
    ]);
    expect(rows.map((r) => [r.batch, r.steps])).toEqual([[1, 3], [8, 1]]);
    expect(rows[0]).toMatchObject({ stepMs: 12, forwardMs: 11, trunkMs: 5.5, routingMs: 0.5, dispatchMs: 5, computeMs: 2, dispatchOverheadMs: 3, samplingMs: 1 });
    // Without a routing replay the trunk keeps the routing time.
    expect(rows[1]).toMatchObject({ trunkMs: 10, samplingMs: 2 });
    expect(Number.isNaN(rows[1].routingMs)).toBe(true);
    expect(summarizeProfile([sample({ decode: false })], false)).toHaveLength(1);
  });

  it('pairs a wrapped forward with the next onStep and replays routing on the captured inputs', async () => {
    const profiler = new StepProfiler({ captureRouting: true });
    const layers = [{ dispatchMs: 2, workers: [{ worker: 0, tokens: 2, experts: [0], queueMs: 0, computeMs: 1 }] }];
    const model = {
      forward: async (inputs: Array<{ tokens: number[] }>, options: { onRouted?: (l: number, x: Float32Array, e: Int32Array) => void } = {}) => {
        options.onRouted?.(0, new Float32Array(inputs.length * 4), new Int32Array(inputs.length));
        return { logits: [], layers };
      },
    };
    const seen: number[] = [];
    // The model's own type is not needed for the wrapper's logic; a stand-in with the same call shape is enough here.
    const undo = timeForward(model as never, profiler);
    const inputs = [{ tokens: [1] }, { tokens: [2] }];
    const output = await model.forward(inputs, { onRouted: (l) => seen.push(l) });
    profiler.onStep({ sequences: [{}, {}], output: output as never, ms: 50 });
    expect(seen).toEqual([0]); // the caller's hook still runs
    expect(profiler.samples).toHaveLength(1);
    expect(profiler.samples[0]).toMatchObject({ batch: 2, tokens: 2, decode: true, stepMs: 50, dispatchMs: 2, computeMs: 1 });
    expect(profiler.captured).toHaveLength(1);
    const routed: Array<[number, number]> = [];
    profiler.replayRouting((layer, x, tokens) => routed.push([layer, x.length / tokens]), 2);
    expect(routed).toEqual([[0, 4], [0, 4]]);
    expect(Number.isFinite(profiler.samples[0].routingMs)).toBe(true);
    expect(profiler.captured).toHaveLength(0);
    undo();
    expect(model.forward).not.toBe(undefined);
    expect(profileTable([{ batch: 2, engine: summarizeProfile(profiler.samples)[0], http: { stepMs: 10, perTokenMs: 12.5, steps: 3 } }])).toContain('2.50');
  });
});
