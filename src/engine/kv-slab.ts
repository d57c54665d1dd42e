/**
 * A decode group's padded keys and values kept from step to step, so that a steady decode step copies only its new
 * rows instead of gathering every sequence's whole past (O(B·Tk·d) per layer: a third of the batched trunk's time
 * at batch 32, bench/trunk.ts).
 *
 * Per layer, keys and values [slots, heads, stride, head_dim] with a fixed stride (Tk, a multiple of
 * KEY_ALIGNMENT): a sequence keeps its row (slot) while it stays in this slab's group (the model keeps one slab per
 * length bucket, so a sequence moves on when it outgrows the stride); its positions 0..held are its cache's, zeros
 * beyond. A slot is (re)filled from the KvCache whenever
 * it is not known current: new in the group, or the cache was written outside the slab's steps (a prefill chunk, a
 * fused step, a rewind), which its write counter shows. Departed sequences leave holes that newcomers fill; holes are fed like padding
 * (their query rows are discarded). Numbers are unchanged: a row's keys
 * are its own positions followed by zeros, as in a fresh gather (test/batched-attention.test.ts).
 *
 * Costs memory: a second copy of the decode group's keys and values (and its headroom).
 */
import { KEY_ALIGNMENT, type GroupLayout, type StepSequence } from './attention.ts';
import type { KvCache } from './kv-cache.ts';

interface Slot {
  /** Weak: a finished request's cache is not kept alive by the slab row it left behind. */
  cache: WeakRef<KvCache>;
  held: number;
  /** cache.writes when the slot last matched it: any other write (or a rewind and rewrite) makes it stale. */
  writes: number;
}

export class KvSlab {
  private slots: Array<Slot | null> = [];
  keys: Float32Array[];
  values: Float32Array[];

  constructor(private readonly layers: number, private readonly heads: number, private readonly headDim: number, readonly stride: number) {
    if (stride % KEY_ALIGNMENT !== 0) throw new Error(`KvSlab stride ${stride} is not a multiple of ${KEY_ALIGNMENT}`);
    this.keys = Array.from({ length: layers }, () => new Float32Array(0));
    this.values = Array.from({ length: layers }, () => new Float32Array(0));
  }

  /**
   * Places a decode group's members (before their new rows are written): keeps the slots that are current, fills
   * the others from their caches. Returns the group's layout for planGroup.
   */
  prepare(members: StepSequence[]): GroupLayout {
    const needed = Math.max(...members.map((s) => s.cache.length + s.n));
    if (needed > this.stride) throw new Error(`KvSlab: a sequence of ${needed} positions does not fit the stride ${this.stride}`);
    const index = new Map<KvCache, number>();
    const present = new Set(members.map((s) => s.cache));
    this.slots = this.slots.map((slot) => {
      const cache = slot?.cache.deref();
      return cache && present.has(cache) ? slot : null;
    });
    this.slots.forEach((slot, i) => slot && index.set(slot.cache.deref()!, i));
    const slotOf: number[] = [];
    const refill: number[] = [];
    for (const s of members) {
      let i = index.get(s.cache);
      if (i === undefined) {
        i = this.slots.indexOf(null);
        if (i < 0) i = this.slots.push(null) - 1;
      }
      const slot = this.slots[i];
      if (!slot || slot.held !== s.cache.length || slot.writes !== s.cache.writes) {
        this.slots[i] = { cache: new WeakRef(s.cache), held: s.cache.length, writes: s.cache.writes };
        refill.push(i);
      }
      slotOf.push(i);
    }
    while (this.slots.length > 0 && this.slots[this.slots.length - 1] === null) this.slots.pop();
    this.ensureRoom(this.slots.length);
    const block = this.heads * this.stride * this.headDim;
    for (const i of refill) {
      const { held } = this.slots[i]!;
      const cache = this.slots[i]!.cache.deref()!;
      for (let l = 0; l < this.layers; l++) {
        cache.gather(l, 'keys', held, this.keys[l], i * block, this.stride);
        cache.gather(l, 'values', held, this.values[l], i * block, this.stride);
      }
    }
    return { slotOf, slots: this.slots.length, keys: this.stride };
  }

  /** Writes a member's new rows (position-major [n, heads · head_dim]) of one layer after its held positions. */
  append(layer: number, slot: number, keys: Float32Array, values: Float32Array): void {
    const hd = this.headDim;
    const rowSize = this.heads * hd;
    const { held } = this.slots[slot]!;
    const base = slot * this.heads * this.stride * hd;
    for (let t = 0; t < keys.length / rowSize; t++) {
      for (let h = 0; h < this.heads; h++) {
        const at = base + (h * this.stride + held + t) * hd;
        this.keys[layer].set(keys.subarray(t * rowSize + h * hd, t * rowSize + (h + 1) * hd), at);
        this.values[layer].set(values.subarray(t * rowSize + h * hd, t * rowSize + (h + 1) * hd), at);
      }
    }
  }

  /** The step finished (before the caches' lengths advance): the members' slots now hold their new rows. */
  commit(members: StepSequence[], slotOf: number[]): void {
    members.forEach((s, m) => {
      const slot = this.slots[slotOf[m]]!;
      slot.held += s.n;
      slot.writes = s.cache.writes;
    });
  }

  /** Forgets every slot (a step failed part-way: rows may be half written). */
  reset(): void {
    this.slots = [];
  }

  /** The padded tensors' data for `slots` rows. */
  view(layer: number, slots: number): { keys: Float32Array; values: Float32Array } {
    const size = slots * this.heads * this.stride * this.headDim;
    return { keys: this.keys[layer].subarray(0, size), values: this.values[layer].subarray(0, size) };
  }

  private ensureRoom(slots: number): void {
    const size = slots * this.heads * this.stride * this.headDim;
    if (this.keys[0].length >= size && this.keys[0].length > 0) return;
    // Doubling, so that a growing batch reallocates rarely; existing slots keep their contents (same stride).
    const capacity = Math.max(size, this.keys[0].length * 2);
    for (const arrays of [this.keys, this.values]) {
      for (let l = 0; l < this.layers; l++) {
        const grown = new Float32Array(capacity);
        grown.set(arrays[l].subarray(0, Math.min(arrays[l].length, capacity)));
        arrays[l] = grown;
      }
    }
  }
}
