/**
 * Admin data the operator dashboard needs beyond /admin/load and /admin/placement (bearer-protected like them; the
 * caller registers these after the admin auth middleware):
 *
 *   GET  /admin/requests   request rate, output tokens/s, TTFT / TPOT / duration percentiles over the last 10 s
 *                          and 60 s (or ?window=S, 1..600)
 *   POST /admin/plan       body: a JSONL load trace (docs/load-trace.md), at most admin.maxTraceBytes; query:
 *                          workers_max, cores, max_experts_per_worker, min_split_rows, target_tokens_per_s, p99_ms.
 *                          Runs `switchyard plan`'s planner (on a worker thread) and returns its result and SVG.
 */
import { availableParallelism } from 'node:os';
import type { Hono } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { z } from 'zod';
import type { RequestWindowSummary } from '../../telemetry/index.ts';
import type { Logger } from '../../log.ts';
import { errorResponse, HttpError } from '../errors.ts';
import type { TracePlanOptions } from '../../placement/trace-plan-options.ts';

export const PLAN_PATH = '/admin/plan';

/**
 * The capacity planner (src/planning/plan-service.ts), handed in by the CLI: offline tools stay out of the server's
 * imports (test/layering.test.ts).
 */
export interface TracePlanner {
  /** Plans from a JSONL trace's text; resolves to a JSON-ready report with an `svg` string. `signal`: stop when aborted. */
  plan(text: string, options: TracePlanOptions, signal?: AbortSignal): Promise<unknown>;
  /** True when a rejection is the client's mistake (unusable trace, impossible options): answered 422. */
  isClientError(error: unknown): boolean;
}

export interface InsightRouteOptions {
  logger: Logger;
  /** Telemetry's recent-request window; without it GET /admin/requests is 404. */
  recentRequests?: (windowSeconds: number) => RequestWindowSummary;
  /** Without one POST /admin/plan answers 501. */
  planner?: TracePlanner | null;
  maxTraceBytes: number;
  /** Defaults of a plan: the gateway's own placement settings. */
  maxExpertsPerWorker: number | null;
  minSplitRows: number;
}

const planQuery = z.strictObject({
  workers_max: z.coerce.number().int().min(1).max(256).optional(),
  cores: z.coerce.number().int().min(1).max(4096).optional(),
  max_experts_per_worker: z.coerce.number().int().min(1).optional(),
  min_split_rows: z.coerce.number().int().min(1).optional(),
  target_tokens_per_s: z.coerce.number().positive().optional(),
  p99_ms: z.coerce.number().positive().optional(),
});

// ?window=S: decimal digits only (no '', '0x10' or '1e2' coerced into numbers).
const windowQuery = z.strictObject({ window: z.string().regex(/^\d+$/, 'must be whole seconds in decimal digits').transform(Number).pipe(z.number().int().min(1).max(600)).optional() });

function problems(error: z.ZodError): string {
  return error.issues.map((i) => `${i.path.join('.') || '(query)'}: ${i.message}`).join('; ');
}

export function registerInsightRoutes(app: Hono, options: InsightRouteOptions): void {
  const recent = options.recentRequests;
  if (recent) {
    app.get('/admin/requests', (c) => {
      const parsed = windowQuery.safeParse(c.req.query());
      if (!parsed.success) throw new HttpError(422, 'validation', `${problems(parsed.error)}; use ?window=SECONDS (1..600) or no query`);
      const windows = parsed.data.window !== undefined ? [parsed.data.window] : [10, 60];
      return c.json({ windows: Object.fromEntries(windows.map((s) => [`${s}s`, recent(s)])) });
    });
  }

  let running = false;
  const maxBytes = options.maxTraceBytes;
  app.post(
    PLAN_PATH,
    bodyLimit({
      maxSize: maxBytes,
      onError: (c) => errorResponse(c, 413, 'validation',
        `the trace is larger than ${maxBytes} bytes (admin.maxTraceBytes); send a shorter trace (its last steps) or raise the limit`),
    }),
    async (c) => {
      const planner = options.planner;
      if (!planner) throw new HttpError(501, 'internal', 'this server was started without the capacity planner; start it with `switchyard serve` (npm start)');
      const query = planQuery.safeParse(c.req.query());
      if (!query.success) {
        throw new HttpError(422, 'validation', `${problems(query.error)}; query parameters are workers_max, cores, max_experts_per_worker, min_split_rows, target_tokens_per_s, p99_ms (all numbers > 0)`);
      }
      const type = c.req.header('content-type') ?? '';
      if (/^multipart\//i.test(type)) {
        throw new HttpError(415, 'validation', 'send the trace file as the raw request body (Content-Type: application/x-ndjson), not as a form upload');
      }
      // One plan at a time, decided before the body is read: concurrent uploads are not all buffered first.
      if (running) throw new HttpError(429, 'overloaded', 'another capacity plan is running; retry when it is done', { 'Retry-After': '2' });
      running = true;
      const q = query.data;
      try {
        const text = await c.req.text();
        if (text.trim() === '') throw new HttpError(422, 'validation', 'the trace is empty; send a JSONL load trace (telemetry.loadTraceFile, docs/load-trace.md) as the body');
        const firstLine = text.slice(0, text.indexOf('\n') === -1 ? text.length : text.indexOf('\n')).trim();
        if (!firstLine.startsWith('{')) {
          throw new HttpError(422, 'validation', 'the body is not a JSONL load trace (its first line is not a JSON object); send the file telemetry.loadTraceFile writes (docs/load-trace.md)');
        }
        const started = performance.now();
        const report = await planner.plan(text, {
          workersMax: q.workers_max ?? 8,
          cores: q.cores ?? availableParallelism(),
          maxExpertsPerWorker: q.max_experts_per_worker ?? options.maxExpertsPerWorker,
          minSplitRows: q.min_split_rows ?? options.minSplitRows,
          ...(q.target_tokens_per_s !== undefined ? { targetTokensPerS: q.target_tokens_per_s } : {}),
          ...(q.p99_ms !== undefined ? { p99Ms: q.p99_ms } : {}),
        }, c.req.raw.signal);
        options.logger.info('capacity plan', { bytes: Buffer.byteLength(text), ms: Math.round(performance.now() - started) });
        return c.json(report as object);
      } catch (error) {
        if (planner.isClientError(error)) throw new HttpError(422, 'validation', (error as Error).message);
        throw error;
      } finally {
        running = false;
      }
    },
  );
}
