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
 */
import type { Tracer } from '@opentelemetry/api';
import { OTLPMetricExporter } from '@opentelemetry/exporter-metrics-otlp-http';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { MeterProvider, PeriodicExportingMetricReader, type IMetricReader, type PushMetricExporter } from '@opentelemetry/sdk-metrics';
import { BasicTracerProvider, BatchSpanProcessor, SimpleSpanProcessor, type SpanExporter, type SpanProcessor } from '@opentelemetry/sdk-trace-base';
import type { Config } from '../config.ts';
import { SCOPE, SERVICE_NAME } from './names.ts';

export type TelemetryConfig = Config['telemetry'];

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

export function buildProviders(
  config: TelemetryConfig,
  options: { serviceName: string; modelId: string; spanExporter?: SpanExporter; metricExporter?: PushMetricExporter },
): Providers {
  const resource = resourceFromAttributes({ [SERVICE_NAME]: options.serviceName, 'switchyard.model.id': options.modelId });

  let spanProcessor: SpanProcessor | null = null;
  if (options.spanExporter) spanProcessor = new SimpleSpanProcessor(options.spanExporter);
  else if (config.exporter === 'otlp') spanProcessor = new BatchSpanProcessor(new OTLPTraceExporter({ url: otlpUrl(config.otlpEndpoint, 'traces') }));
  const tracerProvider = spanProcessor ? new BasicTracerProvider({ resource, spanProcessors: [spanProcessor] }) : null;

  const prometheus = new PrometheusExporter({ preventServerStart: true });
  const readers: IMetricReader[] = [prometheus];
  const push: PushMetricExporter | null = options.metricExporter
    ?? (config.exporter === 'otlp' ? new OTLPMetricExporter({ url: otlpUrl(config.otlpEndpoint, 'metrics') }) : null);
  if (push) readers.push(new PeriodicExportingMetricReader({ exporter: push, exportIntervalMillis: METRIC_EXPORT_INTERVAL_MS }));
  const meterProvider = new MeterProvider({ resource, readers });

  return { tracer: tracerProvider?.getTracer(SCOPE) ?? null, tracerProvider, meterProvider, prometheus };
}
