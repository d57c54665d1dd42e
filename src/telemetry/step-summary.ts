/**
 * Turns one scheduler step (what StepObserver.onStep receives) into the numbers every sink needs — routed tokens
 * per expert, overflow, worker timings — and a reconstructed timeline, computed once per step.
 *
 * Timeline. The engine reports only each layer's `dispatchMs` and the whole step's `ms`, measured up to the moment
 * onStep is called (`endMs`). The step span is [endMs − ms, endMs]. The time outside dispatch (embedding,
 * attention, routing, LM head, sampling) is not broken down per layer, so it is assumed to be spread evenly over
 * the L + 1 gaps around the L dispatches: gap = (ms − Σ dispatchMs) / (L + 1), and layer l's dispatch starts at
 * stepStart + (l + 1)·gap + Σ_{k<l} dispatchMs_k. Each dispatch window therefore has its exact measured
 * duration, the windows are in layer order, never overlap and lie inside the step; only their placement within
 * the step is approximate (off by at most the non-dispatch time of the step). If Σ dispatchMs > ms (a caller
 * measuring differently), the step is widened to Σ dispatchMs and the gaps are zero.
 */
import type { Sequence } from '../engine/sequence.ts';
import type { LayerTrace, StepOutput } from '../engine/model.ts';

export type WorkerTiming = LayerTrace['workers'][number];

export interface StepInput {
  sequences: Sequence[];
  output: StepOutput;
  ms: number;
}

export interface LayerLoad {
  layer: number;
  /** Tokens routed at this layer (the step's tokens). */
  tokens: number;
  /** Assignments the router sent to each expert (from `expert`; a token counts once per expert it chose), overflowed ones included. */
  routedPerExpert: number[];
  overflow: number;
  capacity: number;
  dispatchMs: number;
  workers: WorkerTiming[];
  /** Expert hosts that ran batches of this layer (scale-out); empty without. */
  hosts: NonNullable<LayerTrace['hosts']>;
  /** Reconstructed dispatch window, epoch milliseconds. */
  startMs: number;
  endMs: number;
}

export interface StepSummary {
  /** 0-based step number within this Telemetry instance. */
  index: number;
  sequences: number;
  tokens: number;
  ms: number;
  startMs: number;
  endMs: number;
  layers: LayerLoad[];
}

/** Counts of each expert id in `expert`; the result has at least `experts` entries. Negative ids are ignored. */
export function countRouted(expert: Int32Array, experts: number): number[] {
  const counts = new Array<number>(experts).fill(0);
  for (let i = 0; i < expert.length; i++) {
    const e = expert[i];
    if (e < 0) continue;
    while (e >= counts.length) counts.push(0);
    counts[e]++;
  }
  return counts;
}

/** The timeline described above: step start and each layer's [start, end] window, epoch milliseconds. */
export function layerWindows(endMs: number, stepMs: number, dispatchMs: readonly number[]): { startMs: number; windows: Array<[number, number]> } {
  const dispatched = dispatchMs.reduce((sum, d) => sum + Math.max(0, d), 0);
  const total = Math.max(stepMs, dispatched);
  const startMs = endMs - total;
  const gap = (total - dispatched) / (dispatchMs.length + 1);
  const windows: Array<[number, number]> = [];
  let t = startMs;
  for (const d of dispatchMs) {
    t += gap;
    windows.push([t, t + Math.max(0, d)]);
    t += Math.max(0, d);
  }
  return { startMs, windows };
}

export function summarizeStep(step: StepInput, index: number, endMs: number): StepSummary {
  const traces = step.output.layers;
  const { startMs, windows } = layerWindows(endMs, step.ms, traces.map((t) => t.dispatchMs));
  const layers = traces.map((t, i): LayerLoad => ({
    layer: t.layer,
    tokens: t.expert.length / t.k,
    routedPerExpert: countRouted(t.expert, t.tokensPerExpert.length),
    overflow: t.overflow,
    capacity: t.capacity,
    dispatchMs: t.dispatchMs,
    workers: t.workers,
    hosts: t.hosts ?? [],
    startMs: windows[i][0],
    endMs: windows[i][1],
  }));
  return {
    index,
    sequences: step.sequences.length,
    tokens: traces.length > 0 ? traces[0].expert.length / traces[0].k : 0,
    ms: step.ms,
    startMs,
    endMs,
    layers,
  };
}
