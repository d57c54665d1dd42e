/**
 * Model families (src/format/architectures.ts): tiny checkpoints written the way transformers writes Mixtral,
 * Qwen2-MoE and Granite-MoE (config keys, tensor names, fused experts, bf16 shards) serve the numbers of a plain TS
 * reference that reads the weights itself, batch-invariantly; each converts to llama.cpp's layout for it; a
 * model_type the gateway does not serve is refused naming the supported ones; problems name tensors as the
 * checkpoint does; a BPE vocabulary with merges works.
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertOlmoeToGguf, permuteRotaryRows } from '../src/convert/olmoe-to-gguf.ts';
import { ggufValue, readGguf, readGgufTensor } from '../src/convert/gguf-reader.ts';
import { Engine } from '../src/engine/engine.ts';
import type { LayerTrace } from '../src/engine/model.ts';
import { loadModelPackage, tensorNames, type ModelConfig } from '../src/engine/package.ts';
import { checkModelPackage } from '../src/engine/package-check.ts';
import { readTensors } from '../src/format/safetensors.ts';
import { inspectConfig } from '../src/planning/inspect.ts';
import { ReferenceModel } from './reference/reference-model.ts';
import { BUNDLED_MODEL, mixtralName, randomTensors, tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig, maxAbsDiff, request } from './helpers.ts';

const PROMPTS = ['Call me Ishmael.', 'a', 'The quick brown fox jumps over the lazy dog', 'naïve café ☕'];

/** A package's model.safetensors header, as text. */
function headerText(dir: string): string {
  const bytes = readFileSync(join(dir, 'model.safetensors'));
  return bytes.subarray(8, 8 + Number(bytes.readBigUInt64LE(0))).toString();
}

/**
 * The gateway against the reference: logits at every position of PROMPTS (1e-4) and the routers' choices; each
 * prompt's logits bit-identical alone and batched; the reference's greedy tokens through the KV cache. Returns the
 * steps' layer traces for family-specific checks.
 */
async function matchesReference(engine: Engine, reference: ReferenceModel, config: ModelConfig): Promise<LayerTrace[][]> {
  const traces: LayerTrace[][] = [];
  for (const prompt of PROMPTS) {
    const ids = engine.codec.encode(prompt);
    const want = reference.forward(ids);
    const got = await engine.model.forward([{ cache: engine.model.newCache(), tokens: ids }], { allPositions: true });
    ids.forEach((_, t) => expect(maxAbsDiff(got.logits[0].subarray(t * config.vocab_size, (t + 1) * config.vocab_size), want.logits[t])).toBeLessThan(1e-4));
    got.layers.forEach((layer, l) => expect(Array.from(layer.expert)).toEqual(want.router[l].flatMap((r) => r.choices.map((ch) => ch.expert))));
    traces.push(got.layers);
  }
  const alone: Float32Array[] = [];
  for (const prompt of PROMPTS) alone.push((await engine.model.forward([{ cache: engine.model.newCache(), tokens: engine.codec.encode(prompt) }])).logits[0]);
  const together = await engine.model.forward(PROMPTS.map((p) => ({ cache: engine.model.newCache(), tokens: engine.codec.encode(p) })));
  together.logits.forEach((l, i) => expect(maxAbsDiff(l, alone[i])).toBe(0));
  const expected = reference.greedy(engine.codec.encode('The whale'), 8);
  expect((await engine.generate(request('The whale', 8), { cache: false })).tokens.map((t) => t.id)).toEqual(expected);
  return traces;
}
// What Mixtral is: renormalised top-2 of its local experts, no q/k norms, fewer key/value heads.
const MIXTRAL = tinyConfig({
  model_type: 'mixtral', hidden_size: 32, num_attention_heads: 4, num_key_value_heads: 2, num_experts: 4,
  num_experts_per_tok: 2, norm_topk_prob: true, qk_norm: false, rope_theta: 1e6, max_position_embeddings: 128,
});

describe('a tiny Mixtral checkpoint', () => {
  const dir = writeTinyPackage(MIXTRAL, 81, undefined, { architecture: 'mixtral' });
  const reference = ReferenceModel.fromPackage(dir, MIXTRAL, mixtralName);
  let engine: Engine;
  beforeAll(async () => {
    engine = await Engine.load(engineConfig(dir, { workers: 2 }));
  });
  afterAll(() => engine.close());

  it('is written with transformers\' Mixtral keys and names', () => {
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect(config).toMatchObject({ model_type: 'mixtral', num_local_experts: 4, num_experts_per_tok: 2 });
    expect(config).not.toHaveProperty('num_experts');
    expect(config).not.toHaveProperty('norm_topk_prob');
    const header = headerText(dir);
    expect(header).toContain('model.layers.0.block_sparse_moe.experts.3.w2.weight');
    expect(header).not.toContain('q_norm');
  });

  it('matches the reference (renormalised top-2 gates), batch-invariantly, and decodes its greedy tokens', async () => {
    for (const layers of await matchesReference(engine, reference, MIXTRAL)) {
      for (const layer of layers) for (let t = 0; t < layer.gate.length / 2; t++) expect(layer.gate[2 * t] + layer.gate[2 * t + 1]).toBeCloseTo(1, 5);
    }
    expect(engine.info().modelType).toBe('mixtral');
  });
});

// What Qwen2-MoE is: softmax → top-k (no renormalisation in Qwen1.5-MoE), biased q/k/v, no q/k norms, and a shared
// expert gated by sigmoid(x · shared_expert_gate) beside the routed ones.
const QWEN2_MOE = tinyConfig({
  model_type: 'qwen2_moe', hidden_size: 32, num_attention_heads: 4, num_key_value_heads: 2, num_experts: 6,
  num_experts_per_tok: 2, norm_topk_prob: false, qk_norm: false, attention_bias: true, shared_expert_intermediate_size: 40,
  shared_expert_gated: true, rope_theta: 1e6, max_position_embeddings: 128,
});

describe('a tiny Qwen2-MoE checkpoint (shared expert)', () => {
  const dir = writeTinyPackage(QWEN2_MOE, 86, undefined, { architecture: 'qwen2_moe' });
  const reference = ReferenceModel.fromPackage(dir, QWEN2_MOE);
  let engine: Engine;
  beforeAll(async () => {
    engine = await Engine.load(engineConfig(dir, { workers: 2 }));
  });
  afterAll(() => engine.close());

  it('is written with transformers\' Qwen2-MoE keys and names', () => {
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect(config).toMatchObject({ model_type: 'qwen2_moe', moe_intermediate_size: 24, shared_expert_intermediate_size: 40, use_sliding_window: false });
    const header = headerText(dir);
    for (const name of ['model.layers.1.mlp.shared_expert.down_proj.weight', 'model.layers.1.mlp.shared_expert_gate.weight', 'model.layers.0.self_attn.k_proj.bias']) {
      expect(header).toContain(name);
    }
  });

  it('matches the reference, batch-invariantly, and decodes its greedy tokens', async () => {
    await matchesReference(engine, reference, QWEN2_MOE);
  });

  it('counts the shared expert among the active parameters', () => {
    const info = engine.info();
    const perExpert = 3 * QWEN2_MOE.hidden_size * QWEN2_MOE.intermediate_size;
    expect(info.parameters.total - info.parameters.activePerToken).toBe(QWEN2_MOE.num_hidden_layers * (QWEN2_MOE.num_experts - 2) * perExpert);
    expect(info.modelType).toBe('qwen2_moe');
  });

  it('refuses dense-MLP layers (decoder_sparse_step, mlp_only_layers), naming the field', () => {
    const other = writeTinyPackage(QWEN2_MOE, 87, undefined, { architecture: 'qwen2_moe' });
    const file = join(other, 'config.json');
    writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, 'utf8')), mlp_only_layers: [1] }));
    expect(checkModelPackage(other).problems.map((p) => p.message).join('\n')).toMatch(/mlp_only_layers is \[1\], but it must be empty or absent/);
  });
});

// What Granite-MoE is: top-k of the logits then softmax (= renormalised), no q/k norms, GQA, multipliers on the
// embeddings, attention scores, residual adds and logits, fused experts, tied embeddings (granite-3.0-1b-a400m's values).
const GRANITE = tinyConfig({
  model_type: 'granitemoe', hidden_size: 32, num_attention_heads: 4, num_key_value_heads: 2, num_experts: 4,
  num_experts_per_tok: 2, norm_topk_prob: true, qk_norm: false, tie_word_embeddings: true, embedding_multiplier: 12,
  attention_multiplier: 0.015625, residual_multiplier: 0.22, logits_scaling: 6, max_position_embeddings: 128,
});

describe('a tiny Granite-MoE checkpoint (multipliers, fused experts, tied embeddings)', () => {
  const dir = writeTinyPackage(GRANITE, 90, undefined, { architecture: 'granitemoe' });
  // The reference gets the canonical (unfused) weights the fixture drew, not the gateway's reading of the file.
  const canonical = randomTensors(GRANITE, 90);
  const reference = new ReferenceModel(GRANITE, (name) => canonical.get(name)!.data);
  let engine: Engine;
  beforeAll(async () => {
    engine = await Engine.load(engineConfig(dir, { workers: 2 }));
  });
  afterAll(() => engine.close());

  it('is written with transformers\' Granite-MoE keys and fused expert tensors', () => {
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect(config).toMatchObject({ model_type: 'granitemoe', num_local_experts: 4, residual_multiplier: 0.22, tie_word_embeddings: true });
    const header = headerText(dir);
    expect(header).toContain('model.layers.1.block_sparse_moe.input_linear.weight');
    expect(header).not.toContain('lm_head');
    expect(header).not.toContain('experts.0');
  });

  it('matches the reference, batch-invariantly, and decodes its greedy tokens', async () => {
    await matchesReference(engine, reference, GRANITE);
  });

  it('is inspected from its config alone', () => {
    const r = inspectConfig(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>, 2 ** 30);
    expect(r.architecture).toBe('Granite-MoE');
    expect(r.parameters.total).toBe([...canonical.values()].reduce((n, t) => n + t.data.length, 0));
  });
});

describe('every family from bf16 shards', () => {
  // As public checkpoints ship: bfloat16 in two shards with an index; the same numbers as those weights in float32.
  it.each([
    ['mixtral', MIXTRAL], ['qwen2_moe', QWEN2_MOE], ['granitemoe', GRANITE], ['olmoe', tinyConfig({ num_experts: 6, num_experts_per_tok: 2 })],
  ] as const)('%s', async (architecture, config) => {
    const sharded = writeTinyPackage(config, 81, undefined, { architecture, weights: 'bf16', shards: 2 });
    const plain = writeTinyPackage(config, 81, undefined, { architecture, weights: 'bf16-as-f32' });
    const [a, b] = await Promise.all([Engine.load(engineConfig(sharded, { workers: 1 })), Engine.load(engineConfig(plain, { workers: 1 }))]);
    try {
      const ids = a.codec.encode('Call me Ishmael.');
      const [x, y] = await Promise.all([a.model.forward([{ cache: a.model.newCache(), tokens: ids }]), b.model.forward([{ cache: b.model.newCache(), tokens: ids }])]);
      expect(maxAbsDiff(x.logits[0], y.logits[0])).toBe(0);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });
});

describe('a byte-level BPE vocabulary with merges (as public checkpoints have)', () => {
  it('tokenizes with the merges, generates and decodes', async () => {
    const dir = writeTinyPackage(tinyConfig({ vocab_size: 261, max_position_embeddings: 128 }), 92);
    const tokenizer = JSON.parse(readFileSync(join(BUNDLED_MODEL, 'tokenizer.json'), 'utf8')) as { model: { vocab: Record<string, number>; merges?: string[] } };
    Object.assign(tokenizer.model.vocab, { Th: 258, The: 259, 'Ġw': 260 }); // byte-level symbols: Ġ is the space
    tokenizer.model.merges = ['T h', 'Th e', 'Ġ w'];
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tokenizer));
    const engine = await Engine.load(engineConfig(dir, { workers: 1 }));
    try {
      expect(engine.codec.encode('The whale')).toEqual([256, 259, 260, ...Buffer.from('hale')]);
      expect(engine.codec.decode([259, 260, 104])).toBe('The wh');
      expect((await engine.generate(request('The whale', 4), { cache: false })).generatedTokens).toBe(4);
    } finally {
      await engine.close();
    }
  });
});

describe('GGUF for llama.cpp, per family', () => {
  it('permutes rotary rows from rotate-half to interleaved pairs, per head', () => {
    // 2 heads of head_dim 4, one input feature: rows h0 [a0 a1 b0 b1] → [a0 b0 a1 b1].
    const w = Float32Array.from([0, 1, 2, 3, 10, 11, 12, 13]);
    expect(Array.from(permuteRotaryRows(w, 2, 1))).toEqual([0, 2, 1, 3, 10, 12, 11, 13]);
  });

  it('writes Mixtral as llama.cpp\'s llama with experts (q and k permuted) and Qwen2-MoE as qwen2moe (biases, shared expert)', () => {
    const mixtral = writeTinyPackage(MIXTRAL, 88, undefined, { architecture: 'mixtral' });
    const m = readGguf(convertOlmoeToGguf({ modelDir: mixtral, outFile: join(mixtral, 'model.gguf') }).outFile);
    expect(ggufValue(m, 'general.architecture')).toBe('llama');
    expect(ggufValue(m, 'llama.attention.head_count_kv')).toBe(2);
    expect(ggufValue(m, 'llama.expert_used_count')).toBe(2);
    const names = new Set(m.tensors.map((t) => t.name));
    expect(names.has('blk.0.ffn_gate_exps.weight') && !names.has('blk.0.attn_q_norm.weight')).toBe(true);
    const pkg = loadModelPackage(mixtral);
    const k = readTensors(pkg.weightsFile, pkg.tensors, [tensorNames.layer(1).k]).get(tensorNames.layer(1).k)!;
    expect(Array.from(readGgufTensor(m, 'blk.1.attn_k.weight'))).toEqual(Array.from(permuteRotaryRows(k, 2, 32)));

    const qwen = writeTinyPackage(QWEN2_MOE, 89, undefined, { architecture: 'qwen2_moe' });
    const q = readGguf(convertOlmoeToGguf({ modelDir: qwen, outFile: join(qwen, 'model.gguf') }).outFile);
    expect(ggufValue(q, 'general.architecture')).toBe('qwen2moe');
    expect(ggufValue(q, 'qwen2moe.expert_shared_feed_forward_length')).toBe(40);
    const shapes = new Map(q.tensors.map((t) => [t.name, t.dims]));
    expect(shapes.get('blk.0.ffn_gate_inp_shexp.weight')).toEqual([32]);
    expect(shapes.get('blk.0.attn_q.bias')).toEqual([32]);
    expect(shapes.has('blk.1.ffn_down_shexp.weight')).toBe(true);

    const granite = writeTinyPackage(GRANITE, 91, undefined, { architecture: 'granitemoe' });
    const gr = readGguf(convertOlmoeToGguf({ modelDir: granite, outFile: join(granite, 'model.gguf') }).outFile);
    expect(ggufValue(gr, 'general.architecture')).toBe('granitemoe');
    expect([ggufValue(gr, 'granitemoe.embedding_scale'), ggufValue(gr, 'granitemoe.residual_scale'), ggufValue(gr, 'granitemoe.logit_scale')]).toEqual([12, Math.fround(0.22), 6]);
    const grNames = new Set(gr.tensors.map((t) => t.name));
    expect(grNames.has('blk.0.ffn_up_exps.weight') && !grNames.has('output.weight')).toBe(true); // tied: llama.cpp uses token_embd
  });
});

describe('architecture checks', () => {
  const problems = (dir: string) => checkModelPackage(dir).problems.map((p) => p.message).join('\n');

  it('refuses a model_type it does not serve, naming the supported ones', () => {
    const dir = writeTinyPackage(tinyConfig(), 82);
    const file = join(dir, 'config.json');
    writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, 'utf8')), model_type: 'deepseek_v2' }));
    expect(problems(dir)).toMatch(/model_type is "deepseek_v2", but the gateway serves olmoe \(OLMoE\), mixtral \(Mixtral\), qwen2_moe \(Qwen2-MoE\), granitemoe \(Granite-MoE\)/);
  });

  it('names Mixtral\'s own config keys and tensor names in problems', () => {
    const dir = writeTinyPackage(MIXTRAL, 83, undefined, { architecture: 'mixtral' });
    const file = join(dir, 'config.json');
    const { num_local_experts: _, ...rest } = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    writeFileSync(file, JSON.stringify(rest));
    expect(problems(dir)).toMatch(/num_local_experts is missing; .*Mixtral's config field/);

    const other = writeTinyPackage(MIXTRAL, 84, undefined, { architecture: 'mixtral', shards: 2 });
    const index = JSON.parse(readFileSync(join(other, 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> };
    const shard = index.weight_map['model.layers.1.block_sparse_moe.experts.2.w3.weight'];
    rmSync(join(other, 'model.safetensors.index.json'));
    writeFileSync(join(other, 'model.safetensors.index.json'), JSON.stringify({ weight_map: Object.fromEntries(Object.entries(index.weight_map).filter(([, f]) => f !== shard)) }));
    // The tensors of the shard the index no longer lists are missing: named as Mixtral names them.
    expect(problems(other)).toMatch(/tensor model\.layers\.1\.block_sparse_moe\.experts\.2\.w3\.weight is missing/);
  });

  it('refuses sliding-window attention, naming the field', () => {
    const dir = writeTinyPackage(MIXTRAL, 85, undefined, { architecture: 'mixtral' });
    const file = join(dir, 'config.json');
    writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, 'utf8')), sliding_window: 4096 }));
    expect(problems(dir)).toMatch(/sliding_window is 4096, but it must be null or absent/);
  });
});
