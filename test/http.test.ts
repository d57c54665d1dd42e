/** The real server on an ephemeral loopback port, over HTTP, on the tiny random package. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../src/serve.ts';
import { createLogger } from '../src/log.ts';
import { tinyConfig, writeTinyPackage } from './fixtures/tiny-package.ts';
import { engineConfig } from './helpers.ts';

const dir = writeTinyPackage(tinyConfig({ max_position_embeddings: 64 }), 9);
let server: RunningServer;

const post = (path: string, body: unknown, init: RequestInit = {}) =>
  fetch(server.url + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body), ...init });

/** Reads a server-sent-event stream to its end: the data field of each event. */
async function readEvents(response: Response): Promise<string[]> {
  const text = await response.text();
  return text.split('\n\n').map((block) => block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n')).filter((d) => d !== '');
}

beforeAll(async () => {
  // No response cache: repeated requests here must reach the engine (test/response-cache.test.ts covers the cache).
  server = await startServer(engineConfig(dir, { port: 0, limits: { maxNewTokens: 40, maxBodyBytes: 4096 }, cache: { response: { maxEntries: 0 } } }), {
    logger: createLogger({ level: 'silent' }), closeGraceMs: 200,
  });
});
afterAll(() => server.close());

describe('service endpoints', () => {
  it('GET /health', async () => {
    const r = await fetch(`${server.url}/health`);
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ status: 'ok', workers: [{ worker: 0, state: 'ready', restarts: 0 }, { worker: 1, state: 'ready', restarts: 0 }] });
  });

  it('GET /metrics serves Prometheus text with expert load and GenAI server metrics', async () => {
    await post('/generate', { inputs: 'metrics please', parameters: { max_new_tokens: 3 } });
    const r = await fetch(`${server.url}/metrics`);
    expect(r.headers.get('content-type')).toMatch(/text\/plain/);
    const text = await r.text();
    expect(text).toMatch(/^moe_expert_tokens_total\{[^}]*moe_layer="0"[^}]*\} \d+/m);
    expect(text).toMatch(/gen_ai_server_request_duration_seconds_count\{[^}]*\} [1-9]/);
  });

  it('GET /info describes model, parameters and placement', async () => {
    const info = await (await fetch(`${server.url}/info`)).json();
    expect(info).toMatchObject({ layers: 2, experts: 4, experts_per_token: 1, context_length: 64 });
    expect(info.parameters.active_per_token).toBeLessThan(info.parameters.total);
    expect(info.placement.workers).toBe(2);
    expect(info.placement.experts).toHaveLength(8);
  });
});

describe('POST /generate', () => {
  it('greedy output is reproducible and reports details', async () => {
    const body = { inputs: 'Call me Ishmael.', parameters: { max_new_tokens: 12, details: true } };
    const a = await (await post('/generate', body)).json();
    const b = await (await post('/generate', body)).json();
    expect(a.generated_text).toBe(b.generated_text);
    expect(a.details.generated_tokens).toBeGreaterThan(0);
    expect(a.details.generated_tokens).toBeLessThanOrEqual(12);
    expect(['length', 'eos_token']).toContain(a.details.finish_reason);
    expect(a.details.seed).toBeNull();
  });

  it('seeded sampling is reproducible; different seeds differ', async () => {
    const ask = async (seed: number) => (await (await post('/generate', { inputs: 'The whale', parameters: { do_sample: true, seed, max_new_tokens: 24, details: true, temperature: 1.5 } })).json());
    const a = await ask(7);
    expect((await ask(7)).generated_text).toBe(a.generated_text);
    expect(a.details.seed).toBe(7);
    const others = await Promise.all([8, 9, 10].map(ask));
    expect(others.some((o) => o.generated_text !== a.generated_text)).toBe(true);
  });

  const bad: Array<[string, unknown, RegExp]> = [
    ['invalid JSON', '{"inputs": ', /not valid JSON/],
    ['wrong type', { inputs: 42 }, /inputs: .*string/],
    ['empty inputs', { inputs: '' }, /inputs: must not be empty/],
    ['max_new_tokens 0', { inputs: 'x', parameters: { max_new_tokens: 0 } }, /max_new_tokens: must be an integer from 1 to 40/],
    ['max_new_tokens above the limit', { inputs: 'x', parameters: { max_new_tokens: 41 } }, /max_new_tokens: must be an integer from 1 to 40/],
    ['unknown parameter', { inputs: 'x', parameters: { num_beams: 2 } }, /unknown field "parameters\.num_beams"/],
    ['best_of > 1 (not supported)', { inputs: 'x', parameters: { best_of: 2 } }, /parameters\.best_of: must be 1: best_of > 1 is not supported/],
    ['prompt longer than the context', { inputs: 'y'.repeat(100) }, /prompt is 101 tokens; at most 63/],
    ['prompt plus max_new_tokens over the context', { inputs: 'y'.repeat(50), parameters: { max_new_tokens: 30 } }, /must be <= 64/],
  ];
  for (const [name, body, message] of bad) {
    it(`answers 422 for ${name}`, async () => {
      const r = await post('/generate', body);
      expect(r.status).toBe(422);
      const json = await r.json();
      expect(json.error_type).toBe('validation');
      expect(json.error).toMatch(message);
    });
  }

  it('answers 413 for a body over the size limit, and keeps serving', async () => {
    const r = await post('/generate', { inputs: 'z'.repeat(5000) });
    expect(r.status).toBe(413);
    expect((await r.json()).error).toMatch(/larger than 4096 bytes/);
    expect((await post('/generate', { inputs: 'still here', parameters: { max_new_tokens: 2 } })).status).toBe(200);
  });
});

describe('streaming and OpenAI-compatible APIs', () => {
  it('POST /generate_stream sends one event per token and ends with the full text and details', async () => {
    const body = { inputs: 'Call me Ishmael.', parameters: { max_new_tokens: 10 } };
    const whole = await (await post('/generate', { ...body, parameters: { ...body.parameters, details: true } })).json();
    const r = await post('/generate_stream', body);
    expect(r.headers.get('content-type')).toMatch(/text\/event-stream/);
    const events = (await readEvents(r)).map((d) => JSON.parse(d));
    expect(events).toHaveLength(whole.details.generated_tokens);
    for (const e of events.slice(0, -1)) {
      expect(e).toMatchObject({ generated_text: null, details: null });
      expect(Object.keys(e.token).sort()).toEqual(['id', 'logprob', 'special', 'text']);
    }
    const last = events[events.length - 1];
    expect(last.generated_text).toBe(whole.generated_text);
    expect(last.details).toMatchObject({ finish_reason: whole.details.finish_reason, generated_tokens: events.length });
    expect(events.map((e) => e.token.text).join('')).toBe(whole.generated_text);
  });

  it('GET /v1/models lists the served model', async () => {
    const models = await (await fetch(`${server.url}/v1/models`)).json();
    expect(models.object).toBe('list');
    expect(models.data[0]).toMatchObject({ object: 'model' });
  });

  it('POST /v1/completions, plain and streamed, agree and report usage', async () => {
    const model = (await (await fetch(`${server.url}/v1/models`)).json()).data[0].id;
    const body = { model, prompt: 'It was the best of times', max_tokens: 8, temperature: 0 };
    const plain = await (await post('/v1/completions', body)).json();
    expect(plain).toMatchObject({ object: 'text_completion', model });
    expect(plain.choices[0]).toMatchObject({ index: 0 });
    expect(['stop', 'length']).toContain(plain.choices[0].finish_reason);
    expect(plain.usage.total_tokens).toBe(plain.usage.prompt_tokens + plain.usage.completion_tokens);

    const events = await readEvents(await post('/v1/completions', { ...body, stream: true, stream_options: { include_usage: true } }));
    expect(events[events.length - 1]).toBe('[DONE]');
    const chunks = events.slice(0, -1).map((d) => JSON.parse(d));
    const usageChunk = chunks[chunks.length - 1];
    expect(usageChunk.choices).toEqual([]);
    expect(usageChunk.usage).toEqual(plain.usage);
    const textChunks = chunks.slice(0, -1);
    expect(textChunks.every((c) => c.object === 'text_completion')).toBe(true);
    expect(textChunks.map((c) => c.choices[0].text).join('')).toBe(plain.choices[0].text);
    expect(textChunks[textChunks.length - 1].choices[0].finish_reason).toBe(plain.choices[0].finish_reason);
  });

  it('POST /v1/chat/completions, plain and streamed', async () => {
    const model = (await (await fetch(`${server.url}/v1/models`)).json()).data[0].id;
    const body = { model, messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Who is Ahab?' }], max_tokens: 8, temperature: 0 };
    const plain = await (await post('/v1/chat/completions', body)).json();
    expect(plain.object).toBe('chat.completion');
    expect(plain.choices[0].message.role).toBe('assistant');
    expect(typeof plain.choices[0].message.content).toBe('string');
    expect(plain.usage.completion_tokens).toBeGreaterThan(0);

    const events = await readEvents(await post('/v1/chat/completions', { ...body, stream: true }));
    expect(events[events.length - 1]).toBe('[DONE]');
    const chunks = events.slice(0, -1).map((d) => JSON.parse(d));
    expect(chunks[0].choices[0].delta).toEqual({ role: 'assistant', content: '' });
    expect(chunks.every((c) => c.object === 'chat.completion.chunk')).toBe(true);
    const final = chunks[chunks.length - 1].choices[0];
    expect(final.finish_reason).toBe(plain.choices[0].finish_reason);
    expect(final.delta).toEqual({});
    // The model's text as it is: no trimming on either side.
    expect(chunks.map((c) => c.choices[0].delta.content ?? '').join('')).toBe(plain.choices[0].message.content);
  });

  it('serves any model id with the loaded model (openai.strictModel off) and answers a bad request with 422', async () => {
    const model = (await (await fetch(`${server.url}/v1/models`)).json()).data[0].id;
    const r = await post('/v1/completions', { model: 'gpt-4', prompt: 'x', max_tokens: 2 });
    expect(r.status).toBe(200);
    expect((await r.json()).model).toBe(model);
    const bad = await post('/v1/chat/completions', { model: 'x', messages: [] });
    expect(bad.status).toBe(422);
    expect((await bad.json()).error).toMatchObject({ type: 'invalid_request_error', param: 'messages', message: expect.stringMatching(/messages: must hold at least one message/) });
  });
});

describe('batching across requests', () => {
  it('16 concurrent greedy requests equal the same requests run one at a time', async () => {
    const prompts = Array.from({ length: 16 }, (_, i) => `Request number ${i}: ${'abcdefgh'.slice(0, (i % 8) + 1)}`);
    const ask = async (inputs: string) => (await (await post('/generate', { inputs, parameters: { max_new_tokens: 16 } })).json()).generated_text;
    const sequential: string[] = [];
    for (const p of prompts) sequential.push(await ask(p));
    const concurrent = await Promise.all(prompts.map(ask));
    expect(concurrent).toEqual(sequential);
  });

  it('a client that disconnects has its sequence cancelled and freed', async () => {
    const controller = new AbortController();
    const r = await post('/generate_stream', { inputs: 'Hold on', parameters: { max_new_tokens: 40 } }, { signal: controller.signal });
    const reader = r.body!.getReader();
    await reader.read(); // the first token arrived: the sequence is active
    controller.abort();
    let active = -1;
    for (let i = 0; i < 200 && active !== 0; i++) {
      active = (await (await fetch(`${server.url}/info`)).json()).active_sequences;
      if (active !== 0) await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(active).toBe(0);
  });
});
