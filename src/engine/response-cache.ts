/**
 * Response cache: whole results of deterministic requests — greedy, or sampled with an explicit seed — kept in an
 * LRU (lru-cache) bounded by entries and by bytes, so an identical request is answered without running the model
 * (a streaming one gets the stored tokens replayed as token events).
 *
 * The key is a hash of the model id and the whole engine request in a canonical form (sorted keys): the prompt,
 * every sampling parameter, the seed, stop sequences and max_new_tokens — everything that decides the output.
 * Sampled requests without a seed are never cached (their output is meant to vary), and a request can opt out
 * (GenerateOptions.cache = false; over HTTP `Cache-Control: no-cache` / `no-store`, or TGI `options.use_cache:
 * false`). The owner clears it when outputs may change (Engine: on a placement change); a key carries the
 * generation it was made in, so an answer computed across a clear() is not stored.
 */
import { createHash } from 'node:crypto';
import { CountedLru } from './counted-lru.ts';
import type { CacheStats, GenerateRequest, GenerateResult } from './types.ts';

export interface ResponseCacheOptions {
  /** Part of every key. */
  modelId: string;
  /** 0 disables the cache. */
  maxEntries: number;
  /** Bound on the summed serialised size of the stored results; 0 disables the cache. */
  maxBytes: number;
}

interface Entry {
  result: GenerateResult;
  bytes: number;
}

export class ResponseCache {
  /** Its generation (bumped by clear()) is part of every key. */
  private readonly results: CountedLru<Entry>;

  constructor(private readonly options: ResponseCacheOptions) {
    this.results = new CountedLru<Entry>({ maxBytes: options.maxBytes, maxEntries: options.maxEntries });
  }

  get enabled(): boolean {
    return this.results.lru !== null;
  }

  /** The cache key of a request whose output the request fully determines; null when it must not be cached. */
  keyOf(request: GenerateRequest): string | null {
    if (!this.results.lru) return null;
    if (request.sampling.doSample && request.sampling.seed === null) return null;
    const hash = createHash('sha256').update(canonicalJson({ model: this.options.modelId, request })).digest('base64');
    return `${this.results.generation}:${hash}`;
  }

  /** A copy of the stored result (callers may change it freely); counts a hit or a miss. */
  get(key: string): GenerateResult | undefined {
    const entry = this.results.lru?.get(key);
    if (!entry) {
      this.results.misses++;
      return undefined;
    }
    this.results.hits++;
    return structuredClone(entry.result);
  }

  /** Stores a copy, unless clear() ran since the key was made (the answer may come from the old experts). */
  set(key: string, result: GenerateResult): void {
    const lru = this.results.lru;
    if (!lru || !key.startsWith(`${this.results.generation}:`)) return;
    const copy = structuredClone(result);
    // Results larger than maxBytes are not stored (lru-cache's maxEntrySize defaults to maxSize).
    lru.set(key, { result: copy, bytes: Buffer.byteLength(JSON.stringify(copy)) + key.length });
  }

  clear(): void {
    this.results.clear();
  }

  stats(): CacheStats {
    return this.results.stats();
  }
}

/** JSON with object keys sorted at every level, so equal requests always serialise the same way. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v !== null && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v);
}

/** True when a Cache-Control request header asks to bypass caches (`no-cache` or `no-store`). */
export function cacheControlOptsOut(header: string | null | undefined): boolean {
  if (header == null) return false;
  return header.split(',').some((directive) => ['no-cache', 'no-store'].includes(directive.split('=')[0].trim().toLowerCase()));
}
