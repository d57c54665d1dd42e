/** POST /generate_stream — TGI server-sent events: one event per token, the last also carries the full text and details. */
import type { Hono } from 'hono';
import type { Config } from '../../config.ts';
import type { GenerationService } from '../../engine/types.ts';
import { HttpError } from '../errors.ts';
import { createGenerateSchema, parseGenerateBody, responseCacheAllowed, toGenerateRequest } from '../schemas.ts';
import { streamTokens } from '../token-stream.ts';
import { readJsonBody } from './generate.ts';

export function registerGenerateStreamRoute(app: Hono, service: GenerationService, config: Config): void {
  const schema = createGenerateSchema(config.limits);

  app.post('/generate_stream', async (c) => {
    const parsed = parseGenerateBody(schema, await readJsonBody(c.req.raw));
    if (!parsed.ok) throw new HttpError(422, 'validation', parsed.message);
    return streamTokens(c, service, toGenerateRequest(parsed.body, config.limits), 'text_completion', {
      token: ({ id, text, logprob, special }, finished) => [{
        token: { id, text, logprob, special },
        generated_text: finished ? finished.generatedText : null,
        details: finished
          ? { finish_reason: finished.finishReason, generated_tokens: finished.generatedTokens, seed: finished.seed }
          : null,
      }],
    }, { cache: responseCacheAllowed(c.req.header('cache-control'), parsed.body) });
  });
}
