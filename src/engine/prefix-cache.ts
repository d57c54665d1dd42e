/**
 * Prefix cache: the key/value states of prompt prefixes, kept per block of `blockTokens` prompt tokens in an LRU
 * (lru-cache) bounded by bytes, so requests that start with the same tokens (a shared system prompt, a chat
 * history) skip that part of their prefill.
 *
 * Keys form a hash chain — key₀ = sha256(model id), keyᵢ = sha256(keyᵢ₋₁ ‖ token ids of block i) — so a block's key
 * names the whole prefix up to the block's end, for this model. A block's entry holds only its own rows
 * ([blockTokens, rowSize] per layer, position-major: KvCache's rows() and write() format) and its token ids (checked on lookup), so prompts
 * that share a prefix share its blocks, and memory grows with distinct blocks, not with prefixes × lengths.
 *
 * - lookup (a sequence joins the batch): follow the prompt's blocks while they are cached, at most up to the last
 *   block that ends before the last prompt token (that token always runs, so that there are logits to sample
 *   from), and copy their rows into the sequence's empty KvCache; the scheduler then prefills only the rest.
 * - store (the sequence's prefill has finished): add every whole block of the prompt that is not cached yet.
 * - recency: a chain is refreshed deepest block first, so parents are more recent than their children and the LRU
 *   evicts the tail of a chain before its head; a lookup stops at the first missing block anyway.
 * - clear() (the placement changed): a sequence that joined before it may have computed its rows with the old
 *   experts, so its prompt is not stored afterwards.
 *
 * Outputs do not change: the cached rows are the rows the sequence's own prefill writes (the same graph over the
 * same tokens at the same positions; test/prefix-cache.test.ts checks it), and attention over them is the same math.
 */
import { createHash } from 'node:crypto';
import { CountedLru } from './counted-lru.ts';
import type { KvCache } from './kv-cache.ts';
import type { CacheStats } from './types.ts';

export interface PrefixCacheOptions {
  /** Part of every key, so two models never share entries. */
  modelId: string;
  blockTokens: number;
  /** Bound on the bytes of all blocks (rows and token ids); 0 disables the cache. */
  maxBytes: number;
  layers: number;
}

interface Block {
  tokens: Int32Array;
  keys: Float32Array[];
  values: Float32Array[];
  bytes: number;
}

export class PrefixCache {
  private readonly blocks: CountedLru<Block>;
  private readonly root: Buffer;
  private tokensReused = 0;
  /** The generation (of `blocks`, bumped by clear()) each sequence's cache joined in (see store). */
  private readonly joined = new WeakMap<KvCache, number>();

  constructor(private readonly options: PrefixCacheOptions) {
    this.root = createHash('sha256').update(`switchyard prefix cache\0${options.modelId}`).digest();
    this.blocks = new CountedLru<Block>({ maxBytes: options.maxBytes });
  }

  get blockTokens(): number {
    return this.options.blockTokens;
  }

  /**
   * Fills an empty KvCache with the longest cached prefix of the prompt (whole blocks, always leaving at least the
   * last prompt token to run) and sets its length. Returns the number of prompt tokens it holds now (0: none).
   * Prompts too short to hold a block before their last token are not counted as a hit or a miss.
   */
  lookup(promptIds: readonly number[], cache: KvCache): number {
    this.joined.set(cache, this.blocks.generation);
    const b = this.options.blockTokens;
    const usable = Math.floor((promptIds.length - 1) / b);
    const lru = this.blocks.lru;
    if (!lru || usable === 0 || cache.length !== 0) return 0;
    const found: Block[] = [];
    const keys: string[] = [];
    let parent = this.root;
    for (let i = 0; i < usable; i++) {
      const digest = chain(parent, promptIds, i * b, b);
      const key = digest.toString('base64');
      const block = lru.peek(key);
      if (!block || !sameTokens(block.tokens, promptIds, i * b)) break;
      found.push(block);
      keys.push(key);
      parent = digest;
    }
    if (found.length === 0) {
      this.blocks.misses++;
      return 0;
    }
    this.blocks.hits++;
    for (let i = keys.length - 1; i >= 0; i--) lru.get(keys[i]); // deepest first: parents end up most recent
    for (const block of found) {
      for (let layer = 0; layer < this.options.layers; layer++) cache.write(layer, block.keys[layer], block.values[layer]);
      cache.length += b;
    }
    this.tokensReused += found.length * b;
    return found.length * b;
  }

  /**
   * Caches the prompt's whole blocks that are not cached yet; `cache` must hold (at least) the whole prompt.
   * Nothing is stored when clear() ran since this cache's lookup().
   */
  store(promptIds: readonly number[], cache: KvCache): void {
    const b = this.options.blockTokens;
    const whole = Math.floor(promptIds.length / b);
    const joined = this.joined.get(cache);
    const lru = this.blocks.lru;
    if (!lru || whole === 0 || cache.length < whole * b || (joined !== undefined && joined !== this.blocks.generation)) return;
    const keys: string[] = [];
    let parent = this.root;
    for (let i = 0; i < whole; i++) {
      parent = chain(parent, promptIds, i * b, b);
      keys.push(parent.toString('base64'));
    }
    // Deepest first, so that under pressure the LRU drops a chain's tail before its head.
    for (let i = whole - 1; i >= 0; i--) {
      if (lru.has(keys[i])) lru.get(keys[i]);
      else lru.set(keys[i], this.sliceBlock(promptIds, cache, i));
    }
  }

  /** Drops every block (the model's outputs may have changed: new placement or expert kernels). */
  clear(): void {
    this.blocks.clear();
  }

  stats(): CacheStats {
    return { ...this.blocks.stats(), tokensReused: this.tokensReused };
  }

  private sliceBlock(promptIds: readonly number[], cache: KvCache, index: number): Block {
    const b = this.options.blockTokens;
    const keys: Float32Array[] = [];
    const values: Float32Array[] = [];
    for (let layer = 0; layer < this.options.layers; layer++) {
      const rows = cache.rows(layer, index * b, (index + 1) * b);
      keys.push(rows.keys);
      values.push(rows.values);
    }
    const tokens = Int32Array.from(promptIds.slice(index * b, (index + 1) * b));
    return { tokens, keys, values, bytes: 2 * this.options.layers * b * cache.rowSize * 4 + tokens.byteLength };
  }
}

/** sha256(parent ‖ token ids [from, from + count) as little-endian int32). */
function chain(parent: Buffer, ids: readonly number[], from: number, count: number): Buffer {
  const tokens = Int32Array.from(ids.slice(from, from + count));
  return createHash('sha256').update(parent).update(new Uint8Array(tokens.buffer)).digest();
}

function sameTokens(tokens: Int32Array, ids: readonly number[], from: number): boolean {
  for (let i = 0; i < tokens.length; i++) if (tokens[i] !== ids[from + i]) return false;
  return true;
}
