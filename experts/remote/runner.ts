/**
 * The gateway's ExpertRunner when experts live on expert hosts (expert parallelism across machines over NATS): each
 * layer's expert batches go to the gateway's own pool (experts the cluster placement gives `gateway`) or, one NATS
 * request per expert batch, to whichever live host serves that expert (queue group: NATS picks one replica).
 *
 * Failover: a batch that times out (`requestTimeoutMs`: its host was killed or cut off), finds no responder, or comes
 * back with an error is sent again, up to `attempts` times in all; NATS routes the retry to a live replica. When no
 * host answers at all and `localFallback` is on, the gateway loads the expert on its own workers and runs the batch
 * there (and keeps serving that expert locally); otherwise the step fails with an error naming the expert. Every
 * retry is logged and counted (`failovers`, and the onFailover listener).
 */
import { errors, type NatsConnection } from '@nats-io/transport-node';
import { log } from '../../src/log.ts';
import { GATEWAY_HOST, type ClusterPlacement } from '../../src/placement/cluster.ts';
import type { Placement } from '../../src/placement/placement.ts';
import { gatherRows, type DispatchPlan, type ExpertBatch } from '../../router/dispatch.ts';
import { performance } from 'node:perf_hooks';
import type { BatchOutcome, ExpertPool, HostTiming, LayerOutcome, WorkerTiming } from '../pool.ts';
import { expertSubject } from './cluster.ts';
import { decodeReply, encodeRequest } from './wire.ts';

export interface ClusterRunnerOptions {
  cluster: string;
  hidden: number;
  /** How long one attempt waits for a host's reply (ms). */
  requestTimeoutMs: number;
  /** Attempts per batch before the local fallback (or the error). */
  attempts: number;
  /** Load an expert no host answers for on the gateway's own workers (true), or fail the step (false). */
  localFallback: boolean;
}

/** One retried or failed-over batch: what the telemetry counts as moe.host.failovers. */
export interface FailoverEvent {
  layer: number;
  expert: number;
  attempt: number;
  reason: string;
  /** 'retry': sent again to the cluster; 'local': run on the gateway's own workers. */
  action: 'retry' | 'local';
}

/** The worker id remote batches report in BatchOutcome (they ran on no worker of this gateway). */
export const REMOTE_WORKER = -1;

export class ClusterExpertRunner {
  failovers = 0;
  private readonly localLoads = new Map<string, Promise<void>>();
  private readonly listeners = new Set<(event: FailoverEvent) => void>();

  constructor(
    private readonly nc: NatsConnection,
    private readonly pool: ExpertPool,
    private placement: ClusterPlacement,
    private readonly options: ClusterRunnerOptions,
  ) {}

  onFailover(listener: (event: FailoverEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  get clusterPlacement(): ClusterPlacement {
    return this.placement;
  }

  /** A new cluster placement (the bucket changed): batches dispatched from now on follow it. */
  setPlacement(placement: ClusterPlacement): void {
    this.placement = placement;
  }

  async runLayer(layer: number, x: Float32Array, plan: DispatchPlan): Promise<LayerOutcome> {
    const local: ExpertBatch[] = [];
    const remote: ExpertBatch[] = [];
    for (const b of plan.batches) (this.placement.hosts[layer][b.expert].includes(GATEWAY_HOST) ? local : remote).push(b);
    const [own, away] = await Promise.all([
      local.length > 0 ? this.pool.runLayer(layer, x, { ...plan, batches: local }) : Promise.resolve<LayerOutcome>({ batches: [], workers: [] }),
      Promise.all(remote.map((b) => this.runRemote(layer, b, x))),
    ]);
    const hosts = new Map<string, HostTiming>();
    for (const { outcome, host } of away) {
      if (!host) continue; // ran on the gateway after all (local fallback)
      const timing = hosts.get(host.host) ?? { host: host.host, tokens: 0, experts: [], computeMs: 0, roundTripMs: 0 };
      timing.tokens += outcome.rows.length;
      timing.experts.push(outcome.expert);
      timing.computeMs += host.computeMs;
      timing.roundTripMs = Math.max(timing.roundTripMs, host.roundTripMs);
      hosts.set(host.host, timing);
    }
    return {
      batches: [...own.batches, ...away.map((a) => a.outcome)], workers: [...own.workers, ...away.flatMap((a) => a.workers ?? [])],
      hosts: [...hosts.values()].sort((a, b) => a.host.localeCompare(b.host)),
    };
  }

  /** One remote batch: its outcome, and which host ran it (null when the gateway ran it after all). */
  private async runRemote(layer: number, batch: ExpertBatch, x: Float32Array): Promise<{
    outcome: BatchOutcome; host: { host: string; computeMs: number; roundTripMs: number } | null; workers?: WorkerTiming[];
  }> {
    const { hidden, attempts, requestTimeoutMs } = this.options;
    const data = encodeRequest({ layer, expert: batch.expert, tokens: batch.rows.length, hidden, rows: gatherRows(x, batch.rows, hidden) });
    const subject = expertSubject(this.options.cluster, layer, batch.expert);
    let reason = '';
    for (let attempt = 1; attempt <= attempts; attempt++) {
      try {
        const sent = performance.now();
        const reply = decodeReply((await this.nc.request(subject, data, { timeout: requestTimeoutMs })).data);
        if (reply.ok) {
          return {
            outcome: { expert: batch.expert, rows: batch.rows, worker: REMOTE_WORKER, output: reply.output },
            host: { host: reply.host, computeMs: reply.computeMs, roundTripMs: performance.now() - sent },
          };
        }
        reason = `host error: ${reply.error}`;
      } catch (error) {
        reason = describe(error, requestTimeoutMs);
        // No host subscribed right now: one may be taking the expert over (a placement change); give it a moment.
        if (isNoResponders(error) && attempt < attempts) await new Promise((r) => setTimeout(r, NO_RESPONDERS_BACKOFF_MS * attempt));
      }
      if (attempt < attempts) this.failover({ layer, expert: batch.expert, attempt, reason, action: 'retry' });
    }
    if (!this.options.localFallback) {
      throw new Error(`expert ${layer}.${batch.expert}: no expert host answered in ${attempts} attempts (last: ${reason}); `
        + 'start a host that serves it, or set nats.localFallback to load it on the gateway');
    }
    this.failover({ layer, expert: batch.expert, attempt: attempts, reason, action: 'local' });
    await this.loadLocally(layer, batch.expert);
    const outcome = await this.pool.runLayer(layer, x, { batches: [batch], overflow: [], capacity: batch.rows.length });
    return { outcome: outcome.batches.length === 1 ? outcome.batches[0] : mergeParts(batch, outcome.batches, hidden), host: null, workers: outcome.workers };
  }

  /** Adds the expert to the gateway's own workers (once, however many batches ask) and serves it locally from now on. */
  private loadLocally(layer: number, expert: number): Promise<void> {
    const key = `${layer}.${expert}`;
    let pending = this.localLoads.get(key);
    if (!pending) {
      pending = (async () => {
        const current = this.pool.placement;
        const hosts = current.hosts.map((row) => row.map((ws) => [...ws]));
        if (hosts[layer][expert].length === 0) hosts[layer][expert] = [(layer * hosts[0].length + expert) % current.workers];
        await this.pool.applyPlacement({ workers: current.workers, hosts } satisfies Placement);
        const cluster = this.placement.hosts.map((row) => row.map((hs) => [...hs]));
        cluster[layer][expert] = [...new Set([...cluster[layer][expert], GATEWAY_HOST])].sort();
        this.placement = { hosts: cluster };
        log.warn('no expert host answers for an expert: the gateway serves it on its own workers now', { layer, expert });
      })();
      this.localLoads.set(key, pending);
      pending.catch(() => this.localLoads.delete(key));
    }
    return pending;
  }

  private failover(event: FailoverEvent): void {
    this.failovers++;
    log.warn('expert batch failed over', { ...event });
    for (const listener of this.listeners) listener(event);
  }
}

/** Wait before retrying a batch that found no responder, times the attempt number (ms). */
const NO_RESPONDERS_BACKOFF_MS = 100;

const isNoResponders = (error: unknown) =>
  error instanceof errors.NoRespondersError || (error as { cause?: unknown })?.cause instanceof errors.NoRespondersError;

function describe(error: unknown, timeoutMs: number): string {
  const cause = (error as { cause?: unknown })?.cause;
  if (error instanceof errors.TimeoutError || cause instanceof errors.TimeoutError) return `no reply within ${timeoutMs} ms`;
  if (isNoResponders(error)) return 'no host serves it (no responders)';
  return (error as Error)?.message ?? String(error);
}

/** A batch that the pool split across replicas, back in the batch's row order. */
function mergeParts(batch: ExpertBatch, parts: BatchOutcome[], hidden: number): BatchOutcome {
  const at = new Map(batch.rows.map((row, i) => [row, i]));
  const output = new Float32Array(batch.rows.length * hidden);
  for (const p of parts) p.rows.forEach((row, i) => output.set(p.output.subarray(i * hidden, (i + 1) * hidden), at.get(row)! * hidden));
  return { expert: batch.expert, rows: batch.rows, worker: parts[0]?.worker ?? REMOTE_WORKER, output };
}
