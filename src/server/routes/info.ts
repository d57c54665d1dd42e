/** GET /info — model, placement and limits, from the engine's ModelInfo. */
import type { Hono } from 'hono';
import type { CacheStats, GenerationService, ModelInfo } from '../../engine/types.ts';

function cacheJson(s: CacheStats) {
  return {
    enabled: s.enabled, hits: s.hits, misses: s.misses, evictions: s.evictions, entries: s.entries, bytes: s.bytes,
    max_bytes: s.maxBytes,
    ...(s.maxEntries === undefined ? {} : { max_entries: s.maxEntries }),
    ...(s.tokensReused === undefined ? {} : { tokens_reused: s.tokensReused }),
  };
}

export function toInfoJson(info: ModelInfo) {
  return {
    model_id: info.modelId,
    model_type: info.modelType,
    layers: info.layers,
    experts: info.experts,
    experts_per_token: info.expertsPerToken,
    hidden_size: info.hiddenSize,
    context_length: info.contextLength,
    vocab_size: info.vocabSize,
    parameters: {
      total: info.parameters.total,
      active_per_token: info.parameters.activePerToken,
      active_fraction: info.parameters.activeFraction,
    },
    placement: {
      workers: info.placement.workers,
      experts: info.placement.experts.map(({ layer, expert, workers }) => ({ layer, expert, workers: [...workers] })),
    },
    limits: {
      max_prompt_tokens: info.limits.maxPromptTokens,
      max_new_tokens: info.limits.maxNewTokens,
      max_total_tokens: info.limits.maxTotalTokens,
    },
    active_sequences: info.activeSequences,
    queued_requests: info.queuedRequests,
    ...(info.caches ? { caches: { prefix: cacheJson(info.caches.prefix), response: cacheJson(info.caches.response) } } : {}),
  };
}

export type InfoResponseBody = ReturnType<typeof toInfoJson>;

export function registerInfoRoute(app: Hono, service: GenerationService): void {
  app.get('/info', (c) => c.json(toInfoJson(service.info())));
}
