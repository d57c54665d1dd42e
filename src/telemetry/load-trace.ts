/**
 * The load trace: one JSON line per step and layer, appended to a file, enough to replay the expert load later
 * (schema: docs/load-trace.md). The file is opened once, at start, in append mode (a synchronous open, so a bad
 * path fails createTelemetry at once); each step's lines are then written as one chunk to a write stream, with
 * no synchronous I/O per step. If the stream falls more than `maxBufferedBytes` behind the disk, records are
 * dropped and counted rather than buffered without bound.
 */
import { createWriteStream, mkdirSync, openSync, type WriteStream } from 'node:fs';
import path from 'node:path';
import type { LayerLoad, StepSummary } from './step-summary.ts';

export interface LoadTraceWorker {
  worker: number;
  tokens: number;
  experts: number[];
  queue_ms: number;
  compute_ms: number;
}

export interface LoadTraceHost {
  host: string;
  tokens: number;
  experts: number[];
  round_trip_ms: number;
  compute_ms: number;
}

/** One line of the load trace (docs/load-trace.md). */
export interface LoadTraceRecord {
  ts: string;
  step: number;
  layer: number;
  tokens: number;
  tokens_per_expert: number[];
  overflow: number;
  capacity: number;
  sequences: number;
  step_ms: number;
  dispatch_ms: number;
  workers: LoadTraceWorker[];
  /** Only with scale-out: expert hosts that ran batches of this layer. */
  hosts?: LoadTraceHost[];
}

/** Milliseconds rounded to the microsecond: the clocks are not finer and the lines stay short. */
const ms = (x: number) => Math.round(x * 1000) / 1000;

export function loadTraceRecord(step: StepSummary, layer: LayerLoad): LoadTraceRecord {
  return {
    ts: new Date(step.endMs).toISOString(),
    step: step.index,
    layer: layer.layer,
    tokens: layer.tokens,
    tokens_per_expert: layer.routedPerExpert,
    overflow: layer.overflow,
    capacity: layer.capacity,
    sequences: step.sequences,
    step_ms: ms(step.ms),
    dispatch_ms: ms(layer.dispatchMs),
    workers: layer.workers.map((w) => ({
      worker: w.worker,
      tokens: w.tokens,
      experts: w.experts,
      queue_ms: ms(w.queueMs),
      compute_ms: ms(w.computeMs),
    })),
    ...(layer.hosts.length > 0 ? {
      hosts: layer.hosts.map((h) => ({ host: h.host, tokens: h.tokens, experts: h.experts, round_trip_ms: ms(h.roundTripMs), compute_ms: ms(h.computeMs) })),
    } : {}),
  };
}

export interface LoadTraceWriterOptions {
  /** Called once per step whose records were dropped, with how many (default: nothing). */
  onDrop?: (records: number) => void;
  /** Called on the first write error; writing stops after it. Without it, close() rejects with that error. */
  onError?: (error: Error) => void;
  maxBufferedBytes?: number;
}

export class LoadTraceWriter {
  private readonly stream: WriteStream;
  private error: Error | null = null;
  private closing: Promise<void> | null = null;

  /** Opens (creating folders and the file as needed) `file` for appending; throws if it cannot be opened. */
  constructor(readonly file: string, private readonly options: LoadTraceWriterOptions = {}) {
    mkdirSync(path.dirname(file), { recursive: true });
    const fd = openSync(file, 'a');
    this.stream = createWriteStream(file, { fd, flags: 'a', autoClose: true });
    this.stream.on('error', (error) => {
      if (this.error) return;
      this.error = error;
      this.options.onError?.(error);
    });
  }

  /** Appends the step's records, one per layer. Never throws. */
  write(step: StepSummary): void {
    if (this.error || this.closing || step.layers.length === 0) return;
    if (this.stream.writableLength > (this.options.maxBufferedBytes ?? 16 * 1024 * 1024)) {
      this.options.onDrop?.(step.layers.length);
      return;
    }
    let chunk = '';
    for (const layer of step.layers) chunk += JSON.stringify(loadTraceRecord(step, layer)) + '\n';
    this.stream.write(chunk);
  }

  /** Flushes and closes the file; rejects with the first write error if there was one and no onError took it. */
  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      if (this.stream.closed || this.stream.destroyed) return resolve();
      this.stream.once('close', () => resolve());
      this.stream.end();
    }).then(() => {
      if (this.error && !this.options.onError) throw this.error;
    });
    return this.closing;
  }
}
