/**
 * Per-layer expert dispatch latency: ExpertPool.runLayer over the Piscina task path ('tasks') against the
 * shared-memory channel ('shared-memory', experts/channel.ts) with several spin settings, at batch 1 and 32, on a
 * model package's experts (default: the bundled model, 2 workers, dense kernels). Variants run interleaved (the order
 * rotates every round), each round timing every layer once per variant; figures are medians over all rounds.
 * Appends the table to bench/RESULTS.md. Only ratios within one run count (the machine is shared and drifts).
 *
 *   npx tsx bench/dispatch.ts [--model DIR] [--workers 2] [--rounds 300] [--batches 1,32] [--label TEXT] [--no-record]
 */
import { performance } from 'node:perf_hooks';
import { ExpertPool, type ChannelMode, type ChannelSpin } from '../experts/pool.ts';
import { randomValues } from '../experts/kernels/reference.ts';
import { planDispatch } from '../router/dispatch.ts';
import { loadModelPackage } from '../src/engine/package.ts';
import { roundRobinPlacement } from '../src/placement/placement.ts';
import { BUNDLED_MODEL } from '../test/fixtures/tiny-package.ts';
import { intFlag, parseFlags, runCli, UsageError } from './cli-common.ts';
import { commandLine, publish } from './record.ts';
import { fmt, markdownTable, median } from './stats.ts';

const SCRIPT = 'bench/dispatch.ts';
const HELP = `Usage: npx tsx ${SCRIPT} [options]

Per-layer expert dispatch latency (ExpertPool.runLayer): Piscina tasks against the shared-memory channel, at
several batch sizes, variants interleaved; medians; appends the table to bench/RESULTS.md.

  --model DIR      model package (default: the bundled model)
  --workers N      expert workers (default 2)
  --rounds N       rounds; each times every layer once per variant and batch size (default 300)
  --batches LIST   batch sizes in tokens (default 1,32)
  --label TEXT     label for the RESULTS.md section
  --no-record      print only
  --help
`;

interface Options {
  model: string;
  workers: number;
  rounds: number;
  batches: number[];
  label: string | undefined;
  record: boolean;
}

interface Variant {
  name: string;
  channel: ChannelMode;
  spin?: ChannelSpin;
}

const VARIANTS: Variant[] = [
  { name: 'tasks (Piscina round trip)', channel: 'tasks' },
  { name: 'shared-memory, no spin', channel: 'shared-memory', spin: { mainUs: 0, workerUs: 0 } },
  { name: 'shared-memory, main spins 150 µs', channel: 'shared-memory', spin: { mainUs: 150, workerUs: 0 } },
  { name: 'shared-memory, both spin 150 µs', channel: 'shared-memory', spin: { mainUs: 150, workerUs: 150 } },
];

function parse(argv: string[]): Options | null {
  const v = parseFlags(argv, {
    model: { type: 'string' }, workers: { type: 'string' }, rounds: { type: 'string' }, batches: { type: 'string' },
    label: { type: 'string' }, 'no-record': { type: 'boolean' }, help: { type: 'boolean' },
  });
  if (v.help) return null;
  const batches = (v.batches ?? '1,32').split(',').map((s) => Number(s));
  if (batches.some((b) => !Number.isInteger(b) || b < 1 || b > 4096)) throw new UsageError('--batches: integers 1..4096');
  return {
    model: v.model ?? BUNDLED_MODEL, workers: intFlag('--workers', v.workers, 2, 1, 16), rounds: intFlag('--rounds', v.rounds, 300, 1, 100_000),
    batches, label: v.label, record: !v['no-record'],
  };
}

async function run(o: Options): Promise<number> {
  const pkg = loadModelPackage(o.model);
  const c = pkg.config;
  const layers = c.num_hidden_layers;
  const pools = await Promise.all(VARIANTS.map((variant) => ExpertPool.start({
    weightsFile: pkg.weightsFile, hidden: c.hidden_size, ffn: c.intermediate_size,
    placement: roundRobinPlacement(layers, c.num_experts, o.workers), threadsPerWorker: 1, executionProviders: ['cpu'],
    kernel: { kernel: 'dense', sparseMinSparsity: 0.5, trialMs: 0 }, channel: variant.channel,
    ...(variant.spin ? { channelSpin: variant.spin } : {}),
  })));
  try {
    // Per batch size and variant: per-layer wall ms, and the slowest worker's reported compute ms.
    const wall = o.batches.map(() => VARIANTS.map(() => [] as number[]));
    const compute = o.batches.map(() => VARIANTS.map(() => [] as number[]));
    let seed = 1;
    for (let round = -10; round < o.rounds; round++) { // 10 warm-up rounds
      for (const [b, tokens] of o.batches.entries()) {
        // Same inputs and routing for every variant in this round; top-1 routing at random.
        const xs = Array.from({ length: layers }, () => randomValues(tokens * c.hidden_size, seed++, 1));
        const plans = Array.from({ length: layers }, () => planDispatch(Int32Array.from({ length: tokens }, () => Math.floor(Math.random() * c.num_experts)), c.num_experts, null));
        for (let k = 0; k < VARIANTS.length; k++) {
          const v = (k + round + VARIANTS.length * 10) % VARIANTS.length;
          for (let layer = 0; layer < layers; layer++) {
            const started = performance.now();
            const outcome = await pools[v].runLayer(layer, xs[layer], plans[layer]);
            const ms = performance.now() - started;
            if (round < 0) continue;
            wall[b][v].push(ms);
            compute[b][v].push(Math.max(...outcome.workers.map((w) => w.computeMs)));
          }
        }
      }
    }
    const rows = o.batches.flatMap((tokens, b) => VARIANTS.map((variant, v) => {
      const ms = median(wall[b][v]);
      return [String(tokens), variant.name, fmt(ms * 1000, 0), fmt(median(compute[b][v]) * 1000, 0), fmt((ms - median(compute[b][v])) * 1000, 0),
        `${fmt(median(wall[b][0]) / ms, 2)}×`];
    }));
    const table = markdownTable(['batch', 'path', 'per-layer µs', 'worker compute µs', 'overhead µs', 'speed-up vs tasks'], rows);
    const notes = [
      `Medians over ${o.rounds} rounds × ${layers} layers per cell (after 10 warm-up rounds); ${o.workers} workers, dense kernels, top-1 routing at random; variants interleaved, order rotated every round.`,
      'per-layer = ExpertPool.runLayer wall time on the main thread (rows in, outputs out); worker compute = the slowest worker\'s kernel time; overhead = the difference of the two medians.',
      'A worker that spins after a batch catches the next one at once here (layers follow back to back); in a real step the trunk runs in between, so that spin mostly burns a core the trunk needs.',
    ];
    publish([table], notes, o.record && {
      title: 'expert dispatch: Piscina tasks vs shared-memory channel', ...(o.label ? { label: o.label } : {}), command: commandLine(SCRIPT),
      facts: [['model', `${o.model} (hidden ${c.hidden_size}, ffn ${c.intermediate_size}, ${layers} layers × ${c.num_experts} experts)`]],
    });
    return 0;
  } finally {
    await Promise.all(pools.map((p) => p.close()));
  }
}

runCli(SCRIPT, HELP, parse, run);
