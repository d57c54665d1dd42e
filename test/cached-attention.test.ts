/**
 * The attention core over KV caches (src/engine/cached-attention.ts): the native kernel against its plain TypeScript
 * twin, and that twin against softmax(q·Kᵀ·scale)·V written out from the definition over position-major rows;
 * grouped-query heads, prefill chunks after a past, capacities larger than the rows held; clear errors on bad shapes.
 */
import { describe, expect, it } from 'vitest';
import { attendReference, nativeAttention, nativeAttentionKernel, type AttentionShape, type CachedSequence } from '../src/engine/cached-attention.ts';
import { KvCache } from '../src/engine/kv-cache.ts';
import { nativeDense } from '../experts/kernels/dense-native.ts';

function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
}

/** Caches of the given (past, n) shapes with every row past + n written, and the step's packed queries. */
function step(shape: AttentionShape, sizes: Array<[number, number]>, seed: number) {
  const next = random(seed);
  const kvDim = shape.kvHeads * shape.headDim;
  const sequences: CachedSequence[] = sizes.map(([past, n]) => {
    const cache = new KvCache(2, kvDim, 4, shape.kvHeads); // capacity 4 to start: writes grow it past what is held
    for (const layer of [0, 1]) {
      const rows = () => Float32Array.from({ length: (past + n) * kvDim }, next);
      cache.write(layer, rows(), rows());
    }
    return { cache, past, n };
  });
  const tokens = sizes.reduce((a, [, n]) => a + n, 0);
  const q = Float32Array.from({ length: tokens * shape.heads * shape.headDim }, next);
  return { sequences, q, out: () => new Float32Array(q.length) };
}

/** out for token row `row` of sequence s from the definition, over the cache's position-major rows. */
function definition(shape: AttentionShape, s: CachedSequence, layer: number, q: Float32Array, row: number, i: number): number[] {
  const { keys, values } = s.cache.rows(layer, 0, s.past + i + 1);
  const kvDim = shape.kvHeads * shape.headDim;
  const out: number[] = [];
  for (let h = 0; h < shape.heads; h++) {
    const g = Math.floor(h / (shape.heads / shape.kvHeads));
    const scores = Array.from({ length: s.past + i + 1 }, (_, t) => {
      let dot = 0;
      for (let j = 0; j < shape.headDim; j++) dot += q[(row * shape.heads + h) * shape.headDim + j] * keys[t * kvDim + g * shape.headDim + j];
      return dot * shape.scale;
    });
    const max = Math.max(...scores);
    const weights = scores.map((x) => Math.exp(x - max));
    const total = weights.reduce((a, b) => a + b, 0);
    for (let j = 0; j < shape.headDim; j++) out.push(weights.reduce((a, w, t) => a + (w / total) * values[t * kvDim + g * shape.headDim + j], 0));
  }
  return out;
}

const SIZES: Array<[number, number]> = [[0, 1], [5, 1], [33, 1], [0, 9], [12, 5], [70, 3], [1, 1]];
const SHAPES: AttentionShape[] = [
  { heads: 4, kvHeads: 4, headDim: 16, scale: 0.25 },
  { heads: 8, kvHeads: 2, headDim: 8, scale: 0.35 }, // grouped-query: 4 query heads per key/value head
  { heads: 2, kvHeads: 1, headDim: 64, scale: 0.125 }, // one 64-float block of the native weighted sum
  { heads: 3, kvHeads: 3, headDim: 6, scale: 0.4 }, // head_dim not a multiple of 8: the portable loops
  { heads: 2, kvHeads: 2, headDim: 72, scale: 0.1 }, // a 64-float block and an 8-float tail
];

describe('attendReference', () => {
  it('computes softmax(q·Kᵀ·scale)·V per head over positions 0..past + i', () => {
    for (const shape of SHAPES) {
      const { sequences, q, out } = step(shape, SIZES, 3);
      const got = out();
      attendReference(shape)(1, q, got, sequences);
      let row = 0;
      for (const s of sequences) {
        for (let i = 0; i < s.n; i++, row++) {
          const want = definition(shape, s, 1, q, row, i);
          const width = shape.heads * shape.headDim;
          want.forEach((w, j) => expect(Math.abs(got[row * width + j] - w)).toBeLessThan(1e-6));
        }
      }
    }
  });

  it('rejects queries of the wrong size and steps beyond a cache', () => {
    const shape = SHAPES[0];
    const { sequences, q } = step(shape, [[3, 2]], 1);
    expect(() => attendReference(shape)(0, q.subarray(1), new Float32Array(q.length - 1), sequences)).toThrow(RangeError);
    const beyond = [{ ...sequences[0], past: sequences[0].cache.capacityOf(0) }];
    expect(() => attendReference(shape)(0, q, new Float32Array(q.length), beyond)).toThrow(/capacity/);
  });
});

const native = nativeAttention();

describe.runIf(native.available)('native attention kernel', () => {
  it('equals the TypeScript twin on every shape (relative error below 1e-5)', () => {
    for (const shape of SHAPES) {
      const { sequences, q, out } = step(shape, SIZES, 7);
      const a = out();
      const b = out();
      nativeAttentionKernel(shape)!(1, q, a, sequences);
      attendReference(shape)(1, q, b, sequences);
      const scale = Math.max(...Array.from(b, Math.abs));
      let worst = 0;
      for (let j = 0; j < a.length; j++) worst = Math.max(worst, Math.abs(a[j] - b[j]));
      expect(worst / scale).toBeLessThan(1e-5);
    }
  });

  it('gives a token the same bits whatever else is in the call', () => {
    const shape = SHAPES[1];
    const { sequences, q, out } = step(shape, SIZES, 9);
    const all = out();
    nativeAttentionKernel(shape)!(0, q, all, sequences);
    const width = shape.heads * shape.headDim;
    let row = 0;
    sequences.forEach((s) => {
      const alone = new Float32Array(s.n * width);
      nativeAttentionKernel(shape)!(0, q.slice(row * width, (row + s.n) * width), alone, [s]);
      expect(Array.from(alone)).toEqual(Array.from(all.subarray(row * width, (row + s.n) * width)));
      row += s.n;
    });
  });

  it('writes the step\'s new rows into the caches itself, and then gives the bits of a call after the writes; on a team too', () => {
    const dense = nativeDense();
    const team = dense.available ? dense.addon.teamHandle() : null;
    for (const shape of SHAPES) {
      const kvDim = shape.kvHeads * shape.headDim;
      const written = step(shape, SIZES, 11); // every row past + n already in the caches
      const want = written.out();
      nativeAttentionKernel(shape)!(1, written.q, want, written.sequences);
      for (const withTeam of [null, team]) {
        // The same caches holding only the past rows; the new ones come as the call's rows argument.
        let row = 0;
        const newKeys = new Float32Array(SIZES.reduce((a, [, n]) => a + n, 0) * kvDim);
        const newValues = new Float32Array(newKeys.length);
        const sequences = written.sequences.map((s) => {
          const cache = new KvCache(2, kvDim, 2, shape.kvHeads);
          const { keys, values } = s.cache.rows(1, 0, s.past + s.n);
          if (s.past > 0) cache.write(1, keys.subarray(0, s.past * kvDim), values.subarray(0, s.past * kvDim));
          cache.length = s.past; // as after the step that wrote them (a growth keeps the first `length` rows)
          newKeys.set(keys.subarray(s.past * kvDim), row * kvDim);
          newValues.set(values.subarray(s.past * kvDim), row * kvDim);
          row += s.n;
          return { cache, past: s.past, n: s.n };
        });
        const got = written.out();
        nativeAttentionKernel(shape, withTeam)!(1, written.q, got, sequences, { keys: newKeys, values: newValues });
        expect(Array.from(got), `${JSON.stringify(shape)}${withTeam ? ' on the team' : ''}`).toEqual(Array.from(want));
        sequences.forEach((s, i) => {
          const rows = (c: KvCache) => Array.from(c.rows(1, 0, s.past + s.n).keys);
          s.cache.length = s.past + s.n;
          expect(rows(s.cache)).toEqual(rows(written.sequences[i].cache));
        });
        // The TypeScript twin does the same through KvCache.write.
        const twin = sequences.map((s) => ({ ...s, cache: new KvCache(2, kvDim, 2, shape.kvHeads) }));
        twin.forEach((t, i) => {
          const { keys, values } = written.sequences[i].cache.rows(1, 0, t.past);
          if (t.past > 0) t.cache.write(1, keys, values);
          t.cache.length = t.past;
        });
        const viaTwin = written.out();
        attendReference(shape)(1, written.q, viaTwin, twin, { keys: newKeys, values: newValues });
        const reference = written.out();
        attendReference(shape)(1, written.q, reference, written.sequences);
        expect(Array.from(viaTwin)).toEqual(Array.from(reference));
      }
    }
  });

  it('rejects inconsistent shapes with a RangeError that names the problem', () => {
    const shape = SHAPES[0];
    const { sequences, q } = step(shape, [[3, 2], [4, 1]], 1);
    const kernel = nativeAttentionKernel(shape)!;
    expect(() => kernel(0, q.subarray(4), new Float32Array(q.length - 4), sequences)).toThrow(/Σ counts/);
    const beyond = [sequences[0], { ...sequences[1], past: sequences[1].cache.capacityOf(0) }];
    expect(() => kernel(0, q, new Float32Array(q.length), beyond)).toThrow(/sequence 1: past \+ count exceeds its capacity/);
    const badShape = nativeAttentionKernel({ ...shape, heads: 3 })!;
    expect(() => badShape(0, q, new Float32Array(q.length), sequences)).toThrow(/multiple of kvHeads/);
    expect(() => kernel(0, q, new Float32Array(q.length), sequences, { keys: new Float32Array(5), values: new Float32Array(5) })).toThrow(/newK and newV/);
  });
});
