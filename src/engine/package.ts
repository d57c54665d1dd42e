/**
 * A model package (see shared DESIGN.md): config.json, model.safetensors, tokenizer.json.
 * Everything is validated at start-up, so a garbled package fails with a message naming the file, the tensor and
 * the expected versus found shape, rather than a wrong answer later.
 */
import { basename } from 'node:path';
import { FLOAT_DTYPES, PackageError, readTypedTensors, type TensorEntry } from './safetensors.ts';
import { BITMASK_SUFFIXES } from '../../experts/pruning/bitmask.ts';
import { type ModelConfig } from './package-format.ts';
import { assertModelPackage } from './package-check.ts';

export { PackageError };
export { PackageCheckError, checkModelPackage, type PackageProblem } from './package-check.ts';
export { expectedTensors, modelConfigSchema, tensorNames, type ModelConfig } from './package-format.ts';

export interface ModelPackage {
  dir: string;
  id: string;
  config: ModelConfig;
  weightsFile: string;
  tensors: Map<string, TensorEntry>;
  tokenizerJson: object;
  tokenizerConfig: object;
  /** Experts removed by pruning ("layer.expert"): they have no weights and the router never chooses them. */
  droppedExperts: Set<string>;
}

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
 * Loads a model package after checking all of it (package-check.ts): config.json, token ids, tokenizer, the
 * safetensors header and every tensor's dtype, shape and byte range. Reads no dense weights.
 * @throws PackageCheckError (a PackageError) listing every problem found, each naming file, tensor or field and fix.
 */
export function loadModelPackage(dir: string): ModelPackage {
  const p = assertModelPackage(dir);
  return {
    dir: p.root, id: basename(p.root), config: p.config, weightsFile: p.weightsFile, tensors: p.tensors,
    tokenizerJson: p.tokenizerJson, tokenizerConfig: p.tokenizerConfig, droppedExperts: p.droppedExperts,
  };
}
