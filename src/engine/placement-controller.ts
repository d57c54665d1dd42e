/**
 * The operator's handle on expert placement while the gateway serves: read the placement and the recent load,
 * validate and apply a new placement live, plan a rebalance from recent load (and apply it), and optionally
 * rebalance on a timer. The admin HTTP routes are a thin layer over this.
 */
import type { ExpertPool, PlacementChange } from '../../experts/pool.ts';
import { log, type Logger } from '../log.ts';
import { placementToFile, samePlacement, validatePlacement, type Placement, type PlacementFile, type PlacementLimits } from '../placement/placement.ts';
import { LoadTracker, type LoadWindow } from '../placement/load-window.ts';
import { planPlacement, predictBalance, type Balance, type Plan } from '../placement/rebalance.ts';

export interface ControllerSettings {
  layers: number;
  experts: number;
  /** Most workers a placement may use. */
  maxWorkers: number;
  /** Memory budget: most experts per worker over all layers; null: no limit. */
  maxExpertsPerWorker: number | null;
  /** Recent load the rebalancer plans from, in seconds (falls back to all load since start when empty). */
  rebalanceWindowSeconds: number;
  /** Automatic rebalancing: off when null. */
  auto: { intervalSeconds: number; threshold: number; minTokens: number } | null;
  /** Smallest predicted gain in overall balancedness for which an automatic rebalance applies its plan. */
  minGain?: number;
}

/** A placement the gateway refuses; `problems` says each thing that is wrong. */
export class InvalidPlacementError extends Error {
  override readonly name = 'InvalidPlacementError';
  constructor(readonly problems: string[]) {
    super(`invalid placement: ${problems.join('; ')}`);
  }
}

/** Rebalancing is impossible now (no load recorded yet, or the plan cannot satisfy the limits). */
export class RebalanceError extends Error {
  override readonly name = 'RebalanceError';
}

export interface RebalanceOptions {
  dryRun?: boolean;
  /** Plan for this many workers (default: the current count); at most maxWorkers. */
  workers?: number;
  /** Recent load to plan from, in seconds (default: rebalanceWindowSeconds). */
  windowSeconds?: number;
}

export interface RebalanceResult {
  /** Seconds of load the plan is based on, and the tokens in it. */
  windowSeconds: number;
  tokens: number;
  plan: Plan;
  before: Balance;
  after: Balance;
  /** false for a dry run, or when the plan equals the placement in use, or would not improve it. */
  applied: boolean;
  reason: string;
  change: PlacementChange | null;
}

export interface LoadReport {
  workers: number;
  windows: Record<'10s' | '60s' | 'since_start', LoadWindow>;
}


export class PlacementController {
  readonly tracker: LoadTracker;
  private timer: NodeJS.Timeout | null = null;
  private autoRunning = false;
  /** Called after every placement change took effect (the engine clears what depended on the old one). */
  onChange: (() => void) | null = null;

  constructor(
    private readonly pool: Pick<ExpertPool, 'placement' | 'applyPlacement'> & { readonly fixedPlacement?: string },
    readonly settings: ControllerSettings,
    private readonly logger: Pick<Logger, 'info' | 'warn'> = log,
    now?: () => number,
  ) {
    this.tracker = new LoadTracker({
      layers: settings.layers, experts: settings.experts, maxWorkers: settings.maxWorkers,
      horizonSeconds: Math.max(60, settings.rebalanceWindowSeconds), now,
      workers: () => this.pool.placement.workers,
    });
  }

  get placement(): Placement {
    return this.pool.placement;
  }

  get limits(): PlacementLimits {
    const { layers, experts, maxWorkers, maxExpertsPerWorker } = this.settings;
    return { layers, experts, maxWorkers, maxExpertsPerWorker };
  }

  placementFile(): PlacementFile {
    return placementToFile(this.pool.placement);
  }

  /** Throws InvalidPlacementError listing every problem. */
  validate(raw: unknown): Placement {
    const result = validatePlacement(raw, this.limits);
    if (result.placement === null) throw new InvalidPlacementError(result.errors);
    return result.placement;
  }

  /** Validates and applies a placement file live. */
  async apply(raw: unknown): Promise<PlacementChange> {
    const placement = this.validate(raw);
    const fixed = this.pool.fixedPlacement;
    if (fixed && !samePlacement(placement, this.pool.placement)) throw new InvalidPlacementError([fixed]);
    const change = await this.pool.applyPlacement(placement);
    this.onChange?.();
    return change;
  }

  load(): LoadReport {
    return {
      workers: this.pool.placement.workers,
      windows: { '10s': this.tracker.window(10), '60s': this.tracker.window(60), since_start: this.tracker.window(null) },
    };
  }

  /** Plans from recent load and applies the plan unless dryRun (or it would change nothing or not help). */
  async rebalance(options: RebalanceOptions = {}): Promise<RebalanceResult> {
    if (this.pool.fixedPlacement) throw new RebalanceError(this.pool.fixedPlacement);
    const workers = options.workers ?? this.pool.placement.workers;
    if (!Number.isInteger(workers) || workers < 1 || workers > this.settings.maxWorkers) {
      throw new RebalanceError(`workers must be an integer from 1 to ${this.settings.maxWorkers} (admin.maxWorkers); got ${workers}`);
    }
    let windowSeconds = options.windowSeconds ?? this.settings.rebalanceWindowSeconds;
    let window = this.tracker.window(windowSeconds);
    if (window.tokens === 0) {
      window = this.tracker.window(null);
      windowSeconds = window.seconds;
    }
    if (window.tokens === 0) throw new RebalanceError('no expert load recorded yet; serve some requests first (or PUT /admin/placement with a placement of your own)');
    const load = window.tokensPerExpert;
    const current = this.pool.placement;
    let plan: Plan;
    try {
      plan = planPlacement({ load, workers, maxExpertsPerWorker: this.settings.maxExpertsPerWorker, current });
    } catch (error) {
      throw new RebalanceError((error as Error).message);
    }
    const before = predictBalance(current, load);
    const after = plan.predicted;
    const result: RebalanceResult = {
      windowSeconds, tokens: window.tokens, plan, before, after, applied: false, reason: '', change: null,
    };
    if (samePlacement(plan.placement, current)) result.reason = 'the plan is the placement in use';
    else if (workers === current.workers && after.overall <= before.overall + 1e-9) result.reason = 'the plan would not improve the predicted balancedness';
    else if (options.dryRun) result.reason = 'dry run';
    else {
      result.change = await this.pool.applyPlacement(plan.placement);
      this.onChange?.();
      result.applied = true;
      result.reason = 'applied';
    }
    return result;
  }

  /** Starts automatic rebalancing when configured; the timer does not keep the process alive. */
  start(): void {
    const auto = this.settings.auto;
    if (!auto || this.timer || this.pool.fixedPlacement) return;
    this.timer = setInterval(() => void this.autoRebalance(), auto.intervalSeconds * 1000);
    this.timer.unref();
  }

  /** One automatic check: rebalance when the recent window is below the threshold and the plan helps enough. */
  async autoRebalance(): Promise<RebalanceResult | null> {
    const auto = this.settings.auto;
    if (!auto || this.autoRunning) return null;
    this.autoRunning = true;
    try {
      const window = this.tracker.window(this.settings.rebalanceWindowSeconds);
      if (window.tokens < auto.minTokens) return null;
      const before = predictBalance(this.pool.placement, window.tokensPerExpert);
      if (before.overall >= auto.threshold) return null;
      const dry = await this.rebalance({ dryRun: true });
      if (dry.after.overall - dry.before.overall < (this.settings.minGain ?? 0.05)) return dry;
      const done = await this.rebalance();
      if (done.applied) {
        this.logger.info('automatic rebalance', {
          window_s: done.windowSeconds, tokens: done.tokens, before: done.before.overall, after: done.after.overall,
          loaded: done.change?.loaded.length, unloaded: done.change?.unloaded.length,
        });
      }
      return done;
    } catch (error) {
      this.logger.warn('automatic rebalance failed', { err: error });
      return null;
    } finally {
      this.autoRunning = false;
    }
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
