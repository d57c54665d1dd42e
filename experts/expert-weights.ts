/**
 * Reading one expert's three matrices from a package, whatever their storage: dense F32, F16 or BF16 (possibly with
 * fewer FFN neurons after structured pruning) or compressed-tensors sparse-bitmask. Returns dense row-major float32.
 */
import { FLOAT_DTYPES, PackageError, readTensors, readTypedTensors, type TensorEntry } from '../src/format/safetensors.ts';
import { tensorNames } from '../src/format/package-format.ts';
import { BITMASK_SUFFIXES, decompressBitmask } from './pruning/bitmask.ts';
import type { ExpertWeights } from './expert-graph.ts';

export type ExpertStorage = 'dense' | 'sparse-bitmask';

/** How a weight matrix is stored (dense F32, or compressed-tensors sparse-bitmask) and its dense shape. */
export function describeMatrix(file: string, header: Map<string, TensorEntry>, name: string): { storage: ExpertStorage; shape: [number, number] } {
  const dense = header.get(name);
  if (dense) {
    if (dense.shape.length !== 2) throw new PackageError(`${file}: tensor ${name} has shape [${dense.shape}], expected a matrix`);
    if (!FLOAT_DTYPES.includes(dense.dtype)) throw new PackageError(`${dense.file ?? file}: tensor ${name} has dtype ${dense.dtype}, expected ${FLOAT_DTYPES.join(', ')}`);
    return { storage: 'dense', shape: [dense.shape[0], dense.shape[1]] };
  }
  const missing = BITMASK_SUFFIXES.filter((s) => !header.has(`${name}.${s}`));
  if (missing.length === BITMASK_SUFFIXES.length) throw new PackageError(`${file}: tensor ${name} is missing (neither dense nor sparse-bitmask)`);
  if (missing.length > 0) throw new PackageError(`${file}: sparse-bitmask tensor ${name} lacks ${missing.map((s) => `${name}.${s}`).join(', ')}`);
  const shape = readTypedTensors(file, header, [`${name}.shape`]).get(`${name}.shape`)!;
  return { storage: 'sparse-bitmask', shape: [Number(shape[0]), Number(shape[1])] };
}

/**
 * One weight matrix as dense row-major float32, whatever its storage (dense F32/F16/BF16, or sparse-bitmask
 * decompressed), with its dense [rows, cols] shape.
 * @throws PackageError naming the file and tensor when it is missing, incomplete or inconsistent.
 */
export function readDenseMatrix(file: string, header: Map<string, TensorEntry>, name: string): { data: Float32Array; shape: [number, number] } {
  const stored = describeMatrix(file, header, name);
  if (stored.storage === 'dense') return { data: readTensors(file, header, [name]).get(name)!, shape: stored.shape };
  const parts = readTypedTensors(file, header, [`${name}.compressed`, `${name}.bitmask`]);
  try {
    return {
      data: decompressBitmask({ compressed: parts.get(`${name}.compressed`) as Float32Array, bitmask: parts.get(`${name}.bitmask`) as Uint8Array, shape: stored.shape }),
      shape: stored.shape,
    };
  } catch (error) {
    throw new PackageError(`${file}: sparse-bitmask tensor ${name}: ${(error as Error).message}`);
  }
}

/** One expert's dense weights and its FFN width (which structured pruning may have reduced). */
export function readExpertWeights(file: string, header: Map<string, TensorEntry>, layer: number, expert: number, hidden: number): ExpertWeights & { ffn: number } {
  const names = tensorNames.expert(layer, expert);
  const gate = readDenseMatrix(file, header, names.gate);
  const up = readDenseMatrix(file, header, names.up);
  const down = readDenseMatrix(file, header, names.down);
  const ffn = gate.shape[0];
  const want = (n: string, s: [number, number], e: [number, number]) => {
    if (s[0] !== e[0] || s[1] !== e[1]) throw new PackageError(`${file}: tensor ${n} has shape [${s}], expected [${e}]`);
  };
  want(names.gate, gate.shape, [ffn, hidden]);
  want(names.up, up.shape, [ffn, hidden]);
  want(names.down, down.shape, [hidden, ffn]);
  return { gate: gate.data, up: up.data, down: down.data, ffn };
}
