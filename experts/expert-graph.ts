/**
 * The expert FFN as an ONNX graph: y = down(silu(gate(x)) · up(x)), SwiGLU without biases. Three variants:
 * fp32 MatMul (`dense`, also the `structured` kernel when pruning left fewer FFN neurons), int8 weights through
 * onnxruntime's com.microsoft `DynamicQuantizeMatMul`, and 4-bit block-quantized weights through `MatMulNBits`
 * (see kernels/quantize.ts for the exact packing).
 */
import { GraphBuilder } from '../src/format/onnx-builder.ts';
import { INT8_ZERO_POINT, quantizeInt4, quantizeInt8 } from './kernels/quantize.ts';

export interface ExpertWeights {
  gate: Float32Array; // [ffn, d]
  up: Float32Array; // [ffn, d]
  down: Float32Array; // [d, ffn]
}

type Linear = (g: GraphBuilder, x: string, name: string, w: Float32Array, outF: number, inF: number) => string;

function swiglu(g: GraphBuilder, hidden: number, ffn: number, w: ExpertWeights, linear: Linear): Uint8Array {
  const x = g.input('x', ['tokens', hidden]);
  const gate = linear(g, x, 'gate_proj', w.gate, ffn, hidden);
  const silu = g.op('Mul', [gate, g.op('Sigmoid', [gate])]);
  const product = g.op('Mul', [silu, linear(g, x, 'up_proj', w.up, ffn, hidden)]);
  g.output(linear(g, product, 'down_proj', w.down, hidden, ffn), 'y', ['tokens', hidden]);
  return g.toBytes();
}

export function expertGraph(name: string, hidden: number, ffn: number, w: ExpertWeights): Uint8Array {
  return swiglu(new GraphBuilder(name), hidden, ffn, w, (g, x, n, weight, outF, inF) => g.linear(x, n, weight, outF, inF));
}

const MS = 'com.microsoft';

/**
 * Weights quantized to 8 bits per output column (uint8 codes around zero point 128: see quantize.ts for why not
 * int8); activations quantized per tensor by onnxruntime at run time.
 */
export function int8ExpertGraph(name: string, hidden: number, ffn: number, w: ExpertWeights): Uint8Array {
  return swiglu(new GraphBuilder(name, { domains: { [MS]: 1 } }), hidden, ffn, w, (g, x, n, weight, outF, inF) => {
    const q = quantizeInt8(weight, outF, inF);
    const b = g.rawTensor(`${n}.q`, q.b, [inF, outF], 'uint8');
    const zeroPoints = g.rawTensor(`${n}.zero_point`, new Uint8Array(outF).fill(INT8_ZERO_POINT), [outF], 'uint8');
    return g.op('DynamicQuantizeMatMul', [x, b, g.weight(`${n}.scale`, q.scales, [outF]), zeroPoints], {}, MS);
  });
}

/**
 * Weights quantized to 4 bits in K-blocks of `blockSize` with per-block scales and zero points. `accuracyLevel` is
 * MatMulNBits' accuracy_level: 0 computes with fp32 activations, 4 lets onnxruntime quantize them to int8 (faster).
 */
export function int4ExpertGraph(name: string, hidden: number, ffn: number, w: ExpertWeights, blockSize = 32, accuracyLevel = 0): Uint8Array {
  return swiglu(new GraphBuilder(name, { domains: { [MS]: 1 } }), hidden, ffn, w, (g, x, n, weight, outF, inF) => {
    const q = quantizeInt4(weight, outF, inF, blockSize);
    const b = g.rawTensor(`${n}.q4`, q.b, [outF, q.kBlocks, blockSize / 2], 'uint8');
    const scales = g.weight(`${n}.scales`, q.scales, [outF, q.kBlocks]);
    const zeroPoints = g.rawTensor(`${n}.zero_points`, q.zeroPoints, [outF, Math.ceil(q.kBlocks / 2)], 'uint8');
    return g.op('MatMulNBits', [x, b, scales, zeroPoints], { K: inF, N: outF, bits: 4, block_size: blockSize, accuracy_level: accuracyLevel }, MS);
  });
}
