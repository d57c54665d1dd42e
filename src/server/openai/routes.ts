/**
 * GET /v1/models, POST /v1/completions, POST /v1/chat/completions: OpenAI's API (openai-node 6 request and response
 * shapes), streamed or not, with logprobs, n choices and OpenAI-shaped errors. See README "API".
 */
import { randomUUID } from 'node:crypto';
import type { Context, Hono } from 'hono';
import type { Config } from '../../config.ts';
import type { GenerationService } from '../../engine/types.ts';
import { responseCacheAllowed } from '../schemas.ts';
import type { ChoiceDelta } from './choice-text.ts';
import { OpenAiRequestError, openAiErrorResponse } from './errors.ts';
import { chatLogprobs, CompletionLogprobsBuilder } from './logprobs.ts';
import { planChat, planCompletion, type ChoicePlan } from './request.ts';
import { finishReasonOf, runChoices, streamChoices, type FinishedChoice } from './run.ts';
import { parseChatBody, parseCompletionBody, templateMessages } from './schemas.ts';

/** The chat template continues after "A:"; a new "Q:" line means the model began the user's next turn. */
const CHAT_TURN_END = '\nQ:';

const now = () => Math.floor(Date.now() / 1000);

/** Prompt tokens count once per prompt (not per choice), completion tokens for every choice, as OpenAI bills. */
function usageOf(finished: FinishedChoice[]) {
  const prompts = new Map<number, number>();
  let completion = 0;
  for (const f of finished) {
    prompts.set(f.plan.promptIndex, f.result.promptTokens);
    completion += f.result.generatedTokens;
  }
  const prompt = [...prompts.values()].reduce((a, b) => a + b, 0);
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

/** Reads the body as JSON whatever the Content-Type says (clients differ); malformed JSON is a 422. */
async function readJson(c: Context): Promise<unknown> {
  const text = await c.req.text();
  if (text.trim() === '') throw new OpenAiRequestError('request body is empty; send a JSON object', null, 'invalid_value');
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new OpenAiRequestError(`request body is not valid JSON: ${(err as Error).message}`, null, 'invalid_value');
  }
}

export function registerOpenAiRoutes(app: Hono, service: GenerationService, config: Config): void {
  const modelId = () => service.info().modelId;
  // As TGI: one model is loaded and serves every request, whatever `model` says (clients send a name or a URL).
  const checkModel = (model: string | null | undefined) => {
    if (config.openai.strictModel && model !== modelId()) {
      throw new OpenAiRequestError(
        `model ${JSON.stringify(model ?? null)} is not served here; GET /v1/models lists "${modelId()}"`, 'model', 'model_not_found', 404);
    }
  };
  const maxN = config.limits.maxBatchSequences;
  const cacheOf = (c: Context) => responseCacheAllowed(c.req.header('cache-control'));

  app.get('/v1/models', (c) => c.json({ object: 'list', data: [{ id: modelId(), object: 'model', created: 0, owned_by: 'switchyard' }] }));

  app.post('/v1/completions', async (c) => {
    try {
      const body = parseCompletionBody(await readJson(c), config.limits, maxN);
      checkModel(body.model);
      const prompts = body.prompt == null ? [''] : typeof body.prompt === 'string' ? [body.prompt] : (body.prompt as string[]);
      const plan = planCompletion(service, config.limits, body, prompts);
      // `echo` (OpenAI) and `return_full_text` (TGI) put the prompt before the completion.
      const echo = (choice: ChoicePlan) => (body.echo || body.return_full_text ? prompts[choice.promptIndex] : '');
      const base = { id: `cmpl-${randomUUID()}`, object: 'text_completion', created: now(), model: modelId() };
      const builders = new Map<number, CompletionLogprobsBuilder>();
      const logprobs = (choice: ChoicePlan, delta: ChoiceDelta) => {
        if (plan.logprobs === null) return null;
        if (!builders.has(choice.index)) builders.set(choice.index, new CompletionLogprobsBuilder(plan.logprobs, [...echo(choice)].length));
        return builders.get(choice.index)!.add(delta.tokens);
      };
      const choice = (plan: ChoicePlan, text: string, lp: unknown, finish: string | null) => ({ text, index: plan.index, logprobs: lp, finish_reason: finish });

      if (body.stream) {
        const includeUsage = body.stream_options?.include_usage === true;
        // With include_usage, every chunk has `usage: null` but the last (as OpenAI).
        const chunk = (choices: unknown[]) => ({ ...base, choices, ...(includeUsage ? { usage: null } : {}) });
        return streamChoices(c, service, plan, { operation: 'text_completion', cache: cacheOf(c), responseId: base.id }, {
          start: (p) => (echo(p) ? [chunk([choice(p, echo(p), null, null)])] : []),
          delta: (p, delta) => [chunk([choice(p, delta.text, logprobs(p, delta), null)])],
          finish: (p, result) => [chunk([choice(p, '', null, finishReasonOf(result))])],
          end: (finished) => (includeUsage ? [{ ...base, choices: [], usage: usageOf(finished) }] : []),
        });
      }
      const finished = await runChoices(c, service, plan, { operation: 'text_completion', cache: cacheOf(c), responseId: base.id });
      return c.json({
        ...base,
        choices: finished.map((f) => choice(f.plan, echo(f.plan) + f.output.text, logprobs(f.plan, f.output), finishReasonOf(f.result))),
        usage: usageOf(finished),
      });
    } catch (err) {
      return openAiErrorResponse(c, err);
    }
  });

  app.post('/v1/chat/completions', async (c) => {
    try {
      const body = parseChatBody(await readJson(c), config.limits, maxN);
      checkModel(body.model);
      const plan = planChat(service, config.limits, body, service.renderChat(templateMessages(body.messages)), [CHAT_TURN_END]);
      const base = { id: `chatcmpl-${randomUUID()}`, object: 'chat.completion', created: now(), model: modelId() };
      const logprobs = (delta: ChoiceDelta) => (plan.logprobs === null ? null : chatLogprobs(delta.tokens, plan.logprobs));

      if (body.stream) {
        const includeUsage = body.stream_options?.include_usage === true;
        const chunk = (p: ChoicePlan, delta: object, lp: unknown, finish: string | null) => ({
          ...base, object: 'chat.completion.chunk',
          choices: [{ index: p.index, delta, logprobs: lp, finish_reason: finish }],
          ...(includeUsage ? { usage: null } : {}),
        });
        return streamChoices(c, service, plan, { operation: 'chat', cache: cacheOf(c), responseId: base.id }, {
          start: (p) => [chunk(p, { role: 'assistant', content: '' }, null, null)],
          delta: (p, delta) => [chunk(p, { content: delta.text }, logprobs(delta), null)],
          finish: (p, result) => [chunk(p, {}, null, finishReasonOf(result))],
          end: (finished) => (includeUsage ? [{ ...base, object: 'chat.completion.chunk', choices: [], usage: usageOf(finished) }] : []),
        });
      }
      const finished = await runChoices(c, service, plan, { operation: 'chat', cache: cacheOf(c), responseId: base.id });
      return c.json({
        ...base,
        choices: finished.map((f) => ({
          index: f.plan.index,
          // The model's text as it is (no trimming): the same as the streamed deltas, concatenated.
          message: { role: 'assistant', content: f.output.text, refusal: null },
          logprobs: logprobs(f.output),
          finish_reason: finishReasonOf(f.result),
        })),
        usage: usageOf(finished),
      });
    } catch (err) {
      return openAiErrorResponse(c, err);
    }
  });
}
