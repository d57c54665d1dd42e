/**
 * The admin API (bearer-token protected; off — 404 — without `admin.token` / SWITCHYARD_ADMIN_TOKEN):
 *
 *   GET  /admin/load        tokens per expert and layer, worker busy fraction and balancedness over the last
 *                           10 s, 60 s and since start
 *   GET  /admin/placement   the placement in use, in the placement-file format
 *   PUT  /admin/placement   validate a placement file (422 listing every problem) and apply it live
 *   POST /admin/rebalance   {dry_run?, workers?, window_s?}: plan from recent load (EPLB-style) and apply it
 *   /admin/cluster/*        with experts on expert hosts (config nats): routes/cluster-admin.ts
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Hono, MiddlewareHandler } from 'hono';
import { z } from 'zod';
import type { Logger } from '../../log.ts';
import type { PlacementChange } from '../../../experts/pool.ts';
import {
  InvalidPlacementError, PlacementController, RebalanceError, type RebalanceResult,
} from '../../engine/placement-controller.ts';
import type { LoadWindow } from '../../placement/load-window.ts';
import type { Balance } from '../../placement/rebalance.ts';
import { placementToFile } from '../../placement/placement.ts';
import { errorResponse, HttpError } from '../errors.ts';
import type { ClusterAdmin } from '../../engine/cluster-admin.ts';
import { registerClusterAdminRoutes } from './cluster-admin.ts';

/** The engine's placement controller, when the service has one (the real engine does; test fakes may not). */
export function placementAdminOf(service: unknown): PlacementController | null {
  const admin = (service as { placementAdmin?: unknown } | null)?.placementAdmin;
  return admin instanceof PlacementController ? admin : null;
}

const digest = (text: string) => createHash('sha256').update(text).digest();

/** 401 unless `Authorization: Bearer <token>` matches (compared in constant time). */
export function requireBearer(token: string): MiddlewareHandler {
  const expected = digest(token);
  return async (c, next) => {
    const header = c.req.header('authorization') ?? '';
    const match = /^Bearer\s+(.+)$/i.exec(header.trim());
    if (!match) {
      return errorResponse(c, 401, 'unauthorized', 'the admin API needs a bearer token: send "Authorization: Bearer <admin.token>"',
        { 'WWW-Authenticate': 'Bearer realm="switchyard-admin"' });
    }
    if (!timingSafeEqual(digest(match[1]), expected)) {
      return errorResponse(c, 401, 'unauthorized', 'the bearer token is not the admin token (admin.token or SWITCHYARD_ADMIN_TOKEN)',
        { 'WWW-Authenticate': 'Bearer realm="switchyard-admin", error="invalid_token"' });
    }
    await next();
  };
}

const round = (x: number, digits = 4) => Math.round(x * 10 ** digits) / 10 ** digits;

function windowJson(w: LoadWindow) {
  return {
    seconds: round(w.seconds, 3),
    steps: w.steps,
    tokens: w.tokens,
    tokens_per_expert: w.tokensPerExpert,
    workers: w.workers.map((x) => ({
      worker: x.worker, tokens: x.tokens, tokens_per_layer: x.tokensPerLayer,
      compute_ms: round(x.computeMs, 3), busy_fraction: round(x.busyFraction),
    })),
    hosts: w.hosts.map((h) => ({ host: h.host, tokens: h.tokens, compute_ms: round(h.computeMs, 3), busy_fraction: round(h.busyFraction) })),
    balancedness: { per_layer: w.balancedness.perLayer.map((b) => round(b)), overall: round(w.balancedness.overall) },
  };
}

function balanceJson(b: Balance) {
  return {
    per_layer: b.perLayer.map((x) => round(x)),
    overall: round(b.overall),
    worker_load: b.workerLoad.map((row) => row.map((x) => round(x, 2))),
  };
}

function changeJson(c: PlacementChange) {
  return {
    loaded: c.loaded, unloaded: c.unloaded, workers_added: c.workersAdded, workers_retired: c.workersRetired,
    ms: round(c.ms, 1), load_ms: round(c.loadMs, 1),
  };
}

function rebalanceJson(r: RebalanceResult, dryRun: boolean) {
  return {
    dry_run: dryRun,
    applied: r.applied,
    reason: r.reason,
    window_s: round(r.windowSeconds, 3),
    tokens: r.tokens,
    predicted: { before: balanceJson(r.before), after: balanceJson(r.after) },
    replicas: r.plan.replicas,
    experts_per_worker: r.plan.expertsPerWorker,
    placement: placementToFile(r.plan.placement),
    change: r.change ? changeJson(r.change) : null,
  };
}

const rebalanceBody = z.strictObject({
  dry_run: z.boolean().optional(),
  workers: z.int().positive().optional(),
  window_s: z.number().positive().max(3600).optional(),
});

export async function jsonBody(request: Request, example: string, optional: boolean): Promise<unknown> {
  const text = await request.text();
  if (text.trim() === '') {
    if (optional) return {};
    throw new HttpError(422, 'validation', `request body is empty; send JSON like ${example}`);
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new HttpError(422, 'validation', `request body is not valid JSON (${(error as Error).message}); send JSON like ${example}`);
  }
}

export interface AdminRouteOptions {
  token: string;
  logger: Logger;
  /** The engine's expert cluster (scale-out): serves /admin/cluster/* when given. */
  cluster?: ClusterAdmin | null;
}

/** The engine's cluster admin, when it joined an expert cluster (config nats). */
export function clusterAdminOf(service: unknown): ClusterAdmin | null {
  return ((service as { clusterAdmin?: ClusterAdmin | null } | null)?.clusterAdmin) ?? null;
}

export function registerAdminRoutes(app: Hono, admin: PlacementController, options: AdminRouteOptions): void {
  app.use('/admin/*', requireBearer(options.token));
  if (options.cluster) registerClusterAdminRoutes(app, options.cluster, admin, options.logger);

  app.get('/admin/load', (c) => {
    const report = admin.load();
    const { layers, experts, maxWorkers, maxExpertsPerWorker } = admin.limits;
    return c.json({
      layers, experts, workers: report.workers, max_workers: maxWorkers, max_experts_per_worker: maxExpertsPerWorker,
      windows: Object.fromEntries(Object.entries(report.windows).map(([name, w]) => [name, windowJson(w)])),
    });
  });

  app.get('/admin/placement', (c) => c.json(admin.placementFile()));

  app.put('/admin/placement', async (c) => {
    const body = await jsonBody(c.req.raw, '{"workers": 2, "assignments": [{"layer": 0, "expert": 0, "workers": [0]}, ...]}', false);
    let change: PlacementChange;
    try {
      change = await admin.apply(body);
    } catch (error) {
      if (error instanceof InvalidPlacementError) throw new HttpError(422, 'validation', error.message);
      throw error;
    }
    options.logger.info('placement changed', {
      workers: admin.placement.workers, loaded: change.loaded.length, unloaded: change.unloaded.length,
      workers_added: change.workersAdded, workers_retired: change.workersRetired, ms: Math.round(change.ms),
    });
    return c.json({ placement: admin.placementFile(), change: changeJson(change) });
  });

  app.post('/admin/rebalance', async (c) => {
    const raw = await jsonBody(c.req.raw, '{"dry_run": true}', true);
    const parsed = rebalanceBody.safeParse(raw);
    if (!parsed.success) {
      const problems = parsed.error.issues.map((i) => `${i.path.join('.') || '(body)'}: ${i.message}`).join('; ');
      throw new HttpError(422, 'validation', `${problems}; send {"dry_run"?: boolean, "workers"?: integer, "window_s"?: seconds}`);
    }
    const dryRun = parsed.data.dry_run ?? false;
    let result: RebalanceResult;
    try {
      result = await admin.rebalance({ dryRun, workers: parsed.data.workers, windowSeconds: parsed.data.window_s });
    } catch (error) {
      if (error instanceof RebalanceError) throw new HttpError(422, 'validation', error.message);
      throw error;
    }
    if (result.applied) {
      options.logger.info('rebalanced', {
        window_s: result.windowSeconds, tokens: result.tokens, before: result.before.overall, after: result.after.overall,
        loaded: result.change?.loaded.length, unloaded: result.change?.unloaded.length, ms: Math.round(result.change?.ms ?? 0),
      });
    }
    return c.json(rebalanceJson(result, dryRun));
  });
}
