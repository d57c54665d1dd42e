/**
 * POST /generate_stream — TGI server-sent events (TGI's `StreamResponse`): one event per token
 * `{index, token, top_tokens?, generated_text: null, details: null}`; the last carries `generated_text` and
 * `details: {finish_reason, generated_tokens, seed, input_length}`. `index` counts tokens from 1, as TGI does.
 */
import type { Context, Hono } from 'hono';
import type { Config } from '../../config.ts';
import type { GenerationService } from '../../engine/types.ts';
import { HttpError } from '../errors.ts';
import { createGenerateSchema, responseCacheAllowed, toGenerateRequest, type GenerateBody } from '../schemas.ts';
import { streamTokens } from '../token-stream.ts';
import { answerText, readGenerateBody, tgiToken, topToken } from './generate.ts';

/** Streams a validated TGI request as TGI's server-sent events. */
export function streamAnswer(c: Context, service: GenerationService, config: Config, body: GenerateBody): Response {
  if (body.parameters?.decoder_input_details === true) {
    // TGI refuses it too (ValidationError::PrefillDetailsStream); we say so before the stream starts.
    throw new HttpError(422, 'validation',
      'parameters.decoder_input_details: true is not supported when streaming tokens; use POST /generate for prompt-token details');
  }
  const withTop = (body.parameters?.top_n_tokens ?? 0) > 0;
  let index = 0;
  return streamTokens(c, service, toGenerateRequest(body, config.limits), 'text_completion', {
    token: (token, finished) => [{
      index: ++index,
      token: tgiToken(token),
      ...(withTop ? { top_tokens: (token.top ?? []).map(topToken) } : {}),
      generated_text: finished ? answerText(body, finished.generatedText) : null,
      details: finished
        ? { finish_reason: finished.finishReason, generated_tokens: finished.generatedTokens, seed: finished.seed, input_length: finished.promptTokens }
        : null,
    }],
  }, { cache: responseCacheAllowed(c.req.header('cache-control'), body) });
}

export function registerGenerateStreamRoute(app: Hono, service: GenerationService, config: Config): void {
  const schema = createGenerateSchema(config.limits);

  app.post('/generate_stream', async (c) => {
    const body = await readGenerateBody(c.req.raw, schema);
    if (body.stream === false) {
      throw new HttpError(422, 'validation', 'stream: false is not supported on POST /generate_stream; use POST /generate (or POST / without stream)');
    }
    return streamAnswer(c, service, config, body);
  });
}
