/**
 * How many parameters a package holds, counted as stored (GET /info `parameters`). Pruned packages store experts three
 * ways — dense (narrower after structured pruning), compressed-tensors sparse-bitmask, or not at all (dropped) — so
 * sizes are read from what each expert keeps, never from config.json's dense shapes.
 */
import type { TensorEntry } from '../format/safetensors.ts';
import { tensorNames, type ModelConfig } from '../format/package-format.ts';
import { BITMASK_SUFFIXES } from '../../experts/pruning/bitmask.ts';

export interface ParameterCount {
  /** Every weight the package stores: the trunk's tensors plus each expert's kept weights. */
  total: number;
  /** The trunk (embeddings, attention, norms, routers, shared experts, LM head): what every token runs. */
  trunk: number;
  /** experts[layer][expert]: the weights that expert keeps (0 for one removed by pruning). */
  experts: number[][];
  /**
   * The most one token can run: the trunk plus, per layer, the num_experts_per_tok largest experts (all experts
   * equal in a dense package, so this is the usual trunk + k · expert size).
   */
  activePerToken: number;
}

const elements = (t: TensorEntry | undefined): number => (t ? t.shape.reduce((a, b) => a * b, 1) : 0);

/**
 * Counts a package's parameters from its safetensors header (no weights are read). A dense expert matrix counts
 * all its elements; a sparse-bitmask one counts its stored values (the `.compressed` part; the bitmask, shape and
 * row offsets are bookkeeping, not parameters); a dropped expert counts nothing.
 */
export function countParameters(c: ModelConfig, tensors: ReadonlyMap<string, TensorEntry>): ParameterCount {
  const expertParts = new Set<string>();
  const experts = Array.from({ length: c.num_hidden_layers }, (_, l) => Array.from({ length: c.num_experts }, (_, e) => {
    let held = 0;
    for (const name of Object.values(tensorNames.expert(l, e))) {
      for (const part of [name, ...BITMASK_SUFFIXES.map((s) => `${name}.${s}`)]) if (tensors.has(part)) expertParts.add(part);
      held += tensors.has(name) ? elements(tensors.get(name)) : elements(tensors.get(`${name}.compressed`));
    }
    return held;
  }));
  let trunk = 0;
  for (const [name, t] of tensors) if (!expertParts.has(name)) trunk += elements(t);
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  const total = trunk + sum(experts.map(sum));
  const activePerToken = trunk + sum(experts.map((row) => sum([...row].sort((a, b) => b - a).slice(0, c.num_experts_per_tok))));
  return { total, trunk, experts, activePerToken };
}
