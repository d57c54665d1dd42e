/**
 * A step profiler that only observes: where one scheduler step's time goes, per batch size.
 *
 * It needs no change to the model or the scheduler, so it keeps working while they are rebuilt:
 * - `timeForward(model, profiler)` wraps `forward` on that one model instance (not the class) and notes its wall time,
 *   the step's shape (sequences, tokens, decode-only or not) and, when asked, each layer's router input for a later
 *   replay of the routing math;
 * - as a StepObserver, `onStep` gets the whole step's time (forward + sampling + handing tokens to their requests)
 *   and each layer's LayerTrace: dispatchMs (the pool round trip, combine included) and the workers' computeMs.
 *
 * Trunk time (embedding, attention, LM head) is what is left of forward once dispatch and routing are taken out:
 * the model reports no finer split, and timing inside it would mean editing it. Routing is measured by replaying
 * the caller's routing function on the captured inputs after the run (same shapes), so it adds nothing to the timed
 * steps.
 */
import type { LayerTrace, MoeModel, SequenceInput, StepOutput } from './model.ts';
import type { StepObserver } from './scheduler.ts';

/** One profiled step. Times in ms; NaN where not measured. */
export interface StepSample {
  /** Sequences in the step. */
  batch: number;
  tokens: number;
  /** Every sequence contributed exactly one token (a pure decode step). */
  decode: boolean;
  /** Scheduler step: forward + sampling + token hand-off. */
  stepMs: number;
  forwardMs: number;
  /** Σ over layers of the pool round trip (LayerTrace.dispatchMs). */
  dispatchMs: number;
  /** Σ over layers of the slowest worker's computeMs: the compute on the dispatch's critical path. */
  computeMs: number;
  /** Σ over layers and workers of computeMs (all compute, parallel parts added up). */
  computeSumMs: number;
  /** Router math + dispatch plan, replayed (see replayRouting); NaN until then. */
  routingMs: number;
}

/** Medians over the samples of one batch size. */
export interface ProfileRow {
  batch: number;
  steps: number;
  stepMs: number;
  forwardMs: number;
  /** forward − dispatch − routing: embedding, attention, LM head (and the model's own glue). */
  trunkMs: number;
  routingMs: number;
  dispatchMs: number;
  computeMs: number;
  /** dispatch − compute: messages, queueing, copies, combine. */
  dispatchOverheadMs: number;
  /** step − forward: sampling and handing the tokens to their requests. */
  samplingMs: number;
}

export function median(values: readonly number[]): number {
  const sorted = values.filter(Number.isFinite).sort((a, b) => a - b);
  const n = sorted.length;
  if (n === 0) return Number.NaN;
  const mid = n >> 1;
  return n % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Per-layer dispatch and compute summed over a step's layers. */
export function layerTimes(layers: readonly Pick<LayerTrace, 'dispatchMs' | 'workers'>[]): { dispatchMs: number; computeMs: number; computeSumMs: number } {
  let dispatchMs = 0;
  let computeMs = 0;
  let computeSumMs = 0;
  for (const l of layers) {
    dispatchMs += l.dispatchMs;
    let slowest = 0;
    for (const w of l.workers) {
      slowest = Math.max(slowest, w.computeMs);
      computeSumMs += w.computeMs;
    }
    computeMs += slowest;
  }
  return { dispatchMs, computeMs, computeSumMs };
}

/**
 * Medians per batch size. Each component's median is taken on its own (so the parts need not add up exactly to
 * the step); trunk and sampling are differences per step first, then medians. `decodeOnly` (default true) keeps
 * pure decode steps: prefill steps have other shapes and would blur the rows.
 */
export function summarizeProfile(samples: readonly StepSample[], decodeOnly = true): ProfileRow[] {
  const byBatch = new Map<number, StepSample[]>();
  for (const s of samples) {
    if (decodeOnly && !s.decode) continue;
    const list = byBatch.get(s.batch) ?? [];
    list.push(s);
    byBatch.set(s.batch, list);
  }
  return [...byBatch.entries()]
    .sort(([a], [b]) => a - b)
    .map(([batch, list]) => {
      const m = (f: (s: StepSample) => number) => median(list.map(f));
      // Routing replay may be missing (NaN): then trunk is forward − dispatch and includes routing.
      const routingOf = (s: StepSample) => (Number.isFinite(s.routingMs) ? s.routingMs : 0);
      return {
        batch,
        steps: list.length,
        stepMs: m((s) => s.stepMs),
        forwardMs: m((s) => s.forwardMs),
        trunkMs: m((s) => s.forwardMs - s.dispatchMs - routingOf(s)),
        routingMs: m((s) => s.routingMs),
        dispatchMs: m((s) => s.dispatchMs),
        computeMs: m((s) => s.computeMs),
        dispatchOverheadMs: m((s) => s.dispatchMs - s.computeMs),
        samplingMs: m((s) => s.stepMs - s.forwardMs),
      };
    });
}

/** One step's captured router inputs, kept for replayRouting. */
export interface CapturedRouting {
  sample: StepSample;
  tokens: number;
  /** Per layer: the MoE input rows [tokens · hidden]. */
  moeInputs: Float32Array[];
}

export interface ProfilerOptions {
  /** Keep each step's router inputs for replayRouting (memory: layers × tokens × hidden floats per step). */
  captureRouting?: boolean;
  /** Most steps kept (older ones are dropped first); default 5000. */
  maxSamples?: number;
}

export class StepProfiler implements StepObserver {
  readonly samples: StepSample[] = [];
  readonly captured: CapturedRouting[] = [];
  private pending: { forwardMs: number; batch: number; tokens: number; decode: boolean; moeInputs: Float32Array[] } | null = null;
  private readonly maxSamples: number;
  /** May be switched between runs (e.g. off for a pass where only step times matter). */
  captureRouting: boolean;

  constructor(options: ProfilerOptions = {}) {
    this.maxSamples = options.maxSamples ?? 5000;
    this.captureRouting = options.captureRouting === true;
  }

  reset(): void {
    this.samples.length = 0;
    this.captured.length = 0;
    this.pending = null;
  }

  /** Called by the forward wrapper once forward has returned. */
  noteForward(inputs: readonly SequenceInput[], forwardMs: number, moeInputs: Float32Array[]): void {
    const tokens = inputs.reduce((n, s) => n + s.tokens.length, 0);
    this.pending = { forwardMs, batch: inputs.length, tokens, decode: inputs.every((s) => s.tokens.length === 1), moeInputs };
  }

  onStep(step: { sequences: unknown[]; output: StepOutput; ms: number }): void {
    const p = this.pending;
    this.pending = null;
    const times = layerTimes(step.output.layers);
    const sample: StepSample = {
      batch: p?.batch ?? step.sequences.length,
      tokens: p?.tokens ?? Number.NaN,
      decode: p?.decode ?? false,
      stepMs: step.ms,
      forwardMs: p?.forwardMs ?? Number.NaN,
      ...times,
      routingMs: Number.NaN,
    };
    if (this.samples.length >= this.maxSamples) this.samples.shift();
    this.samples.push(sample);
    if (this.captureRouting && p && p.moeInputs.length > 0) {
      if (this.captured.length >= this.maxSamples) this.captured.shift();
      this.captured.push({ sample, tokens: p.tokens, moeInputs: p.moeInputs });
    }
  }

  /**
   * Fills in routingMs of the captured steps by running `route(layer, moeInput, tokens)` (the router math and the
   * dispatch plan) on each layer's captured input, timed; then drops the captured inputs.
   */
  replayRouting(route: (layer: number, moeInput: Float32Array, tokens: number) => void, repeats = 3): void {
    for (const c of this.captured) {
      const times: number[] = [];
      for (let r = 0; r < repeats; r++) {
        const t0 = performance.now();
        c.moeInputs.forEach((x, layer) => route(layer, x, c.tokens));
        times.push(performance.now() - t0);
      }
      // The fastest of a few: the replay runs cold the first time, the step had the data hot.
      c.sample.routingMs = Math.min(...times);
    }
    this.captured.length = 0;
  }
}

/**
 * Wraps `forward` on this model instance so `profiler` hears of each call's wall time (and, with captureRouting,
 * the layers' router inputs through forward's onRouted hook, chained to a caller's own). Returns the undo.
 */
export function timeForward(model: Pick<MoeModel, 'forward'>, profiler: StepProfiler): () => void {
  const original = model.forward;
  const wrapped: MoeModel['forward'] = async function (this: MoeModel, inputs, options = {}) {
    const moeInputs: Float32Array[] = [];
    const onRouted = profiler.captureRouting
      ? (layer: number, moeInput: Float32Array, expert: Int32Array, k: number) => {
          moeInputs[layer] = moeInput.slice(); // a copy: the model may reuse its buffers (and the copy is ~µs)
          options.onRouted?.(layer, moeInput, expert, k);
        }
      : options.onRouted;
    const t0 = performance.now();
    const out = await original.call(this, inputs, { ...options, onRouted });
    profiler.noteForward(inputs, performance.now() - t0, moeInputs);
    return out;
  };
  (model as { forward: MoeModel['forward'] }).forward = wrapped;
  return () => {
    (model as { forward: MoeModel['forward'] }).forward = original;
  };
}
