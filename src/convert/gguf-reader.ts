/**
 * Reading GGUF v2/v3 files (the layout is described in gguf-writer.ts): the header, every metadata value and the
 * tensor infos, without loading tensor data; F32 tensors can then be read one at a time.
 *
 * Inspect a file from the shell:  npx tsx src/convert/gguf-reader.ts FILE.gguf [--tensors]
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { GGUF_ALIGNMENT_KEY, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GgmlType, GgufError, GgufType, alignUp } from './gguf-writer.ts';

export type GgufReadValue = number | bigint | boolean | string | GgufReadValue[];

export interface GgufEntry {
  /** GGUF type code of the value (GgufType); for arrays, ARRAY with `itemType` the element type. */
  type: number;
  itemType?: number;
  value: GgufReadValue;
}

export interface GgufTensorInfo {
  name: string;
  /** ggml dims, innermost first (the torch shape reversed). */
  dims: number[];
  /** ggml type code (0 = F32). */
  type: number;
  /** Offset from the start of the data section. */
  offset: number;
  /** Absolute byte position in the file. */
  position: number;
}

export interface GgufFile {
  file: string;
  magic: string;
  version: number;
  alignment: number;
  /** Absolute position where tensor data starts. */
  dataStart: number;
  fileSize: number;
  metadata: Map<string, GgufEntry>;
  tensors: GgufTensorInfo[];
}

const TYPE_NAMES: Record<number, string> = {
  0: 'u8', 1: 'i8', 2: 'u16', 3: 'i16', 4: 'u32', 5: 'i32', 6: 'f32', 7: 'bool', 8: 'string', 9: 'array', 10: 'u64',
  11: 'i64', 12: 'f64',
};
const GGML_TYPE_NAMES: Record<number, string> = { 0: 'F32', 1: 'F16', 8: 'Q8_0', 30: 'BF16' };

/** Sequential little-endian reads from a file descriptor through a small window buffer. */
class Cursor {
  private buf = Buffer.alloc(0);
  private bufStart = 0;
  position = 0;

  constructor(private readonly fd: number, readonly size: number, private readonly file: string) {}

  private ensure(n: number): Buffer {
    const endWanted = this.position + n;
    if (endWanted > this.size) throw new GgufError(`${this.file}: unexpected end of file at byte ${this.position} (need ${n} more)`);
    if (this.position < this.bufStart || endWanted > this.bufStart + this.buf.length) {
      const length = Math.min(Math.max(n, 1 << 20), this.size - this.position);
      this.buf = Buffer.alloc(length);
      readSync(this.fd, this.buf, 0, length, this.position);
      this.bufStart = this.position;
    }
    const start = this.position - this.bufStart;
    this.position += n;
    return this.buf.subarray(start, start + n);
  }

  u8 = () => this.ensure(1).readUInt8(0);
  i8 = () => this.ensure(1).readInt8(0);
  u16 = () => this.ensure(2).readUInt16LE(0);
  i16 = () => this.ensure(2).readInt16LE(0);
  u32 = () => this.ensure(4).readUInt32LE(0);
  i32 = () => this.ensure(4).readInt32LE(0);
  f32 = () => this.ensure(4).readFloatLE(0);
  f64 = () => this.ensure(8).readDoubleLE(0);
  u64 = () => this.ensure(8).readBigUInt64LE(0);
  i64 = () => this.ensure(8).readBigInt64LE(0);

  /** A u64 that must fit a JS number (counts, lengths, offsets). */
  count(what: string): number {
    const v = this.u64();
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new GgufError(`${this.file}: ${what} ${v} is too large`);
    return Number(v);
  }

  string(what: string): string {
    const length = this.count(`${what} length`);
    return this.ensure(length).toString('utf8');
  }
}

function readScalar(c: Cursor, type: number, what: string): GgufReadValue {
  switch (type) {
    case GgufType.UINT8: return c.u8();
    case GgufType.INT8: return c.i8();
    case GgufType.UINT16: return c.u16();
    case GgufType.INT16: return c.i16();
    case GgufType.UINT32: return c.u32();
    case GgufType.INT32: return c.i32();
    case GgufType.FLOAT32: return c.f32();
    case GgufType.BOOL: return c.u8() !== 0;
    case GgufType.STRING: return c.string(what);
    case GgufType.UINT64: return c.u64();
    case GgufType.INT64: return c.i64();
    case GgufType.FLOAT64: return c.f64();
    default: throw new GgufError(`${what}: unknown GGUF value type ${type}`);
  }
}

/** Parses a GGUF file's header, metadata and tensor infos (no tensor data is read). */
export function readGguf(file: string): GgufFile {
  const fd = openSync(file, 'r');
  try {
    const size = fstatSync(fd).size;
    const c = new Cursor(fd, size, file);
    const magicBytes = Buffer.alloc(4);
    if (size < 24 || readSync(fd, magicBytes, 0, 4, 0) !== 4) throw new GgufError(`${file}: too short to be GGUF`);
    const magic = magicBytes.toString('latin1');
    if (magic !== GGUF_MAGIC) throw new GgufError(`${file}: magic is ${JSON.stringify(magic)}, expected "GGUF"`);
    c.position = 4;
    const version = c.u32();
    if (version !== 2 && version !== 3) throw new GgufError(`${file}: GGUF version ${version} is not supported (2 or 3)`);
    const nTensors = c.count('tensor count');
    const nKv = c.count('metadata count');

    const metadata = new Map<string, GgufEntry>();
    for (let i = 0; i < nKv; i++) {
      const key = c.string(`key ${i}`);
      if (metadata.has(key)) throw new GgufError(`${file}: duplicate metadata key ${key}`);
      const type = c.u32();
      if (type === GgufType.ARRAY) {
        const itemType = c.u32();
        const n = c.count(`${key} length`);
        const values: GgufReadValue[] = [];
        for (let j = 0; j < n; j++) values.push(readScalar(c, itemType, key));
        metadata.set(key, { type, itemType, value: values });
      } else {
        metadata.set(key, { type, value: readScalar(c, type, key) });
      }
    }
    const alignEntry = metadata.get(GGUF_ALIGNMENT_KEY);
    const alignment = alignEntry ? Number(alignEntry.value) : GGUF_DEFAULT_ALIGNMENT;
    if (alignEntry && alignEntry.type !== GgufType.UINT32) throw new GgufError(`${file}: ${GGUF_ALIGNMENT_KEY} must be a u32`);

    const infos: Omit<GgufTensorInfo, 'position'>[] = [];
    for (let i = 0; i < nTensors; i++) {
      const name = c.string(`tensor ${i} name`);
      const nDims = c.u32();
      if (nDims > 4) throw new GgufError(`${file}: tensor ${name} has ${nDims} dims`);
      const dims: number[] = [];
      for (let j = 0; j < nDims; j++) dims.push(c.count(`${name} dim`));
      const type = c.u32();
      const offset = c.count(`${name} offset`);
      infos.push({ name, dims, type, offset });
    }
    const dataStart = alignUp(c.position, alignment);
    const tensors = infos.map((t) => ({ ...t, position: dataStart + t.offset }));
    return { file, magic, version, alignment, dataStart, fileSize: size, metadata, tensors };
  } finally {
    closeSync(fd);
  }
}

/** The plain value of a metadata key (arrays as JS arrays), or undefined. */
export const ggufValue = (g: GgufFile, key: string): GgufReadValue | undefined => g.metadata.get(key)?.value;

/** Reads one F32 tensor's data (elements in row-major order of the torch shape = ggml dims reversed). */
export function readGgufTensor(g: GgufFile, name: string): Float32Array {
  const t = g.tensors.find((x) => x.name === name);
  if (!t) throw new GgufError(`${g.file}: no tensor ${name}`);
  if (t.type !== GgmlType.F32) throw new GgufError(`${g.file}: tensor ${name} has ggml type ${t.type}; only F32 is read`);
  const count = t.dims.reduce((a, b) => a * b, 1);
  if (t.position + count * 4 > g.fileSize) throw new GgufError(`${g.file}: tensor ${name} runs past the end of the file`);
  const out = new Float32Array(count);
  const fd = openSync(g.file, 'r');
  try {
    readSync(fd, new Uint8Array(out.buffer), 0, count * 4, t.position);
  } finally {
    closeSync(fd);
  }
  return out;
}

function show(v: GgufReadValue, limit = 8): string {
  if (Array.isArray(v)) {
    const head = v.slice(0, limit).map((x) => show(x)).join(', ');
    return `[${head}${v.length > limit ? `, … (${v.length} items)` : ''}]`;
  }
  if (typeof v === 'string') return JSON.stringify(v.length > 120 ? `${v.slice(0, 117)}...` : v);
  return String(v);
}

/** A human-readable summary: version, metadata and (optionally) every tensor. */
export function describeGguf(g: GgufFile, withTensors = false): string {
  const lines = [`${g.file}: GGUF v${g.version}, ${g.tensors.length} tensors, ${g.metadata.size} metadata keys, alignment ${g.alignment}, ${g.fileSize} bytes`];
  for (const [key, e] of g.metadata) {
    const type = e.type === GgufType.ARRAY ? `array<${TYPE_NAMES[e.itemType ?? -1] ?? e.itemType}>` : TYPE_NAMES[e.type] ?? String(e.type);
    lines.push(`  ${key} (${type}) = ${show(e.value)}`);
  }
  if (withTensors) {
    for (const t of g.tensors) lines.push(`  tensor ${t.name} ${GGML_TYPE_NAMES[t.type] ?? t.type} [${t.dims.join(', ')}] @ ${t.offset}`);
  }
  return lines.join('\n');
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = process.argv.slice(2);
  const file = args.find((a) => !a.startsWith('-'));
  if (!file || args.includes('--help') || args.includes('-h')) {
    process.stdout.write('Usage: npx tsx src/convert/gguf-reader.ts FILE.gguf [--tensors]\n');
    process.exitCode = file ? 0 : 2;
  } else {
    try {
      process.stdout.write(`${describeGguf(readGguf(file), args.includes('--tensors'))}\n`);
    } catch (err) {
      process.stderr.write(`${(err as Error).message}\n`);
      process.exitCode = 1;
    }
  }
}
