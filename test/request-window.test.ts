/** The dashboard's recent-request statistics (src/telemetry/request-window.ts): windows, rates, percentiles, bounds. */
import { describe, expect, it } from 'vitest';
import { nearestRank, percentiles, RequestWindow } from '../src/telemetry/request-window.ts';
import { createTelemetry } from '../src/telemetry/index.ts';

const T0 = 1_700_000_000_000; // a whole second

/** One request: starts at `start`, first token at `first`, one token every `gap` ms, `n` tokens, ends at the last. */
function run(w: RequestWindow, start: number, first: number, n: number, gap: number): number {
  w.requestStarted(start);
  w.firstToken(first, start);
  for (let i = 0; i < n; i++) w.outputTokens(first + i * gap);
  const end = first + (n - 1) * gap;
  w.requestEnded(end, start, { firstTokenAt: first, outputTokens: n, error: false });
  return end;
}

describe('percentiles', () => {
  it('nearest rank over sorted values; null when empty', () => {
    const xs = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(nearestRank(xs, 50)).toBe(50);
    expect(nearestRank(xs, 99)).toBe(99);
    expect(nearestRank(xs, 100)).toBe(100);
    expect(nearestRank([7], 1)).toBe(7);
    expect(nearestRank([], 50)).toBeNull();
    expect(percentiles([30, 10, 20])).toEqual({ count: 3, p50: 20, p90: 30, p99: 30, max: 30 });
    expect(percentiles([])).toEqual({ count: 0, p50: null, p90: null, p99: null, max: null });
  });
});

describe('RequestWindow', () => {
  it('computes TTFT, TPOT and duration per request, and rates over the window', () => {
    const w = new RequestWindow(T0);
    // 10 requests over 10 s: TTFT 10, 20, ..., 100 ms; 5 tokens each, 4 ms apart (TPOT 4 ms).
    for (let i = 0; i < 10; i++) run(w, T0 + i * 1000, T0 + i * 1000 + 10 * (i + 1), 5, 4);
    const s = w.summary(T0 + 10_000, 10);
    expect(s.seconds).toBe(10);
    expect(s).toMatchObject({ started: 10, finished: 10, errors: 0, requests_per_s: 1, output_tokens: 50, output_tokens_per_s: 5 });
    expect(s.ttft_ms).toEqual({ count: 10, p50: 50, p90: 90, p99: 100, max: 100 });
    expect(s.tpot_ms).toEqual({ count: 10, p50: 4, p90: 4, p99: 4, max: 4 });
    expect(s.duration_ms.max).toBe(100 + 16);
  });

  it('a shorter window sees only its own requests; a young recorder divides by its age', () => {
    const w = new RequestWindow(T0);
    run(w, T0, T0 + 500, 3, 100);            // ends T0 + 700
    run(w, T0 + 8000, T0 + 8040, 2, 60);     // ends T0 + 8100
    const last5 = w.summary(T0 + 10_000, 5);
    expect(last5).toMatchObject({ started: 1, finished: 1, output_tokens: 2 });
    expect(last5.ttft_ms.p50).toBe(40);
    expect(last5.tpot_ms.p50).toBe(60);
    const all = w.summary(T0 + 10_000, 60);
    expect(all.seconds).toBe(10); // not 60: nothing was recorded before T0
    expect(all).toMatchObject({ started: 2, finished: 2, output_tokens: 5, output_tokens_per_s: 0.5, requests_per_s: 0.2 });
  });

  it('counts errors, records no TPOT for failures or single tokens, and TTFT only once there is a token', () => {
    const w = new RequestWindow(T0);
    w.requestStarted(T0);
    w.requestEnded(T0 + 50, T0, { firstTokenAt: null, outputTokens: 0, error: true });
    run(w, T0 + 100, T0 + 130, 1, 0);
    w.requestStarted(T0 + 200); // still running
    const s = w.summary(T0 + 1000, 10);
    expect(s).toMatchObject({ started: 3, finished: 2, errors: 1, output_tokens: 1 });
    expect(s.ttft_ms).toMatchObject({ count: 1, p50: 30 });
    expect(s.tpot_ms.count).toBe(0);
    expect(s.tpot_ms.p50).toBeNull();
  });

  it('forgets samples older than the horizon and keeps at most maxSamples', () => {
    const w = new RequestWindow(T0, { horizonSeconds: 60, maxSamples: 3 });
    for (let i = 0; i < 5; i++) run(w, T0 + i * 10, T0 + i * 10 + 1 + i, 2, 1);
    const recent = w.summary(T0 + 100, 60);
    expect(recent.finished).toBe(3); // the two oldest dropped by count
    expect(recent.ttft_ms.p50).toBe(4);
    run(w, T0 + 120_000, T0 + 120_005, 2, 1);
    const later = w.summary(T0 + 120_010, 600); // asks for more than the horizon: gets 60 s
    expect(later.seconds).toBe(60);
    expect(later).toMatchObject({ finished: 1, output_tokens: 2 });
  });
});

describe('Telemetry.recentRequests', () => {
  it('is fed by startRequest: first token, every output token, end', async () => {
    let clock = T0;
    const telemetry = createTelemetry({ exporter: 'none', otlpEndpoint: null, loadTraceFile: null }, { modelId: 'm', now: () => clock });
    const req = telemetry.startRequest({ operation: 'text_completion', model: 'm', maxTokens: 4, stream: true });
    clock += 25;
    req.firstToken();
    req.outputToken();
    for (let i = 0; i < 3; i++) {
      clock += 10;
      req.outputToken();
    }
    req.end({ inputTokens: 3, outputTokens: 4, finishReason: 'length' });
    req.outputToken(); // after the end: ignored
    const s = telemetry.recentRequests(10);
    expect(s).toMatchObject({ started: 1, finished: 1, errors: 0, output_tokens: 4 });
    expect(s.ttft_ms.p50).toBe(25);
    expect(s.tpot_ms.p50).toBe(10);
    await telemetry.shutdown();
  });
});
