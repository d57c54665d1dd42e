/**
 * The trunk's attention graphs for a step's sequences (prefill chunks and decode tokens mixed), three stages per layer:
 *
 *   1. projection (projectionGraph, one onnxruntime run over all of the step's tokens, packed [N, d]): input norm,
 *      q/k/v (biases, q/k norms as the architecture has them), rotary at each token's own position;
 *   2. the new k/v rows are written to each sequence's KvCache, and the attention core reads the caches in place
 *      (cached-attention.ts: the native kernel, causal, grouped-query);
 *   3. output (attentionOutputGraph, one run): o_proj, residual, post-attention norm, shared expert.
 *
 * The per-sequence graph (trunk-graphs.ts attentionGraph: one run per sequence and layer, past keys as inputs) is
 * kept as the reference the tests compare with.
 */
import { GraphBuilder } from '../format/onnx-builder.ts';
import { tensorNames, type ModelConfig } from './package.ts';
import type { Weights } from './trunk-graphs.ts';

/** The projection half: input norm, q/k/v, q/k norms, NeoX rotary; x [N, d], cos/sin [N, 1, head_dim] → [N, d] each. */
function project(g: GraphBuilder, c: ModelConfig, layer: number, w: Weights, x: string, cos: string, sin: string) {
  const d = c.hidden_size;
  const { heads, kvHeads, headDim, kvDim } = headsOf(c);
  const t = tensorNames.layer(layer);
  const xn = g.rmsNorm(x, g.weight('input_norm', w(t.inputNorm), [d]), c.rms_norm_eps);
  const { q, k, v } = qkv(g, c, layer, w, xn);
  const half = headDim / 2;
  // NeoX rotary over each head, as in attentionGraph: x·cos + rotate_half(x)·sin.
  const rope = (value: string, n: number) => {
    const byHead = g.op('Reshape', [value, g.int64s([-1, n, headDim])]);
    const first = g.op('Slice', [byHead, g.int64s([0]), g.int64s([half]), g.int64s([-1])]);
    const second = g.op('Slice', [byHead, g.int64s([half]), g.int64s([headDim]), g.int64s([-1])]);
    const rotated = g.op('Concat', [g.op('Neg', [second]), first], { axis: -1 });
    return g.op('Reshape', [g.op('Add', [g.op('Mul', [byHead, cos]), g.op('Mul', [rotated, sin])]), g.int64s([-1, n * headDim])]);
  };
  return { q: rope(q, heads), k: rope(k, kvHeads), v };
}

/**
 * q, k, v of the normed input xn [N, d] → [N, d], [N, kvDim], [N, kvDim], before rotary: the projections, their
 * biases (attention_bias: Qwen2-MoE), and the RMS norms of q and k (qk_norm: OLMoE; Mixtral and Qwen2-MoE have none).
 */
export function qkv(g: GraphBuilder, c: ModelConfig, layer: number, w: Weights, xn: string): { q: string; k: string; v: string } {
  const d = c.hidden_size;
  const { kvDim } = headsOf(c);
  const t = tensorNames.layer(layer);
  const b = tensorNames.bias(layer);
  const project = (name: string, weight: string, bias: string, out: number) => {
    const y = g.linear(xn, name, w(weight), out, d);
    return c.attention_bias ? g.op('Add', [y, g.weight(`${name}_bias`, w(bias), [out])]) : y;
  };
  const q = project('q_proj', t.q, b.q, d);
  const k = project('k_proj', t.k, b.k, kvDim);
  return {
    q: c.qk_norm ? g.rmsNorm(q, g.weight('q_norm', w(t.qNorm), [d]), c.rms_norm_eps) : q,
    k: c.qk_norm ? g.rmsNorm(k, g.weight('k_norm', w(t.kNorm), [kvDim]), c.rms_norm_eps) : k,
    v: project('v_proj', t.v, b.v, kvDim),
  };
}

/** The attention scores' scale: attention_multiplier (Granite-MoE) or 1/√head_dim. */
export function attentionScale(c: ModelConfig): number {
  return c.attention_multiplier ?? 1 / Math.sqrt(c.hidden_size / c.num_attention_heads);
}

/** y × residual_multiplier before its residual add (Granite-MoE); y itself when the multiplier is 1. */
export function residualScaled(g: GraphBuilder, c: ModelConfig, y: string): string {
  return c.residual_multiplier === 1 ? y : g.op('Mul', [y, g.scalar(c.residual_multiplier)]);
}

/**
 * h + the shared expert's output on moe_input (shared_expert_intermediate_size > 0: Qwen2-MoE), scaled by
 * sigmoid(moe_input · shared_expert_gateᵀ) when gated; h itself otherwise. The routed experts add theirs to this
 * afterwards, so the layer's MoE output is shared + Σ gate · routed, as in Qwen2MoeSparseMoeBlock.
 */
export function withSharedExpert(g: GraphBuilder, c: ModelConfig, layer: number, w: Weights, h: string, moeInput: string): string {
  const width = c.shared_expert_intermediate_size;
  if (width === 0) return h;
  const d = c.hidden_size;
  const s = tensorNames.sharedExpert(layer);
  const gate = g.linear(moeInput, 'shared_gate_proj', w(s.gate), width, d);
  const up = g.linear(moeInput, 'shared_up_proj', w(s.up), width, d);
  const hidden = g.op('Mul', [g.op('Mul', [gate, g.op('Sigmoid', [gate])]), up]); // silu(gate) ⊙ up
  let out = g.linear(hidden, 'shared_down_proj', w(s.down), d, width);
  if (c.shared_expert_gated) out = g.op('Mul', [out, g.op('Sigmoid', [g.linear(moeInput, 'shared_expert_gate', w(s.scale), 1, d)])]);
  return g.op('Add', [h, out]);
}

/**
 * Query and key/value heads: grouped-query attention (num_key_value_heads < num_attention_heads) shares each
 * key/value head among `group` consecutive query heads (Hugging Face's repeat_kv order); kvDim = kvHeads · headDim.
 */
export function headsOf(c: ModelConfig): { heads: number; kvHeads: number; group: number; headDim: number; kvDim: number } {
  const heads = c.num_attention_heads;
  const kvHeads = c.num_key_value_heads;
  const headDim = c.hidden_size / heads;
  return { heads, kvHeads, group: heads / kvHeads, headDim, kvDim: kvHeads * headDim };
}

/**
 * Projection graph. Inputs: x [N, d] (the residual stream, packed tokens), cos/sin [N, 1, head_dim] (each token's
 * own position). Outputs: q [N, d], k [N, kvDim] (normed, after rotary), v [N, kvDim] (kvDim = d without GQA).
 */
export function projectionGraph(c: ModelConfig, layer: number, w: Weights): Uint8Array {
  const d = c.hidden_size;
  const { headDim, kvDim } = headsOf(c);
  const g = new GraphBuilder(`projection_${layer}`);
  const { q, k, v } = project(g, c, layer, w, g.input('x', ['tokens', d]), g.input('cos', ['tokens', 1, headDim]), g.input('sin', ['tokens', 1, headDim]));
  g.output(q, 'q', ['tokens', d]);
  g.output(k, 'k', ['tokens', kvDim]);
  g.output(v, 'v', ['tokens', kvDim]);
  return g.toBytes();
}

/**
 * Output graph, after the attention core (cached-attention.ts): h = x + o_proj(attended) (× residual_multiplier), then
 * moe_input = post_attention_layernorm(h), the shared expert, if any, and the router's logits moe_input · Wᵀ in fp32
 * (Switch Transformer's router precision; onnxruntime's MatMul instead of a JavaScript loop on the main thread).
 * Inputs: x, attended [N, d]. Outputs: h, moe_input [N, d], router_logits [N, experts].
 */
export function attentionOutputGraph(c: ModelConfig, layer: number, w: Weights): Uint8Array {
  const d = c.hidden_size;
  const t = tensorNames.layer(layer);
  const g = new GraphBuilder(`attention_output_${layer}`);
  const x = g.input('x', ['tokens', d]);
  const h = g.op('Add', [x, residualScaled(g, c, g.linear(g.input('attended', ['tokens', d]), 'o_proj', w(t.o), d, d))]);
  const moeInput = g.rmsNorm(h, g.weight('post_norm', w(t.postNorm), [d]), c.rms_norm_eps);
  const routerLogits = g.linear(moeInput, 'router', w(t.router), c.num_experts, d);
  g.output(withSharedExpert(g, c, layer, w, h, moeInput), 'h', ['tokens', d]);
  g.output(moeInput, 'moe_input', ['tokens', d]);
  g.output(routerLogits, 'router_logits', ['tokens', c.num_experts]);
  return g.toBytes();
}
