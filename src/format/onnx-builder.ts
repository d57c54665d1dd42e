/**
 * A small builder for ONNX graphs (IR 8, opset 17), serialised with onnx-proto and loaded by onnxruntime
 * straight from memory. Weights become raw-data initializers; dimension names make axes dynamic. Operators of
 * other domains (e.g. onnxruntime's `com.microsoft` contrib ops) need that domain's opset in `domains`.
 */
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;
const FLOAT = onnx.TensorProto.DataType.FLOAT;
const INT64 = onnx.TensorProto.DataType.INT64;
const RAW_TYPES = { float: FLOAT, int64: INT64, uint8: onnx.TensorProto.DataType.UINT8, int8: onnx.TensorProto.DataType.INT8 } as const;

export interface GraphBuilderOptions {
  /** Opset versions of operator domains besides the default one, e.g. `{ 'com.microsoft': 1 }`. */
  domains?: Record<string, number>;
}

type Dim = number | string;
type Attribute = number | number[] | { float: number };

export class GraphBuilder {
  private readonly nodes: InstanceType<typeof onnx.NodeProto>[] = [];
  private readonly initializers: InstanceType<typeof onnx.TensorProto>[] = [];
  private readonly inputs: InstanceType<typeof onnx.ValueInfoProto>[] = [];
  private readonly outputs: InstanceType<typeof onnx.ValueInfoProto>[] = [];
  private counter = 0;

  constructor(private readonly name: string, private readonly options: GraphBuilderOptions = {}) {}

  input(name: string, dims: Dim[], type: 'float' | 'int64' = 'float'): string {
    this.inputs.push(valueInfo(name, dims, type === 'float' ? FLOAT : INT64));
    return name;
  }

  /** Makes `value` a graph output called `name` (renaming it, so no copy is made). */
  output(value: string, name: string, dims: Dim[]): void {
    for (const node of this.nodes) {
      node.output = node.output.map((o) => (o === value ? name : o));
      node.input = node.input.map((i) => (i === value ? name : i));
    }
    this.outputs.push(valueInfo(name, dims, FLOAT));
  }

  weight(name: string, data: Float32Array, dims: number[]): string {
    this.initializers.push(onnx.TensorProto.create({
      name, dims, dataType: FLOAT,
      rawData: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    }));
    return name;
  }

  /** An initializer of raw bytes of another element type (quantized weights: uint8, int8). */
  rawTensor(name: string, data: Uint8Array | Int8Array, dims: number[], type: keyof typeof RAW_TYPES): string {
    this.initializers.push(onnx.TensorProto.create({
      name, dims, dataType: RAW_TYPES[type],
      rawData: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    }));
    return name;
  }

  int64s(values: number[]): string {
    const name = `const_${this.counter++}`;
    const data = new BigInt64Array(values.map(BigInt));
    this.initializers.push(onnx.TensorProto.create({
      name, dims: [values.length], dataType: INT64, rawData: new Uint8Array(data.buffer),
    }));
    return name;
  }

  scalar(value: number): string {
    return this.weight(`const_${this.counter++}`, Float32Array.of(value), []);
  }

  /** Adds a node; `domain` names a non-default operator domain (declare its opset in the constructor options). */
  op(type: string, inputs: string[], attributes: Record<string, Attribute> = {}, domain?: string): string {
    if (domain !== undefined && this.options.domains?.[domain] === undefined) {
      throw new Error(`operator ${domain}.${type}: declare the ${domain} opset in GraphBuilder's domains option`);
    }
    const output = `${type.toLowerCase()}_${this.counter++}`;
    const attribute = Object.entries(attributes).map(([name, v]) => {
      if (Array.isArray(v)) return onnx.AttributeProto.create({ name, type: onnx.AttributeProto.AttributeType.INTS, ints: v });
      if (typeof v === 'object') return onnx.AttributeProto.create({ name, type: onnx.AttributeProto.AttributeType.FLOAT, f: v.float });
      return onnx.AttributeProto.create({ name, type: onnx.AttributeProto.AttributeType.INT, i: v });
    });
    this.nodes.push(onnx.NodeProto.create({ opType: type, input: inputs, output: [output], name: output, attribute, ...(domain ? { domain } : {}) }));
    return output;
  }

  // Composite operations shared by the trunk and the experts.

  /** y = x / sqrt(mean(x², last axis) + eps) · weight */
  rmsNorm(x: string, weight: string, eps: number): string {
    const meanSquare = this.op('ReduceMean', [this.op('Pow', [x, this.scalar(2)])], { axes: [-1], keepdims: 1 });
    const rms = this.op('Sqrt', [this.op('Add', [meanSquare, this.scalar(eps)])]);
    return this.op('Mul', [this.op('Div', [x, rms]), weight]);
  }

  /** x · Wᵀ for a torch Linear weight W of shape [out, in] (stored transposed, so the kernel reads rows). */
  linear(x: string, name: string, weight: Float32Array, outFeatures: number, inFeatures: number): string {
    return this.op('MatMul', [x, this.weight(name, transpose(weight, outFeatures, inFeatures), [inFeatures, outFeatures])]);
  }

  toBytes(): Uint8Array {
    const model = onnx.ModelProto.create({
      irVersion: 8,
      producerName: 'switchyard',
      opsetImport: [{ domain: '', version: 17 }, ...Object.entries(this.options.domains ?? {}).map(([domain, version]) => ({ domain, version }))],
      graph: onnx.GraphProto.create({
        name: this.name, node: this.nodes, initializer: this.initializers, input: this.inputs, output: this.outputs,
      }),
    });
    return onnx.ModelProto.encode(model).finish();
  }
}

function valueInfo(name: string, dims: Dim[], elemType: number) {
  return onnx.ValueInfoProto.create({
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  });
}

export function transpose(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c];
  }
  return out;
}
