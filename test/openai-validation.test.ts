/**
 * The OpenAI routes over a fake engine (in-process, app.request): how bodies map to engine requests, what is
 * accepted and refused, and that every error on /v1/* has OpenAI's shape.
 */
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { ConfigSchema, type ConfigInput } from '../src/config.ts';
import {
  OverloadedError,
  RequestTimeoutError,
  type ChatMessage,
  type GenerateOptions,
  type GenerateRequest,
  type GenerateResult,
  type GenerationService,
  type GeneratedToken,
  type ModelInfo,
} from '../src/engine/types.ts';
import { createLogger } from '../src/log.ts';
import { createApp } from '../src/server/app.ts';

const CONTEXT = 128;

const INFO: ModelInfo = {
  modelId: 'switchyard-moe', modelDir: '/models/switchyard-moe', modelType: 'olmoe', layers: 4, experts: 8, expertsPerToken: 1,
  hiddenSize: 256, contextLength: CONTEXT, vocabSize: 258,
  parameters: { total: 1, activePerToken: 1, activeFraction: 1 },
  placement: { workers: 1, experts: [] },
  limits: { maxPromptTokens: CONTEXT - 1, maxNewTokens: 40, maxTotalTokens: CONTEXT },
  activeSequences: 0, queuedRequests: 0,
};

/** A fake engine: one token per character of `reply` (then EOS), a prompt token per character; records requests. */
class ScriptedService implements GenerationService {
  requests: GenerateRequest[] = [];
  rendered: ChatMessage[][] = [];
  reply = 'Hi there';
  /** Thrown by admit() (before a stream starts). */
  refuse: Error | null = null;
  /** Thrown by generate() after this many tokens. */
  failAfter: { tokens: number; error: Error } | null = null;

  async generate(request: GenerateRequest, options: GenerateOptions = {}): Promise<GenerateResult> {
    this.requests.push(request);
    const texts = [...this.reply].slice(0, request.maxNewTokens);
    const tokens: GeneratedToken[] = texts.map((text, i) => ({
      id: i, text, logprob: -1, special: false,
      ...(request.topTokens ? { top: [{ id: i, text, logprob: -1, special: false }, { id: 999, text: '?', logprob: -2, special: false }] } : {}),
    }));
    if (tokens.length < request.maxNewTokens) tokens.push({ id: 257, text: '', logprob: -0.5, special: true });
    const result: GenerateResult = {
      generatedText: texts.join(''), finishReason: tokens.length > texts.length ? 'eos_token' : 'length',
      generatedTokens: tokens.length, promptTokens: request.inputs.length, seed: request.sampling.seed, tokens,
    };
    for (const [i, token] of tokens.entries()) {
      if (this.failAfter && i === this.failAfter.tokens) throw this.failAfter.error;
      options.onToken?.(token, i === tokens.length - 1 ? result : null);
    }
    return result;
  }

  admit(): void {
    if (this.refuse) throw this.refuse;
  }

  renderChat(messages: ChatMessage[]): string {
    this.rendered.push(messages);
    return messages.map((m) => `${m.role}:${m.content}|`).join('') + 'A:';
  }

  countPromptTokens(request: GenerateRequest): number {
    return request.inputs.length;
  }

  info(): ModelInfo {
    return INFO;
  }

  async close(): Promise<void> {}
}

function setup(overrides: ConfigInput = {}, options: { shuttingDown?: () => boolean } = {}) {
  const config = ConfigSchema.parse({ ...overrides, limits: { maxNewTokens: 40, maxBodyBytes: 2048, ...overrides.limits } });
  const service = new ScriptedService();
  const app = createApp(service, config, { logger: createLogger({ level: 'silent' }), ...options });
  const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
    app.request(path, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });
  return { app, service, post };
}

const chat = (extra: Record<string, unknown> = {}) => ({ model: 'anything', messages: [{ role: 'user', content: 'Hello' }], ...extra });
const completion = (extra: Record<string, unknown> = {}) => ({ model: 'anything', prompt: 'Once', ...extra });

/** Checks OpenAI's error shape and returns its `error` object. */
async function openAiError(res: Response, status: number) {
  expect(res.status).toBe(status);
  const body = (await res.json()) as { error: { message: string; type: string; param: string | null; code: string | null } };
  expect(Object.keys(body)).toEqual(['error']);
  expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  return body.error;
}

/** The data of each server-sent event. */
async function events(res: Response): Promise<string[]> {
  return (await res.text()).split('\n\n').map((b) => b.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('')).filter(Boolean);
}

describe('chat requests to the engine', () => {
  it('content parts are joined as they are, developer is a system message, names are accepted', async () => {
    const { post, service } = setup();
    const res = await post('/v1/chat/completions', {
      model: 'x',
      messages: [
        { role: 'developer', content: [{ type: 'text', text: 'Be ' }, { type: 'text', text: 'brief.' }], name: 'ops' },
        { role: 'system', content: [{ type: 'text', text: ' S ' }] },
        { role: 'user', content: 'Hi', name: 'ann' },
        { role: 'assistant', content: null, tool_calls: [], refusal: null },
        { role: 'assistant', content: [{ type: 'text', text: 'Yes? ' }] },
      ],
    });
    expect(res.status, await res.clone().text()).toBe(200);
    expect(service.rendered[0]).toEqual([
      { role: 'system', content: 'Be brief.' }, { role: 'system', content: ' S ' }, { role: 'user', content: 'Hi' },
      { role: 'assistant', content: '' }, { role: 'assistant', content: 'Yes? ' },
    ]);
  });

  it('without max_tokens the reply may fill the rest of the context, up to limits.maxNewTokens', async () => {
    const { post, service } = setup();
    await post('/v1/chat/completions', chat());
    const prompt = service.requests[0].inputs.length;
    expect(service.requests[0].maxNewTokens).toBe(Math.min(CONTEXT - prompt, 40));
    await post('/v1/chat/completions', chat({ messages: [{ role: 'user', content: 'x'.repeat(100) }] }));
    expect(service.requests[1].maxNewTokens).toBe(CONTEXT - service.requests[1].inputs.length);
  });

  it('max_completion_tokens is max_tokens; both may be sent when equal', async () => {
    const { post, service } = setup();
    expect((await post('/v1/chat/completions', chat({ max_completion_tokens: 7 }))).status).toBe(200);
    expect((await post('/v1/chat/completions', chat({ max_completion_tokens: 5, max_tokens: 5 }))).status).toBe(200);
    expect(service.requests.map((r) => r.maxNewTokens)).toEqual([7, 5]);
    const err = await openAiError(await post('/v1/chat/completions', chat({ max_completion_tokens: 5, max_tokens: 6 })), 422);
    expect(err).toMatchObject({ type: 'invalid_request_error', param: 'max_completion_tokens' });
    expect(err.message).toMatch(/differs from max_tokens 6/);
  });

  it('a prompt that leaves no room is a 422 naming the fields sent', async () => {
    const { post } = setup();
    const long = [{ role: 'user', content: 'x'.repeat(130) }];
    const none = await openAiError(await post('/v1/chat/completions', chat({ messages: long })), 422);
    expect(none).toMatchObject({ param: 'messages', code: 'context_length_exceeded' });
    expect(none.message).toMatch(/^messages: /);
    expect(none.message).not.toMatch(/max_tokens|max_completion_tokens|max_new_tokens/);

    const fits = [{ role: 'user', content: 'x'.repeat(100) }];
    const sent = await openAiError(await post('/v1/chat/completions', chat({ messages: fits, max_completion_tokens: 30 })), 422);
    expect(sent).toMatchObject({ param: 'max_completion_tokens', code: 'context_length_exceeded' });
    expect(sent.message).toMatch(/^max_completion_tokens: .*messages/);
    expect(sent.message).not.toMatch(/max_tokens\b/);
    const old = await openAiError(await post('/v1/chat/completions', chat({ messages: fits, max_tokens: 30 })), 422);
    expect(old).toMatchObject({ param: 'max_tokens' });
    expect(old.message).not.toMatch(/max_completion_tokens/);
  });

  it('sampling: temperature 0 and top_p 0 are greedy, tiny temperatures pass on, seeds go with sampling only', async () => {
    const { post, service } = setup();
    for (const extra of [{ temperature: 0, seed: 3 }, { top_p: 0 }, { temperature: 1e-7 }, {}, { temperature: 3.5, top_p: 0.9, top_k: 5, seed: 11 }]) {
      expect((await post('/v1/chat/completions', chat(extra))).status).toBe(200);
    }
    expect(service.requests.map((r) => r.sampling)).toEqual([
      { doSample: false, temperature: 1, topK: null, topP: null, typicalP: null, repetitionPenalty: null, seed: null },
      { doSample: false, temperature: 1, topK: null, topP: 0, typicalP: null, repetitionPenalty: null, seed: null },
      { doSample: true, temperature: 1e-7, topK: null, topP: null, typicalP: null, repetitionPenalty: null, seed: null },
      { doSample: true, temperature: 1, topK: null, topP: null, typicalP: null, repetitionPenalty: null, seed: null },
      { doSample: true, temperature: 3.5, topK: 5, topP: 0.9, typicalP: null, repetitionPenalty: null, seed: 11 },
    ]);
  });

  it('n choices: seeds seed + i, indexes 0..n-1, usage counts the prompt once', async () => {
    const { post, service } = setup();
    const res = await post('/v1/chat/completions', chat({ n: 3, seed: 4294967294, temperature: 1 }));
    const body = await res.json();
    expect(body.choices.map((c: { index: number }) => c.index)).toEqual([0, 1, 2]);
    expect(service.requests.map((r) => r.sampling.seed)).toEqual([4294967294, 4294967295, 0]);
    const prompt = service.requests[0].inputs.length;
    expect(body.usage).toEqual({ prompt_tokens: prompt, completion_tokens: 27, total_tokens: prompt + 27 });
  });

  it('logprobs/top_logprobs ask the engine for top tokens; ignore_eos passes on', async () => {
    const { post, service } = setup();
    const body = await (await post('/v1/chat/completions', chat({ logprobs: true, top_logprobs: 2, ignore_eos: true }))).json();
    expect(service.requests[0]).toMatchObject({ topTokens: 2, ignoreEos: true });
    expect(body.choices[0].logprobs.content[0]).toEqual({
      token: 'H', logprob: -1, bytes: [72], top_logprobs: [{ token: 'H', logprob: -1, bytes: [72] }, { token: '?', logprob: -2, bytes: [63] }],
    });
    expect(body.choices[0].logprobs.content.map((t: { token: string }) => t.token).join('')).toBe(body.choices[0].message.content);
    const err = await openAiError(await post('/v1/chat/completions', chat({ top_logprobs: 2 })), 422);
    expect(err).toMatchObject({ param: 'top_logprobs' });
  });

  it('the reply is the model text as it is, and a first-token EOS is an empty "stop" answer', async () => {
    const { post, service } = setup();
    service.reply = '  spaced out \n';
    const body = await (await post('/v1/chat/completions', chat())).json();
    expect(body.choices[0].message).toEqual({ role: 'assistant', content: '  spaced out \n', refusal: null });
    service.reply = '';
    const empty = await (await post('/v1/chat/completions', chat())).json();
    expect(empty.choices[0]).toMatchObject({ message: { content: '' }, finish_reason: 'stop' });
  });
});

describe('completions requests to the engine', () => {
  it("defaults to OpenAI's 16 tokens; TGI extras at the top level are honoured", async () => {
    const { post, service } = setup();
    await post('/v1/completions', completion());
    expect(service.requests[0].maxNewTokens).toBe(16);
    await post('/v1/completions', completion({
      top_k: 4, repetition_penalty: 1.2, typical_p: 0.8, truncate: 3, seed: 9, details: true, watermark: false,
      decoder_input_details: false, top_n_tokens: 2, ignore_eos: true, max_tokens: 5,
    }));
    expect(service.requests[1]).toMatchObject({
      maxNewTokens: 5, truncate: 3, topTokens: 2, ignoreEos: true,
      sampling: { doSample: true, topK: 4, repetitionPenalty: 1.2, typicalP: 0.8, seed: 9 },
    });
  });

  it('do_sample follows TGI: false is greedy unless a warper is set', async () => {
    const { post, service } = setup();
    for (const extra of [{ do_sample: false }, { do_sample: false, temperature: 1 }, { do_sample: false, top_k: 3 }, { do_sample: true }, { do_sample: true, temperature: 0 }]) {
      expect((await post('/v1/completions', completion(extra))).status).toBe(200);
    }
    expect(service.requests.map((r) => r.sampling.doSample)).toEqual([false, false, true, true, false]);
  });

  it('batch prompts × n choices, echo and return_full_text, logprobs with text offsets', async () => {
    const { post } = setup();
    const body = await (await post('/v1/completions', completion({ prompt: ['A', 'B'], n: 2, max_tokens: 2, logprobs: 1 }))).json();
    expect(body.choices.map((c: { index: number; text: string }) => [c.index, c.text])).toEqual([[0, 'Hi'], [1, 'Hi'], [2, 'Hi'], [3, 'Hi']]);
    expect(body.choices[0].logprobs).toEqual({
      tokens: ['H', 'i'], token_logprobs: [-1, -1], top_logprobs: [{ H: -1 }, { i: -1 }], text_offset: [0, 1],
    });
    expect(body.usage.prompt_tokens).toBe(2);
    for (const flag of ['echo', 'return_full_text']) {
      const echoed = await (await post('/v1/completions', completion({ prompt: 'Say: ', max_tokens: 2, [flag]: true }))).json();
      expect(echoed.choices[0].text).toBe('Say: Hi');
    }
  });

  it('an empty or null prompt starts from nothing', async () => {
    const { post, service } = setup();
    expect((await post('/v1/completions', completion({ prompt: '' }))).status).toBe(200);
    expect((await post('/v1/completions', completion({ prompt: null }))).status).toBe(200);
    expect(service.requests.map((r) => r.inputs)).toEqual(['', '']);
  });
});

describe('what the official clients send', () => {
  const neutralChat = {
    frequency_penalty: 0, presence_penalty: 0, logit_bias: {}, response_format: { type: 'text' }, tools: [], tool_choice: 'none',
    functions: [], function_call: 'auto', parallel_tool_calls: true, service_tier: 'auto', store: false, metadata: { a: 'b' },
    modalities: ['text'], user: 'u', stream_options: null, stop: ['x', 'y'], seed: 1, n: 1, prompt_cache_key: 'k', safety_identifier: 's',
    reasoning_effort: null, verbosity: null, audio: null, prediction: null, web_search_options: null, tool_prompt: '',
  };

  it('neutral values of features this server does not have are accepted', async () => {
    const { post } = setup();
    expect((await post('/v1/chat/completions', chat(neutralChat))).status).toBe(200);
    expect((await post('/v1/completions', completion({
      frequency_penalty: 0, presence_penalty: 0, logit_bias: {}, suffix: null, best_of: 1, echo: false, stop: 'x', user: 'u',
      adapter_id: null, grammar: null,
    }))).status).toBe(200);
  });

  it.each([
    ['presence_penalty', 0.5], ['frequency_penalty', -1], ['logit_bias', { 50: 10 }], ['response_format', { type: 'json_object' }],
    ['tools', [{ type: 'function', function: { name: 'f' } }]], ['tool_choice', 'required'], ['store', true], ['modalities', ['text', 'audio']],
    ['reasoning_effort', 'high'], ['audio', { voice: 'alloy', format: 'mp3' }],
  ])('chat %s = %j is a 422 naming the field as not supported', async (field, value) => {
    const { post } = setup();
    const err = await openAiError(await post('/v1/chat/completions', chat({ [field]: value })), 422);
    expect(err).toMatchObject({ type: 'invalid_request_error', param: field, code: 'unsupported_value' });
    expect(err.message).toMatch(new RegExp(`^${field}: is not supported`));
  });

  it.each([['suffix', 'tail'], ['best_of', 3], ['watermark', true], ['grammar', { type: 'json', value: {} }], ['presence_penalty', 1]])(
    'completions %s = %j is a 422 naming the field as not supported', async (field, value) => {
      const { post } = setup();
      const err = await openAiError(await post('/v1/completions', completion({ [field]: value })), 422);
      expect(err).toMatchObject({ param: field, code: 'unsupported_value' });
      expect(err.message).toMatch(/not supported/);
    },
  );

  it('other content parts and tool messages are refused by name', async () => {
    const { post } = setup();
    const image = await openAiError(await post('/v1/chat/completions', chat({
      messages: [{ role: 'user', content: [{ type: 'text', text: 'What is this?' }, { type: 'image_url', image_url: { url: 'data:' } }] }],
    })), 422);
    expect(image).toMatchObject({ param: 'messages[0].content[1]', code: 'unsupported_value' });
    expect(image.message).toMatch(/"image_url" content parts are not supported/);
    const tool = await openAiError(await post('/v1/chat/completions', chat({ messages: [{ role: 'tool', content: 'x', tool_call_id: 'c' }] })), 422);
    expect(tool.param).toBe('messages[0].role');
    expect(tool.message).toMatch(/"tool" messages are not supported/);
  });

  it("an unknown field's message lists that endpoint's fields", async () => {
    const { post } = setup();
    const c = await openAiError(await post('/v1/chat/completions', chat({ temprature: 1 })), 422);
    expect(c).toMatchObject({ param: 'temprature', code: 'unknown_parameter' });
    expect(c.message).toMatch(/POST \/v1\/chat\/completions accepts: .*messages.*max_completion_tokens/);
    expect(c.message).not.toMatch(/inputs|parameters, options/);
    const p = await openAiError(await post('/v1/completions', completion({ inputs: 'x' })), 422);
    expect(p).toMatchObject({ param: 'inputs', code: 'unknown_parameter' });
    expect(p.message).toMatch(/POST \/v1\/completions accepts: model, .*prompt/);
    const m = await openAiError(await post('/v1/chat/completions', chat({ messages: [{ role: 'user', content: 'x', weight: 1 }] })), 422);
    expect(m.param).toBe('messages[0].weight');
    expect(m.message).toMatch(/messages\[0\] accepts: role, content, name/);
  });

  it('token-id prompts are refused; bad values name the field', async () => {
    const { post } = setup();
    expect(await openAiError(await post('/v1/completions', completion({ prompt: [1, 2, 3] })), 422)).toMatchObject({ param: 'prompt', code: 'unsupported_value' });
    expect(await openAiError(await post('/v1/completions', completion({ logprobs: 6 })), 422)).toMatchObject({ param: 'logprobs', code: 'invalid_value' });
    expect(await openAiError(await post('/v1/chat/completions', chat({ n: 0 })), 422)).toMatchObject({ param: 'n' });
    expect(await openAiError(await post('/v1/chat/completions', chat({ messages: [{ role: 'user' }] })), 422)).toMatchObject({ param: 'messages[0].content' });
    expect(await openAiError(await post('/v1/chat/completions', '{"messages": ['), 422)).toMatchObject({ param: null });
  });
});

describe('the model field', () => {
  it('any model id is served and the response names the served model', async () => {
    const { post } = setup();
    const body = await (await post('/v1/chat/completions', chat({ model: 'http://localhost:8080/v1' }))).json();
    expect(body.model).toBe('switchyard-moe');
    expect((await post('/v1/completions', { prompt: 'no model field' })).status).toBe(200);
  });

  it('openai.strictModel: another id is a 404 model_not_found', async () => {
    const { post } = setup({ openai: { strictModel: true } });
    const err = await openAiError(await post('/v1/chat/completions', chat({ model: 'gpt-4o' })), 404);
    expect(err).toMatchObject({ type: 'invalid_request_error', param: 'model', code: 'model_not_found' });
    expect((await post('/v1/chat/completions', chat({ model: 'switchyard-moe' }))).status).toBe(200);
  });
});

describe('errors on /v1/* have OpenAI\'s shape', () => {
  it('413 for a body over limits.maxBodyBytes', async () => {
    const { post } = setup();
    const err = await openAiError(await post('/v1/completions', completion({ prompt: 'x'.repeat(3000) })), 413);
    expect(err.type).toBe('invalid_request_error');
  });

  it('429 with Retry-After when the queue is full, streamed or not', async () => {
    const { post, service } = setup();
    service.refuse = new OverloadedError('the queue is full', 2);
    for (const stream of [true, false]) {
      // Non-streamed requests reach generate(), which a real engine refuses the same way.
      if (!stream) service.failAfter = { tokens: 0, error: new OverloadedError('the queue is full', 2) };
      const res = await post('/v1/chat/completions', chat({ stream }));
      expect(res.headers.get('retry-after')).toBe('2');
      expect(await openAiError(res, 429)).toMatchObject({ type: 'rate_limit_error', code: 'overloaded' });
    }
  });

  it('503 for requests that arrive during a shutdown', async () => {
    const { post } = setup({}, { shuttingDown: () => true });
    expect(await openAiError(await post('/v1/chat/completions', chat()), 503)).toMatchObject({ type: 'server_error' });
  });

  it('404 and 405 under /v1', async () => {
    const { app, post } = setup();
    expect((await openAiError(await post('/v1/embeddings', {}), 404)).type).toBe('invalid_request_error');
    const res = await app.request('/v1/chat/completions', { method: 'GET' });
    expect(res.headers.get('allow')).toBe('POST');
    await openAiError(res, 405);
  });

  it('a failure after the stream began is an OpenAI error event, and no [DONE]', async () => {
    const { post, service } = setup();
    service.failAfter = { tokens: 3, error: new RequestTimeoutError('the request ran past limits.requestTimeoutMs') };
    const res = await post('/v1/chat/completions', chat({ stream: true }));
    expect(res.status).toBe(200);
    const data = await events(res);
    expect(data).not.toContain('[DONE]');
    const last = JSON.parse(data[data.length - 1]);
    expect(last).toEqual({ error: { message: expect.stringMatching(/requestTimeoutMs/), type: 'server_error', param: null, code: 'generation' } });
  });

  it('the openai SDK throws a mid-stream error event as an APIError with its type and code', async () => {
    const { app, service } = setup();
    service.failAfter = { tokens: 2, error: new RequestTimeoutError('the request ran past limits.requestTimeoutMs') };
    const client = new OpenAI({
      baseURL: 'http://gateway/v1', apiKey: 'x', maxRetries: 0,
      fetch: async (url: string | URL | Request, init?: RequestInit) => app.request(String(url), init),
    });
    const stream = await client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'Hello' }], stream: true });
    const seen: string[] = [];
    const err = await (async () => {
      for await (const chunk of stream) seen.push(chunk.choices[0]?.delta.content ?? '');
    })().catch((e: unknown) => e);
    expect(seen.join('')).toBe('Hi');
    expect(err).toBeInstanceOf(OpenAI.APIError);
    expect(err).toMatchObject({ type: 'server_error', code: 'generation', message: expect.stringMatching(/requestTimeoutMs/) });
  });

  it('TGI routes keep their own shape', async () => {
    const { post } = setup();
    const body = await (await post('/generate', { inputs: 'x', parameters: { max_new_tokens: 0 } })).json();
    expect(Object.keys(body).sort()).toEqual(['error', 'error_type']);
  });
});

describe('streaming', () => {
  it('streamed text equals the non-streamed text, with stop sequences cut alike', async () => {
    const { post, service } = setup();
    service.reply = 'one two. three';
    for (const stop of [undefined, '.', ['wo', 'x'], 'nothing']) {
      const plain = await (await post('/v1/chat/completions', chat({ stop }))).json();
      const chunks = (await events(await post('/v1/chat/completions', chat({ stop, stream: true })))).slice(0, -1).map((d) => JSON.parse(d));
      expect(chunks.map((c) => c.choices[0].delta.content ?? '').join('')).toBe(plain.choices[0].message.content);
      const text = await (await post('/v1/completions', completion({ stop, max_tokens: 20 }))).json();
      const tchunks = (await events(await post('/v1/completions', completion({ stop, max_tokens: 20, stream: true })))).slice(0, -1).map((d) => JSON.parse(d));
      expect(tchunks.map((c) => c.choices[0].text).join('')).toBe(text.choices[0].text);
    }
  });

  it('n > 1 streams each choice with its index, usage at the end with include_usage', async () => {
    const { post } = setup();
    const data = await events(await post('/v1/chat/completions', chat({ n: 2, stream: true, stream_options: { include_usage: true } })));
    expect(data[data.length - 1]).toBe('[DONE]');
    const chunks = data.slice(0, -1).map((d) => JSON.parse(d));
    const usage = chunks.pop();
    expect(usage.choices).toEqual([]);
    expect(usage.usage.completion_tokens).toBe(18);
    for (const index of [0, 1]) {
      const mine = chunks.filter((c) => c.choices[0].index === index);
      expect(mine[0].choices[0].delta).toEqual({ role: 'assistant', content: '' });
      expect(mine.map((c) => c.choices[0].delta.content ?? '').join('')).toBe('Hi there');
      expect(mine[mine.length - 1].choices[0]).toMatchObject({ delta: {}, finish_reason: 'stop' });
    }
    expect(chunks.every((c) => c.usage === null)).toBe(true);
  });
});
