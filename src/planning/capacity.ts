/**
 * Capacity planning over a load trace: pure math, no I/O.
 *
 * Cost model, fitted to the trace by least squares:
 * - a worker task's compute time = perExpertMs · (expert batches in the task) + perTokenMs · (token rows);
 * - a layer's dispatch = dispatchOverheadMs (gather and combine: the mean of dispatch_ms minus its slowest task's
 *   queue + compute) + taskOverheadMs (the mean queue_ms: messaging and waiting) + the slowest worker's compute —
 *   or, with more busy workers than cores, their total compute / cores if that is longer;
 * - the rest of a step (embedding, attention, router, LM head, sampling) = trunkFixedMs + trunkPerTokenMs · tokens.
 *
 * Replay: for each candidate worker count the planner (rebalance.ts, the EPLB-style planner the gateway uses)
 * places the experts for the trace's total load; then every step of the trace (or an even sample of them) is
 * dispatched as the pool would (splitCounts) and timed with the cost model. Throughput = tokens / Σ step time
 * at the trace's own batch sizes: more workers shorten each step, they do not add concurrency.
 */
import { roundRobinPlacement, splitCounts, MIN_SPLIT_ROWS, type Placement } from '../placement/placement.ts';
import { balanceOf, planPlacement, predictBalance, type Balance } from '../placement/rebalance.ts';
import { totalLoad, type LoadTrace, type TraceStep } from './trace.ts';

export interface CostModel {
  perTokenMs: number;
  perExpertMs: number;
  taskOverheadMs: number;
  dispatchOverheadMs: number;
  trunkFixedMs: number;
  trunkPerTokenMs: number;
  /** Worker tasks and steps the fit used. */
  tasks: number;
  steps: number;
}

// Means, not medians: throughput is a total over steps, and slow tails are part of it.
const mean = (xs: number[]) => (xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length);

/** Nearest-rank percentile (p in 0..100). */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

/** Least squares y ≈ a·x1 + b·x2 (no intercept), both coefficients kept >= 0. */
export function fitTwo(x1: readonly number[], x2: readonly number[], y: readonly number[]): [number, number] {
  let s11 = 0, s12 = 0, s22 = 0, s1y = 0, s2y = 0;
  for (let i = 0; i < y.length; i++) {
    s11 += x1[i] * x1[i];
    s12 += x1[i] * x2[i];
    s22 += x2[i] * x2[i];
    s1y += x1[i] * y[i];
    s2y += x2[i] * y[i];
  }
  const det = s11 * s22 - s12 * s12;
  if (Math.abs(det) > 1e-9 * Math.max(1, s11 * s22)) {
    const a = (s1y * s22 - s2y * s12) / det;
    const b = (s2y * s11 - s1y * s12) / det;
    if (a >= 0 && b >= 0) return [a, b];
  }
  // Degenerate or a negative coefficient: the better of the one-variable fits.
  const a1 = s11 > 0 ? Math.max(0, s1y / s11) : 0;
  const b2 = s22 > 0 ? Math.max(0, s2y / s22) : 0;
  let e1 = 0, e2 = 0;
  for (let i = 0; i < y.length; i++) {
    e1 += (y[i] - a1 * x1[i]) ** 2;
    e2 += (y[i] - b2 * x2[i]) ** 2;
  }
  return e1 <= e2 ? [a1, 0] : [0, b2];
}

export function fitCost(trace: LoadTrace): CostModel {
  const items: number[] = [], tokens: number[] = [], compute: number[] = [], queue: number[] = [], overhead: number[] = [];
  const ones: number[] = [], stepTokens: number[] = [], trunk: number[] = [];
  for (const s of trace.steps) {
    let dispatched = 0;
    for (const l of s.layers) {
      dispatched += l.dispatchMs;
      let slowest = 0;
      for (const w of l.workers) {
        items.push(w.experts.length);
        tokens.push(w.tokens);
        compute.push(w.compute_ms);
        queue.push(w.queue_ms ?? 0);
        slowest = Math.max(slowest, (w.queue_ms ?? 0) + w.compute_ms);
      }
      if (l.workers.length > 0) overhead.push(Math.max(0, l.dispatchMs - slowest));
    }
    if (s.stepMs > 0) {
      ones.push(1);
      stepTokens.push(s.tokens);
      trunk.push(Math.max(0, s.stepMs - dispatched));
    }
  }
  const [perExpertMs, perTokenMs] = fitTwo(items, tokens, compute);
  const [trunkFixedMs, trunkPerTokenMs] = fitTwo(ones, stepTokens, trunk);
  return {
    perTokenMs, perExpertMs, taskOverheadMs: mean(queue), dispatchOverheadMs: mean(overhead),
    trunkFixedMs, trunkPerTokenMs, tasks: compute.length, steps: ones.length,
  };
}

export interface ReplayOptions {
  cores: number;
  minSplitRows?: number;
  /** Simulate at most this many steps (an even sample); default 5000. */
  maxSteps?: number;
}

export interface Replay {
  /** Step tokens (prefill + decode) per second, and sequences advanced per second (≈ output tokens/s). */
  tokensPerS: number;
  outputTokensPerS: number;
  stepMsP50: number;
  stepMsP99: number;
  steps: number;
}

function sample<T>(xs: readonly T[], max: number): T[] {
  if (xs.length <= max) return [...xs];
  return Array.from({ length: max }, (_, i) => xs[Math.floor((i * xs.length) / max)]);
}

/** One layer's dispatch time given each worker's predicted compute (ms). */
function layerTime(work: readonly number[], cost: CostModel, cores: number): number {
  if (work.length === 0) return 0;
  const slowest = Math.max(...work);
  const total = work.reduce((a, b) => a + b, 0);
  return cost.dispatchOverheadMs + cost.taskOverheadMs + Math.max(slowest, total / Math.max(1, cores));
}

/** Predicted time of one traced step under `placement`. */
export function stepTime(step: TraceStep, placement: Placement, cost: CostModel, cores: number, minSplitRows = MIN_SPLIT_ROWS): number {
  let ms = cost.trunkFixedMs + cost.trunkPerTokenMs * step.tokens;
  for (const l of step.layers) {
    const batches = l.tokensPerExpert.flatMap((rows, expert) => (rows > 0 ? [{ expert, rows }] : []));
    if (batches.length === 0) continue;
    const work = new Array<number>(placement.workers).fill(0);
    for (const part of splitCounts(placement, l.layer, batches, minSplitRows)) work[part.worker] += cost.perExpertMs + cost.perTokenMs * part.rows;
    ms += layerTime(work.filter((x) => x > 0), cost, cores);
  }
  return ms;
}

/** Predicted time of a traced step as it was dispatched (its recorded worker tasks): checks the cost model. */
export function observedStepTime(step: TraceStep, cost: CostModel, cores: number): number {
  let ms = cost.trunkFixedMs + cost.trunkPerTokenMs * step.tokens;
  for (const l of step.layers) ms += layerTime(l.workers.map((w) => cost.perExpertMs * w.experts.length + cost.perTokenMs * w.tokens), cost, cores);
  return ms;
}

export function replay(
  trace: LoadTrace, placement: Placement, cost: CostModel, options: ReplayOptions,
  timeOf: (step: TraceStep) => number = (s) => stepTime(s, placement, cost, options.cores, options.minSplitRows),
): Replay {
  const steps = sample(trace.steps, options.maxSteps ?? 5000);
  const times = steps.map(timeOf);
  const total = times.reduce((a, b) => a + b, 0);
  const tokens = steps.reduce((n, s) => n + s.tokens, 0);
  const sequences = steps.reduce((n, s) => n + s.sequences, 0);
  return {
    tokensPerS: total > 0 ? (tokens / total) * 1000 : 0,
    outputTokensPerS: total > 0 ? (sequences / total) * 1000 : 0,
    stepMsP50: percentile(times, 50), stepMsP99: percentile(times, 99), steps: steps.length,
  };
}

export interface Scenario {
  workers: number;
  placement: Placement;
  replicas: number;
  /** Round-robin over `workers` (the gateway's default) vs the planned placement. */
  before: { balance: Balance; replay: Replay };
  after: { balance: Balance; replay: Replay };
}

export interface CapacityOptions extends ReplayOptions {
  workersMax: number;
  maxExpertsPerWorker: number | null;
  /** Wanted output tokens per second (at the trace's concurrency). */
  targetTokensPerS?: number;
  /** Wanted p99 step time (≈ time between two tokens of a stream), ms. */
  p99Ms?: number;
}

export interface CapacityPlan {
  cost: CostModel;
  load: number[][];
  /**
   * The cost model on the trace's own dispatches (its recorded worker tasks), against the measured step time: how
   * far to trust it. `balance` is the trace's measured balancedness (tokens each worker ran).
   */
  calibration: { workers: number; measuredStepMs: number; predictedStepMs: number; balance: { perLayer: number[]; overall: number } };
  scenarios: Scenario[];
  recommended: Scenario;
  reason: string;
}

export function planCapacity(trace: LoadTrace, options: CapacityOptions): CapacityPlan {
  const cost = fitCost(trace);
  const load = totalLoad(trace);
  const scenarios: Scenario[] = [];
  for (let w = 1; w <= options.workersMax; w++) {
    if (options.maxExpertsPerWorker !== null && options.maxExpertsPerWorker * w < trace.layers * trace.experts) continue;
    const plan = planPlacement({ load, workers: w, maxExpertsPerWorker: options.maxExpertsPerWorker });
    const rr = roundRobinPlacement(trace.layers, trace.experts, w);
    scenarios.push({
      workers: w, placement: plan.placement, replicas: plan.replicas.flat().reduce((a, b) => a + b, 0) - trace.layers * trace.experts,
      before: { balance: predictBalance(rr, load), replay: replay(trace, rr, cost, options) },
      after: { balance: plan.predicted, replay: replay(trace, plan.placement, cost, options) },
    });
  }
  if (scenarios.length === 0) {
    throw new Error(`no worker count up to ${options.workersMax} fits ${trace.layers * trace.experts} experts at ${options.maxExpertsPerWorker} per worker; raise --workers-max or --max-experts-per-worker`);
  }

  const measured = sample(trace.steps, options.maxSteps ?? 5000);
  const workerTokens = Array.from({ length: trace.layers }, () => new Array<number>(Math.max(1, trace.workers)).fill(0));
  for (const s of trace.steps) for (const l of s.layers) for (const w of l.workers) workerTokens[l.layer][w.worker] += w.tokens;
  const calibration = {
    workers: trace.workers,
    measuredStepMs: measured.reduce((n, s) => n + s.stepMs, 0) / Math.max(1, measured.length),
    predictedStepMs: measured.reduce((n, s) => n + observedStepTime(s, cost, options.cores), 0) / Math.max(1, measured.length),
    balance: balanceOf(workerTokens),
  };

  const meets = (s: Scenario) =>
    (options.targetTokensPerS === undefined || s.after.replay.outputTokensPerS >= options.targetTokensPerS) &&
    (options.p99Ms === undefined || s.after.replay.stepMsP99 <= options.p99Ms);
  const best = scenarios.reduce((a, b) => (b.after.replay.outputTokensPerS > a.after.replay.outputTokensPerS ? b : a));
  let recommended: Scenario;
  let reason: string;
  const ok = scenarios.find(meets);
  if (options.targetTokensPerS !== undefined || options.p99Ms !== undefined) {
    if (ok) {
      recommended = ok;
      reason = 'the fewest workers that meet the targets';
    } else {
      recommended = best;
      reason = `no worker count up to ${options.workersMax} meets the targets at the trace's concurrency; this is the fastest`;
    }
  } else {
    recommended = scenarios.find((s) => s.after.replay.outputTokensPerS >= 0.95 * best.after.replay.outputTokensPerS)!;
    reason = 'the fewest workers within 5 % of the best predicted throughput';
  }
  return { cost, load, calibration, scenarios, recommended, reason };
}

/** Expert hosts of one kind (scale-out over NATS) for planHostCapacity. */
export interface HostShape {
  /** Largest host count to simulate. */
  hostsMax: number;
  workersPerHost: number;
  coresPerHost: number;
  /** What a layer pays for going over the network to its hosts (ms; bench/scale-out.ts measures it). */
  rttMs: number;
}

export interface HostScenario {
  hosts: number;
  /** Placement over hosts (worker index = host index), from the same planner as the gateway's rebalancing. */
  placement: Placement;
  balance: Balance;
  replay: Replay;
}

/**
 * Predicted time of one traced step with its experts on hosts: each layer pays the gateway's dispatch overhead and
 * one network round trip, then waits for its slowest host, whose expert batches share its workers and cores. A
 * replicated expert's batch runs whole on one replica (the runtime's queue group gives it to one host).
 */
export function hostStepTime(step: TraceStep, placement: Placement, cost: CostModel, shape: HostShape): number {
  let ms = cost.trunkFixedMs + cost.trunkPerTokenMs * step.tokens;
  const parallel = Math.max(1, Math.min(shape.workersPerHost, shape.coresPerHost));
  for (const l of step.layers) {
    const batches = l.tokensPerExpert.flatMap((rows, expert) => (rows > 0 ? [{ expert, rows }] : []));
    if (batches.length === 0) continue;
    // A batch goes whole to one replica (the NATS queue group picks one; the model takes the least loaded so far).
    const total = new Array<number>(placement.workers).fill(0);
    const largest = new Array<number>(placement.workers).fill(0);
    for (const b of [...batches].sort((x, y) => y.rows - x.rows)) {
      const hosts = placement.hosts[l.layer][b.expert];
      const h = hosts.reduce((a, c) => (total[c] < total[a] ? c : a), hosts[0]);
      const work = cost.perExpertMs + cost.perTokenMs * b.rows;
      total[h] += work;
      largest[h] = Math.max(largest[h], work);
    }
    const slowestHost = Math.max(...total.map((t, h) => Math.max(largest[h], t / parallel)));
    ms += cost.dispatchOverheadMs + cost.taskOverheadMs + shape.rttMs + slowestHost;
  }
  return ms;
}

/**
 * The capacity plan for experts on 1..hostsMax hosts of one shape: per host count, the planned placement over hosts,
 * its balance and the trace replayed with hostStepTime; recommended as planCapacity does (the fewest hosts meeting
 * the targets, else within 5 % of the best predicted throughput).
 */
export function planHostCapacity(trace: LoadTrace, shape: HostShape, options: Omit<CapacityOptions, 'workersMax' | 'cores'>):
  { cost: CostModel; scenarios: HostScenario[]; recommended: HostScenario; reason: string } {
  const cost = fitCost(trace);
  const load = totalLoad(trace);
  const scenarios: HostScenario[] = [];
  for (let h = 1; h <= shape.hostsMax; h++) {
    const plan = planPlacement({ load, workers: h, maxExpertsPerWorker: options.maxExpertsPerWorker });
    const timeOf = (step: TraceStep) => hostStepTime(step, plan.placement, cost, shape);
    scenarios.push({ hosts: h, placement: plan.placement, balance: plan.predicted, replay: replay(trace, plan.placement, cost, { ...options, cores: shape.coresPerHost }, timeOf) });
  }
  const best = scenarios.reduce((a, b) => (b.replay.outputTokensPerS > a.replay.outputTokensPerS ? b : a));
  const meets = (s: HostScenario) =>
    (options.targetTokensPerS === undefined || s.replay.outputTokensPerS >= options.targetTokensPerS) &&
    (options.p99Ms === undefined || s.replay.stepMsP99 <= options.p99Ms);
  if (options.targetTokensPerS !== undefined || options.p99Ms !== undefined) {
    const ok = scenarios.find(meets);
    return ok ? { cost, scenarios, recommended: ok, reason: 'the fewest hosts that meet the targets' }
      : { cost, scenarios, recommended: best, reason: `no host count up to ${shape.hostsMax} meets the targets at the trace's concurrency; this is the fastest` };
  }
  const recommended = scenarios.find((s) => s.replay.outputTokensPerS >= 0.95 * best.replay.outputTokensPerS)!;
  return { cost, scenarios, recommended, reason: 'the fewest hosts within 5 % of the best predicted throughput' };
}

