/**
 * `switchyard prune`: one-shot pruning of a model package's experts. Calibration text runs through the gateway's
 * own forward pass, and each expert is calibrated on exactly the tokens the router sends it; the pruned package is
 * written in the same format (unstructured and N:M sparsity as compressed-tensors sparse-bitmask, structured pruning
 * as smaller dense matrices) with what was done recorded in config.json.
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { loadConfig } from '../config.ts';
import { Engine } from '../engine/engine.ts';
import { tensorNames } from '../engine/package.ts';
import { PackageError, readSafetensorsHeader, readTensors, writeSafetensors, type TensorData, type TensorEntry } from '../format/safetensors.ts';
import { readExpertWeights } from '../../experts/expert-weights.ts';
import { compressBitmask } from '../../experts/pruning/bitmask.ts';
import { swigluHidden } from '../../experts/kernels/reference.ts';
import { gram } from '../../experts/pruning/linalg.ts';
import { globalMagnitude, inputNorms, magnitude, sparseGpt, structuredExpert, wanda, type Matrix, type Pattern } from '../../experts/pruning/methods.ts';

export const METHODS = ['magnitude', 'magnitude-global', 'wanda', 'sparsegpt', '2:4', 'structured'] as const;
export type PruneMethod = (typeof METHODS)[number];

export interface PruneOptions {
  modelDir: string;
  outDir: string;
  method: PruneMethod;
  sparsity: number;
  /** Semi-structured pattern applied with magnitude, wanda or sparsegpt (the '2:4' method is magnitude 2:4). */
  nm?: { n: number; m: number };
  /** Calibration text file (default: the package's calibration.txt). */
  calibration?: string;
  /** Most calibration tokens to run (default 8192). */
  calibrationTokens?: number;
  /** Only these experts (default: all). */
  experts?: Array<{ layer: number; expert: number }>;
  /**
   * Expert pruning: per layer, remove this fraction of the experts the router chose least often on the calibration
   * text (their weights are dropped and the router masks them). Default 0.
   */
  dropExperts?: number;
  workers?: number;
  /**
   * An Engine already serving `modelDir`, used for calibration instead of loading one (it is not closed): lets
   * callers that prune one package several ways pay for the load once.
   */
  engine?: Engine;
  /** After each pruned expert: experts done, experts in all, which one ("layer L expert E"). */
  onProgress?: (done: number, total: number, what: string) => void;
  /** During calibration, after each window of text through the model: tokens run so far, tokens in all. */
  onCalibrationProgress?: (done: number, total: number) => void;
}

export interface PrunedExpert {
  layer: number;
  expert: number;
  ffn: number;
  sparsity: number;
  calibrationTokens: number;
}

export interface PruneResult {
  outDir: string;
  experts: PrunedExpert[];
  /** Experts removed by expert pruning in this run, with their share of the calibration tokens in their layer. */
  dropped: Array<{ layer: number; expert: number; share: number }>;
  expertSparsity: number;
  bytes: { before: number; after: number };
}

type ExpertKey = `${number}.${number}`;

/** Each selected expert's calibration inputs (the moe-input rows the router sent it), and every expert's token count. */
async function calibrate(engine: Engine, text: string, maxTokens: number, wanted: Set<ExpertKey>, onProgress?: (done: number, total: number) => void) {
  const ids = engine.codec.encode(text).slice(0, maxTokens);
  const window = Math.min(256, engine.pkg.config.max_position_embeddings);
  const d = engine.pkg.config.hidden_size;
  const rows = new Map<ExpertKey, number[][]>();
  const counts = new Map<ExpertKey, number>();
  for (let start = 0; start < ids.length; start += window) {
    const tokens = ids.slice(start, start + window);
    await engine.model.forward([{ cache: engine.model.newCache(), tokens }], {
      onRouted: (layer, x, expert, k) => expert.forEach((e, slot) => {
        const t = Math.floor(slot / k); // the token of this assignment ([tokens, k])
        const key: ExpertKey = `${layer}.${e}`;
        counts.set(key, (counts.get(key) ?? 0) + 1);
        if (!wanted.has(key)) return;
        const list = rows.get(key) ?? [];
        rows.set(key, list);
        list.push(Array.from(x.subarray(t * d, (t + 1) * d)));
      }),
    });
    onProgress?.(start + tokens.length, ids.length);
  }
  return {
    rows: new Map([...rows].map(([key, list]) => [key, { x: Float32Array.from(list.flat()), tokens: list.length }])),
    counts,
  };
}

/** Per layer, the `fraction` of experts with the fewest calibration tokens (never all of a layer's experts). */
export function rarelyChosen(counts: Map<string, number>, layers: number, experts: number, fraction: number, alreadyDropped: Set<string>): Array<{ layer: number; expert: number; share: number }> {
  const out: Array<{ layer: number; expert: number; share: number }> = [];
  for (let layer = 0; layer < layers; layer++) {
    const live = Array.from({ length: experts }, (_, expert) => expert).filter((e) => !alreadyDropped.has(`${layer}.${e}`));
    const total = live.reduce((n, e) => n + (counts.get(`${layer}.${e}`) ?? 0), 0);
    const drop = Math.min(live.length - 1, Math.round(fraction * experts));
    live.sort((a, b) => (counts.get(`${layer}.${a}`) ?? 0) - (counts.get(`${layer}.${b}`) ?? 0) || a - b)
      .slice(0, drop)
      .forEach((expert) => out.push({ layer, expert, share: total > 0 ? (counts.get(`${layer}.${expert}`) ?? 0) / total : 0 }));
  }
  return out;
}

/** h = silu(gate·x) ⊙ (up·x) for calibration rows: the inputs the down projection sees. */
function ffnHidden(x: Float32Array, tokens: number, gate: Matrix, up: Matrix): Float32Array {
  return Float32Array.from(swigluHidden(gate.data, up.data, gate.cols, gate.rows, x, tokens));
}

/** Calibration statistics of one input matrix, computed once and shared by the matrices that read it. */
function inputStats(x: Float32Array, tokens: number, cols: number) {
  let norms: Float64Array | undefined;
  let hessian: Float64Array | undefined;
  return { tokens, norms: () => (norms ??= inputNorms(x, tokens, cols)), hessian: () => (hessian ??= gram(x, tokens, cols)) };
}

function pruneMatrix(method: PruneMethod, w: Matrix, pattern: Pattern, stats: ReturnType<typeof inputStats>): Matrix {
  if (method === 'magnitude' || method === '2:4' || stats.tokens === 0) return magnitude(w, pattern).weights; // no calibration rows: magnitude
  if (method === 'wanda') return wanda(w, stats.norms(), pattern).weights;
  return sparseGpt(w, stats.hessian(), pattern).weights;
}

export async function prunePackage(options: PruneOptions): Promise<PruneResult> {
  const src = resolve(options.modelDir);
  const out = resolve(options.outDir);
  if (src === out) throw new Error('--out must differ from --model');
  if (options.engine && resolve(options.engine.pkg.dir) !== src) throw new Error(`options.engine serves ${options.engine.pkg.dir}, not ${src}`);
  const engine = options.engine ?? await Engine.load(loadConfig({ file: null, env: {}, overrides: { model: src, workers: options.workers ?? 1 } }));
  try {
    const c = engine.pkg.config;
    // The output is written with OLMoE's tensor names and config; other families would need their own writer.
    if (c.model_type !== 'olmoe') throw new PackageError(`${src}: switchyard prune writes OLMoE packages; model_type ${c.model_type} is not supported yet`);
    const d = c.hidden_size;
    const allExperts = Array.from({ length: c.num_hidden_layers }, (_, layer) => Array.from({ length: c.num_experts }, (_, expert) => ({ layer, expert }))).flat();
    const pattern: Pattern = { sparsity: options.sparsity, nm: options.method === '2:4' ? { n: 2, m: 4 } : options.nm };
    if (pattern.nm) pattern.sparsity = 1 - pattern.nm.n / pattern.nm.m;
    const calibrationFile = options.calibration ?? join(src, 'calibration.txt');
    const needsCalibration = !['magnitude', 'magnitude-global', '2:4'].includes(options.method) || (options.dropExperts ?? 0) > 0;
    const wanted = new Set((options.experts ?? allExperts).map((e) => `${e.layer}.${e.expert}` as ExpertKey));
    const calibrated = needsCalibration
      ? await calibrate(engine, readFileSync(calibrationFile, 'utf8'), options.calibrationTokens ?? 8192, wanted, options.onCalibrationProgress)
      : { rows: new Map<ExpertKey, { x: Float32Array; tokens: number }>(), counts: new Map<ExpertKey, number>() };
    const calibration = calibrated.rows;
    const newlyDropped = (options.dropExperts ?? 0) > 0
      ? rarelyChosen(calibrated.counts, c.num_hidden_layers, c.num_experts, options.dropExperts!, engine.pkg.droppedExperts)
      : [];
    const dropped = new Set([...engine.pkg.droppedExperts, ...newlyDropped.map((e) => `${e.layer}.${e.expert}`)]);
    // Dropped experts keep no weights: they are neither pruned nor written.
    const all = allExperts.filter((e) => !dropped.has(`${e.layer}.${e.expert}`));
    const selected = (options.experts ?? all).filter((e) => !dropped.has(`${e.layer}.${e.expert}`));

    const header = engine.pkg.tensors;
    const file = engine.pkg.weightsFile;
    const tensors = new Map<string, { shape: number[]; data: TensorData }>();
    const isExpert = /\.mlp\.experts\.\d+\./;
    const trunk = [...header.keys()].filter((n) => !isExpert.test(n));
    for (const [name, data] of readTensors(file, header, trunk)) tensors.set(name, { shape: header.get(name)!.shape, data });

    const dense = new Map(all.map((e) => [`${e.layer}.${e.expert}`, readExpertWeights(file, header, e.layer, e.expert, d)]));
    const pruned = new Map<string, { gate: Matrix; up: Matrix; down: Matrix }>();
    const report: PrunedExpert[] = [];
    if (options.method === 'magnitude-global') {
      const mats = selected.flatMap(({ layer, expert }) => {
        const w = dense.get(`${layer}.${expert}`)!;
        return [{ rows: w.ffn, cols: d, data: w.gate }, { rows: w.ffn, cols: d, data: w.up }, { rows: d, cols: w.ffn, data: w.down }];
      });
      const result = globalMagnitude(mats, options.sparsity);
      selected.forEach((e, i) => pruned.set(`${e.layer}.${e.expert}`, { gate: result[3 * i].weights, up: result[3 * i + 1].weights, down: result[3 * i + 2].weights }));
    }
    selected.forEach(({ layer, expert }, i) => {
      const key = `${layer}.${expert}` as ExpertKey;
      const w = dense.get(key)!;
      const cal = calibration.get(key) ?? { x: new Float32Array(0), tokens: 0 };
      const gate = { rows: w.ffn, cols: d, data: w.gate };
      const up = { rows: w.ffn, cols: d, data: w.up };
      const down = { rows: d, cols: w.ffn, data: w.down };
      if (options.method === 'structured') {
        const s = structuredExpert({ gate, up, down }, options.sparsity, cal.tokens > 0 ? cal : undefined);
        pruned.set(key, s);
      } else if (options.method !== 'magnitude-global') {
        const xStats = inputStats(cal.x, cal.tokens, d);
        const g = pruneMatrix(options.method, gate, pattern, xStats);
        const u = pruneMatrix(options.method, up, pattern, xStats);
        // The down projection is calibrated on what it sees after the pruned gate and up.
        const h = cal.tokens > 0 ? ffnHidden(cal.x, cal.tokens, g, u) : new Float32Array(0);
        pruned.set(key, { gate: g, up: u, down: pruneMatrix(options.method, down, pattern, inputStats(h, cal.tokens, w.ffn)) });
      }
      const p = pruned.get(key)!;
      const zeros = [p.gate, p.up, p.down].reduce((n, m) => n + m.data.reduce((z, v) => z + (v === 0 ? 1 : 0), 0), 0);
      report.push({ layer, expert, ffn: p.gate.rows, sparsity: options.method === 'structured' ? 1 - p.gate.rows / w.ffn : zeros / (3 * w.ffn * d), calibrationTokens: cal.tokens });
      options.onProgress?.(i + 1, selected.length, `layer ${layer} expert ${expert}`);
    });

    const sparseStorage = options.method !== 'structured' && pattern.sparsity > 0 && pruned.size > 0;
    for (const { layer, expert } of all) {
      const names = tensorNames.expert(layer, expert);
      const key = `${layer}.${expert}`;
      const p = pruned.get(key);
      const w = dense.get(key)!;
      const mats: Array<[string, Matrix]> = p
        ? [[names.gate, p.gate], [names.up, p.up], [names.down, p.down]]
        : [[names.gate, { rows: w.ffn, cols: d, data: w.gate }], [names.up, { rows: w.ffn, cols: d, data: w.up }], [names.down, { rows: d, cols: w.ffn, data: w.down }]];
      for (const [name, m] of mats) {
        if (!p || !sparseStorage) {
          tensors.set(name, { shape: [m.rows, m.cols], data: m.data });
        } else {
          const b = compressBitmask(m.data, m.rows, m.cols);
          tensors.set(`${name}.compressed`, { shape: [b.compressed.length], data: b.compressed });
          tensors.set(`${name}.bitmask`, { shape: [m.rows, Math.ceil(m.cols / 8)], data: b.bitmask });
          tensors.set(`${name}.shape`, { shape: [2], data: BigInt64Array.from(b.shape.map(BigInt)) });
          tensors.set(`${name}.row_offsets`, { shape: [m.rows], data: b.rowOffsets });
        }
      }
    }

    mkdirSync(out, { recursive: true });
    writeSafetensors(join(out, 'model.safetensors'), tensors);
    for (const f of ['tokenizer.json', 'validation.json', 'calibration.txt', 'training.json']) {
      if (existsSync(join(src, f))) copyFileSync(join(src, f), join(out, f));
    }
    // model_max_length: the longest input transformers' tokenizer accepts without a warning, i.e. the context.
    const tokenizerConfigFile = join(src, 'tokenizer_config.json');
    const tokenizerConfig = existsSync(tokenizerConfigFile) ? JSON.parse(readFileSync(tokenizerConfigFile, 'utf8')) : {};
    writeFileSync(join(out, 'tokenizer_config.json'), JSON.stringify({ ...tokenizerConfig, model_max_length: c.max_position_embeddings }, null, 2) + '\n');
    const expertSparsity = report.reduce((n, e) => n + e.sparsity, 0) / Math.max(1, report.length);
    const structure = options.method === 'structured' ? 'structured' : pattern.nm ? `${pattern.nm.n}:${pattern.nm.m}` : 'unstructured';
    const config = JSON.parse(readFileSync(join(src, 'config.json'), 'utf8'));
    writeFileSync(join(out, 'config.json'), JSON.stringify({
      ...config,
      quantization_config: compressedTensorsConfig({
        // sparse-bitmask exactly when some matrix is stored that way (structured pruning and sparsity 0 store dense).
        format: sparseStorage ? 'sparse-bitmask' : 'dense',
        global_sparsity: expertSparsity,
        sparsity_structure: structure,
        targets: selected.flatMap(({ layer, expert }) => ['gate_proj', 'up_proj', 'down_proj'].map((m) => `model.layers.${layer}.mlp.experts.${expert}.${m}`)),
        ignore: ['lm_head'],
      }),
      switchyard_pruning: {
        method: options.method, sparsity: options.sparsity, structure, source_model: config._name_or_path ?? src.split('/').pop(),
        calibration: needsCalibration ? { file: calibrationFile.split('/').pop(), max_tokens: options.calibrationTokens ?? 8192 } : null,
        experts: report.map((e) => ({ layer: e.layer, expert: e.expert, ffn: e.ffn, sparsity: Number(e.sparsity.toFixed(4)), calibration_tokens: e.calibrationTokens })),
        // Read by the loader: these experts have no weights and the router masks them.
        dropped_experts: [
          ...(config.switchyard_pruning?.dropped_experts ?? []),
          ...newlyDropped.map((e) => ({ layer: e.layer, expert: e.expert, calibration_share: Number(e.share.toFixed(4)) })),
        ],
      },
    }, null, 2) + '\n');
    return {
      outDir: out, experts: report, expertSparsity, dropped: newlyDropped,
      bytes: { before: tensorBytes(header), after: tensorBytes(readSafetensorsHeader(join(out, 'model.safetensors'))) },
    };
  } finally {
    if (!options.engine) await engine.close();
  }
}

/**
 * The compressed-tensors release whose config writer `compressedTensorsConfig` follows (written as `version`, as
 * that library writes its own `__version__`).
 */
export const COMPRESSED_TENSORS_VERSION = '0.9.1';

/** compressed-tensors' SparsityCompressionConfig fields (config/base.py); its parser takes `format` as the registry name. */
export interface SparsityCompressionConfig {
  format: 'dense' | 'sparse-bitmask';
  global_sparsity: number;
  sparsity_structure: string;
  targets: string[];
  ignore: string[];
}

/**
 * `quantization_config` for a sparsity-only model exactly as compressed-tensors' own writer produces it
 * (`ModelCompressor.update_config` with no quantization config): `version`, `quant_method` "compressed-tensors" and
 * `sparsity_config`, nothing else. In particular no top-level `format`: that library's parser
 * (`ModelCompressor.parse_quantization_config`) treats any key beyond those three as a quantization config and
 * would then try to validate one. (Later releases also write an empty `transform_config`, which they pop before
 * parsing but 0.9's parser does not: leaving it out suits both.)
 */
export function compressedTensorsConfig(sparsity: SparsityCompressionConfig) {
  return { version: COMPRESSED_TENSORS_VERSION, quant_method: 'compressed-tensors', sparsity_config: sparsity };
}

/** Bytes of tensor data listed in a safetensors header. */
function tensorBytes(header: Map<string, TensorEntry>): number {
  return [...header.values()].reduce((n, t) => n + (t.end - t.begin), 0);
}
