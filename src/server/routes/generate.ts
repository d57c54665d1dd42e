/** POST /generate — Text Generation Inference request and response shape. */
import type { Context, Hono } from 'hono';
import type { Config } from '../../config.ts';
import type { GenerateResult, GenerationService, TokenLogprob } from '../../engine/types.ts';
import { HttpError } from '../errors.ts';
import { traceHeaders } from '../trace-headers.ts';
import {
  createGenerateSchema, parseGenerateBody, responseCacheAllowed, toGenerateRequest, type GenerateBody, type GenerateSchema,
} from '../schemas.ts';

/** TGI's `Token`. */
export interface TgiToken { id: number; text: string; logprob: number; special: boolean }

/** TGI's `PrefillToken`: the first prompt token's logprob is null (nothing predicts it). */
export interface TgiPrefillToken { id: number; text: string; logprob: number | null }

/** TGI's `GenerateResponse` (router/src/lib.rs, docs/openapi.json); `details.prompt_tokens` is ours. */
export interface GenerateResponseBody {
  generated_text: string;
  details?: {
    finish_reason: GenerateResult['finishReason'];
    generated_tokens: number;
    seed: number | null;
    prompt_tokens: number;
    /** With decoder_input_details: every prompt token; otherwise empty (as TGI). */
    prefill: TgiPrefillToken[];
    tokens: TgiToken[];
    /** With top_n_tokens > 0: per generated token, the most likely tokens at its position (absent otherwise, as TGI). */
    top_tokens?: TgiToken[][];
  };
}

export const tgiToken = ({ id, text, logprob, special }: TgiToken): TgiToken => ({ id, text, logprob, special });
export const topToken = ({ id, text, logprob, special }: TokenLogprob): TgiToken => ({ id, text, logprob, special });

/** The text TGI answers: the prompt before the generated text when `return_full_text` is true. */
export function answerText(body: GenerateBody, generatedText: string): string {
  return body.parameters?.return_full_text === true ? body.inputs + generatedText : generatedText;
}

/**
 * The `/generate` answer. Details come with `details: true` or `decoder_input_details: true` (TGI returns them for
 * either), with `prefill` always present and `top_tokens` only when asked for.
 */
export function toGenerateResponse(result: GenerateResult, body: GenerateBody): GenerateResponseBody {
  const p = body.parameters ?? {};
  const generated_text = answerText(body, result.generatedText);
  if (p.details !== true && p.decoder_input_details !== true) return { generated_text };
  const topTokens = p.top_n_tokens ? { top_tokens: result.tokens.map((t) => (t.top ?? []).map(topToken)) } : {};
  return {
    generated_text,
    details: {
      finish_reason: result.finishReason,
      generated_tokens: result.generatedTokens,
      seed: result.seed,
      prompt_tokens: result.promptTokens,
      prefill: (result.prefill ?? []).map(({ id, text, logprob }) => ({ id, text, logprob })),
      tokens: result.tokens.map(tgiToken),
      ...topTokens,
    },
  };
}

/** Reads the body as JSON whatever the Content-Type says; malformed JSON is a 422. */
export async function readJsonBody(request: Request): Promise<unknown> {
  const text = await request.text();
  if (text.trim() === '') {
    throw new HttpError(422, 'validation', 'request body is empty; send a JSON object like {"inputs": "Once upon a time"}');
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new HttpError(422, 'validation', `body is not valid JSON: ${(err as Error).message}`);
  }
}

/** A TGI request body, validated (422 with every problem otherwise). */
export async function readGenerateBody(request: Request, schema: GenerateSchema): Promise<GenerateBody> {
  const parsed = parseGenerateBody(schema, await readJsonBody(request));
  if (!parsed.ok) throw new HttpError(422, 'validation', parsed.message);
  return parsed.body;
}

/** Runs a validated TGI request to its end and answers TGI's GenerateResponse. */
export async function generateAnswer(c: Context, service: GenerationService, config: Config, body: GenerateBody): Promise<GenerateResponseBody> {
  // The request's signal aborts when the client disconnects: the engine then drops the sequence.
  // (limits.requestTimeoutMs is enforced by the engine's scheduler.)
  const result = await service.generate(toGenerateRequest(body, config.limits), {
    signal: c.req.raw.signal, label: { operation: 'text_completion', stream: false }, trace: traceHeaders(c),
    cache: responseCacheAllowed(c.req.header('cache-control'), body),
  });
  return toGenerateResponse(result, body);
}

export function registerGenerateRoute(app: Hono, service: GenerationService, config: Config): void {
  const schema = createGenerateSchema(config.limits);

  app.post('/generate', async (c) => {
    const body = await readGenerateBody(c.req.raw, schema);
    if (body.stream === true) {
      throw new HttpError(422, 'validation', 'stream: true is not supported on POST /generate; use POST /generate_stream (or POST / with stream: true)');
    }
    return c.json(await generateAnswer(c, service, config, body));
  });
}
