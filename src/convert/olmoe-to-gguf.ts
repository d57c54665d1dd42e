/**
 * Our model package (Hugging Face OLMoE folder, see shared DESIGN.md; or a Mixtral, Qwen2-MoE or Granite-MoE one) → a GGUF file
 * llama.cpp loads as architecture `olmoe` (`llama` for Mixtral, `qwen2moe` for Qwen2-MoE, `granitemoe`; see FAMILIES), so
 * `llama-server` can run the same weights for a speed or numbers comparison.
 *
 * The mapping follows llama.cpp's own converter (`convert_hf_to_gguf.py`, class OlmoeModel over TextModel) and what
 * its OLMoE model loads (`src/models/olmoe.cpp`):
 * - tensors are copied bit for bit as F32; the GGUF dims are the torch shape reversed, so the bytes need no
 *   transposition. Q and K are NOT permuted: llama.cpp runs OLMoE with NeoX-style rope (LLAMA_ROPE_TYPE_NEOX), the
 *   same rotate-half layout as Hugging Face (only the LLaMA-style "normal" rope archs need the permutation);
 * - per-layer experts `mlp.experts.M.{gate,up,down}_proj.weight` [out, in] are stacked into one
 *   [n_expert, out, in] tensor each: `ffn_gate_exps`, `ffn_up_exps`, `ffn_down_exps` (ggml dims {in, out, n_expert});
 * - `olmoe.feed_forward_length` is the per-expert width: the widest expert's, which is `intermediate_size` unless
 *   structured pruning narrowed the experts. llama.cpp has one width per stacked tensor, so narrower experts are padded
 *   with zero neurons (zero gate/up rows, zero down columns), which is exact: silu(0)·0 = 0 and a zero column adds
 *   nothing. Sparse-bitmask experts (compressed-tensors) are written densified. Experts removed by `--drop-experts`
 *   are refused: llama.cpp's OLMoE router takes the softmax over every row of ffn_gate_inp and cannot mask one;
 * - llama.cpp's OLMoE graph uses softmax gating without renormalising the top-k weights, i.e. our Switch top-1
 *   gating with expert_used_count 1;
 * - the vocabulary is the byte-level BPE list from tokenizer.json (`tokenizer.ggml.model` "gpt2").
 *
 * The file is written tensor by tensor: at most one tensor (one expert matrix for the stacked ones) is in memory.
 */
import { endianness } from 'node:os';
import { basename } from 'node:path';
import { loadModelPackage, PackageError, tensorNames, type ModelPackage } from '../engine/package.ts';
import { readTensors } from '../format/safetensors.ts';
import { describeMatrix, readDenseMatrix } from '../../experts/expert-weights.ts';
import { GgmlType, gguf, writeGgufFile, type GgufTensorSource, type GgufValue } from './gguf-writer.ts';

/**
 * llama.cpp's architecture for each family we serve, and what its layout needs beyond copying tensors. Mixtral runs
 * as llama.cpp's `llama` with experts, whose rope is the "normal" (interleaved) kind: its q and k rows are permuted
 * from Hugging Face's rotate-half layout as convert_hf_to_gguf.py's LlamaModel does. OLMoE and Qwen2-MoE run with
 * NeoX rope, the same layout as Hugging Face: no permutation. Granite-MoE runs with the normal rope too, and its
 * multipliers go to granitemoe.embedding_scale, attention.scale, residual_scale and logit_scale.
 */
const FAMILIES: Record<string, { arch: string; permuteQK: boolean }> = {
  olmoe: { arch: 'olmoe', permuteQK: false },
  mixtral: { arch: 'llama', permuteQK: true },
  qwen2_moe: { arch: 'qwen2moe', permuteQK: false },
  granitemoe: { arch: 'granitemoe', permuteQK: true },
};

/** The GGUF architecture a package converts to (general.architecture). */
export function ggufArch(pkg: ModelPackage): string {
  return FAMILIES[pkg.config.model_type].arch;
}

/**
 * `tokenizer.ggml.pre`: llama.cpp's pre-tokenizer name. "gpt-2" selects the classic GPT-2 split regex, accepted by
 * every llama.cpp release that knows `tokenizer.ggml.pre`. Our tokenizer has no merges, so every byte is its own
 * token whatever the split: the choice cannot change the token ids (see `vocabNotes` when merges are present).
 */
export const TOKENIZER_PRE = 'gpt-2';

/** llama.cpp token types (gguf-py TokenType). */
export const TokenType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

/** llama.cpp file type (gguf-py LlamaFileType): 0 = all F32. */
export const FILE_TYPE_ALL_F32 = 0;

/** GPT-2's byte → printable unicode character table (used by byte-level BPE vocabularies). */
export function bytesToUnicode(): string[] {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const table: string[] = [];
  let next = 0;
  for (let b = 0; b < 256; b++) table.push(String.fromCodePoint(printable(b) ? b : 256 + next++));
  return table;
}

export interface GgufVocab {
  tokens: string[];
  types: number[];
  merges: string[];
  /** Things a user should know about how llama.cpp will tokenize with this vocabulary. */
  notes: string[];
}

interface TokenizerJson {
  model?: { type?: string; vocab?: Record<string, number>; merges?: unknown[] };
  added_tokens?: { id: number; content: string; special?: boolean }[];
  pre_tokenizer?: { type?: string; pretokenizers?: { type?: string }[] } | null;
}

/**
 * The token list by id from tokenizer.json's `model.vocab` and `added_tokens`: added special tokens are CONTROL,
 * other added tokens USER_DEFINED, the rest NORMAL; ids with no token up to `vocabSize` become `[PAD<id>]` UNUSED
 * (as llama.cpp's converter does), so the list matches the embedding rows.
 */
export function buildVocab(tokenizer: object, vocabSize: number, file = 'tokenizer.json'): GgufVocab {
  const t = tokenizer as TokenizerJson;
  if (t.model?.type !== 'BPE' || typeof t.model.vocab !== 'object' || t.model.vocab === null) {
    throw new PackageError(`${file}: expected a BPE model with a vocab (got model.type ${JSON.stringify(t.model?.type)})`);
  }
  const tokens: (string | undefined)[] = new Array(vocabSize).fill(undefined);
  const types: number[] = new Array(vocabSize).fill(TokenType.UNUSED);
  const place = (id: number, text: string, type: number) => {
    if (!Number.isInteger(id) || id < 0) throw new PackageError(`${file}: token ${JSON.stringify(text)} has bad id ${id}`);
    if (id >= vocabSize) throw new PackageError(`${file}: token ${JSON.stringify(text)} has id ${id}, beyond vocab_size ${vocabSize} in config.json`);
    if (tokens[id] !== undefined && tokens[id] !== text) {
      throw new PackageError(`${file}: id ${id} is both ${JSON.stringify(tokens[id])} and ${JSON.stringify(text)}`);
    }
    tokens[id] = text;
    types[id] = type;
  };
  for (const [text, id] of Object.entries(t.model.vocab)) place(id, text, TokenType.NORMAL);
  for (const added of [...(t.added_tokens ?? [])].sort((a, b) => a.id - b.id)) {
    place(added.id, added.content, added.special ? TokenType.CONTROL : TokenType.USER_DEFINED);
  }
  const seen = new Map<string, number>();
  const list = tokens.map((text, id) => {
    const out = text ?? `[PAD${id}]`;
    if (seen.has(out)) throw new PackageError(`${file}: token ${JSON.stringify(out)} appears at ids ${seen.get(out)} and ${id}`);
    seen.set(out, id);
    return out;
  });

  const missing = bytesToUnicode().filter((ch) => !seen.has(ch));
  if (missing.length > 0) {
    throw new PackageError(`${file}: not a byte-level BPE vocabulary (${missing.length} of the 256 byte tokens are missing, e.g. ${JSON.stringify(missing[0])})`);
  }

  const merges = (t.model.merges ?? []).map((m, i) => {
    if (typeof m === 'string') return m;
    if (Array.isArray(m) && m.length === 2 && m.every((x) => typeof x === 'string')) return `${m[0]} ${m[1]}`;
    throw new PackageError(`${file}: merge ${i} is neither "a b" nor ["a", "b"]`);
  });

  const notes: string[] = [];
  const pre = t.pre_tokenizer;
  const byteLevel = pre?.type === 'ByteLevel' || (pre?.type === 'Sequence' && pre.pretokenizers?.some((p) => p.type === 'ByteLevel'));
  if (!byteLevel) notes.push(`${file}: pre_tokenizer is ${JSON.stringify(pre?.type ?? null)}, not ByteLevel; llama.cpp will treat the vocabulary as GPT-2 byte-level`);
  if (merges.length > 0) {
    notes.push(`${file}: ${merges.length} merges; llama.cpp splits text with the '${TOKENIZER_PRE}' regex before merging, which may differ from this tokenizer's pre-tokenizer`);
  }
  return { tokens: list, types, merges, notes };
}

/** All metadata, in the order written. */
export function ggufMetadata(pkg: ModelPackage, vocab: GgufVocab, name = pkg.id): [string, GgufValue][] {
  const c = pkg.config;
  const expertWidth = expertFfnWidth(pkg);
  const tc = pkg.tokenizerConfig as { add_bos_token?: unknown; add_eos_token?: unknown; chat_template?: unknown };
  const arch = ggufArch(pkg);
  const a = (key: string) => `${arch}.${key}`;
  const kv: [string, GgufValue][] = [
    ['general.architecture', gguf.str(arch)],
    ['general.type', gguf.str('model')],
    ['general.name', gguf.str(name)],
    ['general.file_type', gguf.u32(FILE_TYPE_ALL_F32)],
    ['general.quantization_version', gguf.u32(2)],
    [a('vocab_size'), gguf.u32(c.vocab_size)],
    [a('context_length'), gguf.u32(c.max_position_embeddings)],
    [a('embedding_length'), gguf.u32(c.hidden_size)],
    // Qwen2-MoE's is its dense layers' width (the experts' is expert_feed_forward_length below).
    [a('feed_forward_length'), gguf.u32(arch === 'qwen2moe' ? c.intermediate_size : expertWidth)],
    [a('block_count'), gguf.u32(c.num_hidden_layers)],
    [a('attention.head_count'), gguf.u32(c.num_attention_heads)],
    [a('attention.head_count_kv'), gguf.u32(c.num_key_value_heads)],
    [a('rope.freq_base'), gguf.f32(c.rope_theta)],
    [a('attention.layer_norm_rms_epsilon'), gguf.f32(c.rms_norm_eps)],
    [a('expert_count'), gguf.u32(c.num_experts)],
    [a('expert_used_count'), gguf.u32(c.num_experts_per_tok)],
    ...(arch === 'granitemoe' ? [
      [a('embedding_scale'), gguf.f32(c.embedding_multiplier)],
      [a('attention.scale'), gguf.f32(c.attention_multiplier ?? 1 / Math.sqrt(c.hidden_size / c.num_attention_heads))],
      [a('residual_scale'), gguf.f32(c.residual_multiplier)],
      [a('logit_scale'), gguf.f32(c.logits_scaling)],
    ] as [string, GgufValue][] : []),
    // Qwen2-MoE: the routed experts' width and the shared expert's (feed_forward_length is its dense layers').
    ...(arch === 'qwen2moe' ? [
      [a('expert_feed_forward_length'), gguf.u32(expertWidth)],
      [a('expert_shared_feed_forward_length'), gguf.u32(c.shared_expert_intermediate_size)],
    ] as [string, GgufValue][] : []),
    ['tokenizer.ggml.model', gguf.str('gpt2')],
    ['tokenizer.ggml.pre', gguf.str(TOKENIZER_PRE)],
    ['tokenizer.ggml.tokens', gguf.strings(vocab.tokens)],
    ['tokenizer.ggml.token_type', gguf.i32s(vocab.types)],
    ['tokenizer.ggml.merges', gguf.strings(vocab.merges)],
    ...(c.bos_token_id !== null ? [['tokenizer.ggml.bos_token_id', gguf.u32(c.bos_token_id)]] as [string, GgufValue][] : []),
    ['tokenizer.ggml.eos_token_id', gguf.u32(c.eos_token_id)],
    ['tokenizer.ggml.add_bos_token', gguf.bool(typeof tc.add_bos_token === 'boolean' ? tc.add_bos_token : true)],
  ];
  if (typeof tc.add_eos_token === 'boolean') kv.push(['tokenizer.ggml.add_eos_token', gguf.bool(tc.add_eos_token)]);
  if (typeof tc.chat_template === 'string' && tc.chat_template.length > 0) kv.push(['tokenizer.chat_template', gguf.str(tc.chat_template)]);
  return kv;
}

/** GGUF tensor name → the package tensor(s) it is made of, in the order written. */
export interface TensorMapping {
  name: string;
  /** torch shape of the GGUF tensor (stacked experts: [n_expert, out, in]). */
  shape: number[];
  /** Package tensors concatenated in this order (one, or one per expert). */
  sources: string[];
  /** Rewrites a source's data (Mixtral's q/k row permutation); absent: copied as it is. */
  transform?: (data: Float32Array) => Float32Array;
  /**
   * Expert matrices: each source is read dense (sparse-bitmask decompressed) and padded with zeros to this
   * [rows, cols] (narrower experts after structured pruning).
   */
  matrix?: [number, number];
}

/**
 * Refuses a package llama.cpp cannot run as it is: experts removed by `switchyard prune --drop-experts` have no
 * weights, and llama.cpp's routers (b4747) take the softmax and top-k over every expert with no way to mask one.
 * @throws PackageError naming the dropped experts and what to do instead.
 */
export function assertNoDroppedExperts(pkg: ModelPackage): void {
  if (pkg.droppedExperts.size === 0) return;
  const list = [...pkg.droppedExperts].sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  const shown = list.slice(0, 4).map((k) => { const [l, e] = k.split('.'); return `layer ${l} expert ${e}`; }).join(', ');
  throw new PackageError(`${pkg.dir}/config.json: switchyard_pruning.dropped_experts lists ${list.length} expert${list.length === 1 ? '' : 's'} removed by pruning (${shown}${list.length > 4 ? ', …' : ''}), but llama.cpp's ${ggufArch(pkg)} router takes the softmax over every expert and cannot mask removed ones, so the GGUF would send tokens to experts with no weights; convert the package pruned without --drop-experts, or serve this one with switchyard serve`);
}

/**
 * The FFN width every expert is written at: the widest live expert's (structured pruning may narrow experts unevenly;
 * sparse-bitmask experts keep their dense width). Reads only the safetensors header and sparse `.shape` parts.
 */
export function expertFfnWidth(pkg: ModelPackage): number {
  const c = pkg.config;
  let widest = 0;
  for (let l = 0; l < c.num_hidden_layers; l++) {
    for (let e = 0; e < c.num_experts; e++) {
      if (pkg.droppedExperts.has(`${l}.${e}`)) continue;
      widest = Math.max(widest, describeMatrix(pkg.weightsFile, pkg.tensors, tensorNames.expert(l, e).gate).shape[0]);
    }
  }
  return widest;
}

/**
 * A row-major [rows, cols] matrix placed in the top-left corner of a zero [toRows, toCols] one (toRows ≥ rows,
 * toCols ≥ cols). For an expert this adds neurons whose weights are all zero, which leaves its output unchanged.
 */
export function padMatrix(data: Float32Array, [rows, cols]: readonly [number, number], [toRows, toCols]: readonly [number, number]): Float32Array {
  if (rows === toRows && cols === toCols) return data;
  if (rows > toRows || cols > toCols) throw new Error(`cannot pad a [${rows}, ${cols}] matrix to [${toRows}, ${toCols}]`);
  const out = new Float32Array(toRows * toCols);
  for (let r = 0; r < rows; r++) out.set(data.subarray(r * cols, (r + 1) * cols), r * toCols);
  return out;
}

/**
 * Rows of a q or k projection [heads · head_dim, in] from Hugging Face's rotate-half order (each head's first half of
 * rotary dimensions, then its second) to the interleaved pairs llama.cpp's "normal" rope reads: row s·(hd/2) + j of a
 * head moves to 2j + s (convert_hf_to_gguf.py, LlamaModel.permute).
 */
export function permuteRotaryRows(w: Float32Array, heads: number, inFeatures: number): Float32Array {
  const out = new Float32Array(w.length);
  const headDim = w.length / inFeatures / heads;
  const half = headDim / 2;
  for (let h = 0; h < heads; h++) {
    for (let s = 0; s < 2; s++) {
      for (let j = 0; j < half; j++) {
        const from = (h * headDim + s * half + j) * inFeatures;
        out.set(w.subarray(from, from + inFeatures), (h * headDim + 2 * j + s) * inFeatures);
      }
    }
  }
  return out;
}

/**
 * Every GGUF tensor and the package tensors it is made of, in the order written. Stacked experts are
 * [n_expert, ffn, hidden] (gate, up) and [n_expert, hidden, ffn] (down) with ffn the widest expert's width.
 * @throws PackageError for a package with dropped experts (assertNoDroppedExperts).
 */
export function tensorMappings(pkg: ModelPackage): TensorMapping[] {
  assertNoDroppedExperts(pkg);
  const c = pkg.config;
  const ffn = expertFfnWidth(pkg);
  const shapeOf = (n: string) => pkg.tensors.get(n)!.shape;
  const one = (name: string, source: string, transform?: TensorMapping['transform']): TensorMapping =>
    ({ name, shape: [...shapeOf(source)], sources: [source], ...(transform ? { transform } : {}) });
  const permute = FAMILIES[c.model_type].permuteQK;
  const rotary = (heads: number) => (permute ? (w: Float32Array) => permuteRotaryRows(w, heads, c.hidden_size) : undefined);
  const out: TensorMapping[] = [one('token_embd.weight', tensorNames.embed)];
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const t = tensorNames.layer(l);
    const blk = (s: string) => `blk.${l}.${s}.weight`;
    out.push(
      one(blk('attn_norm'), t.inputNorm),
      one(blk('attn_q'), t.q, rotary(c.num_attention_heads)),
      one(blk('attn_k'), t.k, rotary(c.num_key_value_heads)),
      one(blk('attn_v'), t.v),
      one(blk('attn_output'), t.o),
    );
    if (c.qk_norm) out.push(one(blk('attn_q_norm'), t.qNorm), one(blk('attn_k_norm'), t.kNorm));
    if (c.attention_bias) {
      const b = tensorNames.bias(l);
      out.push(one(`blk.${l}.attn_q.bias`, b.q), one(`blk.${l}.attn_k.bias`, b.k), one(`blk.${l}.attn_v.bias`, b.v));
    }
    out.push(one(blk('ffn_norm'), t.postNorm), one(blk('ffn_gate_inp'), t.router));
    if (c.shared_expert_intermediate_size > 0) {
      const s = tensorNames.sharedExpert(l);
      out.push(one(blk('ffn_gate_shexp'), s.gate), one(blk('ffn_up_shexp'), s.up), one(blk('ffn_down_shexp'), s.down));
      // [1, d] in the checkpoint, a vector {n_embd} in llama.cpp: the same bytes.
      if (c.shared_expert_gated) out.push({ name: blk('ffn_gate_inp_shexp'), shape: [c.hidden_size], sources: [s.scale] });
    }
    for (const [gg, key] of [['ffn_gate_exps', 'gate'], ['ffn_up_exps', 'up'], ['ffn_down_exps', 'down']] as const) {
      const sources = Array.from({ length: c.num_experts }, (_, e) => tensorNames.expert(l, e)[key]);
      const matrix: [number, number] = key === 'down' ? [c.hidden_size, ffn] : [ffn, c.hidden_size];
      out.push({ name: blk(gg), shape: [c.num_experts, ...matrix], sources, matrix });
    }
  }
  out.push(one('output_norm.weight', tensorNames.finalNorm));
  // Tied embeddings: no output.weight; llama.cpp then uses token_embd for the LM head.
  if (!c.tie_word_embeddings) out.push(one('output.weight', tensorNames.lmHead));
  return out;
}

export interface ConvertOptions {
  modelDir: string;
  outFile: string;
  /** general.name; default: the package folder name. */
  name?: string;
}

export interface ConvertResult {
  outFile: string;
  tensors: number;
  metadataKeys: number;
  bytes: number;
  notes: string[];
}

export function convertOlmoeToGguf(options: ConvertOptions): ConvertResult {
  if (endianness() !== 'LE') throw new Error('GGUF conversion needs a little-endian host (tensor bytes are copied as they are)');
  const pkg = loadModelPackage(options.modelDir);
  if (pkg.config.model_type === 'olmoe' && pkg.config.num_key_value_heads !== pkg.config.num_attention_heads) {
    // llama.cpp's OLMoE loader (b4747) wants k_norm over all heads; Hugging Face's OLMoE normalises the key/value heads.
    throw new PackageError(`${pkg.dir}/config.json: num_key_value_heads ${pkg.config.num_key_value_heads} < num_attention_heads ${pkg.config.num_attention_heads} (grouped-query attention), but llama.cpp's OLMoE architecture expects k_norm over all ${pkg.config.num_attention_heads} heads; only packages without grouped-query attention convert to GGUF`);
  }
  if ((pkg.config.model_type === 'olmoe' || pkg.config.model_type === 'qwen2_moe') && pkg.config.norm_topk_prob) {
    // llama.cpp's OLMoE and Qwen2-MoE graphs scale each chosen expert by its raw softmax probability (its llama and
    // granitemoe graphs renormalise): they would serve other numbers.
    throw new PackageError(`${pkg.dir}/config.json: norm_topk_prob is true, but llama.cpp's ${ggufArch(pkg)} architecture does not renormalise the top-k gates; only packages with norm_topk_prob false convert to GGUF`);
  }
  assertNoDroppedExperts(pkg);
  const vocab = buildVocab(pkg.tokenizerJson, pkg.config.vocab_size, `${pkg.dir}/tokenizer.json`);
  const metadata = ggufMetadata(pkg, vocab, options.name ?? basename(pkg.dir));
  const sources: GgufTensorSource[] = tensorMappings(pkg).map((m) => ({
    name: m.name,
    shape: m.shape,
    type: GgmlType.F32,
    *chunks() {
      for (const source of m.sources) {
        let data: Float32Array;
        if (m.matrix) {
          const read = readDenseMatrix(pkg.weightsFile, pkg.tensors, source);
          data = padMatrix(read.data, read.shape, m.matrix);
        } else {
          data = readTensors(pkg.weightsFile, pkg.tensors, [source]).get(source)!;
        }
        if (m.transform) data = m.transform(data);
        yield new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      }
    },
  }));
  const layout = writeGgufFile(options.outFile, metadata, sources);
  return { outFile: options.outFile, tensors: sources.length, metadataKeys: metadata.length, bytes: layout.fileSize, notes: vocab.notes };
}
