/**
 * The HTTP routes the gateway mounts, read from the Hono app's own route table (`app.routes`) rather than written
 * down a second time, so that `switchyard serve --help` cannot drift from what the server answers.
 */
import type { Hono } from 'hono';
import { METHOD_NAME_ALL } from 'hono/router';
import { ConfigSchema } from '../config.ts';
import type { ClusterAdmin } from '../engine/cluster-admin.ts';
import type { PlacementController } from '../engine/placement-controller.ts';
import type { GenerationService } from '../engine/types.ts';
import type { Telemetry } from '../telemetry/index.ts';
import { createApp } from './app.ts';

export interface MountedRoute {
  method: string;
  path: string;
  /** What the server needs to mount it (null: always mounted by `switchyard serve`). */
  needs: string | null;
  /** One line for the help; undefined for a route nobody described yet (ROUTE_SUMMARIES). */
  summary: string | undefined;
}

/** One line per route, keyed `METHOD path`. test/cli.test.ts checks that every mounted route has one. */
export const ROUTE_SUMMARIES: Readonly<Record<string, string>> = {
  'POST /': "TGI's compat route: the /generate body plus stream",
  'POST /generate': 'generate text (Text Generation Inference request and response)',
  'POST /generate_stream': 'the same, one server-sent event per token',
  'GET /v1/models': 'OpenAI: the served model',
  'POST /v1/completions': 'OpenAI completions (stream: true for server-sent events)',
  'POST /v1/chat/completions': 'OpenAI chat completions (stream: true for server-sent events)',
  'GET /health': '200 ok, or 503 degraded when an expert worker cannot start',
  'GET /info': 'model, experts, parameters, placement, limits, active and queued sequences',
  'GET /metrics': 'OpenTelemetry metrics in Prometheus text (gen_ai.*, moe.* expert load, caches)',
  'GET /admin/load': 'tokens per expert, worker busy time, balancedness: last 10 s, 60 s, since start',
  'GET /admin/placement': 'the placement in use, in the placement-file format',
  'PUT /admin/placement': 'validate a placement file and apply it live',
  'POST /admin/rebalance': '{dry_run?, workers?, window_s?}: plan from recent load and apply',
  'GET /admin/cluster': 'expert hosts, the cluster placement and each host\'s load',
  'PUT /admin/cluster/placement': 'validate a cluster placement and publish it (hosts follow it)',
  'POST /admin/cluster/rebalance': '{dry_run?, window_s?}: plan over the hosts from recent load, publish',
  'GET /admin/requests': 'request rate, tokens/s, TTFT, time per output token and duration percentiles (?window=)',
  'POST /admin/plan': 'a JSONL load trace as the body: the capacity plan of `switchyard plan` and its SVG',
  'GET /dashboard': 'the operator dashboard (the page asks for the admin token)',
  'GET /dashboard/': 'the same',
  'GET /dashboard/assets/:name': "the dashboard's scripts and styles",
  'GET /dashboard/vendor/:name': 'uPlot, the charts library, from node_modules',
};

/** Request routes of an app (middleware, registered for every method, left out), as `METHOD path`. */
export function routeKeys(app: Hono): string[] {
  return [...new Set(app.routes.filter((r) => r.method !== METHOD_NAME_ALL).map((r) => `${r.method} ${r.path}`))];
}

/**
 * Every route `switchyard serve` can mount, in registration order, with what each needs. Built by creating the
 * app itself with every optional part switched on: the admin routes (admin.token) and the cluster admin routes
 * (an expert cluster, nats.url). Registration only stores handlers, so the stand-in services are never called.
 */
export function mountedRoutes(): MountedRoute[] {
  const never = {} as unknown;
  const service = never as GenerationService;
  // serve always passes its telemetry (GET /metrics).
  const telemetry = never as Telemetry;
  const admin = never as PlacementController;
  const cluster = never as ClusterAdmin;
  const plain = ConfigSchema.parse({});
  const withToken = ConfigSchema.parse({ admin: { token: 'help' } });
  const layers: Array<[needs: string | null, app: Hono]> = [
    [null, createApp(service, plain, { telemetry })],
    ['admin.token', createApp(service, withToken, { telemetry, admin })],
    ['admin.token and nats.url', createApp(service, withToken, { telemetry, admin, cluster })],
  ];
  const seen = new Map<string, MountedRoute>();
  for (const [needs, app] of layers) {
    for (const key of routeKeys(app)) {
      if (seen.has(key)) continue;
      const space = key.indexOf(' ');
      seen.set(key, { method: key.slice(0, space), path: key.slice(space + 1), needs, summary: ROUTE_SUMMARIES[key] });
    }
  }
  return [...seen.values()];
}

/** The route table as help text: method, path and summary, grouped by what the server needs to mount them. */
export function formatRoutes(routes: MountedRoute[] = mountedRoutes()): string {
  const mw = Math.max(...routes.map((r) => r.method.length));
  const pw = Math.max(...routes.map((r) => r.path.length));
  const groups = [...new Set(routes.map((r) => r.needs))];
  return groups.map((needs) => [
    needs === null ? 'Routes:' : `Routes with ${needs} set:`,
    ...routes.filter((r) => r.needs === needs).map((r) =>
      `  ${r.method.padEnd(mw)}  ${r.path.padEnd(pw)}  ${r.summary ?? '(no description yet: add one to ROUTE_SUMMARIES in src/server/route-list.ts)'}`),
  ].join('\n')).join('\n\n');
}
