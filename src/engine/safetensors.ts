/**
 * Reading safetensors files: an 8-byte little-endian header length, a JSON header, then raw tensor data.
 * Workers read only the byte ranges of the tensors they host, so the header is parsed on its own.
 */
import { openSync, readSync, closeSync, fstatSync } from 'node:fs';

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

/** Reads the named F32 tensors (only their bytes) as Float32Arrays. */
export function readTensors(file: string, entries: Map<string, TensorEntry>, names: string[]): Map<string, Float32Array> {
  const fd = openSync(file, 'r');
  try {
    const out = new Map<string, Float32Array>();
    for (const name of names) {
      const entry = entries.get(name);
      if (!entry) throw new PackageError(`${file}: tensor ${name} is missing`);
      if (entry.dtype !== 'F32') throw new PackageError(`${file}: tensor ${name} has dtype ${entry.dtype}; only F32 is supported`);
      const bytes = entry.end - entry.begin;
      const data = new Float32Array(bytes / 4);
      readSync(fd, new Uint8Array(data.buffer), 0, bytes, entry.begin);
      out.set(name, data);
    }
    return out;
  } finally {
    closeSync(fd);
  }
}
