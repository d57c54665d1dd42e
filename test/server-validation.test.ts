import { describe, expect, it } from 'vitest';
import { ConfigSchema, type Config } from '../src/config.ts';
import {
  InvalidRequestError,
  OverloadedError,
  RequestTimeoutError,
  type GenerateOptions,
  type GenerateRequest,
  type GenerateResult,
  type GenerationService,
  type ModelInfo,
} from '../src/engine/types.ts';
import { createLogger, type LogFields } from '../src/log.ts';
import { createApp } from '../src/server/app.ts';

const INFO: ModelInfo = {
  modelId: 'switchyard-moe',
  modelDir: '/secret/path/models/switchyard-moe',
  modelType: 'olmoe',
  layers: 4,
  experts: 8,
  expertsPerToken: 1,
  hiddenSize: 256,
  contextLength: 512,
  vocabSize: 4096,
  parameters: { total: 13_800_000, activePerToken: 2_760_000, activeFraction: 0.2 },
  placement: { workers: 2, experts: [{ layer: 0, expert: 0, workers: [0] }, { layer: 0, expert: 1, workers: [1, 0] }] },
  limits: { maxPromptTokens: 511, maxNewTokens: 256, maxTotalTokens: 512 },
  activeSequences: 3,
  queuedRequests: 1,
};

/** A fake engine: records each call, echoes the request back as text, or fails as told. */
class FakeService implements GenerationService {
  calls: Array<{ request: GenerateRequest; options?: GenerateOptions }> = [];
  failWith: Error | null = null;

  async generate(request: GenerateRequest, options?: GenerateOptions): Promise<GenerateResult> {
    this.calls.push({ request, options });
    if (this.failWith) {
      const err = this.failWith;
      this.failWith = null; // fail once, then recover
      throw err;
    }
    return {
      generatedText: ` echo:${request.inputs}`,
      finishReason: 'length',
      generatedTokens: 2,
      promptTokens: 5,
      seed: request.sampling.doSample ? (request.sampling.seed ?? 42) : null,
      tokens: [
        { id: 7, text: ' echo', logprob: -0.5, special: false },
        { id: 9, text: ':', logprob: -1.25, special: false },
      ],
    };
  }

  admit(): void {}

  renderChat(messages: Array<{ role: string; content: string }>): string {
    return messages.map((m) => `${m.role}: ${m.content}\n`).join('') + 'assistant:';
  }

  info(): ModelInfo {
    return INFO;
  }

  async close(): Promise<void> {}
}

function setup(limits: Partial<Config['limits']> = {}) {
  const config = ConfigSchema.parse({ limits: { maxBodyBytes: 1024, ...limits } });
  const service = new FakeService();
  const logged: LogFields[] = [];
  const logger = createLogger({ level: 'debug', write: (line) => logged.push(JSON.parse(line)) });
  const app = createApp(service, config, { logger });
  const post = (body: unknown, init: RequestInit = {}) =>
    app.request('/generate', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: typeof body === 'string' ? body : JSON.stringify(body),
      ...init,
    });
  return { app, service, post, logged, config };
}

async function expectError(res: Response, status: number, errorType: string, ...fragments: Array<string | RegExp>) {
  expect(res.status).toBe(status);
  expect(res.headers.get('content-type')).toMatch(/application\/json/);
  const body = (await res.json()) as { error: string; error_type: string };
  expect(Object.keys(body).sort()).toEqual(['error', 'error_type']);
  expect(body.error_type).toBe(errorType);
  for (const f of fragments) expect(body.error).toMatch(f);
  return body;
}

describe('POST /generate: mapping to the engine', () => {
  it('maps snake_case parameters to the engine request', async () => {
    const { post, service } = setup();
    const res = await post({
      inputs: 'Call me Ishmael',
      parameters: {
        max_new_tokens: 7,
        do_sample: true,
        temperature: 0.7,
        top_k: 40,
        top_p: 0.9,
        repetition_penalty: 1.1,
        seed: 4294967295,
        stop: ['\n', 'END'],
      },
    });
    expect(res.status).toBe(200);
    expect(service.calls).toHaveLength(1);
    expect(service.calls[0].request).toEqual({
      inputs: 'Call me Ishmael',
      maxNewTokens: 7,
      sampling: { doSample: true, temperature: 0.7, topK: 40, topP: 0.9, typicalP: null, repetitionPenalty: 1.1, seed: 4294967295 },
      stop: ['\n', 'END'],
    });
    expect(service.calls[0].options?.signal).toBeInstanceOf(AbortSignal);
  });

  it('fills in defaults: max_new_tokens from limits.defaultMaxNewTokens, greedy, temperature 1', async () => {
    const { post, service } = setup({ defaultMaxNewTokens: 11 });
    const res = await post({ inputs: 'x' });
    expect(res.status).toBe(200);
    expect(service.calls[0].request).toEqual({
      inputs: 'x',
      maxNewTokens: 11,
      sampling: { doSample: false, temperature: 1, topK: null, topP: null, typicalP: null, repetitionPenalty: null, seed: null },
      stop: [],
    });
  });

  it('treats null parameters as not set (as TGI clients send them)', async () => {
    const { post, service } = setup();
    const res = await post({ inputs: 'x', parameters: { seed: null, top_k: null, stop: null, max_new_tokens: null } });
    expect(res.status).toBe(200);
    expect(service.calls[0].request.sampling.seed).toBeNull();
    expect(service.calls[0].request.sampling.topK).toBeNull();
    expect(service.calls[0].request.stop).toEqual([]);
    expect(service.calls[0].request.maxNewTokens).toBe(20);
  });

  it('answers only generated_text without details', async () => {
    const { post } = setup();
    const res = await post({ inputs: 'abc', parameters: { details: false } });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ generated_text: ' echo:abc' });
  });

  it('adds details (finish reason, counts, seed, tokens) when parameters.details is true', async () => {
    const { post } = setup();
    const greedy = await post({ inputs: 'abc', parameters: { details: true } });
    expect(greedy.status).toBe(200);
    expect(await greedy.json()).toEqual({
      generated_text: ' echo:abc',
      details: {
        finish_reason: 'length',
        generated_tokens: 2,
        seed: null,
        prompt_tokens: 5,
        prefill: [],
        tokens: [
          { id: 7, text: ' echo', logprob: -0.5, special: false },
          { id: 9, text: ':', logprob: -1.25, special: false },
        ],
      },
    });
    const sampled = await post({ inputs: 'abc', parameters: { details: true, do_sample: true, seed: 5 } });
    expect(((await sampled.json()) as { details: { seed: number } }).details.seed).toBe(5);
  });

  it('accepts a JSON body sent with another Content-Type', async () => {
    const { post } = setup();
    const res = await post({ inputs: 'abc' }, { headers: { 'content-type': 'text/plain' } });
    expect(res.status).toBe(200);
  });
});

describe('POST /generate: validation (422)', () => {
  it('rejects a body that is not JSON', async () => {
    const { post, service } = setup();
    await expectError(await post('{"inputs": "x",'), 422, 'validation', /^body is not valid JSON: /);
    expect(service.calls).toHaveLength(0);
  });

  it('rejects an empty body and says what to send', async () => {
    const { post } = setup();
    await expectError(await post(''), 422, 'validation', /request body is empty/, /"inputs"/);
  });

  it('rejects a body that is JSON but not an object', async () => {
    const { post } = setup();
    await expectError(await post([1, 2]), 422, 'validation', /request body: must be a JSON object/);
  });

  it('rejects missing and wrongly typed inputs', async () => {
    const { post } = setup();
    await expectError(await post({ parameters: {} }), 422, 'validation', /inputs: is required and must be a string/);
    await expectError(await post({ inputs: 42 }), 422, 'validation', /inputs: .*must be a string.*\(got 42\)/);
  });

  it('rejects empty inputs', async () => {
    const { post } = setup();
    await expectError(await post({ inputs: '' }), 422, 'validation', /inputs: must not be empty/);
  });

  it('rejects wrongly typed parameters, naming each field', async () => {
    const { post, service } = setup();
    await expectError(
      await post({ inputs: 'x', parameters: { do_sample: 'yes', temperature: '0.5', top_k: 2.5 } }),
      422,
      'validation',
      /parameters\.do_sample: must be true or false \(got "yes"\)/,
      /parameters\.temperature: must be a finite number greater than 0 \(got "0\.5"\)/,
      /parameters\.top_k: must be an integer greater than 0 \(got 2\.5\)/,
    );
    await expectError(await post({ inputs: 'x', parameters: 'fast' }), 422, 'validation', /parameters: must be an object/);
    expect(service.calls).toHaveLength(0);
  });

  it.each([
    [0, '0'],
    [-3, '-3'],
    [257, '257'],
    [2.5, '2.5'],
  ])('rejects max_new_tokens %s with the allowed range', async (value, shown) => {
    const { post } = setup();
    await expectError(
      await post({ inputs: 'x', parameters: { max_new_tokens: value } }),
      422,
      'validation',
      new RegExp(`parameters\\.max_new_tokens: must be an integer from 1 to 256 .*\\(got ${shown.replace('.', '\\.')}\\)`),
    );
  });

  it('accepts max_new_tokens at the limit', async () => {
    const { post, service } = setup();
    expect((await post({ inputs: 'x', parameters: { max_new_tokens: 256 } })).status).toBe(200);
    expect(service.calls[0].request.maxNewTokens).toBe(256);
  });

  it('rejects out-of-range sampling parameters', async () => {
    const { post } = setup();
    await expectError(
      await post({ inputs: 'x', parameters: { temperature: 0, top_p: 1.5, repetition_penalty: -1, seed: 2 ** 32 } }),
      422,
      'validation',
      /parameters\.temperature: must be a finite number greater than 0 \(got 0\)/,
      /parameters\.top_p: must be a number greater than 0 and less than 1 \(got 1\.5\)/,
      /parameters\.repetition_penalty: must be a finite number greater than 0/,
      /parameters\.seed: must be an integer from 0 to 4294967295 \(got 4294967296\)/,
    );
  });

  it('rejects an unknown top-level key, naming it and the allowed ones', async () => {
    const { post } = setup();
    await expectError(
      await post({ inputs: 'x', model: 'gpt2' }),
      422,
      'validation',
      /unknown field "model"; allowed at the top level: inputs, parameters, stream, options/,
    );
  });

  it('rejects an unknown parameter, naming it and the supported ones', async () => {
    const { post } = setup();
    await expectError(
      await post({ inputs: 'x', parameters: { num_beams: 2, max_new_tokens: 3 } }),
      422,
      'validation',
      /unknown field "parameters\.num_beams"; allowed in parameters: max_new_tokens, do_sample/,
    );
  });

  it('rejects too many, empty and too long stop sequences', async () => {
    const { post } = setup({ maxStopSequences: 2, maxStopSequenceLength: 5 });
    await expectError(
      await post({ inputs: 'x', parameters: { stop: ['a', 'b', 'c'] } }),
      422,
      'validation',
      /parameters\.stop: may hold at most 2 stop sequences \(got an array of 3\)/,
    );
    await expectError(
      await post({ inputs: 'x', parameters: { stop: ['ok', ''] } }),
      422,
      'validation',
      /parameters\.stop\[1\]: must be a non-empty string of at most 5 characters \(got ""\)/,
    );
    await expectError(
      await post({ inputs: 'x', parameters: { stop: ['toolong'] } }),
      422,
      'validation',
      /parameters\.stop\[0\]: must be a non-empty string of at most 5 characters \(got "toolong"\)/,
    );
    await expectError(
      await post({ inputs: 'x', parameters: { stop: 'END' } }),
      422,
      'validation',
      /parameters\.stop: must be an array of strings/,
    );
  });
});

describe('POST /generate: body size (413)', () => {
  it('rejects a body over limits.maxBodyBytes', async () => {
    const { post, service } = setup();
    const res = await post({ inputs: 'x'.repeat(2000) });
    await expectError(res, 413, 'validation', /larger than 1024 bytes \(limits\.maxBodyBytes\)/);
    expect(service.calls).toHaveLength(0);
  });

  it('rejects a declared Content-Length over the limit without reading the body', async () => {
    const { post, service } = setup();
    const res = await post({ inputs: 'x' }, { headers: { 'content-type': 'application/json', 'content-length': '5000' } });
    await expectError(res, 413, 'validation', /larger than 1024 bytes/);
    expect(service.calls).toHaveLength(0);
  });

  it('rejects a streamed body without Content-Length once it passes the limit', async () => {
    const { app, service } = setup();
    const chunk = new TextEncoder().encode(`{"inputs": "${'y'.repeat(600)}`);
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(chunk);
        controller.enqueue(chunk);
        controller.close();
      },
    });
    const request = new Request('http://localhost/generate', {
      method: 'POST',
      body: stream,
      duplex: 'half',
    } as RequestInit);
    expect(request.headers.has('content-length')).toBe(false);
    await expectError(await app.request(request), 413, 'validation', /larger than 1024 bytes/);
    expect(service.calls).toHaveLength(0);
  });

  it('accepts a streamed body under the limit', async () => {
    const { app, service } = setup();
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new TextEncoder().encode('{"inputs": '));
        controller.enqueue(new TextEncoder().encode('"streamed"}'));
        controller.close();
      },
    });
    const request = new Request('http://localhost/generate', { method: 'POST', body: stream, duplex: 'half' } as RequestInit);
    const res = await app.request(request);
    expect(res.status).toBe(200);
    expect(service.calls[0].request.inputs).toBe('streamed');
  });
});

describe('POST /generate: engine errors', () => {
  it('maps InvalidRequestError to 422 validation with the engine message', async () => {
    const { post, service } = setup();
    service.failWith = new InvalidRequestError('the prompt is 900 tokens; at most 511 are accepted');
    await expectError(await post({ inputs: 'long' }), 422, 'validation', /the prompt is 900 tokens; at most 511/);
  });

  it('maps OverloadedError to 429 overloaded with Retry-After', async () => {
    const { post, service } = setup();
    service.failWith = new OverloadedError('the request queue is full (64 waiting)', 2.5);
    const res = await post({ inputs: 'x' });
    expect(res.headers.get('retry-after')).toBe('3');
    await expectError(res, 429, 'overloaded', /the request queue is full/, /retry after 3 s/);
  });

  it('maps an unexpected error to 500 internal without leaking it, logs it, and keeps serving', async () => {
    const { post, service, logged } = setup();
    service.failWith = new Error('kaboom in expert 3');
    const body = await expectError(await post({ inputs: 'x' }), 500, 'internal', /internal server error \(error id [0-9a-f-]{36}\)/);
    expect(body.error).not.toContain('kaboom');
    const entry = logged.find((l) => l.msg === 'unhandled error');
    expect(entry).toBeDefined();
    expect(entry?.level).toBe('error');
    expect(body.error).toContain(String(entry?.error_id));
    expect((entry?.err as { message: string }).message).toBe('kaboom in expert 3');

    const next = await post({ inputs: 'again' });
    expect(next.status).toBe(200);
    expect(await next.json()).toEqual({ generated_text: ' echo:again' });
  });

  it("maps the engine's request timeout to 503 generation", async () => {
    const { post, service } = setup();
    service.failWith = new RequestTimeoutError('generation took longer than 120000 ms');
    await expectError(await post({ inputs: 'x' }), 503, 'generation', /took longer than 120000 ms/);
  });

  it("passes the request's abort signal to the engine", async () => {
    const { app, service } = setup();
    const controller = new AbortController();
    const res = await app.request('/generate', {
      method: 'POST',
      body: JSON.stringify({ inputs: 'x' }),
      signal: controller.signal,
    });
    expect(res.status).toBe(200);
    const signal = service.calls[0].options?.signal;
    expect(signal?.aborted).toBe(false);
    controller.abort();
    expect(signal?.aborted).toBe(true);
  });
});

describe('GET /health, GET /info, unknown routes', () => {
  it('GET /health answers ok', async () => {
    const { app } = setup();
    const res = await app.request('/health');
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: 'ok' });
  });

  it('GET /info serialises ModelInfo in snake_case', async () => {
    const { app } = setup();
    const res = await app.request('/info');
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({
      model_id: 'switchyard-moe',
      model_type: 'olmoe',
      layers: 4,
      experts: 8,
      experts_per_token: 1,
      hidden_size: 256,
      context_length: 512,
      vocab_size: 4096,
      parameters: { total: 13_800_000, active_per_token: 2_760_000, active_fraction: 0.2 },
      placement: {
        workers: 2,
        experts: [
          { layer: 0, expert: 0, workers: [0] },
          { layer: 0, expert: 1, workers: [1, 0] },
        ],
      },
      limits: { max_prompt_tokens: 511, max_new_tokens: 256, max_total_tokens: 512 },
      active_sequences: 3,
      queued_requests: 1,
    });
  });

  it('answers an unknown route with 404 not_found JSON listing the routes', async () => {
    const { app } = setup();
    await expectError(await app.request('/v2/nothing'), 404, 'not_found', /no route for GET \/v2\/nothing/, /POST \/generate/);
  });

  it('answers a known path with the wrong method with 405 JSON and Allow', async () => {
    const { app } = setup();
    const res = await app.request('/generate');
    expect(res.headers.get('allow')).toBe('POST');
    await expectError(res, 405, 'not_found', /GET is not allowed on \/generate; use POST/);
  });
});
