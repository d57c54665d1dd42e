/**
 * What a model package must contain (shared DESIGN.md, "Model package format"): the config.json fields the gateway
 * reads, the Hugging Face OLMoE tensor names and the shapes the config implies. A leaf module, so that both the
 * package check (package-check.ts) and the loader (package.ts) can use it without importing each other.
 */
import { z } from 'zod';

/**
 * config.json as the gateway reads it (Hugging Face `OlmoeConfig` field names). Each field's description says what
 * it must be; the package check quotes it when a field is missing or wrong.
 */
export const modelConfigSchema = z.object({
  model_type: z.enum(['olmoe', 'mixtral', 'qwen2_moe', 'granitemoe']).describe('"olmoe", "mixtral", "qwen2_moe" or "granitemoe" (the Hugging Face architectures the gateway serves; see architectures.ts)'),
  vocab_size: z.number().int().positive().describe('a positive integer: rows of the embedding and LM head'),
  hidden_size: z.number().int().positive().describe('a positive integer: the model width'),
  intermediate_size: z.number().int().positive().describe('a positive integer: the FFN width of each expert'),
  num_hidden_layers: z.number().int().positive().describe('a positive integer: the number of layers'),
  num_attention_heads: z.number().int().positive().describe('a positive integer that divides hidden_size'),
  num_key_value_heads: z.number().int().positive().describe('a positive integer that divides num_attention_heads (fewer: grouped-query attention)'),
  num_experts: z.number().int().positive().describe('a positive integer: experts per layer'),
  num_experts_per_tok: z.number().int().positive()
    .describe('a positive integer at most num_experts: experts chosen per token (1: Switch top-1 routing)'),
  norm_topk_prob: z.boolean().default(false)
    .describe('false (each chosen expert is scaled by its softmax probability) or true (the k chosen probabilities are renormalised to sum to 1)'),
  rms_norm_eps: z.number().positive().describe('a positive number, e.g. 1e-5'),
  rope_theta: z.number().positive().describe('a positive number, e.g. 10000'),
  max_position_embeddings: z.number().int().positive().describe('a positive integer: the context length'),
  tie_word_embeddings: z.boolean().default(false).describe('false (lm_head.weight is its own tensor) or true (the LM head is the embedding matrix)'),
  embedding_multiplier: z.number().positive().default(1).describe('a positive number the embeddings are scaled by (Granite-MoE; 1 elsewhere)'),
  attention_multiplier: z.number().positive().nullable().default(null)
    .describe('the attention scores\' scale (Granite-MoE), or null/absent for 1/√head_dim'),
  residual_multiplier: z.number().positive().default(1).describe('a positive number attention and MoE outputs are scaled by before the residual add (Granite-MoE; 1 elsewhere)'),
  logits_scaling: z.number().positive().default(1).describe('a positive number the logits are divided by (Granite-MoE; 1 elsewhere)'),
  bos_token_id: z.number().int().nonnegative().nullable().default(null)
    .describe('the id of the beginning-of-sequence token, below vocab_size, or null/absent (OLMoE-1B-7B has none)'),
  eos_token_id: z.number().int().nonnegative().describe('the id of the end-of-sequence token, below vocab_size'),
  qk_norm: z.boolean().default(true)
    .describe('whether q and k are RMS-normed after their projections (set from model_type: OLMoE yes, Mixtral no)'),
  sliding_window: z.null().optional().describe('null or absent (no sliding-window attention)'),
  decoder_sparse_step: z.literal(1).optional().describe('1 or absent (every layer is a MoE layer; the gateway has no dense-MLP layers)'),
  mlp_only_layers: z.array(z.number()).max(0).optional().describe('empty or absent (every layer is a MoE layer; the gateway has no dense-MLP layers)'),
  rope_scaling: z.null().optional().describe('null or absent (no RoPE scaling)'),
  clip_qkv: z.null().optional().describe('null or absent (no QKV clipping)'),
  attention_bias: z.boolean().default(false).describe('whether q, k and v projections have biases (set from model_type: Qwen2-MoE yes)'),
  shared_expert_intermediate_size: z.number().int().nonnegative().default(0)
    .describe('the FFN width of the shared expert every token runs beside the routed ones (0 or absent: none; Qwen2-MoE)'),
  shared_expert_gated: z.boolean().default(false)
    .describe('whether the shared expert is scaled by sigmoid(x · shared_expert_gate) (set from model_type: Qwen2-MoE yes)'),
});

export type ModelConfig = z.infer<typeof modelConfigSchema>;

/**
 * The rules between config.json's fields that the schema alone does not check (package check and inspect both
 * apply them): each problem's canonical field and a message without the file name.
 */
export function configRuleProblems(c: ModelConfig): Array<{ field: string; message: string }> {
  const problems: Array<{ field: string; message: string }> = [];
  if (c.num_attention_heads % c.num_key_value_heads !== 0) {
    problems.push({ field: 'num_key_value_heads', message: `num_key_value_heads ${c.num_key_value_heads} must divide num_attention_heads ${c.num_attention_heads} (each key/value head serves the same number of query heads)` });
  }
  if (c.num_experts_per_tok > c.num_experts) {
    problems.push({ field: 'num_experts_per_tok', message: `num_experts_per_tok ${c.num_experts_per_tok} must not exceed the number of experts, ${c.num_experts} (a token chooses that many different experts)` });
  }
  if (c.hidden_size % c.num_attention_heads !== 0 || (c.hidden_size / c.num_attention_heads) % 2 !== 0) {
    problems.push({ field: 'hidden_size', message: `hidden_size ${c.hidden_size} must split into an even head size over num_attention_heads ${c.num_attention_heads} (rotary embeddings rotate pairs)` });
  }
  return problems;
}

/**
 * What `switchyard prune` records in config.json: experts it removed (no weights; the router masks them) and, per
 * pruned expert, its FFN width after pruning (structured pruning stores narrower dense matrices).
 */
export const pruningMetadataSchema = z.object({
  dropped_experts: z.array(z.object({ layer: z.number().int().nonnegative(), expert: z.number().int().nonnegative() })).optional(),
  experts: z.array(z.object({
    layer: z.number().int().nonnegative(), expert: z.number().int().nonnegative(), ffn: z.number().int().positive().optional(),
  })).optional(),
});

export type PruningMetadata = z.infer<typeof pruningMetadataSchema>;

export const tensorNames = {
  embed: 'model.embed_tokens.weight',
  finalNorm: 'model.norm.weight',
  lmHead: 'lm_head.weight',
  layer: (l: number) => ({
    inputNorm: `model.layers.${l}.input_layernorm.weight`,
    q: `model.layers.${l}.self_attn.q_proj.weight`,
    k: `model.layers.${l}.self_attn.k_proj.weight`,
    v: `model.layers.${l}.self_attn.v_proj.weight`,
    o: `model.layers.${l}.self_attn.o_proj.weight`,
    qNorm: `model.layers.${l}.self_attn.q_norm.weight`,
    kNorm: `model.layers.${l}.self_attn.k_norm.weight`,
    postNorm: `model.layers.${l}.post_attention_layernorm.weight`,
    router: `model.layers.${l}.mlp.gate.weight`,
  }),
  /** Attention projection biases (attention_bias). */
  bias: (l: number) => ({
    q: `model.layers.${l}.self_attn.q_proj.bias`,
    k: `model.layers.${l}.self_attn.k_proj.bias`,
    v: `model.layers.${l}.self_attn.v_proj.bias`,
  }),
  /** The shared expert (shared_expert_intermediate_size > 0) and its gate [1, d] (shared_expert_gated). */
  sharedExpert: (l: number) => ({
    gate: `model.layers.${l}.mlp.shared_expert.gate_proj.weight`,
    up: `model.layers.${l}.mlp.shared_expert.up_proj.weight`,
    down: `model.layers.${l}.mlp.shared_expert.down_proj.weight`,
    scale: `model.layers.${l}.mlp.shared_expert_gate.weight`,
  }),
  expert: (l: number, e: number) => ({
    gate: `model.layers.${l}.mlp.experts.${e}.gate_proj.weight`,
    up: `model.layers.${l}.mlp.experts.${e}.up_proj.weight`,
    down: `model.layers.${l}.mlp.experts.${e}.down_proj.weight`,
  }),
};

/** Every tensor the architecture needs, with its expected (unpruned, dense) shape. */
export function expectedTensors(c: ModelConfig): Map<string, number[]> {
  const d = c.hidden_size;
  const shapes = new Map<string, number[]>([
    [tensorNames.embed, [c.vocab_size, d]],
    [tensorNames.finalNorm, [d]],
  ]);
  if (!c.tie_word_embeddings) shapes.set(tensorNames.lmHead, [c.vocab_size, d]);
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const t = tensorNames.layer(l);
    // Grouped-query attention: k and v project to num_key_value_heads heads (k_norm over them, as OLMoE's).
    // (Insertion order is fixed: test fixtures draw random weights in it.)
    const kvDim = (d / c.num_attention_heads) * c.num_key_value_heads;
    shapes.set(t.inputNorm, [d]);
    shapes.set(t.postNorm, [d]);
    if (c.qk_norm) {
      shapes.set(t.qNorm, [d]);
      shapes.set(t.kNorm, [kvDim]);
    }
    shapes.set(t.q, [d, d]);
    shapes.set(t.k, [kvDim, d]);
    shapes.set(t.v, [kvDim, d]);
    shapes.set(t.o, [d, d]);
    if (c.attention_bias) {
      const b = tensorNames.bias(l);
      shapes.set(b.q, [d]);
      shapes.set(b.k, [kvDim]);
      shapes.set(b.v, [kvDim]);
    }
    const shared = c.shared_expert_intermediate_size;
    if (shared > 0) {
      const s = tensorNames.sharedExpert(l);
      shapes.set(s.gate, [shared, d]);
      shapes.set(s.up, [shared, d]);
      shapes.set(s.down, [d, shared]);
      if (c.shared_expert_gated) shapes.set(s.scale, [1, d]);
    }
    shapes.set(t.router, [c.num_experts, d]);
    for (let e = 0; e < c.num_experts; e++) {
      const x = tensorNames.expert(l, e);
      shapes.set(x.gate, [c.intermediate_size, d]);
      shapes.set(x.up, [c.intermediate_size, d]);
      shapes.set(x.down, [d, c.intermediate_size]);
    }
  }
  return shapes;
}
