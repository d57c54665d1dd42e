/** The HTTP app: middleware, routes and error handling over a GenerationService. */
import { Hono } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import type { HttpBindings } from '@hono/node-server';
import type { Config } from '../config.ts';
import { ShuttingDownError, type GenerationService } from '../engine/types.ts';
import { log, type Logger } from '../log.ts';
import { createErrorHandler, errorResponse, notFoundHandler } from './errors.ts';
import { registerGenerateRoute } from './routes/generate.ts';
import { registerHealthRoute } from './routes/health.ts';
import { registerInfoRoute } from './routes/info.ts';
import { registerGenerateStreamRoute } from './routes/generate-stream.ts';
import { registerCompatRoute } from './routes/compat.ts';
import { registerOpenAiRoutes } from './openai/routes.ts';
import { registerMetricsRoute } from './routes/metrics.ts';
import type { Telemetry } from '../telemetry/index.ts';
import { registerAdminRoutes } from './routes/admin.ts';
import type { ClusterAdmin } from '../engine/cluster-admin.ts';
import type { PlacementController } from '../engine/placement-controller.ts';
import { rejectContentEncoding } from './content-encoding.ts';
import { corsFor } from './cors.ts';
import { methodNotAllowedOr } from './method-not-allowed.ts';
import { PLAN_PATH, registerInsightRoutes, type TracePlanner } from './routes/admin-insights.ts';
import { registerDashboardRoutes } from './routes/dashboard.ts';

export interface AppOptions {
  /** Default: the process-wide logger. */
  logger?: Logger;
  /** Serves GET /metrics when given. */
  telemetry?: Telemetry;
  /** The engine's placement controller: serves /admin/* when given and config.admin.token is set. */
  admin?: PlacementController | null;
  /** The engine's expert cluster (scale-out): adds /admin/cluster/* to the admin routes. */
  cluster?: ClusterAdmin | null;
  /** True once a graceful shutdown began: new requests get 503 `overloaded`, every response Connection: close. */
  shuttingDown?: () => boolean;
  /** The capacity planner behind POST /admin/plan (the CLI hands in src/planning's; without it: 501). */
  planner?: TracePlanner | null;
}

export function createApp(service: GenerationService, config: Config, options: AppOptions = {}): Hono {
  const logger = options.logger ?? log;
  const maxBytes = config.limits.maxBodyBytes;
  const app = new Hono();

  app.onError(createErrorHandler(logger));
  app.notFound(methodNotAllowedOr(app, notFoundHandler));

  const shuttingDown = options.shuttingDown ?? (() => false);
  // Outermost, so it sees every answer, whichever middleware or handler gives it. A response sent before the
  // request body arrived in full (404, 405, 401, 413, a 422 from the headers alone, a CORS preflight) must close
  // the connection: @hono/node-server drains an unread body for only ~0.5 s and then destroys the socket, so a
  // keep-alive client that was told nothing would send its next request into a closing socket.
  app.use('*', async (c, next) => {
    await next();
    const incoming = (c.env as Partial<HttpBindings> | undefined)?.incoming;
    if (shuttingDown() || (incoming && !incoming.complete)) c.res.headers.set('Connection', 'close');
  });

  app.use('*', async (c, next) => {
    const started = performance.now();
    await next();
    logger.debug('request', {
      method: c.req.method,
      path: c.req.path,
      status: c.res.status,
      duration_ms: Math.round((performance.now() - started) * 100) / 100,
    });
  });

  // First, so that every answer a browser gets — errors and 503s included — carries the CORS headers it needs.
  if (config.cors.origins.length > 0) app.use('*', corsFor(config.cors.origins));

  app.use('*', async (c, next) => {
    // The listener is closed by then: these come on connections opened before (keep-alive, pipelined).
    if (shuttingDown()) throw new ShuttingDownError('the server is shutting down and takes no new requests');
    await next();
  });

  app.use('*', rejectContentEncoding);

  const adminOn = Boolean(options.admin) && config.admin.token !== null;
  // Checks Content-Length up front, and counts the bytes of bodies sent without one (chunked). A load trace for the
  // capacity planner has its own, larger limit (admin.maxTraceBytes), applied after the admin token is checked.
  const limitBody = bodyLimit({
    maxSize: maxBytes,
    onError: (c) =>
      errorResponse(c, 413, 'validation', `request body is larger than ${maxBytes} bytes (limits.maxBodyBytes); send a shorter prompt`),
  });
  app.use('*', (c, next) => (adminOn && c.req.method === 'POST' && c.req.path === PLAN_PATH ? next() : limitBody(c, next)));

  registerGenerateRoute(app, service, config);
  registerGenerateStreamRoute(app, service, config);
  registerCompatRoute(app, service, config);
  registerOpenAiRoutes(app, service, config);
  registerHealthRoute(app, service);
  registerInfoRoute(app, service);
  if (options.telemetry) registerMetricsRoute(app, options.telemetry);
  if (options.admin && config.admin.token !== null) {
    registerAdminRoutes(app, options.admin, { token: config.admin.token, logger, cluster: options.cluster });
    const telemetry = options.telemetry;
    registerInsightRoutes(app, {
      logger, planner: options.planner, maxTraceBytes: config.admin.maxTraceBytes,
      recentRequests: telemetry ? (seconds) => telemetry.recentRequests(seconds) : undefined,
      maxExpertsPerWorker: config.placement.maxExpertsPerWorker, minSplitRows: config.placement.minSplitRows,
    });
    registerDashboardRoutes(app);
  }
  return app;
}
