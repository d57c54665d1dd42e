/**
 * Switchyard telemetry: OpenTelemetry traces and metrics (GenAI semantic conventions for requests, `moe.*` for
 * expert load) and the JSON-lines load trace. One createTelemetry() call builds an independent instance with its
 * own providers; nothing is registered globally.
 *
 *   const telemetry = createTelemetry(config.telemetry, { modelId });
 *   Engine.load(config, telemetry.observer);               // per step: metrics, moe.step/moe.dispatch spans, load trace
 *   const req = telemetry.startRequest({ operation: 'text_completion', model, maxTokens, stream });
 *   req.firstToken(); req.outputToken(); req.end({ inputTokens, outputTokens, finishReason });
 *   telemetry.recentRequests(10)                           // rate, tokens/s, TTFT/TPOT percentiles (GET /admin/requests)
 *   telemetry.observeCaches(() => service.info().caches);  // switchyard.cache.* (prefix and response caches)
 *   GET /metrics → await telemetry.metricsText()           // with PROMETHEUS_CONTENT_TYPE
 *   await telemetry.shutdown();
 */
import { performance } from 'node:perf_hooks';
import type { Counter } from '@opentelemetry/api';
import type { PushMetricExporter } from '@opentelemetry/sdk-metrics';
import type { SpanExporter } from '@opentelemetry/sdk-trace-base';
import { ConfigError } from '../config.ts';
import type { StepObserver } from '../engine/scheduler.ts';
import type { PoolObserver } from '../../experts/pool.ts';
import { registerCacheMetrics, type CacheStatsReader } from './cache-metrics.ts';
import { LoadTraceWriter } from './load-trace.ts';
import { ExportErrors } from './export-errors.ts';
import { MoeMetrics } from './moe-metrics.ts';
import { METRIC, SCOPE } from './names.ts';
import { prometheusText } from './prometheus.ts';
import { buildProviders, type TelemetryConfig } from './providers.ts';
import { RequestMetrics, startRequest, type RequestInfo, type RequestTelemetry } from './request.ts';
import { RequestWindow, type RequestWindowSummary } from './request-window.ts';
import { recordStepSpans, requestLinks } from './step-spans.ts';
import { summarizeStep } from './step-summary.ts';

export type { RequestInfo, RequestResult, RequestTelemetry } from './request.ts';
export type { LoadTraceRecord, LoadTraceWorker } from './load-trace.ts';
export type { TelemetryConfig } from './providers.ts';
export type { RequestWindowSummary } from './request-window.ts';
export type { CacheStatsReader } from './cache-metrics.ts';
export { PROMETHEUS_CONTENT_TYPE } from './prometheus.ts';

export interface Telemetry {
  /**
   * Engine hook: per step and layer → metrics, a `moe.step` span (linked to the request spans of its sequences, from
   * `GenerateOptions.trace`) with one `moe.dispatch` span per layer, JSONL load-trace line;
   * per expert worker restart (the engine wires it to the pool) → `moe.worker.restarts`; per expert batch that an
   * expert host did not answer (scale-out; the engine wires it to the cluster runner) → `moe.host.failovers`.
   */
  readonly observer: StepObserver & PoolObserver;
  /**
   * A span per request with GenAI attributes (a child of `info.parent`, the caller's W3C trace context, when given),
   * plus the gen_ai.server.* histograms. The result's `trace` is the span's context for GenerateOptions.trace.
   */
  startRequest(info: RequestInfo): RequestTelemetry;
  /**
   * Requests of the last `windowSeconds` (at most 600): finished per second, output tokens per second, TTFT, TPOT
   * and duration percentiles (request-window.ts), from the same start, first-token and end times as the histograms.
   */
  recentRequests(windowSeconds: number): RequestWindowSummary;
  /** Registers the `switchyard.cache.*` metrics, read from `read` at each collection (call once per instance). */
  observeCaches(read: CacheStatsReader): void;
  /** Prometheus text exposition of all metrics (for GET /metrics), unit suffixes added (see prometheus.ts). */
  metricsText(): Promise<string>;
  /**
   * Flushes exporters and closes the load-trace file (idempotent). Rejects with the first error (a final export
   * that failed, a load-trace write error) unless `onError` was given, which then receives them instead. Waits at
   * most about `exportTimeoutMs` for exports, and not at all for a collector whose last export failed.
   */
  shutdown(): Promise<void>;
}

export interface TelemetryOptions {
  /** Reported as `gen_ai.response.model` and the `switchyard.model.id` resource attribute. */
  modelId: string;
  /** `service.name` resource attribute (default 'switchyard'). */
  serviceName?: string;
  /** Replaces the config's span export (tests: InMemorySpanExporter); spans are exported as they end. */
  spanExporter?: SpanExporter;
  /** Replaces (or adds) the pushed metric export (tests: InMemoryMetricExporter); pushed at shutdown. */
  metricExporter?: PushMetricExporter;
  /** Clock in epoch milliseconds (default: performance.timeOrigin + performance.now(), sub-millisecond). */
  now?: () => number;
  /**
   * Errors the telemetry hit after start (a load-trace write failure, an exception inside the step hook, a failed
   * export: the first one, then at most one report a minute). The step hook never throws into the scheduler.
   * Without this, the first such error is rethrown by shutdown().
   */
  onError?: (error: Error) => void;
}

/**
 * Builds a telemetry instance. Throws ConfigError when `exporter` is 'jsonl' and `loadTraceFile` is null, and the
 * file system's error when the load-trace file cannot be opened for appending.
 */
export function createTelemetry(config: TelemetryConfig, options: TelemetryOptions): Telemetry {
  if (config.exporter === 'jsonl' && config.loadTraceFile === null) {
    const message = "telemetry.loadTraceFile must be set when telemetry.exporter is 'jsonl' (the load trace is that mode's only output); "
      + "set it, e.g. {\"telemetry\": {\"exporter\": \"jsonl\", \"loadTraceFile\": \"traces/load.jsonl\"}}, or use exporter 'none' or 'otlp'";
    throw new ConfigError(`invalid configuration:\n  - telemetry.loadTraceFile: ${message}`, [
      { path: 'telemetry.loadTraceFile', message, source: 'telemetry config' },
    ]);
  }
  const now = options.now ?? (() => performance.timeOrigin + performance.now());
  let firstError: Error | null = null;
  const fail = (error: unknown) => {
    const err = error instanceof Error ? error : new Error(String(error));
    if (options.onError) options.onError(err);
    else firstError ??= err;
  };

  // Opened first: if the file cannot be opened, nothing else has been started.
  let dropped: Counter | null = null;
  const loadTrace = config.loadTraceFile === null ? null : new LoadTraceWriter(config.loadTraceFile, {
    onDrop: (records) => dropped?.add(records),
    onError: (error) => fail(new Error(`load trace ${config.loadTraceFile}: ${error.message}`, { cause: error })),
  });

  const exportErrors = new ExportErrors({
    report: fail,
    hint: config.exporter === 'otlp'
      ? `Check that an OTLP/HTTP collector listens at telemetry.otlpEndpoint (${config.otlpEndpoint ?? 'null: OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318'}), or set telemetry.exporter to 'none'.`
      : 'Check the exporter given to createTelemetry.',
  });
  const providers = buildProviders(config, {
    serviceName: options.serviceName ?? 'switchyard', modelId: options.modelId,
    spanExporter: options.spanExporter, metricExporter: options.metricExporter, exportErrors,
  });
  const meter = providers.meterProvider.getMeter(SCOPE);
  const moeMetrics = new MoeMetrics(meter);
  const requestMetrics = new RequestMetrics(meter);
  dropped = meter.createCounter(METRIC.loadTraceDropped, {
    description: 'Load-trace records dropped because the file could not keep up.', unit: '{record}',
  });

  const recent = new RequestWindow(now());
  let steps = 0;
  let closed: Promise<void> | null = null;
  const observer: StepObserver & PoolObserver = {
    onStep(step) {
      if (closed) return;
      try {
        const summary = summarizeStep(step, steps++, now());
        moeMetrics.record(summary);
        if (providers.tracer) recordStepSpans(providers.tracer, summary, requestLinks(step.sequences));
        loadTrace?.write(summary);
      } catch (error) {
        fail(error);
      }
    },
    onWorkerRestart(event) {
      if (closed) return;
      try {
        moeMetrics.recordWorkerRestart(event.worker);
      } catch (error) {
        fail(error);
      }
    },
    onHostFailover(event) {
      if (closed) return;
      try {
        moeMetrics.recordHostFailover(event.layer, event.action);
      } catch (error) {
        fail(error);
      }
    },
  };

  return {
    observer,
    startRequest(info) {
      const otel = startRequest(info, { tracer: providers.tracer, metrics: requestMetrics, now, responseModel: options.modelId });
      const startedAt = now();
      let firstAt: number | null = null;
      let ended = false;
      recent.requestStarted(startedAt);
      return {
        trace: otel.trace,
        firstToken() {
          otel.firstToken();
          if (ended || firstAt !== null) return;
          firstAt = now();
          recent.firstToken(firstAt, startedAt);
        },
        outputToken() {
          if (!ended) recent.outputTokens(now());
        },
        end(result) {
          otel.end(result);
          if (ended) return;
          ended = true;
          recent.requestEnded(now(), startedAt, {
            firstTokenAt: firstAt, outputTokens: 'error' in result ? 0 : result.outputTokens, error: 'error' in result,
          });
        },
      };
    },
    recentRequests: (windowSeconds) => recent.summary(now(), windowSeconds),
    observeCaches: (read) => registerCacheMetrics(meter, read),
    metricsText: prometheusText(providers.prometheus),
    shutdown() {
      closed ??= (async () => {
        exportErrors.beginShutdown();
        const parts: Array<[string, Promise<void> | undefined]> = [
          ['load trace', loadTrace?.close()],
          ['span export', providers.tracerProvider?.shutdown()],
          ['metric export', providers.meterProvider.shutdown()],
        ];
        const results = await Promise.allSettled(parts.map(([, p]) => p));
        results.forEach((r, i) => {
          if (r.status === 'rejected') {
            const cause = r.reason instanceof Error ? r.reason : new Error(String(r.reason));
            // A final export that failed was reported by its exporter: this goes through the same rate limit.
            if (parts[i][0] !== 'load trace') exportErrors.failed(`the last ${parts[i][0] === 'span export' ? 'spans' : 'metrics'} (at shutdown)`, cause);
            else fail(new Error(`telemetry shutdown: ${parts[i][0]} failed: ${cause.message}`, { cause }));
          }
        });
        if (firstError) throw firstError;
      })();
      return closed;
    },
  };
}
