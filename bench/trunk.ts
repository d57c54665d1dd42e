/**
 * The trunk's step cost: `npx tsx bench/trunk.ts --help`.
 *
 * In one process, times MoeModel.forward for decode steps at batch 1, 8 and 32 (each sequence one new token after a
 * past of 64–256 tokens) with the per-sequence attention path (one run per sequence and layer) and the batched one
 * (attention.ts), interleaved A/B within each repeat, medians. Two expert runners: the configured worker pool
 * (the whole step) and a null runner that returns zeros (the trunk alone). Also times the padded K/V gather alone.
 */
import { performance } from 'node:perf_hooks';
import { loadConfig } from '../src/config.ts';
import { Engine } from '../src/engine/engine.ts';
import { loadModelPackage } from '../src/engine/package.ts';
import { MoeModel, type ExpertRunner } from '../src/engine/model.ts';
import type { KvCache } from '../src/engine/kv-cache.ts';
import { gatherPadded, planGroup } from '../src/engine/attention.ts';
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
  const variants = {
    'per-sequence': { pool: await MoeModel.load(pkg, engine.pool, { ...options, attention: 'per-sequence' }), trunk: await MoeModel.load(pkg, nullRunner, { ...options, attention: 'per-sequence' }) },
    batched: { pool: await MoeModel.load(pkg, engine.pool, { ...options, attention: 'batched' }), trunk: await MoeModel.load(pkg, nullRunner, { ...options, attention: 'batched' }) },
  };

  const rows: Array<Array<string | number>> = [];
  for (const batch of batches) {
    // Pasts 64–256, prefilled once (batched path); every timed step decodes one token and rewinds the caches.
    const pasts = Array.from({ length: batch }, (_, i) => 64 + ((i * 97) % 193));
    const caches: KvCache[] = pasts.map(() => variants.batched.trunk.newCache());
    for (const [i, cache] of caches.entries()) {
      await variants.batched.trunk.forward([{ cache, tokens: Array.from({ length: pasts[i] }, (_, t) => (t * 31 + i) % 256) }]);
    }
    const step = async (model: MoeModel) => {
      const started = performance.now();
      await model.forward(caches.map((cache, i) => ({ cache, tokens: [(i * 7) % 256] })));
      const ms = performance.now() - started;
      caches.forEach((cache, i) => (cache.length = pasts[i]));
      return ms;
    };
    console.error(`batch ${batch}: prefilled`);
    const times: Record<string, number[]> = {};
    for (let r = 0; r < repeats + 2; r++) {
      for (const [name, v] of Object.entries(variants)) {
        for (const kind of ['pool', 'trunk'] as const) {
          if (r === 0) console.error(`  ${name}/${kind}`);
          const ms = await step(v[kind]);
          if (r >= 2) (times[`${name}/${kind}`] ??= []).push(ms); // the first two repeats warm up
        }
      }
    }
    // The padded gather alone (keys and values, every layer), as the batched path does it per step.
    const group = planGroup(caches.map((cache, i) => ({ cache, row: i, n: 1 })), batch, c.num_attention_heads);
    const scratch = new Float32Array(batch * group.keys * c.hidden_size);
    const gather: number[] = [];
    for (let r = 0; r < repeats; r++) {
      const started = performance.now();
      for (let l = 0; l < c.num_hidden_layers; l++) {
        gatherPadded(group, l, c.hidden_size, scratch, 'keys');
        gatherPadded(group, l, c.hidden_size, scratch, 'values');
      }
      gather.push(performance.now() - started);
    }
    const m = (k: string) => median(times[k]);
    rows.push([batch, fmt(m('per-sequence/pool'), 2), fmt(m('batched/pool'), 2), fmt(ratio(m('per-sequence/pool'), m('batched/pool')), 2),
      fmt(m('per-sequence/trunk'), 2), fmt(m('batched/trunk'), 2), fmt(ratio(m('per-sequence/trunk'), m('batched/trunk')), 2), fmt(median(gather), 3)]);
    console.error(`batch ${batch} done`);
  }
  const table = markdownTable(
    ['batch', 'step, per-sequence (ms)', 'step, batched (ms)', 'speedup', 'trunk only, per-sequence (ms)', 'trunk only, batched (ms)', 'speedup', 'K/V gather (ms)'],
    rows,
  );
  publish([table], [
    `decode steps, one token per sequence, pasts 64–256; medians of ${repeats} interleaved repeats (after 2 warm-up)`,
    '"step": MoeModel.forward with the configured worker pool; "trunk only": experts replaced by a runner returning zeros',
    '"K/V gather": copying every sequence\'s cached keys and values into the padded [B, Tk, d] buffers, all layers, per step (part of the batched time)',
  ], args.includes('--no-record') ? false : { title: 'Trunk: batched vs per-sequence attention (in-process forward)', command: commandLine('bench/trunk.ts'),
    facts: [['experts.channel', engine.pool ? (channel ?? config.experts.channel) : '']] });
} finally {
  await engine.close();
}
