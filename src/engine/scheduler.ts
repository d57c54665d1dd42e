/**
 * Continuous batching: every step runs all active sequences together. New requests join at the next step and
 * finished ones leave; prefill chunks and decode tokens share a step within the token budget.
 */
import type { MoeModel, StepOutput } from './model.ts';
import type { KvCache } from './kv-cache.ts';
import type { Sequence } from './sequence.ts';
import { CancelledError, OverloadedError, RequestTimeoutError, ShuttingDownError } from './types.ts';

export interface SchedulerLimits {
  maxBatchSequences: number;
  maxBatchTokens: number;
  queueDepth: number;
  requestTimeoutMs: number;
}

export interface StepObserver {
  onStep?(step: { sequences: Sequence[]; output: StepOutput; ms: number }): void;
  onFinish?(sequence: Sequence): void;
}

/** Engine hooks around a sequence's prefill (the prefix cache uses them). They must not throw. */
export interface PrefillHooks {
  /** The sequence joins the batch and has not run yet: it may take a cached prompt prefix (and skip its prefill). */
  onJoin?(sequence: Sequence): void;
  /** The step that ran the sequence's last prompt token has ended: its cache holds the whole prompt. */
  onPrefilled?(sequence: Sequence): void;
}

interface Entry {
  sequence: Sequence;
  /** Settle the request; both also remove the entry's abort listener (see submit). */
  resolve: () => void;
  reject: (error: Error) => void;
  deadline: number;
}

export class Scheduler {
  private readonly queue: Entry[] = [];
  private readonly active: Entry[] = [];
  private running: Promise<void> | null = null;
  private closed = false;
  /**
   * Caches of sequences that left (finished, failed, cancelled, shut down), released (KvCache.release: their arrays
   * back to the model's pool) only between steps: a sequence cancelled during a step is still in the step's forward.
   */
  private readonly retired: KvCache[] = [];

  constructor(
    private readonly model: MoeModel,
    private readonly limits: SchedulerLimits,
    private readonly observer: StepObserver = {},
    private readonly hooks: PrefillHooks = {},
  ) {}

  get activeCount(): number {
    return this.active.length;
  }

  get queuedCount(): number {
    return this.queue.length;
  }

  /** Throws OverloadedError when a new request would find no free batch slot and the queue full, ShuttingDownError once close() began. */
  checkCapacity(): void {
    if (this.closed) throw new ShuttingDownError('the engine is shutting down');
    // Admitted while a batch slot or one of limits.queueDepth waiting places is free; queued entries that will take
    // a free slot at the next step are running, not waiting.
    const { maxBatchSequences, queueDepth } = this.limits;
    if (this.active.length + this.queue.length >= maxBatchSequences + queueDepth) {
      throw new OverloadedError(
        `the server is at capacity (${maxBatchSequences} sequences running and ${queueDepth} waiting: limits.maxBatchSequences, limits.queueDepth); retry shortly`, 1);
    }
  }

  /** Resolves when the sequence has finished; rejects if it is cancelled, times out or the step fails. */
  submit(sequence: Sequence): Promise<void> {
    try {
      this.checkCapacity();
    } catch (error) {
      return Promise.reject(error);
    }
    return new Promise<void>((resolve, reject) => {
      const signal = sequence.options.signal;
      if (signal?.aborted) return reject(new CancelledError('the client went away'));
      // The listener holds the entry (the sequence and its KV cache) and the signal may outlive the request: undici
      // keeps an HTTP request's signal in a FinalizationRegistry, callers may reuse one. Every way an entry settles
      // (finish, stop, cancel, timeout, step error, close) goes through resolve/reject, which remove it.
      const onAbort = () => this.cancel(entry);
      const entry: Entry = {
        sequence,
        resolve: () => {
          signal?.removeEventListener('abort', onAbort);
          this.retired.push(sequence.cache);
          resolve();
        },
        reject: (error) => {
          signal?.removeEventListener('abort', onAbort);
          this.retired.push(sequence.cache);
          reject(error);
        },
        deadline: Date.now() + this.limits.requestTimeoutMs,
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.queue.push(entry);
      this.running ??= this.run();
    });
  }

  /**
   * Stops taking requests, rejects every queued and running one with ShuttingDownError (at once, so their callers
   * can answer before the step in flight ends), then waits for that step to end (no task is left inside a worker).
   */
  async close(): Promise<void> {
    this.closed = true;
    for (const entry of this.queue.splice(0)) entry.reject(new ShuttingDownError('the engine shut down before this request started'));
    for (const entry of this.active.splice(0)) entry.reject(new ShuttingDownError('the engine shut down while generating this request'));
    await this.running;
  }

  private cancel(entry: Entry): void {
    // Dropping the entry drops the sequence and with it its KV cache; a step in flight finishes harmlessly.
    for (const list of [this.queue, this.active]) {
      const at = list.indexOf(entry);
      if (at >= 0) {
        list.splice(at, 1);
        entry.reject(new CancelledError('the client went away'));
      }
    }
  }

  private async run(): Promise<void> {
    try {
      await this.steps();
    } finally {
      this.releaseRetired();
      this.running = null;
      // A request submitted after the last step's loop saw an empty queue (it found `running` still set) starts a
      // new run here, not stranded in the queue.
      if (!this.closed && this.queue.length > 0) this.running = this.run();
    }
  }

  private releaseRetired(): void {
    for (const cache of this.retired.splice(0)) cache.release();
  }

  private async steps(): Promise<void> {
    // The first step waits for the event loop's turn, so requests that arrive together start together.
    let first = true;
    // The last step's token events, finishes and telemetry: sent once the next step has started (see below).
    let settle: (() => void) | null = null;
    try {
      while (!this.closed && (this.queue.length > 0 || this.active.length > 0)) {
        this.releaseRetired(); // no step is running here
        // Let the event loop in once per step: a forward whose experts run in this process (experts.execution
        // 'in-process') awaits only settled promises, so without this the loop would hold the thread until every
        // sequence finished — no new request accepted, no stream flushed, no cancel seen, no health check answered.
        // The fused forward lets it in while the team computes, so that the last step's stream writes overlap with
        // this step: a yield here would run them first, alone.
        if (first || !this.model.forwardYields) await new Promise<void>((resolve) => setImmediate(resolve));
        first = false;
        if (this.closed) break;
        while (this.active.length < this.limits.maxBatchSequences && this.queue.length > 0) {
          const entry = this.queue.shift()!;
          this.hooks.onJoin?.(entry.sequence);
          this.active.push(entry);
        }
        const now = Date.now();
        for (const entry of [...this.active]) {
          if (now > entry.deadline && !entry.sequence.finishReason) {
            this.finish(entry, new RequestTimeoutError(`generation took longer than ${this.limits.requestTimeoutMs} ms`));
          }
        }

        // Decode tokens first (one each), then prefill chunks share what is left of the token budget. Sequences
        // that finished at the last step wait only for `settle`.
        const batch = this.active.filter((e) => !e.sequence.finishReason).sort((a, b) => Number(a.sequence.prefilling) - Number(b.sequence.prefilling));
        let budget = this.limits.maxBatchTokens;
        // A prefill chunk of a request that asked for prompt log probabilities needs logits at all its positions.
        const step: Array<{ entry: Entry; tokens: number[]; start: number; allPositions: boolean }> = [];
        for (const entry of batch) {
          if (budget <= 0) break;
          const s = entry.sequence;
          const allPositions = s.request.promptLogprobs === true && s.prefilling;
          const start = s.cache.length;
          const tokens = s.take(budget);
          budget -= tokens.length;
          step.push({ entry, tokens, start, allPositions });
        }
        const started = performance.now();
        // forward starts the step before it returns its promise (the fused forward on the team; the worker pool's
        // first layer): the last step's token events go out meanwhile. Their listeners write to the clients.
        const forwarded = step.length > 0
          ? this.model.forward(step.map(({ entry, tokens, allPositions }) => ({ cache: entry.sequence.cache, tokens, allPositions })))
          : null;
        settle?.();
        settle = null;
        if (!forwarded) continue;
        let output: StepOutput;
        try {
          output = await forwarded;
        } catch (error) {
          for (const { entry } of step) this.finish(entry, error as Error);
          continue;
        }
        const ms = performance.now() - started;
        const advanced: Entry[] = [];
        step.forEach(({ entry, tokens, start, allPositions }, i) => {
          const s = entry.sequence;
          if (!this.active.includes(entry)) return; // cancelled
          let logits = output.logits[i];
          if (allPositions) {
            s.observePromptLogits(start, tokens.length, logits);
            logits = logits.subarray(logits.length - logits.length / tokens.length);
          }
          if (s.pending.length > 0) return; // more prompt to prefill
          if (s.tokens.length === 0) this.hooks.onPrefilled?.(s);
          try {
            s.choose(logits);
            advanced.push(entry);
          } catch (error) {
            this.finish(entry, error as Error);
          }
        });
        settle = () => {
          for (const entry of advanced) {
            if (!this.active.includes(entry)) continue; // cancelled, timed out or shut down since
            try {
              entry.sequence.flush();
            } catch (error) {
              this.finish(entry, error as Error);
              continue;
            }
            if (entry.sequence.finishReason) this.finish(entry);
          }
          this.observer.onStep?.({ sequences: step.map(({ entry }) => entry.sequence), output, ms });
        };
      }
    } finally {
      settle?.();
    }
  }

  private finish(entry: Entry, error?: Error): void {
    const at = this.active.indexOf(entry);
    if (at < 0) return;
    this.active.splice(at, 1);
    if (error) entry.reject(error);
    else {
      this.observer.onFinish?.(entry.sequence);
      entry.resolve();
    }
  }
}
