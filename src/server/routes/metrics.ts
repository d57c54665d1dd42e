/** GET /metrics — every OpenTelemetry metric in Prometheus text format. */
import type { Hono } from 'hono';
import { PROMETHEUS_CONTENT_TYPE, type Telemetry } from '../../telemetry/index.ts';

export function registerMetricsRoute(app: Hono, telemetry: Telemetry): void {
  app.get('/metrics', async (c) => c.body(await telemetry.metricsText(), 200, { 'content-type': PROMETHEUS_CONTENT_TYPE }));
}
