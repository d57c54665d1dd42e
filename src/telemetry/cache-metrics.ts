/**
 * Prefix- and response-cache metrics, read (pulled) from the caches' own counters at each collection — a /metrics
 * scrape or an OTLP export — so the caches pay nothing per request. One label, `switchyard.cache` = `prefix` |
 * `response`, keeps the series bounded.
 */
import type { Attributes, Meter, ObservableResult } from '@opentelemetry/api';
import type { CacheStats } from '../engine/types.ts';
import { CACHE, METRIC } from './names.ts';

/** What the caches report; undefined when the service has none (e.g. a fake engine). */
export type CacheStatsReader = () => { prefix: CacheStats; response: CacheStats } | undefined;

const ATTRS: Record<'prefix' | 'response', Attributes> = {
  prefix: { [CACHE.name]: 'prefix' },
  response: { [CACHE.name]: 'response' },
};

export function registerCacheMetrics(meter: Meter, read: CacheStatsReader): void {
  const each = (result: ObservableResult, value: (s: CacheStats) => number | undefined) => {
    const caches = read();
    if (!caches) return;
    for (const name of ['prefix', 'response'] as const) {
      const v = value(caches[name]);
      if (v !== undefined) result.observe(v, ATTRS[name]);
    }
  };
  meter.createObservableCounter(METRIC.cacheHits, { description: 'Cache lookups that found an entry (prefix: at least one block reused).', unit: '{lookup}' })
    .addCallback((r) => each(r, (s) => s.hits));
  meter.createObservableCounter(METRIC.cacheMisses, { description: 'Cache lookups that found nothing.', unit: '{lookup}' })
    .addCallback((r) => each(r, (s) => s.misses));
  meter.createObservableCounter(METRIC.cacheEvictions, { description: 'Entries evicted to keep the cache within its bounds.', unit: '{entry}' })
    .addCallback((r) => each(r, (s) => s.evictions));
  meter.createObservableGauge(METRIC.cacheBytes, { description: 'Bytes the cache holds now.', unit: 'By' })
    .addCallback((r) => each(r, (s) => s.bytes));
  meter.createObservableGauge(METRIC.cacheEntries, { description: 'Entries the cache holds now (prefix: blocks; response: answers).', unit: '{entry}' })
    .addCallback((r) => each(r, (s) => s.entries));
  meter.createObservableCounter(METRIC.prefixTokensReused, { description: 'Prompt tokens whose prefill the prefix cache skipped.', unit: '{token}' })
    .addCallback((r) => {
      const caches = read();
      if (caches) r.observe(caches.prefix.tokensReused ?? 0);
    });
}
