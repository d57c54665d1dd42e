/**
 * From a validated OpenAI body to the engine requests of its choices: sampling as OpenAI (and, for the TGI extras,
 * TGI) define it, the number of new tokens, stop sequences and seeds per choice.
 */
import type { Config } from '../../config.ts';
import type { GenerateRequest, GenerationService, SamplingParams } from '../../engine/types.ts';
import { MAX_SEED } from '../schemas.ts';
import { OpenAiRequestError } from './errors.ts';
import { stopList, type ChatBody, type CompletionBody } from './schemas.ts';

/** OpenAI's legacy default for /v1/completions without max_tokens. */
export const COMPLETION_DEFAULT_MAX_TOKENS = 16;

export interface ChoicePlan {
  /** choices[].index: prompt index × n + i. */
  index: number;
  promptIndex: number;
  request: GenerateRequest;
}

export interface Plan {
  choices: ChoicePlan[];
  /** The stop sequences the output is cut at (the client's, and for chat the template's turn end). */
  stops: string[];
  /** Log probabilities asked for: the alternatives per token; null: none. */
  logprobs: number | null;
}

/**
 * Sampling parameters. OpenAI: `temperature` (default 1) samples, 0 is greedy, and so is `top_p` 0 (only the most
 * likely token is left). With TGI's `do_sample` in the body, TGI's rule: sample when do_sample is true or any
 * warper is set (temperature ≠ 1, top_k, top_p < 1, typical_p < 1).
 */
export function samplingOf(body: ChatBody | CompletionBody, seed: number | null): SamplingParams {
  const typicalP = 'typical_p' in body ? (body.typical_p ?? null) : null;
  const doSampleField = 'do_sample' in body ? body.do_sample : null;
  const t = body.temperature;
  const warpers = (t != null && t !== 1) || body.top_k != null || (body.top_p != null && body.top_p < 1) || (typicalP != null && typicalP < 1);
  const sample = t === 0 || body.top_p === 0 ? false : doSampleField == null ? true : doSampleField || warpers;
  return {
    doSample: sample,
    temperature: t != null && t > 0 ? t : 1,
    topK: body.top_k ?? null,
    topP: body.top_p ?? null,
    typicalP,
    repetitionPenalty: body.repetition_penalty ?? null,
    seed: sample ? seed : null,
  };
}

/** Choice i's seed: seed + i (mod 2^32), so that n choices differ and each is reproducible. */
const seedOf = (seed: number | null | undefined, i: number): number | null => (seed == null ? null : (seed + i) % (MAX_SEED + 1));

interface TokenBudget {
  /** The field that holds the prompt, for messages: `messages` or `prompt`. */
  promptField: 'messages' | 'prompt';
  /** The token limit the client sent and under which name(s); null: none sent. */
  requested: { value: number; fields: string[] } | null;
  /** Without a requested limit: chat generates to the end of the context, completions up to OpenAI's 16. */
  fallback: 'context' | number;
}

/**
 * max_new_tokens for one prompt: the client's limit, else the rest of the context (chat) or 16 (completions), both
 * within limits.maxNewTokens. A prompt that does not fit, or a limit that overflows the context, is a 422 that names
 * the fields the client sent (`context_length_exceeded`, as OpenAI).
 */
function maxNewTokens(service: GenerationService, limits: Config['limits'], request: GenerateRequest, budget: TokenBudget): number {
  const info = service.info();
  const fallback = budget.fallback === 'context' ? limits.maxNewTokens : Math.min(budget.fallback, limits.maxNewTokens);
  const promptTokens = service.countPromptTokens?.(request);
  // A service that cannot count tokens (a test fake): the engine still refuses what does not fit.
  if (promptTokens === undefined) return budget.requested?.value ?? fallback;
  const what = budget.promptField === 'messages' ? 'the conversation (messages)' : 'the prompt';
  const shorten = budget.promptField === 'messages' ? 'shorten messages' : 'shorten the prompt';
  const context = info.contextLength;
  if (promptTokens > info.limits.maxPromptTokens) {
    throw new OpenAiRequestError(
      `${budget.promptField}: ${what} is ${promptTokens} tokens; this server accepts at most ${info.limits.maxPromptTokens} ` +
      `(the model's context is ${context} tokens); ${shorten}`, budget.promptField, 'context_length_exceeded');
  }
  const room = context - promptTokens;
  if (budget.requested) {
    const { value, fields } = budget.requested;
    if (value > room) {
      throw new OpenAiRequestError(
        `${fields.join(' and ')}: ${what} is ${promptTokens} tokens, and ${value} more would exceed the model's context of ` +
        `${context} tokens; ask for at most ${room} or ${shorten}`, fields[fields.length - 1], 'context_length_exceeded');
    }
    return value;
  }
  if (room < 1) {
    throw new OpenAiRequestError(
      `${budget.promptField}: ${what} is ${promptTokens} tokens and leaves no room for a reply in the model's context of ${context} tokens; ${shorten}`,
      budget.promptField, 'context_length_exceeded');
  }
  return Math.min(fallback, room);
}

function choices(
  service: GenerationService, limits: Config['limits'], body: ChatBody | CompletionBody, prompts: string[],
  extra: Partial<GenerateRequest>, stops: string[], budget: TokenBudget,
): ChoicePlan[] {
  const n = body.n ?? 1;
  return prompts.flatMap((inputs, promptIndex) => {
    const base: GenerateRequest = {
      inputs, maxNewTokens: 1, sampling: samplingOf(body, null), stop: stops, ...extra,
      ...(body.ignore_eos ? { ignoreEos: true } : {}),
    };
    const maxNew = maxNewTokens(service, limits, base, budget);
    return Array.from({ length: n }, (_, i) => ({
      index: promptIndex * n + i,
      promptIndex,
      request: { ...base, maxNewTokens: maxNew, sampling: samplingOf(body, seedOf(body.seed, i)) },
    }));
  });
}

/** /v1/chat/completions: one prompt (the rendered conversation), n choices; `turnEnd` is the template's end of turn. */
export function planChat(service: GenerationService, limits: Config['limits'], body: ChatBody, prompt: string, turnEnd: string[]): Plan {
  const sent = (['max_tokens', 'max_completion_tokens'] as const).filter((f) => body[f] != null);
  const logprobs = body.logprobs ? (body.top_logprobs ?? 0) : null;
  const stops = [...stopList(body.stop), ...turnEnd.filter((s) => !stopList(body.stop).includes(s))];
  const plan = choices(service, limits, body, [prompt], logprobs ? { topTokens: logprobs } : {}, stops, {
    promptField: 'messages',
    requested: sent.length > 0 ? { value: (body.max_completion_tokens ?? body.max_tokens)!, fields: [...sent] } : null,
    fallback: 'context',
  });
  return { choices: plan, stops, logprobs };
}

/** /v1/completions: each prompt of the batch gets n choices. */
export function planCompletion(service: GenerationService, limits: Config['limits'], body: CompletionBody, prompts: string[]): Plan {
  const logprobs = body.logprobs ?? body.top_n_tokens ?? null;
  const extra: Partial<GenerateRequest> = {
    ...(logprobs ? { topTokens: logprobs } : {}),
    ...(body.truncate != null ? { truncate: body.truncate } : {}),
  };
  const stops = stopList(body.stop);
  const plan = choices(service, limits, body, prompts, extra, stops, {
    promptField: 'prompt',
    requested: body.max_tokens != null ? { value: body.max_tokens, fields: ['max_tokens'] } : null,
    fallback: COMPLETION_DEFAULT_MAX_TOKENS,
  });
  return { choices: plan, stops, logprobs };
}
