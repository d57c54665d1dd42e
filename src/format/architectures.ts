/**
 * One description per Mixture-of-Experts family, the way llama.cpp's build_moe_ffn serves every family from one
 * function with flags: how the family's config.json and tensor names map onto the gateway's model, whose canonical
 * form is OLMoE's (package-format.ts: `tensorNames`, `modelConfigSchema`). The package check reads config.json and
 * the safetensors headers through it, so everything after loading sees canonical names and fields:
 *
 *   - config: the family's keys renamed (Mixtral's num_local_experts → num_experts), the flags it implies set
 *     (norm_topk_prob, qk_norm), and what the gateway does not implement refused by the schema;
 *   - tensors: each checkpoint name ↔ its canonical name (Mixtral's block_sparse_moe.experts.E.w1 ↔ OLMoE's
 *     mlp.experts.E.gate_proj).
 *
 * Supported: OLMoE (softmax → top-k, gates renormalised when norm_topk_prob, RMS-normed q and k), Mixtral
 * (softmax → top-k → renormalised, no q/k norms, grouped-query attention), Qwen2-MoE (softmax → top-k, biased
 * q/k/v, a gated shared expert) and Granite-MoE (renormalised top-k, scaling multipliers, fused experts).
 */

import { SAFETENSORS_DTYPE_BITS, type TensorEntry } from './safetensors.ts';

export interface Architecture {
  /** config.json's model_type. */
  modelType: string;
  /** The family's name, for messages. */
  label: string;
  /** config.json with the family's keys and implied flags in canonical form (the input is not modified). */
  normalizeConfig(raw: Record<string, unknown>): Record<string, unknown>;
  /** A canonical config field → the family's own key (for messages). */
  configKey(canonical: string): string;
  /** A checkpoint tensor name → its canonical name (names the family does not rename pass through). */
  canonicalName(name: string): string;
  /** A canonical tensor name → the checkpoint's name. */
  checkpointName(canonical: string): string;
  /**
   * Experts stored fused per layer (Granite-MoE: input_linear [E, 2·F, d] = each expert's gate rows then up rows,
   * output_linear [E, d, F]): the checkpoint's names of the two tensors, relative to `model.layers.L.`.
   */
  fusedExperts?: { input: string; output: string };
}

/**
 * Tensor-name rewrites as [canonical, checkpoint] templates of the part after `model.layers.L.`; `{E}` stands for an
 * expert index.
 */
type NameMap = ReadonlyArray<readonly [canonical: string, checkpoint: string]>;

function renamer(map: NameMap): Pick<Architecture, 'canonicalName' | 'checkpointName'> {
  const pattern = (template: string) => new RegExp(`^${template.replaceAll('.', '\\.').replace('{E}', '(\\d+)')}$`);
  const compiled = map.map(([canonical, checkpoint]) => ({ canonical, checkpoint, from: [pattern(canonical), pattern(checkpoint)] as const }));
  const rewrite = (name: string, side: 0 | 1) => {
    const m = /^(model\.layers\.\d+\.)(.*)$/.exec(name);
    if (!m) return name;
    for (const c of compiled) {
      const hit = c.from[side].exec(m[2]);
      if (hit) return m[1] + (side === 0 ? c.checkpoint : c.canonical).replace('{E}', hit[1] ?? '');
    }
    return name;
  };
  return { canonicalName: (name) => rewrite(name, 1), checkpointName: (name) => rewrite(name, 0) };
}

/** Families whose tensor names are OLMoE's. */
const SAME_NAMES: Pick<Architecture, 'canonicalName' | 'checkpointName'> = { canonicalName: (name) => name, checkpointName: (name) => name };

/**
 * Mixtral's and Granite-MoE's config: the expert count is num_local_experts, the top-k gates are always renormalised
 * (Mixtral: softmax → top-k → divide by their sum; Granite: softmax over the top-k logits, the same), no q/k norms.
 */
const LOCAL_EXPERTS_CONFIG: Pick<Architecture, 'normalizeConfig' | 'configKey'> = {
  normalizeConfig: (raw) => {
    const { num_local_experts: experts, ...rest } = raw;
    return { ...rest, num_experts: experts, norm_topk_prob: true, qk_norm: false };
  },
  configKey: (canonical) => (canonical === 'num_experts' ? 'num_local_experts' : canonical),
};

const OLMOE: Architecture = {
  modelType: 'olmoe',
  label: 'OLMoE',
  normalizeConfig: (raw) => ({ ...raw, qk_norm: true }),
  configKey: (canonical) => canonical,
  ...SAME_NAMES,
};

// Mixtral (transformers' MixtralForCausalLM): the MoE block is block_sparse_moe, experts' w1 = gate, w3 = up, w2 = down.
const MIXTRAL: Architecture = {
  modelType: 'mixtral',
  label: 'Mixtral',
  ...LOCAL_EXPERTS_CONFIG,
  ...renamer([
    ['mlp.gate.weight', 'block_sparse_moe.gate.weight'],
    ['mlp.experts.{E}.gate_proj.weight', 'block_sparse_moe.experts.{E}.w1.weight'],
    ['mlp.experts.{E}.up_proj.weight', 'block_sparse_moe.experts.{E}.w3.weight'],
    ['mlp.experts.{E}.down_proj.weight', 'block_sparse_moe.experts.{E}.w2.weight'],
  ]),
};

// Qwen2-MoE (transformers' Qwen2MoeForCausalLM): OLMoE's tensor names for the router and routed experts, plus
// biased q/k/v, no q/k norms, and a shared expert gated by sigmoid(x · shared_expert_gate) beside the routed ones.
const QWEN2_MOE: Architecture = {
  modelType: 'qwen2_moe',
  label: 'Qwen2-MoE',
  normalizeConfig: (raw) => {
    const { intermediate_size: _dense, moe_intermediate_size: experts, ...rest } = raw;
    return {
      ...rest,
      intermediate_size: experts, attention_bias: true, qk_norm: false, shared_expert_gated: true,
      // sliding_window only counts when use_sliding_window is on (Qwen configs carry a number either way).
      sliding_window: raw.use_sliding_window === true ? raw.sliding_window : null,
    };
  },
  configKey: (canonical) => (canonical === 'intermediate_size' ? 'moe_intermediate_size' : canonical),
  ...SAME_NAMES,
};

// Granite-MoE (transformers' GraniteMoeForCausalLM): top-k of the router logits then softmax over them (= softmax,
// top-k, renormalised), no q/k norms, multipliers on the embeddings, attention scores, residual adds and logits,
// experts fused per layer, usually tied embeddings.
const GRANITE_MOE: Architecture = {
  modelType: 'granitemoe',
  label: 'Granite-MoE',
  ...LOCAL_EXPERTS_CONFIG,
  ...renamer([['mlp.gate.weight', 'block_sparse_moe.router.layer.weight']]),
  fusedExperts: { input: 'block_sparse_moe.input_linear.weight', output: 'block_sparse_moe.output_linear.weight' },
};

export const ARCHITECTURES: readonly Architecture[] = [OLMOE, MIXTRAL, QWEN2_MOE, GRANITE_MOE];

/** The description for config.json's model_type, or null (the caller names the supported ones). */
export function architectureOf(modelType: unknown): Architecture | null {
  return ARCHITECTURES.find((a) => a.modelType === modelType) ?? null;
}

/**
 * A safetensors header's entries under their canonical names (`entries` is not modified). Fused expert tensors
 * become one entry per expert matrix: the byte range of its rows inside the fused tensor (contiguous, so readers
 * need nothing else). A fused tensor whose shape does not split stays as it is (the package check reports it).
 */
export function canonicalEntries(arch: Architecture, entries: Map<string, TensorEntry>): Map<string, TensorEntry> {
  const out = new Map<string, TensorEntry>();
  for (const [name, entry] of entries) {
    const fused = arch.fusedExperts && /^model\.layers\.(\d+)\.(.*)$/.exec(name);
    const split = fused ? splitFused(Number(fused[1]), fused[2], entry, arch.fusedExperts!) : null;
    if (split) for (const [part, e] of split) out.set(part, e);
    else out.set(arch.canonicalName(name), entry);
  }
  return out;
}

function splitFused(layer: number, suffix: string, entry: TensorEntry, names: { input: string; output: string }): Array<[string, TensorEntry]> | null {
  const bytes = (SAFETENSORS_DTYPE_BITS[entry.dtype] ?? 0) / 8;
  if (entry.shape.length !== 3 || bytes === 0) return null;
  const [experts, rows, cols] = entry.shape;
  const slice = (e: number, first: number, count: number): TensorEntry => {
    const begin = entry.begin + (e * rows + first) * cols * bytes;
    return { ...entry, shape: [count, cols], begin, end: begin + count * cols * bytes };
  };
  const parts: Array<[string, TensorEntry]> = [];
  const key = (e: number, which: string) => `model.layers.${layer}.mlp.experts.${e}.${which}_proj.weight`;
  if (suffix === names.input && rows % 2 === 0) {
    for (let e = 0; e < experts; e++) parts.push([key(e, 'gate'), slice(e, 0, rows / 2)], [key(e, 'up'), slice(e, rows / 2, rows / 2)]);
  } else if (suffix === names.output) {
    for (let e = 0; e < experts; e++) parts.push([key(e, 'down'), slice(e, 0, rows)]);
  } else return null;
  return parts;
}

/** "olmoe (OLMoE), mixtral (Mixtral)": for messages. */
export function supportedArchitectures(): string {
  return ARCHITECTURES.map((a) => `${a.modelType} (${a.label})`).join(', ');
}
