/**
 * Reading safetensors files: an 8-byte little-endian header length, a JSON header, then raw tensor data.
 * Workers read only the byte ranges of the tensors they host, so the header is parsed on its own.
 */
import { openSync, readSync, closeSync, fstatSync, writeSync } from 'node:fs';

export interface TensorEntry {
  dtype: string;
  shape: number[];
  /** Byte range in the file, absolute. */
  begin: number;
  end: number;
}

export class PackageError extends Error {
  override readonly name = 'PackageError';
}

export function readSafetensorsHeader(file: string): Map<string, TensorEntry> {
  const fd = openSync(file, 'r');
  try {
    const size = fstatSync(fd).size;
    const lengthBytes = Buffer.alloc(8);
    if (size < 8 || readSync(fd, lengthBytes, 0, 8, 0) !== 8) throw new PackageError(`${file}: too short to be safetensors`);
    const length = Number(lengthBytes.readBigUInt64LE(0));
    if (length <= 0 || 8 + length > size) throw new PackageError(`${file}: header length ${length} does not fit a ${size}-byte file`);
    const headerBytes = Buffer.alloc(length);
    readSync(fd, headerBytes, 0, length, 8);
    let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
    try {
      header = JSON.parse(headerBytes.toString('utf8'));
    } catch (error) {
      throw new PackageError(`${file}: header is not valid JSON (${(error as Error).message})`);
    }
    const entries = new Map<string, TensorEntry>();
    for (const [name, spec] of Object.entries(header)) {
      if (name === '__metadata__') continue;
      const [start, stop] = spec.data_offsets ?? [];
      const begin = 8 + length + start;
      const end = 8 + length + stop;
      if (!(start >= 0 && stop >= start && end <= size)) {
        throw new PackageError(`${file}: tensor ${name} has data offsets [${start}, ${stop}] outside the file`);
      }
      entries.set(name, { dtype: spec.dtype, shape: spec.shape, begin, end });
    }
    return entries;
  } finally {
    closeSync(fd);
  }
}

export type TensorData = Float32Array | Uint8Array | Int32Array | BigInt64Array;

const DTYPES = {
  F32: Float32Array,
  U8: Uint8Array,
  I32: Int32Array,
  I64: BigInt64Array,
} as const;

type Dtype = keyof typeof DTYPES;

/** Reads the named tensors (only their bytes) as typed arrays of their dtype (F32, U8, I32, I64). */
export function readTypedTensors(file: string, entries: Map<string, TensorEntry>, names: string[]): Map<string, TensorData> {
  const fd = openSync(file, 'r');
  try {
    const out = new Map<string, TensorData>();
    for (const name of names) {
      const entry = entries.get(name);
      if (!entry) throw new PackageError(`${file}: tensor ${name} is missing`);
      const Type = DTYPES[entry.dtype as Dtype];
      if (!Type) throw new PackageError(`${file}: tensor ${name} has dtype ${entry.dtype}; supported: ${Object.keys(DTYPES).join(', ')}`);
      const bytes = entry.end - entry.begin;
      const data = new Type(bytes / Type.BYTES_PER_ELEMENT);
      readSync(fd, new Uint8Array(data.buffer), 0, bytes, entry.begin);
      out.set(name, data);
    }
    return out;
  } finally {
    closeSync(fd);
  }
}

/** Reads the named F32 tensors (only their bytes) as Float32Arrays. */
export function readTensors(file: string, entries: Map<string, TensorEntry>, names: string[]): Map<string, Float32Array> {
  for (const name of names) {
    const dtype = entries.get(name)?.dtype;
    if (dtype !== undefined && dtype !== 'F32') throw new PackageError(`${file}: tensor ${name} has dtype ${dtype}; expected F32`);
  }
  return readTypedTensors(file, entries, names) as Map<string, Float32Array>;
}

/** Writes tensors (sorted by name, 8-byte aligned header) in the safetensors layout. */
export function writeSafetensors(file: string, tensors: Map<string, { shape: number[]; data: TensorData }>, metadata: Record<string, string> = { format: 'pt' }): void {
  const header: Record<string, unknown> = { __metadata__: metadata };
  const names = [...tensors.keys()].sort();
  let offset = 0;
  for (const name of names) {
    const t = tensors.get(name)!;
    const dtype = (Object.keys(DTYPES) as Dtype[]).find((k) => t.data instanceof DTYPES[k])!;
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
