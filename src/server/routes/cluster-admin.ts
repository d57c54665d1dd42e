/**
 * The admin API of an expert cluster (scale-out over NATS; under the same bearer token as /admin/*):
 *
 *   GET  /admin/cluster             the hosts that announced themselves, the cluster placement, each host's load
 *   PUT  /admin/cluster/placement   validate a cluster placement (422 listing every problem) and publish it: hosts
 *                                   and gateways follow it live
 *   POST /admin/cluster/rebalance   {dry_run?, window_s?}: plan a placement over the announced hosts from this
 *                                   gateway's recent expert load (EPLB-style) and publish it
 */
import type { Hono } from 'hono';
import { z } from 'zod';
import type { Logger } from '../../log.ts';
import { ClusterRebalanceError, type ClusterAdmin } from '../../engine/cluster-admin.ts';
import { ClusterPlacementError, clusterPlacementToFile } from '../../placement/cluster.ts';
import type { PlacementController } from '../../engine/placement-controller.ts';
import { HttpError } from '../errors.ts';
import { jsonBody } from './admin.ts';

const rebalanceBody = z.object({
  dry_run: z.boolean().optional(),
  window_s: z.number().positive().max(86_400).nullable().optional(),
}).strict();

const round = (x: number) => Math.round(x * 10_000) / 10_000;

export function registerClusterAdminRoutes(app: Hono, cluster: ClusterAdmin, local: PlacementController, logger: Logger): void {
  app.get('/admin/cluster', async (c) => {
    const window = local.load().windows.since_start;
    return c.json({
      cluster: cluster.cluster,
      hosts: await cluster.hosts(),
      placement: cluster.placementFile(),
      load: window.hosts.map((h) => ({ host: h.host, tokens: h.tokens, compute_ms: round(h.computeMs), busy_fraction: round(h.busyFraction) })),
    });
  });

  app.put('/admin/cluster/placement', async (c) => {
    const body = await jsonBody(c.req.raw, '{"assignments": [{"layer": 0, "expert": 0, "hosts": ["host-a"]}, ...]}', false);
    let published;
    try {
      published = await cluster.publish(body);
    } catch (error) {
      if (error instanceof ClusterPlacementError) throw new HttpError(422, 'validation', error.message);
      throw error;
    }
    logger.info('cluster placement published', { cluster: cluster.cluster });
    return c.json({ placement: clusterPlacementToFile(published) });
  });

  app.post('/admin/cluster/rebalance', async (c) => {
    const parsed = rebalanceBody.safeParse(await jsonBody(c.req.raw, '{"dry_run": true}', true));
    if (!parsed.success) {
      const problems = parsed.error.issues.map((i) => `${i.path.join('.') || '(body)'}: ${i.message}`).join('; ');
      throw new HttpError(422, 'validation', `${problems}; send {"dry_run"?: boolean, "window_s"?: seconds}`);
    }
    try {
      const result = await cluster.rebalance({ dryRun: parsed.data.dry_run ?? false, windowSeconds: parsed.data.window_s ?? null });
      if (!result.dryRun) logger.info('cluster rebalanced', { hosts: result.hosts, moves: result.moves.length, before: result.before.overall, after: result.after.overall });
      return c.json({
        dry_run: result.dryRun, applied: !result.dryRun, hosts: result.hosts, window_s: result.windowSeconds, tokens: result.tokens,
        before: { overall: round(result.before.overall), per_layer: result.before.perLayer.map(round) },
        after: { overall: round(result.after.overall), per_layer: result.after.perLayer.map(round) },
        moves: result.moves, placement: result.placement,
      });
    } catch (error) {
      if (error instanceof ClusterRebalanceError) throw new HttpError(422, 'validation', error.message);
      throw error;
    }
  });
}
