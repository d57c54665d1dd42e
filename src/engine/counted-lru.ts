/**
 * What the prefix and response caches share: an LRU (lru-cache) bounded by the bytes of its entries (and optionally
 * by their number), or none when a bound is 0; hit, miss and eviction counters; a generation that clear() bumps, so
 * the owner can refuse to store what was computed across a clear(); and the CacheStats they report.
 */
import { LRUCache } from 'lru-cache';
import type { CacheStats } from './types.ts';

export interface CountedLruBounds {
  /** Bound on the summed `bytes` of the entries; 0 disables the cache. */
  maxBytes: number;
  /** Bound on the number of entries; 0 disables the cache; absent: no bound. */
  maxEntries?: number;
}

export class CountedLru<V extends { bytes: number }> {
  /** null: the cache is disabled. */
  readonly lru: LRUCache<string, V> | null;
  /** Counted by the owner: what counts as a hit or a miss is its own to say. */
  hits = 0;
  misses = 0;
  private evictions = 0;
  private generationValue = 0;

  constructor(private readonly bounds: CountedLruBounds) {
    const { maxBytes, maxEntries } = bounds;
    this.lru = maxBytes > 0 && (maxEntries === undefined || maxEntries > 0)
      ? new LRUCache<string, V>({
        ...(maxEntries === undefined ? {} : { max: maxEntries }),
        maxSize: maxBytes,
        sizeCalculation: (entry) => entry.bytes,
        dispose: (_entry, _key, reason) => {
          if (reason === 'evict') this.evictions++;
        },
      })
      : null;
  }

  /** Bumped by clear(). */
  get generation(): number {
    return this.generationValue;
  }

  /** Drops every entry (not counted as evictions) and starts a new generation. */
  clear(): void {
    this.generationValue++;
    this.lru?.clear();
  }

  /** maxEntries is present only when the cache has that bound. */
  stats(): CacheStats {
    return {
      enabled: this.lru !== null,
      hits: this.hits,
      misses: this.misses,
      evictions: this.evictions,
      entries: this.lru?.size ?? 0,
      bytes: this.lru?.calculatedSize ?? 0,
      maxBytes: this.bounds.maxBytes,
      ...(this.bounds.maxEntries === undefined ? {} : { maxEntries: this.bounds.maxEntries }),
    };
  }
}
