/** switchyard prune end to end on a tiny package: exact sparsity, real storage shrink, and the result serves. */
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import { readSafetensorsHeader } from '../src/format/safetensors.ts';
import { expectedTensors, tensorNames } from '../src/engine/package.ts';
import { readExpertWeights } from '../experts/expert-weights.ts';
import { compressBitmask, decompressBitmask } from '../experts/pruning/bitmask.ts';
import { prunePackage } from '../src/pruning/prune-package.ts';
import { ReferenceModel } from './reference/reference-model.ts';
import { randomValues, tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig, maxAbsDiff } from './helpers.ts';

const config = tinyConfig({ intermediate_size: 32 });
const dense = writeTinyPackage(config, 21);
writeFileSync(join(dense, 'calibration.txt'), 'Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse. '.repeat(6));
const out = () => mkdtempSync(join(tmpdir(), 'pruned-'));

/**
 * What compressed-tensors' config parser makes of `quantization_config` (ModelCompressor.parse_sparsity_config and
 * parse_quantization_config, then SparsityCompressionConfig.load_from_registry(format, **fields)): the sparsity
 * config, and the quantization config, which must be null for a sparsity-only model (any key beyond
 * sparsity_config, quant_method and version would be taken for one).
 */
function parseCompressedTensors(q: Record<string, unknown>) {
  const { sparsity_config: sparsity, quant_method: method, version, ...rest } = q;
  const fields = ['format', 'targets', 'ignore', 'global_sparsity', 'sparsity_structure'];
  const s = sparsity as Record<string, unknown>;
  return {
    method, version, quantization: Object.keys(rest).length === 0 ? null : rest,
    sparsityFormat: ['dense', 'sparse-bitmask', 'sparse-24-bitmask'].includes(s.format as string) ? s.format : `unregistered ${String(s.format)}`,
    unknownSparsityFields: Object.keys(s).filter((k) => !fields.includes(k)),
  };
}

/** Parameters of a package as stored, counted independently of the engine: trunk + what each expert keeps. */
function storedParameters(dir: string, sparse: boolean) {
  const d = config.hidden_size;
  const trunk = [...expectedTensors(config).entries()].filter(([n]) => !n.includes('.mlp.experts.')).reduce((n, [, shape]) => n + shape.reduce((a, b) => a * b, 1), 0);
  const header = readSafetensorsHeader(join(dir, 'model.safetensors'));
  const perExpert = Array.from({ length: config.num_hidden_layers }, (_, l) => Array.from({ length: config.num_experts }, (_, e) => {
    if (!header.has(tensorNames.expert(l, e).gate) && !header.has(`${tensorNames.expert(l, e).gate}.compressed`)) return 0; // dropped
    const w = readExpertWeights(join(dir, 'model.safetensors'), header, l, e, d);
    return [w.gate, w.up, w.down].reduce((n, m) => n + (sparse ? m.filter((v) => v !== 0).length : m.length), 0);
  }));
  return {
    total: trunk + perExpert.flat().reduce((a, b) => a + b, 0),
    active: trunk + perExpert.reduce((n, row) => n + Math.max(...row), 0),
  };
}

/** The pruned package's expert weights, decompressed, for every expert. */
function experts(dir: string) {
  const file = join(dir, 'model.safetensors');
  const header = readSafetensorsHeader(file);
  return Array.from({ length: config.num_hidden_layers * config.num_experts }, (_, g) =>
    readExpertWeights(file, header, Math.floor(g / config.num_experts), g % config.num_experts, config.hidden_size));
}

describe('bitmask storage', () => {
  it('round-trips, packing bits little-endian per row', () => {
    const w = randomValues(3 * 10, 4, 1).map((v, i) => (i % 3 === 0 ? 0 : v));
    const b = compressBitmask(w, 3, 10);
    expect(b.bitmask.length).toBe(3 * 2);
    expect(b.bitmask[0] & 1).toBe(0); // column 0 of row 0 is zero
    expect(b.bitmask[0] & 2).toBe(2);
    expect(Array.from(decompressBitmask(b))).toEqual(Array.from(w));
    expect(Number(b.rowOffsets[1])).toBe(Array.from(w.subarray(0, 10)).filter((v) => v !== 0).length);
  });
});

describe('switchyard prune', () => {
  for (const method of ['magnitude', 'wanda', 'sparsegpt'] as const) {
    it(`${method} at 70% reaches its sparsity exactly, shrinks storage, and serves`, async () => {
      const dir = out();
      const result = await prunePackage({ modelDir: dense, outDir: dir, method, sparsity: 0.7 });
      const weights = experts(dir);
      const total = weights.reduce((n, w) => n + w.gate.length + w.up.length + w.down.length, 0);
      const zeros = weights.reduce((n, w) => n + [w.gate, w.up, w.down].reduce((z, m) => z + m.filter((v) => v === 0).length, 0), 0);
      expect(zeros).toBe(Math.round(0.7 * config.intermediate_size * config.hidden_size) * 3 * weights.length);
      expect(zeros / total).toBeCloseTo(0.7, 2);
      expect(statSync(join(dir, 'model.safetensors')).size).toBeLessThan(statSync(join(dense, 'model.safetensors')).size);
      const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
      expect(cfg.quantization_config.sparsity_config).toMatchObject({ format: 'sparse-bitmask', sparsity_structure: 'unstructured' });
      expect(parseCompressedTensors(cfg.quantization_config)).toEqual({
        method: 'compressed-tensors', version: expect.stringMatching(/^\d+\.\d+\.\d+$/), quantization: null, sparsityFormat: 'sparse-bitmask', unknownSparsityFields: [],
      });
      expect(JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8')).model_max_length).toBe(config.max_position_embeddings);
      expect(cfg.switchyard_pruning.method).toBe(method);
      if (method !== 'magnitude') expect(result.experts.some((e) => e.calibrationTokens > 0)).toBe(true);

      // Served by the engine, the pruned package computes exactly what its (decompressed) weights say.
      const engine = await Engine.load(engineConfig(dir));
      try {
        const header = readSafetensorsHeader(join(dir, 'model.safetensors'));
        const trunk = ReferenceModel.fromPackage(dense, config);
        const reference = new ReferenceModel(config, (name) => {
          const m = /model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj/.exec(name);
          if (!m) return trunk.w(name);
          const w = readExpertWeights(join(dir, 'model.safetensors'), header, Number(m[1]), Number(m[2]), config.hidden_size);
          return w[m[3] as 'gate' | 'up' | 'down'];
        });
        const ids = engine.codec.encode('The whale');
        const got = await engine.model.forward([{ cache: engine.model.newCache(), tokens: ids }]);
        expect(maxAbsDiff(got.logits[0], reference.forward(ids).logits[ids.length - 1])).toBeLessThan(1e-4);
        // /info's parameters: the values the sparse experts store, not their bitmask bookkeeping.
        const stored = storedParameters(dir, true);
        expect(engine.info().parameters).toMatchObject({ total: stored.total, activePerToken: stored.active });
      } finally {
        await engine.close();
      }
    });
  }

  it('2:4 keeps two of every four weights per row', async () => {
    const dir = out();
    await prunePackage({ modelDir: dense, outDir: dir, method: '2:4', sparsity: 0.5 });
    for (const w of experts(dir)) {
      for (const [m, cols] of [[w.gate, config.hidden_size], [w.down, w.ffn]] as const) {
        for (let i = 0; i < m.length; i += 4) expect(Array.from(m.subarray(i, i + 4)).filter((v) => v !== 0).length).toBeLessThanOrEqual(2);
        expect(cols % 4).toBe(0);
      }
    }
    expect(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')).quantization_config.sparsity_config.sparsity_structure).toBe('2:4');
  });

  it('drops the rarely chosen experts: no weights kept, the router masks them, the package serves', async () => {
    const dir = out();
    const result = await prunePackage({ modelDir: dense, outDir: dir, method: 'magnitude', sparsity: 0, dropExperts: 0.25 });
    expect(result.dropped).toHaveLength(config.num_hidden_layers * 1); // 25 % of 4 experts per layer
    const header = readSafetensorsHeader(join(dir, 'model.safetensors'));
    for (const { layer, expert } of result.dropped) {
      expect(header.has(tensorNames.expert(layer, expert).gate)).toBe(false);
      // The least chosen in its layer on the calibration text.
      const shares = result.dropped.filter((d) => d.layer === layer).map((d) => d.share);
      expect(Math.max(...shares)).toBeLessThanOrEqual(0.25);
    }
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    expect(parseCompressedTensors(cfg.quantization_config)).toMatchObject({ quantization: null, sparsityFormat: 'dense' }); // nothing stored sparse
    expect(cfg.switchyard_pruning.dropped_experts.map((e: { layer: number; expert: number }) => `${e.layer}.${e.expert}`).sort())
      .toEqual(result.dropped.map((e) => `${e.layer}.${e.expert}`).sort());

    const engine = await Engine.load(engineConfig(dir));
    try {
      const ids = engine.codec.encode(readFileSync(join(dense, 'calibration.txt'), 'utf8').slice(0, 60));
      const out = await engine.model.forward([{ cache: engine.model.newCache(), tokens: ids }]);
      for (const layer of out.layers) {
        const droppedHere = result.dropped.filter((d) => d.layer === layer.layer).map((d) => d.expert);
        expect(Array.from(layer.expert).some((e) => droppedHere.includes(e))).toBe(false);
        expect(layer.gate.every((g) => g > 0 && g <= 1)).toBe(true);
      }
      const stats = await engine.pool.stats();
      const loaded = stats.flatMap((s) => s.loaded);
      for (const d of result.dropped) expect(loaded).not.toContain(`${d.layer}.${d.expert}`);
      // /info: dropped experts hold nothing; a token still runs one full expert per layer.
      const stored = storedParameters(dir, false);
      const perExpert = 3 * config.hidden_size * config.intermediate_size;
      expect(engine.info().parameters).toMatchObject({ total: stored.total, activePerToken: stored.active });
      expect(stored.total).toBe(storedParameters(dense, false).total - result.dropped.length * perExpert);
      expect(stored.active).toBe(storedParameters(dense, false).active);
    } finally {
      await engine.close();
    }
  });

  it('structured pruning at 25% stores smaller dense experts that serve', async () => {
    const dir = out();
    await prunePackage({ modelDir: dense, outDir: dir, method: 'structured', sparsity: 0.25 });
    const header = readSafetensorsHeader(join(dir, 'model.safetensors'));
    expect(header.get(tensorNames.expert(1, 2).gate)!.shape).toEqual([24, config.hidden_size]);
    expect(header.get(tensorNames.expert(1, 2).down)!.shape).toEqual([config.hidden_size, 24]);
    expect(parseCompressedTensors(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')).quantization_config))
      .toMatchObject({ quantization: null, sparsityFormat: 'dense', unknownSparsityFields: [] });
    const engine = await Engine.load(engineConfig(dir));
    try {
      const stored = storedParameters(dir, false);
      expect(engine.info().parameters).toMatchObject({ total: stored.total, activePerToken: stored.active });
      expect(stored.total).toBe(storedParameters(dense, false).total - config.num_hidden_layers * config.num_experts * 3 * config.hidden_size * 8);
      const result = await engine.generate({ inputs: 'Ahab', maxNewTokens: 4, stop: [], sampling: { doSample: false, temperature: 1, topK: null, topP: null, repetitionPenalty: null, seed: null } });
      expect(result.generatedTokens).toBe(4);
    } finally {
      await engine.close();
    }
  });
});
