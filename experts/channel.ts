/**
 * The shared-memory hot path between the pool (main thread) and one expert worker thread: a layer's batch goes
 * through a SharedArrayBuffer and Atomics instead of a Piscina task (a postMessage round trip, ≈40 µs each way,
 * plus structured cloning). Load, unload, stats, fault and the channel hand-over itself still travel as Piscina tasks.
 *
 * Layout of the buffer (bytes):
 *   [0, 128)        control, Int32: SEQ (main bumps it to post a batch), DONE (the worker stores the batch's SEQ
 *                   there when finished), STATUS (0 ok, 1 the batch threw), COUNT (items), CMD (0 run, 1 stop), LOADS,
 *                   EVICTIONS, THREAD (worker residency counters), ERROR_LENGTH; Float64 at byte 64: computeMs.
 *   [128, +12·maxItems)  items: (layer, expert, tokens) Int32 triples.
 *   [.., +1024)     error message (UTF-8) when STATUS is 1.
 *   [.., +4·capacity)   input rows [Σ tokens, hidden] Float32, items back to back.
 *   [.., +4·capacity)   output rows, same layout.
 *
 * Protocol: one batch in flight per channel (the pool serializes batches per worker). Main writes items and input,
 * then `Atomics.add(SEQ)` + notify; the worker computes, writes output, stores DONE = SEQ, notifies. Both sides spin a
 * few µs before waiting: the main thread with Atomics.waitAsync (it must never block its event loop), the worker too,
 * on its own event loop, so Piscina tasks (load, unload, stats) still reach it between batches. (A blocking
 * Atomics.wait in the worker would wake faster but would hold Piscina's messages until the next batch.)
 *
 * Sizing: a channel is created for the first batch (at least 8 rows) and replaced by one at least twice as large when
 * a batch does not fit; it never shrinks, so each worker keeps 8 bytes per float of its largest batch (a 4096-row
 * prefill at hidden 256: 8 MiB).
 */
import type { ExpertItem } from './protocol.ts';

const SEQ = 0;
const DONE = 1;
const STATUS = 2;
const COUNT = 3;
const CMD = 4;
const LOADS = 5;
const EVICTIONS = 6;
const THREAD = 7;
const ERROR_LENGTH = 8;
const CONTROL_BYTES = 128;
const COMPUTE_MS_F64 = 8; // Float64 index: byte 64
const ERROR_BYTES = 1024;

export const CMD_RUN = 0;
export const CMD_STOP = 1;

/** What the worker needs to attach to a channel (sent in a `channel` Piscina task). */
export interface ChannelSetup {
  buffer: SharedArrayBuffer;
  /** Floats each of the input and output regions holds (tokens·hidden of the largest batch it takes). */
  capacity: number;
  /** Most items (expert batches) one batch may carry. */
  maxItems: number;
  /** µs the worker spins on SEQ after a batch before it waits on its event loop. */
  spinUs: number;
}

type WaitAsync = (array: Int32Array, index: number, value: number, timeout?: number) =>
  { async: false; value: 'not-equal' | 'timed-out' } | { async: true; value: Promise<'ok' | 'timed-out'> };
// Node 20 has Atomics.waitAsync; the ES2022 lib this project compiles against does not declare it.
const waitAsync = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync;

// A pending Atomics.waitAsync does not keep Node's event loop alive, and Piscina unrefs threads with no task: a
// script awaiting a channel batch would exit in the middle. A ref'd timer held while any batch is awaited prevents it.
let awaiting = 0;
let holder: ReturnType<typeof setInterval> | null = null;
function keepAlive(delta: 1 | -1): void {
  awaiting += delta;
  if (awaiting > 0 && !holder) holder = setInterval(() => undefined, 2 ** 30);
  else if (awaiting === 0 && holder) {
    clearInterval(holder);
    holder = null;
  }
}

/** Views over one channel buffer, the same on both threads. */
export class ChannelView {
  readonly control: Int32Array;
  readonly computeMs: Float64Array;
  readonly items: Int32Array;
  readonly error: Uint8Array;
  readonly input: Float32Array;
  readonly output: Float32Array;

  constructor(readonly setup: ChannelSetup) {
    const { buffer, capacity, maxItems } = setup;
    this.control = new Int32Array(buffer, 0, CONTROL_BYTES / 4);
    this.computeMs = new Float64Array(buffer, 0, CONTROL_BYTES / 8);
    this.items = new Int32Array(buffer, CONTROL_BYTES, maxItems * 3);
    const errorAt = CONTROL_BYTES + maxItems * 12;
    this.error = new Uint8Array(buffer, errorAt, ERROR_BYTES);
    const inputAt = errorAt + ERROR_BYTES; // a multiple of 4
    this.input = new Float32Array(buffer, inputAt, capacity);
    this.output = new Float32Array(buffer, inputAt + capacity * 4, capacity);
  }

  /** A new channel for batches of up to `capacity` floats and `maxItems` items. */
  static create(capacity: number, maxItems: number, spinUs: number): ChannelView {
    const bytes = CONTROL_BYTES + maxItems * 12 + ERROR_BYTES + capacity * 8;
    return new ChannelView({ buffer: new SharedArrayBuffer(bytes), capacity, maxItems, spinUs });
  }

  // ---- main thread ----

  /**
   * Posts a batch: writes the items, lets `fill` write the input rows (into `input`, items back to back), then wakes
   * the worker. Returns the batch's sequence number, for awaitDone.
   */
  post(items: readonly ExpertItem[], fill: (input: Float32Array) => void): number {
    if (items.length > this.setup.maxItems) throw new RangeError(`${items.length} items: the channel takes ${this.setup.maxItems}`);
    for (let i = 0; i < items.length; i++) {
      this.items[i * 3] = items[i].layer;
      this.items[i * 3 + 1] = items[i].expert;
      this.items[i * 3 + 2] = items[i].tokens;
    }
    fill(this.input);
    this.control[COUNT] = items.length;
    this.control[CMD] = CMD_RUN;
    // The Atomics.add is a full barrier: the worker that sees the new SEQ also sees the items and rows written above.
    const seq = Atomics.add(this.control, SEQ, 1) + 1;
    Atomics.notify(this.control, SEQ);
    return seq;
  }

  /** Tells a worker loop attached to this channel to end (when the channel is replaced by a larger one). */
  stop(): void {
    this.control[CMD] = CMD_STOP;
    Atomics.add(this.control, SEQ, 1);
    Atomics.notify(this.control, SEQ);
  }

  /**
   * Resolves when the worker finished batch `seq`: spins up to `spinUs` µs (cheap for tiny batches), then waits with
   * Atomics.waitAsync without blocking the event loop. `cancelled()` is checked on every wake: the pool sets it and
   * calls wake() when the worker's thread died, and the promise then rejects with `cancelled()`'s Error.
   */
  async awaitDone(seq: number, spinUs: number, cancelled: () => Error | null): Promise<void> {
    if (spinUs > 0) {
      const until = performance.now() + spinUs / 1000;
      while (performance.now() < until) if (Atomics.load(this.control, DONE) === seq) return;
    }
    if (Atomics.load(this.control, DONE) === seq) return;
    keepAlive(1);
    try {
      for (;;) {
        const done = Atomics.load(this.control, DONE);
        if (done === seq) return;
        const error = cancelled();
        if (error) throw error;
        const waited = waitAsync(this.control, DONE, done);
        if (waited.async) await waited.value;
      }
    } finally {
      keepAlive(-1);
    }
  }

  /** Wakes awaitDone (to look at its cancellation). */
  wake(): void {
    Atomics.notify(this.control, DONE);
  }

  /** The finished batch's outcome: its error message (STATUS 1), or compute time and residency counters. */
  result(): { error: string } | { computeMs: number; residency: { loads: number; evictions: number; thread: number } } {
    if (Atomics.load(this.control, STATUS) !== 0) {
      return { error: new TextDecoder().decode(this.error.slice(0, this.control[ERROR_LENGTH])) };
    }
    return {
      computeMs: this.computeMs[COMPUTE_MS_F64],
      residency: { loads: this.control[LOADS], evictions: this.control[EVICTIONS], thread: this.control[THREAD] },
    };
  }

  // ---- worker thread ----

  /**
   * The worker's loop: runs each posted batch with `run(items, input, output)` until the channel is stopped or
   * `attached()` turns false. Spins `spinUs` µs after each batch, then waits on the event loop (Atomics.waitAsync),
   * so Piscina tasks are taken between batches.
   */
  async serve(
    run: (items: ExpertItem[], input: Float32Array, output: Float32Array) => Promise<{ computeMs: number; loads: number; evictions: number; thread: number }>,
    attached: () => boolean,
  ): Promise<void> {
    const c = this.control;
    let seen = Atomics.load(c, SEQ);
    for (;;) {
      let seq = Atomics.load(c, SEQ);
      if (seq === seen && this.setup.spinUs > 0) {
        const until = performance.now() + this.setup.spinUs / 1000;
        while (seq === seen && performance.now() < until) seq = Atomics.load(c, SEQ);
      }
      if (seq === seen) {
        if (!attached()) return;
        const waited = waitAsync(c, SEQ, seen);
        if (waited.async) await waited.value;
        continue;
      }
      seen = seq;
      if (Atomics.load(c, CMD) === CMD_STOP || !attached()) return;
      const count = c[COUNT];
      const items: ExpertItem[] = [];
      for (let i = 0; i < count; i++) items.push({ layer: this.items[i * 3], expert: this.items[i * 3 + 1], tokens: this.items[i * 3 + 2] });
      try {
        const done = await run(items, this.input, this.output);
        this.computeMs[COMPUTE_MS_F64] = done.computeMs;
        c[LOADS] = done.loads;
        c[EVICTIONS] = done.evictions;
        c[THREAD] = done.thread;
        c[STATUS] = 0;
      } catch (error) {
        const bytes = new TextEncoder().encode((error as Error)?.message ?? String(error)).subarray(0, ERROR_BYTES);
        this.error.set(bytes);
        c[ERROR_LENGTH] = bytes.length;
        c[STATUS] = 1;
      }
      Atomics.store(c, DONE, seq); // a barrier: main sees the output and status written above
      Atomics.notify(c, DONE);
    }
  }
}
