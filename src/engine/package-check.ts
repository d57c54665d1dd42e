/**
 * The model package check, run by the loader before anything reads weights or starts workers (serve, prune, eval,
 * convert-gguf all load through it). A damaged package must fail here with messages that name the file, the tensor
 * or field, what is wrong and how to fix it — not serve NUL bytes, shifted weights, or never stop at EOS.
 *
 * Checked: config.json fields (present, typed, positive, consistent); special token ids (config.json,
 * generation_config.json) inside the vocabulary and agreeing with tokenizer.json / tokenizer_config.json; the
 * safetensors header (framing, JSON, dtypes, byte lengths, exact tiling of the data section: see safetensors.ts);
 * every tensor the config implies present with the expected dtype and shape (experts dense, structurally pruned or
 * compressed-tensors sparse-bitmask; experts dropped by `switchyard prune --drop-experts` absent), nothing unexpected;
 * sparse-bitmask parts consistent with each other (the only tensor data read: bitmasks and row offsets).
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer } from '@huggingface/tokenizers';
import { BITMASK_SUFFIXES } from '../../experts/pruning/bitmask.ts';
import { architectureOf, canonicalEntries, supportedArchitectures, type Architecture } from '../format/architectures.ts';
import { configRuleProblems, expectedTensors, modelConfigSchema, pruningMetadataSchema, tensorNames, type ModelConfig } from '../format/package-format.ts';
import {
  FLOAT_DTYPES, inspectSafetensors, inspectShardedSafetensors, PackageCheckError, readTypedTensors, SAFETENSORS_DTYPE_BITS, SHARD_INDEX, type PackageProblem, type SafetensorsLayout, type TensorEntry,
} from '../format/safetensors.ts';

export { PackageCheckError, type PackageProblem };

export interface PackageCheckOptions {
  /** Most problems listed; the rest are counted (default 20). */
  maxProblems?: number;
}

/** A package that passed the check, with what the loader needs (nothing is read twice). */
export interface CheckedPackage {
  /** Absolute folder. */
  root: string;
  config: ModelConfig;
  weightsFile: string;
  tensors: Map<string, TensorEntry>;
  /** "layer.expert" keys of experts removed by pruning. */
  droppedExperts: Set<string>;
  tokenizerJson: object;
  tokenizerConfig: object;
}

export interface PackageCheckReport {
  /** The folder as given. */
  dir: string;
  problems: PackageProblem[];
  /** Problems found beyond `maxProblems`. */
  omitted: number;
  /** Present exactly when there are no problems. */
  checked: CheckedPackage | null;
}

const REEXPORT = 're-export the package';
const DISAGREE = 'config.json and model.safetensors disagree — use the config.json the weights were exported with, or re-export the package';

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const fmt = (shape: readonly number[]) => `[${shape.join(', ')}]`;
const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((n, i) => n === b[i]);

class Problems {
  readonly list: PackageProblem[] = [];
  omitted = 0;
  /** Tensors with a header problem (canonical names): their data is not read. */
  readonly damaged = new Set<string>();
  /**
   * The checkpoint's architecture once config.json named it: the checks use canonical tensor names, problems name
   * tensors as the checkpoint does.
   */
  arch: Architecture | null = null;
  constructor(private readonly limit: number) {}
  readonly add = (p: PackageProblem): void => {
    if (p.tensor && this.arch) {
      const shown = this.arch.checkpointName(p.tensor);
      if (shown !== p.tensor) p = { ...p, tensor: shown, message: p.message.replaceAll(p.tensor, shown) };
    }
    if (p.tensor) this.damaged.add(this.arch ? this.arch.canonicalName(p.tensor) : p.tensor);
    if (this.list.length < this.limit) this.list.push(p);
    else this.omitted++;
  };
  get count() {
    return this.list.length + this.omitted;
  }
}

/** Reads a JSON object file; reports a missing (when required), unreadable or non-object file. */
function readJsonObject(file: string, required: string | null, problems: Problems): Json | null {
  if (!existsSync(file)) {
    if (required) problems.add({ kind: 'file', file, message: `${file}: missing from the model package (${required}); ${REEXPORT}` });
    return null;
  }
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(file, 'utf8'));
  } catch (error) {
    problems.add({ kind: 'json', file, message: `${file}: not valid JSON (${(error as Error).message}); fix the file or ${REEXPORT}` });
    return null;
  }
  if (!isObject(value)) {
    problems.add({ kind: 'json', file, message: `${file}: expected a JSON object, found ${Array.isArray(value) ? 'an array' : JSON.stringify(value)}; fix the file or ${REEXPORT}` });
    return null;
  }
  return value;
}

/** config.json against the schema, then the cross-field rules the gateway relies on. Null if unusable. */
function checkConfig(file: string, raw: Json, problems: Problems): ModelConfig | null {
  const arch = architectureOf(raw.model_type);
  if (!arch) {
    problems.add({
      kind: 'config', file, field: 'model_type',
      message: `${file}: model_type is ${JSON.stringify(raw.model_type) ?? 'missing'}, but the gateway serves ${supportedArchitectures()}; convert the checkpoint to one of them or ${REEXPORT}`,
    });
    return null;
  }
  // The family's keys in canonical form (Mixtral's num_local_experts is num_experts); messages use its own names.
  const normalized = arch.normalizeConfig(raw);
  const parsed = modelConfigSchema.safeParse(normalized);
  if (!parsed.success) {
    const seen = new Set<string>();
    for (const issue of parsed.error.issues) {
      const canonical = String(issue.path[0] ?? '(root)');
      if (seen.has(canonical)) continue;
      seen.add(canonical);
      const field = arch.configKey(canonical);
      const help = (modelConfigSchema.shape as Record<string, { description?: string }>)[canonical]?.description ?? 'valid';
      const value = raw[field];
      problems.add({
        kind: 'config', file, field,
        message: value === undefined
          ? `${file}: ${field} is missing; it must be ${help} — add it (Hugging Face ${arch.label}'s config field) or ${REEXPORT}`
          : `${file}: ${field} is ${JSON.stringify(value)}, but it must be ${help}; fix config.json or ${REEXPORT}`,
      });
    }
    return null;
  }
  const c = parsed.data;
  for (const { field, message } of configRuleProblems(c)) {
    problems.add({ kind: 'config', file, field: arch.configKey(field), message: `${file}: ${message}; fix config.json or ${REEXPORT}` });
  }
  return c;
}

/** The tokenizer's token ↔ id maps (model vocabulary and added tokens), for consistency checks. */
interface Vocabulary {
  idOf: Map<string, number>;
  tokenOf: Map<number, string>;
}

function tokenizerVocabulary(tokenizer: Json): Vocabulary {
  const idOf = new Map<string, number>();
  const tokenOf = new Map<number, string>();
  const add = (token: unknown, id: unknown) => {
    if (typeof token !== 'string' || !Number.isInteger(id)) return;
    idOf.set(token, id as number);
    tokenOf.set(id as number, token);
  };
  const model = isObject(tokenizer.model) ? tokenizer.model : {};
  if (isObject(model.vocab)) for (const [token, id] of Object.entries(model.vocab)) add(token, id);
  // Unigram: a list of [piece, score]; the id is the position.
  else if (Array.isArray(model.vocab)) model.vocab.forEach((entry, id) => add(Array.isArray(entry) ? entry[0] : undefined, id));
  if (Array.isArray(tokenizer.added_tokens)) for (const t of tokenizer.added_tokens) if (isObject(t)) add(t.content, t.id);
  return { idOf, tokenOf };
}

/** Special token ids in config.json / generation_config.json inside the vocabulary and agreeing with the tokenizer. */
function checkTokens(dir: string, c: ModelConfig, raw: Json, files: { tokenizer: Json | null; tokenizerConfig: Json | null; generation: Json | null }, problems: Problems): void {
  const configFile = join(dir, 'config.json');
  const tokenizerFile = join(dir, 'tokenizer.json');
  const tokenizerConfigFile = join(dir, 'tokenizer_config.json');
  const vocab = files.tokenizer ? tokenizerVocabulary(files.tokenizer) : null;
  const range = `vocab_size is ${c.vocab_size}: ids 0..${c.vocab_size - 1}`;
  const specialToken = (role: string): string | undefined => {
    const v = files.tokenizerConfig?.[`${role}_token`];
    return typeof v === 'string' ? v : isObject(v) && typeof v.content === 'string' ? v.content : undefined;
  };
  for (const role of ['bos', 'eos', 'pad', 'unk']) {
    const v = files.tokenizerConfig?.[`${role}_token`];
    if (v !== undefined && v !== null && specialToken(role) === undefined) {
      problems.add({
        kind: 'tokenizer', file: tokenizerConfigFile, field: `${role}_token`,
        message: `${tokenizerConfigFile}: ${role}_token is ${JSON.stringify(v)}, but it must be the token's text or {"content": text}; fix tokenizer_config.json`,
      });
    }
  }
  const hint = (role: string) => {
    const token = specialToken(role);
    const id = token !== undefined ? vocab?.idOf.get(token) : undefined;
    return id !== undefined ? ` (tokenizer.json gives ${JSON.stringify(token)} id ${id})` : '';
  };

  for (const role of ['bos', 'eos', 'pad'] as const) {
    const field = `${role}_token_id`;
    const id = raw[field];
    if (role === 'pad' && (id === undefined || id === null)) continue;
    if (!Number.isInteger(id) || (id as number) < 0) {
      // bos/eos shape errors were reported by the schema
      if (role === 'pad') problems.add({ kind: 'config', file: configFile, field, message: `${configFile}: pad_token_id is ${JSON.stringify(id)}, but it must be null or a token id below vocab_size` });
      continue;
    }
    if ((id as number) >= c.vocab_size) {
      const effect = role === 'eos' ? 'generation would never stop at end of sequence' : role === 'bos' ? 'every prompt would start with a token the model does not have' : 'padding would index past the embedding';
      problems.add({
        kind: 'token-id', file: configFile, field,
        message: `${configFile}: ${field} is ${id}, outside the vocabulary (${range}); ${effect} — set it to the ${role} token's id${hint(role)}`,
      });
      continue;
    }
    if (!vocab) continue;
    const token = specialToken(role);
    if (token === undefined) {
      if (role !== 'pad' && !vocab.tokenOf.has(id as number)) {
        problems.add({ kind: 'token-id', file: configFile, field, message: `${configFile}: ${field} ${id} is not a token of ${tokenizerFile}; set it to the ${role} token's id or fix the tokenizer` });
      }
      continue;
    }
    const tokenId = vocab.idOf.get(token);
    if (tokenId === undefined) {
      problems.add({
        kind: 'tokenizer', file: tokenizerConfigFile, field: `${role}_token`,
        message: `${tokenizerConfigFile}: ${role}_token ${JSON.stringify(token)} is not a token of ${tokenizerFile}; add it to added_tokens or fix tokenizer_config.json`,
      });
    } else if (tokenId !== id) {
      problems.add({
        kind: 'token-id', file: configFile, field,
        message: `${configFile}: ${field} is ${id}, but ${tokenizerConfigFile} names ${role}_token ${JSON.stringify(token)}, which is id ${tokenId} in tokenizer.json — make them agree (usually ${field}: ${tokenId})`,
      });
    }
  }

  if (files.generation) {
    const file = join(dir, 'generation_config.json');
    for (const field of ['bos_token_id', 'eos_token_id', 'pad_token_id', 'decoder_start_token_id']) {
      const value = files.generation[field];
      if (value === undefined || value === null) continue;
      const ids = Array.isArray(value) ? value : [value];
      if (!ids.every((v) => Number.isInteger(v) && v >= 0)) {
        problems.add({ kind: 'config', file, field, message: `${file}: ${field} is ${JSON.stringify(value)}, but it must be a token id or a list of token ids` });
        continue;
      }
      const outside = (ids as number[]).filter((v) => v >= c.vocab_size);
      if (outside.length > 0) {
        problems.add({
          kind: 'token-id', file, field,
          message: `${file}: ${field} ${JSON.stringify(value)} has ${outside.join(', ')} outside the vocabulary (${range}); set it to the token's id${hint(field.split('_')[0])}`,
        });
      } else if (field === 'eos_token_id' && !(ids as number[]).includes(c.eos_token_id)) {
        problems.add({
          kind: 'token-id', file, field,
          message: `${file}: eos_token_id ${JSON.stringify(value)} does not include config.json's eos_token_id ${c.eos_token_id}; Hugging Face generation and the gateway would stop at different tokens — make them agree`,
        });
      } else if (field === 'bos_token_id' && c.bos_token_id !== null && value !== c.bos_token_id) {
        problems.add({ kind: 'token-id', file, field, message: `${file}: bos_token_id ${value} differs from config.json's ${c.bos_token_id}; make them agree` });
      }
    }
  }

  if (files.tokenizer && vocab) {
    const outside = [...vocab.tokenOf].filter(([id]) => id < 0 || id >= c.vocab_size);
    if (outside.length > 0) {
      const [id, token] = outside[0];
      problems.add({
        kind: 'token-id', file: tokenizerFile,
        message: `${tokenizerFile}: ${outside.length} token(s) have ids outside the vocabulary (${range}), e.g. ${JSON.stringify(token)} = ${id}; the tokenizer belongs to another model, or config.json's vocab_size is wrong`,
      });
    }
    const post = files.tokenizer.post_processor;
    const specials = isObject(post) && isObject(post.special_tokens) ? post.special_tokens : {};
    for (const [name, spec] of Object.entries(specials)) {
      const ids = isObject(spec) && Array.isArray(spec.ids) ? spec.ids : [];
      const known = vocab.idOf.get(name);
      if (ids.some((v) => !Number.isInteger(v) || v < 0 || v >= c.vocab_size) || (known !== undefined && ids.length === 1 && ids[0] !== known)) {
        problems.add({
          kind: 'token-id', file: tokenizerFile, field: `post_processor.special_tokens.${name}`,
          message: `${tokenizerFile}: post_processor adds ${JSON.stringify(name)} as ids ${JSON.stringify(ids)}, but ${known !== undefined ? `the token is id ${known}` : 'that token is unknown'} (${range}); fix the post_processor or ${REEXPORT}`,
        });
      }
    }
  }
}

/**
 * The tokenizers library must accept tokenizer.json (it otherwise fails later with a bare TypeError) and turn a test
 * sentence into in-vocabulary ids beyond the special tokens (an empty or malformed vocabulary gives only those).
 */
function checkTokenizerLoads(dir: string, tokenizer: Json, tokenizerConfig: Json | null, vocabSize: number | null, problems: Problems): void {
  const file = join(dir, 'tokenizer.json');
  const model = isObject(tokenizer.model) ? tokenizer.model : null;
  const entries = model && (isObject(model.vocab) ? Object.keys(model.vocab).length : Array.isArray(model.vocab) ? model.vocab.length : 0);
  if (!entries) {
    problems.add({ kind: 'tokenizer', file, field: 'model.vocab', message: `${file}: model.vocab is missing or empty, so text cannot be tokenized; re-export the package` });
    return;
  }
  let ids: number[];
  try {
    ids = new Tokenizer(tokenizer as never, (tokenizerConfig ?? {}) as never).encode('Call me Ishmael.').ids;
  } catch (error) {
    problems.add({ kind: 'tokenizer', file, message: `${file}: the tokenizers library cannot load it (${(error as Error).message}); it is not a Hugging Face tokenizers file — re-export the package` });
    return;
  }
  const bad = ids.find((id) => !Number.isInteger(id) || id < 0 || (vocabSize !== null && id >= vocabSize));
  const specials = new Set((Array.isArray(tokenizer.added_tokens) ? tokenizer.added_tokens : []).filter((t) => isObject(t) && t.special).map((t) => (t as Json).id));
  if (bad !== undefined) {
    problems.add({ kind: 'token-id', file, message: `${file}: encoding a test sentence gives id ${bad}, outside the vocabulary (vocab_size ${vocabSize}); the tokenizer belongs to another model` });
  } else if (ids.every((id) => specials.has(id))) {
    problems.add({ kind: 'tokenizer', file, field: 'model.vocab', message: `${file}: a test sentence encodes to special tokens only (${JSON.stringify(ids)}); its model.vocab or model.merges are malformed — re-export the package` });
  }
}

/** tokenizer_config.json's chat_template must be a Jinja template the gateway can compile (or absent). */
function checkChatTemplate(dir: string, tokenizerConfig: Json, problems: Problems): void {
  const file = join(dir, 'tokenizer_config.json');
  const template = tokenizerConfig.chat_template;
  if (template === undefined || template === null) return;
  const fix = 'fix it, or remove it (chat requests then get a 422 and completions still work)';
  if (typeof template !== 'string') {
    problems.add({ kind: 'tokenizer', file, field: 'chat_template', message: `${file}: chat_template must be a Jinja template string (named template lists are not supported); ${fix}` });
    return;
  }
  try {
    new Template(template);
  } catch (error) {
    problems.add({ kind: 'tokenizer', file, field: 'chat_template', message: `${file}: chat_template is not a valid Jinja template (${(error as Error).message}); ${fix}` });
  }
}

/** switchyard_pruning: dropped experts (absent weights) and pruned widths per expert. */
function checkPruning(file: string, c: ModelConfig, raw: Json, problems: Problems): { dropped: Set<string>; ffn: Map<string, number>; pruned: boolean } {
  const dropped = new Set<string>();
  const ffn = new Map<string, number>();
  if (raw.switchyard_pruning === undefined || raw.switchyard_pruning === null) return { dropped, ffn, pruned: false };
  const parsed = pruningMetadataSchema.safeParse(raw.switchyard_pruning);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    problems.add({
      kind: 'pruning', file, field: ['switchyard_pruning', ...issue.path].join('.'),
      message: `${file}: switchyard_pruning.${issue.path.join('.')}: ${issue.message} (dropped_experts and experts list {layer, expert} pairs with non-negative integers); fix config.json or prune again`,
    });
    return { dropped, ffn, pruned: true };
  }
  const exists = (layer: number, expert: number) => layer < c.num_hidden_layers && expert < c.num_experts;
  for (const { layer, expert } of parsed.data.dropped_experts ?? []) {
    if (!exists(layer, expert)) {
      problems.add({ kind: 'pruning', file, field: 'switchyard_pruning.dropped_experts', message: `${file}: dropped expert ${layer}.${expert} does not exist (num_hidden_layers ${c.num_hidden_layers}, num_experts ${c.num_experts})` });
    } else dropped.add(`${layer}.${expert}`);
  }
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const left = Array.from({ length: c.num_experts }, (_, e) => e).filter((e) => !dropped.has(`${l}.${e}`)).length;
    if (left < c.num_experts_per_tok) {
      problems.add({
        kind: 'pruning', file, field: 'switchyard_pruning.dropped_experts',
        message: `${file}: layer ${l} keeps ${left} expert${left === 1 ? '' : 's'} after pruning, but the router chooses ${c.num_experts_per_tok} per token (num_experts_per_tok); keep at least that many`,
      });
    }
  }
  for (const e of parsed.data.experts ?? []) if (e.ffn !== undefined && exists(e.layer, e.expert)) ffn.set(`${e.layer}.${e.expert}`, e.ffn);
  return { dropped, ffn, pruned: true };
}

interface TensorContext {
  file: string;
  layout: SafetensorsLayout;
  problems: Problems;
  /** Names accounted for by the expected layout; everything else in the file is unexpected. */
  accounted: Set<string>;
}

/** Dense shape of a compressed-tensors sparse-bitmask matrix, after checking its parts against each other. */
function checkBitmask(ctx: TensorContext, name: string): [number, number] | null {
  const { file, problems } = ctx;
  const entries = ctx.layout.entries;
  const part = (s: string) => `${name}.${s}`;
  for (const s of BITMASK_SUFFIXES) ctx.accounted.add(part(s));
  const missing = BITMASK_SUFFIXES.filter((s) => !entries.has(part(s)));
  if (missing.length > 0) {
    problems.add({
      kind: 'sparse-bitmask', file, tensor: name,
      message: `${file}: sparse-bitmask tensor ${name} lacks ${missing.map(part).join(', ')}; ${REEXPORT} (or prune again)`,
    });
    return null;
  }
  if (BITMASK_SUFFIXES.some((s) => problems.damaged.has(part(s)))) return null; // header problems already reported
  const want = (s: string, dtype: string, ok: (shape: number[]) => boolean, expected: string): boolean => {
    const e = entries.get(part(s))!;
    if (e.dtype === dtype && ok(e.shape)) return true;
    problems.add({
      kind: e.dtype !== dtype ? 'dtype' : 'sparse-bitmask', file, tensor: part(s),
      message: `${file}: tensor ${part(s)}: ${e.dtype} ${fmt(e.shape)}, but sparse-bitmask storage needs ${dtype} ${expected}; ${REEXPORT}`,
    });
    return false;
  };
  if (!want('shape', 'I64', (s) => sameShape(s, [2]), '[2]')) return null;
  const raw = readTypedTensors(file, entries, [part('shape')]).get(part('shape')) as BigInt64Array;
  const [rows, cols] = [Number(raw[0]), Number(raw[1])];
  if (!(Number.isSafeInteger(rows) && Number.isSafeInteger(cols) && rows > 0 && cols > 0)) {
    problems.add({ kind: 'sparse-bitmask', file, tensor: part('shape'), message: `${file}: tensor ${part('shape')} holds [${raw[0]}, ${raw[1]}], not a matrix shape; ${REEXPORT}` });
    return null;
  }
  const rowBytes = Math.ceil(cols / 8);
  const okParts = [
    want('bitmask', 'U8', (s) => sameShape(s, [rows, rowBytes]), `[${rows}, ${rowBytes}] for the dense shape [${rows}, ${cols}]`),
    want('row_offsets', 'I64', (s) => sameShape(s, [rows]), `[${rows}]`),
    want('compressed', 'F32', (s) => s.length === 1, '[number of stored weights]'),
  ];
  if (okParts.includes(false)) return [rows, cols];
  const data = readTypedTensors(file, entries, [part('bitmask'), part('row_offsets')]);
  const bitmask = data.get(part('bitmask')) as Uint8Array;
  const offsets = data.get(part('row_offsets')) as BigInt64Array;
  const stored = entries.get(part('compressed'))!.shape[0];
  const padMask = cols % 8 === 0 ? 0 : 0xff & ~((1 << (cols % 8)) - 1);
  let marked = 0;
  let firstBadRow = -1;
  let padded = -1;
  for (let r = 0; r < rows; r++) {
    if (firstBadRow < 0 && offsets[r] !== BigInt(marked)) firstBadRow = r;
    for (let b = 0; b < rowBytes; b++) marked += POPCOUNT[bitmask[r * rowBytes + b]];
    if (padded < 0 && (bitmask[r * rowBytes + rowBytes - 1] & padMask) !== 0) padded = r;
  }
  if (padded >= 0) {
    problems.add({ kind: 'sparse-bitmask', file, tensor: part('bitmask'), message: `${file}: tensor ${part('bitmask')}: row ${padded} marks columns past ${cols}; ${REEXPORT}` });
  }
  if (marked !== stored) {
    problems.add({
      kind: 'sparse-bitmask', file, tensor: name,
      message: `${file}: sparse-bitmask tensor ${name}: the bitmask marks ${marked} weights but ${part('compressed')} stores ${stored}; ${REEXPORT}`,
    });
  } else if (firstBadRow >= 0) {
    problems.add({
      kind: 'sparse-bitmask', file, tensor: part('row_offsets'),
      message: `${file}: tensor ${part('row_offsets')}: row ${firstBadRow} starts at ${offsets[firstBadRow]}, but the bitmask puts it at a different value; ${REEXPORT}`,
    });
  }
  return [rows, cols];
}

const POPCOUNT = Uint8Array.from({ length: 256 }, (_, b) => {
  let n = 0;
  for (let v = b; v; v >>= 1) n += v & 1;
  return n;
});

/** The float dtypes dense weights may have, for messages. */
const FLOAT_TYPES_TEXT = 'F32, F16 or BF16 (the gateway computes in float32 and converts half precision at load)';

/** A dense float weight's shape, or the dense shape of its sparse-bitmask storage; null if absent or unusable. */
function storedMatrix(ctx: TensorContext, name: string): { shape: [number, number] | null; storage: 'dense' | 'sparse-bitmask' } | null {
  const dense = ctx.layout.entries.get(name);
  const hasBitmask = BITMASK_SUFFIXES.some((s) => ctx.layout.entries.has(`${name}.${s}`));
  if (!dense && ctx.problems.damaged.has(name)) {
    ctx.accounted.add(name);
    return { shape: null, storage: 'dense' }; // present, but its header entry is unusable (reported)
  }
  if (dense) {
    ctx.accounted.add(name);
    if (SAFETENSORS_DTYPE_BITS[dense.dtype] === undefined) return { shape: null, storage: 'dense' }; // reported
    if (!FLOAT_DTYPES.includes(dense.dtype)) {
      const file = dense.file ?? ctx.file;
      ctx.problems.add({ kind: 'dtype', file, tensor: name, message: `${file}: tensor ${name}: dtype ${dense.dtype}, expected ${FLOAT_TYPES_TEXT}; ${REEXPORT} with float weights` });
      return { shape: null, storage: 'dense' };
    }
    if (dense.shape.length !== 2) {
      ctx.problems.add({ kind: 'shape', file: ctx.file, tensor: name, message: `${ctx.file}: tensor ${name}: shape ${fmt(dense.shape)}, expected a matrix; ${DISAGREE}` });
      return { shape: null, storage: 'dense' };
    }
    // Both storages at once: the bitmask parts are left unaccounted, so they are reported as unexpected.
    return { shape: [dense.shape[0], dense.shape[1]], storage: 'dense' };
  }
  if (hasBitmask) return { shape: checkBitmask(ctx, name), storage: 'sparse-bitmask' };
  return null;
}

/** Every tensor the config implies, present with the right dtype and shape; nothing else in the file. */
function checkTensors(dir: string, c: ModelConfig, raw: Json, layout: SafetensorsLayout, pruning: ReturnType<typeof checkPruning>, problems: Problems): void {
  const file = layout.file;
  const ctx: TensorContext = { file, layout, problems, accounted: new Set() };
  const d = c.hidden_size;
  const why = (name: string): string => {
    if (name === tensorNames.embed || name === tensorNames.lmHead) return `vocab_size ${c.vocab_size} × hidden_size ${d}`;
    if (name.endsWith('.mlp.gate.weight')) return `num_experts ${c.num_experts} × hidden_size ${d}`;
    if (/\.self_attn\.(k_proj|v_proj|k_norm)\./.test(name)) {
      return `num_key_value_heads ${c.num_key_value_heads} × head size ${d / c.num_attention_heads}, hidden_size ${d}`;
    }
    return `hidden_size ${d}`;
  };
  const isExpert = /\.mlp\.experts\.\d+\./;
  for (const [name, shape] of expectedTensors(c)) {
    if (isExpert.test(name)) continue; // below: dense, structurally pruned or sparse-bitmask
    ctx.accounted.add(name);
    const found = layout.entries.get(name);
    if (!found && problems.damaged.has(name)) continue; // present, but its header entry is unusable (reported)
    if (found && SAFETENSORS_DTYPE_BITS[found.dtype] === undefined) continue; // unknown dtype (reported)
    if (!found) {
      problems.add({ kind: 'missing-tensor', file, tensor: name, message: `${file}: tensor ${name} is missing (expected shape ${fmt(shape)}, ${FLOAT_TYPES_TEXT}); the export is incomplete or config.json belongs to another model — ${REEXPORT}` });
    } else if (!FLOAT_DTYPES.includes(found.dtype)) {
      const at = found.file ?? file;
      problems.add({ kind: 'dtype', file: at, tensor: name, message: `${at}: tensor ${name}: dtype ${found.dtype}, expected ${FLOAT_TYPES_TEXT}; ${REEXPORT} with float weights` });
    } else if (!sameShape(found.shape, shape)) {
      problems.add({ kind: 'shape', file, tensor: name, message: `${file}: tensor ${name} has shape ${fmt(found.shape)}, expected ${fmt(shape)} (${why(name)}); ${DISAGREE}` });
    }
  }

  let bitmaskMatrices = 0;
  for (let l = 0; l < c.num_hidden_layers; l++) {
    for (let e = 0; e < c.num_experts; e++) {
      const names = tensorNames.expert(l, e);
      const key = `${l}.${e}`;
      const stored = { gate: storedMatrix(ctx, names.gate), up: storedMatrix(ctx, names.up), down: storedMatrix(ctx, names.down) };
      const present = Object.values(stored).filter((s) => s !== null);
      bitmaskMatrices += present.filter((s) => s!.storage === 'sparse-bitmask').length;
      if (pruning.dropped.has(key) && present.length === 0) continue; // dropped by expert pruning: no weights
      for (const [which, s] of Object.entries(stored)) {
        if (s === null) {
          const n = names[which as keyof typeof names];
          problems.add({ kind: 'missing-tensor', file, tensor: n, message: `${file}: tensor ${n} is missing (neither dense nor sparse-bitmask; expert ${e} of layer ${l} is not listed in switchyard_pruning.dropped_experts); ${REEXPORT}` });
        }
      }
      // The expert's FFN width: what most of its matrices say (so only the odd one out is reported), else gate's.
      const widths = [stored.gate?.shape?.[0], stored.up?.shape?.[0], stored.down?.shape?.[1]].filter((n) => n !== undefined);
      const ffn = widths.find((n, i) => widths.indexOf(n) !== i) ?? widths[0];
      if (ffn === undefined) continue;
      for (const [which, s, expected] of [['gate', stored.gate, [ffn, d]], ['up', stored.up, [ffn, d]], ['down', stored.down, [d, ffn]]] as const) {
        if (!s?.shape || sameShape(s.shape, expected)) continue;
        const n = names[which];
        problems.add({
          kind: 'shape', file, tensor: n,
          message: `${file}: tensor ${n} has shape ${fmt(s.shape)}, expected ${fmt(expected)} (hidden_size ${d}, this expert's FFN width ${ffn}${s.storage === 'sparse-bitmask' ? '; dense shape from its .shape part' : ''}); ${DISAGREE}`,
        });
      }
      const recorded = pruning.ffn.get(key);
      const problem = recorded !== undefined
        ? (ffn !== recorded ? `config.json's switchyard_pruning records FFN width ${recorded} for this expert` : null)
        : !pruning.pruned
          ? (ffn !== c.intermediate_size ? `intermediate_size is ${c.intermediate_size} and config.json records no pruning (switchyard_pruning)` : null)
          : (ffn > c.intermediate_size ? `intermediate_size is ${c.intermediate_size}; pruning only narrows experts` : null);
      if (problem) {
        problems.add({ kind: 'shape', file, tensor: names.gate, message: `${file}: tensor ${names.gate}: expert ${e} of layer ${l} has FFN width ${ffn}, but ${problem}; ${DISAGREE}` });
      }
    }
  }

  for (const name of layout.entries.keys()) {
    if (ctx.accounted.has(name)) continue;
    const m = /^model\.layers\.(\d+)\.(?:mlp\.experts\.(\d+)\.)?/.exec(name);
    const reason = m && Number(m[1]) >= c.num_hidden_layers ? `layer ${m[1]} does not exist (num_hidden_layers is ${c.num_hidden_layers})`
      : m?.[2] !== undefined && Number(m[2]) >= c.num_experts ? `expert ${m[2]} does not exist (num_experts is ${c.num_experts})`
        : 'it is not part of an OLMoE package (or an expert is stored both dense and sparse-bitmask)';
    problems.add({ kind: 'unexpected-tensor', file, tensor: name, message: `${file}: tensor ${name} is unexpected: ${reason}; ${DISAGREE}` });
  }

  if (bitmaskMatrices > 0) {
    const q = isObject(raw.quantization_config) ? raw.quantization_config : {};
    const format = isObject(q.sparsity_config) ? q.sparsity_config.format : undefined;
    if (format !== 'sparse-bitmask' && q.format !== 'sparse-bitmask') {
      const configFile = join(dir, 'config.json');
      problems.add({
        kind: 'pruning', file: configFile, field: 'quantization_config',
        message: `${configFile}: ${file} stores ${bitmaskMatrices} expert matrices as sparse-bitmask, but quantization_config.sparsity_config.format is not "sparse-bitmask", so compressed-tensors tooling would misread them; add it (switchyard prune writes it) or prune again`,
      });
    }
  }
}

/**
 * Checks a model package folder (DESIGN.md "Model package format"; safetensors per huggingface/safetensors'
 * README; sparse-bitmask per compressed-tensors) without loading it: reads the JSON files, the safetensors header and
 * the sparse-bitmask bitmasks and row offsets (a few % of the file at most), never the dense weights. The bundled
 * 55 MB package checks in a few milliseconds. Never throws for a bad package: problems are returned, at most
 * `maxProblems` of them listed.
 */
export function checkModelPackage(dir: string, options: PackageCheckOptions = {}): PackageCheckReport {
  const problems = new Problems(options.maxProblems ?? 20);
  const report = (checked: CheckedPackage | null): PackageCheckReport => ({
    dir, problems: problems.list, omitted: problems.omitted, checked: problems.count === 0 ? checked : null,
  });
  const root = resolve(dir);
  if (!existsSync(root) || !statSync(root).isDirectory()) {
    problems.add({ kind: 'file', file: dir, message: `${dir}: model package folder does not exist (expected config.json, model.safetensors and tokenizer.json in it)` });
    return report(null);
  }
  const configFile = join(dir, 'config.json');
  const raw = readJsonObject(configFile, 'the model configuration', problems);
  const tokenizer = readJsonObject(join(dir, 'tokenizer.json'), 'the Hugging Face tokenizer', problems);
  const tokenizerConfig = readJsonObject(join(dir, 'tokenizer_config.json'), null, problems);
  const generation = readJsonObject(join(dir, 'generation_config.json'), null, problems);
  const config = raw ? checkConfig(configFile, raw, problems) : null;
  const pruning = config && raw ? checkPruning(configFile, config, raw, problems) : null;
  if (config && raw) checkTokens(dir, config, raw, { tokenizer, tokenizerConfig, generation }, problems);
  if (tokenizer) checkTokenizerLoads(dir, tokenizer, tokenizerConfig, config?.vocab_size ?? null, problems);
  if (tokenizerConfig) checkChatTemplate(dir, tokenizerConfig, problems);

  // One model.safetensors, or shards listed in model.safetensors.index.json (Hugging Face's layout for large models).
  const single = join(dir, 'model.safetensors');
  const index = join(dir, SHARD_INDEX);
  const sharded = !existsSync(single) && existsSync(index);
  const weightsFile = sharded ? index : single;
  let layout: SafetensorsLayout | null = null;
  if (existsSync(weightsFile) && !statSync(weightsFile).isFile()) {
    problems.add({ kind: 'file', file: weightsFile, message: `${weightsFile}: not a file; the weights must be one safetensors file or shards with ${SHARD_INDEX} — ${REEXPORT}` });
  } else if (!existsSync(weightsFile)) {
    problems.add({ kind: 'file', file: weightsFile, message: `${weightsFile}: missing from the model package (nor is there a ${SHARD_INDEX} listing shards); ${REEXPORT}` });
  } else {
    problems.arch = config ? architectureOf(config.model_type) : null;
    layout = sharded ? inspectShardedSafetensors(weightsFile, problems.add) : inspectSafetensors(weightsFile, problems.add);
    // From here on every tensor goes by its canonical (OLMoE) name.
    if (layout && problems.arch) layout = { ...layout, entries: canonicalEntries(problems.arch, layout.entries) };
  }
  if (config && raw && pruning && layout) checkTensors(dir, config, raw, layout, pruning, problems);
  return report(config && layout && tokenizer && pruning
    ? { root, config, weightsFile: resolve(weightsFile), tensors: layout.entries, droppedExperts: pruning.dropped, tokenizerJson: tokenizer, tokenizerConfig: tokenizerConfig ?? {} }
    : null);
}

/** `checkModelPackage`, throwing a PackageCheckError (every problem, each message self-contained) if anything is wrong. */
export function assertModelPackage(dir: string, options: PackageCheckOptions = {}): CheckedPackage {
  const result = checkModelPackage(dir, options);
  if (!result.checked) throw new PackageCheckError(dir, result.problems, result.omitted);
  return result.checked;
}
