/**
 * The fused forward (src/engine/fused-forward.ts, experts/kernels/native/model.cc) against the same model with its
 * stages driven from TypeScript: logits, routing choices, gates and expert loads bit for bit over steps of prefills
 * (longer than a 64-token chunk, with prompt logits) and decodes whose caches grow, for each architecture the native
 * trunk serves (top-1 and top-2, renormalised gates, grouped-query attention, biases, q/k norms, shared and gated
 * experts, Granite's multipliers, pruned experts). Also: it yields to the event loop while the team computes,
 * concurrent calls run one after another, and a bad step fails alone.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InProcessExperts } from '../experts/in-process.ts';
import { nativeDense } from '../experts/kernels/dense-native.ts';
import { Engine } from '../src/engine/engine.ts';
import { fusedForwardAddon } from '../src/engine/fused-forward.ts';
import { MoeModel, type SequenceInput, type StepOutput } from '../src/engine/model.ts';
import { loadModelPackage, type ModelConfig } from '../src/engine/package.ts';
import { prunePackage } from '../src/pruning/prune-package.ts';
import { tinyConfig, writeTinyPackage, type TinyPackageOptions } from './fixtures/tiny-package.ts';
import { engineConfig, tokensBeforeAnImmediate } from './helpers.ts';

const dense = nativeDense();
const BUNDLED = path.join(import.meta.dirname, '..', 'models', 'switchyard-moe');
const inProcess = { workers: null, experts: { execution: 'in-process' as const } };

/** The package's model twice over the same in-process experts: fused (the engine's) and driven by stages. */
async function pair(dir: string): Promise<{ engine: Engine; fused: MoeModel; stages: MoeModel; close: () => Promise<void> }> {
  const engine = await Engine.load(engineConfig(dir, inProcess));
  const experts = engine.pool as InProcessExperts;
  const stages = await MoeModel.load(loadModelPackage(dir), experts, {
    capacityFactor: null, trunkThreads: 1, executionProviders: ['cpu'], team: experts.team, fused: false,
  });
  return { engine, fused: engine.model, stages, close: () => engine.close() };
}

/** Token ids in [0, vocab) from a seed. */
function ids(n: number, seed: number, vocab: number): number[] {
  return Array.from({ length: n }, (_, i) => (seed * 7919 + i * 104729) % vocab);
}

/**
 * Steps on `model` from fresh caches: prefills of 70 (prompt logits), 5 and 1 tokens; then decodes of all three
 * with a new 9-token prefill joining; then four decode steps. Caches start small so they grow inside the step.
 */
async function script(model: MoeModel, vocab: number): Promise<StepOutput[]> {
  const caches = [0, 1, 2, 3].map(() => model.newCache(4));
  const steps: SequenceInput[][] = [
    [{ cache: caches[0], tokens: ids(70, 1, vocab), allPositions: true }, { cache: caches[1], tokens: ids(5, 2, vocab) }, { cache: caches[2], tokens: ids(1, 3, vocab) }],
    [...caches.slice(0, 3).map((cache, i) => ({ cache, tokens: ids(1, 10 + i, vocab) })), { cache: caches[3], tokens: ids(9, 4, vocab) }],
  ];
  for (let s = 0; s < 4; s++) steps.push(caches.map((cache, i) => ({ cache, tokens: ids(1, 20 + 4 * s + i, vocab) })));
  const out: StepOutput[] = [];
  for (const step of steps) out.push(await model.forward(step));
  return out;
}

function expectSame(got: StepOutput[], want: StepOutput[]): void {
  expect(got).toHaveLength(want.length);
  got.forEach((step, s) => {
    step.logits.forEach((logits, i) => expect(Array.from(logits), `step ${s} sequence ${i}`).toEqual(Array.from(want[s].logits[i])));
    step.layers.forEach((layer, l) => {
      const other = want[s].layers[l];
      expect(Array.from(layer.expert), `step ${s} layer ${l} experts`).toEqual(Array.from(other.expert));
      expect(Array.from(layer.gate), `step ${s} layer ${l} gates`).toEqual(Array.from(other.gate));
      expect(layer.tokensPerExpert, `step ${s} layer ${l} load`).toEqual(other.tokensPerExpert);
      expect([layer.k, layer.overflow, layer.capacity]).toEqual([other.k, other.overflow, other.capacity]);
    });
  });
}

const ARCHITECTURES: Array<[string, ModelConfig, TinyPackageOptions]> = [
  ['OLMoE top-1, q/k norms', tinyConfig({ hidden_size: 24, intermediate_size: 40, num_experts: 6, num_attention_heads: 3, num_key_value_heads: 3 }), {}],
  ['Mixtral top-2 renormalised, grouped-query attention', tinyConfig({
    hidden_size: 32, num_attention_heads: 4, num_key_value_heads: 2, num_experts: 4, num_experts_per_tok: 2, norm_topk_prob: true,
    qk_norm: false, rope_theta: 1e6, max_position_embeddings: 128,
  }), { architecture: 'mixtral' }],
  ['Qwen2-MoE top-2, biases, gated shared expert', tinyConfig({
    hidden_size: 32, num_attention_heads: 4, num_key_value_heads: 2, num_experts: 6, num_experts_per_tok: 2, qk_norm: false,
    attention_bias: true, shared_expert_intermediate_size: 40, shared_expert_gated: true, rope_theta: 1e6, max_position_embeddings: 128,
  }), { architecture: 'qwen2_moe' }],
  ['Granite-MoE multipliers, tied embeddings', tinyConfig({
    hidden_size: 32, num_attention_heads: 4, num_key_value_heads: 2, num_experts: 4, num_experts_per_tok: 2, norm_topk_prob: true,
    qk_norm: false, tie_word_embeddings: true, embedding_multiplier: 12, attention_multiplier: 0.015625, residual_multiplier: 0.22,
    logits_scaling: 6, max_position_embeddings: 128,
  }), { architecture: 'granitemoe' }],
];

describe.skipIf(!dense.available)('the fused forward equals the stage-driven forward, bit for bit', () => {
  for (const [name, config, options] of ARCHITECTURES) {
    it(name, async () => {
      const models = await pair(writeTinyPackage(config, 61, undefined, options));
      try {
        expect([models.fused.forwardKernel, models.stages.forwardKernel]).toEqual(['fused', 'stages']);
        expectSame(await script(models.fused, config.vocab_size), await script(models.stages, config.vocab_size));
      } finally {
        await models.close();
      }
    });
  }

  it('with a quarter of the experts dropped by pruning (never chosen)', async () => {
    const base = writeTinyPackage(tinyConfig({ hidden_size: 24, intermediate_size: 48, num_experts: 8 }), 33);
    writeFileSync(path.join(base, 'calibration.txt'), 'Call me Ishmael. Some years ago, never mind how long precisely, having little money. '.repeat(6));
    const dir = mkdtempSync(path.join(tmpdir(), 'fused-pruned-'));
    const pruned = await prunePackage({ modelDir: base, outDir: dir, method: 'magnitude', sparsity: 0.5, dropExperts: 0.25 });
    expect(pruned.dropped.length).toBeGreaterThan(0);
    const models = await pair(dir);
    try {
      const got = await script(models.fused, 258);
      expectSame(got, await script(models.stages, 258));
      const dropped = new Set(pruned.dropped.map((d) => `${d.layer}.${d.expert}`));
      for (const step of got) for (const layer of step.layers) expect([...layer.expert].some((e) => dropped.has(`${layer.layer}.${e}`))).toBe(false);
    } finally {
      await models.close();
    }
  });

  it('is not used with a capacity factor (planDispatch drops overflow); the scheduler then yields before each step', async () => {
    const engine = await Engine.load(engineConfig(writeTinyPackage(tinyConfig(), 7), { ...inProcess, routing: { capacityFactor: 1.25 } }));
    try {
      expect(engine.model.forwardKernel).toBe('stages');
      const seen = await tokensBeforeAnImmediate(engine, 20);
      expect(seen).toBeGreaterThanOrEqual(0);
      expect(seen).toBeLessThan(2);
    } finally {
      await engine.close();
    }
  });

  it('the native entry points refuse what they cannot run, saying what is wrong', () => {
    const status = fusedForwardAddon();
    expect(status.available).toBe(true);
    if (!status.available) return;
    expect(() => status.addon.forwardBegin({}, {})).toThrow(/forwardBegin: model needs heads, kvHeads, headDim, k/);
    expect(() => status.addon.forwardBegin({ heads: 4, kvHeads: 4, headDim: 64, k: 1, scale: 0.125, residualScale: 1, renormalize: false, layers: [{}] }, {}))
      .toThrow(/model.layers must hold live trunk layer handles/);
    expect(() => status.addon.forwardJoin()).toThrow(/no forward is running/);
  });

  describe('the bundled model', () => {
    let models: Awaited<ReturnType<typeof pair>>;
    beforeAll(async () => {
      models = await pair(BUNDLED);
    }, 60_000);
    afterAll(() => models?.close());

    it('over prefills and decodes', async () => {
      const vocab = models.fused.config.vocab_size;
      expectSame(await script(models.fused, vocab), await script(models.stages, vocab));
    });

    it('lets the event loop in while the team computes: an immediate queued before the call runs before it resolves', async () => {
      // The stage-driven forward with in-process experts awaits only settled promises: it resolves first.
      const immediateRanBefore = async (model: MoeModel) => {
        let ran = false;
        setImmediate(() => (ran = true));
        await model.forward([{ cache: model.newCache(), tokens: ids(20, 5, 256) }]);
        return ran;
      };
      expect(await immediateRanBefore(models.fused)).toBe(true);
      expect(await immediateRanBefore(models.stages)).toBe(false);
    });

    it('runs concurrent calls one after another, each as it would alone, also across two fused models', async () => {
      const vocab = models.fused.config.vocab_size;
      const experts = models.engine.pool as InProcessExperts;
      const other = await MoeModel.load(loadModelPackage(BUNDLED), experts, { capacityFactor: null, trunkThreads: 1, executionProviders: ['cpu'], team: experts.team });
      expect(other.forwardKernel).toBe('fused');
      const input = (seed: number) => [{ cache: models.fused.newCache(), tokens: ids(12, seed, vocab) }, { cache: models.fused.newCache(), tokens: ids(3, seed + 1, vocab) }];
      const alone = [await models.fused.forward(input(7)), await models.fused.forward(input(8)), await other.forward(input(9))];
      const together = await Promise.all([models.fused.forward(input(7)), models.fused.forward(input(8)), other.forward(input(9))]);
      expectSame(together, alone);
    });

    it('a step with a token outside the vocabulary fails alone; the next one runs', async () => {
      const vocab = models.fused.config.vocab_size;
      await expect(models.fused.forward([{ cache: models.fused.newCache(), tokens: [1, vocab] }])).rejects.toThrow(/outside the vocabulary/);
      const cache = models.fused.newCache();
      const out = await models.fused.forward([{ cache, tokens: ids(4, 9, vocab) }]);
      expect(cache.length).toBe(4);
      expect(out.logits[0].every(Number.isFinite)).toBe(true);
    });
  });
});
