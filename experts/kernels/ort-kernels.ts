/** Expert kernels that are onnxruntime sessions over the expert graphs: dense/structured fp32, int8 and int4. */
import ort from 'onnxruntime-node';
import { expertGraph, int4ExpertGraph, int8ExpertGraph, type ExpertWeights } from '../expert-graph.ts';
import type { ExpertKernel, KernelName } from './types.ts';

export interface OrtOptions {
  threads: number;
  executionProviders: string[];
}

export class OrtKernel implements ExpertKernel {
  private constructor(readonly name: KernelName, private readonly session: ort.InferenceSession, private readonly hidden: number) {}

  static async create(name: 'dense' | 'structured' | 'int8' | 'int4', w: ExpertWeights, hidden: number, ffn: number, options: OrtOptions, graphName = 'expert'): Promise<OrtKernel> {
    const graph = name === 'int8' ? int8ExpertGraph(graphName, hidden, ffn, w)
      : name === 'int4' ? int4ExpertGraph(graphName, hidden, ffn, w)
        : expertGraph(graphName, hidden, ffn, w);
    const session = await ort.InferenceSession.create(graph, {
      intraOpNumThreads: options.threads, interOpNumThreads: 1, executionProviders: options.executionProviders,
      graphOptimizationLevel: 'all',
    });
    return new OrtKernel(name, session, hidden);
  }

  async run(x: Float32Array, tokens: number, out: Float32Array): Promise<void> {
    const input = x.length === tokens * this.hidden ? x : x.subarray(0, tokens * this.hidden);
    const { y } = await this.session.run({ x: new ort.Tensor('float32', input, [tokens, this.hidden]) });
    out.set(y.data as Float32Array);
  }

  release(): Promise<void> {
    return this.session.release();
  }
}
