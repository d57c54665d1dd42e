/**
 * Recent request statistics for the operator dashboard (GET /admin/requests): request rate, output tokens per
 * second, and time-to-first-token and time-per-output-token percentiles over the last N seconds. The OpenTelemetry
 * histograms (request.ts) hold the same measurements, but cumulatively and in buckets; this keeps the raw samples of
 * the last `horizonSeconds` so a window's percentiles are exact. Pure: times are passed in (epoch milliseconds),
 * memory is bounded (`maxSamples` per kind, output tokens in one-second buckets).
 */

export interface RequestWindowOptions {
  /** Samples older than this are dropped, in seconds (default 600); the longest window a summary can cover. */
  horizonSeconds?: number;
  /** Most samples kept per kind (TTFT, TPOT, finished requests); the oldest go first (default 50 000). */
  maxSamples?: number;
}

/** Nearest-rank percentiles of a window's samples, in milliseconds; null when the window has no sample. */
export interface Percentiles {
  count: number;
  p50: number | null;
  p90: number | null;
  p99: number | null;
  max: number | null;
}

export interface RequestWindowSummary {
  /** Seconds the window covers: the asked length, or less while the recorder is younger than that. */
  seconds: number;
  /** Requests that started in the window, and that finished in it (errors included; errors counts those). */
  started: number;
  finished: number;
  errors: number;
  /** Requests finished per second, and output tokens generated per second (every request's, streamed or not). */
  requests_per_s: number;
  output_tokens: number;
  output_tokens_per_s: number;
  /** Time to first token of the requests whose first token came in the window. */
  ttft_ms: Percentiles;
  /** Per finished request with ≥ 2 tokens: (end − first token) / (output tokens − 1), as gen_ai.server.time_per_output_token. */
  tpot_ms: Percentiles;
  /** Start to end of the requests that finished in the window. */
  duration_ms: Percentiles;
}

/** Nearest-rank percentile (p in 0..100) of ascending `sorted`; null when empty. */
export function nearestRank(sorted: readonly number[], p: number): number | null {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

export function percentiles(values: readonly number[]): Percentiles {
  const sorted = [...values].sort((a, b) => a - b);
  return {
    count: sorted.length, p50: nearestRank(sorted, 50), p90: nearestRank(sorted, 90), p99: nearestRank(sorted, 99),
    max: sorted.length ? sorted[sorted.length - 1] : null,
  };
}

/** Time-ordered samples (at, value), trimmed by age and count. */
class Samples {
  private at: number[] = [];
  private values: number[] = [];
  private head = 0;

  constructor(private readonly max: number) {}

  push(at: number, value: number): void {
    this.at.push(at);
    this.values.push(value);
    if (this.at.length - this.head > this.max) this.head++;
  }

  trim(before: number): void {
    while (this.head < this.at.length && this.at[this.head] < before) this.head++;
    // Compact once the dropped prefix dominates, so memory stays bounded without shifting on every push.
    if (this.head > 1024 && this.head * 2 > this.at.length) {
      this.at = this.at.slice(this.head);
      this.values = this.values.slice(this.head);
      this.head = 0;
    }
  }

  /** Values whose time is ≥ since (samples arrive in time order; a late one is still found). */
  since(since: number): number[] {
    const out: number[] = [];
    for (let i = this.at.length - 1; i >= this.head; i--) if (this.at[i] >= since) out.push(this.values[i]);
    return out;
  }
}

export class RequestWindow {
  private readonly horizonMs: number;
  private readonly created: number;
  private readonly started: Samples;
  private readonly finished: Samples;
  private readonly errors: Samples;
  private readonly ttft: Samples;
  private readonly tpot: Samples;
  private readonly duration: Samples;
  /** Output tokens per whole second (key: floor(ms / 1000)). */
  private readonly tokens = new Map<number, number>();

  /** `now`: epoch milliseconds when the recorder starts (a window never reaches back before it). */
  constructor(now: number, options: RequestWindowOptions = {}) {
    this.horizonMs = (options.horizonSeconds ?? 600) * 1000;
    const max = options.maxSamples ?? 50_000;
    this.created = now;
    this.started = new Samples(max);
    this.finished = new Samples(max);
    this.errors = new Samples(max);
    this.ttft = new Samples(max);
    this.tpot = new Samples(max);
    this.duration = new Samples(max);
  }

  requestStarted(at: number): void {
    this.started.push(at, 1);
    this.trim(at);
  }

  /** The first output token of a request that started at `startedAt` came at `at`. */
  firstToken(at: number, startedAt: number): void {
    this.ttft.push(at, at - startedAt);
  }

  /** `count` output tokens generated at `at`. */
  outputTokens(at: number, count = 1): void {
    const second = Math.floor(at / 1000);
    this.tokens.set(second, (this.tokens.get(second) ?? 0) + count);
  }

  /**
   * A request ended at `at`. `firstTokenAt` null when it produced no token; `error` when it failed. TPOT is
   * recorded only for successes with ≥ 2 output tokens (as the OpenTelemetry histogram).
   */
  requestEnded(at: number, startedAt: number, result: { firstTokenAt: number | null; outputTokens: number; error: boolean }): void {
    this.finished.push(at, 1);
    this.duration.push(at, at - startedAt);
    if (result.error) this.errors.push(at, 1);
    else if (result.firstTokenAt !== null && result.outputTokens >= 2) this.tpot.push(at, (at - result.firstTokenAt) / (result.outputTokens - 1));
    this.trim(at);
  }

  private trim(now: number): void {
    const before = now - this.horizonMs;
    for (const s of [this.started, this.finished, this.errors, this.ttft, this.tpot, this.duration]) s.trim(before);
    const oldest = Math.floor(before / 1000);
    for (const second of this.tokens.keys()) if (second < oldest) this.tokens.delete(second);
  }

  /**
   * The last `windowSeconds` (at most the horizon) before `now`. Output tokens are counted per whole second, so
   * their window starts at the start of the oldest second it touches and the rate divides by that span.
   */
  summary(now: number, windowSeconds: number): RequestWindowSummary {
    const length = Math.min(windowSeconds * 1000, this.horizonMs);
    const since = Math.max(this.created, now - length);
    const seconds = Math.max(1e-3, (now - since) / 1000);
    const firstSecond = Math.floor(since / 1000);
    let outputTokens = 0;
    for (const [second, n] of this.tokens) if (second >= firstSecond && second <= Math.floor(now / 1000)) outputTokens += n;
    const tokenSpan = Math.max(1e-3, (now - Math.max(this.created, firstSecond * 1000)) / 1000);
    const finished = this.finished.since(since).length;
    return {
      seconds: round(seconds, 3),
      started: this.started.since(since).length,
      finished,
      errors: this.errors.since(since).length,
      requests_per_s: round(finished / seconds, 3),
      output_tokens: outputTokens,
      output_tokens_per_s: round(outputTokens / tokenSpan, 3),
      ttft_ms: roundAll(percentiles(this.ttft.since(since))),
      tpot_ms: roundAll(percentiles(this.tpot.since(since))),
      duration_ms: roundAll(percentiles(this.duration.since(since))),
    };
  }
}

const round = (x: number, digits: number) => Math.round(x * 10 ** digits) / 10 ** digits;
const roundAll = (p: Percentiles): Percentiles => ({
  count: p.count,
  p50: p.p50 === null ? null : round(p.p50, 3),
  p90: p.p90 === null ? null : round(p.p90, 3),
  p99: p.p99 === null ? null : round(p.p99, 3),
  max: p.max === null ? null : round(p.max, 3),
});
