/**
 * Reading a JSON-lines load trace (docs/load-trace.md) back into steps: one entry per scheduler step with its
 * per-layer routing counts and worker timings. Several runs may share a file; a run ends where `step` goes back.
 */
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import type { LoadTraceRecord, LoadTraceWorker } from '../telemetry/load-trace.ts';

export interface TraceLayer {
  layer: number;
  tokensPerExpert: number[];
  overflow: number;
  dispatchMs: number;
  workers: LoadTraceWorker[];
}

export interface TraceStep {
  run: number;
  step: number;
  /** Epoch ms of the step's end (from `ts`); NaN when unreadable. */
  time: number;
  tokens: number;
  sequences: number;
  stepMs: number;
  layers: TraceLayer[];
}

export interface LoadTrace {
  layers: number;
  experts: number;
  steps: TraceStep[];
  /** Lines read, and lines skipped as malformed (with the first few reasons). */
  lines: number;
  skipped: number;
  problems: string[];
  /** Workers seen in the trace (highest id + 1). */
  workers: number;
}

export class TraceError extends Error {
  override readonly name = 'TraceError';
}

const isNumber = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x);
const isIndex = (x: unknown, below: number): x is number => Number.isSafeInteger(x) && (x as number) >= 0 && (x as number) < below;

/**
 * Bounds on the indices a trace line may carry. The planner sizes arrays by them (layers × experts × workers), so a
 * single line with worker 1e9 would otherwise abort the process (V8 cannot allocate the table); real deployments are
 * far below these.
 */
export const TRACE_LIMITS = { layers: 1024, experts: 4096, workers: 4096 } as const;

function checkRecord(r: unknown): string | null {
  if (typeof r !== 'object' || r === null) return 'not a JSON object';
  const x = r as Partial<LoadTraceRecord>;
  if (!isNumber(x.step) || !isNumber(x.layer) || !isNumber(x.tokens)) return 'step, layer and tokens must be numbers';
  if (!Number.isSafeInteger(x.step) || x.step < 0) return 'step must be a non-negative integer';
  if (!isIndex(x.layer, TRACE_LIMITS.layers)) return `layer must be an integer in 0..${TRACE_LIMITS.layers - 1}`;
  if (!Array.isArray(x.tokens_per_expert) || !x.tokens_per_expert.every(isNumber)) return 'tokens_per_expert must be an array of numbers';
  if (x.tokens_per_expert.length > TRACE_LIMITS.experts) return `tokens_per_expert holds at most ${TRACE_LIMITS.experts} experts`;
  if (!Array.isArray(x.workers)) return 'workers must be an array';
  for (const w of x.workers) {
    if (!isNumber(w?.worker) || !isNumber(w?.tokens) || !isNumber(w?.compute_ms) || !Array.isArray(w?.experts)) return 'each worker needs worker, tokens, experts, compute_ms';
    if (!isIndex(w.worker, TRACE_LIMITS.workers)) return `worker must be an integer in 0..${TRACE_LIMITS.workers - 1}`;
    if (!w.experts.every((e: unknown) => isIndex(e, TRACE_LIMITS.experts))) return `a worker's experts must be integers in 0..${TRACE_LIMITS.experts - 1}`;
  }
  return null;
}

/** Builds steps from records in file order. */
export class TraceBuilder {
  private readonly steps: TraceStep[] = [];
  private run = 0;
  private current: TraceStep | null = null;
  private lines = 0;
  private skipped = 0;
  private readonly problems: string[] = [];
  private layers = 0;
  private experts = 0;
  private workers = 0;

  addLine(line: string): void {
    if (line.trim() === '') return;
    this.lines++;
    let record: unknown;
    try {
      record = JSON.parse(line);
    } catch (error) {
      this.skip(`line ${this.lines}: not JSON (${(error as Error).message})`);
      return;
    }
    const problem = checkRecord(record);
    if (problem) {
      this.skip(`line ${this.lines}: ${problem}`);
      return;
    }
    this.add(record as LoadTraceRecord);
  }

  private skip(reason: string): void {
    this.skipped++;
    if (this.problems.length < 5) this.problems.push(reason);
  }

  add(r: LoadTraceRecord): void {
    const c = this.current;
    if (c && (r.step < c.step || (r.step === c.step && c.layers.some((l) => l.layer === r.layer)))) this.run++;
    if (!c || c.step !== r.step || this.run !== c.run) {
      this.current = {
        run: this.run, step: r.step, time: Date.parse(r.ts), tokens: r.tokens, sequences: isNumber(r.sequences) ? r.sequences : 0,
        stepMs: isNumber(r.step_ms) ? r.step_ms : 0, layers: [],
      };
      this.steps.push(this.current);
    }
    this.current!.layers.push({
      layer: r.layer, tokensPerExpert: r.tokens_per_expert, overflow: isNumber(r.overflow) ? r.overflow : 0,
      dispatchMs: isNumber(r.dispatch_ms) ? r.dispatch_ms : 0, workers: r.workers,
    });
    this.layers = Math.max(this.layers, r.layer + 1);
    this.experts = Math.max(this.experts, r.tokens_per_expert.length);
    for (const w of r.workers) this.workers = Math.max(this.workers, w.worker + 1);
  }

  finish(): LoadTrace {
    if (this.steps.length === 0) {
      throw new TraceError(this.lines === 0
        ? 'the trace is empty; record one with telemetry.loadTraceFile while serving traffic'
        : `no usable line in the trace (${this.skipped} skipped; first problems: ${this.problems.join('; ')})`);
    }
    // Layers every step should have; steps missing some (a truncated tail) are dropped.
    const steps = this.steps.filter((s) => s.layers.length === this.layers);
    for (const s of steps) {
      s.layers.sort((a, b) => a.layer - b.layer);
      for (const l of s.layers) while (l.tokensPerExpert.length < this.experts) l.tokensPerExpert.push(0);
    }
    return {
      layers: this.layers, experts: this.experts, steps, lines: this.lines, skipped: this.skipped,
      problems: this.problems, workers: this.workers,
    };
  }
}

export function parseLoadTrace(text: string): LoadTrace {
  const builder = new TraceBuilder();
  for (const line of text.split('\n')) builder.addLine(line);
  return builder.finish();
}

/** Streams the file line by line (traces can be large). */
export async function readLoadTrace(file: string): Promise<LoadTrace> {
  const builder = new TraceBuilder();
  const stream = createReadStream(file, { encoding: 'utf8' });
  const lines = createInterface({ input: stream, crlfDelay: Infinity });
  try {
    for await (const line of lines) builder.addLine(line);
  } catch (error) {
    throw new TraceError(`cannot read the trace ${file}: ${(error as Error).message}`);
  }
  return builder.finish();
}

/** Total tokens routed to each expert over the trace, [layer][expert]. */
export function totalLoad(trace: LoadTrace): number[][] {
  const load = Array.from({ length: trace.layers }, () => new Array<number>(trace.experts).fill(0));
  for (const s of trace.steps) for (const l of s.layers) l.tokensPerExpert.forEach((n, e) => (load[l.layer][e] += n));
  return load;
}

/**
 * A stretch of a trace without steps. The trace records no events of its own, so gaps are read from what it does
 * carry: `step` numbers (they count every step since the gateway started) and `ts` (each step's end) with `step_ms`.
 * - `restart`: the gateway started again (`step` went back: a new run in the file).
 * - `missing`: `step` skips numbers within a run: those steps ran, but their lines are not in the file (dropped
 *   when the writer fell behind, `moe.load_trace.dropped_records`, or cut off by a truncated tail).
 * - `idle`: numbers continue, but no step ran for at least `minIdleMs` (the scheduler steps only while it has
 *   sequences, so this is time without requests).
 * Expert worker restarts are not in the trace (they are counted by the `moe.worker.restarts` metric).
 */
export interface TraceGap {
  kind: 'idle' | 'missing' | 'restart';
  /** Index in `trace.steps` of the first step after the gap. */
  next: number;
  /** Epoch ms: the end of the step before and the start of the step after (NaN when the trace has no timestamps). */
  from: number;
  to: number;
  /** Steps whose lines are missing (kind `missing`), else 0. */
  missingSteps: number;
}

/** The gaps of a trace in order (see TraceGap); idle stretches shorter than `minIdleMs` (default 1000) are not gaps. */
export function traceGaps(trace: LoadTrace, minIdleMs = 1000): TraceGap[] {
  const gaps: TraceGap[] = [];
  for (let i = 1; i < trace.steps.length; i++) {
    const prev = trace.steps[i - 1];
    const s = trace.steps[i];
    const from = prev.time;
    const to = s.time - s.stepMs;
    if (s.run !== prev.run) gaps.push({ kind: 'restart', next: i, from, to, missingSteps: 0 });
    else if (s.step > prev.step + 1) gaps.push({ kind: 'missing', next: i, from, to, missingSteps: s.step - prev.step - 1 });
    else if (to - from >= minIdleMs) gaps.push({ kind: 'idle', next: i, from, to, missingSteps: 0 });
  }
  return gaps;
}
