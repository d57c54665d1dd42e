/**
 * The trunk's dense stages of each layer in our native addon (experts/kernels/native/trunk.cc) instead of two
 * onnxruntime runs per layer and step, and the LM head instead of a third:
 *
 *   project: input norm, q/k/v (biases, q/k norms as the architecture has them), NeoX rotary at each token's position;
 *   output:  h = x + o_proj(attended) (× residual_multiplier), moe_input = post-attention norm(h), the router's logits
 *            (fp32), and the shared expert added to h where the architecture has one;
 *   head:    logits = lm_head(final norm(x)) / logits_scaling.
 *
 * The same arithmetic as projectionGraph and attentionOutputGraph (attention.ts), which stay the reference the tests
 * compare with and the path for other execution providers. Why: onnxruntime-node costs ~40 µs of fixed overhead per
 * run (plus a setImmediate hop) and a few µs per graph node, about 0.3 ms per layer at batch 1, against a few µs of
 * arithmetic. Each token's values are computed on their own in a fixed order, so they do not depend on the batch.
 */
import { loadKernelAddon, type NativeStatus } from '../../experts/kernels/native-addon.ts';
import { headsOf } from './attention.ts';
import { tensorNames, type ModelConfig } from './package.ts';
import type { Weights } from './trunk-graphs.ts';

interface Addon {
  /** `team`: a compute team handle (experts/in-process.ts) the layer's matrix products are split over. */
  createLayer(spec: Record<string, number | boolean | Float32Array | object>): object;
  project(handle: object, n: number, x: Float32Array, cos: Float32Array, sin: Float32Array, q: Float32Array, k: Float32Array, v: Float32Array): void;
  output(handle: object, n: number, x: Float32Array, attended: Float32Array, h: Float32Array, moeInput: Float32Array, routerLogits: Float32Array): void;
  release(handle: object): void;
  /** The final norm and LM head: weight [vocab, d]; logits divided by `scaling`. */
  createHead(spec: { d: number; vocab: number; eps: number; scaling: number; norm: Float32Array; weight: Float32Array; team?: object }): object;
  head(handle: object, n: number, x: Float32Array, logits: Float32Array): void;
  releaseHead(handle: object): void;
  info(): { simd: string };
  setSimd(enabled: boolean): { simd: string };
}

export type NativeTrunkStatus = NativeStatus<Addon>;

/** Loads the addon once per thread; never throws (SWITCHYARD_NATIVE=off disables it, as for the other kernels). */
export function nativeTrunkAddon(): NativeTrunkStatus {
  return loadKernelAddon<Addon>('model.node', 'native trunk kernel', 'trunk');
}

/** Why this model's trunk cannot run natively (widths the kernel's SIMD rows need), or null when it can. */
export function nativeTrunkUnsupported(c: ModelConfig): string | null {
  const { headDim, kvDim } = headsOf(c);
  if (c.hidden_size % 8 || kvDim % 8 || c.shared_expert_intermediate_size % 8 || headDim % 2) {
    return `hidden size ${c.hidden_size}, kv width ${kvDim} and shared expert width ${c.shared_expert_intermediate_size} must be multiples of 8 and the head size ${headDim} even`;
  }
  return null;
}

/** A layer's dense stages over a step's packed tokens (n rows); outputs are written into the given arrays. */
export class NativeTrunk {
  private constructor(private readonly addon: Addon, private readonly layers: object[], private readonly finalHead: object) {}

  /**
   * One handle per layer with its weights copied in (torch Linear layout). Throws when the addon is unavailable or
   * the model's widths do not fit it (nativeTrunkUnsupported). `team`: the compute team (InProcessExperts.team) the
   * matrix products are split over, by blocks of weight rows (the same values as on one thread); null: this thread.
   */
  static create(c: ModelConfig, w: Weights, team: object | null = null, status: NativeTrunkStatus = nativeTrunkAddon()): NativeTrunk {
    if (!status.available) throw new Error(status.reason);
    const unsupported = nativeTrunkUnsupported(c);
    if (unsupported) throw new Error(`the native trunk cannot run this model: ${unsupported}`);
    const layers = Array.from({ length: c.num_hidden_layers }, (_, l) => {
      const t = tensorNames.layer(l);
      const b = tensorNames.bias(l);
      const s = tensorNames.sharedExpert(l);
      const shared = c.shared_expert_intermediate_size;
      return status.addon.createLayer({
        d: c.hidden_size, heads: c.num_attention_heads, kvHeads: c.num_key_value_heads, experts: c.num_experts,
        eps: c.rms_norm_eps, residual: c.residual_multiplier, qkNorm: c.qk_norm, bias: c.attention_bias,
        shared, sharedGated: shared > 0 && c.shared_expert_gated,
        inputNorm: w(t.inputNorm), q: w(t.q), k: w(t.k), v: w(t.v), o: w(t.o), postNorm: w(t.postNorm), router: w(t.router),
        ...(c.qk_norm ? { qNorm: w(t.qNorm), kNorm: w(t.kNorm) } : {}),
        ...(c.attention_bias ? { qBias: w(b.q), kBias: w(b.k), vBias: w(b.v) } : {}),
        ...(shared > 0 ? { sharedGate: w(s.gate), sharedUp: w(s.up), sharedDown: w(s.down) } : {}),
        ...(shared > 0 && c.shared_expert_gated ? { sharedScale: w(s.scale) } : {}),
        ...(team ? { team } : {}),
      });
    });
    const finalHead = status.addon.createHead({
      d: c.hidden_size, vocab: c.vocab_size, eps: c.rms_norm_eps, scaling: c.logits_scaling, norm: w(tensorNames.finalNorm),
      // Tied embeddings: the LM head is the embedding matrix.
      weight: w(c.tie_word_embeddings ? tensorNames.embed : tensorNames.lmHead), ...(team ? { team } : {}),
    });
    return new NativeTrunk(status.addon, layers, finalHead);
  }

  /** The addon's handles: one per layer and the head's (the fused forward runs them itself). */
  get handles(): { layers: object[]; head: object } {
    return { layers: this.layers, head: this.finalHead };
  }

  /** q [n, d], k, v [n, kvDim] (after norms and rotary) of x [n, d]; cos/sin [n, head_dim] per token. */
  project(layer: number, n: number, x: Float32Array, cos: Float32Array, sin: Float32Array, q: Float32Array, k: Float32Array, v: Float32Array): void {
    this.addon.project(this.layers[layer], n, x, cos, sin, q, k, v);
  }

  /** h, moeInput [n, d] and routerLogits [n, experts] of the residual x and the attention core's output [n, d]. */
  output(layer: number, n: number, x: Float32Array, attended: Float32Array, h: Float32Array, moeInput: Float32Array, routerLogits: Float32Array): void {
    this.addon.output(this.layers[layer], n, x, attended, h, moeInput, routerLogits);
  }

  /** logits [n, vocab] = lm_head(final_norm(x)) / logits_scaling for x [n, d] (headGraph's arithmetic). */
  head(n: number, x: Float32Array, logits: Float32Array): void {
    this.addon.head(this.finalHead, n, x, logits);
  }

  release(): void {
    this.addon.releaseHead(this.finalHead);
    for (const handle of this.layers) this.addon.release(handle);
  }
}
