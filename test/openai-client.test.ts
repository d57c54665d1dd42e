/**
 * The official `openai` SDK (openai-node 6) against the real gateway on an ephemeral loopback port, serving the
 * bundled model: chat and completions, streamed and not, logprobs, max_completion_tokens, content parts, n, and
 * errors as the SDK parses them.
 */
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../src/log.ts';
import { startServer, type RunningServer } from '../src/serve.ts';
import { engineConfig } from './helpers.ts';

let server: RunningServer;
let client: OpenAI;
/** Both calls of a comparison must run the model: the response cache would answer the second. */
const noCache = { headers: { 'Cache-Control': 'no-cache' } };

beforeAll(async () => {
  server = await startServer(engineConfig(path.resolve('models/switchyard-moe'), { port: 0 }), { logger: createLogger({ level: 'silent' }) });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'not-checked', maxRetries: 0 });
});
afterAll(() => server.close());

/** Streamed chat: each choice's concatenated content, finish reason and logprobs, by index. */
async function readChat(stream: AsyncIterable<OpenAI.Chat.ChatCompletionChunk>) {
  const choices = new Map<number, { content: string; finish: string | null; logprobs: OpenAI.Chat.ChatCompletionTokenLogprob[] }>();
  let usage: OpenAI.CompletionUsage | null | undefined;
  for await (const chunk of stream) {
    usage ??= chunk.usage;
    for (const c of chunk.choices) {
      const mine = choices.get(c.index) ?? { content: '', finish: null, logprobs: [] };
      mine.content += c.delta.content ?? '';
      mine.finish ??= c.finish_reason;
      mine.logprobs.push(...(c.logprobs?.content ?? []));
      choices.set(c.index, mine);
    }
  }
  return { choices, usage };
}

describe('the openai SDK against the gateway', () => {
  it('lists the served model', async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(['switchyard-moe']);
  });

  it('a first generated token that is EOS is a normal, empty answer (streamed and not)', async () => {
    const body = { model: 'switchyard-moe', prompt: '\t\t-- Mark Twain\n', max_tokens: 20, temperature: 0 };
    const plain = await client.completions.create(body, noCache);
    expect(plain.choices[0]).toMatchObject({ text: '', finish_reason: 'stop', index: 0 });
    expect(plain.usage).toMatchObject({ completion_tokens: 1 });
    const chunks = [];
    for await (const chunk of await client.completions.create({ ...body, stream: true }, noCache)) chunks.push(chunk);
    expect(chunks.map((c) => c.choices[0].text).join('')).toBe('');
    expect(chunks[chunks.length - 1].choices[0].finish_reason).toBe('stop');
  });

  it('chat, streamed and not, gives the same content; without max_tokens it runs past 16 tokens', async () => {
    const body = { model: 'switchyard-moe', messages: [{ role: 'user' as const, content: 'Tell me a story' }], temperature: 0 };
    const plain = await client.chat.completions.create(body, noCache);
    expect(plain.model).toBe('switchyard-moe');
    expect(plain.choices[0].message.role).toBe('assistant');
    expect(plain.usage!.completion_tokens).toBeGreaterThan(16);
    const streamed = await readChat(await client.chat.completions.create({ ...body, stream: true, stream_options: { include_usage: true } }, noCache));
    expect(streamed.choices.get(0)!.content).toBe(plain.choices[0].message.content);
    expect(streamed.choices.get(0)!.finish).toBe(plain.choices[0].finish_reason);
    expect(streamed.usage).toEqual(plain.usage);
  });

  it('content parts, the developer role and names give what the same text as strings gives', async () => {
    const asStrings = await client.chat.completions.create({
      model: 'switchyard-moe', temperature: 0, max_completion_tokens: 12,
      messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Who is Ahab?' }],
    }, noCache);
    const asParts = await client.chat.completions.create({
      model: 'switchyard-moe', temperature: 0, max_completion_tokens: 12,
      messages: [
        { role: 'developer', content: [{ type: 'text', text: 'Be ' }, { type: 'text', text: 'brief.' }] },
        { role: 'user', name: 'ishmael', content: [{ type: 'text', text: 'Who is ' }, { type: 'text', text: 'Ahab?' }] },
      ],
    }, noCache);
    expect(asParts.choices[0].message.content).toBe(asStrings.choices[0].message.content);
    expect(asParts.usage).toEqual(asStrings.usage);
  });

  it('max_completion_tokens bounds the reply', async () => {
    const r = await client.chat.completions.create({
      model: 'switchyard-moe', messages: [{ role: 'user', content: 'Tell me a story' }], temperature: 0, max_completion_tokens: 5,
    }, noCache);
    expect(r.usage!.completion_tokens).toBe(5);
    expect(r.choices[0].finish_reason).toBe('length');
  });

  it('chat logprobs: tokens add up to the content, top_logprobs has the asked number, streamed the same', async () => {
    const body = {
      model: 'switchyard-moe', messages: [{ role: 'user' as const, content: 'Call me' }], temperature: 1.5, seed: 7,
      max_completion_tokens: 12, logprobs: true, top_logprobs: 3,
    };
    const plain = await client.chat.completions.create(body, noCache);
    const content = plain.choices[0].logprobs!.content!;
    expect(content.map((t) => t.token).join('')).toBe(plain.choices[0].message.content);
    expect(Buffer.from(content.flatMap((t) => t.bytes!))).toEqual(Buffer.from(plain.choices[0].message.content!, 'utf8'));
    for (const t of content) {
      expect(t.top_logprobs).toHaveLength(3);
      expect(Number.isFinite(t.logprob)).toBe(true);
      expect(t.top_logprobs[0].logprob).toBeGreaterThanOrEqual(t.top_logprobs[2].logprob);
    }
    const streamed = await readChat(await client.chat.completions.create({ ...body, stream: true }, noCache));
    expect(streamed.choices.get(0)!.content).toBe(plain.choices[0].message.content);
    expect(streamed.choices.get(0)!.logprobs).toEqual(content);
  });

  it('completions logprobs: tokens, token_logprobs, top_logprobs and text_offset, streamed the same', async () => {
    const body = { model: 'switchyard-moe', prompt: 'It was the best of times', max_tokens: 10, temperature: 2, seed: 3, logprobs: 2 };
    const plain = await client.completions.create(body, noCache);
    const lp = plain.choices[0].logprobs!;
    expect(lp.tokens!.join('')).toBe(plain.choices[0].text);
    expect(lp.token_logprobs).toHaveLength(lp.tokens!.length);
    expect(lp.text_offset![0]).toBe(0);
    for (const top of lp.top_logprobs!) expect(Object.keys(top).length).toBeGreaterThanOrEqual(2);
    const chunks = [];
    for await (const chunk of await client.completions.create({ ...body, stream: true }, noCache)) chunks.push(chunk);
    expect(chunks.map((c) => c.choices[0]?.text ?? '').join('')).toBe(plain.choices[0].text);
    expect(chunks.flatMap((c) => c.choices[0]?.logprobs?.text_offset ?? [])).toEqual(lp.text_offset);
    expect(chunks.flatMap((c) => c.choices[0]?.logprobs?.token_logprobs ?? [])).toEqual(lp.token_logprobs);
  });

  it('n = 3 returns three indexed choices (seeds seed + i), streamed choice by choice the same', async () => {
    const body = { model: 'switchyard-moe', messages: [{ role: 'user' as const, content: 'Hello' }], temperature: 1.8, seed: 100, n: 3, max_tokens: 10 };
    const plain = await client.chat.completions.create(body, noCache);
    expect(plain.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    expect(new Set(plain.choices.map((c) => c.message.content)).size).toBeGreaterThan(1);
    const streamed = await readChat(await client.chat.completions.create({ ...body, stream: true }, noCache));
    for (const c of plain.choices) expect(streamed.choices.get(c.index)!.content).toBe(c.message.content);
    // Choice i is the single-choice request with seed + i.
    const second = await client.chat.completions.create({ ...body, n: 1, seed: 101 }, noCache);
    expect(second.choices[0].message.content).toBe(plain.choices[1].message.content);
  });

  it('stop sequences are cut in both (string or list)', async () => {
    const base = { model: 'switchyard-moe', prompt: 'The sea', max_tokens: 30, temperature: 0 };
    const full = (await client.completions.create(base, noCache)).choices[0].text;
    expect(full.length).toBeGreaterThan(8);
    const stop = full.slice(5, 7);
    const cut = await client.completions.create({ ...base, stop }, noCache);
    expect(cut.choices[0]).toMatchObject({ text: full.slice(0, full.indexOf(stop)), finish_reason: 'stop' });
    const chunks = [];
    for await (const chunk of await client.completions.create({ ...base, stop: [stop, 'zzz'], stream: true }, noCache)) chunks.push(chunk);
    expect(chunks.map((c) => c.choices[0].text).join('')).toBe(cut.choices[0].text);
  });

  it('errors: APIError with status, type, param and code (a stream refused before it starts too)', async () => {
    const err = await client.chat.completions
      .create({ model: 'switchyard-moe', messages: [{ role: 'user', content: 'x' }], presence_penalty: 1.5 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.APIError);
    const api = err as InstanceType<typeof OpenAI.APIError>;
    expect(api.status).toBe(422);
    expect(api.type).toBe('invalid_request_error');
    expect(api.param).toBe('presence_penalty');
    expect(api.code).toBe('unsupported_value');
    expect(api.message).toMatch(/presence_penalty: is not supported/);

    const long = await client.chat.completions
      .create({ model: 'switchyard-moe', messages: [{ role: 'user', content: 'word '.repeat(90) }], max_tokens: 100, stream: true })
      .catch((e: unknown) => e);
    expect(long).toBeInstanceOf(OpenAI.UnprocessableEntityError);
    expect((long as InstanceType<typeof OpenAI.APIError>).param).toBe('max_tokens');
    expect((long as InstanceType<typeof OpenAI.APIError>).code).toBe('context_length_exceeded');
  });
});
