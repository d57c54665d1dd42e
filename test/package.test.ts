/** A garbled or unsupported package fails at start-up with a message naming the file, tensor and shapes. */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModelPackage } from '../src/engine/package.ts';
import { randomTensors, tinyConfig, writeSafetensors, writeTinyPackage } from './fixtures/tiny-package.ts';

describe('model package validation', () => {
  it('loads a good package', () => {
    const pkg = loadModelPackage(writeTinyPackage());
    expect(pkg.config.num_experts).toBe(4);
  });

  it('names the tensor and both shapes when a shape is wrong', () => {
    const dir = writeTinyPackage();
    const tensors = randomTensors(tinyConfig());
    tensors.set('model.layers.1.mlp.experts.2.up_proj.weight', { shape: [16, 24], data: new Float32Array(16 * 24) });
    writeSafetensors(join(dir, 'model.safetensors'), tensors);
    expect(() => loadModelPackage(dir)).toThrow(/model\.safetensors: tensor model\.layers\.1\.mlp\.experts\.2\.up_proj\.weight has shape \[16, 24\], expected \[24, 16\]/);
  });

  it('names a missing tensor', () => {
    const dir = writeTinyPackage();
    const tensors = randomTensors(tinyConfig());
    tensors.delete('model.layers.0.mlp.gate.weight');
    writeSafetensors(join(dir, 'model.safetensors'), tensors);
    expect(() => loadModelPackage(dir)).toThrow(/tensor model\.layers\.0\.mlp\.gate\.weight is missing \(expected shape \[4, 16\]/);
  });

  it('rejects a truncated weights file', () => {
    const dir = writeTinyPackage();
    const file = join(dir, 'model.safetensors');
    writeFileSync(file, readFileSync(file).subarray(0, 5000));
    expect(() => loadModelPackage(dir)).toThrow(/model\.safetensors: .*(end past the data section|does not fit)/);
  });

  it('rejects unsupported architectures with the field named', () => {
    const dir = writeTinyPackage();
    const configFile = join(dir, 'config.json');
    writeFileSync(configFile, JSON.stringify({ ...JSON.parse(readFileSync(configFile, 'utf8')), model_type: 'deepseek_v2' }));
    expect(() => loadModelPackage(dir)).toThrow(/config\.json: model_type is "deepseek_v2", but the gateway serves olmoe \(OLMoE\), mixtral \(Mixtral\), qwen2_moe \(Qwen2-MoE\), granitemoe \(Granite-MoE\)/);
    writeFileSync(configFile, JSON.stringify({ ...JSON.parse(readFileSync(configFile, 'utf8')), model_type: 'olmoe', num_experts_per_tok: 0 }));
    expect(() => loadModelPackage(dir)).toThrow(/config\.json: num_experts_per_tok is 0, but it must be a positive integer at most num_experts/);
  });

  it('loads a config.json without bos_token_id (OLMoE-1B-7B has none)', () => {
    const dir = writeTinyPackage();
    const configFile = join(dir, 'config.json');
    const { bos_token_id: _, ...rest } = JSON.parse(readFileSync(configFile, 'utf8')) as Record<string, unknown>;
    writeFileSync(configFile, JSON.stringify(rest));
    expect(loadModelPackage(dir).config.bos_token_id).toBeNull();
  });

  it('names a missing file', () => {
    const dir = writeTinyPackage();
    rmSync(join(dir, 'tokenizer.json'));
    expect(() => loadModelPackage(dir)).toThrow(/tokenizer\.json: missing from the model package/);
  });
});
