/**
 * Per-sequence attention cache. For each layer, keys and values are stored head-major — [heads, capacity,
 * head_dim], head h's positions one contiguous run — which the attention kernel (cached-attention.ts) reads in
 * place: one query head's dot products walk consecutive floats. Rows go in and out position-major
 * ([n, heads · head_dim], heads side by side), as the graphs produce them and the prefix cache stores them.
 */
export class KvCache {
  length = 0;
  readonly keys: Float32Array[];
  readonly values: Float32Array[];
  /** Positions each layer's arrays have room for. */
  private readonly capacity: number[];
  readonly headDim: number;

  /**
   * rowSize = heads · head_dim; heads = 1 makes the layout plain position-major. `capacity`: positions to make room
   * for at the first write (nothing is allocated before, so a queued request holds no cache memory); beyond it the
   * arrays grow by doubling.
   */
  constructor(layers: number, readonly rowSize: number, private readonly initialCapacity = 64, readonly heads = 1, private readonly pool?: KvArrayPool) {
    this.headDim = rowSize / heads;
    this.capacity = new Array<number>(layers).fill(0);
    this.keys = Array.from({ length: layers }, () => new Float32Array(0));
    this.values = Array.from({ length: layers }, () => new Float32Array(0));
  }

  /** Positions a layer's arrays have room for now (they grow on write): keys[layer] is [heads, capacity, head_dim]. */
  capacityOf(layer: number): number {
    return this.capacity[layer];
  }

  /** The valid rows of a layer, position-major [length, rowSize] (copies). */
  past(layer: number): { keys: Float32Array; values: Float32Array } {
    return this.rows(layer, 0, this.length);
  }

  /** Rows [from, to) of a layer, position-major [to − from, rowSize] (copies). */
  rows(layer: number, from: number, to: number): { keys: Float32Array; values: Float32Array } {
    return { keys: this.read(this.keys[layer], layer, from, to), values: this.read(this.values[layer], layer, from, to) };
  }

  /**
   * Writes position-major rows [n, rowSize] for a layer after the valid ones; `length` advances once every layer
   * has been written.
   */
  write(layer: number, keys: Float32Array, values: Float32Array): void {
    const n = keys.length / this.rowSize;
    this.reserve(layer, this.length + n);
    this.put(this.keys[layer], layer, keys, n);
    this.put(this.values[layer], layer, values, n);
  }

  /** Grows a layer's arrays (by doubling, at least to the initial capacity) to hold `positions`; a writer fills them. */
  reserve(layer: number, positions: number): void {
    if (positions > this.capacity[layer]) this.grow(layer, Math.max(positions, this.capacity[layer] * 2, this.initialCapacity));
  }

  /** A layer's first `count` positions, head-major [heads, count, head_dim] (copies): the per-sequence path's past. */
  headMajor(layer: number, which: 'keys' | 'values', count: number): Float32Array {
    const source = which === 'keys' ? this.keys[layer] : this.values[layer];
    const hd = this.headDim;
    const cap = this.capacity[layer];
    const out = new Float32Array(this.heads * count * hd);
    for (let h = 0; h < this.heads; h++) out.set(source.subarray(h * cap * hd, (h * cap + count) * hd), h * count * hd);
    return out;
  }

  private put(target: Float32Array, layer: number, rows: Float32Array, n: number): void {
    const hd = this.headDim;
    const cap = this.capacity[layer];
    if (this.heads === 1) {
      target.set(rows, this.length * hd);
      return;
    }
    // Element loops, not subarray + set: a decode step writes one row per sequence and layer, and a subarray object
    // per head and row was most of the cost.
    for (let t = 0; t < n; t++) {
      for (let h = 0; h < this.heads; h++) {
        const from = t * this.rowSize + h * hd;
        const to = (h * cap + this.length + t) * hd;
        for (let i = 0; i < hd; i++) target[to + i] = rows[from + i];
      }
    }
  }

  private read(source: Float32Array, layer: number, from: number, to: number): Float32Array {
    const hd = this.headDim;
    const cap = this.capacity[layer];
    const out = new Float32Array((to - from) * this.rowSize);
    if (this.heads === 1) {
      out.set(source.subarray(from * hd, to * hd));
      return out;
    }
    for (let t = from; t < to; t++) {
      for (let h = 0; h < this.heads; h++) {
        const at = (h * cap + t) * hd;
        const into = (t - from) * this.rowSize + h * hd;
        for (let i = 0; i < hd; i++) out[into + i] = source[at + i];
      }
    }
    return out;
  }

  /** Re-lays a layer out with room for `capacity` positions, keeping its first `length` rows. */
  private grow(layer: number, capacity: number): void {
    const hd = this.headDim;
    const old = this.capacity[layer];
    for (const arrays of [this.keys, this.values]) {
      // From the pool the array holds an earlier sequence's rows: only positions below `length` are ever read, and
      // those are copied here or written before they are read.
      const grown = this.pool ? this.pool.take(capacity * this.rowSize) : new Float32Array(capacity * this.rowSize);
      for (let h = 0; h < this.heads; h++) grown.set(arrays[layer].subarray(h * old * hd, (h * old + this.length) * hd), h * capacity * hd);
      this.pool?.give(arrays[layer]);
      arrays[layer] = grown;
    }
    this.capacity[layer] = capacity;
  }

  /**
   * Hands the arrays back to the pool (when the cache has one) once the sequence is done and no step uses them; the
   * cache is empty of room afterwards (its length stays, for whoever still reads it).
   */
  release(): void {
    for (const arrays of [this.keys, this.values]) {
      for (let layer = 0; layer < arrays.length; layer++) {
        this.pool?.give(arrays[layer]);
        arrays[layer] = new Float32Array(0);
      }
    }
    this.capacity.fill(0);
  }
}

/**
 * KV arrays of finished sequences, kept by length for the next ones: a busy gateway then stops allocating a new
 * cache per request (0.8 MB for the bundled model at 100 positions) and V8 stops running a full mark-compact every
 * few hundred milliseconds to reclaim them (32 clients: 21 in 4 s, 5–15 ms each on the model's thread, with
 * concurrent marking on the same cores). Holds at most `maxBytes` of free arrays; beyond that they are dropped.
 */
export class KvArrayPool {
  private readonly free = new Map<number, Float32Array[]>();
  private bytes = 0;

  constructor(readonly maxBytes: number) {}

  /** A free array of exactly `length` floats (contents undefined), or a new one. */
  take(length: number): Float32Array {
    const array = this.free.get(length)?.pop();
    if (!array) return new Float32Array(length);
    this.bytes -= array.byteLength;
    return array;
  }

  /** Keeps `array` for a later take, room permitting. */
  give(array: Float32Array): void {
    if (array.length === 0 || this.bytes + array.byteLength > this.maxBytes) return;
    const list = this.free.get(array.length);
    if (list) list.push(array);
    else this.free.set(array.length, [array]);
    this.bytes += array.byteLength;
  }
}
