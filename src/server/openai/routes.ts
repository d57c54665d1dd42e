/** GET /v1/models, POST /v1/completions, POST /v1/chat/completions — OpenAI-compatible, streaming included. */
import { randomUUID } from 'node:crypto';
import type { Context, Hono } from 'hono';
import type { z } from 'zod';
import type { Config } from '../../config.ts';
import type { FinishReason, GenerateRequest, GenerateResult, GenerationService } from '../../engine/types.ts';
import { HttpError } from '../errors.ts';
import { formatIssues, responseCacheAllowed } from '../schemas.ts';
import { readJsonBody } from '../routes/generate.ts';
import { StopTextFilter, cutAtStop } from '../stop-text.ts';
import { streamTokens } from '../token-stream.ts';
import { chatSchema, completionSchema, stopList, toEngineRequest, type ChatBody, type CompletionBody } from './schemas.ts';

/** The chat template continues after "A:"; a new "Q:" line means the model began the user's next turn. */
const CHAT_TURN_END = '\nQ:';

const finishReason = (r: FinishReason) => (r === 'length' ? 'length' : 'stop');
const usage = (r: GenerateResult) => ({ prompt_tokens: r.promptTokens, completion_tokens: r.generatedTokens, total_tokens: r.promptTokens + r.generatedTokens });
const now = () => Math.floor(Date.now() / 1000);

function parse<T>(schema: z.ZodType<T>, input: unknown): T {
  const result = schema.safeParse(input);
  if (!result.success) throw new HttpError(422, 'validation', formatIssues(result.error.issues, input));
  return result.data;
}

export function registerOpenAiRoutes(app: Hono, service: GenerationService, config: Config): void {
  const modelId = () => service.info().modelId;
  const checkModel = (model: string) => {
    if (model !== modelId()) throw new HttpError(404, 'not_found', `model "${model}" is not served here; GET /v1/models lists "${modelId()}"`);
  };

  app.get('/v1/models', (c) => c.json({ object: 'list', data: [{ id: modelId(), object: 'model', created: 0, owned_by: 'switchyard' }] }));

  app.post('/v1/completions', async (c) => {
    const body = parse<CompletionBody>(completionSchema(config.limits), await readJsonBody(c.req.raw));
    checkModel(body.model);
    const prompt = typeof body.prompt === 'string' ? body.prompt : body.prompt[0];
    const request = toEngineRequest(body, prompt, config.limits);
    const id = `cmpl-${randomUUID()}`;
    const base = { id, object: 'text_completion', created: now(), model: body.model };
    const choice = (text: string, finish: string | null) => ({ text, index: 0, logprobs: null, finish_reason: finish });
    if (body.stream) {
      return streamOpenAi(c, service, request, body, 'text_completion', {
        chunk: (text, finish) => ({ ...base, choices: [choice(text, finish)] }),
        usage: (r) => ({ ...base, choices: [], usage: usage(r) }),
      });
    }
    const result = await service.generate(request, {
      signal: c.req.raw.signal, label: { operation: 'text_completion', stream: false }, cache: responseCacheAllowed(c.req.header('cache-control')),
    });
    return c.json({ ...base, choices: [choice(cutAtStop(result.generatedText, request.stop), finishReason(result.finishReason))], usage: usage(result) });
  });

  app.post('/v1/chat/completions', async (c) => {
    const body = parse<ChatBody>(chatSchema(config.limits), await readJsonBody(c.req.raw));
    checkModel(body.model);
    const request = toEngineRequest(body, service.renderChat(body.messages), config.limits, [CHAT_TURN_END]);
    const id = `chatcmpl-${randomUUID()}`;
    const base = { id, object: 'chat.completion', created: now(), model: body.model };
    if (body.stream) {
      const chunkBase = { ...base, object: 'chat.completion.chunk' };
      return streamOpenAi(c, service, request, body, 'chat', {
        first: { ...chunkBase, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }] },
        chunk: (text, finish) => ({ ...chunkBase, choices: [{ index: 0, delta: finish ? {} : { content: text }, logprobs: null, finish_reason: finish }] }),
        usage: (r) => ({ ...chunkBase, choices: [], usage: usage(r) }),
      });
    }
    const result = await service.generate(request, {
      signal: c.req.raw.signal, label: { operation: 'chat', stream: false }, cache: responseCacheAllowed(c.req.header('cache-control')),
    });
    return c.json({
      ...base,
      choices: [{ index: 0, message: { role: 'assistant', content: cutAtStop(result.generatedText, request.stop).trim() }, logprobs: null, finish_reason: finishReason(result.finishReason) }],
      usage: usage(result),
    });
  });
}

interface ChunkShapes {
  first?: unknown;
  chunk(text: string, finish: string | null): unknown;
  usage(result: GenerateResult): unknown;
}

/** Text chunks (stop sequences held back and cut), a final chunk with finish_reason, optional usage, then [DONE]. */
function streamOpenAi(c: Context, service: GenerationService, request: GenerateRequest, body: CompletionBody | ChatBody, operation: 'text_completion' | 'chat', shapes: ChunkShapes): Response {
  const filter = new StopTextFilter(stopList(body.stop).concat(request.stop.filter((s) => !stopList(body.stop).includes(s))));
  return streamTokens(c, service, request, operation, {
    start: () => (shapes.first ? [shapes.first] : []),
    token: (token, finished) => {
      const events: unknown[] = [];
      const text = token.special ? '' : filter.push(token.text);
      if (text) events.push(shapes.chunk(text, null));
      if (finished) {
        const rest = filter.flush();
        if (rest) events.push(shapes.chunk(rest, null));
        events.push(shapes.chunk('', finishReason(finished.finishReason)));
      }
      return events;
    },
    end: (result) => [...(body.stream_options?.include_usage ? [shapes.usage(result)] : []), '[DONE]'],
  }, { cache: responseCacheAllowed(c.req.header('cache-control')) });
}
