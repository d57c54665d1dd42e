/**
 * POST /generate_stream — TGI server-sent events (TGI's `StreamResponse`): one event per token
 * `{index, token, top_tokens?, generated_text: null, details: null}`; the last carries `generated_text` and
 * `details: {finish_reason, generated_tokens, seed, input_length}`. `index` counts tokens from 1, as TGI does.
 */
import type { Hono } from 'hono';
import type { Config } from '../../config.ts';
import type { GenerationService } from '../../engine/types.ts';
import { HttpError } from '../errors.ts';
import { createGenerateSchema, parseGenerateBody, responseCacheAllowed, toGenerateRequest } from '../schemas.ts';
import { streamTokens } from '../token-stream.ts';
import { answerText, readJsonBody, tgiToken, topToken } from './generate.ts';

export function registerGenerateStreamRoute(app: Hono, service: GenerationService, config: Config): void {
  const schema = createGenerateSchema(config.limits);

  app.post('/generate_stream', async (c) => {
    const parsed = parseGenerateBody(schema, await readJsonBody(c.req.raw));
    if (!parsed.ok) throw new HttpError(422, 'validation', parsed.message);
    const body = parsed.body;
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
  });
}
