/**
 * `switchyard convert-gguf`: a tiny random package converted to GGUF and read back — header, every metadata value,
 * tensor names / dims / data / alignment, the byte-level vocabulary — plus the GGUF encoder's bytes and the CLI.
 */
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { main, type CliIo } from '../src/cli.ts';
import { readGguf, readGgufTensor, ggufValue, type GgufFile } from '../src/convert/gguf-reader.ts';
import { encodeGgufHeader, gguf, GgmlType, GgufError, GgufType, writeGgufFile } from '../src/convert/gguf-writer.ts';
import { convertOlmoeToGguf, padMatrix } from '../src/convert/olmoe-to-gguf.ts';
import { prunePackage } from '../src/pruning/prune-package.ts';
import { loadModelPackage, tensorNames } from '../src/engine/package.ts';
import { readTensors } from '../src/format/safetensors.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';

/** GPT-2 byte → unicode, written out independently of the converter's table. */
function gpt2ByteChars(): string[] {
  const direct = [...range(33, 126), ...range(161, 172), ...range(174, 255)];
  const chars: string[] = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) chars.push(String.fromCharCode(direct.includes(b) ? b : 256 + extra++));
  return chars;
}
function range(a: number, b: number): number[] {
  return Array.from({ length: b - a + 1 }, (_, i) => a + i);
}

function captureIo(): CliIo & { out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  return { out, err, stdout: (t) => void out.push(t), stderr: (t) => void err.push(t) };
}

const config = tinyConfig();
const L = config.num_hidden_layers;
const E = config.num_experts;
const d = config.hidden_size;
const ff = config.intermediate_size;

describe('convert-gguf on a tiny package', () => {
  let dir: string;
  let outFile: string;
  let g: GgufFile;

  beforeAll(() => {
    dir = writeTinyPackage(config, 3);
    outFile = join(mkdtempSync(join(tmpdir(), 'switchyard-gguf-')), 'tiny.gguf');
    const result = convertOlmoeToGguf({ modelDir: dir, outFile });
    expect(result.notes).toEqual([]);
    g = readGguf(outFile);
  });

  it('has the GGUF v3 header, little-endian, default alignment', () => {
    const head = readFileSync(outFile).subarray(0, 24);
    expect(head.subarray(0, 4).toString('latin1')).toBe('GGUF');
    expect(head.readUInt32LE(4)).toBe(3);
    expect(head.readBigUInt64LE(8)).toBe(BigInt(g.tensors.length));
    expect(head.readBigUInt64LE(16)).toBe(BigInt(g.metadata.size));
    expect(g.version).toBe(3);
    expect(g.alignment).toBe(32);
    expect(g.metadata.has('general.alignment')).toBe(false);
    expect(existsSync(`${outFile}.tmp`)).toBe(false);
  });

  it('writes the olmoe hyperparameters with llama.cpp key names and types', () => {
    const expected: [string, number, unknown][] = [
      ['general.architecture', GgufType.STRING, 'olmoe'],
      ['general.name', GgufType.STRING, dir.split('/').pop()],
      ['general.file_type', GgufType.UINT32, 0],
      ['olmoe.context_length', GgufType.UINT32, config.max_position_embeddings],
      ['olmoe.embedding_length', GgufType.UINT32, d],
      ['olmoe.feed_forward_length', GgufType.UINT32, ff],
      ['olmoe.block_count', GgufType.UINT32, L],
      ['olmoe.attention.head_count', GgufType.UINT32, config.num_attention_heads],
      ['olmoe.attention.head_count_kv', GgufType.UINT32, config.num_key_value_heads],
      ['olmoe.rope.freq_base', GgufType.FLOAT32, config.rope_theta],
      ['olmoe.attention.layer_norm_rms_epsilon', GgufType.FLOAT32, Math.fround(config.rms_norm_eps)],
      ['olmoe.expert_count', GgufType.UINT32, E],
      ['olmoe.expert_used_count', GgufType.UINT32, 1],
      ['tokenizer.ggml.model', GgufType.STRING, 'gpt2'],
      ['tokenizer.ggml.pre', GgufType.STRING, 'gpt-2'],
      ['tokenizer.ggml.bos_token_id', GgufType.UINT32, 256],
      ['tokenizer.ggml.eos_token_id', GgufType.UINT32, 257],
      ['tokenizer.ggml.add_bos_token', GgufType.BOOL, true],
    ];
    for (const [key, type, value] of expected) {
      const entry = g.metadata.get(key);
      expect(entry, key).toBeDefined();
      expect(entry!.type, key).toBe(type);
      expect(entry!.value, key).toEqual(value);
    }
    // the chat template travels with the weights
    const tokenizerConfig = JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8'));
    expect(ggufValue(g, 'tokenizer.chat_template')).toBe(tokenizerConfig.chat_template);
  });

  it('writes the byte-level vocabulary from tokenizer.json, specials as control tokens, no merges', () => {
    const tokens = g.metadata.get('tokenizer.ggml.tokens')!;
    expect([tokens.type, tokens.itemType]).toEqual([GgufType.ARRAY, GgufType.STRING]);
    const list = tokens.value as string[];
    expect(list).toHaveLength(config.vocab_size);
    expect(list.slice(0, 256)).toEqual(gpt2ByteChars());
    expect(list[32]).toBe('Ġ');
    expect(list[10]).toBe('Ċ');
    expect(list.slice(256)).toEqual(['<|bos|>', '<|eos|>']);
    // the same list as the package's own tokenizer.json, id by id
    const tj = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8'));
    for (const [text, id] of Object.entries(tj.model.vocab as Record<string, number>)) expect(list[id]).toBe(text);

    const types = g.metadata.get('tokenizer.ggml.token_type')!;
    expect([types.type, types.itemType]).toEqual([GgufType.ARRAY, GgufType.INT32]);
    expect(types.value).toEqual([...new Array(256).fill(1), 3, 3]);

    const merges = g.metadata.get('tokenizer.ggml.merges')!;
    expect([merges.type, merges.itemType, merges.value]).toEqual([GgufType.ARRAY, GgufType.STRING, []]);
  });

  it('writes 3 + L·(9 + 3) tensors with llama.cpp olmoe names, ggml dims = reversed torch shape, F32', () => {
    const perLayer = ['attn_norm', 'attn_q', 'attn_k', 'attn_v', 'attn_output', 'attn_q_norm', 'attn_k_norm', 'ffn_norm', 'ffn_gate_inp', 'ffn_gate_exps', 'ffn_up_exps', 'ffn_down_exps'];
    expect(g.tensors).toHaveLength(3 + L * (9 + 3));
    const names = g.tensors.map((t) => t.name).sort();
    const expectedNames = ['token_embd.weight', 'output_norm.weight', 'output.weight'];
    for (let l = 0; l < L; l++) for (const s of perLayer) expectedNames.push(`blk.${l}.${s}.weight`);
    expect(names).toEqual(expectedNames.sort());

    const dims = (name: string) => g.tensors.find((t) => t.name === name)!.dims;
    // what llama.cpp's OLMoE loader asks for (src/models/olmoe.cpp), in ggml order
    expect(dims('token_embd.weight')).toEqual([d, config.vocab_size]);
    expect(dims('output.weight')).toEqual([d, config.vocab_size]);
    expect(dims('output_norm.weight')).toEqual([d]);
    for (let l = 0; l < L; l++) {
      expect(dims(`blk.${l}.attn_q.weight`)).toEqual([d, d]);
      expect(dims(`blk.${l}.attn_k_norm.weight`)).toEqual([d]);
      expect(dims(`blk.${l}.ffn_gate_inp.weight`)).toEqual([d, E]);
      expect(dims(`blk.${l}.ffn_gate_exps.weight`)).toEqual([d, ff, E]);
      expect(dims(`blk.${l}.ffn_up_exps.weight`)).toEqual([d, ff, E]);
      expect(dims(`blk.${l}.ffn_down_exps.weight`)).toEqual([ff, d, E]);
    }
    expect(g.tensors.every((t) => t.type === GgmlType.F32)).toBe(true);
  });

  it('lays tensor data out aligned to 32 bytes, back to back, up to the end of the file', () => {
    expect(g.dataStart % 32).toBe(0);
    let expectedOffset = 0;
    for (const t of g.tensors) {
      expect(t.offset % 32, t.name).toBe(0);
      expect(t.offset, t.name).toBe(expectedOffset);
      const bytes = t.dims.reduce((a, b) => a * b, 1) * 4;
      expectedOffset += Math.ceil(bytes / 32) * 32;
    }
    expect(g.dataStart + expectedOffset).toBe(g.fileSize);
  });

  it('copies every tensor bit for bit (experts stacked by index, Q/K not permuted)', () => {
    const pkg = loadModelPackage(dir);
    const source = (name: string) => readTensors(pkg.weightsFile, pkg.tensors, [name]).get(name)!;
    const same = (ggufName: string, hfName: string) => expect(readGgufTensor(g, ggufName), ggufName).toEqual(source(hfName));
    same('token_embd.weight', tensorNames.embed);
    same('output_norm.weight', tensorNames.finalNorm);
    same('output.weight', tensorNames.lmHead);
    for (let l = 0; l < L; l++) {
      const t = tensorNames.layer(l);
      same(`blk.${l}.attn_norm.weight`, t.inputNorm);
      same(`blk.${l}.attn_q.weight`, t.q);
      same(`blk.${l}.attn_k.weight`, t.k);
      same(`blk.${l}.attn_v.weight`, t.v);
      same(`blk.${l}.attn_output.weight`, t.o);
      same(`blk.${l}.attn_q_norm.weight`, t.qNorm);
      same(`blk.${l}.attn_k_norm.weight`, t.kNorm);
      same(`blk.${l}.ffn_norm.weight`, t.postNorm);
      same(`blk.${l}.ffn_gate_inp.weight`, t.router);
      for (const [gg, key] of [['ffn_gate_exps', 'gate'], ['ffn_up_exps', 'up'], ['ffn_down_exps', 'down']] as const) {
        const stacked = readGgufTensor(g, `blk.${l}.${gg}.weight`);
        const per = ff * d;
        expect(stacked.length).toBe(E * per);
        for (let e = 0; e < E; e++) expect(stacked.subarray(e * per, (e + 1) * per), `${gg} ${l}/${e}`).toEqual(source(tensorNames.expert(l, e)[key]));
      }
    }
    // the example from the spec, spelled out
    const up = readGgufTensor(g, 'blk.1.ffn_up_exps.weight');
    expect(up.subarray(2 * ff * d, 3 * ff * d)).toEqual(source('model.layers.1.mlp.experts.2.up_proj.weight'));
    expect(up.subarray(2 * ff * d, 3 * ff * d)).not.toEqual(source('model.layers.1.mlp.experts.1.up_proj.weight'));
  });
});

describe('convert-gguf on pruned packages', () => {
  it('pads a narrower expert matrix with zeros at the end of each row and below, and leaves a full one as it is', () => {
    const m = Float32Array.from([1, 2, 3, 4, 5, 6]);
    expect(Array.from(padMatrix(m, [2, 3], [3, 4]))).toEqual([1, 2, 3, 0, 4, 5, 6, 0, 0, 0, 0, 0]);
    expect(padMatrix(m, [2, 3], [2, 3])).toBe(m);
    expect(() => padMatrix(m, [2, 3], [1, 3])).toThrow(/cannot pad/);
  });

  it('refuses a package with dropped experts, naming them and what to do instead (CLI: exit 1, no file)', async () => {
    const dense = writeTinyPackage(config, 7);
    writeFileSync(join(dense, 'calibration.txt'), 'Call me Ishmael. Some years ago, never mind how long precisely. '.repeat(4));
    const dropped = mkdtempSync(join(tmpdir(), 'switchyard-gguf-dropped-'));
    const result = await prunePackage({ modelDir: dense, outDir: dropped, method: 'magnitude', sparsity: 0, dropExperts: 0.25 });
    expect(result.dropped).toHaveLength(L);
    const out = join(mkdtempSync(join(tmpdir(), 'switchyard-gguf-')), 'dropped.gguf');
    const first = result.dropped[0];
    const message = new RegExp(`dropped_experts lists ${L} experts removed by pruning \\(layer ${first.layer} expert ${first.expert}, .*cannot mask removed ones.*pruned without --drop-experts`);
    expect(() => convertOlmoeToGguf({ modelDir: dropped, outFile: out })).toThrow(message);
    const io = captureIo();
    expect(await main(['convert-gguf', '--model', dropped, '--out', out], io)).toBe(1);
    expect(io.err.join('\n')).toMatch(message);
    expect(existsSync(out) || existsSync(`${out}.tmp`)).toBe(false);
  }, 60_000);
});

describe('GGUF encoder', () => {
  it('encodes header, KV pairs and tensor infos byte for byte', () => {
    const layout = encodeGgufHeader([['a.b', gguf.u32(7)], ['s', gguf.str('hé')], ['arr', gguf.i32s([-1, 2])], ['e', gguf.strings([])]], [
      { name: 'w', shape: [2, 3], type: GgmlType.F32 },
      { name: 'v', shape: [5], type: GgmlType.F32 },
    ]);
    const expected = Buffer.concat([
      Buffer.from('GGUF', 'latin1'),
      u32(3), u64(2), u64(4),
      str('a.b'), u32(GgufType.UINT32), u32(7),
      str('s'), u32(GgufType.STRING), str('hé'),
      str('arr'), u32(GgufType.ARRAY), u32(GgufType.INT32), u64(2), i32(-1), i32(2),
      str('e'), u32(GgufType.ARRAY), u32(GgufType.STRING), u64(0),
      // w: torch [2, 3] → ggml dims 3, 2; 24 bytes → next tensor at 32
      str('w'), u32(2), u64(3), u64(2), u32(0), u64(0),
      str('v'), u32(1), u64(5), u32(0), u64(32),
    ]);
    expect(layout.header.subarray(0, expected.length)).toEqual(expected);
    expect(layout.header.length % 32).toBe(0);
    expect(layout.header.subarray(expected.length).every((b) => b === 0)).toBe(true);
    expect(layout.tensors).toEqual([{ name: 'w', offset: 0, bytes: 24 }, { name: 'v', offset: 32, bytes: 20 }]);
    expect(layout.fileSize).toBe(layout.header.length + 64);
  });

  it('honours general.alignment and rejects bad input', () => {
    const layout = encodeGgufHeader([['general.alignment', gguf.u32(64)]], [{ name: 'w', shape: [3], type: GgmlType.F32 }, { name: 'v', shape: [1], type: GgmlType.F32 }]);
    expect(layout.header.length % 64).toBe(0);
    expect(layout.tensors[1].offset).toBe(64);
    expect(() => encodeGgufHeader([['general.alignment', gguf.u32(48)]], [])).toThrow(GgufError);
    expect(() => encodeGgufHeader([['k', gguf.u32(1)], ['k', gguf.u32(2)]], [])).toThrow(/appears twice/);
    expect(() => encodeGgufHeader([['k', gguf.u32(-1)]], [])).toThrow(/not a u32/);
    expect(() => encodeGgufHeader([], [{ name: 'x'.repeat(64), shape: [1], type: GgmlType.F32 }])).toThrow(/64 bytes/);
    expect(() => encodeGgufHeader([], [{ name: 'x', shape: [1, 1, 1, 1, 1], type: GgmlType.F32 }])).toThrow(/dims/);
  });

  it('refuses a tensor whose bytes do not match its shape and leaves no file behind', () => {
    const file = join(mkdtempSync(join(tmpdir(), 'switchyard-gguf-')), 'bad.gguf');
    const tensors = [{ name: 'w', shape: [4], type: GgmlType.F32, chunks: () => [new Uint8Array(12)] }];
    expect(() => writeGgufFile(file, [], tensors)).toThrow(/got 12 bytes/);
    expect(existsSync(file) || existsSync(`${file}.tmp`)).toBe(false);
  });
});

describe('switchyard convert-gguf (CLI)', () => {
  it('prints its help', async () => {
    const io = captureIo();
    expect(await main(['convert-gguf', '--help'], io)).toBe(0);
    expect(io.out.join('\n')).toMatch(/Usage: switchyard convert-gguf --model DIR --out FILE\.gguf/);
    const top = captureIo();
    expect(await main(['--help'], top)).toBe(0);
    expect(top.out.join('\n')).toMatch(/convert-gguf/);
  });

  it('treats a missing --model or --out as a usage error (exit 2)', async () => {
    const io = captureIo();
    expect(await main(['convert-gguf', '--out', join(tmpdir(), 'never.gguf')], io)).toBe(2);
    expect(io.err.join('\n')).toMatch(/--model DIR is required/);
    const io2 = captureIo();
    expect(await main(['convert-gguf', '--model', 'x'], io2)).toBe(2);
    expect(io2.err.join('\n')).toMatch(/--out FILE is required/);
  });

  it('converts a package, and names the problem for a bad one (exit 1)', async () => {
    const dir = writeTinyPackage(config, 5);
    const out = join(mkdtempSync(join(tmpdir(), 'switchyard-gguf-')), 'cli.gguf');
    const io = captureIo();
    expect(await main(['convert-gguf', '--model', dir, '--out', out], io)).toBe(0);
    expect(io.out.join('\n')).toMatch(/wrote .*cli\.gguf: 27 tensors/);
    expect(readGguf(out).tensors).toHaveLength(27);

    const bad = captureIo();
    expect(await main(['convert-gguf', '--model', join(dir, 'nope'), '--out', out], bad)).toBe(1);
    expect(bad.err.join('\n')).toMatch(/model package folder does not exist/);
  });
});

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
}
function i32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v);
  return b;
}
function u64(v: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(v));
  return b;
}
function str(s: string): Buffer {
  const bytes = Buffer.from(s, 'utf8');
  return Buffer.concat([u64(bytes.length), bytes]);
}
