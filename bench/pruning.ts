/**
 * Pruning quality and size: prunes the model with each method and sparsity, scores every package with
 * `switchyard eval` (validation bits per byte, greedy agreement with the dense model), measures single-stream
 * decode tokens/s (median over repeats, same run), and appends one table to bench/RESULTS.md.
 *
 *   npx tsx bench/pruning.ts [--model models/switchyard-moe] [--repeats 3] [--tokens 96] [--quick] [--no-record]
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig } from '../src/config.ts';
import { Engine } from '../src/engine/engine.ts';
import { runEval } from '../src/eval/run-eval.ts';
import { prunePackage, type PruneOptions } from '../src/pruning/prune-package.ts';
import { appendResults, commandLine, formatSection } from './record.ts';
import { fmt, markdownTable, median } from './stats.ts';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'models/switchyard-moe' },
    repeats: { type: 'string', default: '3' },
    tokens: { type: 'string', default: '96' },
    quick: { type: 'boolean', default: false },
    'no-record': { type: 'boolean', default: false },
  },
});
const model = values.model!;
const repeats = Number(values.repeats);
const decodeTokens = Number(values.tokens);

type Variant = { name: string; prune?: Omit<PruneOptions, 'modelDir' | 'outDir'> };
const variants: Variant[] = [{ name: 'dense' }];
const sparsities = values.quick ? [0.5] : [0.5, 0.7, 0.9];
for (const method of ['magnitude', 'wanda', 'sparsegpt'] as const) {
  for (const sparsity of sparsities) variants.push({ name: `${method} ${sparsity * 100}%`, prune: { method, sparsity } });
}
variants.push({ name: 'sparsegpt 50% + drop 25% experts', prune: { method: 'sparsegpt', sparsity: 0.5, dropExperts: 0.25 } });
variants.push({ name: '2:4 magnitude', prune: { method: '2:4', sparsity: 0.5 } });
variants.push({ name: '2:4 sparsegpt', prune: { method: 'sparsegpt', sparsity: 0.5, nm: { n: 2, m: 4 } } });
for (const fraction of values.quick ? [0.25] : [0.25, 0.5]) variants.push({ name: `structured ${fraction * 100}%`, prune: { method: 'structured', sparsity: fraction } });

/**
 * Bytes of expert weights the workers' chosen kernels hold: dense kernels (onnxruntime dense or structured) keep
 * 3·ffn·d float32 weights; the sparse kernel keeps CSR (float32 value + 16-bit column per non-zero, 32-bit row offsets).
 */
function kernelBytes(report: { kernel: string; ffn: number; sparsity: number }, hidden: number): number {
  const weights = 3 * report.ffn * hidden;
  if (report.kernel !== 'sparse') return weights * 4;
  return Math.round((1 - report.sparsity) * weights) * 6 + (2 * (report.ffn + 1) + hidden + 1) * 4;
}

/**
 * Single-stream greedy decode tokens/s (prefill excluded), median over repeats, and the expert weight bytes the
 * workers' kernels hold (computed from each resident expert's kernel, its width and sparsity).
 */
async function decodeRate(dir: string): Promise<{ rate: number; expertMiB: number }> {
  const engine = await Engine.load(loadConfig({ file: null, env: {}, overrides: { model: dir, cache: { prefix: { maxBytes: 0 }, response: { maxEntries: 0 } } } }));
  try {
    const hidden = engine.pkg.config.hidden_size;
    const reports = (await engine.pool.stats()).flatMap((s) => Object.values(s.kernels));
    const expertMiB = reports.reduce((n, r) => n + kernelBytes(r, hidden), 0) / 2 ** 20;
    const rates: number[] = [];
    await engine.generate({ inputs: 'Warm up', maxNewTokens: 8, stop: [], sampling: { doSample: false, temperature: 1, topK: null, topP: null, repetitionPenalty: null, seed: null } });
    for (let r = 0; r < repeats; r++) {
      const times: number[] = [];
      await engine.generate(
        { inputs: 'Call me Ishmael. Some years ago', maxNewTokens: decodeTokens, stop: [], sampling: { doSample: false, temperature: 1, topK: null, topP: null, repetitionPenalty: null, seed: null } },
        { onToken: () => times.push(performance.now()) },
      );
      rates.push((times.length - 1) / ((times[times.length - 1] - times[0]) / 1000));
    }
    return { rate: median(rates), expertMiB };
  } finally {
    await engine.close();
  }
}

const rows: Array<Array<string | number>> = [];
let denseBpb = NaN;
for (const v of variants) {
  const dir = v.prune ? mkdtempSync(join(tmpdir(), 'switchyard-pruned-')) : model;
  try {
    const started = performance.now();
    const pruned = v.prune ? await prunePackage({ modelDir: model, outDir: dir, workers: 2, ...v.prune }) : null;
    const pruneS = (performance.now() - started) / 1000;
    const result = await runEval({ model: dir, reference: model });
    if (!v.prune) denseBpb = result.val_bpb;
    const { rate, expertMiB } = await decodeRate(dir);
    const bytes = statSync(join(dir, 'model.safetensors')).size;
    rows.push([
      v.name, pruned ? fmt(100 * pruned.expertSparsity, 1) : '0.0', fmt(result.val_bpb, 4),
      fmt((100 * (result.val_bpb - denseBpb)) / denseBpb, 2), result.greedy_agreement === null ? '—' : fmt(100 * result.greedy_agreement, 2),
      fmt(bytes / 2 ** 20, 2), fmt(expertMiB, 2), fmt(rate, 1), v.prune ? fmt(pruneS, 1) : '—',
    ]);
    process.stderr.write(`${v.name}: val_bpb ${result.val_bpb.toFixed(4)}, decode ${rate.toFixed(1)} tok/s\n`);
  } finally {
    if (v.prune) rmSync(dir, { recursive: true, force: true });
  }
}

const table = markdownTable(
  ['variant', 'expert sparsity %', 'val bpb', 'Δ bpb %', 'greedy agreement %', 'weights MiB (disk)', 'expert weights in workers MiB', 'decode tok/s', 'prune s'],
  rows, ['left', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right'],
);
process.stdout.write(`${table}\n`);
if (!values['no-record']) {
  const file = appendResults(formatSection({
    title: 'pruning quality, size and decode speed',
    command: commandLine('bench/pruning.ts'),
    facts: [['model', model], ['decode', `${decodeTokens} greedy tokens, single stream, median of ${repeats}`]],
    body: [table, "Each package is served with the kernel experts.kernel 'auto' picks per expert at load: the native sparse kernel "
      + 'for unstructured and 2:4 experts, dense onnxruntime for dense and structurally pruned ones. Greedy agreement: '
      + 'positions of the validation windows where the pruned and dense models make the same argmax choice.'],
  }));
  process.stderr.write(`appended to ${file}\n`);
}
