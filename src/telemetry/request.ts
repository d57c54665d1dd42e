/**
 * Per-request telemetry: a span named `{operation} {model}` with the GenAI request, usage and response
 * attributes (`gen_ai.response.id` included), a child of the caller's span when the request came with a W3C
 * `traceparent`, and the gen_ai.server.* histograms (seconds): time to first token, time per output token
 * ((end − first token) / (output tokens − 1), only with ≥ 2 tokens and a firstToken() call) and request duration.
 * Times come from the injected clock (epoch milliseconds), so tests control them.
 */
import { SpanKind, SpanStatusCode, type Attributes, type Histogram, type Meter, type Span, type Tracer } from '@opentelemetry/api';
import type { TraceCarrier } from '../engine/types.ts';
import { BUCKETS, ERROR_TYPE, GENAI, PROVIDER } from './names.ts';
import { carrierOf, contextFrom } from './trace-context.ts';

export interface RequestInfo {
  operation: 'text_completion' | 'chat';
  model: string;
  maxTokens: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number | null;
  stream: boolean;
  /** `gen_ai.response.id`: the id of the response the client gets. */
  responseId?: string;
  /** The caller's trace (its `traceparent`/`tracestate` headers): the request span continues it. */
  parent?: TraceCarrier;
}

export type RequestResult = { inputTokens: number; outputTokens: number; finishReason: string } | { error: Error };

export interface RequestTelemetry {
  /** The request span's context as W3C headers (for the engine, so step spans can link to it); undefined without tracing. */
  readonly trace: TraceCarrier | undefined;
  /** Call when the first output token is produced (later calls are ignored). */
  firstToken(): void;
  /** Call for every output token (the first one too, after firstToken()): counts output tokens per second. */
  outputToken(): void;
  /** Call once when the request ends (later calls are ignored). */
  end(result: RequestResult): void;
}

export class RequestMetrics {
  readonly timeToFirstToken: Histogram;
  readonly timePerOutputToken: Histogram;
  readonly requestDuration: Histogram;

  constructor(meter: Meter) {
    this.timeToFirstToken = meter.createHistogram(GENAI.timeToFirstToken, {
      description: 'Time to generate the first token of a request.',
      unit: 's',
      advice: { explicitBucketBoundaries: [...BUCKETS.timeToFirstToken] },
    });
    this.timePerOutputToken = meter.createHistogram(GENAI.timePerOutputToken, {
      description: 'Time per output token generated after the first one.',
      unit: 's',
      advice: { explicitBucketBoundaries: [...BUCKETS.timePerOutputToken] },
    });
    this.requestDuration = meter.createHistogram(GENAI.requestDuration, {
      description: 'Time from the request\'s start to its last token (or its failure).',
      unit: 's',
      advice: { explicitBucketBoundaries: [...BUCKETS.requestDuration] },
    });
  }
}

/** `error.type`: the error's class name (e.g. RequestTimeoutError), `_OTHER` when it has none. */
export function errorType(error: Error): string {
  return error.name || error.constructor?.name || '_OTHER';
}

export function startRequest(
  info: RequestInfo,
  deps: { tracer: Tracer | null; metrics: RequestMetrics; now: () => number; responseModel: string },
): RequestTelemetry {
  const { tracer, metrics, now } = deps;
  const started = now();
  const metricAttrs: Attributes = {
    [GENAI.operation]: info.operation,
    [GENAI.provider]: PROVIDER,
    [GENAI.requestModel]: info.model,
    [GENAI.responseModel]: deps.responseModel,
  };
  let span: Span | null = null;
  if (tracer) {
    const attributes: Attributes = {
      ...metricAttrs,
      [GENAI.maxTokens]: info.maxTokens,
      [GENAI.stream]: info.stream,
    };
    if (info.temperature !== undefined) attributes[GENAI.temperature] = info.temperature;
    if (info.topP !== undefined) attributes[GENAI.topP] = info.topP;
    if (info.topK !== undefined) attributes[GENAI.topK] = info.topK;
    if (info.seed !== undefined && info.seed !== null) attributes[GENAI.seed] = info.seed;
    if (info.responseId !== undefined) attributes[GENAI.responseId] = info.responseId;
    span = tracer.startSpan(`${info.operation} ${info.model}`, { kind: SpanKind.SERVER, startTime: started, attributes }, contextFrom(info.parent));
  }

  let firstAt: number | null = null;
  let ended = false;
  return {
    // Output-token rates are kept by the caller's RequestWindow (index.ts); the histograms need only the first.
    outputToken() {},
    trace: span ? carrierOf(span) : undefined,
    firstToken() {
      if (ended || firstAt !== null) return;
      firstAt = now();
      metrics.timeToFirstToken.record((firstAt - started) / 1000, metricAttrs);
    },
    end(result) {
      if (ended) return;
      ended = true;
      const endedAt = now();
      if ('error' in result) {
        const type = errorType(result.error);
        metrics.requestDuration.record((endedAt - started) / 1000, { ...metricAttrs, [ERROR_TYPE]: type });
        if (span) {
          span.recordException(result.error, endedAt);
          span.setAttribute(ERROR_TYPE, type);
          span.setStatus({ code: SpanStatusCode.ERROR, message: result.error.message });
        }
      } else {
        metrics.requestDuration.record((endedAt - started) / 1000, metricAttrs);
        if (firstAt !== null && result.outputTokens >= 2) {
          metrics.timePerOutputToken.record((endedAt - firstAt) / 1000 / (result.outputTokens - 1), metricAttrs);
        }
        span?.setAttributes({
          [GENAI.inputTokens]: result.inputTokens,
          [GENAI.outputTokens]: result.outputTokens,
          [GENAI.finishReasons]: [result.finishReason],
        });
      }
      span?.end(endedAt);
    },
  };
}
