/**
 * Expert kernel latency: one expert FFN per kernel (dense onnxruntime, our native dense and sparse kernels, int8,
 * int4) at batch 1, 8, 64 and 256, on the dense weights and on magnitude-pruned copies at several unstructured
 * sparsities. The weights are one expert of a model package (--model) or random. Every figure is the median over
 * repeats of the mean time per call in a block of calls; kernels run interleaved within each repeat, so ratios come
 * from the same conditions. Also reports what 'auto' selection picks for each weight set, and each kernel's error against the
 * reference FFN. Appends the table to bench/RESULTS.md.
 *
 *   npx tsx bench/kernels.ts [--model DIR [--layer L] [--expert E]] [--hidden 256] [--ffn 512]
 *                           [--sparsities 50,70,75,90] [--repeats 9] [--block-ms 4] [--threads 1] [--label TEXT] [--no-record]
 */
import { performance } from 'node:perf_hooks';
import { readSafetensorsHeader } from '../src/format/safetensors.ts';
import { loadModelPackage } from '../src/engine/package.ts';
import type { ExpertWeights } from '../experts/expert-graph.ts';
import { readExpertWeights } from '../experts/expert-weights.ts';
import { OrtKernel } from '../experts/kernels/ort-kernels.ts';
import { checkInput, referenceFfn, relativeL2Error, relativeMaxError, weightSparsity } from '../experts/kernels/reference.ts';
import { selectKernel } from '../experts/kernels/select.ts';
import { DenseNativeKernel, nativeDense } from '../experts/kernels/dense-native.ts';
import { nativeSparse, SparseKernel } from '../experts/kernels/sparse.ts';
import { DEFAULT_KERNEL_SETTINGS, type ExpertKernel, type KernelName } from '../experts/kernels/types.ts';
import { magnitude } from '../experts/pruning/methods.ts';
import { intFlag, numberFlag, parseFlags, runCli, UsageError } from './cli-common.ts';
import { commandLine, publish } from './record.ts';
import { fmt, markdownTable, median } from './stats.ts';

const SCRIPT = 'bench/kernels.ts';
const HELP = `Usage: npx tsx ${SCRIPT} [options]

Expert FFN latency per kernel (dense, dense-native, sparse, int8, int4) at batch 1, 8, 64 and 256, on dense weights and on
magnitude-pruned copies; medians over repeats; appends the table to bench/RESULTS.md.

  --model DIR         take the weights of one expert of this model package (default: random weights)
  --layer L           that expert's layer (default 0)
  --expert E          that expert's index (default 0)
  --hidden N          random weights: hidden size (default 256)
  --ffn N             random weights: FFN width (default 512)
  --sparsities LIST   unstructured sparsities in percent (default 50,70,75,90)
  --repeats N         repeats per kernel and batch size (default 9)
  --block-ms MS       each repeat times a block of calls of about this many ms (default 4)
  --threads N         onnxruntime intra-op threads (default 1, as the workers use)
  --label TEXT        label for the RESULTS.md section
  --no-record         print only
  --help
`;

const BATCHES = [1, 8, 64, 256];

interface Options {
  model: string | null;
  layer: number;
  expert: number;
  hidden: number;
  ffn: number;
  sparsities: number[];
  repeats: number;
  blockMs: number;
  threads: number;
  label: string | undefined;
  record: boolean;
}

function parse(argv: string[]): Options | null {
  const v = parseFlags(argv, {
    model: { type: 'string' }, layer: { type: 'string' }, expert: { type: 'string' }, hidden: { type: 'string' },
    ffn: { type: 'string' }, sparsities: { type: 'string' }, repeats: { type: 'string' }, 'block-ms': { type: 'string' },
    threads: { type: 'string' }, label: { type: 'string' }, 'no-record': { type: 'boolean' }, help: { type: 'boolean' },
  });
  if (v.help) return null;
  const sparsities = (v.sparsities ?? '50,70,75,90').split(',').map((s) => Number(s.trim()));
  if (sparsities.some((s) => !Number.isFinite(s) || s <= 0 || s >= 100)) throw new UsageError('--sparsities must be percentages between 0 and 100, e.g. 50,70,90');
  return {
    model: v.model ?? null,
    layer: intFlag('layer', v.layer, 0, 0, 1_000),
    expert: intFlag('expert', v.expert, 0, 0, 100_000),
    hidden: intFlag('hidden', v.hidden, 256, 1, 65_535),
    ffn: intFlag('ffn', v.ffn, 512, 1, 65_535),
    sparsities: sparsities.map((s) => s / 100),
    repeats: intFlag('repeats', v.repeats, 9, 1, 1_000),
    blockMs: numberFlag('block-ms', v['block-ms'], 4, 10_000),
    threads: intFlag('threads', v.threads, 1, 1, 256),
    label: v.label,
    record: !v['no-record'],
  };
}

function randomExpert(hidden: number, ffn: number): ExpertWeights & { ffn: number } {
  // Gaussian-like weights with the usual 1/sqrt(fan-in) scale.
  const m = (count: number, fanIn: number, seed: number) => Float32Array.from(checkInput(count, 1, seed), (v) => v / Math.sqrt(fanIn));
  return { gate: m(ffn * hidden, hidden, 11), up: m(ffn * hidden, hidden, 12), down: m(hidden * ffn, ffn, 13), ffn };
}

function pruned(w: ExpertWeights & { ffn: number }, hidden: number, sparsity: number): ExpertWeights & { ffn: number } {
  const p = (data: Float32Array, rows: number, cols: number) => magnitude({ data, rows, cols }, { sparsity }).weights.data;
  return { gate: p(w.gate, w.ffn, hidden), up: p(w.up, w.ffn, hidden), down: p(w.down, hidden, w.ffn), ffn: w.ffn };
}

/** Median over repeats of the mean µs per call in blocks of about blockMs; kernels interleaved per repeat. */
async function timeKernels(kernels: ExpertKernel[], hidden: number, tokens: number, repeats: number, blockMs: number): Promise<number[]> {
  const x = checkInput(tokens, hidden, 4242 + tokens);
  const out = new Float32Array(tokens * hidden);
  const calls: number[] = [];
  for (const k of kernels) {
    for (let i = 0; i < 3; i++) await k.run(x, tokens, out);
    const t0 = performance.now();
    let n = 0;
    while (performance.now() - t0 < blockMs / 2) {
      await k.run(x, tokens, out);
      n++;
    }
    calls.push(Math.max(3, Math.round((n * blockMs) / Math.max(1e-3, performance.now() - t0))));
  }
  const samples = kernels.map(() => [] as number[]);
  for (let r = 0; r < repeats; r++) {
    for (let j = 0; j < kernels.length; j++) {
      const i = (j + r) % kernels.length; // rotate the order so no kernel always runs first
      const t0 = performance.now();
      for (let c = 0; c < calls[i]; c++) await kernels[i].run(x, tokens, out);
      samples[i].push(((performance.now() - t0) * 1000) / calls[i]);
    }
  }
  return samples.map((s) => median(s));
}

async function run(o: Options): Promise<number> {
  let base: ExpertWeights & { ffn: number };
  let hidden: number;
  let source: string;
  if (o.model) {
    const pkg = loadModelPackage(o.model);
    hidden = pkg.config.hidden_size;
    base = readExpertWeights(pkg.weightsFile, readSafetensorsHeader(pkg.weightsFile), o.layer, o.expert, hidden);
    source = `${o.model} layer ${o.layer} expert ${o.expert}`;
  } else {
    hidden = o.hidden;
    base = randomExpert(hidden, o.ffn);
    source = 'random';
  }
  const native = nativeSparse();
  const denseNative = nativeDense();
  const ortOptions = { threads: o.threads, executionProviders: ['cpu'] };
  const variants = [{ name: 'as stored', w: base }, ...o.sparsities.map((s) => ({ name: `magnitude ${Math.round(s * 100)}%`, w: pruned(base, hidden, s) }))];
  process.stderr.write(`${SCRIPT}: ${source}, hidden ${hidden}, ffn ${base.ffn}; sparse kernel: ${native.available ? native.simd : native.reason}\n`);

  const rows: Array<Array<string | number>> = [];
  const notes: string[] = [];
  const batch1: Array<{ sparsity: number; speedup: number }> = [];
  for (const variant of variants) {
    const { w } = variant;
    const sparsity = weightSparsity(w);
    const kernels: ExpertKernel[] = [];
    for (const name of ['dense', 'int8', 'int4'] as const) kernels.push(await OrtKernel.create(name, w, hidden, w.ffn, ortOptions));
    if (denseNative.available) kernels.push(DenseNativeKernel.create(w, hidden, w.ffn, denseNative));
    if (native.available) kernels.push(SparseKernel.create(w, hidden, w.ffn, native));
    const x = checkInput(8, hidden, 5);
    const ref = referenceFfn(w, hidden, w.ffn, x, 8);
    const errors = new Map<KernelName, number>();
    for (const k of kernels) {
      const y = new Float32Array(8 * hidden);
      await k.run(x, 8, y);
      errors.set(k.name, k.name === 'int8' || k.name === 'int4' ? relativeL2Error(y, ref) : relativeMaxError(y, ref));
    }
    const us = new Map<KernelName, number[]>(kernels.map((k) => [k.name, []]));
    for (const tokens of BATCHES) {
      const t = await timeKernels(kernels, hidden, tokens, o.repeats, o.blockMs);
      kernels.forEach((k, i) => us.get(k.name)!.push(t[i]));
    }
    const ortDense = us.get('dense')!;
    for (const k of kernels) {
      const t = us.get(k.name)!;
      const err = errors.get(k.name)!;
      rows.push([
        variant.name, fmt(sparsity * 100, 1), k.name, ...t.map((v) => fmt(v, 1)), ...t.map((v, i) => `${fmt(ortDense[i] / v, 2)}×`),
        `${err.toExponential(1)} ${k.name === 'int8' || k.name === 'int4' ? 'L2' : 'max'}`,
      ]);
    }
    if (us.has('sparse')) batch1.push({ sparsity, speedup: ortDense[0] / us.get('sparse')![0] });
    for (const k of kernels) await k.release();
    const auto = await selectKernel(w, hidden, { ...DEFAULT_KERNEL_SETTINGS, ...ortOptions, modelFfn: w.ffn });
    await auto.kernel.release();
    const timed = auto.report.trials.filter((t) => t.us).map((t) => `${t.kernel} ${t.us!['1']}/${t.us!['8']} µs`).join(', ');
    notes.push(`${variant.name}: 'auto' picks **${auto.report.kernel}**${timed ? ` (its trial, batch 1/8: ${timed})` : ' (only candidate)'}`);
  }

  const target = batch1.filter((b) => b.sparsity >= 0.75 - 1e-9);
  if (target.length > 0) {
    const met = target.every((b) => b.speedup >= 1.5);
    notes.push(`issue 4 target (sparse ≥ 1.5× dense at batch 1 and ≥ 75 % sparsity): ${met ? 'met' : 'NOT met'} — ${target.map((b) => `${fmt(b.sparsity * 100, 0)} %: ${fmt(b.speedup, 2)}×`).join(', ')}`);
  }
  notes.push('µs = median over repeats of the mean time per call (one expert FFN, one thread, its weights warm in the caches: a decode step reads each expert cold from memory); "× dense" = onnxruntime dense time / kernel time in the same run; error = relative max error (exact kernels) or relative L2 error (quantized) against the TypeScript reference FFN at batch 8');

  const table = markdownTable(
    ['weights', 'sparsity %', 'kernel', ...BATCHES.map((b) => `b${b} µs`), ...BATCHES.map((b) => `b${b} × dense`), 'error'],
    rows,
  );
  publish([table], notes, o.record && {
    title: 'expert kernels',
    label: o.label,
    command: commandLine(SCRIPT),
    facts: [
      ['weights', `${source}, hidden ${hidden}, ffn ${base.ffn}`],
      ['sparse kernel', native.available ? `native, ${native.simd}` : `unavailable (${native.reason})`],
      ['dense-native kernel', denseNative.available ? `native, ${denseNative.simd}` : `unavailable (${denseNative.reason})`],
      ['settings', `onnxruntime intra-op threads ${o.threads}, repeats ${o.repeats}, blocks of ≈ ${o.blockMs} ms`],
    ],
  });
  return 0;
}

runCli(SCRIPT, HELP, parse, run);
