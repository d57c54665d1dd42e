/**
 * Acceptance: the real `@huggingface/inference` InferenceClient (4.13) with `endpointUrl` pointing at a running
 * gateway on the bundled model. With an endpoint URL that client sends textGeneration(Stream) to /v1/completions
 * (TGI parameters at the top level) and chatCompletion(Stream) to /v1/chat/completions (`model` = the URL); its
 * raw request primitives post to the URL as given, which reaches TGI's own routes (/generate, /generate_stream and
 * TGI's compat route POST /). Every answer is checked against the same request sent straight to /generate.
 *
 * The client may reach nothing but this loopback server: its fetch refuses any other host, and it does not retry.
 */
import path from 'node:path';
import { InferenceClient, InferenceClientProviderApiError, setLogger } from '@huggingface/inference';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../src/log.ts';
import { startServer, type RunningServer } from '../src/serve.ts';
import { engineConfig } from './helpers.ts';

const MODEL = path.join(import.meta.dirname, '..', 'models', 'switchyard-moe');
let server: RunningServer;
let client: InferenceClient;
const requested: string[] = [];

/** The only fetch the client gets: loopback only, and it records what was asked for. */
const loopbackFetch = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
  const url = new URL(input instanceof Request ? input.url : input.toString());
  if (!['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)) throw new Error(`test client tried to reach ${url.href}`);
  requested.push(`${init?.method ?? 'GET'} ${url.pathname}`);
  return fetch(input, init);
};

beforeAll(async () => {
  // No response cache (each comparison runs the model twice) and no prefix cache (reused rows change logits in the
  // last bits, and sampled comparisons need identical logits).
  server = await startServer(engineConfig(MODEL, { port: 0, cache: { response: { maxEntries: 0 }, prefix: { maxBytes: 0 } } }),
    { logger: createLogger({ level: 'silent' }), closeGraceMs: 200 });
  client = new InferenceClient(undefined, { endpointUrl: server.url, fetch: loopbackFetch, retry_on_error: false });
  // The raw request primitives are deprecated and say so through the client's logger.
  setLogger({ debug() {}, info() {}, warn() {}, error() {}, log() {} });
}, 120_000);
afterAll(() => server?.close());

/** The same request sent straight to TGI's /generate. */
async function direct(inputs: string, parameters: Record<string, unknown>): Promise<{ generated_text: string; details?: Record<string, unknown> }> {
  const res = await fetch(`${server.url}/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ inputs, parameters }) });
  expect(res.status).toBe(200);
  return res.json();
}

const PROMPT = 'Call me Ishmael.';

describe('textGeneration and textGenerationStream (POST /v1/completions)', () => {
  it('greedy textGeneration answers what /generate answers', async () => {
    const parameters = { max_new_tokens: 12, do_sample: false };
    const out = await client.textGeneration({ inputs: PROMPT, parameters });
    expect(out.generated_text).toBe((await direct(PROMPT, parameters)).generated_text);
    expect(requested.at(-1)).toBe('POST /v1/completions');
  });

  it('TGI-style parameters: top_k with a seed samples as TGI does; repetition_penalty, truncate, top_n_tokens, details', async () => {
    for (const parameters of [
      { max_new_tokens: 10, top_k: 5, seed: 3 },
      { max_new_tokens: 10, do_sample: false, repetition_penalty: 1.5 },
      { max_new_tokens: 10, do_sample: false, truncate: 6 },
      { max_new_tokens: 10, do_sample: false, top_n_tokens: 2, details: true },
    ]) {
      const out = await client.textGeneration({ inputs: PROMPT, parameters });
      expect(out.generated_text, JSON.stringify(parameters)).toBe((await direct(PROMPT, parameters)).generated_text);
    }
  });

  it('return_full_text puts the prompt first', async () => {
    const plain = (await direct(PROMPT, { max_new_tokens: 8 })).generated_text;
    const out = await client.textGeneration({ inputs: PROMPT, parameters: { max_new_tokens: 8, do_sample: false, return_full_text: true } });
    expect(out.generated_text).toBe(PROMPT + plain);
  });

  it('textGenerationStream: the streamed text adds up to textGeneration\'s', async () => {
    const parameters = { max_new_tokens: 12, top_p: 0.9, seed: 11 };
    const whole = await client.textGeneration({ inputs: PROMPT, parameters });
    let streamed = '';
    // With an endpoint URL the client passes /v1/completions' chunks through as they are.
    for await (const chunk of client.textGenerationStream({ inputs: PROMPT, parameters })) {
      const c = chunk as unknown as { choices: Array<{ text: string }> };
      streamed += c.choices[0]?.text ?? '';
    }
    expect(streamed).toBe(whole.generated_text);
    expect(whole.generated_text).toBe((await direct(PROMPT, parameters)).generated_text);
  });

  it('a first token that is EOS is an empty answer, not an error', async () => {
    const out = await client.textGeneration({ inputs: '\t\t-- Mark Twain\n', parameters: { max_new_tokens: 20, do_sample: false } });
    expect(out.generated_text).toBe('');
  });

  it('an invalid parameter is an InferenceClientProviderApiError carrying the server\'s 422 body', async () => {
    const err = await client.textGeneration({ inputs: PROMPT, parameters: { top_k: 0 } }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InferenceClientProviderApiError);
    const { status, body } = (err as InferenceClientProviderApiError).httpResponse;
    expect(status).toBe(422);
    // OpenAI's shape on /v1/*; this client puts only a string `error` into its message, so the field is in the body.
    expect(JSON.stringify(body)).toMatch(/top_k/);
  });
});

describe('chatCompletion and chatCompletionStream (POST /v1/chat/completions)', () => {
  const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Who is Ahab?' }];

  it('chatCompletion answers with the served model; the stream carries the same content, character for character', async () => {
    const out = await client.chatCompletion({ messages, max_tokens: 12, temperature: 0 });
    expect(requested.at(-1)).toBe('POST /v1/chat/completions');
    expect(out.choices[0].message.role).toBe('assistant');
    expect(typeof out.choices[0].message.content).toBe('string');
    expect(['stop', 'length']).toContain(out.choices[0].finish_reason);
    let streamed = '';
    let finish: string | null | undefined;
    for await (const chunk of client.chatCompletionStream({ messages, max_tokens: 12, temperature: 0 })) {
      streamed += chunk.choices[0]?.delta?.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(streamed).toBe(out.choices[0].message.content);
    expect(finish).toBe(out.choices[0].finish_reason);
  });

  it('seeded sampling is reproducible through the client', async () => {
    const ask = () => client.chatCompletion({ messages, max_tokens: 10, temperature: 1.2, seed: 5 });
    expect((await ask()).choices[0].message.content).toBe((await ask()).choices[0].message.content);
  });
});

describe('the client\'s raw request primitives against TGI\'s own routes', () => {
  const at = (route: string) => new InferenceClient(undefined, { endpointUrl: server.url + route, fetch: loopbackFetch, retry_on_error: false });

  it('request → POST /generate: details with prefill (decoder_input_details) and top_tokens (top_n_tokens)', async () => {
    const parameters = { max_new_tokens: 6, details: true, decoder_input_details: true, top_n_tokens: 2 };
    const out = await at('/generate').request<{ generated_text: string; details: { prefill: unknown[]; top_tokens: unknown[][]; tokens: unknown[] } }>({ inputs: PROMPT, parameters });
    expect(requested.at(-1)).toBe('POST /generate');
    expect(out).toEqual(await direct(PROMPT, parameters));
    expect(out.details.prefill).toHaveLength(PROMPT.length + 1);
    expect(out.details.top_tokens).toHaveLength(out.details.tokens.length);
  });

  it('streamingRequest → POST /generate_stream (it adds stream: true): TGI events ending with the full text', async () => {
    const parameters = { max_new_tokens: 8, typical_p: 0.9, seed: 2 };
    const events: Array<{ index: number; token: { text: string }; generated_text: string | null }> = [];
    for await (const e of at('/generate_stream').streamingRequest<(typeof events)[number]>({ inputs: PROMPT, parameters })) events.push(e);
    expect(requested.at(-1)).toBe('POST /generate_stream');
    expect(events.map((e) => e.index)).toEqual(events.map((_, i) => i + 1));
    const text = (await direct(PROMPT, parameters)).generated_text;
    expect(events.at(-1)!.generated_text).toBe(text);
    expect(events.map((e) => e.token.text).join('')).toBe(text);
  });

  it('request → POST / (TGI\'s compat route, the bare endpoint URL): an array of one GenerateResponse', async () => {
    const parameters = { max_new_tokens: 6 };
    const out = await at('').request<Array<{ generated_text: string }>>({ inputs: PROMPT, parameters });
    expect(requested.at(-1)).toBe('POST /');
    expect(out).toEqual([await direct(PROMPT, parameters)]);
  });
});
