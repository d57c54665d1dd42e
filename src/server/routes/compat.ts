/**
 * POST / — TGI's compat route (compat_generate), which Hugging Face clients given a bare endpoint URL post to (the
 * Python InferenceClient's text_generation, SageMaker-style callers): the /generate body plus `stream`. Without
 * stream: `[GenerateResponse]`, an array of one (as TGI answers); with stream: true, /generate_stream's events.
 * return_full_text defaults to false (TGI's default for a model without a Hub pipeline tag).
 */
import type { Hono } from 'hono';
import type { Config } from '../../config.ts';
import type { GenerationService } from '../../engine/types.ts';
import { createGenerateSchema } from '../schemas.ts';
import { generateAnswer, readGenerateBody } from './generate.ts';
import { streamAnswer } from './generate-stream.ts';

export function registerCompatRoute(app: Hono, service: GenerationService, config: Config): void {
  const schema = createGenerateSchema(config.limits);

  app.post('/', async (c) => {
    const body = await readGenerateBody(c.req.raw, schema);
    if (body.stream === true) return streamAnswer(c, service, config, body);
    return c.json([await generateAnswer(c, service, config, body)]);
  });
}
