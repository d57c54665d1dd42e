/**
 * An in-process ExpertRunner: the plain TypeScript SwiGLU reference (experts/kernels/reference.ts) on the main
 * thread, no workers. For tests and tools that need the model without a pool; not fast.
 */
import { gatherRows, type DispatchPlan } from '../../router/index.ts';
import { referenceFfn } from '../../experts/kernels/reference.ts';
import type { LayerOutcome } from '../../experts/pool.ts';
import type { ExpertRunner } from './moe-layer.ts';
import { readTensors } from '../format/safetensors.ts';
import { tensorNames, type ModelPackage } from './package.ts';

export class LocalExpertRunner implements ExpertRunner {
  private constructor(
    private readonly weights: Map<string, Float32Array>,
    private readonly hidden: number,
    private readonly ffn: (layer: number, expert: number) => number,
  ) {}

  /** Dense experts of a package (dropped ones absent; structured-pruned widths from the package's records). */
  static fromPackage(pkg: ModelPackage): LocalExpertRunner {
    const c = pkg.config;
    const names: string[] = [];
    for (let l = 0; l < c.num_hidden_layers; l++) {
      for (let e = 0; e < c.num_experts; e++) {
        if (!pkg.droppedExperts.has(`${l}.${e}`)) names.push(...Object.values(tensorNames.expert(l, e)));
      }
    }
    const weights = readTensors(pkg.weightsFile, pkg.tensors, names);
    const ffn = (l: number, e: number) => weights.get(tensorNames.expert(l, e).gate)!.length / c.hidden_size;
    return new LocalExpertRunner(weights, c.hidden_size, ffn);
  }

  async runLayer(layer: number, x: Float32Array, plan: DispatchPlan): Promise<LayerOutcome> {
    const d = this.hidden;
    const batches = plan.batches.map(({ expert, rows }) => {
      const n = tensorNames.expert(layer, expert);
      const w = { gate: this.weights.get(n.gate)!, up: this.weights.get(n.up)!, down: this.weights.get(n.down)! };
      const output = referenceFfn(w, d, this.ffn(layer, expert), gatherRows(x, rows, d), rows.length);
      return { expert, rows, worker: 0, output };
    });
    return { batches, workers: [] };
  }
}
