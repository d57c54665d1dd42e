/**
 * GGUF v3 encoding (the file format llama.cpp loads), written from the format as llama.cpp's `ggml/src/gguf.cpp`
 * reads it and `gguf-py`'s writer produces it. Everything is little-endian:
 *
 *   magic "GGUF" | version u32 = 3 | tensor count u64 | KV count u64
 *   KV pairs:     key (string) | value type u32 | value
 *   tensor infos: name (string) | n_dims u32 | dims u64 × n_dims (ggml order: innermost first, i.e. the torch /
 *                 numpy shape reversed) | ggml type u32 | offset u64 (from the start of the data section)
 *   zero padding up to the alignment | tensor data, each tensor padded with zeros up to the alignment
 *
 * A string is a u64 byte length and UTF-8 bytes (no terminator). An array value is the element type u32, the
 * element count u64 and the elements. The alignment is `general.alignment` (u32, a power of two), 32 when absent.
 * llama.cpp requires tensor offsets to be exactly the running sum of the padded tensor sizes, in info order, so
 * data must be written in the same order as the infos.
 */
import { closeSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';

export const GGUF_MAGIC = 'GGUF';
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;
export const GGUF_ALIGNMENT_KEY = 'general.alignment';

/** GGUF metadata value types (gguf.h `enum gguf_type`). */
export const GgufType = {
  UINT8: 0, INT8: 1, UINT16: 2, INT16: 3, UINT32: 4, INT32: 5, FLOAT32: 6, BOOL: 7, STRING: 8, ARRAY: 9,
  UINT64: 10, INT64: 11, FLOAT64: 12,
} as const;

/** The ggml tensor types this writer produces (ggml.h `enum ggml_type`): only unquantized F32. */
export const GgmlType = { F32: 0 } as const;
const GGML_TYPE_SIZE: Record<number, number> = { [GgmlType.F32]: 4 };

/** Scalar metadata values this writer encodes. */
export type GgufScalar =
  | { type: 'u32'; value: number }
  | { type: 'i32'; value: number }
  | { type: 'u64'; value: bigint }
  | { type: 'f32'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string };

export type GgufArray =
  | { type: 'array'; itemType: 'u32' | 'i32' | 'f32'; values: readonly number[] }
  | { type: 'array'; itemType: 'bool'; values: readonly boolean[] }
  | { type: 'array'; itemType: 'string'; values: readonly string[] };

export type GgufValue = GgufScalar | GgufArray;

export const gguf = {
  u32: (value: number): GgufValue => ({ type: 'u32', value }),
  i32: (value: number): GgufValue => ({ type: 'i32', value }),
  u64: (value: bigint): GgufValue => ({ type: 'u64', value }),
  f32: (value: number): GgufValue => ({ type: 'f32', value }),
  bool: (value: boolean): GgufValue => ({ type: 'bool', value }),
  str: (value: string): GgufValue => ({ type: 'string', value }),
  strings: (values: readonly string[]): GgufValue => ({ type: 'array', itemType: 'string', values }),
  i32s: (values: readonly number[]): GgufValue => ({ type: 'array', itemType: 'i32', values }),
  u32s: (values: readonly number[]): GgufValue => ({ type: 'array', itemType: 'u32', values }),
  f32s: (values: readonly number[]): GgufValue => ({ type: 'array', itemType: 'f32', values }),
};

const TYPE_CODE: Record<GgufScalar['type'], number> = {
  u32: GgufType.UINT32, i32: GgufType.INT32, u64: GgufType.UINT64, f32: GgufType.FLOAT32, bool: GgufType.BOOL,
  string: GgufType.STRING,
};

export class GgufError extends Error {
  override readonly name = 'GgufError';
}

/** Appends little-endian values to a growing list of chunks. */
class ByteSink {
  private readonly parts: Buffer[] = [];
  length = 0;

  private push(b: Buffer): void {
    this.parts.push(b);
    this.length += b.length;
  }

  u32(v: number, what: string): void {
    if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff) throw new GgufError(`${what}: ${v} is not a u32`);
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.push(b);
  }

  i32(v: number, what: string): void {
    if (!Number.isInteger(v) || v < -0x8000_0000 || v > 0x7fff_ffff) throw new GgufError(`${what}: ${v} is not an i32`);
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    this.push(b);
  }

  u64(v: bigint | number, what: string): void {
    const big = typeof v === 'bigint' ? v : Number.isSafeInteger(v) ? BigInt(v) : -1n;
    if (big < 0n || big > 0xffff_ffff_ffff_ffffn) throw new GgufError(`${what}: ${v} is not a u64`);
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(big);
    this.push(b);
  }

  f32(v: number, what: string): void {
    if (!Number.isFinite(v)) throw new GgufError(`${what}: ${v} is not a finite f32`);
    const b = Buffer.alloc(4);
    b.writeFloatLE(v);
    this.push(b);
  }

  bool(v: boolean): void {
    this.push(Buffer.from([v ? 1 : 0]));
  }

  string(s: string): void {
    const bytes = Buffer.from(s, 'utf8');
    this.u64(bytes.length, 'string length');
    this.push(bytes);
  }

  toBuffer(): Buffer {
    return Buffer.concat(this.parts, this.length);
  }
}

export const alignUp = (n: number, alignment: number): number => Math.ceil(n / alignment) * alignment;

function writeScalar(sink: ByteSink, type: GgufScalar['type'], value: unknown, what: string): void {
  const bad = () => new GgufError(`${what}: ${String(value)} is not a ${type}`);
  switch (type) {
    case 'u32':
    case 'i32':
    case 'f32':
      if (typeof value !== 'number') throw bad();
      return type === 'u32' ? sink.u32(value, what) : type === 'i32' ? sink.i32(value, what) : sink.f32(value, what);
    case 'u64':
      if (typeof value !== 'bigint') throw bad();
      return sink.u64(value, what);
    case 'bool':
      if (typeof value !== 'boolean') throw bad();
      return sink.bool(value);
    case 'string':
      if (typeof value !== 'string') throw bad();
      return sink.string(value);
  }
}

/** Encodes one metadata value with its type code (what follows the key). */
function writeValue(sink: ByteSink, key: string, v: GgufValue): void {
  if (v.type === 'array') {
    sink.u32(GgufType.ARRAY, key);
    sink.u32(TYPE_CODE[v.itemType], key);
    sink.u64(v.values.length, `${key} length`);
    for (const item of v.values) writeScalar(sink, v.itemType, item, key);
    return;
  }
  sink.u32(TYPE_CODE[v.type], key);
  writeScalar(sink, v.type, v.value, key);
}

/** One tensor to write. */
export interface GgufTensorSpec {
  /** GGUF tensor name, e.g. `blk.0.attn_q.weight` (llama.cpp limit: under 64 bytes). */
  name: string;
  /** Shape in torch / numpy order (outermost first); written reversed, as ggml dims. At most 4 dims. */
  shape: readonly number[];
  /** ggml type; only F32. */
  type: (typeof GgmlType)[keyof typeof GgmlType];
}

export interface GgufLayout {
  /** Header, metadata and tensor infos, padded to the alignment: write this first. */
  header: Buffer;
  alignment: number;
  /** Each tensor's offset from the start of the data section, and its unpadded byte size. */
  tensors: { name: string; offset: number; bytes: number }[];
  /** Total file size once every tensor is written and padded. */
  fileSize: number;
}

export const tensorBytes = (t: GgufTensorSpec): number =>
  t.shape.reduce((a, b) => a * b, 1) * (GGML_TYPE_SIZE[t.type] ?? Number.NaN);

/**
 * Encodes everything before the tensor data: header, metadata (in the given order), tensor infos with their
 * offsets, padding to the alignment. Pure; validates names, dims and value ranges.
 */
export function encodeGgufHeader(metadata: ReadonlyArray<readonly [string, GgufValue]>, tensors: readonly GgufTensorSpec[]): GgufLayout {
  const keys = new Set<string>();
  let alignment = GGUF_DEFAULT_ALIGNMENT;
  for (const [key, value] of metadata) {
    if (key.length === 0) throw new GgufError('metadata key is empty');
    if (keys.has(key)) throw new GgufError(`metadata key ${key} appears twice`);
    keys.add(key);
    if (key === GGUF_ALIGNMENT_KEY) {
      if (value.type !== 'u32' || value.value <= 0 || (value.value & (value.value - 1)) !== 0) {
        throw new GgufError(`${GGUF_ALIGNMENT_KEY} must be a u32 power of two`);
      }
      alignment = value.value;
    }
  }

  const magic = Buffer.from(GGUF_MAGIC, 'latin1');
  const head = new ByteSink();
  head.u32(GGUF_VERSION, 'version');
  head.u64(tensors.length, 'tensor count');
  head.u64(metadata.length, 'metadata count');

  const body = new ByteSink();
  for (const [key, value] of metadata) {
    body.string(key);
    writeValue(body, key, value);
  }

  const names = new Set<string>();
  const placed: GgufLayout['tensors'] = [];
  let offset = 0;
  for (const t of tensors) {
    if (Buffer.byteLength(t.name, 'utf8') >= 64) throw new GgufError(`tensor name ${t.name} is 64 bytes or longer`);
    if (names.has(t.name)) throw new GgufError(`tensor ${t.name} appears twice`);
    names.add(t.name);
    if (t.shape.length < 1 || t.shape.length > 4) throw new GgufError(`tensor ${t.name}: ${t.shape.length} dims (1 to 4 allowed)`);
    if (t.shape.some((n) => !Number.isInteger(n) || n < 0)) throw new GgufError(`tensor ${t.name}: bad shape [${t.shape}]`);
    const bytes = tensorBytes(t);
    if (!Number.isFinite(bytes)) throw new GgufError(`tensor ${t.name}: unsupported ggml type ${t.type}`);
    body.string(t.name);
    body.u32(t.shape.length, `${t.name} n_dims`);
    for (let i = t.shape.length - 1; i >= 0; i--) body.u64(t.shape[i], `${t.name} dim`);
    body.u32(t.type, `${t.name} type`);
    body.u64(offset, `${t.name} offset`);
    placed.push({ name: t.name, offset, bytes });
    offset += alignUp(bytes, alignment);
  }

  const unpadded = magic.length + head.length + body.length;
  const dataStart = alignUp(unpadded, alignment);
  const header = Buffer.concat([magic, head.toBuffer(), body.toBuffer(), Buffer.alloc(dataStart - unpadded)]);
  return { header, alignment, tensors: placed, fileSize: dataStart + offset };
}

/** A tensor to stream: its spec and a generator of its raw little-endian bytes, in row-major (torch) order. */
export interface GgufTensorSource extends GgufTensorSpec {
  chunks: () => Iterable<Uint8Array>;
}

/**
 * Writes a GGUF file tensor by tensor (only one tensor's chunks are held at a time). Writes to `<file>.tmp` and
 * renames it into place once complete, so a failed conversion leaves no half-written file behind.
 */
export function writeGgufFile(file: string, metadata: ReadonlyArray<readonly [string, GgufValue]>, tensors: readonly GgufTensorSource[]): GgufLayout {
  const layout = encodeGgufHeader(metadata, tensors);
  const tmp = `${file}.tmp`;
  const fd = openSync(tmp, 'w');
  let ok = false;
  try {
    let position = 0;
    const put = (bytes: Uint8Array) => {
      let done = 0;
      while (done < bytes.length) done += writeSync(fd, bytes, done, bytes.length - done, position + done);
      position += bytes.length;
    };
    put(layout.header);
    const dataStart = layout.header.length;
    tensors.forEach((t, i) => {
      const { offset, bytes } = layout.tensors[i];
      if (position !== dataStart + offset) throw new GgufError(`internal: tensor ${t.name} would start at ${position}, expected ${dataStart + offset}`);
      let written = 0;
      for (const chunk of t.chunks()) {
        put(chunk);
        written += chunk.length;
        if (written > bytes) throw new GgufError(`tensor ${t.name}: more than the ${bytes} bytes its shape [${t.shape}] holds`);
      }
      if (written !== bytes) throw new GgufError(`tensor ${t.name}: got ${written} bytes, its shape [${t.shape}] holds ${bytes}`);
      put(Buffer.alloc(alignUp(bytes, layout.alignment) - bytes));
    });
    if (position !== layout.fileSize) throw new GgufError(`internal: wrote ${position} bytes, expected ${layout.fileSize}`);
    ok = true;
  } finally {
    closeSync(fd);
    if (!ok) rmSync(tmp, { force: true });
  }
  renameSync(tmp, file);
  return layout;
}
