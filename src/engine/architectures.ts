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
 * (softmax → top-k → renormalised, no q/k norms, grouped-query attention) and Qwen2-MoE (softmax → top-k, biased
 * q/k/v, a gated shared expert).
 */

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

const OLMOE: Architecture = {
  modelType: 'olmoe',
  label: 'OLMoE',
  normalizeConfig: (raw) => ({ ...raw, qk_norm: true }),
  configKey: (canonical) => canonical,
  canonicalName: (name) => name,
  checkpointName: (name) => name,
};

// Mixtral (transformers' MixtralForCausalLM): the MoE block is block_sparse_moe, experts' w1 = gate, w3 = up, w2 = down.
const MIXTRAL: Architecture = {
  modelType: 'mixtral',
  label: 'Mixtral',
  normalizeConfig: (raw) => {
    const { num_local_experts: experts, ...rest } = raw;
    // Mixtral always renormalises the top-k weights (softmax → top-k → divide by their sum) and has no q/k norms.
    return { ...rest, num_experts: experts, norm_topk_prob: true, qk_norm: false };
  },
  configKey: (canonical) => (canonical === 'num_experts' ? 'num_local_experts' : canonical),
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
  canonicalName: (name) => name,
  checkpointName: (name) => name,
};

export const ARCHITECTURES: readonly Architecture[] = [OLMOE, MIXTRAL, QWEN2_MOE];

/** The description for config.json's model_type, or null (the caller names the supported ones). */
export function architectureOf(modelType: unknown): Architecture | null {
  return ARCHITECTURES.find((a) => a.modelType === modelType) ?? null;
}

/** A safetensors header's entries under their canonical names (`entries` is not modified). */
export function canonicalEntries<T>(arch: Architecture, entries: Map<string, T>): Map<string, T> {
  return new Map([...entries].map(([name, entry]) => [arch.canonicalName(name), entry]));
}

/** "olmoe (OLMoE), mixtral (Mixtral)": for messages. */
export function supportedArchitectures(): string {
  return ARCHITECTURES.map((a) => `${a.modelType} (${a.label})`).join(', ');
}
