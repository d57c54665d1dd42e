/**
 * Batched attention: one step's sequences (prefill chunks and decode tokens mixed) in two ONNX runs per layer
 * instead of one run per sequence.
 *
 *   1. projection (all of the step's tokens, packed [N, d]): input norm, q/k/v, q/k norms, rotary.
 *   2. the new k/v rows are appended to each sequence's KvCache (rows p..p+n), then per *group* of sequences
 *      one core run: each sequence's keys/values rows 0..p+n padded with zeros to the group's Tk, its queries
 *      padded to the group's Tn, an additive mask [B, Tn, Tk] (0 or -inf) for causality and padding; then the
 *      output projection, residual and post-attention norm on the packed tokens.
 *
 * Why a sequence's numbers do not depend on its batch (bit for bit; test/batched-attention.test.ts): every
 * reduction runs along a row of its own — q·k over the head dimension; the softmax over its keys 0..p+n in the
 * same positions as alone, followed only by -inf entries (exp → 0); p·v over its own rows followed by zero rows,
 * with the key axis padded to a multiple of KEY_ALIGNMENT even alone, so the kernel's K tail is the same.
 * The per-sequence path is kept (`attentionGraph`) as the reference the tests compare with.
 *
 * A small step (one group, little to pad) runs both halves as one graph instead (attentionFusedGraph): the same
 * numbers, one run per layer.
 *
 * Groups: decode tokens (n = 1) form one group; prefill chunks join a group while padding stays cheap (see
 * `groupSequences`), so a step is usually 1–2 core runs per layer.
 */
import ort from 'onnxruntime-node';
import { GraphBuilder } from './onnx/builder.ts';
import { tensorNames, type ModelConfig } from './package.ts';
import type { KvCache } from './kv-cache.ts';
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
 * The attention half over padded heads-first keys/values [B, heads, Tk, head_dim]: queries gathered into padded
 * slots, softmax(q·kᵀ/√head_dim + mask)·v, back to packed rows, then h = x + o_proj(·) and moe_input.
 */
function attend(g: GraphBuilder, c: ModelConfig, layer: number, w: Weights, a: {
  x: string; q: string; qIndex: string; outIndex: string; keys: string; values: string; mask: string;
}) {
  const d = c.hidden_size;
  const { heads, kvHeads, group, headDim } = headsOf(c);
  const t = tensorNames.layer(layer);
  const shape = g.op('Shape', [a.mask]); // [B, Tn, Tk]
  const batchQueries = g.op('Slice', [shape, g.int64s([0]), g.int64s([2])]); // [B, Tn]
  const zeroRow = g.weight('zero_row', new Float32Array(d), [1, d]);
  const padded = g.op('Gather', [g.op('Concat', [a.q, zeroRow], { axis: 0 }), a.qIndex], { axis: 0 }); // [B·Tn, d]
  // [B, Tn, heads, head_dim] → [B, heads, Tn, head_dim]
  let qh = g.op('Transpose', [g.op('Reshape', [padded, g.op('Concat', [batchQueries, g.int64s([heads, headDim])], { axis: 0 })])], { perm: [0, 2, 1, 3] });
  let mask = g.op('Unsqueeze', [a.mask, g.int64s([1])]); // [B, 1, Tn, Tk]
  const batch = group > 1 ? g.op('Slice', [shape, g.int64s([0]), g.int64s([1])]) : ''; // [B]
  if (group > 1) {
    // Grouped-query attention: the group's query heads of a key/value head side by side, [B, kvHeads, group·Tn,
    // head_dim] (a reshape: query head h = j·group + r), and the mask repeated for each of them.
    qh = g.op('Reshape', [qh, g.op('Concat', [batch, g.int64s([kvHeads, -1, headDim])], { axis: 0 })]);
    mask = g.op('Tile', [mask, g.int64s([1, 1, group, 1])]);
  }
  // Keys and values arrive heads first (the cache's layout): the transpose of the keys' last two axes folds into
  // the MatMul (onnxruntime's FusedMatMul transB), so nothing is re-laid out here.
  const kT = g.op('Transpose', [a.keys], { perm: [0, 1, 3, 2] }); // [B, kvHeads, head_dim, Tk]
  const scores = g.op('Add', [g.op('Mul', [g.op('MatMul', [qh, kT]), g.scalar(attentionScale(c))]), mask]);
  let attended = g.op('MatMul', [g.op('Softmax', [scores], { axis: -1 }), a.values]); // [B, kvHeads, group·Tn, head_dim]
  if (group > 1) attended = g.op('Reshape', [attended, g.op('Concat', [batch, g.int64s([heads, -1, headDim])], { axis: 0 })]);
  const merged = g.op('Reshape', [g.op('Transpose', [attended], { perm: [0, 2, 1, 3] }), g.int64s([-1, d])]); // [B·Tn, d]
  const rows = g.op('Gather', [merged, a.outIndex], { axis: 0 }); // [G, d]
  const h = g.op('Add', [a.x, residualScaled(g, c, g.linear(rows, 'o_proj', w(t.o), d, d))]);
  const moeInput = g.rmsNorm(h, g.weight('post_norm', w(t.postNorm), [d]), c.rms_norm_eps);
  return { h: withSharedExpert(g, c, layer, w, h, moeInput), moeInput };
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
 * Core graph for one group of B sequences. Inputs:
 *   x [G, d]            the group's tokens' residual stream (packed, sequences back to back)
 *   q [G, d]            their queries (projection output rows)
 *   q_index [B·Tn]      for each padded query slot, its row of q, or G for padding (a zero row)
 *   out_index [G]       for each token, its padded slot b·Tn + i
 *   keys, values [B, kvHeads, Tk, head_dim]  each sequence's cached positions 0..p+n (new ones included), zero beyond
 *   mask [B, Tn, Tk]    0 where a query may look, -inf elsewhere
 * Outputs: h = x + o_proj(attention) and moe_input = post_attention_layernorm(h), both [G, d].
 */
export function attentionCoreGraph(c: ModelConfig, layer: number, w: Weights): Uint8Array {
  const d = c.hidden_size;
  const { kvHeads, headDim } = headsOf(c);
  const g = new GraphBuilder(`attention_core_${layer}`);
  const { h, moeInput } = attend(g, c, layer, w, {
    x: g.input('x', ['tokens', d]), q: g.input('q', ['tokens', d]),
    qIndex: g.input('q_index', ['slots'], 'int64'), outIndex: g.input('out_index', ['tokens'], 'int64'),
    keys: g.input('keys', ['batch', kvHeads, 'keys', headDim]), values: g.input('values', ['batch', kvHeads, 'keys', headDim]),
    mask: g.input('mask', ['batch', 'queries', 'keys']),
  });
  g.output(h, 'h', ['tokens', d]);
  g.output(moeInput, 'moe_input', ['tokens', d]);
  return g.toBytes();
}

/**
 * Both halves in one run, for small steps where a run's fixed cost outweighs copying the padded keys once more:
 * the projection, then the new keys/values scattered into the padded past at each token's position p + i (so the
 * key layout, and every number, equals the two-run path's), then the attention half. Inputs: x, cos, sin (as
 * projectionGraph), q_index, out_index, mask (as attentionCoreGraph), past_keys/past_values [B, kvHeads, Tk,
 * head_dim] (positions 0..p, zero beyond), new_index [N, kvHeads, 3] (b, h, p + i of each token). Outputs: h,
 * moe_input, and new_k/new_v [N, kvDim] for the caller's caches.
 */
export function attentionFusedGraph(c: ModelConfig, layer: number, w: Weights): Uint8Array {
  const d = c.hidden_size;
  const { kvHeads, headDim, kvDim } = headsOf(c);
  const g = new GraphBuilder(`attention_fused_${layer}`);
  const x = g.input('x', ['tokens', d]);
  const { q, k, v } = project(g, c, layer, w, x, g.input('cos', ['tokens', 1, headDim]), g.input('sin', ['tokens', 1, headDim]));
  const newIndex = g.input('new_index', ['tokens', kvHeads, 3], 'int64');
  const scatter = (past: string, rows: string) => g.op('ScatterND', [past, newIndex, g.op('Reshape', [rows, g.int64s([-1, kvHeads, headDim])])]);
  const { h, moeInput } = attend(g, c, layer, w, {
    x, q,
    qIndex: g.input('q_index', ['slots'], 'int64'), outIndex: g.input('out_index', ['tokens'], 'int64'),
    keys: scatter(g.input('past_keys', ['batch', kvHeads, 'keys', headDim]), k),
    values: scatter(g.input('past_values', ['batch', kvHeads, 'keys', headDim]), v),
    mask: g.input('mask', ['batch', 'queries', 'keys']),
  });
  g.output(h, 'h', ['tokens', d]);
  g.output(moeInput, 'moe_input', ['tokens', d]);
  g.output(k, 'new_k', ['tokens', kvDim]);
  g.output(v, 'new_v', ['tokens', kvDim]);
  return g.toBytes();
}

/** One sequence of a step: its cache (length = p, the past) and how many new tokens it brings (n). */
export interface StepSequence {
  cache: KvCache;
  /** First packed token row of this sequence in the step. */
  row: number;
  n: number;
}

/** A group of sequences sharing one core run, and the per-step tensors it needs (the same at every layer). */
export interface AttentionGroup {
  members: StepSequence[];
  /** Tokens of the group, G; maxNew = Tn, keys = Tk. */
  tokens: number;
  maxNew: number;
  keys: number;
  /** Batch rows B of the padded tensors. */
  slots: number;
  /** Whether the group's tokens are rows 0..G of the step in order (no gather or scatter of x and outputs). */
  wholeStep: boolean;
  qIndex: ort.Tensor;
  outIndex: ort.Tensor;
  mask: ort.Tensor;
  /** (b, head, p + i) of each token, [G, kvHeads, 3]: where attentionFusedGraph puts its new keys and values. */
  newIndex: ort.Tensor;
}

/**
 * Splits a step's sequences into core runs. Decode tokens (n = 1) form one group; longer chunks are added to a
 * group, in order of size, while the padded work B·Tn·Tk stays within twice the useful work (plus a small slack so
 * tiny chunks share a run): padding costs compute, an extra run costs tens of µs of fixed overhead.
 */
export function groupSequences(sequences: StepSequence[]): StepSequence[][] {
  const cost = (s: StepSequence) => s.n * (s.cache.length + s.n);
  const decode = sequences.filter((s) => s.n === 1);
  const chunks = sequences.filter((s) => s.n > 1).sort((a, b) => a.n - b.n || a.cache.length - b.cache.length);
  const groups: StepSequence[][] = decode.length > 0 ? [decode] : [];
  let current: StepSequence[] = [];
  let useful = 0;
  for (const s of chunks) {
    const members = [...current, s];
    const maxNew = Math.max(...members.map((m) => m.n));
    const maxKeys = Math.max(...members.map((m) => m.cache.length + m.n));
    if (current.length > 0 && members.length * maxNew * maxKeys > 2 * (useful + cost(s)) + 4096) {
      groups.push(current);
      current = [s];
      useful = cost(s);
    } else {
      current = members;
      useful += cost(s);
    }
  }
  if (current.length > 0) groups.push(current);
  return groups;
}

/**
 * The key axis is always padded to a multiple of this, even for a sequence alone. Measured (onnxruntime 1.30 MLAS
 * MatMul, p·v): with K a multiple of 4, appending zero rows leaves every output bit unchanged; with other K the
 * kernel's tail handling changes the summation (e.g. K = 31 alone vs 151 padded differ in the last bit). 16 leaves
 * room for wider kernels.
 */
export const KEY_ALIGNMENT = 16;

function roundUp(n: number, multiple: number): number {
  return Math.ceil(n / multiple) * multiple;
}

/**
 * Where a group's sequences sit in the padded batch: by default sequence b in row b and Tk the rounded-up longest;
 * a KvSlab (kv-slab.ts) keeps rows across steps, with rows of departed sequences left as holes.
 */
export interface GroupLayout {
  /** Batch row of each member. */
  slotOf: number[];
  /** Batch rows B (holes included). */
  slots: number;
  /** Tk: a multiple of KEY_ALIGNMENT, at least every member's p + n. */
  keys: number;
}

/** Index tensors and the mask of a group (built once per step, before the first layer); `heads`: key/value heads. */
export function planGroup(members: StepSequence[], stepTokens: number, heads: number, layout?: GroupLayout): AttentionGroup {
  const maxNew = Math.max(...members.map((s) => s.n));
  const keys = layout?.keys ?? roundUp(Math.max(...members.map((s) => s.cache.length + s.n)), KEY_ALIGNMENT);
  const slots = layout?.slots ?? members.length;
  const slotOf = layout?.slotOf ?? members.map((_, b) => b);
  const tokens = members.reduce((a, s) => a + s.n, 0);
  const qIndex = new BigInt64Array(slots * maxNew).fill(BigInt(tokens));
  const outIndex = new BigInt64Array(tokens);
  const mask = new Float32Array(slots * maxNew * keys).fill(-Infinity);
  // Padded query slots (and holes) see position 0 only, so that their (discarded) softmax rows stay finite.
  for (let r = 0; r < slots * maxNew; r++) mask[r * keys] = 0;
  const newIndex = new BigInt64Array(tokens * heads * 3);
  let at = 0;
  let wholeStep = tokens === stepTokens;
  members.forEach((s, m) => {
    if (s.row !== at) wholeStep = false;
    const b = slotOf[m];
    const past = s.cache.length;
    for (let i = 0; i < s.n; i++) {
      qIndex[b * maxNew + i] = BigInt(at + i);
      outIndex[at + i] = BigInt(b * maxNew + i);
      for (let h = 0; h < heads; h++) newIndex.set([BigInt(b), BigInt(h), BigInt(past + i)], ((at + i) * heads + h) * 3);
      // Query i sees positions 0..p+i; the rest of its row (later new tokens, padding) stays -inf.
      mask.fill(0, (b * maxNew + i) * keys, (b * maxNew + i) * keys + past + i + 1);
    }
    at += s.n;
  });
  return {
    members, tokens, maxNew, keys, slots, wholeStep,
    qIndex: new ort.Tensor('int64', qIndex, [qIndex.length]),
    outIndex: new ort.Tensor('int64', outIndex, [tokens]),
    mask: new ort.Tensor('float32', mask, [slots, maxNew, keys]),
    newIndex: new ort.Tensor('int64', newIndex, [tokens, heads, 3]),
  };
}

/**
 * Copies each member's cached positions 0..p+n of `layer` (keys or values) into `into` as [B, kvHeads, Tk, head_dim],
 * zeros beyond: one copy per sequence and head. This is the O(B·Tk·kvDim) gather per layer and step that a padded
 * batch costs (bench/trunk.ts measures it). `kvDim`: a cache row's floats.
 */
export function gatherPadded(
  group: AttentionGroup, layer: number, kvDim: number, into: Float32Array, which: 'keys' | 'values', pastOnly = false,
): Float32Array {
  const stride = group.keys * kvDim;
  const out = into.subarray(0, group.members.length * stride);
  group.members.forEach((s, b) => s.cache.gather(layer, which, s.cache.length + (pastOnly ? 0 : s.n), out, b * stride, group.keys));
  return out;
}
