/**
 * Reading safetensors files: an 8-byte little-endian header length, a JSON header, then raw tensor data.
 * Workers read only the byte ranges of the tensors they host, so the header is parsed on its own.
 *
 * Format (huggingface/safetensors README, "Format"): `N` (u64 LE) = header size; `N` bytes of UTF-8 JSON starting with
 * `{`, maybe padded with spaces, mapping tensor names to `{dtype, shape, data_offsets: [BEGIN, END]}` (offsets relative
 * to the data section, END one past) plus an optional `__metadata__` string-to-string map; duplicate keys are
 * disallowed; the rest of the file is the data section, which "needs to be entirely indexed, and cannot contain
 * holes"; the reference implementation caps N at 100 MB.
 */
import { openSync, readSync, closeSync, fstatSync, readFileSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

export interface TensorEntry {
  dtype: string;
  shape: number[];
  /** Byte range in the file, absolute. */
  begin: number;
  end: number;
  /** The shard that holds it (sharded packages); absent: the file the readers are given. */
  file?: string;
}

/** Dtypes of dense float weights the gateway reads: F32 as stored, F16 and BF16 converted to float32 at load. */
export const FLOAT_DTYPES: readonly string[] = ['F32', 'F16', 'BF16'];

export class PackageError extends Error {
  override readonly name: string = 'PackageError';
}

/** What a package check found wrong; `kind` lets callers and tests tell problems apart without parsing messages. */
export type PackageProblemKind =
  | 'file' // a file is missing or unreadable
  | 'json' // a JSON file does not parse, or is not an object
  | 'header' // the safetensors header framing: length, UTF-8, JSON, duplicate keys, __metadata__, entry fields
  | 'offsets' // data_offsets malformed or past the end of the data section
  | 'byte-length' // data_offsets hold a different number of bytes than dtype × shape needs
  | 'overlap' // two tensors' byte ranges overlap
  | 'gap' // data-section bytes that no tensor indexes (the format forbids holes)
  | 'dtype'
  | 'shape'
  | 'missing-tensor'
  | 'unexpected-tensor'
  | 'sparse-bitmask' // compressed-tensors sparse-bitmask parts disagree with each other
  | 'config' // a config.json field is missing, of the wrong type, or inconsistent
  | 'pruning' // switchyard_pruning / quantization_config disagree with the weights
  | 'token-id' // a special token id outside the vocabulary or inconsistent with the tokenizer
  | 'tokenizer';

export interface PackageProblem {
  kind: PackageProblemKind;
  /** The file the problem is in, as the caller named it. */
  file: string;
  /** The tensor concerned, if any. */
  tensor?: string;
  /** The JSON field concerned (dotted path), if any. */
  field?: string;
  /** Self-contained: names the file, the tensor or field, what is wrong and how to fix it. */
  message: string;
}

/** A package that failed its check: every problem found (up to a limit), each with a message that stands alone. */
export class PackageCheckError extends PackageError {
  override readonly name = 'PackageCheckError';
  constructor(
    readonly subject: string,
    readonly problems: PackageProblem[],
    /** Problems found beyond the reporting limit. */
    readonly omitted = 0,
  ) {
    super(problems.length === 1 && omitted === 0
      ? problems[0].message
      : `${subject}: the model package check found ${problems.length + omitted} problems:\n${problems.map((p) => `  - ${p.message}`).join('\n')}${omitted > 0 ? `\n  - … and ${omitted} more` : ''}`);
  }
}

/** Element sizes in bits of every safetensors dtype (Rust `safetensors::Dtype`); sub-byte types pack densely. */
export const SAFETENSORS_DTYPE_BITS: Readonly<Record<string, number>> = {
  BOOL: 8, U8: 8, I8: 8, F8_E5M2: 8, F8_E4M3: 8, F8_E8M0: 8, F4: 4, F6_E2M3: 6, F6_E3M2: 6,
  I16: 16, U16: 16, F16: 16, BF16: 16, I32: 32, U32: 32, F32: 32, F64: 64, I64: 64, U64: 64, C64: 64,
};

/** The reference implementation's header limit (100 MB), against reading huge JSON from a damaged length. */
const MAX_HEADER_BYTES = 100_000_000;
/** Most tensors listed one by one as ending past the file before the rest are summarised (a truncated file). */
const MAX_LISTED_OUT_OF_FILE = 3;

export interface SafetensorsLayout {
  file: string;
  fileSize: number;
  /** Absolute offset of the data section (8 + header length). */
  dataStart: number;
  /** Bytes in the data section. */
  dataBytes: number;
  metadata: Record<string, string> | null;
  /** Entries whose dtype, shape and offsets are well-formed (possibly still inconsistent: see the problems). */
  entries: Map<string, TensorEntry>;
}

const DAMAGED = 'the file is damaged or was written by a different exporter — re-export the package';

/** Byte length that `dtype` × `shape` needs, or null if the dtype is unknown or sub-byte elements end mid-byte. */
export function tensorByteLength(dtype: string, shape: readonly number[]): number | null {
  const bits = SAFETENSORS_DTYPE_BITS[dtype];
  if (bits === undefined) return null;
  const totalBits = shape.reduce((a, b) => a * b, 1) * bits;
  return totalBits % 8 === 0 ? totalBits / 8 : null;
}

/**
 * Reads and checks a safetensors file's framing and header without reading tensor data: the header length fits the
 * file (and 100 MB), the header is UTF-8 JSON starting with `{`, without duplicate keys, `__metadata__` is a
 * string-to-string map, every entry has a known dtype, a shape of non-negative integers and data_offsets
 * [BEGIN, END] with END − BEGIN = product(shape) × dtype size, and the entries tile the data section exactly (no
 * overlap, no hole, nothing past its end). Reports each problem through `report`; returns the layout, or null when
 * the header cannot be read at all.
 */
export function inspectSafetensors(file: string, report: (p: PackageProblem) => void): SafetensorsLayout | null {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (error) {
    report({ kind: 'file', file, message: `${file}: cannot open the weights file (${(error as Error).message})` });
    return null;
  }
  try {
    const fileSize = fstatSync(fd).size;
    const lengthBytes = Buffer.alloc(8);
    let read: number;
    try {
      read = fileSize < 8 ? 0 : readSync(fd, lengthBytes, 0, 8, 0);
    } catch (error) {
      report({ kind: 'file', file, message: `${file}: cannot read the weights file (${(error as Error).message})` });
      return null;
    }
    if (read !== 8) {
      report({ kind: 'header', file, message: `${file}: ${fileSize} bytes, too short to be safetensors (an 8-byte header length comes first); ${DAMAGED}` });
      return null;
    }
    const length = lengthBytes.readBigUInt64LE(0);
    if (length < 2n || length > BigInt(fileSize - 8) || length > BigInt(MAX_HEADER_BYTES)) {
      const why = length > BigInt(MAX_HEADER_BYTES) && length <= BigInt(fileSize - 8) ? `over the format's ${MAX_HEADER_BYTES}-byte limit` : `does not fit a ${fileSize}-byte file`;
      report({ kind: 'header', file, message: `${file}: header length ${length} (the first 8 bytes) ${why}; the file is truncated or is not safetensors — re-export the package` });
      return null;
    }
    const headerLength = Number(length);
    const headerBytes = Buffer.alloc(headerLength);
    readSync(fd, headerBytes, 0, headerLength, 8);
    const layout = parseHeader(file, headerBytes, fileSize, report);
    return layout;
  } finally {
    closeSync(fd);
  }
}

function parseHeader(file: string, headerBytes: Buffer, fileSize: number, report: (p: PackageProblem) => void): SafetensorsLayout | null {
  const dataStart = 8 + headerBytes.length;
  const dataBytes = fileSize - dataStart;
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    report({ kind: 'header', file, message: `${file}: the ${headerBytes.length}-byte header is not UTF-8; ${DAMAGED}` });
    return null;
  }
  if (!text.startsWith('{')) {
    report({ kind: 'header', file, message: `${file}: the header does not start with "{" (found ${JSON.stringify(text.slice(0, 16))}); ${DAMAGED}` });
    return null;
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (error) {
    report({ kind: 'header', file, message: `${file}: the header is not valid JSON (${(error as Error).message}); ${DAMAGED}` });
    return null;
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    report({ kind: 'header', file, message: `${file}: the header is JSON but not an object; ${DAMAGED}` });
    return null;
  }
  for (const name of duplicateTopLevelKeys(text)) {
    report({ kind: 'header', file, tensor: name, message: `${file}: tensor ${name} is listed more than once in the header (the format forbids duplicate keys); ${DAMAGED}` });
  }

  let metadata: Record<string, string> | null = null;
  const entries = new Map<string, TensorEntry>();
  // Every well-formed byte range takes part in the coverage check, even when the entry's dtype or shape is bad.
  const ranges: ByteRange[] = [];
  for (const [name, spec] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof spec !== 'object' || spec === null || Array.isArray(spec) || Object.values(spec).some((v) => typeof v !== 'string')) {
        report({ kind: 'header', file, field: '__metadata__', message: `${file}: __metadata__ must be a map of strings to strings (the safetensors format); ${DAMAGED}` });
      } else metadata = spec as Record<string, string>;
      continue;
    }
    const { entry, range } = parseEntry(file, name, spec, dataStart, report);
    if (entry) entries.set(name, entry);
    if (range) ranges.push(range);
  }
  checkCoverage(file, ranges, dataBytes, report);
  return { file, fileSize, dataStart, dataBytes, metadata, entries };
}

interface ByteRange {
  name: string;
  /** Relative to the data section. */
  begin: number;
  end: number;
}

/**
 * One header entry. `range`: its data_offsets when well-formed; `entry`: when dtype, shape and offsets are all
 * well-formed (the byte length may still disagree: reported).
 */
function parseEntry(file: string, name: string, spec: unknown, dataStart: number, report: (p: PackageProblem) => void): { entry: TensorEntry | null; range: ByteRange | null } {
  const bad = (kind: PackageProblemKind, what: string) => report({ kind, file, tensor: name, message: `${file}: tensor ${name}: ${what}; ${DAMAGED}` });
  if (typeof spec !== 'object' || spec === null || Array.isArray(spec)) {
    bad('header', 'its header entry is not an object {dtype, shape, data_offsets}');
    return { entry: null, range: null };
  }
  const { dtype, shape, data_offsets: offsets } = spec as Record<string, unknown>;
  let range: ByteRange | null = null;
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((n) => Number.isSafeInteger(n) && n >= 0) || offsets[0] > offsets[1]) {
    bad('offsets', `data_offsets is ${JSON.stringify(offsets) ?? 'missing'}, expected [BEGIN, END] with 0 <= BEGIN <= END`);
  } else range = { name, begin: offsets[0] as number, end: offsets[1] as number };
  if (typeof dtype !== 'string') {
    bad('header', `dtype is ${JSON.stringify(dtype) ?? 'missing'}, expected a string such as "F32"`);
    return { entry: null, range };
  }
  if (!Array.isArray(shape) || !shape.every((n) => Number.isSafeInteger(n) && n >= 0)) {
    bad('header', `shape is ${JSON.stringify(shape) ?? 'missing'}, expected a list of non-negative integers`);
    return { entry: null, range };
  }
  if (!range) return { entry: null, range };
  const entry = { dtype, shape: shape as number[], begin: dataStart + range.begin, end: dataStart + range.end };
  if (SAFETENSORS_DTYPE_BITS[dtype] === undefined) {
    report({ kind: 'dtype', file, tensor: name, message: `${file}: tensor ${name}: unknown dtype ${JSON.stringify(dtype)} (safetensors dtypes: ${Object.keys(SAFETENSORS_DTYPE_BITS).join(', ')}); ${DAMAGED}` });
    return { entry, range };
  }
  const need = tensorByteLength(dtype, entry.shape);
  const have = range.end - range.begin;
  if (need === null) {
    bad('byte-length', `${dtype} ${fmtShape(entry.shape)} does not fill whole bytes`);
  } else if (have !== need) {
    bad('byte-length', `data_offsets [${range.begin}, ${range.end}] give ${have} bytes, but ${dtype} ${fmtShape(entry.shape)} needs ${need} bytes`);
  }
  return { entry, range };
}

const fmtShape = (shape: readonly number[]) => `[${shape.join(', ')}]`;

/**
 * The data section must be exactly tiled by the tensors' byte ranges (safetensors: "entirely indexed, and cannot
 * contain holes"). This is what exposes offsets shifted as a whole (a hole at the start, a range past the end) or
 * one tensor's range moved (an overlap and a hole), even when every range has the right length.
 */
function checkCoverage(file: string, unsorted: ByteRange[], dataBytes: number, report: (p: PackageProblem) => void): void {
  const ranges = [...unsorted].sort((a, b) => a.begin - b.begin || a.end - b.end);
  const pastEnd = ranges.filter((r) => r.end > dataBytes);
  for (const r of pastEnd.slice(0, MAX_LISTED_OUT_OF_FILE)) {
    report({
      kind: 'offsets', file, tensor: r.name,
      message: `${file}: tensor ${r.name}: data_offsets [${r.begin}, ${r.end}] end past the data section, which holds ${dataBytes} bytes; the file is truncated, or the offsets are shifted — re-export the package`,
    });
  }
  if (pastEnd.length > MAX_LISTED_OUT_OF_FILE) {
    report({
      kind: 'offsets', file,
      message: `${file}: ${pastEnd.length - MAX_LISTED_OUT_OF_FILE} more tensors end past the data section (${dataBytes} bytes; the header indexes ${Math.max(...ranges.map((r) => r.end))}); the file is truncated — copy or download it again`,
    });
  }
  let cursor = 0;
  let last: string | null = null;
  for (const r of ranges) {
    if (r.begin > cursor) {
      report({
        kind: 'gap', file, tensor: r.name,
        message: `${file}: data-section bytes [${cursor}, ${r.begin}) ${last ? `between tensor ${last} and tensor ${r.name}` : `before the first tensor, ${r.name},`} belong to no tensor; safetensors data must be indexed without holes, so the offsets are shifted or a range is wrong; ${DAMAGED}`,
      });
    } else if (r.begin < cursor && r.end <= dataBytes) {
      report({
        kind: 'overlap', file, tensor: r.name,
        message: `${file}: tensor ${r.name}: data_offsets [${r.begin}, ${r.end}] overlap tensor ${last} (which ends at ${cursor}); ${DAMAGED}`,
      });
    }
    if (r.end >= cursor) {
      cursor = r.end;
      last = r.name;
    }
  }
  if (cursor < dataBytes) {
    report({
      kind: 'gap', file,
      message: `${file}: data-section bytes [${cursor}, ${dataBytes}) ${last ? `after the last tensor, ${last},` : ''} belong to no tensor; safetensors data must be indexed without holes, so a range is too short or the file has trailing bytes; ${DAMAGED}`,
    });
  }
}

/** Keys that occur more than once at the top level of a JSON object text (JSON.parse silently keeps the last). */
function duplicateTopLevelKeys(text: string): string[] {
  const seen = new Set<string>();
  const dup = new Set<string>();
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (ch === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      if (depth === 1) {
        let k = j + 1;
        while (k < text.length && /\s/.test(text[k])) k++;
        if (text[k] === ':') {
          const key = JSON.parse(text.slice(i, j + 1)) as string;
          if (seen.has(key)) dup.add(key);
          seen.add(key);
        }
      }
      i = j;
    } else if (ch === '{' || ch === '[') depth++;
    else if (ch === '}' || ch === ']') depth--;
  }
  return [...dup];
}

/** The index of sharded weights, as Hugging Face writes it: tensor name → shard file (beside the index). */
export const SHARD_INDEX = 'model.safetensors.index.json';

/**
 * Reads and checks sharded weights: `indexFile` (model.safetensors.index.json, `{"weight_map": {tensor: shard}}`)
 * and each shard it names with `inspectSafetensors`. Every tensor of the map must be in its shard, and every tensor
 * of a shard in the map (to that shard). Returns the tensors of all shards in one layout (each entry with its
 * shard's path; `file` is the index), or null when the index cannot be used at all.
 */
export function inspectShardedSafetensors(indexFile: string, report: (p: PackageProblem) => void): SafetensorsLayout | null {
  let index: unknown;
  try {
    index = JSON.parse(readFileSync(indexFile, 'utf8'));
  } catch (error) {
    report({ kind: 'json', file: indexFile, message: `${indexFile}: cannot read the shard index (${(error as Error).message}); re-export the package` });
    return null;
  }
  const map = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof map !== 'object' || map === null || Array.isArray(map) || Object.values(map).some((v) => typeof v !== 'string')) {
    report({ kind: 'json', file: indexFile, message: `${indexFile}: weight_map must be an object mapping each tensor name to its shard file; re-export the package` });
    return null;
  }
  const weightMap = map as Record<string, string>;
  const entries = new Map<string, TensorEntry>();
  let fileSize = 0;
  let dataBytes = 0;
  for (const shardName of [...new Set(Object.values(weightMap))].sort()) {
    if (shardName !== basename(shardName) || shardName === '' || shardName === '.' || shardName === '..') {
      report({ kind: 'json', file: indexFile, message: `${indexFile}: shard ${JSON.stringify(shardName)} is not a file name beside the index; re-export the package` });
      continue;
    }
    const shard = join(dirname(indexFile), shardName);
    const layout = inspectSafetensors(shard, report);
    if (!layout) continue;
    fileSize += layout.fileSize;
    dataBytes += layout.dataBytes;
    for (const [name, entry] of layout.entries) {
      if (weightMap[name] !== shardName) {
        report({
          kind: 'unexpected-tensor', file: shard, tensor: name,
          message: `${shard}: tensor ${name} is in this shard, but ${indexFile} ${name in weightMap ? `puts it in ${weightMap[name]}` : 'does not list it'}; re-export the package`,
        });
        continue;
      }
      entries.set(name, { ...entry, file: shard });
    }
    for (const [name, listed] of Object.entries(weightMap)) {
      if (listed === shardName && !layout.entries.has(name)) {
        report({ kind: 'missing-tensor', file: shard, tensor: name, message: `${shard}: tensor ${name} is missing, but ${indexFile} puts it in this shard; re-export the package` });
      }
    }
  }
  return { file: indexFile, fileSize, dataStart: 0, dataBytes, metadata: null, entries };
}

/**
 * The tensor entries of a safetensors file (absolute byte ranges), or of sharded weights given their index file
 * (SHARD_INDEX), after the checks of `inspectSafetensors` / `inspectShardedSafetensors`. Throws PackageCheckError
 * listing every problem found.
 */
export function readSafetensorsHeader(file: string): Map<string, TensorEntry> {
  const problems: PackageProblem[] = [];
  const inspect = file.endsWith('.index.json') ? inspectShardedSafetensors : inspectSafetensors;
  const layout = inspect(file, (p) => problems.push(p));
  if (problems.length > 0 || !layout) throw new PackageCheckError(file, problems);
  return layout.entries;
}

export type TensorData = Float32Array | Uint8Array | Int32Array | BigInt64Array;

const DTYPES = {
  F32: Float32Array,
  U8: Uint8Array,
  I32: Int32Array,
  I64: BigInt64Array,
} as const;

type Dtype = keyof typeof DTYPES;

/**
 * Reads the named tensors (only their bytes) as typed arrays of their dtype (F32, U8, I32, I64), each from its shard
 * (TensorEntry.file) or else from `file`.
 */
export function readTypedTensors(file: string, entries: Map<string, TensorEntry>, names: string[]): Map<string, TensorData> {
  return readEach(file, entries, names, (fd, entry, name) => {
    const Type = DTYPES[entry.dtype as Dtype];
    if (!Type) throw new PackageError(`${entry.file ?? file}: tensor ${name} has dtype ${entry.dtype}; supported: ${Object.keys(DTYPES).join(', ')}`);
    return readRange(fd, entry, Type as { new (length: number): TensorData; BYTES_PER_ELEMENT: number });
  });
}

/**
 * Reads the named float tensors (only their bytes) as Float32Arrays: F32 as stored, F16 and BF16 converted (exactly:
 * every half and bfloat16 value is a float32). Throws a PackageError for other dtypes.
 */
export function readTensors(file: string, entries: Map<string, TensorEntry>, names: string[]): Map<string, Float32Array> {
  return readEach(file, entries, names, (fd, entry, name) => {
    if (entry.dtype === 'F32') return readRange(fd, entry, Float32Array);
    if (entry.dtype === 'BF16') return bf16ToF32(readRange(fd, entry, Uint16Array));
    if (entry.dtype === 'F16') return f16ToF32(readRange(fd, entry, Uint16Array));
    throw new PackageError(`${entry.file ?? file}: tensor ${name} has dtype ${entry.dtype}; expected ${FLOAT_DTYPES.join(', ')}`);
  });
}

/** `decode` of each named tensor, read from its shard (or `file`), each file opened once; a missing name throws. */
function readEach<T>(
  file: string, entries: Map<string, TensorEntry>, names: string[], decode: (fd: number, entry: TensorEntry, name: string) => T,
): Map<string, T> {
  return withFiles((open) => {
    const out = new Map<string, T>();
    for (const name of names) {
      const entry = entries.get(name);
      if (!entry) throw new PackageError(`${file}: tensor ${name} is missing`);
      out.set(name, decode(open(entry.file ?? file), entry, name));
    }
    return out;
  });
}

/** Runs `fn` with an opener that opens each file once, and closes them all afterwards. */
function withFiles<T>(fn: (open: (file: string) => number) => T): T {
  const fds = new Map<string, number>();
  try {
    return fn((file) => {
      let fd = fds.get(file);
      if (fd === undefined) fds.set(file, (fd = openSync(file, 'r')));
      return fd;
    });
  } finally {
    for (const fd of fds.values()) closeSync(fd);
  }
}

function readRange<T extends Float32Array | Uint8Array | Uint16Array | Int32Array | BigInt64Array>(
  fd: number, entry: TensorEntry, Type: { new (length: number): T; BYTES_PER_ELEMENT: number },
): T {
  const bytes = entry.end - entry.begin;
  const data = new Type(bytes / Type.BYTES_PER_ELEMENT);
  readSync(fd, new Uint8Array(data.buffer), 0, bytes, entry.begin);
  return data;
}

/** float32 → bfloat16 bits, rounded to nearest even (as torch's .to(torch.bfloat16)); NaN stays NaN. */
export function f32ToBf16(values: Float32Array): Uint16Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const b = bits[i];
    out[i] = Number.isNaN(values[i]) ? (b >>> 16) | 0x40 : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** bfloat16 bits → float32: the upper half of a float32's bits. */
export function bf16ToF32(bits: Uint16Array): Float32Array {
  const out = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = bits[i] << 16;
  return new Float32Array(out.buffer);
}

/** IEEE half bits → float32 (subnormals, infinities and NaN included). */
export function f16ToF32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) {
    const h = bits[i];
    const sign = h & 0x8000 ? -1 : 1;
    const exponent = (h >> 10) & 0x1f;
    const mantissa = h & 0x3ff;
    out[i] = exponent === 0 ? sign * mantissa * 2 ** -24
      : exponent === 31 ? (mantissa ? NaN : sign * Infinity)
        : sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
  }
  return out;
}

/** Writes tensors (sorted by name, 8-byte aligned header) in the safetensors layout. */
export function writeSafetensors(
  file: string, tensors: Map<string, { shape: number[]; data: TensorData } | { shape: number[]; data: Uint16Array; dtype: 'F16' | 'BF16' }>,
  metadata: Record<string, string> = { format: 'pt' },
): void {
  const header: Record<string, unknown> = { __metadata__: metadata };
  const names = [...tensors.keys()].sort();
  let offset = 0;
  for (const name of names) {
    const t = tensors.get(name)!;
    const dtype = 'dtype' in t ? t.dtype : (Object.keys(DTYPES) as Dtype[]).find((k) => t.data instanceof DTYPES[k])!;
    header[name] = { dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  const fd = openSync(file, 'w');
  try {
    writeSync(fd, length);
    writeSync(fd, json);
    for (const name of names) {
      const data = tensors.get(name)!.data;
      writeSync(fd, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    }
  } finally {
    closeSync(fd);
  }
}
