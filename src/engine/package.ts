/**
 * A model package (see shared DESIGN.md): config.json, model.safetensors, tokenizer.json.
 * Everything is validated at start-up, so a garbled package fails with a message naming the file, the tensor and
 * the expected versus found shape, rather than a wrong answer later.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve, basename } from 'node:path';
import { z } from 'zod';
import { PackageError, readSafetensorsHeader, readTypedTensors, type TensorEntry } from './safetensors.ts';
import { BITMASK_SUFFIXES } from '../../experts/pruning/bitmask.ts';

export { PackageError };

export const modelConfigSchema = z.object({
  model_type: z.literal('olmoe'),
  vocab_size: z.number().int().positive(),
  hidden_size: z.number().int().positive(),
  intermediate_size: z.number().int().positive(),
  num_hidden_layers: z.number().int().positive(),
  num_attention_heads: z.number().int().positive(),
  num_key_value_heads: z.number().int().positive(),
  num_experts: z.number().int().positive(),
  num_experts_per_tok: z.literal(1, { message: 'only top-1 (Switch) routing is supported' }),
  norm_topk_prob: z.literal(false, { message: 'top-1 gating multiplies by the raw softmax probability' }),
  rms_norm_eps: z.number().positive(),
  rope_theta: z.number().positive(),
  max_position_embeddings: z.number().int().positive(),
  tie_word_embeddings: z.boolean().default(false),
  bos_token_id: z.number().int().nonnegative(),
  eos_token_id: z.number().int().nonnegative(),
  rope_scaling: z.null().optional(),
  clip_qkv: z.null().optional(),
  attention_bias: z.literal(false).optional(),
});

export type ModelConfig = z.infer<typeof modelConfigSchema>;

export interface ModelPackage {
  dir: string;
  id: string;
  config: ModelConfig;
  weightsFile: string;
  tensors: Map<string, TensorEntry>;
  tokenizerJson: object;
  tokenizerConfig: object;
  /** Experts removed by pruning ("layer.expert"): they have no weights and the router never chooses them. */
  droppedExperts: Set<string>;
}

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
  expert: (l: number, e: number) => ({
    gate: `model.layers.${l}.mlp.experts.${e}.gate_proj.weight`,
    up: `model.layers.${l}.mlp.experts.${e}.up_proj.weight`,
    down: `model.layers.${l}.mlp.experts.${e}.down_proj.weight`,
  }),
};

/** Every tensor the architecture needs, with its expected shape. */
export function expectedTensors(c: ModelConfig): Map<string, number[]> {
  const d = c.hidden_size;
  const shapes = new Map<string, number[]>([
    [tensorNames.embed, [c.vocab_size, d]],
    [tensorNames.finalNorm, [d]],
    [tensorNames.lmHead, [c.vocab_size, d]],
  ]);
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const t = tensorNames.layer(l);
    for (const name of [t.inputNorm, t.postNorm, t.qNorm, t.kNorm]) shapes.set(name, [d]);
    for (const name of [t.q, t.k, t.v, t.o]) shapes.set(name, [d, d]);
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

export type ExpertStorage = 'dense' | 'sparse-bitmask';

/** How a weight matrix is stored (dense F32, or compressed-tensors sparse-bitmask) and its dense shape. */
export function describeMatrix(file: string, header: Map<string, TensorEntry>, name: string): { storage: ExpertStorage; shape: [number, number] } {
  const dense = header.get(name);
  if (dense) {
    if (dense.shape.length !== 2) throw new PackageError(`${file}: tensor ${name} has shape [${dense.shape}], expected a matrix`);
    if (dense.dtype !== 'F32') throw new PackageError(`${file}: tensor ${name} has dtype ${dense.dtype}, expected F32`);
    return { storage: 'dense', shape: [dense.shape[0], dense.shape[1]] };
  }
  const missing = BITMASK_SUFFIXES.filter((s) => !header.has(`${name}.${s}`));
  if (missing.length === BITMASK_SUFFIXES.length) throw new PackageError(`${file}: tensor ${name} is missing (neither dense nor sparse-bitmask)`);
  if (missing.length > 0) throw new PackageError(`${file}: sparse-bitmask tensor ${name} lacks ${missing.map((s) => `${name}.${s}`).join(', ')}`);
  const shape = readTypedTensors(file, header, [`${name}.shape`]).get(`${name}.shape`)!;
  return { storage: 'sparse-bitmask', shape: [Number(shape[0]), Number(shape[1])] };
}

/** Checks one expert's matrices: gate and up [ffn, d], down [d, ffn], ffn at most the config's width. */
function checkExpert(file: string, header: Map<string, TensorEntry>, c: ModelConfig, layer: number, expert: number): void {
  const names = tensorNames.expert(layer, expert);
  const ffn = describeMatrix(file, header, names.gate).shape[0];
  const d = c.hidden_size;
  if (ffn < 1 || ffn > c.intermediate_size) {
    throw new PackageError(`${file}: tensor ${names.gate} has ${ffn} rows, expected 1..${c.intermediate_size} (intermediate_size)`);
  }
  for (const [name, shape] of [[names.gate, [ffn, d]], [names.up, [ffn, d]], [names.down, [d, ffn]]] as const) {
    const found = describeMatrix(file, header, name).shape;
    if (found[0] !== shape[0] || found[1] !== shape[1]) throw new PackageError(`${file}: tensor ${name} has shape [${found}], expected [${shape}]`);
  }
}

const droppedSchema = z.object({
  switchyard_pruning: z.object({
    dropped_experts: z.array(z.object({ layer: z.number().int().nonnegative(), expert: z.number().int().nonnegative() })).optional(),
  }).optional(),
});

/** Experts that expert pruning removed (config.json switchyard_pruning.dropped_experts); each layer keeps at least one. */
function readDroppedExperts(configFile: string, c: ModelConfig): Set<string> {
  const parsed = droppedSchema.safeParse(readJson(configFile));
  if (!parsed.success) throw new PackageError(`${configFile}: switchyard_pruning.dropped_experts must list {layer, expert} pairs`);
  const dropped = new Set<string>();
  for (const { layer, expert } of parsed.data.switchyard_pruning?.dropped_experts ?? []) {
    if (layer >= c.num_hidden_layers || expert >= c.num_experts) throw new PackageError(`${configFile}: dropped expert ${layer}.${expert} does not exist`);
    dropped.add(`${layer}.${expert}`);
  }
  for (let l = 0; l < c.num_hidden_layers; l++) {
    if (Array.from({ length: c.num_experts }, (_, e) => dropped.has(`${l}.${e}`)).every(Boolean)) {
      throw new PackageError(`${configFile}: every expert of layer ${l} is dropped; the router needs at least one`);
    }
  }
  return dropped;
}

function readJson(file: string): unknown {
  if (!existsSync(file)) throw new PackageError(`${file}: missing from the model package`);
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch (error) {
    throw new PackageError(`${file}: not valid JSON (${(error as Error).message})`);
  }
}

export function loadModelPackage(dir: string): ModelPackage {
  const root = resolve(dir);
  if (!existsSync(root)) throw new PackageError(`${root}: model package folder does not exist`);
  const configFile = join(root, 'config.json');
  const parsed = modelConfigSchema.safeParse(readJson(configFile));
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new PackageError(`${configFile}: unsupported model config (${issues})`);
  }
  const config = parsed.data;
  if (config.num_key_value_heads !== config.num_attention_heads) {
    throw new PackageError(`${configFile}: num_key_value_heads must equal num_attention_heads (grouped-query attention is not supported)`);
  }
  if (config.hidden_size % config.num_attention_heads !== 0 || (config.hidden_size / config.num_attention_heads) % 2 !== 0) {
    throw new PackageError(`${configFile}: hidden_size ${config.hidden_size} must split into an even head size over ${config.num_attention_heads} heads`);
  }
  if (config.tie_word_embeddings) throw new PackageError(`${configFile}: tie_word_embeddings=true is not supported`);

  const weightsFile = join(root, 'model.safetensors');
  if (!existsSync(weightsFile)) throw new PackageError(`${weightsFile}: missing from the model package`);
  const tensors = readSafetensorsHeader(weightsFile);
  const isExpert = /\.mlp\.experts\.\d+\./;
  const droppedExperts = readDroppedExperts(configFile, config);
  for (let l = 0; l < config.num_hidden_layers; l++) {
    for (let e = 0; e < config.num_experts; e++) if (!droppedExperts.has(`${l}.${e}`)) checkExpert(weightsFile, tensors, config, l, e);
  }
  for (const [name, shape] of expectedTensors(config)) {
    if (isExpert.test(name)) continue; // checked above: dense, structurally pruned or sparse-bitmask
    const found = tensors.get(name);
    if (!found) throw new PackageError(`${weightsFile}: tensor ${name} is missing (expected shape [${shape}])`);
    if (found.dtype !== 'F32') throw new PackageError(`${weightsFile}: tensor ${name} has dtype ${found.dtype}, expected F32`);
    if (found.shape.length !== shape.length || found.shape.some((n, i) => n !== shape[i])) {
      throw new PackageError(`${weightsFile}: tensor ${name} has shape [${found.shape}], expected [${shape}]`);
    }
    const elements = shape.reduce((a, b) => a * b, 1);
    if (found.end - found.begin !== elements * 4) {
      throw new PackageError(`${weightsFile}: tensor ${name} holds ${found.end - found.begin} bytes, expected ${elements * 4}`);
    }
  }
  const tokenizerJson = readJson(join(root, 'tokenizer.json')) as object;
  const tokenizerConfigFile = join(root, 'tokenizer_config.json');
  const tokenizerConfig = existsSync(tokenizerConfigFile) ? (readJson(tokenizerConfigFile) as object) : {};
  return { dir: root, id: basename(root), config, weightsFile, tensors, tokenizerJson, tokenizerConfig, droppedExperts };
}
