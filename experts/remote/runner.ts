/**
 * The gateway's ExpertRunner when experts live on expert hosts (expert parallelism across machines over NATS): each
 * layer's expert batches go to the gateway's own pool (experts the cluster placement gives `gateway`) or, one NATS
 * request per expert batch, to whichever live host serves that expert (queue group: NATS picks one replica).
 *
 * Failover: a batch that times out (`requestTimeoutMs`: its host was killed or cut off) or comes back with an error is
 * sent again, up to `attempts` times in all; NATS routes the retry to a live replica. While no host subscribes at all
 * (one loading the expert), it keeps asking with backoff for up to attempts × requestTimeoutMs. When no host answers
 * and `localFallback` is on, the gateway loads the expert on its own workers and serves it there for
 * FALLBACK_RETRY_MS before asking the hosts again; otherwise the step fails with ExpertUnavailableError naming the
 * expert (503). Batches above the server's max_payload go as several requests. Every retry is logged and counted
 * (`failovers`, and the onFailover listener).
 */
import { errors, type NatsConnection } from '@nats-io/transport-node';
import { log } from '../../src/log.ts';
import { GATEWAY_HOST, type ClusterPlacement } from '../../src/placement/cluster.ts';
import { placeOnWorkers, type Placement } from '../../src/placement/placement.ts';
import { gatherRows, type DispatchPlan, type ExpertBatch } from '../../router/dispatch.ts';
import { performance } from 'node:perf_hooks';
import type { BatchOutcome, ExpertPool, HostTiming, LayerOutcome, WorkerTiming } from '../pool.ts';
import { expertSubject } from './cluster.ts';
import { decodeReply, encodeRequest } from './wire.ts';
import { ExpertUnavailableError } from './errors.ts';

export { ExpertUnavailableError };

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

/** How long an expert the gateway took over (local fallback) is served here before a host is asked again (ms). */
export const FALLBACK_RETRY_MS = 10_000;
/** Room kept in each message for the header and the host id beside the rows (bytes). */
const MESSAGE_OVERHEAD = 256;

export class ClusterExpertRunner {
  failovers = 0;
  /** Experts the gateway took over because no host answered ("layer.expert" → until when, ms, before asking hosts again). */
  private readonly fallback = new Map<string, number>();
  /** Changes to the gateway's own pool, one at a time (placement changes and fallback loads). */
  private poolChanges: Promise<unknown> = Promise.resolve();
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

  /**
   * Follows a new cluster placement (the bucket changed) in the load-first order: the gateway's workers load what it
   * now gives `gateway` (keeping what they had), then batches follow the new placement, then the workers drop what
   * they no longer serve. Experts taken over by the local fallback are handed back to the placement.
   */
  applyPlacement(placement: ClusterPlacement): Promise<void> {
    return this.changePool(async () => {
      const before = this.placement;
      await this.pool.applyPlacement(this.workerPlacement([before, placement]));
      this.placement = placement;
      this.fallback.clear();
      await this.pool.applyPlacement(this.workerPlacement([placement]));
    });
  }

  private changePool(change: () => Promise<void>): Promise<void> {
    const next = this.poolChanges.then(change);
    this.poolChanges = next.catch(() => undefined);
    return next;
  }

  /** The gateway's worker placement for the experts that any of `placements` gives `gateway`, plus the fallback ones. */
  private workerPlacement(placements: ClusterPlacement[]): Placement {
    return placeOnWorkers(this.pool.placement, (layer, expert) =>
      placements.some((p) => p.hosts[layer][expert].includes(GATEWAY_HOST)) || this.fallback.has(`${layer}.${expert}`));
  }

  private servedHere(layer: number, expert: number): boolean {
    if (this.placement.hosts[layer][expert].includes(GATEWAY_HOST)) return true;
    const until = this.fallback.get(`${layer}.${expert}`);
    return until !== undefined && performance.now() < until && this.pool.placement.hosts[layer][expert].length > 0;
  }

  async runLayer(layer: number, x: Float32Array, plan: DispatchPlan): Promise<LayerOutcome> {
    const local: ExpertBatch[] = [];
    const remote: ExpertBatch[] = [];
    for (const b of plan.batches) (this.servedHere(layer, b.expert) ? local : remote).push(b);
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
    const { hidden } = this.options;
    // A request and its reply must each fit the server's max_payload: a large batch (a long prefill, a wide model)
    // goes as several requests of whole rows. Rows are independent, so the split changes no number.
    const rowsPerMessage = Math.max(1, Math.floor(((this.nc.info?.max_payload ?? 1 << 20) - MESSAGE_OVERHEAD) / (hidden * 4)));
    const chunks: number[][] = [];
    for (let at = 0; at < batch.rows.length; at += rowsPerMessage) chunks.push(batch.rows.slice(at, at + rowsPerMessage));
    // The gateway still holds the expert from an earlier fallback: one failed try is enough to run it here again
    // (a host that is up but not serving it must not stall every step for the whole retry budget).
    const quick = this.options.localFallback && this.pool.placement.hosts[layer][batch.expert].length > 0;
    const answers = await Promise.all(chunks.map((rows) => this.request(layer, batch.expert, rows, x, quick)));
    if (answers.every((a) => a !== null)) {
      const output = new Float32Array(batch.rows.length * hidden);
      let at = 0;
      for (const a of answers) {
        output.set(a!.output, at);
        at += a!.output.length;
      }
      const first = answers[0]!;
      return {
        outcome: { expert: batch.expert, rows: batch.rows, worker: REMOTE_WORKER, output },
        host: { host: first.host, computeMs: answers.reduce((n, a) => n + a!.computeMs, 0), roundTripMs: Math.max(...answers.map((a) => a!.roundTripMs)) },
      };
    }
    this.failover({ layer, expert: batch.expert, attempt: this.options.attempts, reason: 'no host answered', action: 'local' });
    await this.loadLocally(layer, batch.expert);
    const outcome = await this.pool.runLayer(layer, x, { batches: [batch], overflow: [], capacity: batch.rows.length });
    return { outcome: outcome.batches.length === 1 ? outcome.batches[0] : mergeParts(batch, outcome.batches, hidden), host: null, workers: outcome.workers };
  }

  /**
   * One request of `rows` to whichever host serves the expert, tried `attempts` times (NATS routes each try to a live
   * replica). While no host is subscribed at all (one may be loading the expert during a placement change), it keeps
   * asking, backing off, for up to attempts × requestTimeoutMs. Resolves null when no host answered and the local
   * fallback is on; throws otherwise.
   */
  private async request(layer: number, expert: number, rows: number[], x: Float32Array, quick = false):
    Promise<{ host: string; output: Float32Array; computeMs: number; roundTripMs: number } | null> {
    const { hidden, requestTimeoutMs } = this.options;
    const attempts = quick ? 1 : this.options.attempts;
    const data = encodeRequest({ layer, expert, tokens: rows.length, hidden, rows: gatherRows(x, rows, hidden) });
    const subject = expertSubject(this.options.cluster, layer, expert);
    const deadline = performance.now() + attempts * requestTimeoutMs;
    let reason = '';
    let attempt = 0;
    for (let wait = NO_RESPONDERS_BACKOFF_MS; attempt < attempts; ) {
      const sent = performance.now();
      try {
        const reply = decodeReply((await this.nc.request(subject, data, { timeout: requestTimeoutMs })).data);
        if (reply.ok && reply.tokens === rows.length && reply.hidden === hidden) {
          this.fallback.delete(`${layer}.${expert}`); // a host answers (again)
          return { host: reply.host, output: reply.output, computeMs: reply.computeMs, roundTripMs: performance.now() - sent };
        }
        reason = reply.ok ? `host ${reply.host} answered ${reply.tokens} × ${reply.hidden} floats for ${rows.length} × ${hidden}` : `host error: ${reply.error}`;
      } catch (error) {
        reason = describe(error, requestTimeoutMs);
        if (isTooLarge(error)) break; // the same bytes would be refused again
        if (isNoResponders(error) && !quick && performance.now() + wait < deadline) {
          await new Promise((r) => setTimeout(r, wait));
          wait = Math.min(wait * 2, requestTimeoutMs);
          continue; // not an attempt: nobody was asked
        }
      }
      attempt++;
      if (attempt < attempts) this.failover({ layer, expert, attempt, reason, action: 'retry' });
    }
    if (this.options.localFallback && !reason.includes('max_payload')) return null;
    throw new ExpertUnavailableError(`expert ${layer}.${expert}: no expert host answered (last: ${reason}); `
      + (reason.includes('max_payload') ? 'raise max_payload in nats-server\'s configuration' : 'start a host that serves it, or set nats.localFallback to load it on the gateway'));
  }

  /**
   * Serves the expert on the gateway's own workers for FALLBACK_RETRY_MS (loading it once, however many batches ask),
   * after which hosts are asked again; the next cluster placement hands it back.
   */
  private loadLocally(layer: number, expert: number): Promise<void> {
    const key = `${layer}.${expert}`;
    const fresh = !this.fallback.has(key);
    this.fallback.set(key, performance.now() + FALLBACK_RETRY_MS);
    if (fresh) log.warn('no expert host answers for an expert: the gateway serves it on its own workers for now', { layer, expert, retryHostsAfterMs: FALLBACK_RETRY_MS });
    return this.changePool(async () => {
      // Set again here: a placement change queued before this one clears the map.
      this.fallback.set(key, Math.max(this.fallback.get(key) ?? 0, performance.now() + FALLBACK_RETRY_MS));
      if (this.pool.placement.hosts[layer][expert].length === 0) await this.pool.applyPlacement(this.workerPlacement([this.placement]));
    });
  }

  private failover(event: FailoverEvent): void {
    this.failovers++;
    log.warn('expert batch failed over', { ...event });
    for (const listener of this.listeners) listener(event);
  }
}

/** First wait before asking again when no host is subscribed (ms); it doubles each time, up to requestTimeoutMs. */
const NO_RESPONDERS_BACKOFF_MS = 100;

const isNoResponders = (error: unknown) =>
  error instanceof errors.NoRespondersError || (error as { cause?: unknown })?.cause instanceof errors.NoRespondersError;

const isTooLarge = (error: unknown) => /max_payload/i.test((error as Error)?.message ?? '');

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
