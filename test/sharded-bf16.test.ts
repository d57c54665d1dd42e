/**
 * Public checkpoints' storage: bfloat16 (and float16) weights, sharded over several safetensors files with a
 * model.safetensors.index.json. Half-precision tensors are converted to float32 at load (exactly), so a bf16 package
 * serves the same numbers as its weights stored as float32; a damaged index or shard is refused naming the file.
 */
import { mkdtempSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import { checkModelPackage } from '../src/engine/package-check.ts';
import { bf16ToF32, f16ToF32, f32ToBf16 } from '../src/format/safetensors.ts';
import { ReferenceModel } from './reference/reference-model.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig, maxAbsDiff } from './helpers.ts';

describe('half-precision conversion', () => {
  it('rounds float32 to bfloat16 to nearest even and widens it back exactly', () => {
    const x = Float32Array.from([1, -2, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.0e38, Infinity, -0, 2 ** -130]);
    expect(Array.from(f32ToBf16(x)).map((b) => b.toString(16))).toEqual(['3f80', 'c000', '3f80', '3f82', '7f62', '7f80', '8000', '8']); // 2^-130: a subnormal bfloat16 too
    const back = bf16ToF32(f32ToBf16(x));
    expect(Array.from(back.subarray(0, 4))).toEqual([1, -2, 1, 1 + 2 ** -6]);
    expect(Number.isNaN(bf16ToF32(f32ToBf16(Float32Array.from([NaN])))[0])).toBe(true);
  });

  it('widens IEEE half precision exactly, subnormals and specials included', () => {
    const bits = Uint16Array.from([0x3c00, 0xc000, 0x7bff, 0x0001, 0x0400, 0x7c00, 0xfc00, 0x8000]);
    expect(Array.from(f16ToF32(bits))).toEqual([1, -2, 65504, 2 ** -24, 2 ** -14, Infinity, -Infinity, -0]);
    expect(Number.isNaN(f16ToF32(Uint16Array.from([0x7e00]))[0])).toBe(true);
  });
});

describe('a bf16 checkpoint in two shards', () => {
  const config = tinyConfig({ num_experts: 6, num_experts_per_tok: 2, max_position_embeddings: 128 });
  const sharded = writeTinyPackage(config, 51, undefined, { weights: 'bf16', shards: 2 });
  const plain = writeTinyPackage(config, 51, undefined, { weights: 'bf16-as-f32' });
  const reference = ReferenceModel.fromPackage(plain, config);
  let a: Engine;
  let b: Engine;
  beforeAll(async () => {
    [a, b] = await Promise.all([Engine.load(engineConfig(sharded, { workers: 2 })), Engine.load(engineConfig(plain, { workers: 2 }))]);
  });
  afterAll(async () => {
    await Promise.all([a.close(), b.close()]);
  });

  it('is stored as the Hugging Face layout says', () => {
    const index = JSON.parse(readFileSync(join(sharded, 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> };
    expect(new Set(Object.values(index.weight_map))).toEqual(new Set(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']));
    const header = (file: string) => {
      const bytes = readFileSync(join(sharded, file));
      return JSON.parse(bytes.subarray(8, 8 + Number(bytes.readBigUInt64LE(0))).toString()) as Record<string, { dtype?: string }>;
    };
    const dtypes = new Set(Object.values({ ...header('model-00001-of-00002.safetensors'), ...header('model-00002-of-00002.safetensors') }).map((t) => t.dtype).filter(Boolean));
    expect(dtypes).toEqual(new Set(['BF16']));
  });

  it('serves the logits of the same weights stored as float32, bit for bit, and matches the reference', async () => {
    for (const prompt of ['Call me Ishmael.', 'naïve café ☕', 'a']) {
      const ids = a.codec.encode(prompt);
      const [x, y] = await Promise.all([
        a.model.forward([{ cache: a.model.newCache(), tokens: ids }], { allPositions: true }),
        b.model.forward([{ cache: b.model.newCache(), tokens: ids }], { allPositions: true }),
      ]);
      expect(maxAbsDiff(x.logits[0], y.logits[0])).toBe(0);
      const want = reference.forward(ids).logits;
      ids.forEach((_, t) => expect(maxAbsDiff(x.logits[0].subarray(t * config.vocab_size, (t + 1) * config.vocab_size), want[t])).toBeLessThan(1e-4));
    }
  });
});

describe('damaged shards', () => {
  const config = tinyConfig({ max_position_embeddings: 64 });
  const copy = () => writeTinyPackage(config, 52, mkdtempSync(join(tmpdir(), 'switchyard-shards-')), { weights: 'bf16', shards: 3 });
  const problems = (dir: string) => checkModelPackage(dir).problems.map((p) => p.message);

  it('checks clean', () => {
    expect(problems(copy())).toEqual([]);
  });

  it('names a shard the index lists but that is missing or truncated', () => {
    const dir = copy();
    truncateSync(join(dir, 'model-00002-of-00003.safetensors'), 0);
    expect(problems(dir).join('\n')).toMatch(/model-00002-of-00003\.safetensors: 0 bytes, too short to be safetensors/);
  });

  it('names tensors the index puts in the wrong shard, and a bad index', () => {
    const dir = copy();
    const indexFile = join(dir, 'model.safetensors.index.json');
    const index = JSON.parse(readFileSync(indexFile, 'utf8')) as { weight_map: Record<string, string> };
    const moved = Object.keys(index.weight_map).find((n) => index.weight_map[n] === 'model-00001-of-00003.safetensors')!;
    index.weight_map[moved] = 'model-00003-of-00003.safetensors';
    writeFileSync(indexFile, JSON.stringify(index));
    const found = problems(dir).join('\n');
    expect(found).toContain(`tensor ${moved} is in this shard, but`);
    expect(found).toContain(`tensor ${moved} is missing, but`);
    writeFileSync(indexFile, JSON.stringify({ weight_map: { ...index.weight_map, [moved]: '..' } }));
    expect(problems(dir).join('\n')).toContain('shard ".." is not a file name beside the index');
    writeFileSync(indexFile, '{"weight_map": 3}');
    expect(problems(dir).join('\n')).toMatch(/weight_map must be an object mapping each tensor name to its shard file/);
  });
});
