/**
 * Expert-load metrics per step: tokens routed per (layer, expert), overflow per layer, worker busy time, tokens
 * and queue wait per worker, dispatch duration per layer, steps and tokens per step; and worker thread restarts
 * (from the expert pool, not from steps). Labels are only
 * `moe.layer`, `moe.expert` and `moe.worker`, so series stay bounded by layers × experts.
 */
import type { Attributes, Meter } from '@opentelemetry/api';
import { BUCKETS, METRIC, MOE } from './names.ts';
import type { StepSummary } from './step-summary.ts';

export class MoeMetrics {
  private readonly expertTokens;
  private readonly expertOverflow;
  private readonly workerBusy;
  private readonly workerTokens;
  private readonly workerQueue;
  private readonly dispatchDuration;
  private readonly steps;
  private readonly stepTokens;
  private readonly stepDuration;
  // Attribute objects are reused: the hot path allocates none per step.
  private readonly layerExpertAttrs: Attributes[][] = [];
  private readonly layerAttrs: Attributes[] = [];
  private readonly workerAttrs: Attributes[] = [];
  private readonly busyMs: number[] = [];
  private readonly tokensOfWorker: number[] = [];
  /** Each worker's cumulative residency counters last seen, and of which thread, to add only what is new. */
  private readonly residencySeen: Array<{ loads: number; evictions: number; thread?: number }> = [];
  private readonly expertLoads;
  private readonly expertEvictions;
  private readonly workerRestarts;
  private readonly hostFailovers;

  constructor(meter: Meter) {
    this.expertTokens = meter.createCounter(METRIC.expertTokens, {
      description: 'Tokens the router sent to each expert, per layer (overflowed tokens included).',
      unit: '{token}',
    });
    this.expertOverflow = meter.createCounter(METRIC.expertOverflow, {
      description: 'Tokens that exceeded their expert\'s capacity and skipped the expert FFN, per layer.',
      unit: '{token}',
    });
    this.workerBusy = meter.createCounter(METRIC.workerBusyTime, {
      description: 'Expert compute time spent by each worker.',
      unit: 's',
    });
    this.workerTokens = meter.createCounter(METRIC.workerTokens, {
      description: 'Tokens processed by each worker (summed over its experts and layers).',
      unit: '{token}',
    });
    this.expertLoads = meter.createCounter(METRIC.workerExpertLoads, {
      description: 'Experts a worker loaded on demand because they were routed to it while not resident.',
      unit: '{expert}',
    });
    this.expertEvictions = meter.createCounter(METRIC.workerExpertEvictions, {
      description: 'Experts a worker released (least recently used) to stay within experts.maxResidentPerWorker.',
      unit: '{expert}',
    });
    this.workerRestarts = meter.createCounter(METRIC.workerRestarts, {
      description: 'Expert worker threads that died and were replaced by a new thread loading the worker\'s current experts.',
      unit: '{restart}',
    });
    this.hostFailovers = meter.createCounter(METRIC.hostFailovers, {
      description: 'Expert batches sent again to another replica, or run on the gateway\'s own workers, because an expert host did not answer (scale-out over NATS).',
      unit: '{batch}',
    });
    this.workerQueue = meter.createHistogram(METRIC.workerQueueDuration, {
      description: 'Time a worker task waited between submission and start, per layer task.',
      unit: 's',
      advice: { explicitBucketBoundaries: [...BUCKETS.shortSeconds] },
    });
    this.dispatchDuration = meter.createHistogram(METRIC.dispatchDuration, {
      description: 'Wall time of one layer\'s expert dispatch (send, expert FFNs, receive) in one step.',
      unit: 's',
      advice: { explicitBucketBoundaries: [...BUCKETS.shortSeconds] },
    });
    this.steps = meter.createCounter(METRIC.steps, { description: 'Scheduler steps run.', unit: '{step}' });
    this.stepTokens = meter.createHistogram(METRIC.stepTokens, {
      description: 'Tokens (prefill and decode) processed in one scheduler step.',
      unit: '{token}',
      advice: { explicitBucketBoundaries: [...BUCKETS.stepTokens] },
    });
    this.stepDuration = meter.createHistogram(METRIC.stepDuration, {
      description: 'Wall time of one scheduler step (model forward and sampling).',
      unit: 's',
      advice: { explicitBucketBoundaries: [...BUCKETS.shortSeconds] },
    });
  }

  record(step: StepSummary): void {
    this.steps.add(1);
    this.stepTokens.record(step.tokens);
    this.stepDuration.record(step.ms / 1000);
    this.busyMs.fill(0);
    this.tokensOfWorker.fill(0);
    for (const l of step.layers) {
      const layerAttrs = this.attrsOfLayer(l.layer);
      const experts = this.attrsOfExperts(l.layer, l.routedPerExpert.length);
      l.routedPerExpert.forEach((n, e) => {
        if (n > 0) this.expertTokens.add(n, experts[e]);
      });
      this.expertOverflow.add(l.overflow, layerAttrs); // also on 0, so every layer's series exists
      this.dispatchDuration.record(l.dispatchMs / 1000, layerAttrs);
      for (const w of l.workers) {
        while (this.busyMs.length <= w.worker) {
          this.busyMs.push(0);
          this.tokensOfWorker.push(0);
        }
        this.busyMs[w.worker] += w.computeMs;
        this.tokensOfWorker[w.worker] += w.tokens;
        this.workerQueue.record(w.queueMs / 1000, this.attrsOfWorker(w.worker));
        if (w.residency) {
          const last = this.residencySeen[w.worker];
          // A worker's replacement thread counts from 0 again.
          const seen = last && last.thread === w.residency.thread ? last : { loads: 0, evictions: 0 };
          if (w.residency.loads > seen.loads) this.expertLoads.add(w.residency.loads - seen.loads, this.attrsOfWorker(w.worker));
          if (w.residency.evictions > seen.evictions) this.expertEvictions.add(w.residency.evictions - seen.evictions, this.attrsOfWorker(w.worker));
          this.residencySeen[w.worker] = { ...w.residency };
        }
      }
    }
    // One add per worker per step rather than per layer.
    this.tokensOfWorker.forEach((tokens, worker) => {
      if (tokens === 0 && this.busyMs[worker] === 0) return;
      const attrs = this.attrsOfWorker(worker);
      this.workerBusy.add(this.busyMs[worker] / 1000, attrs);
      this.workerTokens.add(tokens, attrs);
    });
  }

  /** One worker thread died and was replaced (ExpertPool.onWorkerRestart). */
  recordWorkerRestart(worker: number): void {
    this.workerRestarts.add(1, this.attrsOfWorker(worker));
  }

  /** One expert batch failed over (ClusterExpertRunner.onFailover): `action` retry (another replica) or local. */
  recordHostFailover(layer: number, action: 'retry' | 'local'): void {
    this.hostFailovers.add(1, { ...this.attrsOfLayer(layer), 'moe.failover.action': action });
  }

  private attrsOfLayer(layer: number): Attributes {
    return (this.layerAttrs[layer] ??= { [MOE.layer]: layer });
  }

  private attrsOfExperts(layer: number, experts: number): Attributes[] {
    const row = (this.layerExpertAttrs[layer] ??= []);
    for (let e = row.length; e < experts; e++) row.push({ [MOE.layer]: layer, [MOE.expert]: e });
    return row;
  }

  private attrsOfWorker(worker: number): Attributes {
    return (this.workerAttrs[worker] ??= { [MOE.worker]: worker });
  }
}
