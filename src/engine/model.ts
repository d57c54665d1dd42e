/**
 * The sparse model's forward pass over one scheduler step. Every active sequence contributes its new tokens
 * (a prefill chunk or one decode token); per layer, attention runs per sequence against its KV cache, then all
 * of the step's tokens are routed together, so each expert receives one batch per step:
 *
 *   embed → for each layer: attention (+ residual) → router (fp32 softmax, top-1) → dispatch plan
 *         → expert FFNs in the worker pool → combine (× gate, + residual) → … → final norm, LM head
 */
import ort from 'onnxruntime-node';
import { performance } from 'node:perf_hooks';
import { routerLogits, top1, planDispatch, combineInto } from '../../router/index.ts';
import type { ExpertPool, WorkerTiming } from '../../experts/pool.ts';
import { KvCache } from './kv-cache.ts';
import { readTensors } from './safetensors.ts';
import { tensorNames, type ModelConfig, type ModelPackage } from './package.ts';
import { attentionGraph, embeddingGraph, headGraph } from './trunk-graphs.ts';

export interface SequenceInput {
  cache: KvCache;
  /** New token ids, continuing at position cache.length. */
  tokens: number[];
  /** Logits at every new position of this sequence, not only the last (prompt log probabilities). */
  allPositions?: boolean;
}

/** What the router and the pool did at one layer in one step: the load telemetry and traces record this. */
export interface LayerTrace {
  layer: number;
  /** Chosen expert and gate per token of the step, sequences back to back in input order. */
  expert: Int32Array;
  gate: Float32Array;
  tokensPerExpert: number[];
  overflow: number;
  capacity: number;
  workers: WorkerTiming[];
  dispatchMs: number;
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
}

export class MoeModel {
  private constructor(
    readonly config: ModelConfig,
    private readonly embed: ort.InferenceSession,
    private readonly attention: ort.InferenceSession[],
    private readonly head: ort.InferenceSession,
    private readonly routers: Float32Array[],
    private readonly droppedByLayer: number[][],
    private readonly inverseFrequencies: Float32Array,
    readonly pool: ExpertPool,
    private readonly options: ModelOptions,
  ) {}

  static async load(pkg: ModelPackage, pool: ExpertPool, options: ModelOptions): Promise<MoeModel> {
    const c = pkg.config;
    const trunkNames = [tensorNames.embed, tensorNames.finalNorm, tensorNames.lmHead];
    for (let l = 0; l < c.num_hidden_layers; l++) trunkNames.push(...Object.values(tensorNames.layer(l)));
    const weights = readTensors(pkg.weightsFile, pkg.tensors, trunkNames);
    const w = (name: string) => weights.get(name)!;
    const sessionOptions: ort.InferenceSession.SessionOptions = {
      intraOpNumThreads: options.trunkThreads, interOpNumThreads: 1, graphOptimizationLevel: 'all',
      executionProviders: options.executionProviders,
    };
    const create = (graph: Uint8Array) => ort.InferenceSession.create(graph, sessionOptions);
    const attention = [];
    for (let l = 0; l < c.num_hidden_layers; l++) attention.push(await create(attentionGraph(c, l, w)));
    const routers = Array.from({ length: c.num_hidden_layers }, (_, l) => w(tensorNames.layer(l).router));
    const headDim = c.hidden_size / c.num_attention_heads;
    // As the reference computes them, in fp32: 1 / theta^(2i / head_dim).
    const inverseFrequencies = Float32Array.from({ length: headDim / 2 }, (_, i) =>
      1 / Math.fround(c.rope_theta ** Math.fround((2 * i) / headDim)));
    const dropped = Array.from({ length: c.num_hidden_layers }, (_, l) =>
      Array.from({ length: c.num_experts }, (_, e) => e).filter((e) => pkg.droppedExperts.has(`${l}.${e}`)));
    return new MoeModel(c, await create(embeddingGraph(c, w)), attention, await create(headGraph(c, w)), routers, dropped,
      inverseFrequencies, pool, options);
  }

  newCache(): KvCache {
    return new KvCache(this.config.num_hidden_layers, this.config.hidden_size);
  }

  /**
   * One step. `allPositions` returns logits at every new position (evaluation), not only the last; `onRouted`
   * sees each layer's expert inputs and the router's choices (pruning calibration).
   */
  async forward(
    inputs: SequenceInput[],
    options: { allPositions?: boolean; onRouted?: (layer: number, moeInput: Float32Array, expert: Int32Array) => void } = {},
  ): Promise<StepOutput> {
    const c = this.config;
    const d = c.hidden_size;
    const total = inputs.reduce((n, s) => n + s.tokens.length, 0);
    const ids = new ort.Tensor('int64', BigInt64Array.from(inputs.flatMap((s) => s.tokens), BigInt), [total]);
    let x = (await this.embed.run({ ids })).hidden.data as Float32Array;

    // Per sequence: rotary tables and causal mask for its new positions (the same at every layer).
    const perSequence = inputs.map((s) => {
      const past = s.cache.length;
      const n = s.tokens.length;
      const rotary = this.rotary(past, n);
      const mask = new Float32Array(n * (past + n));
      for (let i = 0; i < n; i++) mask.fill(-Infinity, i * (past + n) + past + i + 1, (i + 1) * (past + n));
      return { past, n, ...rotary, mask: new ort.Tensor('float32', mask, [n, past + n]) };
    });

    const layers: LayerTrace[] = [];
    for (let layer = 0; layer < c.num_hidden_layers; layer++) {
      const h = new Float32Array(total * d);
      const moeInput = new Float32Array(total * d);
      let row = 0;
      for (const [i, s] of inputs.entries()) {
        const q = perSequence[i];
        const past = s.cache.past(layer);
        const feeds = {
          x: new ort.Tensor('float32', x.subarray(row * d, (row + q.n) * d), [q.n, d]),
          cos: q.cos, sin: q.sin, mask: q.mask,
          past_k: new ort.Tensor('float32', past.keys, [q.past, d]),
          past_v: new ort.Tensor('float32', past.values, [q.past, d]),
        };
        const out = await this.attention[layer].run(feeds);
        h.set(out.h.data as Float32Array, row * d);
        moeInput.set(out.moe_input.data as Float32Array, row * d);
        s.cache.write(layer, out.new_k.data as Float32Array, out.new_v.data as Float32Array);
        row += q.n;
      }

      const logits = routerLogits(moeInput, this.routers[layer], total, d, c.num_experts);
      // Experts removed by pruning are masked: the softmax and the choice range over the remaining ones.
      for (const e of this.droppedByLayer[layer]) for (let t = 0; t < total; t++) logits[t * c.num_experts + e] = -Infinity;
      const gating = top1(logits, total, c.num_experts);
      options.onRouted?.(layer, moeInput, gating.expert);
      const plan = planDispatch(gating.expert, c.num_experts, this.options.capacityFactor);
      const started = performance.now();
      const outcome = await this.pool.runLayer(layer, moeInput, plan);
      for (const batch of outcome.batches) combineInto(h, batch.output, batch.rows, gating.gate, d);
      layers.push({
        layer, expert: gating.expert, gate: gating.gate,
        tokensPerExpert: Array.from({ length: c.num_experts }, (_, e) => plan.batches.find((b) => b.expert === e)?.rows.length ?? 0),
        overflow: plan.overflow.length, capacity: plan.capacity, workers: outcome.workers,
        dispatchMs: performance.now() - started,
      });
      x = h;
    }
    for (const s of inputs) s.cache.length += s.tokens.length;

    // The LM head runs on the rows that need logits: each sequence's last position, or all of its new positions.
    const v = c.vocab_size;
    const rows = inputs.map((s) => (options.allPositions || s.allPositions ? s.tokens.length : 1));
    const headInput = new Float32Array(rows.reduce((a, b) => a + b, 0) * d);
    let end = 0;
    let at = 0;
    inputs.forEach((s, i) => {
      end += s.tokens.length;
      headInput.set(x.subarray((end - rows[i]) * d, end * d), at * d);
      at += rows[i];
    });
    const logits = (await this.head.run({ x: new ort.Tensor('float32', headInput, [at, d]) })).logits.data as Float32Array;
    let start = 0;
    return { logits: rows.map((n) => logits.slice(start * v, (start += n) * v)), layers };
  }

  private rotary(start: number, n: number) {
    const headDim = this.config.hidden_size / this.config.num_attention_heads;
    const half = headDim / 2;
    const cos = new Float32Array(n * headDim);
    const sin = new Float32Array(n * headDim);
    for (let t = 0; t < n; t++) {
      for (let i = 0; i < half; i++) {
        const angle = Math.fround((start + t) * this.inverseFrequencies[i]);
        cos[t * headDim + i] = cos[t * headDim + half + i] = Math.cos(angle);
        sin[t * headDim + i] = sin[t * headDim + half + i] = Math.sin(angle);
      }
    }
    return { cos: new ort.Tensor('float32', cos, [n, 1, headDim]), sin: new ort.Tensor('float32', sin, [n, 1, headDim]) };
  }
}
