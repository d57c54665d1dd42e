/** Per-sequence attention cache: for each layer, keys and values laid out [heads, length, head_dim]. */
export class KvCache {
  length = 0;
  readonly keys: Float32Array[];
  readonly values: Float32Array[];

  constructor(layers: number) {
    this.keys = Array.from({ length: layers }, () => new Float32Array(0));
    this.values = Array.from({ length: layers }, () => new Float32Array(0));
  }

  get bytes(): number {
    return this.keys.reduce((n, k, i) => n + k.byteLength + this.values[i].byteLength, 0);
  }
}
