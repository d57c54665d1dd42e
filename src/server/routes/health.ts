/**
 * GET /health — liveness and readiness: 200 `{ status: 'ok', workers }`, or 503 `{ status: 'degraded', error,
 * error_type: 'internal', workers }` when an expert worker's replacement thread failed to start (its experts cannot
 * run), so that a load balancer takes the instance out of rotation.
 */
import type { Hono } from 'hono';
import type { GenerationService } from '../../engine/types.ts';

export function registerHealthRoute(app: Hono, service: GenerationService): void {
  app.get('/health', (c) => {
    const report = service.health?.();
    if (!report) return c.json({ status: 'ok' });
    if (report.status === 'ok') return c.json(report);
    const failed = report.workers.filter((w) => w.state === 'failed');
    const error = `expert ${failed.length === 1 ? 'worker' : 'workers'} ${failed.map((w) => `${w.worker} (${w.error ?? 'failed to start'})`).join(', ')} cannot start; requests for the experts ${failed.length === 1 ? 'it hosts' : 'they host'} fail until a thread starts again: check the model package and the log, then restart the server`;
    return c.json({ ...report, error, error_type: 'internal' }, 503);
  });
}
