/**
 * `switchyard plan` as a function over a trace's text, for the dashboard's capacity planner (POST /admin/plan):
 * the same parsing (trace.ts), planner (capacity.ts), report text (formatPlan) and SVG (svg.ts) as the CLI, with a
 * JSON-ready result. A large trace takes seconds of CPU (≈ 4 s for 30 MB, 20k steps, 8 worker counts), so the
 * gateway runs it on a worker thread (planInWorker) and its event loop keeps serving.
 *
 * The server never imports this module (offline tools stay out of the runtime, test/layering.test.ts): the CLI's
 * `serve` hands planInWorker to the server as a `TracePlanner`.
 */
import { Worker } from 'node:worker_threads';
import { placementToFile, type PlacementFile } from '../placement/placement.ts';
import { planCapacity, type CapacityOptions } from './capacity.ts';
import { formatPlan } from './plan-command.ts';
import { planSvg } from './svg.ts';
import { parseLoadTrace, TraceError } from './trace.ts';
import type { TracePlanOptions } from '../placement/trace-plan-options.ts';

const r = (x: number, digits = 3) => Math.round(x * 10 ** digits) / 10 ** digits;

/** The planner's answer (snake_case, rounded): what `switchyard plan` prints, as data, plus its SVG. */
export interface TracePlanReport {
  trace: { steps: number; lines: number; skipped: number; problems: string[]; layers: number; experts: number; tokens: number; workers_seen: number };
  cost: { per_token_us: number; per_expert_us: number; task_overhead_ms: number; dispatch_overhead_ms: number; trunk_fixed_ms: number; trunk_per_token_us: number };
  calibration: { workers: number; measured_step_ms: number; predicted_step_ms: number; measured_balancedness: number };
  scenarios: Array<{
    workers: number; replicas: number;
    balancedness: { round_robin: number; planned: number };
    output_tokens_per_s: { round_robin: number; planned: number };
    tokens_per_s: number; step_ms_p50: number; step_ms_p99: number;
  }>;
  recommended: {
    workers: number; reason: string; balancedness: number; balancedness_per_layer: number[];
    output_tokens_per_s: number; tokens_per_s: number; step_ms_p99: number; placement: PlacementFile;
  };
  /** The CLI's printed report. */
  text: string;
  /** The CLI's `--svg` drawing: expert load over time, per-worker load before/after. */
  svg: string;
}

/** A trace the planner cannot use, or options no worker count satisfies: the client's to fix (a 422). */
export class TracePlanError extends Error {
  override readonly name = 'TracePlanError';
}

/** Plans from a JSONL trace's text. Throws TracePlanError for an unusable trace or impossible options. */
export function planTraceText(text: string, options: TracePlanOptions): TracePlanReport {
  let trace;
  try {
    trace = parseLoadTrace(text);
  } catch (error) {
    if (error instanceof TraceError) throw new TracePlanError(error.message);
    throw error;
  }
  if (trace.steps.length === 0) throw new TracePlanError('no complete step in the trace (every step needs a line per layer); send a longer trace');
  const capacity: CapacityOptions = { ...options };
  let plan;
  try {
    plan = planCapacity(trace, capacity);
  } catch (error) {
    // The planner's own refusals name the CLI flag that was impossible: the client's mistake. Anything else is ours.
    const message = (error as Error).message;
    if (!/--workers-max|--max-experts-per-worker/.test(message)) throw error;
    throw new TracePlanError(message.replace('--workers-max', 'workers_max').replace('--max-experts-per-worker', 'max_experts_per_worker'));
  }
  const c = plan.cost;
  const rec = plan.recommended;
  return {
    trace: {
      steps: trace.steps.length, lines: trace.lines, skipped: trace.skipped, problems: trace.problems, layers: trace.layers,
      experts: trace.experts, tokens: trace.steps.reduce((n, s) => n + s.tokens, 0), workers_seen: trace.workers,
    },
    cost: {
      per_token_us: r(c.perTokenMs * 1000), per_expert_us: r(c.perExpertMs * 1000), task_overhead_ms: r(c.taskOverheadMs),
      dispatch_overhead_ms: r(c.dispatchOverheadMs), trunk_fixed_ms: r(c.trunkFixedMs), trunk_per_token_us: r(c.trunkPerTokenMs * 1000),
    },
    calibration: {
      workers: plan.calibration.workers, measured_step_ms: r(plan.calibration.measuredStepMs),
      predicted_step_ms: r(plan.calibration.predictedStepMs), measured_balancedness: r(plan.calibration.balance.overall),
    },
    scenarios: plan.scenarios.map((s) => ({
      workers: s.workers, replicas: s.replicas,
      balancedness: { round_robin: r(s.before.balance.overall), planned: r(s.after.balance.overall) },
      output_tokens_per_s: { round_robin: r(s.before.replay.outputTokensPerS, 1), planned: r(s.after.replay.outputTokensPerS, 1) },
      tokens_per_s: r(s.after.replay.tokensPerS, 1), step_ms_p50: r(s.after.replay.stepMsP50), step_ms_p99: r(s.after.replay.stepMsP99),
    })),
    recommended: {
      workers: rec.workers, reason: plan.reason, balancedness: r(rec.after.balance.overall),
      balancedness_per_layer: rec.after.balance.perLayer.map((b) => r(b)),
      output_tokens_per_s: r(rec.after.replay.outputTokensPerS, 1), tokens_per_s: r(rec.after.replay.tokensPerS, 1),
      step_ms_p99: r(rec.after.replay.stepMsP99), placement: placementToFile(rec.placement),
    },
    text: formatPlan(trace, plan, { trace: '(uploaded)', ...options }),
    svg: planSvg(trace, plan),
  };
}

/** What a planner worker thread posts back. */
type WorkerAnswer = { ok: true; report: TracePlanReport } | { ok: false; planError: boolean; message: string };

/** Limits of one plan on its worker thread: a trace that needs more is refused, never the gateway's memory or time. */
export const PLAN_LIMITS = { heapMb: 1024, timeoutMs: 60_000 } as const;

/**
 * planTraceText on a fresh worker thread (plan-worker.mjs), so the caller's event loop is not blocked. Rejects
 * with TracePlanError for the client's mistakes (including a trace that needs more than PLAN_LIMITS' heap or time)
 * and a plain Error when the thread itself fails. `signal` (the request's) ends the thread when the caller leaves.
 */
export function planInWorker(text: string, options: TracePlanOptions, signal?: AbortSignal, limits: { heapMb: number; timeoutMs: number } = PLAN_LIMITS): Promise<TracePlanReport> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('./plan-worker.mjs', import.meta.url), {
      workerData: { text, options }, resourceLimits: { maxOldGenerationSizeMb: limits.heapMb },
    });
    let settled = false;
    const settle = (fail: Error | null, report?: TracePlanReport) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (fail) {
        void worker.terminate();
        reject(fail);
      } else resolve(report!);
    };
    const timer = setTimeout(() => settle(new TracePlanError(`planning took longer than ${limits.timeoutMs / 1000} s; send a shorter trace (its last steps) or a smaller workers_max`)), limits.timeoutMs);
    const onAbort = () => settle(new Error('the caller went away; planning stopped'));
    if (signal?.aborted) onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    worker.once('message', (answer: WorkerAnswer) => {
      if (answer.ok) settle(null, answer.report);
      else settle(answer.planError ? new TracePlanError(answer.message) : new Error(`capacity planner failed: ${answer.message}`));
    });
    worker.once('error', (error: Error & { code?: string }) => {
      settle(error.code === 'ERR_WORKER_OUT_OF_MEMORY'
        ? new TracePlanError(`planning this trace needs more than ${limits.heapMb} MB; send a shorter trace (its last steps)`)
        : new Error(`capacity planner thread failed: ${error.message}`, { cause: error }));
    });
    worker.once('exit', (code) => settle(new Error(`capacity planner thread exited (code ${code}) without an answer`)));
  });
}

/** The worker thread's body (called by plan-worker.mjs). */
export function answerPlan(data: { text: string; options: TracePlanOptions }): WorkerAnswer {
  try {
    return { ok: true, report: planTraceText(data.text, data.options) };
  } catch (error) {
    return { ok: false, planError: error instanceof TracePlanError, message: (error as Error).message };
  }
}

/** The planner the CLI's `serve` hands to the server (its TracePlanner interface, src/server/routes/admin-insights.ts). */
export const tracePlanner = {
  plan: planInWorker,
  isClientError: (error: unknown): boolean => error instanceof TracePlanError,
};
