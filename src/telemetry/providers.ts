/**
 * Builds this instance's own tracer and meter providers from the telemetry config (nothing is registered
 * globally, so several instances can live side by side, e.g. in tests).
 *
 * | exporter | spans                                   | metrics                                                 |
 * |----------|-----------------------------------------|---------------------------------------------------------|
 * | none     | not recorded                            | collected for /metrics                                  |
 * | otlp     | BatchSpanProcessor → OTLP/HTTP traces   | /metrics, plus a PeriodicExportingMetricReader → OTLP   |
 * | jsonl    | not recorded (the load trace is written) | collected for /metrics                                  |
 *
 * An injected `spanExporter` (tests) replaces the config's span export in every mode and gets a
 * SimpleSpanProcessor, so each span is exported as it ends; an injected `metricExporter` replaces the OTLP metric
 * exporter (or adds one) behind a PeriodicExportingMetricReader, exported at forceFlush/shutdown.
 *
 * Every pushing exporter is wrapped by export-errors.ts (failures reported, rate-limited; exports bounded by
 * `exportTimeoutMs`), and the OTLP exporters get `exportTimeoutMs` as their own timeout, retries included.
 */
import type { Tracer } from '@opentelemetry/api';
import { OTLPMetricExporter } from '@opentelemetry/exporter-metrics-otlp-http';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { MeterProvider, PeriodicExportingMetricReader, type IMetricReader, type PushMetricExporter } from '@opentelemetry/sdk-metrics';
import { BasicTracerProvider, BatchSpanProcessor, SimpleSpanProcessor, type SpanExporter, type SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { DEFAULT_EXPORT_TIMEOUT_MS, type Config } from '../config.ts';
import { GuardedMetricExporter, GuardedSpanExporter, type ExportErrors } from './export-errors.ts';
import { SCOPE, SERVICE_NAME } from './names.ts';

/** The config's telemetry section; `exportTimeoutMs` may be left out (its schema default applies). */
export type TelemetryConfig = Omit<Config['telemetry'], 'exportTimeoutMs'> & { exportTimeoutMs?: number };

/** How often the OTLP metric reader pushes (ms). */
export const METRIC_EXPORT_INTERVAL_MS = 30_000;

export interface Providers {
  tracer: Tracer | null;
  tracerProvider: BasicTracerProvider | null;
  meterProvider: MeterProvider;
  /** Pull reader behind GET /metrics (its HTTP server is never started). */
  prometheus: PrometheusExporter;
}

/** OTLP/HTTP signal URL: `<base>/v1/<signal>`; undefined keeps the exporter's default (OTEL_* env, else localhost:4318). */
export function otlpUrl(base: string | null, signal: 'traces' | 'metrics'): string | undefined {
  return base === null ? undefined : `${base.replace(/\/+$/, '')}/v1/${signal}`;
}

/** Where an OTLP signal goes, in words, for error reports. */
function otlpTarget(base: string | null, signal: 'traces' | 'metrics'): string {
  return otlpUrl(base, signal) ?? `the default OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318/v1/${signal})`;
}

export function buildProviders(
  config: TelemetryConfig,
  options: { serviceName: string; modelId: string; spanExporter?: SpanExporter; metricExporter?: PushMetricExporter; exportErrors: ExportErrors },
): Providers {
  const resource = resourceFromAttributes({ [SERVICE_NAME]: options.serviceName, 'switchyard.model.id': options.modelId });
  const timeoutMillis = config.exportTimeoutMs ?? DEFAULT_EXPORT_TIMEOUT_MS;
  const errors = options.exportErrors;

  let spanProcessor: SpanProcessor | null = null;
  if (options.spanExporter) {
    spanProcessor = new SimpleSpanProcessor(new GuardedSpanExporter(options.spanExporter, errors, 'spans', timeoutMillis));
  } else if (config.exporter === 'otlp') {
    const exporter = new OTLPTraceExporter({ url: otlpUrl(config.otlpEndpoint, 'traces'), timeoutMillis });
    spanProcessor = new BatchSpanProcessor(new GuardedSpanExporter(exporter, errors, `spans to ${otlpTarget(config.otlpEndpoint, 'traces')}`, timeoutMillis));
  }
  const tracerProvider = spanProcessor ? new BasicTracerProvider({ resource, spanProcessors: [spanProcessor] }) : null;

  const prometheus = new PrometheusExporter({ preventServerStart: true });
  const readers: IMetricReader[] = [prometheus];
  let push: PushMetricExporter | null = null;
  if (options.metricExporter) push = new GuardedMetricExporter(options.metricExporter, errors, 'metrics', timeoutMillis);
  else if (config.exporter === 'otlp') {
    const exporter = new OTLPMetricExporter({ url: otlpUrl(config.otlpEndpoint, 'metrics'), timeoutMillis });
    push = new GuardedMetricExporter(exporter, errors, `metrics to ${otlpTarget(config.otlpEndpoint, 'metrics')}`, timeoutMillis);
  }
  if (push) readers.push(new PeriodicExportingMetricReader({ exporter: push, exportIntervalMillis: METRIC_EXPORT_INTERVAL_MS }));
  const meterProvider = new MeterProvider({ resource, readers });

  return { tracer: tracerProvider?.getTracer(SCOPE) ?? null, tracerProvider, meterProvider, prometheus };
}
