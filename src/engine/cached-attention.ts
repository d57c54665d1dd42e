/**
 * The attention core of a step, softmax(q·Kᵀ·scale)·V, for every new token of every sequence, read straight from
 * the sequences' KV caches (no padded copy, no mask): query token i of a sequence with `past` cached positions
 * attends to positions 0..past + i (causal), key/value head h / (heads / kvHeads) for query head h (grouped-query
 * attention).
 *
 * Two implementations of the same arithmetic: the native kernel (experts/kernels/native/attention.cc, AVX2 where
 * the CPU has it) and `attendReference` below, plain TypeScript, which the tests check the kernel against and which
 * runs when the addon is not built. Either way a token's numbers depend only on its own sequence (never on which
 * other sequences share the step, nor on how its prompt was chunked).
 */
import { loadKernelAddon, type NativeStatus } from '../../experts/kernels/native-addon.ts';
import type { KvCache } from './kv-cache.ts';

/**
 * One sequence of the step: its cache, cached positions before, new tokens. The new rows are at past..past+n of the
 * cache, written before the call or by the kernel from its `rows` argument.
 */
export interface CachedSequence {
  cache: KvCache;
  past: number;
  n: number;
}

export interface AttentionShape {
  heads: number;
  kvHeads: number;
  headDim: number;
  /** Multiplies q·k before the softmax: 1/√head_dim, or the model's attention_multiplier. */
  scale: number;
}

/**
 * Computes out [N, heads·head_dim] from q [N, heads·head_dim] for one layer, N = Σ n over `sequences` (their tokens
 * packed back to back in this order). `rows`: the step's new keys and values [N, kvHeads·head_dim], written into each
 * cache at past.. first (the caches grow as needed); absent: they are there already. Throws a RangeError on
 * inconsistent shapes.
 */
export type AttentionKernel = (layer: number, q: Float32Array, out: Float32Array, sequences: CachedSequence[], rows?: NewRows) => void;

/** A step's new key and value rows, position-major [N, kvHeads·head_dim]. */
export interface NewRows {
  keys: Float32Array;
  values: Float32Array;
}

interface Addon {
  attend(q: Float32Array, out: Float32Array, keys: Float32Array[], values: Float32Array[], capacities: Uint32Array,
    pasts: Uint32Array, counts: Uint32Array, heads: number, kvHeads: number, headDim: number, scale: number, team?: object | null,
    newK?: Float32Array, newV?: Float32Array): void;
  info(): { simd: string };
}

export type NativeAttention = NativeStatus<Addon>;

/** Loads the native kernel once per thread; never throws (SWITCHYARD_NATIVE=off disables it, as for the sparse kernel). */
export function nativeAttention(): NativeAttention {
  return loadKernelAddon<Addon>('model.node', 'native attention kernel', 'attention');
}

/**
 * The native kernel for this shape, or null when the addon is unavailable. `team`: the compute team
 * (InProcessExperts.team) the query rows are spread over (each row computed as on one thread); null: the caller's.
 */
export function nativeAttentionKernel(shape: AttentionShape, team: object | null = null, status: NativeAttention = nativeAttention()): AttentionKernel | null {
  if (!status.available) return null;
  const { addon } = status;
  return (layer, q, out, sequences, rows) => {
    const count = sequences.length;
    const capacities = new Uint32Array(count);
    const pasts = new Uint32Array(count);
    const counts = new Uint32Array(count);
    const keys: Float32Array[] = new Array(count);
    const values: Float32Array[] = new Array(count);
    sequences.forEach((s, i) => {
      if (rows) s.cache.reserve(layer, s.past + s.n);
      capacities[i] = s.cache.capacityOf(layer);
      pasts[i] = s.past;
      counts[i] = s.n;
      keys[i] = s.cache.keys[layer];
      values[i] = s.cache.values[layer];
    });
    if (rows) addon.attend(q, out, keys, values, capacities, pasts, counts, shape.heads, shape.kvHeads, shape.headDim, shape.scale, team, rows.keys, rows.values);
    else addon.attend(q, out, keys, values, capacities, pasts, counts, shape.heads, shape.kvHeads, shape.headDim, shape.scale, team);
  };
}

/** Each sequence's new rows into its cache at past.. (KvCache.write appends after cache.length, which is `past`). */
function writeRows(layer: number, sequences: CachedSequence[], rows: NewRows): void {
  let at = 0;
  for (const s of sequences) {
    const width = s.cache.rowSize;
    s.cache.write(layer, rows.keys.subarray(at * width, (at + s.n) * width), rows.values.subarray(at * width, (at + s.n) * width));
    at += s.n;
  }
}

/** The same computation in plain TypeScript (float64 arithmetic): the tests' reference and the fallback kernel. */
export function attendReference(shape: AttentionShape): AttentionKernel {
  const { heads, kvHeads, headDim, scale } = shape;
  const group = heads / kvHeads;
  const rowSize = heads * headDim;
  return (layer, q, out, sequences, rows) => {
    const tokens = sequences.reduce((n, s) => n + s.n, 0);
    if (rows) writeRows(layer, sequences, rows);
    if (q.length !== tokens * rowSize || out.length !== q.length) throw new RangeError(`attend: q and out must hold ${tokens} × ${rowSize} floats`);
    let row = 0;
    for (const s of sequences) {
      const capacity = s.cache.capacityOf(layer);
      if (s.past + s.n > capacity) throw new RangeError('attend: past + count exceeds the cache capacity');
      const keys = s.cache.keys[layer];
      const values = s.cache.values[layer];
      for (let i = 0; i < s.n; i++, row++) {
        const length = s.past + i + 1;
        const scores = new Float64Array(length);
        for (let h = 0; h < heads; h++) {
          const base = Math.floor(h / group) * capacity * headDim;
          const qAt = row * rowSize + h * headDim;
          let max = -Infinity;
          for (let t = 0; t < length; t++) {
            let dot = 0;
            for (let j = 0; j < headDim; j++) dot += q[qAt + j] * keys[base + t * headDim + j];
            scores[t] = dot * scale;
            if (scores[t] > max) max = scores[t];
          }
          let sum = 0;
          for (let t = 0; t < length; t++) sum += (scores[t] = Math.exp(scores[t] - max));
          for (let j = 0; j < headDim; j++) {
            let acc = 0;
            for (let t = 0; t < length; t++) acc += scores[t] * values[base + t * headDim + j];
            out[qAt + j] = acc / sum;
          }
        }
      }
    }
  };
}
