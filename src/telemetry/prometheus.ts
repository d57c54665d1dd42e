/**
 * Prometheus text exposition for GET /metrics. The PrometheusExporter is a pull MetricReader whose own HTTP
 * server is never started (`preventServerStart: true`); on each scrape we call its collect() and render the
 * result with PrometheusSerializer (the same serializer, with the same defaults, the exporter's handler uses).
 *
 * Names follow OpenTelemetry's "Prometheus and OpenMetrics compatibility" rules: the serializer turns `.` into `_`
 * and adds `_total` to monotonic sums, but @opentelemetry/exporter-prometheus 0.223 does not add the unit
 * suffix those rules ask for (opentelemetry-js issue #3466), so prometheusNames() adds it first: a unit is written
 * out as a word (`s` → `seconds`, `By` → `bytes`), annotations like `{token}` are dropped, and the word goes
 * before `_total`. So `gen_ai.server.request.duration` (unit s) is `gen_ai_server_request_duration_seconds`,
 * `moe.worker.busy_time` (unit s, a counter) `moe_worker_busy_time_seconds_total`, `moe.expert.tokens` (unit
 * {token}) `moe_expert_tokens_total`; label `moe.layer` becomes `moe_layer`. OTLP export keeps the OTel names.
 */
import { PrometheusSerializer, type PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { DataPointType, type MetricData, type ResourceMetrics } from '@opentelemetry/sdk-metrics';

/** Content-Type of the text this renders (Prometheus text format 0.0.4). */
export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

/** UCUM units → Prometheus unit words (the compatibility spec's table, the units a gateway plausibly uses). */
const UNIT_WORDS: Record<string, string> = {
  d: 'days', h: 'hours', min: 'minutes', s: 'seconds', ms: 'milliseconds', us: 'microseconds', ns: 'nanoseconds',
  By: 'bytes', KiBy: 'kibibytes', MiBy: 'mebibytes', GiBy: 'gibibytes', TiBy: 'tibibytes',
  KBy: 'kilobytes', MBy: 'megabytes', GBy: 'gigabytes', TBy: 'terabytes',
  m: 'meters', V: 'volts', A: 'amperes', J: 'joules', W: 'watts', g: 'grams', Cel: 'celsius', Hz: 'hertz', '%': 'percent',
};
/** The denominator of a rate unit (`By/s` → `bytes_per_second`). */
const PER_WORDS: Record<string, string> = { s: 'second', m: 'minute', h: 'hour', d: 'day', w: 'week', mo: 'month', y: 'year' };

/**
 * The Prometheus unit word of an OpenTelemetry (UCUM) unit: '' when there is none to add — no unit, only an
 * annotation (`{token}`), or `1` on anything but a gauge (where it is `ratio`). Unknown units pass through as they are.
 */
export function prometheusUnit(unit: string, gauge = false): string {
  const bare = unit.replace(/\{[^}]*\}/g, '').trim();
  if (bare === '') return '';
  if (bare === '1') return gauge ? 'ratio' : '';
  const slash = bare.indexOf('/');
  if (slash < 0) return UNIT_WORDS[bare] ?? bare;
  const [num, per] = [bare.slice(0, slash), bare.slice(slash + 1)];
  const perWord = PER_WORDS[per] ?? per;
  return num === '' ? `per_${perWord}` : `${UNIT_WORDS[num] ?? num}_per_${perWord}`;
}

/** One metric renamed as described above, with its unit metadata (`# UNIT`) set to the word, or dropped. */
function withUnitSuffix(metric: MetricData): MetricData {
  const word = prometheusUnit(metric.descriptor.unit, metric.dataPointType === DataPointType.GAUGE);
  let name = metric.descriptor.name;
  if (word !== '') {
    const total = name.endsWith('_total');
    if (total) name = name.slice(0, -'_total'.length);
    // "unless the metric name already contains the unit" (e.g. switchyard.cache.bytes in By)
    if (!name.replace(/[^a-zA-Z0-9]+/g, '_').endsWith(`_${word}`)) name = `${name}_${word}`;
    if (total) name += '_total';
  }
  return { ...metric, descriptor: { ...metric.descriptor, name, unit: word } };
}

/** The collected metrics with Prometheus-style unit suffixes; the input is left as it is. */
export function prometheusNames(resourceMetrics: ResourceMetrics): ResourceMetrics {
  return {
    ...resourceMetrics,
    scopeMetrics: resourceMetrics.scopeMetrics.map((scope) => ({ ...scope, metrics: scope.metrics.map(withUnitSuffix) })),
  };
}

export function prometheusText(exporter: PrometheusExporter): () => Promise<string> {
  const serializer = new PrometheusSerializer();
  return async () => {
    const { resourceMetrics } = await exporter.collect();
    return serializer.serialize(prometheusNames(resourceMetrics));
  };
}
