/**
 * The generation engine: loads a model package, starts the expert pool with its placement, builds the trunk,
 * and serves generate() through the continuous-batching scheduler.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { randomInt } from 'node:crypto';
import type { Config } from '../config.ts';
import { ExpertPool, type PoolObserver, type PoolOptions } from '../../experts/pool.ts';
import { InProcessExperts } from '../../experts/in-process.ts';
import { placementFileSchema, placementFromFile, roundRobinPlacement, type Placement } from '../placement/placement.ts';
import { loadModelPackage, PackageError, type ModelPackage } from './package.ts';
import { MoeModel } from './model.ts';
import { countParameters } from './parameters.ts';
import { PlacementController, type ControllerSettings } from './placement-controller.ts';
import { Scheduler, type PrefillHooks, type StepObserver } from './scheduler.ts';
import { Sequence } from './sequence.ts';
import { TextCodec } from './tokenizer.ts';
import { ChatTemplate } from './chat-template.ts';
import { log } from '../log.ts';
import { nativeAttention } from './cached-attention.ts';
import { ClusterAdmin } from './cluster-admin.ts';
import { followClusterPlacement, gatewayWorkerPlacement, joinAsGateway, type ClusterMode } from './cluster-mode.ts';
import { ClusterExpertRunner } from '../../experts/remote/runner.ts';
import { PrefixCache } from './prefix-cache.ts';
import { ResponseCache } from './response-cache.ts';
import {
  CancelledError, InvalidRequestError, type ChatMessage, type GenerateOptions, type GenerateRequest, type GenerateResult, type GenerationService, type HealthReport, type ModelInfo,
} from './types.ts';

/**
 * The worker pool's options for this package and placement, from the config's onnx, placement and experts sections:
 * the gateway's own pool and an expert host's (src/expert-host.ts) are started alike.
 */
export function poolOptions(config: Config, pkg: ModelPackage, placement: Placement): PoolOptions {
  const c = pkg.config;
  return {
    weightsFile: pkg.weightsFile, modelType: c.model_type, hidden: c.hidden_size, ffn: c.intermediate_size, placement,
    threadsPerWorker: config.onnx.expertThreads, executionProviders: config.onnx.executionProviders.experts, minSplitRows: config.placement.minSplitRows,
    kernel: { kernel: config.experts.kernel, sparseMinSparsity: config.experts.sparseMinSparsity, trialMs: config.experts.trialMs },
    scheduling: config.experts.workerScheduling,
    maxResidentPerWorker: config.experts.maxResidentPerWorker,
    channel: config.experts.channel,
    droppedExperts: [...pkg.droppedExperts],
  };
}

export class Engine implements GenerationService {
  private nextId = 0;
  private readonly placementListeners = new Set<() => void>();

  private constructor(
    readonly pkg: ModelPackage,
    readonly model: MoeModel,
    /** Where the experts run (config experts.execution): the worker pool, or the in-process compute team. */
    readonly pool: ExpertPool | InProcessExperts,
    readonly codec: TextCodec,
    private readonly scheduler: Scheduler,
    private readonly limits: { maxPromptTokens: number; maxNewTokens: number },
    private readonly chatTemplate: ChatTemplate,
    /** KV states of prompt prefixes (config cache.prefix) and answers to deterministic requests (cache.response). */
    readonly caches: { prefix: PrefixCache; response: ResponseCache },
  ) {
    // Cached K/V and answers came from the old experts' outputs: a placement change may change them.
    this.onPlacementChange(() => {
      caches.prefix.clear();
      caches.response.clear();
    });
  }

  /** The worker pool (fault injection, placement generations in tests); throws with experts.execution 'in-process'. */
  get workerPool(): ExpertPool {
    if (!(this.pool instanceof ExpertPool)) throw new Error("experts.execution is 'in-process': there is no worker pool");
    return this.pool;
  }

  /** Live placement changes, recent expert load and rebalancing (the admin API's engine side). */
  placementAdmin!: PlacementController;

  /** The expert cluster this gateway joined (config nats), or null when every expert runs here. */
  cluster: ClusterMode | null = null;
  /** The admin API's side of that cluster (hosts, cluster placement, rebalancing across hosts). */
  clusterAdmin: ClusterAdmin | null = null;
  private stopFollowing: () => void = () => undefined;

  /**
   * `observers` see every step; those with onWorkerRestart / onHostFailover also hear of expert worker restarts and
   * of expert batches an expert host did not answer (telemetry).
   */
  static async load(config: Config, observers: (StepObserver & PoolObserver) | Array<StepObserver & PoolObserver> = []): Promise<Engine> {
    const pkg = loadModelPackage(config.model);
    const c = pkg.config;
    // Scale-out (config nats): experts on expert hosts; this gateway's workers hold the ones the cluster gives it.
    const cluster = config.nats.url ? await joinAsGateway(config, c.num_hidden_layers, c.num_experts) : null;
    const placement = cluster
      ? gatewayWorkerPlacement(cluster.placement, config.workers ?? availableParallelism())
      : loadPlacement(config, c.num_hidden_layers, c.num_experts);
    const pool = config.experts.execution === 'in-process'
      ? InProcessExperts.load({
        weightsFile: pkg.weightsFile, tensors: pkg.tensors, layers: c.num_hidden_layers, experts: c.num_experts, hidden: c.hidden_size,
        threads: config.experts.teamThreads ?? availableParallelism(), droppedExperts: pkg.droppedExperts,
      })
      : await ExpertPool.start(poolOptions(config, pkg, placement)).catch(async (error) => {
        await cluster?.connection.close();
        throw error;
      });
    for (const o of [observers].flat()) if (o.onWorkerRestart) pool.onWorkerRestart((event) => o.onWorkerRestart?.(event));
    const placementAdmin = new PlacementController(pool, placementSettings(config, c.num_hidden_layers, c.num_experts, pool.placement.workers));
    const observer = composeObservers([...[observers].flat(), placementAdmin.tracker.observer]);
    try {
      // The config refuses nats with in-process experts, so a cluster always has the worker pool.
      const runner = cluster && pool instanceof ExpertPool ? new ClusterExpertRunner(cluster.connection.nc, pool, cluster.placement, {
        cluster: config.nats.cluster, hidden: c.hidden_size, requestTimeoutMs: config.nats.requestTimeoutMs,
        attempts: config.nats.attempts, localFallback: config.nats.localFallback,
      }) : pool;
      if (runner instanceof ClusterExpertRunner) {
        for (const o of [observers].flat()) if (o.onHostFailover) runner.onFailover((event) => o.onHostFailover?.(event));
      }
      const model = await MoeModel.load(pkg, runner, {
        capacityFactor: config.routing.capacityFactor, trunkThreads: config.onnx.trunkThreads,
        executionProviders: config.onnx.executionProviders.trunk, trunkKernel: config.onnx.trunkKernel,
        // In-process experts run synchronously on the team: no second thread for a micro-batch to overlap with.
        microBatchMinTokens: pool instanceof InProcessExperts ? Infinity : config.experts.overlapMinTokens ?? Infinity,
        team: pool instanceof InProcessExperts ? pool.team : null,
        kvPoolBytes: config.cache.kvPool.maxBytes,
      });
      if (model.trunkKernelNote && config.onnx.trunkKernel === 'native') log.warn('the trunk runs in onnxruntime: the native trunk cannot be used', { reason: model.trunkKernelNote });
      else if (model.trunkKernelNote) log.info('the trunk runs in onnxruntime', { reason: model.trunkKernelNote });
      const attention = nativeAttention();
      if (!attention.available) log.warn('attention runs in TypeScript (slower): the native kernel is unavailable', { reason: attention.reason });
      const codec = new TextCodec(pkg.tokenizerJson, pkg.tokenizerConfig);
      const caches = {
        prefix: new PrefixCache({ modelId: `${pkg.id}:${pkg.dir}`, layers: c.num_hidden_layers, ...config.cache.prefix }),
        response: new ResponseCache({ modelId: `${pkg.id}:${pkg.dir}`, ...config.cache.response }),
      };
      const scheduler = new Scheduler(model, config.limits, observer, prefixCacheHooks(caches.prefix));
      const context = c.max_position_embeddings;
      const maxPromptTokens = Math.min(config.limits.maxPromptTokens ?? context - 1, context - 1);
      const engine = new Engine(pkg, model, pool, codec, scheduler, { maxPromptTokens, maxNewTokens: config.limits.maxNewTokens },
        new ChatTemplate(pkg.tokenizerConfig), caches);
      engine.placementAdmin = placementAdmin;
      engine.cluster = cluster;
      if (cluster && runner instanceof ClusterExpertRunner) {
        engine.stopFollowing = await followClusterPlacement(cluster, c.num_hidden_layers, c.num_experts, (next) => runner.applyPlacement(next));
      }
      if (cluster) {
        const admin = new ClusterAdmin(cluster, placementAdmin.tracker, {
          layers: c.num_hidden_layers, experts: c.num_experts, cluster: config.nats.cluster, hostTimeoutMs: config.nats.hostTimeoutMs,
        });
        engine.clusterAdmin = admin;
        const stopHealing = admin.startHealing();
        const stopFollowing = engine.stopFollowing;
        engine.stopFollowing = () => {
          stopHealing();
          stopFollowing();
        };
      }
      placementAdmin.onChange = () => engine.notifyPlacementChange();
      // Automatic rebalancing plans the gateway's own workers as if they held every expert: not with an expert cluster
      // (there, POST /admin/cluster/rebalance plans over hosts).
      if (!cluster) placementAdmin.start();
      return engine;
    } catch (error) {
      await pool.close();
      await cluster?.connection.close();
      throw error;
    }
  }

  /** The request's prompt ids: tokenized, then cut to its last `truncate` tokens (a leading BOS stays first). */
  private promptIds(request: GenerateRequest): number[] {
    const ids = this.codec.encode(request.inputs);
    const keep = request.truncate;
    if (keep == null || ids.length <= keep) return ids;
    const bos = this.pkg.config.bos_token_id;
    return ids[0] === bos && keep > 1 ? [bos, ...ids.slice(ids.length - keep + 1)] : ids.slice(ids.length - keep);
  }

  admit(request: GenerateRequest): void {
    this.checkPrompt(this.promptIds(request), request);
    this.scheduler.checkCapacity();
  }

  async generate(request: GenerateRequest, options: GenerateOptions = {}): Promise<GenerateResult> {
    const promptIds = this.promptIds(request);
    this.checkPrompt(promptIds, request);
    const cacheKey = options.cache === false ? null : this.caches.response.keyOf(request);
    const cached = cacheKey === null ? undefined : this.caches.response.get(cacheKey);
    if (cached) return replay(cached, options);
    const context = this.pkg.config.max_position_embeddings;
    const seed = request.sampling.doSample ? (request.sampling.seed ?? randomInt(2 ** 32)) : null;
    const positions = Math.min(context, promptIds.length + request.maxNewTokens);
    const sequence = new Sequence(this.nextId++, request, promptIds, this.model.newCache(positions), this.codec,
      this.pkg.config.eos_token_id, context, seed, options);
    await this.scheduler.submit(sequence);
    const result = sequence.result();
    if (cacheKey !== null) this.caches.response.set(cacheKey, result);
    return result;
  }

  /**
   * Registers a listener for changes that can change outputs — expert placement (and with it expert kernels) —
   * and returns a function that removes it. Whoever changes the placement calls notifyPlacementChange()
   * afterwards; the engine's own listener clears the prefix and response caches.
   */
  onPlacementChange(listener: () => void): () => void {
    this.placementListeners.add(listener);
    return () => this.placementListeners.delete(listener);
  }

  /** Tells every onPlacementChange listener that the placement changed (call after the change took effect). */
  notifyPlacementChange(): void {
    for (const listener of this.placementListeners) listener();
  }

  private checkPrompt(promptIds: number[], request: GenerateRequest): void {
    const context = this.pkg.config.max_position_embeddings;
    if (promptIds.length > this.limits.maxPromptTokens) {
      throw new InvalidRequestError(`the prompt is ${promptIds.length} tokens; at most ${this.limits.maxPromptTokens} are accepted`);
    }
    if (promptIds.length + request.maxNewTokens > context) {
      throw new InvalidRequestError(
        `prompt tokens (${promptIds.length}) + max_new_tokens (${request.maxNewTokens}) must be <= ${context}, the model's context; ` +
        `lower max_new_tokens to at most ${context - promptIds.length}`);
    }
  }

  renderChat(messages: ChatMessage[]): string {
    return this.chatTemplate.render(messages);
  }

  countPromptTokens(request: GenerateRequest): number {
    return this.promptIds(request).length;
  }

  health(): HealthReport {
    const workers = this.pool.health();
    return { status: workers.some((w) => w.state === 'failed') ? 'degraded' : 'ok', workers };
  }

  info(): ModelInfo {
    const c = this.pkg.config;
    // Counted as stored: pruned experts are narrower, sparse-bitmask or absent (parameters.ts).
    const { total, activePerToken } = countParameters(c, this.pkg.tensors);
    const placement = this.pool.placement;
    return {
      modelId: this.pkg.id, modelDir: this.pkg.dir, modelType: c.model_type,
      layers: c.num_hidden_layers, experts: c.num_experts, expertsPerToken: c.num_experts_per_tok,
      hiddenSize: c.hidden_size, contextLength: c.max_position_embeddings, vocabSize: c.vocab_size,
      parameters: { total, activePerToken, activeFraction: activePerToken / total },
      placement: {
        workers: placement.workers,
        experts: placement.hosts.flatMap((row, layer) => row.map((workers, expert) => ({ layer, expert, workers: [...workers] }))),
      },
      limits: { maxPromptTokens: this.limits.maxPromptTokens, maxNewTokens: this.limits.maxNewTokens, maxTotalTokens: c.max_position_embeddings },
      activeSequences: this.scheduler.activeCount,
      queuedRequests: this.scheduler.queuedCount,
      caches: { prefix: this.caches.prefix.stats(), response: this.caches.response.stats() },
    };
  }

  async close(): Promise<void> {
    this.placementAdmin.stop();
    await this.scheduler.close();
    this.stopFollowing();
    await this.pool.close();
    await this.cluster?.connection.close();
  }
}

/** A cached answer, replayed as token events for streaming callers. */
function replay(result: GenerateResult, options: GenerateOptions): GenerateResult {
  if (options.signal?.aborted) throw new CancelledError('the client went away');
  result.tokens.forEach((token, i) => options.onToken?.(token, i === result.tokens.length - 1 ? result : null));
  return result;
}

/** Attaches a cached prompt prefix when a sequence joins the batch, and stores its prompt's blocks after prefill. */
function prefixCacheHooks(cache: PrefixCache): PrefillHooks {
  return {
    onJoin(sequence) {
      if (sequence.request.promptLogprobs) return; // cached rows carry no logits for the prompt's positions
      try {
        if (cache.lookup(sequence.promptIds, sequence.cache) > 0) sequence.skipCachedPrompt();
      } catch (err) {
        sequence.cache.length = 0; // an optimisation only: prefill the whole prompt instead
        log.warn('prefix cache lookup failed', { err });
      }
    },
    onPrefilled(sequence) {
      try {
        cache.store(sequence.promptIds, sequence.cache);
      } catch (err) {
        log.warn('prefix cache store failed', { err }); // the sequence is unaffected
      }
    },
  };
}

/** One observer that calls each of `observers` in turn (each step hook sees the same step). */
export function composeObservers(observers: readonly StepObserver[]): StepObserver {
  return {
    onStep: (step) => {
      for (const o of observers) o.onStep?.(step);
    },
    onFinish: (sequence) => {
      for (const o of observers) o.onFinish?.(sequence);
    },
  };
}

function placementSettings(config: Config, layers: number, experts: number, workers: number): ControllerSettings {
  const a = config.admin;
  return {
    layers, experts,
    maxWorkers: a.maxWorkers ?? Math.max(workers, availableParallelism()),
    maxExpertsPerWorker: config.placement.maxExpertsPerWorker,
    rebalanceWindowSeconds: a.rebalanceWindowSeconds,
    auto: a.autoRebalance ? { intervalSeconds: a.autoRebalanceIntervalSeconds, threshold: a.autoRebalanceThreshold, minTokens: a.autoRebalanceMinTokens } : null,
  };
}

function loadPlacement(config: Config, layers: number, experts: number): Placement {
  const workers = config.workers ?? availableParallelism();
  if (!config.placementFile) return roundRobinPlacement(layers, experts, workers);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(config.placementFile, 'utf8'));
  } catch (error) {
    throw new PackageError(`${config.placementFile}: cannot read the placement file (${(error as Error).message})`);
  }
  const parsed = placementFileSchema.safeParse(raw);
  if (!parsed.success) {
    throw new PackageError(`${config.placementFile}: invalid placement (${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')})`);
  }
  return placementFromFile(parsed.data, layers, experts);
}

export function loadEngine(config: Config, observers?: StepObserver | StepObserver[]): Promise<GenerationService> {
  return Engine.load(config, observers);
}
