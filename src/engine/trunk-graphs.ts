/**
 * ONNX graphs for the dense trunk: one attention block per layer (with a KV cache), and the final norm with the LM
 * head (the embedding is a row copy, MoeModel.embed). The MoE half of each layer runs elsewhere: routing in the gateway, experts in
 * the worker pool.
 */
import { GraphBuilder } from '../format/onnx-builder.ts';
import { attentionScale, headsOf, qkv, residualScaled, withSharedExpert } from './attention.ts';
import { tensorNames, type ModelConfig } from './package.ts';

export type Weights = (name: string) => Float32Array;

/**
 * One sequence's attention block for `tokens` new positions after `past` cached ones:
 *   h = x + o_proj(attention(rope(q_norm(q)), rope(k_norm(k)), v))      with x normed by input_layernorm
 *   moe_input = post_attention_layernorm(h)
 * Inputs: x [tokens, d], cos/sin [tokens, 1, head_dim], mask [tokens, past+tokens] (0 or -inf), past_k/past_v
 * [kvHeads, past, head_dim] (the KV cache's head-major layout). Outputs: h, moe_input, and the new positions' rows
 * new_k/new_v [tokens, kvDim] (keys after rotary) for the caller to append to its cache. With grouped-query attention
 * (kvHeads < heads) each key/value head serves `group` consecutive query heads.
 */
export function attentionGraph(c: ModelConfig, layer: number, w: Weights): Uint8Array {
  const d = c.hidden_size;
  const { heads, kvHeads, group, headDim, kvDim } = headsOf(c);
  const t = tensorNames.layer(layer);
  const g = new GraphBuilder(`attention_${layer}`);
  const x = g.input('x', ['tokens', d]);
  const cos = g.input('cos', ['tokens', 1, headDim]);
  const sin = g.input('sin', ['tokens', 1, headDim]);
  let mask = g.input('mask', ['tokens', 'total']);
  const pastK = g.input('past_k', [kvHeads, 'past', headDim]);
  const pastV = g.input('past_v', [kvHeads, 'past', headDim]);

  const xn = g.rmsNorm(x, g.weight('input_norm', w(t.inputNorm), [d]), c.rms_norm_eps);
  const { q, k, v } = qkv(g, c, layer, w, xn);

  const byHead = (value: string, n = heads) => g.op('Reshape', [value, g.int64s([-1, n, headDim])]); // [n, heads, head_dim]
  const headsFirst = (value: string) => g.op('Transpose', [value], { perm: [1, 0, 2] }); // [heads, n, head_dim]
  const half = headDim / 2;
  // NeoX rotary: x·cos + rotate_half(x)·sin, rotate_half(x) = [-x₂, x₁] over the two halves of each head.
  const rope = (value: string) => {
    const first = g.op('Slice', [value, g.int64s([0]), g.int64s([half]), g.int64s([-1])]);
    const second = g.op('Slice', [value, g.int64s([half]), g.int64s([headDim]), g.int64s([-1])]);
    const rotated = g.op('Concat', [g.op('Neg', [second]), first], { axis: -1 });
    return g.op('Add', [g.op('Mul', [value, cos]), g.op('Mul', [rotated, sin])]);
  };
  let qh = headsFirst(rope(byHead(q)));
  const newK = g.op('Reshape', [rope(byHead(k, kvHeads)), g.int64s([-1, kvDim])]);
  const keys = g.op('Concat', [pastK, headsFirst(byHead(newK, kvHeads))], { axis: 1 });
  const values = g.op('Concat', [pastV, headsFirst(byHead(v, kvHeads))], { axis: 1 });
  if (group > 1) {
    // Grouped-query attention: each key/value head's query heads side by side [kvHeads, group·n, head_dim].
    qh = g.op('Reshape', [qh, g.int64s([kvHeads, -1, headDim])]);
    mask = g.op('Tile', [mask, g.int64s([group, 1])]);
  }

  const scores = g.op('Add', [
    g.op('Mul', [g.op('MatMul', [qh, g.op('Transpose', [keys], { perm: [0, 2, 1] })]), g.scalar(attentionScale(c))]),
    mask,
  ]);
  let attended = g.op('MatMul', [g.op('Softmax', [scores], { axis: -1 }), values]);
  if (group > 1) attended = g.op('Reshape', [attended, g.int64s([heads, -1, headDim])]);
  const merged = g.op('Reshape', [g.op('Transpose', [attended], { perm: [1, 0, 2] }), g.int64s([0, d])]);
  const h = g.op('Add', [x, residualScaled(g, c, g.linear(merged, 'o_proj', w(t.o), d, d))]);
  const moeInput = g.rmsNorm(h, g.weight('post_norm', w(t.postNorm), [d]), c.rms_norm_eps);

  g.output(withSharedExpert(g, c, layer, w, h, moeInput), 'h', ['tokens', d]);
  g.output(moeInput, 'moe_input', ['tokens', d]);
  g.output(newK, 'new_k', ['tokens', kvDim]);
  g.output(v, 'new_v', ['tokens', kvDim]);
  return g.toBytes();
}

export function headGraph(c: ModelConfig, w: Weights): Uint8Array {
  const g = new GraphBuilder('head');
  const x = g.input('x', ['tokens', c.hidden_size]);
  const normed = g.rmsNorm(x, g.weight('final_norm', w(tensorNames.finalNorm), [c.hidden_size]), c.rms_norm_eps);
  // Tied embeddings: the LM head is the embedding matrix. Granite-MoE divides the logits by logits_scaling.
  const logits = g.linear(normed, 'lm_head', w(c.tie_word_embeddings ? tensorNames.embed : tensorNames.lmHead), c.vocab_size, c.hidden_size);
  g.output(c.logits_scaling === 1 ? logits : g.op('Div', [logits, g.scalar(c.logits_scaling)]), 'logits', ['tokens', c.vocab_size]);
  return g.toBytes();
}
