/**
 * Telemetry over synthetic steps (2 layers, 4 experts, 2 workers) with in-memory exporters and a fake clock:
 * expert-load metrics, dispatch spans and their reconstructed times, request spans and GenAI histograms, the JSONL
 * load trace and the Prometheus text.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { AggregationTemporality, InMemoryMetricExporter, type ResourceMetrics } from '@opentelemetry/sdk-metrics';
import { InMemorySpanExporter, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { ConfigError } from '../src/config.ts';
import type { LayerTrace, StepOutput } from '../src/engine/model.ts';
import type { Sequence } from '../src/engine/sequence.ts';
import { createTelemetry, type LoadTraceRecord, type Telemetry, type TelemetryConfig } from '../src/telemetry/index.ts';
import { countRouted, layerWindows, summarizeStep } from '../src/telemetry/step-summary.ts';
import { buildProviders, otlpUrl } from '../src/telemetry/providers.ts';
import { prometheusUnit } from '../src/telemetry/prometheus.ts';
import { ExportErrors } from '../src/telemetry/export-errors.ts';

const T0 = Date.UTC(2026, 0, 1); // epoch ms of the fake clock's start

function layerTrace(layer: number, expert: number[], capacity: number, dispatchMs: number, workers: LayerTrace['workers']): LayerTrace {
  const routed = countRouted(Int32Array.from(expert), 4);
  return {
    layer,
    k: 1,
    expert: Int32Array.from(expert),
    gate: new Float32Array(expert.length).fill(0.5),
    tokensPerExpert: routed.map((n) => Math.min(n, capacity)),
    overflow: routed.reduce((sum, n) => sum + Math.max(0, n - capacity), 0),
    capacity,
    workers,
    dispatchMs,
  };
}

/** Step 0: a prefill of 8 tokens over 2 sequences, capacity 2 (overflow at both layers). */
const STEP0: StepOutput = {
  logits: [],
  layers: [
    layerTrace(0, [0, 1, 1, 2, 1, 3, 1, 0], 2, 2, [
      { worker: 0, tokens: 4, experts: [0, 1], queueMs: 0.1, computeMs: 0.5 },
      { worker: 1, tokens: 2, experts: [2, 3], queueMs: 0.2, computeMs: 0.3 },
    ]),
    layerTrace(1, [3, 3, 2, 0, 1, 2, 3, 0], 2, 3, [
      { worker: 0, tokens: 3, experts: [0, 1], queueMs: 0.05, computeMs: 0.4 },
      { worker: 1, tokens: 4, experts: [2, 3], queueMs: 0.1, computeMs: 0.6 },
    ]),
  ],
};
/** Step 1: two decode tokens, no capacity limit (capacity = tokens); only worker 0 at layer 0, only worker 1 at layer 1. */
const STEP1: StepOutput = {
  logits: [],
  layers: [
    layerTrace(0, [1, 1], 2, 1, [{ worker: 0, tokens: 2, experts: [1], queueMs: 0.02, computeMs: 0.25 }]),
    layerTrace(1, [2, 2], 2, 1, [{ worker: 1, tokens: 2, experts: [2], queueMs: 0.03, computeMs: 0.125 }]),
  ],
};
const SEQUENCES = [{}, {}] as unknown as Sequence[];

const NONE: TelemetryConfig = { exporter: 'none', otlpEndpoint: null, loadTraceFile: null };

interface Harness {
  telemetry: Telemetry;
  spans: InMemorySpanExporter;
  metrics: InMemoryMetricExporter;
  clock: { t: number };
}

const open: Telemetry[] = [];
const tempDirs: string[] = [];

afterEach(async () => {
  for (const t of open.splice(0)) await t.shutdown().catch(() => {});
  for (const d of tempDirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function harness(config: TelemetryConfig = NONE): Harness {
  const clock = { t: T0 };
  const spans = new InMemorySpanExporter();
  const metrics = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE);
  const telemetry = createTelemetry(config, {
    modelId: 'switchyard-moe', spanExporter: spans, metricExporter: metrics, now: () => clock.t,
  });
  open.push(telemetry);
  return { telemetry, spans, metrics, clock };
}

function tempDir(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'switchyard-telemetry-'));
  tempDirs.push(dir);
  return dir;
}

/** Runs STEP0 (ending at T0 + 100 after 11 ms) and STEP1 (ending at T0 + 200 after 4 ms). */
function feedSteps(h: Harness): void {
  h.clock.t = T0 + 100;
  h.telemetry.observer.onStep!({ sequences: SEQUENCES, output: STEP0, ms: 11 });
  h.clock.t = T0 + 200;
  h.telemetry.observer.onStep!({ sequences: SEQUENCES, output: STEP1, ms: 4 });
}

/** The data points of one metric in the last (cumulative) export. */
function points(exporter: InMemoryMetricExporter, name: string) {
  const exports: ResourceMetrics[] = exporter.getMetrics();
  expect(exports.length).toBeGreaterThan(0);
  const last = exports[exports.length - 1];
  const metric = last.scopeMetrics.flatMap((s) => s.metrics).find((m) => m.descriptor.name === name);
  expect(metric, `metric ${name}`).toBeDefined();
  return metric!.dataPoints as Array<{ attributes: Record<string, unknown>; value: unknown }>;
}

function pointValue(exporter: InMemoryMetricExporter, name: string, attributes: Record<string, unknown>): unknown {
  const match = points(exporter, name).filter((p) => Object.entries(attributes).every(([k, v]) => p.attributes[k] === v)
    && Object.keys(p.attributes).length === Object.keys(attributes).length);
  expect(match, `${name} ${JSON.stringify(attributes)}`).toHaveLength(1);
  return match[0].value;
}

const ms = (t: [number, number]) => t[0] * 1000 + t[1] / 1e6;

describe('step summary helpers', () => {
  it('counts routed tokens per expert, growing past the expected expert count', () => {
    expect(countRouted(Int32Array.from([0, 1, 1, 2, 1, 3, 1, 0]), 4)).toEqual([2, 4, 1, 1]);
    expect(countRouted(Int32Array.from([5]), 4)).toEqual([0, 0, 0, 0, 0, 1]);
    expect(countRouted(new Int32Array(0), 3)).toEqual([0, 0, 0]);
  });

  it('with top-k routing counts tokens once and assignments per expert', () => {
    // 3 tokens, k = 2: (0, 1), (1, 2), (1, 3).
    const trace: LayerTrace = { ...layerTrace(0, [0, 1, 1, 2, 1, 3], 6, 1, []), k: 2 };
    const summary = summarizeStep({ sequences: [], ms: 2, output: { logits: [], layers: [trace] } }, 0, 1000);
    expect(summary.tokens).toBe(3);
    expect(summary.layers[0].tokens).toBe(3);
    expect(summary.layers[0].routedPerExpert).toEqual([1, 3, 1, 1]);
  });

  it('spreads the non-dispatch time evenly around the layers and keeps each dispatch duration', () => {
    expect(layerWindows(100, 11, [2, 3])).toEqual({ startMs: 89, windows: [[91, 93], [95, 98]] });
    // dispatch longer than the step: the step widens, gaps are zero
    expect(layerWindows(100, 4, [3, 3])).toEqual({ startMs: 94, windows: [[94, 97], [97, 100]] });
  });

  it('builds OTLP/HTTP signal URLs from the base endpoint', () => {
    expect(otlpUrl('http://collector:4318/', 'traces')).toBe('http://collector:4318/v1/traces');
    expect(otlpUrl('http://collector:4318', 'metrics')).toBe('http://collector:4318/v1/metrics');
    expect(otlpUrl(null, 'traces')).toBeUndefined();
  });
});

describe('expert-load metrics', () => {
  it('counts tokens routed per layer and expert, overflow, worker time and steps', async () => {
    const h = harness();
    feedSteps(h);
    await h.telemetry.shutdown();

    // moe.expert.tokens = counts of the expert arrays, summed over both steps (zero counts are not recorded)
    const expected: Record<string, number> = {
      '0/0': 2, '0/1': 4 + 2, '0/2': 1, '0/3': 1,
      '1/0': 2, '1/1': 1, '1/2': 2 + 2, '1/3': 3,
    };
    const got: Record<string, number> = {};
    for (const p of points(h.metrics, 'moe.expert.tokens')) {
      expect(Object.keys(p.attributes).sort()).toEqual(['moe.expert', 'moe.layer']);
      got[`${p.attributes['moe.layer']}/${p.attributes['moe.expert']}`] = p.value as number;
    }
    expect(got).toEqual(expected);

    expect(pointValue(h.metrics, 'moe.expert.overflow_tokens', { 'moe.layer': 0 })).toBe(2);
    expect(pointValue(h.metrics, 'moe.expert.overflow_tokens', { 'moe.layer': 1 })).toBe(1);
    expect(pointValue(h.metrics, 'moe.worker.tokens', { 'moe.worker': 0 })).toBe(4 + 3 + 2);
    expect(pointValue(h.metrics, 'moe.worker.tokens', { 'moe.worker': 1 })).toBe(2 + 4 + 2);
    expect(pointValue(h.metrics, 'moe.worker.busy_time', { 'moe.worker': 0 })).toBeCloseTo((0.5 + 0.4 + 0.25) / 1000, 12);
    expect(pointValue(h.metrics, 'moe.worker.busy_time', { 'moe.worker': 1 })).toBeCloseTo((0.3 + 0.6 + 0.125) / 1000, 12);
    expect(pointValue(h.metrics, 'moe.steps', {})).toBe(2);

    const stepTokens = pointValue(h.metrics, 'moe.step.tokens', {}) as { count: number; sum: number; min: number; max: number };
    expect(stepTokens).toMatchObject({ count: 2, sum: 10, min: 2, max: 8 });
    const dispatch0 = pointValue(h.metrics, 'moe.dispatch.duration', { 'moe.layer': 0 }) as { count: number; sum: number };
    expect(dispatch0.count).toBe(2);
    expect(dispatch0.sum).toBeCloseTo(0.003, 12);
    const dispatch1 = pointValue(h.metrics, 'moe.dispatch.duration', { 'moe.layer': 1 }) as { count: number; sum: number };
    expect(dispatch1.sum).toBeCloseTo(0.004, 12);
    const queue0 = pointValue(h.metrics, 'moe.worker.queue.duration', { 'moe.worker': 0 }) as { count: number; sum: number };
    expect(queue0.count).toBe(3);
    expect(queue0.sum).toBeCloseTo((0.1 + 0.05 + 0.02) / 1000, 12);
  });

  it('counts expert batches an expert host did not answer, by layer and action (moe.host.failovers)', async () => {
    const telemetry = createTelemetry(NONE, { modelId: 'm' });
    open.push(telemetry);
    telemetry.observer.onHostFailover!({ layer: 1, expert: 3, action: 'retry' });
    telemetry.observer.onHostFailover!({ layer: 1, expert: 2, action: 'retry' });
    telemetry.observer.onHostFailover!({ layer: 0, expert: 3, action: 'local' });
    const text = await telemetry.metricsText();
    expect(text).toMatch(/^moe_host_failovers(_total)?\{(?=[^}]*moe_failover_action="retry")(?=[^}]*moe_layer="1")[^}]*\} 2$/m);
    expect(text).toMatch(/^moe_host_failovers(_total)?\{(?=[^}]*moe_failover_action="local")(?=[^}]*moe_layer="0")[^}]*\} 1$/m);
  });

  it('never throws into the scheduler: a malformed step goes to onError', () => {
    const errors: Error[] = [];
    const telemetry = createTelemetry(NONE, { modelId: 'm', onError: (e) => errors.push(e) });
    open.push(telemetry);
    expect(() => telemetry.observer.onStep!({ sequences: [], output: { logits: [] } as unknown as StepOutput, ms: 1 })).not.toThrow();
    expect(errors).toHaveLength(1);
    expect(errors[0]).toBeInstanceOf(TypeError);
  });
});

describe('dispatch spans', () => {
  it('records a moe.step span per step with one moe.dispatch child per layer on the reconstructed timeline', () => {
    const h = harness();
    feedSteps(h);
    const spans = h.spans.getFinishedSpans();
    const steps = spans.filter((s) => s.name === 'moe.step');
    const dispatches = spans.filter((s) => s.name === 'moe.dispatch');
    expect(steps).toHaveLength(2);
    expect(dispatches).toHaveLength(4);

    const [step0] = steps;
    expect(step0.attributes).toEqual({ 'moe.step.index': 0, 'moe.step.sequences': 2, 'moe.step.tokens': 8 });
    expect(ms(step0.startTime)).toBeCloseTo(T0 + 89, 3);
    expect(ms(step0.endTime)).toBeCloseTo(T0 + 100, 3);

    const ofStep0 = dispatches.filter((d) => d.parentSpanContext?.spanId === step0.spanContext().spanId);
    expect(ofStep0.map((d) => d.attributes['moe.layer'])).toEqual([0, 1]);
    const [l0, l1] = ofStep0;
    expect(l0.spanContext().traceId).toBe(step0.spanContext().traceId);
    expect(l0.attributes).toEqual({
      'moe.layer': 0, 'moe.tokens': 8, 'moe.tokens_per_expert': [2, 4, 1, 1], 'moe.overflow_tokens': 2, 'moe.capacity': 2,
    });
    expect(l1.attributes).toEqual({
      'moe.layer': 1, 'moe.tokens': 8, 'moe.tokens_per_expert': [2, 1, 2, 3], 'moe.overflow_tokens': 1, 'moe.capacity': 2,
    });
    // 11 ms step, 2 + 3 ms dispatch: 2 ms gaps before, between and after
    expect([ms(l0.startTime), ms(l0.endTime)].map((t) => t - T0)).toEqual([expect.closeTo(91, 3), expect.closeTo(93, 3)]);
    expect([ms(l1.startTime), ms(l1.endTime)].map((t) => t - T0)).toEqual([expect.closeTo(95, 3), expect.closeTo(98, 3)]);

    expect(l0.events.map((e) => ({ name: e.name, attributes: e.attributes }))).toEqual([
      { name: 'moe.worker.task', attributes: { 'moe.worker': 0, 'moe.worker.tokens': 4, 'moe.worker.experts': [0, 1], 'moe.worker.queue_ms': 0.1, 'moe.worker.compute_ms': 0.5 } },
      { name: 'moe.worker.task', attributes: { 'moe.worker': 1, 'moe.worker.tokens': 2, 'moe.worker.experts': [2, 3], 'moe.worker.queue_ms': 0.2, 'moe.worker.compute_ms': 0.3 } },
    ]);
    expect(ms(l0.events[1].time) - T0).toBeCloseTo(91.2, 3); // dispatch start + queue wait

    const step1Layer1 = dispatches.find((d) => d.parentSpanContext?.spanId === steps[1].spanContext().spanId && d.attributes['moe.layer'] === 1)!;
    expect(step1Layer1.attributes['moe.tokens_per_expert']).toEqual([0, 0, 2, 0]);
    expect(step1Layer1.events.map((e) => e.attributes?.['moe.worker'])).toEqual([1]);
  });

  it('links each step span to the request span of every sequence it carried, and continues a caller\'s trace', () => {
    const h = harness();
    const callerTrace = '0af7651916cd43dd8448eb211c80319c';
    const a = h.telemetry.startRequest({ operation: 'chat', model: 'm', maxTokens: 4, stream: false, responseId: 'chatcmpl-1',
      parent: { traceparent: `00-${callerTrace}-b7ad6b7169203331-01` } });
    const b = h.telemetry.startRequest({ operation: 'text_completion', model: 'm', maxTokens: 4, stream: false });
    expect(a.trace?.traceparent).toMatch(new RegExp(`^00-${callerTrace}-[0-9a-f]{16}-01$`));
    const sequence = (trace: unknown) => ({ options: { trace } });
    // a sequence without a request span (no trace) is left out of the links
    const sequences = [sequence(a.trace), sequence(b.trace), sequence(undefined)] as unknown as Sequence[];
    h.clock.t = T0 + 100;
    h.telemetry.observer.onStep!({ sequences, output: STEP0, ms: 11 });
    h.telemetry.observer.onStep!({ sequences: sequences.slice(1), output: STEP1, ms: 4 });
    a.end({ inputTokens: 8, outputTokens: 1, finishReason: 'length' });
    b.end({ inputTokens: 8, outputTokens: 2, finishReason: 'length' });

    const finished = h.spans.getFinishedSpans();
    const spanA = finished.find((s) => s.name === 'chat m')!;
    const spanB = finished.find((s) => s.name === 'text_completion m')!;
    expect(spanA.spanContext().traceId).toBe(callerTrace);
    expect(spanA.parentSpanContext?.spanId).toBe('b7ad6b7169203331');
    expect(spanA.attributes['gen_ai.response.id']).toBe('chatcmpl-1');
    expect(spanB.parentSpanContext).toBeUndefined();
    const [step0, step1] = finished.filter((s) => s.name === 'moe.step');
    const ids = (s: ReadableSpan) => s.links.map((l) => `${l.context.traceId}/${l.context.spanId}`);
    const idOf = (s: ReadableSpan) => `${s.spanContext().traceId}/${s.spanContext().spanId}`;
    expect(ids(step0)).toEqual([idOf(spanA), idOf(spanB)]);
    expect(ids(step1)).toEqual([idOf(spanB)]);
  });

  it('exporters none and jsonl build no tracer; metrics are still collected', async () => {
    for (const exporter of ['none', 'jsonl'] as const) {
      const built = buildProviders({ exporter, otlpEndpoint: null, loadTraceFile: null }, {
        serviceName: 's', modelId: 'm', exportErrors: new ExportErrors({ report: (e) => { throw e; }, hint: '' }),
      });
      expect([exporter, built.tracer, built.tracerProvider]).toEqual([exporter, null, null]);
      await built.meterProvider.shutdown();
    }

    const metrics = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE);
    const telemetry = createTelemetry(NONE, { modelId: 'm', metricExporter: metrics, now: () => T0 });
    telemetry.observer.onStep!({ sequences: SEQUENCES, output: STEP0, ms: 11 });
    telemetry.startRequest({ operation: 'chat', model: 'm', maxTokens: 1, stream: false }).end({ inputTokens: 1, outputTokens: 1, finishReason: 'length' });
    await telemetry.shutdown();
    // metrics still collected
    expect(pointValue(metrics, 'moe.steps', {})).toBe(1);
    expect((pointValue(metrics, 'gen_ai.server.request.duration', {
      'gen_ai.operation.name': 'chat', 'gen_ai.provider.name': 'switchyard', 'gen_ai.request.model': 'm', 'gen_ai.response.model': 'm',
    }) as { count: number }).count).toBe(1);
  });
});

describe('request telemetry', () => {
  const genAi = { 'gen_ai.operation.name': 'text_completion', 'gen_ai.provider.name': 'switchyard', 'gen_ai.request.model': 'switchyard-moe', 'gen_ai.response.model': 'switchyard-moe' };

  it('records a GenAI span and the time-to-first-token, per-output-token and duration histograms', async () => {
    const h = harness();
    h.clock.t = T0 + 1000;
    const req = h.telemetry.startRequest({
      operation: 'text_completion', model: 'switchyard-moe', maxTokens: 16, temperature: 0.7, topP: 0.9, topK: 40, seed: 42, stream: true,
    });
    h.clock.t = T0 + 1250;
    req.firstToken();
    h.clock.t = T0 + 1300;
    req.firstToken(); // ignored
    h.clock.t = T0 + 1850;
    req.end({ inputTokens: 12, outputTokens: 5, finishReason: 'length' });
    req.end({ inputTokens: 0, outputTokens: 0, finishReason: 'ignored' });

    const spans = h.spans.getFinishedSpans().filter((s) => s.name === 'text_completion switchyard-moe');
    expect(spans).toHaveLength(1);
    const span: ReadableSpan = spans[0];
    expect(span.kind).toBe(SpanKind.SERVER);
    expect(span.attributes).toEqual({
      ...genAi,
      'gen_ai.request.max_tokens': 16,
      'gen_ai.request.temperature': 0.7,
      'gen_ai.request.top_p': 0.9,
      'gen_ai.request.top_k': 40,
      'gen_ai.request.seed': 42,
      'gen_ai.request.stream': true,
      'gen_ai.usage.input_tokens': 12,
      'gen_ai.usage.output_tokens': 5,
      'gen_ai.response.finish_reasons': ['length'],
    });
    expect(span.status.code).toBe(SpanStatusCode.UNSET);
    expect(ms(span.startTime) - T0).toBeCloseTo(1000, 3);
    expect(ms(span.endTime) - T0).toBeCloseTo(1850, 3);

    await h.telemetry.shutdown();
    const ttft = pointValue(h.metrics, 'gen_ai.server.time_to_first_token', genAi) as { count: number; sum: number };
    expect(ttft.count).toBe(1);
    expect(ttft.sum).toBeCloseTo(0.25, 9);
    const tpot = pointValue(h.metrics, 'gen_ai.server.time_per_output_token', genAi) as { count: number; sum: number };
    expect(tpot.count).toBe(1);
    expect(tpot.sum).toBeCloseTo(0.6 / 4, 9);
    const duration = pointValue(h.metrics, 'gen_ai.server.request.duration', genAi) as { count: number; sum: number };
    expect(duration.count).toBe(1);
    expect(duration.sum).toBeCloseTo(0.85, 9);
  });

  it('skips time per output token with a single token and leaves unset sampling attributes out', async () => {
    const h = harness();
    const req = h.telemetry.startRequest({ operation: 'chat', model: 'tiny', maxTokens: 1, seed: null, stream: false });
    h.clock.t = T0 + 20;
    req.firstToken();
    req.end({ inputTokens: 3, outputTokens: 1, finishReason: 'length' });
    const [span] = h.spans.getFinishedSpans();
    expect(span.name).toBe('chat tiny');
    expect(Object.keys(span.attributes).filter((k) => /temperature|top_p|top_k|seed/.test(k))).toEqual([]);
    await h.telemetry.shutdown();
    const exports = h.metrics.getMetrics();
    const names = exports[exports.length - 1].scopeMetrics.flatMap((s) => s.metrics).filter((m) => m.dataPoints.length > 0).map((m) => m.descriptor.name);
    expect(names).toContain('gen_ai.server.time_to_first_token');
    expect(names).not.toContain('gen_ai.server.time_per_output_token');
  });

  it('marks a failed request: span status ERROR with the message, error.type on span and duration', async () => {
    class RequestTimeoutError extends Error {
      override readonly name = 'RequestTimeoutError';
    }
    const h = harness();
    const req = h.telemetry.startRequest({ operation: 'text_completion', model: 'switchyard-moe', maxTokens: 8, stream: false });
    h.clock.t = T0 + 3000;
    req.end({ error: new RequestTimeoutError('generation took longer than 3000 ms') });
    const [span] = h.spans.getFinishedSpans();
    expect(span.status).toEqual({ code: SpanStatusCode.ERROR, message: 'generation took longer than 3000 ms' });
    expect(span.attributes['error.type']).toBe('RequestTimeoutError');
    expect(span.attributes['gen_ai.usage.output_tokens']).toBeUndefined();
    expect(span.events.map((e) => [e.name, e.attributes?.['exception.message']])).toEqual([['exception', 'generation took longer than 3000 ms']]);
    await h.telemetry.shutdown();
    const duration = pointValue(h.metrics, 'gen_ai.server.request.duration', { ...genAi, 'error.type': 'RequestTimeoutError' }) as { count: number; sum: number };
    expect(duration.count).toBe(1);
    expect(duration.sum).toBeCloseTo(3, 9);
  });
});

describe('load trace (JSONL)', () => {
  it('appends one line per step and layer with the documented fields', async () => {
    const file = path.join(tempDir(), 'traces', 'load.jsonl'); // the folder does not exist yet
    const h = harness({ exporter: 'jsonl', otlpEndpoint: null, loadTraceFile: file });
    feedSteps(h);
    await h.telemetry.shutdown();

    const lines = readFileSync(file, 'utf8').split('\n');
    expect(lines.pop()).toBe(''); // ends with a newline
    expect(lines).toHaveLength(2 * 2);
    const records = lines.map((l) => JSON.parse(l) as LoadTraceRecord);
    expect(records[0]).toEqual({
      ts: '2026-01-01T00:00:00.100Z', step: 0, layer: 0, tokens: 8, tokens_per_expert: [2, 4, 1, 1], overflow: 2, capacity: 2,
      sequences: 2, step_ms: 11, dispatch_ms: 2,
      workers: [
        { worker: 0, tokens: 4, experts: [0, 1], queue_ms: 0.1, compute_ms: 0.5 },
        { worker: 1, tokens: 2, experts: [2, 3], queue_ms: 0.2, compute_ms: 0.3 },
      ],
    });
    expect(records.map((r) => [r.step, r.layer, r.tokens, r.overflow, r.dispatch_ms])).toEqual([
      [0, 0, 8, 2, 2], [0, 1, 8, 1, 3], [1, 0, 2, 0, 1], [1, 1, 2, 0, 1],
    ]);
    expect(records[3]).toMatchObject({
      ts: '2026-01-01T00:00:00.200Z', tokens_per_expert: [0, 0, 2, 0], step_ms: 4,
      workers: [{ worker: 1, tokens: 2, experts: [2], queue_ms: 0.03, compute_ms: 0.125 }],
    });
    for (const r of records) expect(r.tokens_per_expert.reduce((a, b) => a + b, 0)).toBe(r.tokens);

    // a second run appends to the same file
    const again = harness({ exporter: 'none', otlpEndpoint: null, loadTraceFile: file });
    again.clock.t = T0 + 500;
    again.telemetry.observer.onStep!({ sequences: SEQUENCES.slice(0, 1), output: STEP1, ms: 4 });
    await again.telemetry.shutdown();
    const all = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as LoadTraceRecord);
    expect(all).toHaveLength(6);
    expect(all.slice(4).map((r) => [r.step, r.layer, r.sequences])).toEqual([[0, 0, 1], [0, 1, 1]]);
  });

  it('fails at creation when the load-trace file cannot be opened for appending', () => {
    const dir = tempDir(); // a folder, not a file
    expect(() => createTelemetry({ exporter: 'none', otlpEndpoint: null, loadTraceFile: dir }, { modelId: 'm' }))
      .toThrow(expect.objectContaining({ code: 'EISDIR' }));
  });

  it("rejects exporter 'jsonl' without a loadTraceFile with a ConfigError naming the field", () => {
    let error: unknown;
    try {
      createTelemetry({ exporter: 'jsonl', otlpEndpoint: null, loadTraceFile: null }, { modelId: 'm' });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).issues.map((i) => i.path)).toEqual(['telemetry.loadTraceFile']);
    expect((error as Error).message).toMatch(/telemetry\.loadTraceFile must be set when telemetry\.exporter is 'jsonl'/);
  });
});

describe('/metrics text', () => {
  it('renders Prometheus text with moe_expert_tokens per layer and expert', async () => {
    const h = harness();
    feedSteps(h);
    const req = h.telemetry.startRequest({ operation: 'chat', model: 'switchyard-moe', maxTokens: 4, stream: false });
    req.firstToken();
    req.end({ inputTokens: 2, outputTokens: 2, finishReason: 'stop' });
    const text = await h.telemetry.metricsText();

    const sample = (name: string, labels: Record<string, string>): number => {
      const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`)));
      expect(line, `${name} ${JSON.stringify(labels)} in\n${text}`).toBeDefined();
      return Number(line!.slice(line!.lastIndexOf(' ') + 1));
    };
    expect(text).toMatch(/^# TYPE moe_expert_tokens_total counter$/m);
    expect(sample('moe_expert_tokens_total', { moe_layer: '0', moe_expert: '1' })).toBe(6);
    expect(sample('moe_expert_tokens_total', { moe_layer: '1', moe_expert: '3' })).toBe(3);
    expect(sample('moe_expert_overflow_tokens_total', { moe_layer: '0' })).toBe(2);
    expect(sample('moe_steps_total', {})).toBe(2);
    expect(sample('gen_ai_server_request_duration_seconds_count', { gen_ai_operation_name: 'chat', gen_ai_request_model: 'switchyard-moe' })).toBe(1);
    // a second scrape is cumulative, not reset
    expect(await h.telemetry.metricsText()).toContain('moe_steps_total{otel_scope_name="switchyard"} 2');
  });

  it('names durations in seconds with a _seconds suffix (values in seconds) and counters with _total', async () => {
    const h = harness();
    feedSteps(h);
    h.clock.t = T0 + 1000;
    const req = h.telemetry.startRequest({ operation: 'chat', model: 'switchyard-moe', maxTokens: 4, stream: false });
    h.clock.t = T0 + 1100;
    req.firstToken();
    h.clock.t = T0 + 1250;
    req.end({ inputTokens: 2, outputTokens: 2, finishReason: 'stop' });
    const text = await h.telemetry.metricsText();
    const value = (series: string) => {
      const line = text.split('\n').find((l) => l.startsWith(series));
      expect(line, `${series} in\n${text}`).toBeDefined();
      return Number(line!.slice(line!.lastIndexOf(' ') + 1));
    };
    const types = new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1], m[2]]));
    expect(Object.fromEntries([...types].filter(([name]) => /duration|time/.test(name)))).toEqual({
      moe_worker_busy_time_seconds_total: 'counter',
      moe_worker_queue_duration_seconds: 'histogram',
      moe_dispatch_duration_seconds: 'histogram',
      moe_step_duration_seconds: 'histogram',
      gen_ai_server_time_to_first_token_seconds: 'histogram',
      gen_ai_server_time_per_output_token_seconds: 'histogram',
      gen_ai_server_request_duration_seconds: 'histogram',
    });
    for (const [name, type] of types) if (type === 'counter') expect(name).toMatch(/_total$/);
    expect(text).toMatch(/^# UNIT moe_dispatch_duration_seconds seconds$/m);
    expect(text).not.toMatch(/^# UNIT \S+ \{/m); // annotation-only units ({token}) carry no UNIT line
    // the values are seconds: STEP0 + STEP1 lasted 11 + 4 ms, layer 0 dispatched 2 + 1 ms, worker 0 computed 1.15 ms
    expect(value('moe_step_duration_seconds_sum{')).toBeCloseTo(0.015, 9);
    expect(value('moe_dispatch_duration_seconds_sum{moe_layer="0"')).toBeCloseTo(0.003, 9);
    expect(value('moe_worker_busy_time_seconds_total{moe_worker="0"')).toBeCloseTo(0.00115, 9);
    expect(value('gen_ai_server_request_duration_seconds_sum{')).toBeCloseTo(0.25, 9);
  });

  it('maps OpenTelemetry units to Prometheus unit words', () => {
    expect(prometheusUnit('s')).toBe('seconds');
    expect(prometheusUnit('ms')).toBe('milliseconds');
    expect(prometheusUnit('By')).toBe('bytes');
    expect(prometheusUnit('{token}')).toBe('');
    expect(prometheusUnit('')).toBe('');
    expect(prometheusUnit('1')).toBe('');
    expect(prometheusUnit('1', true)).toBe('ratio');
    expect(prometheusUnit('By/s')).toBe('bytes_per_second');
    expect(prometheusUnit('{token}/s')).toBe('per_second');
    expect(prometheusUnit('furlong')).toBe('furlong');
  });
});

describe('OTLP export', () => {
  it('posts spans to <endpoint>/v1/traces and metrics to <endpoint>/v1/metrics (OTLP/HTTP JSON)', async () => {
    const received: Array<{ url: string; headers: IncomingHttpHeaders; body: string }> = [];
    const collector = createServer((req, res) => {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (chunk: string) => (body += chunk));
      req.on('end', () => {
        received.push({ url: req.url ?? '', headers: req.headers, body });
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      });
    });
    await new Promise<void>((resolve) => collector.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = collector.address() as AddressInfo;
      const telemetry = createTelemetry({ exporter: 'otlp', otlpEndpoint: `http://127.0.0.1:${port}/`, loadTraceFile: null }, { modelId: 'switchyard-moe', now: () => T0 });
      telemetry.observer.onStep!({ sequences: SEQUENCES, output: STEP0, ms: 11 });
      const req = telemetry.startRequest({ operation: 'chat', model: 'switchyard-moe', maxTokens: 4, stream: true });
      req.firstToken();
      req.end({ inputTokens: 3, outputTokens: 2, finishReason: 'stop' });
      await telemetry.shutdown();

      const traces = received.filter((r) => r.url === '/v1/traces');
      const metrics = received.filter((r) => r.url === '/v1/metrics');
      expect(received.every((r) => r.url === '/v1/traces' || r.url === '/v1/metrics')).toBe(true);
      expect(traces.length).toBeGreaterThanOrEqual(1);
      expect(metrics.length).toBeGreaterThanOrEqual(1);
      expect(traces[0].headers['content-type']).toBe('application/json');
      const spanNames = traces.flatMap((t) => JSON.parse(t.body).resourceSpans.flatMap((r: { scopeSpans: Array<{ spans: Array<{ name: string }> }> }) =>
        r.scopeSpans.flatMap((s) => s.spans.map((x) => x.name)))).sort();
      expect(spanNames).toEqual(['chat switchyard-moe', 'moe.dispatch', 'moe.dispatch', 'moe.step']);
      const metricNames = new Set(metrics.flatMap((m) => JSON.parse(m.body).resourceMetrics.flatMap((r: { scopeMetrics: Array<{ metrics: Array<{ name: string }> }> }) =>
        r.scopeMetrics.flatMap((s) => s.metrics.map((x) => x.name)))));
      for (const name of ['moe.expert.tokens', 'moe.expert.overflow_tokens', 'moe.dispatch.duration', 'gen_ai.server.request.duration', 'gen_ai.server.time_to_first_token']) {
        expect(metricNames.has(name), name).toBe(true);
      }
    } finally {
      await new Promise<void>((resolve) => collector.close(() => resolve()));
    }
  });
});
