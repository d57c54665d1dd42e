/** Request validation for the OpenAI-compatible completions and chat completions endpoints. */
import { z } from 'zod';
import type { Config } from '../../config.ts';
import type { GenerateRequest } from '../../engine/types.ts';
import { MAX_SEED } from '../schemas.ts';

type Limits = Config['limits'];

function common(limits: Limits) {
  const maxTokens = `must be an integer from 1 to ${limits.maxNewTokens} (this server's limit)`;
  return {
    model: z.string({ error: 'is required: the model id from GET /v1/models' }),
    max_tokens: z.int({ error: maxTokens }).min(1, { error: maxTokens }).max(limits.maxNewTokens, { error: maxTokens }).nullish(),
    temperature: z.number({ error: 'must be a number from 0 to 2' }).min(0).max(2).nullish(),
    top_p: z.number({ error: 'must be a number greater than 0 and at most 1' }).gt(0).lte(1).nullish(),
    n: z.literal(1, { error: 'only n = 1 is supported' }).nullish(),
    stream: z.boolean({ error: 'must be true or false' }).nullish(),
    stream_options: z.strictObject({ include_usage: z.boolean().optional() }).nullish(),
    stop: z.union([
      z.string().min(1).max(limits.maxStopSequenceLength),
      z.array(z.string().min(1).max(limits.maxStopSequenceLength)).max(limits.maxStopSequences),
    ], { error: `must be a string or an array of at most ${limits.maxStopSequences} non-empty strings` }).nullish(),
    seed: z.int({ error: `must be an integer from 0 to ${MAX_SEED}` }).min(0).max(MAX_SEED).nullish(),
    frequency_penalty: z.literal(0, { error: 'is not supported (only 0)' }).nullish(),
    presence_penalty: z.literal(0, { error: 'is not supported (only 0)' }).nullish(),
    user: z.string().nullish(),
  };
}

export function completionSchema(limits: Limits) {
  return z.strictObject({
    ...common(limits),
    prompt: z.union([z.string().min(1), z.array(z.string().min(1)).length(1)], { error: 'must be a non-empty string (or an array of exactly one)' }),
  });
}

export function chatSchema(limits: Limits) {
  return z.strictObject({
    ...common(limits),
    messages: z.array(z.strictObject({
      role: z.enum(['system', 'user', 'assistant'], { error: 'must be "system", "user" or "assistant"' }),
      content: z.string({ error: 'must be a string' }),
    }), { error: 'must be an array of {role, content} messages' }).min(1, { error: 'must hold at least one message' }),
  });
}

export type CompletionBody = z.infer<ReturnType<typeof completionSchema>>;
export type ChatBody = z.infer<ReturnType<typeof chatSchema>>;

export function stopList(stop: string | string[] | null | undefined): string[] {
  return stop == null ? [] : typeof stop === 'string' ? [stop] : stop;
}

/** OpenAI semantics: temperature 0 is greedy; the default temperature 1 samples. */
export function toEngineRequest(body: CompletionBody | ChatBody, inputs: string, limits: Limits, extraStops: string[] = []): GenerateRequest {
  const temperature = body.temperature ?? 1;
  return {
    inputs,
    maxNewTokens: body.max_tokens ?? Math.min(16, limits.maxNewTokens),
    sampling: {
      doSample: temperature > 0, temperature: temperature > 0 ? temperature : 1,
      topK: null, topP: body.top_p ?? null, repetitionPenalty: null, seed: body.seed ?? null,
    },
    stop: [...stopList(body.stop), ...extraStops],
  };
}
