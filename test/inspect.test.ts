/**
 * `switchyard inspect` on public checkpoints' config.json files (test/fixtures/public-configs): parameter counts
 * against the totals their model cards publish, the memory per expert kernel, verdicts for a given machine, and the
 * CLI's answers for an unsupported family and bad input.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { main } from '../src/cli.ts';
import { inspectConfig, KERNEL_BYTES_PER_WEIGHT } from '../src/planning/inspect.ts';

const DIR = join(import.meta.dirname, 'fixtures', 'public-configs');
const config = (name: string) => JSON.parse(readFileSync(join(DIR, `${name}.json`), 'utf8')) as Record<string, unknown>;
const GIB = 2 ** 30;

describe('inspect', () => {
  // Published total / active parameters (model cards): OLMoE-1B-7B 6.9B / 1.3B, Mixtral-8x7B 46.7B / 12.9B,
  // Qwen1.5-MoE-A2.7B 14.3B / 2.7B, Granite-3.0-1B-A400M 1.33B / ≈0.4B.
  it.each([
    ['olmoe-1b-7b-0924', 6.9e9, 1.3e9, 'OLMoE'],
    ['mixtral-8x7b-v0.1', 46.7e9, 12.9e9, 'Mixtral'],
    ['qwen1.5-moe-a2.7b', 14.3e9, 2.7e9, 'Qwen2-MoE'],
    // "1B-A400M": 1.33B in the model card's parameter count; the A400M of its name is rounded (≈ 429M).
    ['granite-3.0-1b-a400m-base', 1.33e9, 0.4e9, 'Granite-MoE'],
  ])('%s: total and active parameters as published', (name, total, active, label) => {
    const r = inspectConfig(config(name), 24 * GIB);
    expect(r.architecture).toBe(label);
    expect(Math.abs(r.parameters.total - total) / total).toBeLessThan(0.01);
    expect(Math.abs(r.parameters.active - active) / active).toBeLessThan(0.1);
    expect(r.parameters.experts + r.parameters.trunk).toBe(r.parameters.total);
  });

  it('sizes each expert kernel and judges against the machine', () => {
    const mixtral = inspectConfig(config('mixtral-8x7b-v0.1'), 24 * GIB);
    expect(mixtral.groupedQueryAttention).toBe(true);
    expect(mixtral.kvBytesPerToken).toBe(32 * 2 * 1024 * 4); // 8 key/value heads of 128
    expect(mixtral.fits.map((f) => f.fits)).toEqual([false, false, false]);
    for (const f of mixtral.fits) expect(f.expertBytes).toBeCloseTo(mixtral.parameters.experts * KERNEL_BYTES_PER_WEIGHT[f.kernel], -3);
    expect(inspectConfig(config('mixtral-8x7b-v0.1'), 128 * GIB).fits.map((f) => f.fits)).toEqual([false, true, true]);
    expect(inspectConfig(config('olmoe-1b-7b-0924'), 24 * GIB).fits.map((f) => f.fits)).toEqual([false, true, true]);
    const qwen = inspectConfig(config('qwen1.5-moe-a2.7b'), 24 * GIB);
    expect(qwen.sharedExpert).toBe(true);
    expect(qwen.fits.map((f) => f.fits)).toEqual([false, false, true]);
  });

  it('the CLI prints the report, and refuses an unsupported family and bad flags', async () => {
    const out: string[] = [];
    const err: string[] = [];
    const io = { stdout: (t: string) => out.push(t), stderr: (t: string) => err.push(t) };
    expect(await main(['inspect', '--config', join(DIR, 'qwen1.5-moe-a2.7b.json'), '--memory-gib', '24'], io)).toBe(0);
    expect(out.join('\n')).toMatch(/Qwen2-MoE .* top-4 of 60 experts \+ a shared expert[\s\S]*verdict: fits with experts.kernel 'int4'/);
    const other = join(mkdtempSync(join(tmpdir(), 'switchyard-inspect-')), 'config.json');
    writeFileSync(other, JSON.stringify({ ...config('mixtral-8x7b-v0.1'), model_type: 'deepseek_v2' }));
    expect(await main(['inspect', '--config', other], io)).toBe(1);
    expect(err.join('\n')).toMatch(/model_type "deepseek_v2" is not served; the gateway serves olmoe \(OLMoE\), mixtral \(Mixtral\), qwen2_moe \(Qwen2-MoE\), granitemoe \(Granite-MoE\)/);
    // What the loader refuses, inspect refuses too (no "top-100 of 64 experts" figures); absurd sizes fail fast.
    for (const [change, message] of [
      [{ num_experts_per_tok: 100 }, /num_experts_per_tok 100 must not exceed the number of experts, 8/],
      [{ num_key_value_heads: 3 }, /num_key_value_heads 3 must divide num_attention_heads 32/],
      [{ num_hidden_layers: 100000, num_local_experts: 64 }, /far beyond any checkpoint/],
    ] as const) {
      writeFileSync(other, JSON.stringify({ ...config('mixtral-8x7b-v0.1'), ...change }));
      expect(await main(['inspect', '--config', other], io)).toBe(1);
      expect(err.at(-1)).toMatch(message);
    }
    writeFileSync(other, JSON.stringify({ ...config('mixtral-8x7b-v0.1'), eos_token_id: [2, 3] }));
    expect(await main(['inspect', '--config', other], io)).toBe(0); // the end-of-sequence id is not inspect's business
    expect(await main(['inspect'], io)).toBe(2);
    expect(await main(['inspect', '--config', other, '--memory-gib', 'Infinity'], io)).toBe(2);
    expect(await main(['inspect', '--model', 'models/switchyard-moe', '--memory-gib', '-1'], io)).toBe(2);
  });
});
