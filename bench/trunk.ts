/**
 * The trunk's step cost: `npx tsx bench/trunk.ts --help`.
 *
 * In one process, times MoeModel.forward for decode steps at batch 1, 8 and 32 (each sequence one new token after a
 * past of 64–256 tokens) with the per-sequence attention path (one run per sequence and layer) and the batched one
 * (attention.ts: the attention core over the KV caches, native kernel or its TypeScript twin), interleaved within
 * each repeat, medians. Three expert runners: the configured worker pool (the whole step), the in-process experts
 * on the compute team (experts.execution 'in-process', the trunk on the team too), and a null runner that returns
 * zeros (the trunk alone).
 */
import { availableParallelism } from 'node:os';
import { performance } from 'node:perf_hooks';
import { loadConfig } from '../src/config.ts';
import { Engine } from '../src/engine/engine.ts';
import { loadModelPackage } from '../src/engine/package.ts';
import { MoeModel, type ExpertRunner, type ModelOptions } from '../src/engine/model.ts';
import type { KvCache } from '../src/engine/kv-cache.ts';
import { InProcessExperts } from '../experts/in-process.ts';
import { commandLine, publish } from './record.ts';
import { fmt, markdownTable, median, ratio } from './stats.ts';

const HELP = `Usage: npx tsx bench/trunk.ts [--repeats R] [--batches 1,8,32] [--channel shared-memory|tasks] [--no-record]

Decode-step time of MoeModel.forward, per-sequence attention vs batched attention, interleaved, medians over R
repeats (default 30); --channel overrides experts.channel of the pool. Pasts are 64–256 tokens (deterministic). Appends to bench/RESULTS.md unless --no-record.`;

const args = process.argv.slice(2);
if (args.includes('-h') || args.includes('--help')) {
  console.log(HELP);
  process.exit(0);
}
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const repeats = Number(flag('--repeats') ?? 30);
const batches = (flag('--batches') ?? '1,8,32').split(',').map(Number);

const config = loadConfig();
const channel = flag('--channel') as typeof config.experts.channel | undefined;
const engine = await Engine.load({
  ...config, cache: { ...config.cache, prefix: { ...config.cache.prefix, maxBytes: 0 } },
  experts: { ...config.experts, ...(channel ? { channel } : {}) },
});
try {
  const pkg = loadModelPackage(config.model);
  const c = pkg.config;
  const nullRunner: ExpertRunner = {
    runLayer: async (_layer, _x, plan) => ({
      batches: plan.batches.map(({ expert, rows }) => ({ expert, rows, worker: 0, output: new Float32Array(rows.length * c.hidden_size) })),
      workers: [],
    }),
  };
  const options = { capacityFactor: null, trunkThreads: config.onnx.trunkThreads, executionProviders: ['cpu'] };
  const load = (runner: ExpertRunner, extra: Partial<ModelOptions>) => MoeModel.load(pkg, runner, { ...options, ...extra });
  // name → model; "pool" variants run the whole step, "trunk" ones the trunk alone.
  const variants: Array<[string, MoeModel]> = [
    ['per-sequence/pool', await load(engine.pool, { attention: 'per-sequence' })],
    ['batched/pool', await load(engine.pool, { attention: 'batched' })],
    ['overlap/pool', await load(engine.pool, { attention: 'batched', microBatchMinTokens: 2 })],
    ['per-sequence/trunk', await load(nullRunner, { attention: 'per-sequence' })],
    ['batched-typescript/trunk', await load(nullRunner, { attention: 'batched', attentionKernel: 'typescript' })],
    ['batched/trunk', await load(nullRunner, { attention: 'batched' })],
  ];
  // Loaded after the pool's models: the compute team's helper threads start here and only this model uses them.
  const team = InProcessExperts.load({
    weightsFile: pkg.weightsFile, tensors: pkg.tensors, layers: c.num_hidden_layers, experts: c.num_experts, hidden: c.hidden_size,
    threads: config.experts.teamThreads ?? availableParallelism(), droppedExperts: pkg.droppedExperts,
  });
  variants.push(['in-process', await load(team, { attention: 'batched', team: team.team })]);
  variants.push(['in-process stages', await load(team, { attention: 'batched', team: team.team, fused: false })]);

  const rows: Array<Array<string | number>> = [];
  for (const batch of batches) {
    // Pasts 64–256, prefilled once per variant; every timed step decodes one more token (the pasts grow by one a step).
    const pasts = Array.from({ length: batch }, (_, i) => 64 + ((i * 97) % 193));
    const cachesOf = new Map<MoeModel, KvCache[]>();
    for (const [, model] of variants) {
      const caches = pasts.map(() => model.newCache());
      for (const [i, cache] of caches.entries()) {
        await model.forward([{ cache, tokens: Array.from({ length: pasts[i] }, (_, t) => (t * 31 + i) % 256) }]);
      }
      cachesOf.set(model, caches);
    }
    const step = async (model: MoeModel) => {
      const caches = cachesOf.get(model)!;
      // Outside the timed region: what the event loop holds (the pool's replies, timers due), which a forward that
      // yields inside its step (the fused one) would otherwise run inside it.
      await new Promise((resolve) => setTimeout(resolve, 1));
      const started = performance.now();
      await model.forward(caches.map((cache, i) => ({ cache, tokens: [(i * 7 + cache.length) % 256] })));
      return performance.now() - started;
    };
    const times: Record<string, number[]> = {};
    for (let r = 0; r < repeats + 2; r++) {
      for (const [name, model] of variants) {
        const ms = await step(model);
        if (r >= 2) (times[name] ??= []).push(ms); // the first two repeats warm up
      }
    }
    const m = (k: string) => median(times[k]);
    rows.push([batch, fmt(m('per-sequence/pool'), 2), fmt(m('batched/pool'), 2), fmt(ratio(m('per-sequence/pool'), m('batched/pool')), 2),
      fmt(m('overlap/pool'), 2), fmt(ratio(m('batched/pool'), m('overlap/pool')), 2),
      fmt(m('per-sequence/trunk'), 2), fmt(m('batched-typescript/trunk'), 2), fmt(m('batched/trunk'), 2),
      fmt(ratio(m('per-sequence/trunk'), m('batched/trunk')), 2),
      // The workers' default: two micro-batches from experts.overlapMinTokens tokens on.
      fmt(m('in-process'), 2), fmt(ratio(m(batch >= (config.experts.overlapMinTokens ?? Infinity) ? 'overlap/pool' : 'batched/pool'), m('in-process')), 2),
      fmt(m('in-process stages'), 2), fmt(ratio(m('in-process stages'), m('in-process')), 2)]);
    console.error(`batch ${batch} done`);
  }
  await team.close();
  const table = markdownTable(
    ['batch', 'step, per-sequence (ms)', 'step, batched (ms)', 'speedup', 'step, batched, two micro-batches (ms)', 'overlap speedup', 'trunk, per-sequence (ms)', 'trunk, batched, TypeScript kernel (ms)', 'trunk, batched (ms)', 'trunk speedup', 'step, in-process experts on the compute team (ms)', 'in-process speedup over the workers\' default', 'in-process, stages driven from TypeScript (ms)', 'fused forward speedup'],
    rows,
  );
  publish([table], [
    `decode steps, one token per sequence, pasts 64–256 at the start (one longer each step); medians of ${repeats} interleaved repeats (after 2 warm-up)`,
    '"step": MoeModel.forward with the configured worker pool; "trunk": experts replaced by a runner returning zeros',
    '"batched": per layer one projection run, the native attention kernel over the KV caches in place, one output run; "TypeScript kernel": the same with the kernel\'s plain TypeScript twin (what runs where the addon is not built)',
    '"two micro-batches": the batched step split in two halves whose attention and experts overlap (experts.overlapMinTokens 2; bit-identical outputs)',
    `"in-process": experts.execution 'in-process' (every expert in this process, the step's arithmetic on a compute team of ${team.threads} threads, the whole forward native: src/engine/fused-forward.ts); its speedup is over the workers' default (two micro-batches from experts.overlapMinTokens = ${config.experts.overlapMinTokens} tokens)`,
    '"stages driven from TypeScript": the same in-process model with ModelOptions.fused false (each stage a call from TypeScript); "fused forward speedup" = stages / fused',
  ], args.includes('--no-record') ? false : { title: 'Trunk: batched vs per-sequence attention (in-process forward)', command: commandLine('bench/trunk.ts'),
    facts: [['experts.channel', engine.pool ? (channel ?? config.experts.channel) : '']] });
} finally {
  await engine.close();
}
