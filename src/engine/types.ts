/** The contract between the HTTP layer and the generation engine. */
import type { WorkerHealth } from '../../experts/pool.ts';

export interface SamplingParams {
  /** false: greedy (argmax); the other fields are then ignored. */
  doSample: boolean;
  temperature: number;
  topK: number | null;
  topP: number | null;
  /** Locally typical sampling's mass (Meister et al. 2022; TGI's `typical_p`); null or 1: off. */
  typicalP?: number | null;
  repetitionPenalty: number | null;
  /** Seed for the sampler; null lets the engine pick one (it is reported back). */
  seed: number | null;
}

export interface GenerateRequest {
  inputs: string;
  maxNewTokens: number;
  sampling: SamplingParams;
  /** Generation stops once the text ends with any of these; they stay in the generated text (as TGI does). */
  stop: string[];
  /** Report this many most likely tokens with each generated token (TGI `top_n_tokens`, OpenAI `top_logprobs`). */
  topTokens?: number;
  /** Keep generating after EOS, up to maxNewTokens (vLLM's `ignore_eos`; benchmarks need equal token counts). */
  ignoreEos?: boolean;
  /** Report each prompt token's log probability (TGI `decoder_input_details`); skips the prefix cache. */
  promptLogprobs?: boolean;
  /** Keep only the prompt's last this many tokens (TGI `truncate`; a BOS the tokenizer added stays first). */
  truncate?: number | null;
}

export type FinishReason = 'length' | 'eos_token' | 'stop_sequence';

/** A token and its log probability, e.g. one of the most likely alternatives at a position. */
export interface TokenLogprob {
  id: number;
  /** The token's own text (a special token's content; a lone byte of a multi-byte character decodes to U+FFFD). */
  text: string;
  logprob: number;
  special: boolean;
}

export interface GeneratedToken {
  id: number;
  text: string;
  logprob: number;
  special: boolean;
  /** With request.topTokens: the most likely tokens at this position, most likely first. */
  top?: TokenLogprob[];
}

export interface GenerateResult {
  generatedText: string;
  finishReason: FinishReason;
  generatedTokens: number;
  promptTokens: number;
  /** The seed actually used when sampling; null for greedy requests. */
  seed: number | null;
  tokens: GeneratedToken[];
  /** With request.promptLogprobs: every prompt token, the first with logprob null (nothing predicts it). */
  prefill?: Array<Omit<TokenLogprob, 'logprob'> & { logprob: number | null }>;
}

/** W3C Trace Context (https://www.w3.org/TR/trace-context/) as its HTTP headers carry it. */
export interface TraceCarrier {
  traceparent?: string;
  tracestate?: string;
}

export interface GenerateOptions {
  /** Aborting cancels the sequence and frees its KV cache. */
  signal?: AbortSignal;
  /**
   * What kind of request this is, for telemetry (default: a non-streamed text completion); `responseId` is the id
   * the client's response carries (OpenAI's `chatcmpl-…`), reported as `gen_ai.response.id`.
   */
  label?: { operation: 'text_completion' | 'chat'; stream: boolean; responseId?: string };
  /**
   * The trace this request belongs to. The HTTP routes pass the caller's `traceparent`/`tracestate` headers (its
   * span becomes the request span's parent); the instrumented service hands the engine its request span's
   * context instead, so that each step's `moe.step` span links to the requests it carried.
   */
  trace?: TraceCarrier;
  /** Called for every generated token, in order (streaming); `finished` is the result when it was the last. */
  onToken?: (token: GeneratedToken, finished: GenerateResult | null) => void;
  /**
   * false: bypass the response cache (neither answered from it nor stored in it). Default true; only greedy and
   * seeded requests are ever cached. The prefix cache is always used (it never changes outputs).
   */
  cache?: boolean;
}

/** A request the engine refuses because of its content (maps to HTTP 422). */
export class InvalidRequestError extends Error {
  override readonly name = 'InvalidRequestError';
}

/** The engine's queue is full (maps to HTTP 429 with Retry-After). */
export class OverloadedError extends Error {
  override readonly name = 'OverloadedError';
  constructor(message: string, readonly retryAfterSeconds: number) {
    super(message);
  }
}

/**
 * The engine (or the server around it) is shutting down and takes no more work, or cut a request it was running
 * when the shutdown grace period ran out (maps to HTTP 503 `overloaded` with Retry-After and Connection: close).
 */
export class ShuttingDownError extends Error {
  override readonly name = 'ShuttingDownError';
  /** @param retryAfterSeconds when a client may retry (another instance, or this one restarted), in seconds. */
  constructor(message = 'the server is shutting down', readonly retryAfterSeconds = 5) {
    super(message);
  }
}

/** The request ran past limits.requestTimeoutMs and was cancelled (maps to HTTP 503). */
export class RequestTimeoutError extends Error {
  override readonly name = 'RequestTimeoutError';
}

/** The client went away; its sequence was dropped and its KV cache freed. */
export class CancelledError extends Error {
  override readonly name = 'CancelledError';
}

/**
 * GET /health's answer. 'degraded' when an expert worker's replacement thread failed to start: the experts it hosts
 * cannot run (unless replicated elsewhere), so the instance should be taken out of rotation and looked at.
 */
export interface HealthReport {
  status: 'ok' | 'degraded';
  workers: WorkerHealth[];
}

export interface ModelInfo {
  modelId: string;
  modelDir: string;
  modelType: string;
  layers: number;
  experts: number;
  expertsPerToken: number;
  hiddenSize: number;
  contextLength: number;
  vocabSize: number;
  parameters: { total: number; activePerToken: number; activeFraction: number };
  placement: { workers: number; experts: Array<{ layer: number; expert: number; workers: number[] }> };
  limits: { maxPromptTokens: number; maxNewTokens: number; maxTotalTokens: number };
  activeSequences: number;
  queuedRequests: number;
  /** Prefix and response cache counters (absent when the service has no caches). */
  caches?: { prefix: CacheStats; response: CacheStats };
}

/** Counters of one cache since start (hits, misses and evictions only grow; clear() does not count evictions). */
export interface CacheStats {
  enabled: boolean;
  hits: number;
  misses: number;
  /** Entries dropped to stay within the bounds. */
  evictions: number;
  entries: number;
  bytes: number;
  maxBytes: number;
  maxEntries?: number;
  /** Prefix cache: prompt tokens whose prefill was skipped. */
  tokensReused?: number;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface GenerationService {
  generate(request: GenerateRequest, options?: GenerateOptions): Promise<GenerateResult>;
  /**
   * Throws InvalidRequestError or OverloadedError when generate() would refuse the request now; streaming
   * routes call it first, so such refusals still get their status code before the stream begins.
   */
  admit(request: GenerateRequest): void;
  /** Renders a conversation with the model package's chat template, ready to continue as the assistant. */
  renderChat(messages: ChatMessage[]): string;
  /**
   * The prompt's length in tokens as generate() would run it (after `truncate`), so that a caller can size
   * maxNewTokens to the rest of the context (OpenAI chat without max_tokens). Optional: services that cannot
   * tell (test fakes) leave it out.
   */
  countPromptTokens?(request: GenerateRequest): number;
  info(): ModelInfo;
  /** The expert workers' state for GET /health; services without workers (test fakes) leave it out. */
  health?(): HealthReport;
  close(): Promise<void>;
}
