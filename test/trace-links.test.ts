/**
 * Traces that connect, on the real server over HTTP with an in-memory span exporter: a request with a W3C
 * `traceparent` gets its span in the caller's trace, under the caller's span; every `moe.step` span that ran one of
 * its tokens links to that request span (and has its `moe.dispatch` children); `gen_ai.response.id` is the id the
 * client got (OpenAI) or a fresh one (TGI has none).
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SpanKind } from '@opentelemetry/api';
import { InMemorySpanExporter, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { createLogger } from '../src/log.ts';
import { startServer, type RunningServer } from '../src/serve.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig } from './helpers.ts';

const LAYERS = 2;
const dir = writeTinyPackage(tinyConfig({ num_hidden_layers: LAYERS }), 3);
const spans = new InMemorySpanExporter();
let server: RunningServer;

beforeAll(async () => {
  server = await startServer(engineConfig(dir, { port: 0, cache: { response: { maxEntries: 0 } } }), {
    logger: createLogger({ level: 'silent' }), closeGraceMs: 200, spanExporter: spans,
  });
});
afterAll(() => server?.close());

/** A caller's span: a fresh trace id and span id, as the W3C traceparent header (sampled). */
function caller() {
  const traceId = randomBytes(16).toString('hex');
  const spanId = randomBytes(8).toString('hex');
  return { traceId, spanId, traceparent: `00-${traceId}-${spanId}-01` };
}

const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(server.url + path, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });

const requestSpans = () => spans.getFinishedSpans().filter((s) => s.kind === SpanKind.SERVER);
const stepsLinkedTo = (span: ReadableSpan) => spans.getFinishedSpans().filter((s) => s.name === 'moe.step'
  && s.links.some((l) => l.context.spanId === span.spanContext().spanId && l.context.traceId === span.spanContext().traceId));

describe('trace context and span links', () => {
  it('continues the caller\'s trace and links every step that ran the request to its span', async () => {
    const parent = caller();
    const r = await post('/generate', { inputs: 'Call me Ishmael.', parameters: { max_new_tokens: 5, details: true } },
      { traceparent: parent.traceparent, tracestate: 'vendor=abc' });
    expect(r.status).toBe(200);
    const body = await r.json() as { details: { generated_tokens: number } };

    const [span] = requestSpans().filter((s) => s.spanContext().traceId === parent.traceId);
    expect(span, 'a request span in the caller\'s trace').toBeDefined();
    expect(span.parentSpanContext?.spanId).toBe(parent.spanId);
    expect(span.parentSpanContext?.isRemote).toBe(true);
    expect(span.spanContext().traceState?.get('vendor')).toBe('abc');
    expect(span.attributes['gen_ai.response.id']).toMatch(/^[0-9a-f-]{36}$/);

    // One step per token at least: the prefill (one or more chunks) gives the first, each decode step one more.
    const steps = stepsLinkedTo(span);
    expect(steps.length).toBeGreaterThanOrEqual(body.details.generated_tokens);
    for (const step of steps) {
      expect(step.spanContext().traceId).not.toBe(parent.traceId); // a step is its own trace, shared by its requests
      const dispatches = spans.getFinishedSpans().filter((s) => s.name === 'moe.dispatch' && s.parentSpanContext?.spanId === step.spanContext().spanId);
      expect(dispatches.map((d) => d.attributes['moe.layer'])).toEqual([...Array(LAYERS).keys()]);
    }
  });

  it('sets gen_ai.response.id to the OpenAI response id, streamed or not', async () => {
    const parent = caller();
    const r = await post('/v1/chat/completions', { model: 'x', messages: [{ role: 'user', content: 'Who is Ahab?' }], max_tokens: 3 },
      { traceparent: parent.traceparent });
    expect(r.status).toBe(200);
    const { id } = await r.json() as { id: string };
    expect(id).toMatch(/^chatcmpl-/);
    const [span] = requestSpans().filter((s) => s.spanContext().traceId === parent.traceId);
    expect(span.attributes['gen_ai.response.id']).toBe(id);
    expect(stepsLinkedTo(span).length).toBeGreaterThan(0);

    const streamed = caller();
    const s = await post('/v1/completions', { model: 'x', prompt: 'Call me', max_tokens: 3, stream: true }, { traceparent: streamed.traceparent });
    const chunks = (await s.text()).split('\n').filter((l) => l.startsWith('data: {')).map((l) => JSON.parse(l.slice(6)) as { id: string });
    expect(chunks.length).toBeGreaterThan(0);
    const [streamSpan] = requestSpans().filter((x) => x.spanContext().traceId === streamed.traceId);
    expect(streamSpan.attributes['gen_ai.response.id']).toBe(chunks[0].id);
    expect(streamSpan.attributes['gen_ai.request.stream']).toBe(true);
  });

  it('starts a new trace without a traceparent, or with an invalid one', async () => {
    const before = new Set(requestSpans().map((s) => s.spanContext().spanId));
    for (const headers of [{} as Record<string, string>, { traceparent: 'not-a-traceparent' }, { traceparent: `00-${'0'.repeat(32)}-${'1'.repeat(16)}-01` }]) {
      const r = await post('/generate', { inputs: 'whale', parameters: { max_new_tokens: 2 } }, headers);
      expect(r.status).toBe(200);
    }
    const fresh = requestSpans().filter((s) => !before.has(s.spanContext().spanId));
    expect(fresh).toHaveLength(3);
    for (const span of fresh) {
      expect(span.parentSpanContext).toBeUndefined();
      expect(span.spanContext().traceId).not.toBe('0'.repeat(32));
      expect(stepsLinkedTo(span).length).toBeGreaterThan(0);
    }
  });
});
