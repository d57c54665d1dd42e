/**
 * The load runner shared by bench/load.ts and bench/batching.ts: a closed loop of `clients` concurrent clients that
 * together send `requests` requests, and the metrics and tables made from it.
 *
 * Per concurrency level it measures
 * - output tokens/s: all generated tokens of successful requests / wall time of the level (first send to last end);
 * - time to first token (TTFT) p50 and p99 over requests (nearest-rank, see stats.ts), streaming only;
 * - decode tokens/s per stream: per request (tokens − 1) / (t_last − t_first), median over requests; at 1 client
 *   this is the single-stream decode rate.
 * With repeats, each metric is the median over the repeats. Everything is bounded: each client loop sends at most
 * its share of `requests`, each request has the client's hard timeout, and an aborted signal stops new sends.
 */
import type { Client } from './clients.ts';
import { fmt, markdownTable, median, percentile, ratio } from './stats.ts';

/** A built-in prompt set: short English prompts of varied length (used when --prompts is not given). */
export const DEFAULT_PROMPTS: readonly string[] = [
  'Call me',
  'The whale',
  'It was a dark and stormy night, and',
  'Mr. Speaker, Mr. Vice President, members of Congress,',
  'The sea was calm that morning when the ship left the harbour.',
  'Once upon a time',
  'In the beginning',
  'The state of our union is',
  'He looked out over the water and thought about the long voyage ahead, the men he had lost, and',
  'A fortune cookie said:',
  'Tonight I want to talk about the economy, about jobs, and about',
  'The captain stood on the deck.',
  'Why is the sky blue?',
  'Whenever I find myself growing grim about the mouth; whenever it is a damp, drizzly November in my soul;',
  'Write one sentence about the ocean:',
  'The budget for the next fiscal year',
];

export interface RequestSample {
  ok: boolean;
  error?: string;
  /** Generated tokens: token events when streaming (else the server's count; 0 if it sent none). */
  tokens: number;
  /** The server's own count, when it sent one. */
  reportedTokens: number | null;
  /** ms from send to the first token event; NaN when not streaming or no token arrived. */
  ttftMs: number;
  /** (tokens − 1) / (t_last − t_first) in tokens/s; NaN with fewer than 2 tokens or not streaming. */
  decodeTps: number;
  latencyMs: number;
}

export interface LevelSpec {
  client: Client;
  clients: number;
  requests: number;
  maxTokens: number;
  prompts: readonly string[];
  /** true: stream() and time tokens; false: complete() (no TTFT and no decode rate). */
  stream: boolean;
  /** Aborting stops sending new requests and cancels those in flight. */
  signal?: AbortSignal;
}

export interface LevelRun {
  clients: number;
  requests: number;
  wallMs: number;
  samples: RequestSample[];
}

async function oneRequest(spec: LevelSpec, prompt: string): Promise<RequestSample> {
  const start = performance.now();
  try {
    if (!spec.stream) {
      const result = await spec.client.complete(prompt, spec.maxTokens, spec.signal);
      return {
        ok: true,
        tokens: result.tokens ?? 0,
        reportedTokens: result.tokens,
        ttftMs: Number.NaN,
        decodeTps: Number.NaN,
        latencyMs: performance.now() - start,
      };
    }
    const stream = spec.client.stream(prompt, spec.maxTokens, spec.signal);
    let count = 0;
    let first = Number.NaN;
    let last = Number.NaN;
    for await (const ev of stream) {
      if (count === 0) first = ev.t;
      last = ev.t;
      count++;
    }
    const reported = stream.summary?.reportedTokens ?? null;
    return {
      ok: true,
      tokens: count > 0 ? count : (reported ?? 0),
      reportedTokens: reported,
      ttftMs: first - start,
      decodeTps: count >= 2 && last > first ? ((count - 1) * 1000) / (last - first) : Number.NaN,
      latencyMs: performance.now() - start,
    };
  } catch (err) {
    return {
      ok: false,
      error: (err as Error).message,
      tokens: 0,
      reportedTokens: null,
      ttftMs: Number.NaN,
      decodeTps: Number.NaN,
      latencyMs: performance.now() - start,
    };
  }
}

/** Runs one concurrency level: `clients` loops share a counter of `requests` sends; request i uses prompt i mod n. */
export async function runLevel(spec: LevelSpec): Promise<LevelRun> {
  if (spec.prompts.length === 0) throw new Error('no prompts to send');
  const samples: RequestSample[] = [];
  let next = 0;
  const loop = async () => {
    // Bounded: each pass takes one of the `requests` tickets, and each request has a hard timeout.
    while (next < spec.requests && !spec.signal?.aborted) {
      const i = next++;
      samples.push(await oneRequest(spec, spec.prompts[i % spec.prompts.length]));
    }
  };
  const start = performance.now();
  await Promise.all(Array.from({ length: Math.min(spec.clients, spec.requests) }, loop));
  return { clients: spec.clients, requests: spec.requests, wallMs: performance.now() - start, samples };
}

export interface LevelMetrics {
  ok: number;
  errors: number;
  tokens: number;
  tokensPerS: number;
  ttftP50Ms: number;
  ttftP99Ms: number;
  decodeTps: number;
  meanTokens: number;
  /** Successful requests whose server-reported token count differs from the counted token events. */
  countMismatches: number;
  /** The first error message, if any request failed. */
  firstError?: string;
}

export function summarize(run: LevelRun): LevelMetrics {
  const ok = run.samples.filter((s) => s.ok);
  const tokens = ok.reduce((sum, s) => sum + s.tokens, 0);
  const ttft = ok.map((s) => s.ttftMs);
  return {
    ok: ok.length,
    errors: run.samples.length - ok.length,
    tokens,
    tokensPerS: ok.length > 0 && run.wallMs > 0 ? (tokens * 1000) / run.wallMs : Number.NaN,
    ttftP50Ms: percentile(ttft, 50),
    ttftP99Ms: percentile(ttft, 99),
    decodeTps: median(ok.map((s) => s.decodeTps)),
    meanTokens: ok.length > 0 ? tokens / ok.length : Number.NaN,
    countMismatches: ok.filter((s) => s.reportedTokens !== null && s.reportedTokens !== s.tokens).length,
    firstError: run.samples.find((s) => !s.ok)?.error,
  };
}

/** Medians over repeats of the rate and latency metrics; counts (ok, errors, mismatches) are summed. */
export function medianOverRepeats(repeats: readonly LevelMetrics[]): LevelMetrics {
  const med = (f: (m: LevelMetrics) => number) => median(repeats.map(f));
  const sum = (f: (m: LevelMetrics) => number) => repeats.reduce((s, m) => s + f(m), 0);
  return {
    ok: sum((m) => m.ok),
    errors: sum((m) => m.errors),
    tokens: sum((m) => m.tokens),
    tokensPerS: med((m) => m.tokensPerS),
    ttftP50Ms: med((m) => m.ttftP50Ms),
    ttftP99Ms: med((m) => m.ttftP99Ms),
    decodeTps: med((m) => m.decodeTps),
    meanTokens: med((m) => m.meanTokens),
    countMismatches: sum((m) => m.countMismatches),
    firstError: repeats.find((m) => m.firstError !== undefined)?.firstError,
  };
}

export interface Target {
  /** Shown in tables, e.g. "ours" or "peer". */
  name: string;
  client: Client;
}

export interface BenchmarkSpec {
  targets: readonly Target[];
  /** Concurrency levels, e.g. [1, 8, 32]. */
  levels: readonly number[];
  /** Requests per level (per repeat). */
  requestsFor: (clients: number) => number;
  repeats: number;
  maxTokens: number;
  prompts: readonly string[];
  stream: boolean;
  signal?: AbortSignal;
  /** One line per finished run, for progress output. */
  onProgress?: (line: string) => void;
}

export interface LevelResult {
  target: string;
  clients: number;
  requests: number;
  repeats: number;
  metrics: LevelMetrics;
}

/**
 * One warm-up request per target (not measured), so lazy start-up costs stay out of the numbers and a server that
 * lacks the endpoint fails here with one clear message instead of a table full of errors.
 */
export async function warmUp(targets: readonly Target[], prompt: string, maxTokens: number, stream: boolean, signal?: AbortSignal): Promise<void> {
  for (const { name, client } of targets) {
    const sample = await oneRequest({ client, clients: 1, requests: 1, maxTokens, prompts: [prompt], stream, signal }, prompt);
    if (!sample.ok) throw new Error(`warm-up request to ${name} (${client.api} at ${client.url}) failed: ${sample.error}`);
  }
}

/**
 * Runs every level `repeats` times against every target. Targets alternate within each repeat (level, repeat,
 * target order), so slow drift of the machine hits all of them alike and their ratios stay comparable.
 */
export async function runBenchmark(spec: BenchmarkSpec): Promise<LevelResult[]> {
  const results: LevelResult[] = [];
  for (const clients of spec.levels) {
    const requests = spec.requestsFor(clients);
    const perTarget = spec.targets.map(() => [] as LevelMetrics[]);
    for (let r = 0; r < spec.repeats && !spec.signal?.aborted; r++) {
      for (const [i, target] of spec.targets.entries()) {
        if (spec.signal?.aborted) break;
        const run = await runLevel({
          client: target.client,
          clients,
          requests,
          maxTokens: spec.maxTokens,
          prompts: spec.prompts,
          stream: spec.stream,
          signal: spec.signal,
        });
        const m = summarize(run);
        perTarget[i].push(m);
        spec.onProgress?.(
          `${target.name}: clients=${clients} repeat ${r + 1}/${spec.repeats}: ${fmt(m.tokensPerS)} tok/s, ` +
            `TTFT p50 ${fmt(m.ttftP50Ms)} ms, ${m.ok} ok, ${m.errors} errors${m.firstError ? ` (${m.firstError})` : ''}`,
        );
      }
    }
    spec.targets.forEach((target, i) => {
      if (perTarget[i].length > 0) {
        results.push({ target: target.name, clients, requests, repeats: perTarget[i].length, metrics: medianOverRepeats(perTarget[i]) });
      }
    });
  }
  return results;
}

/** The main table: one row per target and level. */
export function resultsTable(results: readonly LevelResult[]): string {
  return markdownTable(
    ['server', 'clients', 'requests', 'ok', 'errors', 'output tok/s', 'TTFT p50 ms', 'TTFT p99 ms', 'decode tok/s/stream', 'tokens/req'],
    results.map((r) => [
      r.target,
      r.clients,
      `${r.requests}×${r.repeats}`,
      r.metrics.ok,
      r.metrics.errors,
      fmt(r.metrics.tokensPerS),
      fmt(r.metrics.ttftP50Ms),
      fmt(r.metrics.ttftP99Ms),
      fmt(r.metrics.decodeTps),
      fmt(r.metrics.meanTokens),
    ]),
  );
}

/**
 * Ratios `a`/`b` per level, from results of the same run only (e.g. ours/peer, batched/unbatched). Higher is
 * better for tokens/s; lower is better for TTFT.
 */
export function ratioTable(results: readonly LevelResult[], a: string, b: string): string {
  const levels = [...new Set(results.map((r) => r.clients))];
  const rows = levels.flatMap((clients) => {
    const x = results.find((r) => r.target === a && r.clients === clients)?.metrics;
    const y = results.find((r) => r.target === b && r.clients === clients)?.metrics;
    if (!x || !y) return [];
    return [[clients, fmt(ratio(x.tokensPerS, y.tokensPerS), 2), fmt(ratio(x.ttftP50Ms, y.ttftP50Ms), 2), fmt(ratio(x.ttftP99Ms, y.ttftP99Ms), 2), fmt(ratio(x.decodeTps, y.decodeTps), 2)]];
  });
  return markdownTable(
    ['clients', `output tok/s ${a}/${b}`, `TTFT p50 ${a}/${b}`, `TTFT p99 ${a}/${b}`, `decode tok/s ${a}/${b}`],
    rows,
  );
}

/** Warnings worth printing under a table: failed requests and token-count mismatches. */
export function resultNotes(results: readonly LevelResult[]): string[] {
  const notes: string[] = [];
  for (const r of results) {
    if (r.metrics.errors > 0) {
      notes.push(`${r.target} at ${r.clients} clients: ${r.metrics.errors} failed requests (first: ${r.metrics.firstError ?? 'unknown'}); rates count successful requests only.`);
    }
    if (r.metrics.countMismatches > 0) {
      notes.push(`${r.target} at ${r.clients} clients: ${r.metrics.countMismatches} requests where the server's token count differs from the token events counted (the one-event-per-token assumption does not hold there).`);
    }
  }
  return notes;
}
