/**
 * The sparse model's forward pass over one scheduler step. Every active sequence contributes its new tokens
 * (a prefill chunk or one decode token); the step reads like the model:
 *
 *   x = embed(tokens)
 *   per layer:  x = x + attention(x)     batched over the step's sequences (attention.ts), KV cache per sequence
 *               x = x + moe(x)           route → dispatch plan → experts (ExpertRunner) → combine (moe-layer.ts)
 *   logits = lm_head(norm(x))            at each sequence's last position (or all of them)
 *
 * All of the step's tokens are routed together, so each expert receives one batch per step.
 */
import ort from 'onnxruntime-node';
import type { ExpertPool } from '../../experts/pool.ts';
import { createSession } from '../../experts/kernels/ort-session.ts';
import { KvArrayPool, KvCache } from './kv-cache.ts';
import { readTensors } from '../format/safetensors.ts';
import { expectedTensors, tensorNames, type ModelConfig, type ModelPackage } from './package.ts';
import { attentionGraph, headGraph } from './trunk-graphs.ts';
import { attendReference, nativeAttentionKernel, type AttentionKernel, type CachedSequence } from './cached-attention.ts';
import { attentionOutputGraph, attentionScale, headsOf, projectionGraph } from './attention.ts';
import { moeLayer, type ExpertRunner, type LayerTrace, type RoutedHook, type RouterWeights, type Routing } from './moe-layer.ts';
import { NativeTrunk, nativeTrunkAddon, nativeTrunkUnsupported } from './native-trunk.ts';
import { FusedForward, fusedForwardAddon, oneAtATime, type FusedExperts } from './fused-forward.ts';

export type { ExpertRunner, LayerTrace, RoutedHook } from './moe-layer.ts';

export interface SequenceInput {
  cache: KvCache;
  /** New token ids, continuing at position cache.length. */
  tokens: number[];
  /** Logits at every new position of this sequence, not only the last (prompt log probabilities). */
  allPositions?: boolean;
}

export interface StepOutput {
  /**
   * Logits at each sequence's last new position, [vocab] per sequence; for sequences with allPositions (or all of
   * them with the forward option), [tokens · vocab].
   */
  logits: Float32Array[];
  layers: LayerTrace[];
}

export interface ModelOptions {
  capacityFactor: number | null;
  trunkThreads: number;
  executionProviders: string[];
  /**
   * 'batched' (default): per layer one projection run over all of a step's tokens, the attention core over the KV
   * caches (cached-attention.ts), one output run. 'per-sequence': one run per sequence and layer, the earlier path,
   * kept as the reference for tests and benchmarks.
   */
  attention?: 'batched' | 'per-sequence';
  /**
   * Steps with at least this many tokens (and two or more sequences) run as two micro-batches whose attention and
   * experts overlap (config experts.overlapMinTokens); undefined or Infinity: never.
   */
  microBatchMinTokens?: number;
  /** 'typescript': the attention core in plain TypeScript even where the native kernel is built (tests, benchmarks). */
  attentionKernel?: 'native' | 'typescript';
  /**
   * How the batched path's per-layer dense stages run (config onnx.trunkKernel): 'native' (native-trunk.ts),
   * 'onnx' (projection and output graphs in onnxruntime), 'auto' (default): native when the addon is built, the
   * model's widths fit it and the trunk's execution providers are only the CPU. A 'native' that cannot be used falls
   * back to 'onnx' and `trunkKernelNote` says why.
   */
  trunkKernel?: 'auto' | 'native' | 'onnx';
  /**
   * The compute team (InProcessExperts.team) the native trunk's matrix products and the attention core split their
   * work over (same values as on one thread); null or absent: they run on the calling thread.
   */
  team?: object | null;
  /**
   * false: never the fused forward (fused-forward.ts), the stages driven from TypeScript (tests compare the two).
   * Default true: fused wherever it applies — experts in-process, native trunk and attention, no capacity factor —
   * for steps without a routing hook.
   */
  fused?: boolean;
  /** Most bytes of released KV arrays kept for new caches (config cache.kvPool.maxBytes); default 64 MiB, 0: none. */
  kvPoolBytes?: number;
}

/** Positions a KV cache's capacity is rounded up to (newCache), so that released arrays fit the next caches. */
const KV_BLOCK = 32;
/** Free KV arrays the model keeps for new caches by default: a full batch's worth of short requests (32 × 1 MB, twice). */
const KV_POOL_BYTES = 64 * 1024 * 1024;

/** Which trunk runs the batched path's dense stages, and why not native when it is not. */
function chooseTrunk(c: ModelConfig, options: ModelOptions): { kernel: 'native' | 'onnx'; note?: string } {
  const wanted = options.trunkKernel ?? 'auto';
  if (wanted === 'onnx' || options.attention === 'per-sequence') return { kernel: 'onnx' };
  const status = nativeTrunkAddon();
  const why = !status.available ? status.reason
    : nativeTrunkUnsupported(c)
      ?? (wanted === 'auto' && options.executionProviders.some((p) => p !== 'cpu') ? `onnx.executionProviders.trunk is ${JSON.stringify(options.executionProviders)}` : null);
  return why ? { kernel: 'onnx', note: why } : { kernel: 'native' };
}

interface AttentionSessions {
  perSequence?: ort.InferenceSession[];
  projection?: ort.InferenceSession[];
  output?: ort.InferenceSession[];
  /** The batched path's dense stages in the native addon instead of projection/output sessions. */
  native?: NativeTrunk;
}

export class MoeModel {
  /** Query and key/value head geometry (grouped-query attention), fixed by the config. */
  private readonly heads: ReturnType<typeof headsOf>;

  /** The attention core over the KV caches: the native kernel, or the TypeScript one where the addon is not built. */
  private readonly attend: AttentionKernel;
  /** Which of the two `attend` is. */
  readonly attentionKernel: 'native' | 'typescript';
  /** Which runs the batched path's dense stages (projections, o_proj, norms, router logits, shared expert). */
  readonly trunkKernel: 'native' | 'onnx';

  private constructor(
    readonly config: ModelConfig,
    /** The embedding table [vocab, d]: a step's rows are copied out of it (× embedding_multiplier). */
    private readonly embeddings: Float32Array,
    private readonly sessions: AttentionSessions,
    /** The final norm and LM head in onnxruntime; null where the native trunk runs them. */
    private readonly head: ort.InferenceSession | null,
    private readonly routers: RouterWeights[],
    private readonly inverseFrequencies: Float32Array,
    readonly runner: ExpertRunner,
    private readonly options: ModelOptions,
    /** Why the trunk runs in onnxruntime when native was possible in principle ('auto' or 'native' asked for). */
    readonly trunkKernelNote?: string,
  ) {
    this.trunkKernel = sessions.native ? 'native' : 'onnx';
    this.heads = headsOf(config);
    const shape = { heads: this.heads.heads, kvHeads: this.heads.kvHeads, headDim: this.heads.headDim, scale: attentionScale(config) };
    const native = options.attentionKernel === 'typescript' ? null : nativeAttentionKernel(shape, options.team ?? null);
    this.attend = native ?? attendReference(shape);
    this.attentionKernel = native ? 'native' : 'typescript';
    this.kvPool = new KvArrayPool(options.kvPoolBytes ?? KV_POOL_BYTES);
    const addon = fusedForwardAddon();
    const experts = runner as ExpertRunner & Partial<FusedExperts>;
    // Not with a capacity factor: the scheduler's every step would take the stages (planDispatch's capacity).
    if (options.fused !== false && options.capacityFactor === null && sessions.native && native && addon.available && experts.kernelHandles && experts.recordLayer) {
      this.fused = new FusedForward(addon.addon, {
        ...sessions.native.handles, experts: experts as FusedExperts, ...shape, routing: this.routing, numExperts: config.num_experts, vocab: config.vocab_size,
      });
    }
  }

  /** The whole forward in native code on the compute team (fused-forward.ts), where it applies; else null. */
  private readonly fused: FusedForward | null = null;

  /** Whether forward runs fused steps (see ModelOptions.fused). */
  get forwardKernel(): 'fused' | 'stages' {
    return this.fused ? 'fused' : 'stages';
  }

  /** Top-k routing as config.json sets it: num_experts_per_tok, norm_topk_prob. */
  private get routing(): Routing {
    return { k: this.config.num_experts_per_tok, renormalize: this.config.norm_topk_prob, residualScale: this.config.residual_multiplier };
  }

  /** `runner` runs the experts: the worker pool (ExpertPool), or any ExpertRunner. */
  static async load(pkg: ModelPackage, runner: ExpertPool | ExpertRunner, options: ModelOptions): Promise<MoeModel> {
    const c = pkg.config;
    // Every tensor but the experts' (the workers read those), as the architecture has them (q/k norms or not).
    const trunkNames = [...expectedTensors(c).keys()].filter((name) => !/\.mlp\.experts\.\d+\./.test(name));
    const weights = readTensors(pkg.weightsFile, pkg.tensors, trunkNames);
    const w = (name: string) => weights.get(name)!;
    const sessionOptions: Omit<ort.InferenceSession.SessionOptions, 'executionProviders'> = {
      intraOpNumThreads: options.trunkThreads, interOpNumThreads: 1, graphOptimizationLevel: 'all',
      // No CPU arena and no memory patterns: the trunk's runs see shapes that change every step (the step's token
      // count), and the arena kept growing with them (+48 MB over 400 random steps, still rising, against +10 MB
      // without it; bench/soak.ts: the resident set did not level off); per-shape memory patterns are never reused
      // for the same reason. Measured faster without both, too.
      enableCpuMemArena: false, enableMemPattern: false,
      // With more than one intra-op thread, ORT's pool threads spin after each run by default: on a machine whose
      // cores the expert workers also use, the spinning takes their time (steps 3-4x slower on 2 cores).
      extra: { session: { intra_op: { allow_spinning: '0' } } },
    };
    const create = async (graph: Uint8Array) => (await createSession(graph, sessionOptions, options.executionProviders, 'trunk')).session;
    const layers = Array.from({ length: c.num_hidden_layers }, (_, l) => l);
    const trunk = chooseTrunk(c, options);
    const sessions: AttentionSessions = {};
    if (options.attention === 'per-sequence') {
      sessions.perSequence = [];
      for (const l of layers) sessions.perSequence.push(await create(attentionGraph(c, l, w)));
    } else if (trunk.kernel === 'native') {
      sessions.native = NativeTrunk.create(c, w, options.team ?? null);
    } else {
      sessions.projection = [];
      sessions.output = [];
      for (const l of layers) {
        sessions.projection.push(await create(projectionGraph(c, l, w)));
        sessions.output.push(await create(attentionOutputGraph(c, l, w)));
      }
    }
    const routers = layers.map((l) => ({
      weights: w(tensorNames.layer(l).router),
      // Experts removed by pruning: the router's mask.
      dropped: Array.from({ length: c.num_experts }, (_, e) => e).filter((e) => pkg.droppedExperts.has(`${l}.${e}`)),
    }));
    const { headDim } = headsOf(c);
    // As the reference computes them, in fp32: 1 / theta^(2i / head_dim).
    const inverseFrequencies = Float32Array.from({ length: headDim / 2 }, (_, i) =>
      1 / Math.fround(c.rope_theta ** Math.fround((2 * i) / headDim)));
    return new MoeModel(c, w(tensorNames.embed), sessions, sessions.native ? null : await create(headGraph(c, w)), routers,
      inverseFrequencies, runner, options, trunk.note);
  }

  /**
   * A KV cache with room for `positions` (default 64; it grows by doubling beyond). Sized to what a request can
   * reach (prompt + max new tokens), it never grows: each growth allocates and copies every layer's arrays, and
   * that churn of large buffers is what drove the main thread's full garbage collections under load.
   */
  newCache(positions = 64): KvCache {
    const { kvHeads, kvDim } = this.heads;
    // Rounded up to whole blocks of positions, so that finished sequences' arrays fit new ones (kvPool).
    const capacity = Math.ceil(Math.max(1, positions) / KV_BLOCK) * KV_BLOCK;
    return new KvCache(this.config.num_hidden_layers, kvDim, capacity, kvHeads, this.kvPool);
  }

  /** KV arrays of released caches (KvCache.release), reused by newCache's. */
  private readonly kvPool: KvArrayPool;

  /**
   * One step. `allPositions` returns logits at every new position (evaluation), not only the last; `onRouted`
   * sees each layer's expert inputs [tokens, d] and the router's choices [tokens, k] (pruning calibration).
   */
  async forward(inputs: SequenceInput[], options: { allPositions?: boolean; onRouted?: RoutedHook } = {}): Promise<StepOutput> {
    const fused = this.fused;
    if (!fused) return this.stages(inputs, options);
    const step = () => (!options.onRouted && inputs.some((s) => s.tokens.length > 0)
      ? this.fusedStep(fused, inputs, options.allPositions === true)
      : this.stages(inputs, options));
    return oneAtATime(step);
  }

  /** Whether forward lets the event loop run while it computes (the fused forward does; the scheduler then need not). */
  get forwardYields(): boolean {
    return this.fused !== null;
  }

  /** One step through the fused forward: embedding and rotary angles here, the rest native (fused-forward.ts). */
  private async fusedStep(fused: FusedForward, inputs: SequenceInput[], allPositions: boolean): Promise<StepOutput> {
    const total = inputs.reduce((n, s) => n + s.tokens.length, 0);
    const x = this.embed(inputs, total);
    const { cos, sin } = this.rotaryPacked(inputs.map((s) => ({ cache: s.cache, past: s.cache.length, n: s.tokens.length })), total);
    const rows = this.headRows(inputs, allPositions);
    const headRows = new Uint32Array(rows.reduce((a, b) => a + b, 0));
    let end = 0;
    let at = 0;
    inputs.forEach((s, i) => {
      end += s.tokens.length;
      for (let r = end - rows[i]; r < end; r++) headRows[at++] = r;
    });
    const { logits, layers } = await fused.run({ caches: inputs.map((s) => s.cache), counts: inputs.map((s) => s.tokens.length), x, cos, sin, headRows });
    for (const s of inputs) s.cache.length += s.tokens.length;
    return { logits: this.perSequence(logits, rows), layers };
  }

  /** Rows of logits each sequence gets: its last position, or all of its new ones. */
  private headRows(inputs: SequenceInput[], allPositions: boolean): number[] {
    return inputs.map((s) => (allPositions || s.allPositions ? s.tokens.length : 1));
  }

  /** logits [Σ rows, vocab] as one view per sequence (not copies: the array is this step's own, nothing writes it). */
  private perSequence(logits: Float32Array, rows: number[]): Float32Array[] {
    const v = this.config.vocab_size;
    let start = 0;
    return rows.map((n) => logits.subarray(start * v, (start += n) * v));
  }

  /** The forward with its stages driven from here: each layer's attention and MoE half (any runner, any kernels). */
  private async stages(inputs: SequenceInput[], options: { allPositions?: boolean; onRouted?: RoutedHook }): Promise<StepOutput> {
    const c = this.config;
    const d = c.hidden_size;
    const total = inputs.reduce((n, s) => n + s.tokens.length, 0);
    const embedded = this.embed(inputs, total);

    // Two micro-batches run the layers side by side: while the workers compute one half's experts, the main thread
    // runs the other half's attention (two-batch overlap). Only where that cannot change a result: no capacity
    // limit (each token's routing is its own) and no per-layer hook that expects the whole step.
    const parts = this.options.capacityFactor === null && !options.onRouted ? splitMicroBatches(inputs, this.options.microBatchMinTokens ?? Infinity) : [inputs];
    let x: Float32Array;
    let layers: LayerTrace[];
    if (parts.length === 1) {
      ({ x, layers } = await this.layers(inputs, embedded, options.onRouted));
    } else {
      const split = parts[0].reduce((n, s) => n + s.tokens.length, 0) * d;
      // allSettled: a half that fails must not leave the other writing K/V rows after forward has returned.
      const settled = await Promise.allSettled([
        this.layers(parts[0], embedded.slice(0, split)),
        this.layers(parts[1], embedded.slice(split)),
      ]);
      const failed = settled.find((r) => r.status === 'rejected');
      if (failed) throw failed.reason;
      const halves = settled.map((r) => (r as PromiseFulfilledResult<{ x: Float32Array; layers: LayerTrace[] }>).value);
      x = new Float32Array(total * d);
      x.set(halves[0].x);
      x.set(halves[1].x, split);
      layers = halves[0].layers.map((a, l) => mergeTraces(a, halves[1].layers[l]));
    }
    for (const s of inputs) s.cache.length += s.tokens.length;

    // The LM head runs on the rows that need logits: each sequence's last position, or all of its new positions.
    const v = c.vocab_size;
    const rows = this.headRows(inputs, options.allPositions === true);
    const headInput = new Float32Array(rows.reduce((a, b) => a + b, 0) * d);
    let end = 0;
    let at = 0;
    inputs.forEach((s, i) => {
      end += s.tokens.length;
      headInput.set(x.subarray((end - rows[i]) * d, end * d), at * d);
      at += rows[i];
    });
    let logits: Float32Array;
    if (this.head) logits = (await this.head.run({ x: new ort.Tensor('float32', headInput, [at, d]) })).logits.data as Float32Array;
    else {
      logits = new Float32Array(at * v);
      this.sessions.native!.head(at, headInput, logits);
    }
    return { logits: this.perSequence(logits, rows), layers };
  }

  /**
   * x [total, d]: each token's row of the embedding table, × embedding_multiplier (Granite-MoE) in fp32 as the
   * reference graph's Mul. Throws a RangeError for an id outside the vocabulary.
   */
  private embed(inputs: SequenceInput[], total: number): Float32Array {
    const { hidden_size: d, vocab_size: vocab, embedding_multiplier: scale } = this.config;
    const x = new Float32Array(total * d);
    let row = 0;
    for (const s of inputs) {
      for (const id of s.tokens) {
        if (!Number.isInteger(id) || id < 0 || id >= vocab) throw new RangeError(`token id ${id} is outside the vocabulary (0..${vocab - 1})`);
        x.set(this.embeddings.subarray(id * d, (id + 1) * d), row * d);
        row++;
      }
    }
    if (scale !== 1) for (let i = 0; i < x.length; i++) x[i] = Math.fround(x[i] * scale);
    return x;
  }

  /**
   * The decoder layers over `inputs` (the step, or one of its two micro-batches), x [tokens, d]
   * their embedded tokens: per layer x = x + attention(x); x = x + moe(x). Returns the final residual stream and
   * each layer's trace. Does not advance the caches' lengths (forward does, once every micro-batch is done).
   */
  private async layers(
    inputs: SequenceInput[],
    x: Float32Array,
    onRouted?: RoutedHook,
  ): Promise<{ x: Float32Array; layers: LayerTrace[] }> {
    const c = this.config;
    const tokens = inputs.reduce((n, s) => n + s.tokens.length, 0);
    const attention = this.sessions.perSequence ? this.perSequenceAttention(inputs) : this.batchedAttention(inputs, onRouted !== undefined);
    const layers: LayerTrace[] = [];
    for (let layer = 0; layer < c.num_hidden_layers; layer++) {
      const { h, moeInput, routerLogits } = await attention(layer, x); // h = x + attention(x)
      layers.push(await moeLayer({ // h = h + moe(h)
        layer, h, moeInput, routerLogits, tokens, d: c.hidden_size, experts: c.num_experts, router: this.routers[layer],
        routing: this.routing, capacityFactor: this.options.capacityFactor, runner: this.runner, onRouted,
      }));
      x = h;
    }
    return { x, layers };
  }

  /**
   * attention(x) for all of a step's sequences, per layer: the projections over the packed tokens (native-trunk.ts, or
   * one onnxruntime run), their new k/v rows written to each cache, the attention core over the caches in place
   * (cached-attention.ts), then the output stage: o_proj, residual, post-attention norm, router logits (native, or one
   * more onnxruntime run).
   */
  private batchedAttention(inputs: SequenceInput[], keepsMoeInput: boolean): StepAttention {
    const d = this.config.hidden_size;
    const { kvDim } = this.heads;
    const total = inputs.reduce((n, s) => n + s.tokens.length, 0);
    const sequences: CachedSequence[] = inputs.map((s) => ({ cache: s.cache, past: s.cache.length, n: s.tokens.length }));
    const { cos, sin } = this.rotaryPacked(sequences, total);
    const attended = new Float32Array(total * d);
    const toCaches = (layer: number, k: Float32Array, v: Float32Array) => {
      let at = 0;
      for (const s of sequences) {
        s.cache.write(layer, k.subarray(at * kvDim, (at + s.n) * kvDim), v.subarray(at * kvDim, (at + s.n) * kvDim));
        at += s.n;
      }
    };
    const native = this.sessions.native;
    if (native) {
      const q = new Float32Array(total * d);
      const k = new Float32Array(total * kvDim);
      const v = new Float32Array(total * kvDim);
      // The MoE layer is done with these before the next layer's attention (unless a hook keeps them: fresh ones then).
      let moeInput = new Float32Array(total * d);
      let routerLogits = new Float32Array(total * this.config.num_experts);
      // h of one layer is x of the next: two buffers in turn (output reads x while it writes h).
      const residuals = [new Float32Array(total * d), new Float32Array(total * d)];
      const rows = { keys: k, values: v };
      return async (layer, x) => {
        native.project(layer, total, x, cos, sin, q, k, v);
        this.attend(layer, q, attended, sequences, rows); // writes the new k/v rows into the caches, then attends
        const h = residuals[layer % 2];
        if (keepsMoeInput && layer > 0) {
          moeInput = new Float32Array(total * d);
          routerLogits = new Float32Array(total * this.config.num_experts);
        }
        native.output(layer, total, x, attended, h, moeInput, routerLogits);
        return { h, moeInput, routerLogits };
      };
    }
    const projection = this.sessions.projection!;
    const output = this.sessions.output!;
    const cosTensor = new ort.Tensor('float32', cos, [total, 1, this.heads.headDim]);
    const sinTensor = new ort.Tensor('float32', sin, [total, 1, this.heads.headDim]);
    return async (layer, x) => {
      const xTensor = new ort.Tensor('float32', x, [total, d]);
      const qkv = await projection[layer].run({ x: xTensor, cos: cosTensor, sin: sinTensor });
      toCaches(layer, qkv.k.data as Float32Array, qkv.v.data as Float32Array);
      this.attend(layer, qkv.q.data as Float32Array, attended, sequences);
      const out = await output[layer].run({ x: xTensor, attended: new ort.Tensor('float32', attended, [total, d]) });
      return { h: out.h.data as Float32Array, moeInput: out.moe_input.data as Float32Array, routerLogits: out.router_logits.data as Float32Array };
    };
  }

  /** The earlier path: one attention run per sequence and layer (attentionGraph). */
  private perSequenceAttention(inputs: SequenceInput[]): StepAttention {
    const d = this.config.hidden_size;
    const { kvHeads, headDim } = this.heads;
    const sessions = this.sessions.perSequence!;
    const total = inputs.reduce((n, s) => n + s.tokens.length, 0);
    const perSequence = inputs.map((s) => {
      const past = s.cache.length;
      const n = s.tokens.length;
      const rotary = this.rotary(past, n);
      const mask = new Float32Array(n * (past + n));
      for (let i = 0; i < n; i++) mask.fill(-Infinity, i * (past + n) + past + i + 1, (i + 1) * (past + n));
      return { past, n, ...rotary, mask: new ort.Tensor('float32', mask, [n, past + n]) };
    });
    return async (layer, x) => {
      const h = new Float32Array(total * d);
      const moeInput = new Float32Array(total * d);
      let row = 0;
      for (const [i, s] of inputs.entries()) {
        const q = perSequence[i];
        const out = await sessions[layer].run({
          x: new ort.Tensor('float32', x.subarray(row * d, (row + q.n) * d), [q.n, d]),
          cos: q.cos, sin: q.sin, mask: q.mask,
          past_k: new ort.Tensor('float32', s.cache.headMajor(layer, 'keys', q.past), [kvHeads, q.past, headDim]),
          past_v: new ort.Tensor('float32', s.cache.headMajor(layer, 'values', q.past), [kvHeads, q.past, headDim]),
        });
        h.set(out.h.data as Float32Array, row * d);
        moeInput.set(out.moe_input.data as Float32Array, row * d);
        s.cache.write(layer, out.new_k.data as Float32Array, out.new_v.data as Float32Array);
        row += q.n;
      }
      return { h, moeInput };
    };
  }

  /** cos/sin [N, head_dim] for each packed token (sequences back to back) at its own position. */
  private rotaryPacked(sequences: CachedSequence[], total: number) {
    const { headDim } = this.heads;
    const cos = new Float32Array(total * headDim);
    const sin = new Float32Array(total * headDim);
    let row = 0;
    for (const s of sequences) {
      this.rotaryInto(s.past, s.n, cos, sin, row);
      row += s.n;
    }
    return { cos, sin };
  }

  private rotary(start: number, n: number) {
    const { headDim } = this.heads;
    const cos = new Float32Array(n * headDim);
    const sin = new Float32Array(n * headDim);
    this.rotaryInto(start, n, cos, sin, 0);
    return { cos: new ort.Tensor('float32', cos, [n, 1, headDim]), sin: new ort.Tensor('float32', sin, [n, 1, headDim]) };
  }

  /** cos/sin of positions start..start+n−1 into rows at.. of cos, sin [*, head_dim] (NeoX: both halves alike). */
  private rotaryInto(start: number, n: number, cos: Float32Array, sin: Float32Array, at: number): void {
    const { headDim } = this.heads;
    const half = headDim / 2;
    for (let t = 0; t < n; t++) {
      const row = (at + t) * headDim;
      for (let i = 0; i < half; i++) {
        const angle = Math.fround((start + t) * this.inverseFrequencies[i]);
        cos[row + i] = cos[row + half + i] = Math.cos(angle);
        sin[row + i] = sin[row + half + i] = Math.sin(angle);
      }
    }
  }
}

/** h = x + attention(x), moe_input = post_attention_layernorm(h) and, if computed, the router's logits at one layer. */
type StepAttention = (layer: number, x: Float32Array) => Promise<{ h: Float32Array; moeInput: Float32Array; routerLogits?: Float32Array }>;

/**
 * The step's sequences as two micro-batches of about equal tokens, in input order (so their rows stay contiguous),
 * or one when the step has fewer than `minTokens` tokens or a single sequence.
 */
export function splitMicroBatches(inputs: SequenceInput[], minTokens: number): SequenceInput[][] {
  const total = inputs.reduce((n, s) => n + s.tokens.length, 0);
  if (inputs.length < 2 || total < minTokens) return [inputs];
  let cut = 1;
  let first = inputs[0].tokens.length;
  // Move the cut while it brings the halves closer; both keep at least one sequence.
  while (cut < inputs.length - 1 && Math.abs(total - 2 * (first + inputs[cut].tokens.length)) < Math.abs(total - 2 * first)) {
    first += inputs[cut].tokens.length;
    cut++;
  }
  return [inputs.slice(0, cut), inputs.slice(cut)];
}

/**
 * Two micro-batches' timings of one layer, one entry per worker (or host) `keyOf`: tokens and compute time added,
 * experts united; `more` merges the rest of an entry that both halves have.
 */
function mergeTimings<T extends { tokens: number; experts: number[]; computeMs: number }>(
  a: readonly T[], b: readonly T[], keyOf: (t: T) => number | string, more: (seen: T, t: T) => void,
): Map<number | string, T> {
  const merged = new Map(a.map((t) => [keyOf(t), { ...t, experts: [...t.experts] }]));
  for (const t of b) {
    const seen = merged.get(keyOf(t));
    if (!seen) merged.set(keyOf(t), { ...t, experts: [...t.experts] });
    else {
      seen.tokens += t.tokens;
      seen.experts = [...new Set([...seen.experts, ...t.experts])].sort((x, y) => x - y);
      seen.computeMs += t.computeMs;
      more(seen, t);
    }
  }
  return merged;
}

/** One layer's traces of two micro-batches as the step's: tokens back to back, counts and timings summed. */
function mergeTraces(a: LayerTrace, b: LayerTrace): LayerTrace {
  const expert = new Int32Array(a.expert.length + b.expert.length);
  expert.set(a.expert);
  expert.set(b.expert, a.expert.length);
  const gate = new Float32Array(a.gate.length + b.gate.length);
  gate.set(a.gate);
  gate.set(b.gate, a.gate.length);
  const workers = mergeTimings(a.workers, b.workers, (w) => w.worker, (seen, w) => {
    seen.queueMs += w.queueMs;
    if (w.residency) seen.residency = w.residency;
  });
  const hosts = mergeTimings(a.hosts ?? [], b.hosts ?? [], (h) => h.host, (seen, h) => {
    seen.roundTripMs = Math.max(seen.roundTripMs, h.roundTripMs);
  });
  return {
    layer: a.layer, k: a.k, expert, gate,
    ...(hosts.size > 0 ? { hosts: [...hosts.values()].sort((x, y) => x.host.localeCompare(y.host)) } : {}),
    tokensPerExpert: a.tokensPerExpert.map((n, e) => n + b.tokensPerExpert[e]),
    overflow: a.overflow + b.overflow, capacity: a.capacity + b.capacity,
    workers: [...workers.values()].sort((x, y) => x.worker - y.worker),
    dispatchMs: a.dispatchMs + b.dispatchMs,
  };
}
