/**
 * Per-sequence attention cache. For each layer, keys and values are stored position-major — row t holds
 * position t's heads side by side ([capacity, heads · head_dim]) — so the first `length` rows are one
 * contiguous block: the attention graph reads it without a copy, and a prefix of it is a prefix of the array.
 */
export class KvCache {
  length = 0;
  readonly keys: Float32Array[];
  readonly values: Float32Array[];

  constructor(layers: number, readonly rowSize: number, capacity = 64) {
    this.keys = Array.from({ length: layers }, () => new Float32Array(capacity * rowSize));
    this.values = Array.from({ length: layers }, () => new Float32Array(capacity * rowSize));
  }

  /** The valid rows of a layer, [length, rowSize], as views (no copy). */
  past(layer: number): { keys: Float32Array; values: Float32Array } {
    const end = this.length * this.rowSize;
    return { keys: this.keys[layer].subarray(0, end), values: this.values[layer].subarray(0, end) };
  }

  /** Writes new rows for a layer after the valid ones; `length` advances once every layer has been written. */
  write(layer: number, keys: Float32Array, values: Float32Array): void {
    const at = this.length * this.rowSize;
    const needed = at + keys.length;
    if (needed > this.keys[layer].length) {
      const grown = Math.max(needed, this.keys[layer].length * 2);
      this.keys[layer] = copyInto(new Float32Array(grown), this.keys[layer], at);
      this.values[layer] = copyInto(new Float32Array(grown), this.values[layer], at);
    }
    this.keys[layer].set(keys, at);
    this.values[layer].set(values, at);
  }
}

function copyInto(target: Float32Array, source: Float32Array, count: number): Float32Array {
  target.set(source.subarray(0, count));
  return target;
}
