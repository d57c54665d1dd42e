/**
 * The model package check (src/engine/package-check.ts): every kind of damaged package fails at load with a
 * PackageCheckError whose problems name the file, the tensor or field, what is wrong and how to fix it — before any
 * worker or trunk session starts — and the packages the project writes (bundled, pruned, dropped experts) pass.
 * Damaged copies are made from the tiny fixture package in temp folders.
 */
import { execFile } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkModelPackage, loadModelPackage, PackageCheckError, PackageError, tensorNames, type PackageProblem } from '../src/engine/package.ts';
import { readSafetensorsHeader, type TensorData } from '../src/format/safetensors.ts';
import { compressBitmask } from '../experts/pruning/bitmask.ts';
import { BUNDLED_MODEL, randomTensors, tinyConfig, writeSafetensors, writeTinyPackage } from './fixtures/tiny-package.ts';

const config = tinyConfig(); // 2 layers, 4 experts, hidden 16, FFN 24, vocab 258
const expert = tensorNames.expert;

type Header = Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;

/** Rewrites the safetensors header of `dir`'s weights (the data section is kept byte for byte). */
function editHeader(dir: string, edit: (header: Header) => void): void {
  const file = join(dir, 'model.safetensors');
  const bytes = readFileSync(file);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')) as Header;
  edit(header);
  writeHeaderText(file, JSON.stringify(header), bytes.subarray(8 + n));
}

function writeHeaderText(file: string, json: string, data: Buffer): void {
  const text = Buffer.from(json, 'utf8');
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(text.length));
  writeFileSync(file, Buffer.concat([length, text, data]));
}

function editConfig(dir: string, edit: (c: Record<string, unknown>) => void, file = 'config.json'): void {
  const path = join(dir, file);
  const c = JSON.parse(readFileSync(path, 'utf8'));
  edit(c);
  writeFileSync(path, JSON.stringify(c, null, 2));
}

/** The check's problems for a package the loader must refuse (and the error it threw). */
function refused(dir: string): { error: PackageCheckError; problems: PackageProblem[] } {
  let thrown: unknown;
  try {
    loadModelPackage(dir);
  } catch (error) {
    thrown = error;
  }
  expect(thrown).toBeInstanceOf(PackageCheckError);
  expect(thrown).toBeInstanceOf(PackageError);
  const error = thrown as PackageCheckError;
  return { error, problems: error.problems };
}

/** The one problem of `kind` about `subject` (a tensor or a field); its message names the file and the subject. */
function problem(problems: PackageProblem[], kind: PackageProblem['kind'], subject?: string): PackageProblem {
  const found = problems.find((p) => p.kind === kind && (subject === undefined || p.tensor === subject || p.field === subject));
  expect(found, `no ${kind} problem about ${subject} in:\n${problems.map((p) => p.message).join('\n')}`).toBeDefined();
  if (subject !== undefined) expect(found!.message).toContain(subject);
  expect(found!.message).toContain(found!.file);
  return found!;
}

/** A tiny package with expert 1 of layer 0 stored as compressed-tensors sparse-bitmask (half its weights zero). */
function bitmaskPackage(damage: (parts: Map<string, { shape: number[]; data: TensorData }>, name: string) => void = () => {}): string {
  const dir = writeTinyPackage(config);
  const tensors = new Map<string, { shape: number[]; data: TensorData }>(randomTensors(config));
  const names = expert(0, 1);
  for (const name of [names.gate, names.up, names.down]) {
    const { shape, data } = tensors.get(name)!;
    const b = compressBitmask((data as Float32Array).map((v, i) => (i % 2 === 0 ? 0 : v)), shape[0], shape[1]);
    tensors.delete(name);
    tensors.set(`${name}.compressed`, { shape: [b.compressed.length], data: b.compressed });
    tensors.set(`${name}.bitmask`, { shape: [shape[0], Math.ceil(shape[1] / 8)], data: b.bitmask });
    tensors.set(`${name}.shape`, { shape: [2], data: BigInt64Array.from(b.shape.map(BigInt)) });
    tensors.set(`${name}.row_offsets`, { shape: [shape[0]], data: b.rowOffsets });
  }
  damage(tensors, names.up);
  writeSafetensors(join(dir, 'model.safetensors'), tensors);
  editConfig(dir, (c) => {
    // As compressed-tensors writes a sparsity-only model (no top-level format).
    c.quantization_config = { version: '0.9.1', quant_method: 'compressed-tensors', sparsity_config: { format: 'sparse-bitmask' } };
  });
  return dir;
}

describe('the package check passes good packages', () => {
  it('the bundled model', () => {
    const result = checkModelPackage(BUNDLED_MODEL);
    expect(result.problems).toEqual([]);
    expect(result.checked?.tensors.size).toBe(135);
  });

  it('the tiny fixture, and one with a sparse-bitmask expert', () => {
    expect(checkModelPackage(writeTinyPackage()).problems).toEqual([]);
    expect(checkModelPackage(bitmaskPackage()).problems).toEqual([]);
  });

  it('experts dropped by pruning may be absent; undeclared ones may not', () => {
    const dir = writeTinyPackage();
    const tensors = randomTensors(config);
    for (const name of Object.values(expert(1, 2))) tensors.delete(name);
    writeSafetensors(join(dir, 'model.safetensors'), tensors);
    expect(problem(refused(dir).problems, 'missing-tensor', expert(1, 2).gate).message).toMatch(/not listed in switchyard_pruning\.dropped_experts/);
    editConfig(dir, (c) => { c.switchyard_pruning = { method: 'magnitude', dropped_experts: [{ layer: 1, expert: 2, calibration_share: 0.01 }] }; });
    expect([...loadModelPackage(dir).droppedExperts]).toEqual(['1.2']);
  });

  it('structurally pruned experts may be narrower when config.json records it, and only then', () => {
    const dir = writeTinyPackage();
    const tensors = randomTensors(config);
    const names = expert(0, 3);
    tensors.set(names.gate, { shape: [16, 16], data: new Float32Array(256) });
    tensors.set(names.up, { shape: [16, 16], data: new Float32Array(256) });
    tensors.set(names.down, { shape: [16, 16], data: new Float32Array(256) });
    writeSafetensors(join(dir, 'model.safetensors'), tensors);
    expect(problem(refused(dir).problems, 'shape', names.gate).message).toMatch(/FFN width 16, but intermediate_size is 24 and config\.json records no pruning/);
    editConfig(dir, (c) => { c.switchyard_pruning = { method: 'structured', experts: [{ layer: 0, expert: 3, ffn: 20 }] }; });
    expect(problem(refused(dir).problems, 'shape', names.gate).message).toMatch(/switchyard_pruning records FFN width 20/);
    editConfig(dir, (c) => { c.switchyard_pruning = { method: 'structured', experts: [{ layer: 0, expert: 3, ffn: 16 }] }; });
    expect(loadModelPackage(dir).config.intermediate_size).toBe(24);
  });
});

describe('damaged packages are refused at load, naming the tensor or field', () => {
  it('an expert tensor whose byte range is shorter than its shape needs', () => {
    const dir = writeTinyPackage();
    const name = expert(0, 3).up;
    editHeader(dir, (h) => { h[name].data_offsets[1] = h[name].data_offsets[0] + 64; });
    const { problems } = refused(dir);
    expect(problem(problems, 'byte-length', name).message).toMatch(
      /model\.safetensors: tensor model\.layers\.0\.mlp\.experts\.3\.up_proj\.weight: data_offsets \[\d+, \d+\] give 64 bytes, but F32 \[24, 16\] needs 1536 bytes; .*re-export the package/);
    problem(problems, 'gap'); // the bytes it no longer covers
  });

  it('every offset shifted by 4 bytes, each range still the right length', () => {
    const dir = writeTinyPackage();
    editHeader(dir, (h) => {
      for (const [name, t] of Object.entries(h)) if (name !== '__metadata__') t.data_offsets = [t.data_offsets[0] + 4, t.data_offsets[1] + 4];
    });
    const { problems } = refused(dir);
    expect(problems.some((p) => p.kind === 'byte-length')).toBe(false);
    expect(problem(problems, 'gap', tensorNames.lmHead).message).toMatch(/bytes \[0, 4\) before the first tensor, lm_head\.weight, belong to no tensor/);
    expect(problem(problems, 'offsets', tensorNames.finalNorm).message).toMatch(/end past the data section/);
  });

  it('one tensor shifted by 4 bytes: a hole before it and an overlap after it', () => {
    const dir = writeTinyPackage();
    const name = expert(1, 0).down;
    editHeader(dir, (h) => { h[name].data_offsets = [h[name].data_offsets[0] + 4, h[name].data_offsets[1] + 4]; });
    const { problems } = refused(dir);
    expect(problem(problems, 'gap', name).message).toMatch(/belong to no tensor/);
    expect(problem(problems, 'overlap', expert(1, 0).gate).message).toContain(`overlap tensor ${name}`);
  });

  it('two tensors overlapping', () => {
    const dir = writeTinyPackage();
    editHeader(dir, (h) => { h[tensorNames.layer(1).qNorm].data_offsets = [...h[tensorNames.layer(1).kNorm].data_offsets]; });
    const { problems } = refused(dir);
    const overlap = problems.find((p) => p.kind === 'overlap');
    expect(overlap?.message).toMatch(/self_attn\.[qk]_norm\.weight: data_offsets \[\d+, \d+\] overlap tensor model\.layers\.1\.self_attn\.[qk]_norm\.weight/);
  });

  it('offsets past the end of the file', () => {
    const dir = writeTinyPackage();
    const name = tensorNames.layer(0).v;
    editHeader(dir, (h) => { h[name].data_offsets = [1_000_000, 1_000_000 + 16 * 16 * 4]; });
    expect(problem(refused(dir).problems, 'offsets', name).message).toMatch(/data_offsets \[1000000, 1001024\] end past the data section, which holds \d+ bytes/);
  });

  it('a wrong or unknown dtype', () => {
    const dir = writeTinyPackage();
    editHeader(dir, (h) => {
      h[tensorNames.finalNorm].dtype = 'I32'; // same byte length: only the dtype is wrong
      h[expert(1, 1).gate].dtype = 'F33';
    });
    const { problems } = refused(dir);
    expect(problem(problems, 'dtype', tensorNames.finalNorm).message).toMatch(/dtype I32, expected F32/);
    expect(problem(problems, 'dtype', expert(1, 1).gate).message).toMatch(/unknown dtype "F33"/);
  });

  it('a shape the config does not imply', () => {
    const dir = writeTinyPackage();
    editHeader(dir, (h) => {
      h[expert(0, 1).gate].shape = [16, 24]; // same element count
      h[tensorNames.layer(1).router].shape = [2, 32];
    });
    const { problems } = refused(dir);
    expect(problem(problems, 'shape', expert(0, 1).gate).message).toMatch(/has shape \[16, 24\], expected \[24, 16\]/);
    expect(problem(problems, 'shape', tensorNames.layer(1).router).message).toMatch(/has shape \[2, 32\], expected \[4, 16\] \(num_experts 4 × hidden_size 16\)/);
    expect(problems).toHaveLength(2); // only the odd matrix of the expert is reported
  });

  it('missing and unexpected tensors, all reported at once', () => {
    const dir = writeTinyPackage();
    const tensors = randomTensors(config);
    tensors.delete(tensorNames.layer(0).o);
    tensors.delete(expert(1, 3).down);
    tensors.set('model.layers.2.input_layernorm.weight', { shape: [16], data: new Float32Array(16) });
    writeSafetensors(join(dir, 'model.safetensors'), tensors);
    const { problems, error } = refused(dir);
    expect(problem(problems, 'missing-tensor', tensorNames.layer(0).o).message).toMatch(/is missing \(expected shape \[16, 16\], F32, F16 or BF16/);
    problem(problems, 'missing-tensor', expert(1, 3).down);
    expect(problem(problems, 'unexpected-tensor', 'model.layers.2.input_layernorm.weight').message).toMatch(/layer 2 does not exist \(num_hidden_layers is 2\)/);
    expect(error.message).toMatch(/found 3 problems/);
  });

  it('a missing, mistyped or inconsistent config.json field', () => {
    const dir = writeTinyPackage();
    editConfig(dir, (c) => {
      delete c.hidden_size;
      c.num_experts = '4';
    });
    const { problems } = refused(dir);
    expect(problem(problems, 'config', 'hidden_size').message).toMatch(/config\.json: hidden_size is missing; it must be a positive integer/);
    expect(problem(problems, 'config', 'num_experts').message).toMatch(/num_experts is "4", but it must be a positive integer/);

    const heads = writeTinyPackage();
    editConfig(heads, (c) => { c.num_attention_heads = 3; c.num_key_value_heads = 3; });
    expect(problem(refused(heads).problems, 'config', 'hidden_size').message).toMatch(/hidden_size 16 must split into an even head size over num_attention_heads 3/);
  });

  it('eos_token_id outside the vocabulary, or disagreeing with the tokenizer', () => {
    const outside = writeTinyPackage();
    editConfig(outside, (c) => { c.eos_token_id = 300; });
    expect(problem(refused(outside).problems, 'token-id', 'eos_token_id').message).toMatch(
      /config\.json: eos_token_id is 300, outside the vocabulary \(vocab_size is 258: ids 0\.\.257\); generation would never stop .* "<\|eos\|>" id 257/);

    const other = writeTinyPackage();
    editConfig(other, (c) => { c.eos_token_id = 100; });
    expect(problem(refused(other).problems, 'token-id', 'eos_token_id').message).toMatch(/eos_token_id is 100, but .*tokenizer_config\.json names eos_token "<\|eos\|>", which is id 257/);

    const generation = writeTinyPackage();
    writeFileSync(join(generation, 'generation_config.json'), JSON.stringify({ bos_token_id: 256, eos_token_id: [257, 999] }));
    expect(problem(refused(generation).problems, 'token-id', 'eos_token_id').file).toMatch(/generation_config\.json$/);
  });

  it('a truncated weights file', () => {
    const dir = writeTinyPackage();
    const file = join(dir, 'model.safetensors');
    writeFileSync(file, readFileSync(file).subarray(0, 20_000));
    const { problems } = refused(dir);
    expect(problem(problems, 'offsets').message).toMatch(/end past the data section/);
    expect(problems.length).toBeLessThanOrEqual(4); // the rest summarised, not one line per tensor

    writeFileSync(file, readFileSync(file).subarray(0, 100));
    expect(problem(refused(dir).problems, 'header').message).toMatch(/header length \d+ \(the first 8 bytes\) does not fit a 100-byte file/);
  });

  it('a header that is not valid JSON, has a duplicate key, or a bad __metadata__', () => {
    const dir = writeTinyPackage();
    const file = join(dir, 'model.safetensors');
    const bytes = readFileSync(file);
    const n = Number(bytes.readBigUInt64LE(0));
    const text = bytes.subarray(8, 8 + n).toString('utf8');
    writeHeaderText(file, text.replace('"dtype":', '"dtype";'), bytes.subarray(8 + n));
    expect(problem(refused(dir).problems, 'header').message).toMatch(/model\.safetensors: the header is not valid JSON/);

    const first = text.indexOf('"lm_head.weight"');
    const entry = text.slice(first, text.indexOf('}', first) + 1);
    writeHeaderText(file, text.replace(entry, `${entry},${entry}`), bytes.subarray(8 + n));
    expect(problem(refused(dir).problems, 'header', tensorNames.lmHead).message).toMatch(/listed more than once/);

    writeHeaderText(file, text.replace('"format":"pt"', '"format":1'), bytes.subarray(8 + n));
    expect(problem(refused(dir).problems, 'header', '__metadata__').message).toMatch(/map of strings to strings/);
  });

  it('a damaged sparse-bitmask tensor', () => {
    const flipped = bitmaskPackage((t, name) => { (t.get(`${name}.bitmask`)!.data as Uint8Array)[0] ^= 1; });
    expect(problem(refused(flipped).problems, 'sparse-bitmask', expert(0, 1).up).message).toMatch(/the bitmask marks \d+ weights but .*\.compressed stores \d+/);

    const offsets = bitmaskPackage((t, name) => { (t.get(`${name}.row_offsets`)!.data as BigInt64Array)[3] += 1n; });
    expect(problem(refused(offsets).problems, 'sparse-bitmask', `${expert(0, 1).up}.row_offsets`).message).toMatch(/row 3 starts at/);

    const shape = bitmaskPackage((t, name) => { t.set(`${name}.shape`, { shape: [2], data: BigInt64Array.from([24n, 40n]) }); });
    expect(problem(refused(shape).problems, 'sparse-bitmask', `${expert(0, 1).up}.bitmask`).message).toMatch(/U8 \[24, 2\], but sparse-bitmask storage needs U8 \[24, 5\]/);

    const missing = bitmaskPackage((t, name) => { t.delete(`${name}.row_offsets`); });
    expect(problem(refused(missing).problems, 'sparse-bitmask', expert(0, 1).up).message).toMatch(/lacks .*up_proj\.weight\.row_offsets/);

    const undeclared = bitmaskPackage();
    editConfig(undeclared, (c) => { delete c.quantization_config; });
    expect(problem(refused(undeclared).problems, 'pruning', 'quantization_config').message).toMatch(/stores 3 expert matrices as sparse-bitmask/);
  });

  it('a tokenizer the gateway cannot use (unloadable, empty vocabulary, broken chat template), or missing files', () => {
    const dir = writeTinyPackage();
    editConfig(dir, (t) => { t.added_tokens = 3; }, 'tokenizer.json');
    expect(problem(refused(dir).problems, 'tokenizer').message).toMatch(/tokenizer\.json: the tokenizers library cannot load it/);

    const emptyVocab = writeTinyPackage();
    editConfig(emptyVocab, (t) => { (t.model as Record<string, unknown>).vocab = [1, 2]; }, 'tokenizer.json');
    expect(problem(refused(emptyVocab).problems, 'tokenizer', 'model.vocab').message).toMatch(/encodes to special tokens only/);

    const template = writeTinyPackage();
    editConfig(template, (t) => { t.chat_template = '{% for m in messages %}'; }, 'tokenizer_config.json');
    expect(problem(refused(template).problems, 'tokenizer', 'chat_template').message).toMatch(/tokenizer_config\.json: chat_template is not a valid Jinja template/);

    rmSync(join(dir, 'tokenizer.json'));
    writeFileSync(join(dir, 'config.json'), '{"model_type": "olmoe",');
    const { problems } = refused(dir);
    expect(problem(problems, 'json').message).toMatch(/config\.json: not valid JSON/);
    expect(problem(problems, 'file').message).toMatch(/tokenizer\.json: missing from the model package/);
  });

  it('lists at most maxProblems and counts the rest', () => {
    const dir = writeTinyPackage();
    editHeader(dir, (h) => { for (const t of Object.values(h)) if (t.shape) t.dtype = 'F33'; });
    const result = checkModelPackage(dir, { maxProblems: 5 });
    expect(result.problems).toHaveLength(5);
    expect(result.omitted).toBeGreaterThan(0);
    expect(result.checked).toBeNull();
  });

  it('workers reading the header directly get the same framing checks', () => {
    const dir = writeTinyPackage();
    editHeader(dir, (h) => { for (const [name, t] of Object.entries(h)) if (name !== '__metadata__') t.data_offsets = [t.data_offsets[0] + 4, t.data_offsets[1] + 4]; });
    expect(() => readSafetensorsHeader(join(dir, 'model.safetensors'))).toThrow(PackageCheckError);
  });
});

describe('switchyard serve with a damaged package', () => {
  it('exits non-zero with the problem on stderr, without a stack trace, before starting workers', async () => {
    const dir = writeTinyPackage();
    const name = expert(0, 3).up;
    editHeader(dir, (h) => { h[name].data_offsets[1] = h[name].data_offsets[0] + 64; });
    const bin = resolve(import.meta.dirname, '../bin/switchyard.mjs');
    // The timeout only stops a server that (wrongly) started; nothing here depends on how long the check takes.
    const run = await new Promise<{ code: number | null; stdout: string; stderr: string }>((done) => {
      const child = execFile(process.execPath, [bin, 'serve', '--model', dir, '--port', '0', '--workers', '1'], { timeout: 60_000 }, (error, stdout, stderr) => {
        done({ code: child.exitCode ?? (error ? -1 : 0), stdout, stderr });
      });
    });
    expect(run.code).toBe(1);
    expect(run.stderr).toContain(`switchyard serve: ${dir}`);
    expect(run.stderr).toContain(`tensor ${name}: data_offsets`);
    expect(run.stderr).toMatch(/give 64 bytes, but F32 \[24, 16\] needs 1536 bytes/);
    expect(run.stderr + run.stdout).not.toMatch(/TypeError|\n\s+at |"stack"/);
    // Only the message: its first line, then one line per problem (no log lines from a started pool or server).
    for (const line of run.stderr.trimEnd().split('\n')) expect(line).toMatch(/^(switchyard serve: |  - )/);
    expect(run.stdout).not.toMatch(/listening/);
  }, 90_000);
});
