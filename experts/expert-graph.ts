/** The dense expert FFN as an ONNX graph: y = down(silu(gate(x)) · up(x)), SwiGLU without biases. */
import { GraphBuilder } from '../src/engine/onnx/builder.ts';

export interface ExpertWeights {
  gate: Float32Array; // [ffn, d]
  up: Float32Array; // [ffn, d]
  down: Float32Array; // [d, ffn]
}

export function expertGraph(name: string, hidden: number, ffn: number, w: ExpertWeights): Uint8Array {
  const g = new GraphBuilder(name);
  const x = g.input('x', ['tokens', hidden]);
  const gate = g.linear(x, 'gate_proj', w.gate, ffn, hidden);
  const silu = g.op('Mul', [gate, g.op('Sigmoid', [gate])]);
  const product = g.op('Mul', [silu, g.linear(x, 'up_proj', w.up, ffn, hidden)]);
  g.output(g.linear(product, 'down_proj', w.down, hidden, ffn), 'y', ['tokens', hidden]);
  return g.toBytes();
}
