/** Expert kernels that are onnxruntime sessions over the expert graphs: dense/structured fp32, int8 and int4. */
import ort from 'onnxruntime-node';
import { expertGraph, int4ExpertGraph, int8ExpertGraph, type ExpertWeights } from '../expert-graph.ts';
import { createSession } from './ort-session.ts';
import type { ExpertKernel, KernelName } from './types.ts';

/** MatMulNBits accuracy_level of the int4 kernel: 4 = int8 activations. */
export const INT4_ACCURACY_LEVEL = 4;

export interface OrtOptions {
  threads: number;
  /** onnxruntime execution providers in order of preference (ort-session.ts: CPU fallback when they cannot start). */
  executionProviders: string[];
}

export class OrtKernel implements ExpertKernel {
  private constructor(readonly name: KernelName, private readonly session: ort.InferenceSession, private readonly hidden: number) {}

  static async create(name: 'dense' | 'structured' | 'int8' | 'int4', w: ExpertWeights, hidden: number, ffn: number, options: OrtOptions, graphName = 'expert'): Promise<OrtKernel> {
    const graph = name === 'int8' ? int8ExpertGraph(graphName, hidden, ffn, w)
      // accuracy_level 4 lets onnxruntime quantize the activations to int8 per block: 2–2.5× faster than fp32
      // activations here at batch 1–8, with the same error (the 4-bit weights dominate it).
      : name === 'int4' ? int4ExpertGraph(graphName, hidden, ffn, w, 32, INT4_ACCURACY_LEVEL)
        : expertGraph(graphName, hidden, ffn, w);
    const { session } = await createSession(graph, {
      intraOpNumThreads: options.threads, interOpNumThreads: 1, graphOptimizationLevel: 'all',
      // Batch sizes change every call (1 to thousands of rows): a CPU arena per expert session would grow to the
      // largest batch each expert ever saw and keep it (the gateway's resident set rose for thousands of requests).
      enableCpuMemArena: false, enableMemPattern: false,
      // With several intra-op threads, ORT's pool threads spin after each run: time the other workers need.
      extra: { session: { intra_op: { allow_spinning: '0' } } },
    }, options.executionProviders, 'expert kernels');
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
