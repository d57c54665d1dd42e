/**
 * A model package (see shared DESIGN.md): config.json, model.safetensors, tokenizer.json.
 * Everything is validated at start-up, so a garbled package fails with a message naming the file, the tensor and
 * the expected versus found shape, rather than a wrong answer later.
 */
import { basename } from 'node:path';
import { PackageError, type TensorEntry } from '../format/safetensors.ts';
import { type ModelConfig } from '../format/package-format.ts';
import { assertModelPackage } from './package-check.ts';

export { PackageError };
export { PackageCheckError, checkModelPackage, type PackageProblem } from './package-check.ts';
export { expectedTensors, modelConfigSchema, tensorNames, type ModelConfig } from '../format/package-format.ts';

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
