/** POST /generate — Text Generation Inference request and response shape. */
import type { Hono } from 'hono';
import type { Config } from '../../config.ts';
import type { GenerateResult, GenerationService } from '../../engine/types.ts';
import { HttpError } from '../errors.ts';
import { createGenerateSchema, parseGenerateBody, responseCacheAllowed, toGenerateRequest } from '../schemas.ts';

export interface GenerateResponseBody {
  generated_text: string;
  details?: {
    finish_reason: GenerateResult['finishReason'];
    generated_tokens: number;
    seed: number | null;
    prompt_tokens: number;
    tokens: Array<{ id: number; text: string; logprob: number; special: boolean }>;
  };
}

export function toGenerateResponse(result: GenerateResult, details: boolean): GenerateResponseBody {
  if (!details) return { generated_text: result.generatedText };
  return {
    generated_text: result.generatedText,
    details: {
      finish_reason: result.finishReason,
      generated_tokens: result.generatedTokens,
      seed: result.seed,
      prompt_tokens: result.promptTokens,
      tokens: result.tokens.map(({ id, text, logprob, special }) => ({ id, text, logprob, special })),
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

export function registerGenerateRoute(app: Hono, service: GenerationService, config: Config): void {
  const schema = createGenerateSchema(config.limits);

  app.post('/generate', async (c) => {
    const input = await readJsonBody(c.req.raw);
    const parsed = parseGenerateBody(schema, input);
    if (!parsed.ok) throw new HttpError(422, 'validation', parsed.message);
    // The request's signal aborts when the client disconnects: the engine then drops the sequence.
    // (limits.requestTimeoutMs is enforced by the engine's scheduler.)
    const result = await service.generate(toGenerateRequest(parsed.body, config.limits), {
      signal: c.req.raw.signal, label: { operation: 'text_completion', stream: false },
      cache: responseCacheAllowed(c.req.header('cache-control'), parsed.body),
    });
    return c.json(toGenerateResponse(result, parsed.body.parameters?.details === true));
  });
}
