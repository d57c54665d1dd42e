/**
 * Every telemetry name in one place. GenAI names come from the OpenTelemetry semantic conventions package
 * (pinned to 1.45.0 in package.json, so the incubating entry point cannot shift under us); expert-level data
 * lives under the project's `moe.*` namespace, with labels limited to layer, expert and worker (bounded:
 * layers × experts series at most).
 */
import { ATTR_ERROR_TYPE, ATTR_SERVICE_NAME } from '@opentelemetry/semantic-conventions';
import {
  ATTR_GEN_AI_OPERATION_NAME,
  ATTR_GEN_AI_PROVIDER_NAME,
  ATTR_GEN_AI_REQUEST_MAX_TOKENS,
  ATTR_GEN_AI_REQUEST_MODEL,
  ATTR_GEN_AI_REQUEST_SEED,
  ATTR_GEN_AI_REQUEST_STREAM,
  ATTR_GEN_AI_REQUEST_TEMPERATURE,
  ATTR_GEN_AI_REQUEST_TOP_K,
  ATTR_GEN_AI_REQUEST_TOP_P,
  ATTR_GEN_AI_RESPONSE_FINISH_REASONS,
  ATTR_GEN_AI_RESPONSE_ID,
  ATTR_GEN_AI_RESPONSE_MODEL,
  ATTR_GEN_AI_USAGE_INPUT_TOKENS,
  ATTR_GEN_AI_USAGE_OUTPUT_TOKENS,
  METRIC_GEN_AI_SERVER_REQUEST_DURATION,
  METRIC_GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN,
  METRIC_GEN_AI_SERVER_TIME_TO_FIRST_TOKEN,
} from '@opentelemetry/semantic-conventions/incubating';

/** Instrumentation scope of every tracer and meter this module creates. */
export const SCOPE = 'switchyard';
/** `gen_ai.provider.name` (required by the GenAI conventions): the gateway serves its own model. */
export const PROVIDER = 'switchyard';

export const GENAI = {
  operation: ATTR_GEN_AI_OPERATION_NAME,
  provider: ATTR_GEN_AI_PROVIDER_NAME,
  requestModel: ATTR_GEN_AI_REQUEST_MODEL,
  maxTokens: ATTR_GEN_AI_REQUEST_MAX_TOKENS,
  temperature: ATTR_GEN_AI_REQUEST_TEMPERATURE,
  topP: ATTR_GEN_AI_REQUEST_TOP_P,
  topK: ATTR_GEN_AI_REQUEST_TOP_K,
  seed: ATTR_GEN_AI_REQUEST_SEED,
  stream: ATTR_GEN_AI_REQUEST_STREAM,
  responseModel: ATTR_GEN_AI_RESPONSE_MODEL,
  responseId: ATTR_GEN_AI_RESPONSE_ID,
  inputTokens: ATTR_GEN_AI_USAGE_INPUT_TOKENS,
  outputTokens: ATTR_GEN_AI_USAGE_OUTPUT_TOKENS,
  finishReasons: ATTR_GEN_AI_RESPONSE_FINISH_REASONS,
  timeToFirstToken: METRIC_GEN_AI_SERVER_TIME_TO_FIRST_TOKEN,
  timePerOutputToken: METRIC_GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN,
  requestDuration: METRIC_GEN_AI_SERVER_REQUEST_DURATION,
} as const;

export const ERROR_TYPE = ATTR_ERROR_TYPE;
export const SERVICE_NAME = ATTR_SERVICE_NAME;

/** Attribute keys under the project namespace. */
export const MOE = {
  layer: 'moe.layer',
  expert: 'moe.expert',
  worker: 'moe.worker',
  // Span attributes (not metric labels: unbounded or array-valued).
  tokens: 'moe.tokens',
  tokensPerExpert: 'moe.tokens_per_expert',
  overflowTokens: 'moe.overflow_tokens',
  capacity: 'moe.capacity',
  stepIndex: 'moe.step.index',
  stepSequences: 'moe.step.sequences',
  stepTokens: 'moe.step.tokens',
  workerTokens: 'moe.worker.tokens',
  workerExperts: 'moe.worker.experts',
  workerQueueMs: 'moe.worker.queue_ms',
  workerComputeMs: 'moe.worker.compute_ms',
} as const;

export const SPAN = {
  step: 'moe.step',
  dispatch: 'moe.dispatch',
  /** Event on a dispatch span, one per worker task. */
  workerTask: 'moe.worker.task',
} as const;

export const METRIC = {
  expertTokens: 'moe.expert.tokens',
  expertOverflow: 'moe.expert.overflow_tokens',
  workerBusyTime: 'moe.worker.busy_time',
  workerTokens: 'moe.worker.tokens',
  workerQueueDuration: 'moe.worker.queue.duration',
  workerExpertLoads: 'moe.worker.expert_loads',
  workerExpertEvictions: 'moe.worker.expert_evictions',
  workerRestarts: 'moe.worker.restarts',
  hostFailovers: 'moe.host.failovers',
  dispatchDuration: 'moe.dispatch.duration',
  steps: 'moe.steps',
  stepTokens: 'moe.step.tokens',
  stepDuration: 'moe.step.duration',
  loadTraceDropped: 'moe.load_trace.dropped_records',
  // Gateway caches (not expert-level, so under the project's own `switchyard.*` namespace).
  cacheHits: 'switchyard.cache.hits',
  cacheMisses: 'switchyard.cache.misses',
  cacheEvictions: 'switchyard.cache.evictions',
  cacheBytes: 'switchyard.cache.bytes',
  cacheEntries: 'switchyard.cache.entries',
  prefixTokensReused: 'switchyard.cache.prefix.tokens_reused',
} as const;

/** Metric attribute of the cache metrics: which cache (`prefix` or `response`). */
export const CACHE = {
  name: 'switchyard.cache',
} as const;

/**
 * Histogram bucket boundaries. The gen_ai.server.* ones are the semantic conventions' advice; this engine decodes
 * a token in about 1–2 ms, so time_per_output_token gets finer buckets below the convention's first (10 ms) — a
 * superset, so dashboards built for the convention's buckets still aggregate.
 */
export const BUCKETS = {
  timeToFirstToken: [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10],
  timePerOutputToken: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5],
  requestDuration: [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92],
  /** Per-layer dispatch, worker queue wait and whole steps: tens of microseconds to a second. */
  shortSeconds: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
  stepTokens: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096],
} as const;
