/**
 * An expert host: a process on another machine that serves expert batches to gateways over NATS
 * (`switchyard expert-host`). It runs a local ExpertPool (Piscina workers), watches the cluster placement in the
 * JetStream key-value bucket, and serves exactly the experts the placement gives it:
 *
 *   placement changes → load the new experts on its workers (round-robin), then subscribe to their subjects (queue
 *   group: NATS balances replicas), then unsubscribe from the experts it lost (drain: batches already received are
 *   answered), then unload them — the same load-first, swap, drain, unload order as local placement changes.
 *
 * Each request is one expert batch (wire.ts); the reply carries the output rows, or an error message (a batch for
 * an expert this host no longer serves, a failed worker) that the gateway answers by trying another replica. The
 * host renews its announcement (KV `host.<id>`) every heartbeatMs; gateways take a host that stops out of the
 * placement (nats.hostTimeoutMs).
 */
import { cpus, totalmem } from 'node:os';
import type { Msg, Subscription } from '@nats-io/transport-node';
import type { ExpertPool } from '../pool.ts';
import { log } from '../../src/log.ts';
import { expertsOfHost, parseClusterPlacement } from '../../src/placement/cluster.ts';
import { placeOnWorkers, type ExpertKey, type Placement } from '../../src/placement/placement.ts';
import { expertQueue, expertSubject, hostKey, PLACEMENT_KEY, type ClusterConnection, type HostAnnouncement } from './cluster.ts';
import { decodeRequest, encodeReply } from './wire.ts';

export interface ExpertHostOptions {
  hostId: string;
  /** How often the host renews its announcement (ms); gateways consider it gone after nats.hostTimeoutMs. */
  heartbeatMs?: number;
  cluster: string;
  layers: number;
  experts: number;
  hidden: number;
}

const keyOf = (k: ExpertKey) => `${k.layer}.${k.expert}`;

export class ExpertHost {
  private readonly subscriptions = new Map<string, Subscription>();
  private applying: Promise<void> = Promise.resolve();
  private stopWatching: (() => void) | null = null;
  private heartbeat: ReturnType<typeof setInterval> | null = null;
  private closed = false;
  /** Batches being computed or answered now. */
  private readonly inFlight = new Set<Promise<void>>();
  /** Batches answered since start (tests and logs). */
  served = 0;

  private constructor(private readonly connection: ClusterConnection, private readonly pool: ExpertPool, private readonly options: ExpertHostOptions) {}

  /** Announces the host, then follows the cluster placement until close(). */
  static async start(connection: ClusterConnection, pool: ExpertPool, options: ExpertHostOptions): Promise<ExpertHost> {
    const host = new ExpertHost(connection, pool, options);
    const heartbeatMs = options.heartbeatMs ?? 2000;
    const announcement: HostAnnouncement = {
      hostId: options.hostId, workers: pool.workerCount, cores: cpus().length, memoryBytes: totalmem(), startedAt: new Date().toISOString(), heartbeatMs,
    };
    const announce = () => connection.kv.put(hostKey(options.hostId), JSON.stringify(announcement));
    await announce();
    // Renewed while the host lives; a host that stops renewing (killed, cut off) is taken out of the placement.
    host.heartbeat = setInterval(() => {
      announce().catch((error) => log.warn('expert host could not renew its announcement', { host: options.hostId, error: (error as Error).message }));
    }, heartbeatMs);
    host.heartbeat.unref();
    try {
      await host.watch();
    } catch (error) {
      clearInterval(host.heartbeat);
      await connection.kv.delete(hostKey(options.hostId)).catch(() => undefined);
      throw error;
    }
    log.info('expert host joined the cluster', { host: options.hostId, cluster: options.cluster, workers: pool.workerCount });
    return host;
  }

  /**
   * Follows the placement key: the watch delivers the current placement first (if any), then every change. A watch
   * that ends while the host is open (the bucket recreated, NATS restarted without its store) is logged and started
   * again, so the host never serves a stale placement in silence.
   */
  private async watch(): Promise<void> {
    const watch = await this.connection.kv.watch({ key: PLACEMENT_KEY });
    this.stopWatching = () => watch.stop();
    void (async () => {
      for await (const entry of watch) if (entry.operation === 'PUT') this.follow(entry.string());
      if (this.closed) return;
      log.error('the cluster placement watch ended; watching again', { host: this.options.hostId });
      for (let delay = 250; !this.closed; delay = Math.min(delay * 2, 10_000)) {
        await new Promise((resolve) => setTimeout(resolve, delay).unref()); // never what keeps the process alive
        try {
          if (!this.closed) await this.watch();
          return;
        } catch (error) {
          log.warn('cannot watch the cluster placement yet', { host: this.options.hostId, error: (error as Error).message });
        }
      }
    })();
  }

  /** The experts this host serves now ("layer.expert"). */
  get serving(): string[] {
    return [...this.subscriptions.keys()].sort();
  }

  /** Resolves once every placement seen so far has been applied. */
  settled(): Promise<void> {
    return this.applying;
  }

  private follow(json: string): void {
    this.applying = this.applying.then(() => this.apply(json)).catch((error) => {
      log.error('expert host could not apply the cluster placement; it keeps serving what it had', { host: this.options.hostId, error: (error as Error).message });
    });
  }

  private async apply(json: string): Promise<void> {
    if (this.closed) return;
    const placement = parseClusterPlacement(JSON.parse(json), this.options.layers, this.options.experts);
    const wanted = expertsOfHost(placement, this.options.hostId);
    const wantedKeys = new Set(wanted.map(keyOf));
    const lost = [...this.subscriptions.keys()].filter((k) => !wantedKeys.has(k));
    const gained = wanted.filter((k) => !this.subscriptions.has(keyOf(k)));
    if (gained.length === 0 && lost.length === 0) return;
    // 1. load: the pool keeps what it has (the lost experts too, until their batches are answered) and adds the new
    //    ones (round-robin over its workers).
    const keep = [...wanted, ...lost.map((k) => { const [layer, expert] = k.split('.').map(Number); return { layer, expert }; })];
    await this.pool.applyPlacement(this.localPlacement(keep));
    // 2. swap: take batches for the new experts.
    for (const k of gained) {
      const subscription = this.connection.nc.subscribe(expertSubject(this.options.cluster, k.layer, k.expert), {
        queue: expertQueue(this.options.cluster),
        callback: (error, msg) => {
          if (error) {
            // NATS closed the subscription (e.g. this host's user may not subscribe there): say so, stop claiming it.
            log.error('expert subscription failed: this host no longer serves the expert', {
              host: this.options.hostId, layer: k.layer, expert: k.expert, error: error.message,
              hint: `the NATS user needs subscribe permission on ${expertSubject(this.options.cluster, k.layer, k.expert)}`,
            });
            this.subscriptions.delete(keyOf(k));
            return;
          }
          const answering = this.answer(msg).catch((e) => log.error('expert host could not answer a batch', { host: this.options.hostId, error: (e as Error).message }));
          this.inFlight.add(answering);
          void answering.finally(() => this.inFlight.delete(answering));
        },
      });
      this.subscriptions.set(keyOf(k), subscription);
    }
    // 3. drain: stop taking batches for the lost experts, answering the ones already received.
    await Promise.all(lost.map(async (k) => {
      await this.subscriptions.get(k)!.drain();
      this.subscriptions.delete(k);
    }));
    // 4. unload what no batch can reach any more.
    if (lost.length > 0) await this.pool.applyPlacement(this.localPlacement(wanted));
    log.info('expert host follows the cluster placement', { host: this.options.hostId, serving: wanted.length, gained: gained.length, lost: lost.length });
  }

  /** A pool placement holding exactly `wanted` (placeOnWorkers: experts keep their workers, new ones fill the least held). */
  private localPlacement(wanted: ExpertKey[]): Placement {
    const keys = new Set(wanted.map(keyOf));
    return placeOnWorkers(this.pool.placement, (layer, expert) => keys.has(`${layer}.${expert}`));
  }

  private async answer(msg: Msg): Promise<void> {
    let reply: Uint8Array;
    try {
      const request = decodeRequest(msg.data);
      if (request.hidden !== this.options.hidden) throw new Error(`batch of width ${request.hidden}, but this host's model has hidden size ${this.options.hidden}: gateway and host serve different models`);
      if (!this.subscriptions.has(`${request.layer}.${request.expert}`)) throw new Error(`host ${this.options.hostId} does not serve expert ${request.layer}.${request.expert}`);
      const rows = Array.from({ length: request.tokens }, (_, i) => i);
      const outcome = await this.pool.runLayer(request.layer, request.rows, { batches: [{ expert: request.expert, rows }], overflow: [], capacity: request.tokens });
      const output = new Float32Array(request.tokens * request.hidden);
      for (const b of outcome.batches) {
        b.rows.forEach((row, i) => output.set(b.output.subarray(i * request.hidden, (i + 1) * request.hidden), row * request.hidden));
      }
      const computeMs = outcome.workers.reduce((m, w) => Math.max(m, w.computeMs), 0);
      reply = encodeReply({ ok: true, host: this.options.hostId, tokens: request.tokens, hidden: request.hidden, computeMs, output });
      this.served++;
    } catch (error) {
      reply = encodeReply({ ok: false, error: (error as Error).message });
    }
    try {
      msg.respond(reply);
    } catch (error) {
      // E.g. a reply above the server's max_payload: the gateway times out and tries another replica; this host lives on.
      msg.respond(encodeReply({ ok: false, error: `host ${this.options.hostId} could not send its reply: ${(error as Error).message}` }));
    }
  }

  /**
   * Leaves the cluster: stops following the placement, drains the subscriptions, and waits for the batches already
   * received to be answered (a drained subscription has handed them over, not answered them).
   */
  async close(): Promise<void> {
    this.closed = true;
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.stopWatching?.();
    await this.applying;
    await Promise.all([...this.subscriptions.values()].map((s) => s.drain().catch(() => undefined)));
    this.subscriptions.clear();
    await Promise.all([...this.inFlight]);
    await this.connection.kv.delete(hostKey(this.options.hostId)).catch(() => undefined);
  }
}
