/**
 * Prometheus text exposition for GET /metrics. The PrometheusExporter is a pull MetricReader whose own HTTP
 * server is never started (`preventServerStart: true`); on each scrape we call its collect() and render the
 * result with PrometheusSerializer (the same serializer, with the same defaults, the exporter's handler uses).
 * Names are sanitised by the serializer: `moe.expert.tokens` becomes `moe_expert_tokens_total`,
 * label `moe.layer` becomes `moe_layer`.
 */
import { PrometheusSerializer, type PrometheusExporter } from '@opentelemetry/exporter-prometheus';

/** Content-Type of the text this renders (Prometheus text format 0.0.4). */
export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

export function prometheusText(exporter: PrometheusExporter): () => Promise<string> {
  const serializer = new PrometheusSerializer();
  return async () => {
    const { resourceMetrics } = await exporter.collect();
    return serializer.serialize(resourceMetrics);
  };
}
