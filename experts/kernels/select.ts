/**
 * Choosing an expert's kernel when the expert loads.
 *
 * 'auto' considers only kernels that are exact up to float rounding: onnxruntime's `dense` (reported as `structured`
 * when the expert's FFN is narrower than the model's), our native `dense-native` kernel and, for experts with at
 * least `sparseMinSparsity` zero weights, our native `sparse` kernel. Each candidate is checked against the TypeScript reference FFN on a fixed batch
 * (relative max error ≤ EXACT_TOLERANCE); those that pass are timed, interleaved, on batches of 1 and 8 tokens for
 * about `trialMs` each, and the one with the smallest sum of median times wins. The quantized kernels (`int8`,
 * `int4`) change the outputs, so only an explicit `experts.kernel` setting selects them; they are checked against
 * the reference within their quantization tolerance (relative L2 error). A forced kernel that cannot be built or
 * fails its check falls back to dense, and the report says why. If no kernel passes, loading the expert fails.
 * When dense (or structured) is the only kernel to build — 'auto' without the native addons — it is used without a
 * load-time check or timing: it is the baseline the test suite checks against the reference.
 */
import { performance } from 'node:perf_hooks';
import type { ExpertWeights } from '../expert-graph.ts';
import { OrtKernel, type OrtOptions } from './ort-kernels.ts';
import { checkInput, referenceFfn, relativeL2Error, relativeMaxError, weightSparsity } from './reference.ts';
import { DenseNativeKernel, nativeDense, type DenseNativeStatus } from './dense-native.ts';
import { nativeSparse, SparseKernel, type NativeStatus } from './sparse.ts';
import type { ExpertKernel, KernelName, KernelReport, KernelSettings, KernelTrial } from './types.ts';

/** Relative max error allowed for kernels that are exact up to float rounding (fp32 accumulation orders differ). */
export const EXACT_TOLERANCE = 1e-4;
/**
 * Relative L2 error allowed for the quantized kernels, at load and in the tests (one bound for both). Measured on
 * random Gaussian-like weights (7 seeds × batches 1–33, three shapes): int8 (8-bit weights per column, per-tensor
 * uint8 activations) median 0.016–0.024, worst 0.043; int4 (blocks of 32, asymmetric) median 0.13, worst 0.27 (a
 * single token's outputs). The bundled model's 32 experts: int8 worst 0.025, int4 worst 0.14. The bounds catch
 * broken kernels (wrong packing, int16 saturation on CPUs without VNNI: 0.09–0.19).
 */
export const QUANTIZED_TOLERANCE: Record<'int8' | 'int4', number> = { int8: 0.05, int4: 0.3 };
/** Batch sizes timed by 'auto'. */
export const TRIAL_BATCHES = [1, 8] as const;
/** Tokens of the load-time check: more than the sparse kernel's per-token limit, so its tile path runs too. */
const CHECK_TOKENS = 4;

export type KernelFactory = (w: ExpertWeights, hidden: number, ffn: number) => Promise<ExpertKernel>;

export interface SelectOptions extends KernelSettings, OrtOptions {
  /** The model's FFN width (config intermediate_size): a narrower expert runs `structured`. */
  modelFfn: number;
  /** Graph name for the onnxruntime sessions. */
  name?: string;
  /** Native sparse addon status (tests pass an unavailable one). */
  native?: NativeStatus;
  /** Native dense addon status (tests pass an unavailable one). */
  nativeDense?: DenseNativeStatus;
  /** Replace how a kernel is built (tests). */
  factories?: Partial<Record<KernelName, KernelFactory>>;
}

export interface Selection {
  kernel: ExpertKernel;
  report: KernelReport;
}

function factoryFor(name: KernelName, options: SelectOptions): KernelFactory {
  const custom = options.factories?.[name];
  if (custom) return custom;
  if (name === 'sparse') return async (w, hidden, ffn) => SparseKernel.create(w, hidden, ffn, options.native ?? nativeSparse());
  if (name === 'dense-native') return async (w, hidden, ffn) => DenseNativeKernel.create(w, hidden, ffn, options.nativeDense ?? nativeDense());
  return (w, hidden, ffn) => OrtKernel.create(name, w, hidden, ffn, options, options.name);
}

const isQuantized = (name: KernelName): name is 'int8' | 'int4' => name === 'int8' || name === 'int4';

export async function selectKernel(w: ExpertWeights & { ffn: number }, hidden: number, options: SelectOptions): Promise<Selection> {
  const ffn = w.ffn;
  const dense: KernelName = ffn < options.modelFfn ? 'structured' : 'dense';
  const sparsity = weightSparsity(w);
  const report: KernelReport = { kernel: dense, setting: options.kernel, ffn, sparsity, trials: [] };
  const native = options.native ?? nativeSparse();
  const denseNative = options.nativeDense ?? nativeDense();

  let wanted: KernelName[];
  if (options.kernel === 'auto') {
    wanted = [dense];
    if (denseNative.available || options.factories?.['dense-native']) wanted.push('dense-native');
    else report.trials.push({ kernel: 'dense-native', tolerance: EXACT_TOLERANCE, ok: false, note: denseNative.reason });
    if (sparsity >= options.sparseMinSparsity) {
      if (native.available || options.factories?.sparse) wanted.push('sparse');
      else report.trials.push({ kernel: 'sparse', tolerance: EXACT_TOLERANCE, ok: false, note: native.reason });
    }
  } else {
    wanted = [options.kernel === 'dense' ? dense : options.kernel];
  }

  if (wanted.length === 1 && wanted[0] === dense) {
    const kernel = await factoryFor(dense, options)(w, hidden, ffn);
    report.trials.push({ kernel: dense, ok: true, tolerance: EXACT_TOLERANCE, note: 'baseline kernel: not re-checked at load' });
    return { kernel, report };
  }

  const x = checkInput(CHECK_TOKENS, hidden);
  const ref = referenceFfn(w, hidden, ffn, x, CHECK_TOKENS);
  const passed: Array<{ kernel: ExpertKernel; trial: KernelTrial }> = [];

  const tryKernel = async (name: KernelName) => {
    const tolerance = isQuantized(name) ? QUANTIZED_TOLERANCE[name] : EXACT_TOLERANCE;
    let kernel: ExpertKernel;
    try {
      kernel = await factoryFor(name, options)(w, hidden, ffn);
    } catch (error) {
      report.trials.push({ kernel: name, tolerance, ok: false, note: (error as Error).message });
      return;
    }
    const y = new Float32Array(CHECK_TOKENS * hidden);
    let error: number;
    try {
      await kernel.run(x, CHECK_TOKENS, y);
      error = isQuantized(name) ? relativeL2Error(y, ref) : relativeMaxError(y, ref);
    } catch (e) {
      await kernel.release();
      report.trials.push({ kernel: name, tolerance, ok: false, note: (e as Error).message });
      return;
    }
    const trial: KernelTrial = { kernel: name, error, tolerance, ok: error <= tolerance };
    report.trials.push(trial);
    if (trial.ok) passed.push({ kernel, trial });
    else {
      trial.note = `output differs from the reference FFN (error ${error.toExponential(2)} > ${tolerance})`;
      await kernel.release();
    }
  };

  for (const name of wanted) await tryKernel(name);
  if (passed.length === 0 && !wanted.includes(dense)) {
    // A forced kernel that cannot be used: serve the expert exactly rather than not at all.
    const failed = report.trials.filter((t) => !t.ok).map((t) => `${t.kernel}: ${t.note}`).join('; ');
    report.fallback = `experts.kernel '${options.kernel}' unusable for this expert (${failed}); using ${dense}`;
    await tryKernel(dense);
  }
  if (passed.length === 0) {
    const failed = report.trials.map((t) => `${t.kernel}: ${t.note ?? 'failed'}`).join('; ');
    throw new Error(`no expert kernel reproduces the reference FFN (${failed})`);
  }

  if (passed.length > 1) await time(passed, hidden, options.trialMs);
  const best = passed.reduce((a, b) => (score(b.trial) < score(a.trial) ? b : a));
  for (const p of passed) if (p !== best) await p.kernel.release();
  report.kernel = best.kernel.name;
  return { kernel: best.kernel, report };
}

const score = (t: KernelTrial) => (t.us ? Object.values(t.us).reduce((a, b) => a + b, 0) : 0);

/** Median µs per call of each kernel at each trial batch size, runs interleaved across kernels. */
async function time(candidates: Array<{ kernel: ExpertKernel; trial: KernelTrial }>, hidden: number, trialMs: number): Promise<void> {
  for (const c of candidates) c.trial.us = {};
  for (const tokens of TRIAL_BATCHES) {
    const x = checkInput(tokens, hidden, 777 + tokens);
    const out = new Float32Array(tokens * hidden);
    const samples = candidates.map(() => [] as number[]);
    for (const c of candidates) for (let i = 0; i < 2; i++) await c.kernel.run(x, tokens, out); // warm up
    const budget = trialMs * candidates.length;
    const started = performance.now();
    for (let rep = 0; rep < 1000 && (rep < 5 || performance.now() - started < budget); rep++) {
      for (let i = 0; i < candidates.length; i++) {
        const t0 = performance.now();
        await candidates[i].kernel.run(x, tokens, out);
        samples[i].push((performance.now() - t0) * 1000);
      }
    }
    candidates.forEach((c, i) => (c.trial.us![String(tokens)] = Math.round(median(samples[i]) * 10) / 10));
  }
}

export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
