/**
 * TGI request rules and response shapes over a fake engine (no model): TGI's sampling decision (do_sample or any
 * warper), its parameter validation (router/src/validation.rs), the parameters users rely on (top_n_tokens,
 * decoder_input_details, truncate, return_full_text, ignore_eos), neutral values of features this server lacks,
 * and the shapes of TGI's GenerateResponse and StreamResponse (docs/openapi.json).
 */
import { describe, expect, it } from 'vitest';
import { ConfigSchema, type Config } from '../src/config.ts';
import type { GenerateOptions, GenerateRequest, GenerateResult, GenerationService, ModelInfo } from '../src/engine/types.ts';
import { createLogger } from '../src/log.ts';
import { createApp } from '../src/server/app.ts';

/** Echoes two tokens; reports top tokens and prompt logprobs when the request asks for them. */
class FakeService implements GenerationService {
  calls: GenerateRequest[] = [];

  async generate(request: GenerateRequest, options?: GenerateOptions): Promise<GenerateResult> {
    this.calls.push(request);
    const top = (id: number) => (request.topTokens ? Array.from({ length: request.topTokens }, (_, i) => ({ id: id + i, text: `t${id + i}`, logprob: -1 - i, special: false })) : undefined);
    const tokens = [
      { id: 65, text: 'A', logprob: -0.5, special: false, ...(request.topTokens ? { top: top(65) } : {}) },
      { id: 257, text: '', logprob: -0.25, special: true, ...(request.topTokens ? { top: top(257) } : {}) },
    ];
    const result: GenerateResult = {
      generatedText: 'A', finishReason: 'eos_token', generatedTokens: 2, promptTokens: 3,
      seed: request.sampling.doSample ? (request.sampling.seed ?? 42) : null, tokens,
      ...(request.promptLogprobs ? {
        prefill: [
          { id: 256, text: '<s>', logprob: null, special: true },
          { id: 120, text: 'x', logprob: -2, special: false },
          { id: 121, text: 'y', logprob: -3, special: false },
        ],
      } : {}),
    };
    tokens.forEach((t, i) => options?.onToken?.(t, i === tokens.length - 1 ? result : null));
    return result;
  }

  admit(): void {}
  renderChat(): string {
    return '';
  }
  info(): ModelInfo {
    throw new Error('not used');
  }
  async close(): Promise<void> {}
}

function setup(overrides: Partial<Config['limits']> = {}) {
  const config = ConfigSchema.parse({ limits: { maxPromptTokens: 100, ...overrides } });
  const service = new FakeService();
  const app = createApp(service, config, { logger: createLogger({ level: 'silent' }) });
  const post = (path: string, body: unknown) =>
    app.request(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) });
  const generate = (parameters: Record<string, unknown>, inputs = 'xy') => post('/generate', { inputs, parameters });
  return { app, service, post, generate };
}

async function expect422(res: Response, ...fragments: RegExp[]) {
  expect(res.status).toBe(422);
  const body = (await res.json()) as { error: string; error_type: string };
  expect(Object.keys(body).sort()).toEqual(['error', 'error_type']);
  expect(body.error_type).toBe('validation');
  for (const f of fragments) expect(body.error).toMatch(f);
}

async function events(res: Response): Promise<Array<Record<string, unknown>>> {
  const text = await res.text();
  return text.split('\n\n').map((b) => b.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join(''))
    .filter((d) => d !== '').map((d) => JSON.parse(d) as Record<string, unknown>);
}

describe('TGI sampling decision: do_sample or any warper', () => {
  it.each<[string, Record<string, unknown>, boolean]>([
    ['nothing set', {}, false],
    ['do_sample true', { do_sample: true }, true],
    ['temperature 0.7', { temperature: 0.7 }, true],
    ['temperature exactly 1 (no warper)', { temperature: 1 }, false],
    ['top_k 5', { top_k: 5 }, true],
    ['top_p 0.9', { top_p: 0.9 }, true],
    ['typical_p 0.5', { typical_p: 0.5 }, true],
    ['do_sample false with top_k (TGI promotes it)', { do_sample: false, top_k: 3 }, true],
    ['nulls', { temperature: null, top_k: null, top_p: null, typical_p: null, do_sample: null }, false],
    ['repetition_penalty alone (not a warper)', { repetition_penalty: 1.2 }, false],
  ])('%s → doSample %s', async (_name, parameters, doSample) => {
    const { generate, service } = setup();
    expect((await generate(parameters)).status).toBe(200);
    expect(service.calls[0].sampling.doSample).toBe(doSample);
  });

  it('maps typical_p to the engine', async () => {
    const { generate, service } = setup();
    await generate({ typical_p: 0.4, seed: 3 });
    expect(service.calls[0].sampling).toMatchObject({ doSample: true, typicalP: 0.4, seed: 3 });
  });
});

describe('TGI parameter validation', () => {
  it.each<[string, Record<string, unknown>, RegExp]>([
    ['temperature 0', { temperature: 0 }, /parameters\.temperature: must be a finite number greater than 0 \(got 0\)/],
    ['temperature -1', { temperature: -1 }, /parameters\.temperature: .*greater than 0 \(got -1\)/],
    ['top_p 1', { top_p: 1 }, /parameters\.top_p: must be a number greater than 0 and less than 1 \(got 1\)/],
    ['top_p 0', { top_p: 0 }, /parameters\.top_p: .*less than 1 \(got 0\)/],
    ['typical_p 1', { typical_p: 1 }, /parameters\.typical_p: must be a number greater than 0 and less than 1 \(got 1\)/],
    ['typical_p 0', { typical_p: 0 }, /parameters\.typical_p: .*\(got 0\)/],
    ['top_k 0', { top_k: 0 }, /parameters\.top_k: must be an integer greater than 0 \(got 0\)/],
    ['repetition_penalty 0', { repetition_penalty: 0 }, /parameters\.repetition_penalty: must be a finite number greater than 0/],
    ['repetition_penalty -1', { repetition_penalty: -1 }, /parameters\.repetition_penalty: .*\(got -1\)/],
    ['top_n_tokens over the limit', { top_n_tokens: 6 }, /parameters\.top_n_tokens: must be an integer from 0 to 5 \(this server's limit\) \(got 6\)/],
    ['truncate 0', { truncate: 0 }, /parameters\.truncate: must be an integer from 1 to 100/],
    ['truncate over limits.maxPromptTokens', { truncate: 101 }, /parameters\.truncate: must be an integer from 1 to 100/],
    ['best_of 2', { best_of: 2, do_sample: true }, /parameters\.best_of: must be 1: best_of > 1 is not supported/],
    ['watermark true', { watermark: true }, /parameters\.watermark: must be false: watermarking is not supported/],
    ['adapter_id', { adapter_id: 'my-lora' }, /parameters\.adapter_id: must be null: LoRA adapters are not supported/],
    ['grammar', { grammar: { type: 'json', value: { properties: {} } } }, /parameters\.grammar: must be null: guided generation \(grammar\) is not supported/],
    ['frequency_penalty 0.5', { frequency_penalty: 0.5 }, /parameters\.frequency_penalty: must be 0: frequency_penalty is not supported/],
    ['ignore_eos not a boolean', { ignore_eos: 'yes' }, /parameters\.ignore_eos: must be true or false/],
  ])('rejects %s with 422', async (_name, parameters, message) => {
    const { generate, service } = setup();
    await expect422(await generate(parameters), message);
    expect(service.calls).toHaveLength(0);
  });

  it('rejects non-finite numbers (1e999 parses as Infinity) and says what was sent', async () => {
    const { post, service } = setup();
    await expect422(await post('/generate', '{"inputs": "x", "parameters": {"repetition_penalty": 1e999}}'),
      /parameters\.repetition_penalty: must be a finite number greater than 0 \(1 means no penalty\) \(got Infinity\)/);
    await expect422(await post('/generate', '{"inputs": "x", "parameters": {"temperature": 1e999}}'),
      /parameters\.temperature: must be a finite number greater than 0 \(got Infinity\)/);
    await expect422(await post('/generate', '{"inputs": "x", "parameters": {"repetition_penalty": -1e999}}'), /got -Infinity/);
    expect(service.calls).toHaveLength(0);
  });

  it('accepts the neutral values of features this server does not have', async () => {
    const { generate, service } = setup();
    const neutral = { best_of: 1, watermark: false, adapter_id: null, grammar: null, frequency_penalty: 0, top_n_tokens: 0, decoder_input_details: false, return_full_text: false, ignore_eos: false, truncate: null };
    expect((await generate(neutral)).status).toBe(200);
    expect((await generate({ best_of: null, watermark: null, frequency_penalty: null })).status).toBe(200);
    for (const call of service.calls) {
      expect(call).not.toHaveProperty('topTokens');
      expect(call).not.toHaveProperty('promptLogprobs');
      expect(call).not.toHaveProperty('ignoreEos');
      expect(call).not.toHaveProperty('truncate');
    }
  });

  it('maps top_n_tokens, decoder_input_details, truncate and ignore_eos to the engine', async () => {
    const { generate, service } = setup();
    await generate({ top_n_tokens: 3, decoder_input_details: true, truncate: 7, ignore_eos: true });
    expect(service.calls[0]).toMatchObject({ topTokens: 3, promptLogprobs: true, truncate: 7, ignoreEos: true });
  });

  it('names every allowed parameter when an unknown one is sent', async () => {
    const { generate } = setup();
    await expect422(await generate({ presence_penalty: 0 }),
      /unknown field "parameters\.presence_penalty"; allowed in parameters: max_new_tokens, do_sample, temperature, top_k, top_p, typical_p, repetition_penalty, frequency_penalty, seed, stop, details, decoder_input_details, top_n_tokens, truncate, return_full_text, ignore_eos, best_of, watermark, adapter_id, grammar/);
  });
});

describe('TGI response shapes', () => {
  it('details: finish_reason, generated_tokens, seed, prefill (empty), tokens; no top_tokens unless asked', async () => {
    const { generate } = setup();
    const body = await (await generate({ details: true })).json();
    expect(body).toEqual({
      generated_text: 'A',
      details: {
        finish_reason: 'eos_token', generated_tokens: 2, seed: null, prompt_tokens: 3, prefill: [],
        tokens: [{ id: 65, text: 'A', logprob: -0.5, special: false }, { id: 257, text: '', logprob: -0.25, special: true }],
      },
    });
  });

  it('top_n_tokens: details.top_tokens holds, per generated token, the most likely tokens', async () => {
    const { generate } = setup();
    const body = await (await generate({ details: true, top_n_tokens: 2 })).json();
    expect(body.details.top_tokens).toEqual([
      [{ id: 65, text: 't65', logprob: -1, special: false }, { id: 66, text: 't66', logprob: -2, special: false }],
      [{ id: 257, text: 't257', logprob: -1, special: false }, { id: 258, text: 't258', logprob: -2, special: false }],
    ]);
  });

  it('decoder_input_details alone returns details with prefill [{id, text, logprob}], the first logprob null', async () => {
    const { generate } = setup();
    const body = await (await generate({ decoder_input_details: true })).json();
    expect(body.details.prefill).toEqual([
      { id: 256, text: '<s>', logprob: null },
      { id: 120, text: 'x', logprob: -2 },
      { id: 121, text: 'y', logprob: -3 },
    ]);
    expect(body.details.tokens).toHaveLength(2);
  });

  it('return_full_text puts the prompt before the generated text, in /generate and in the final stream event', async () => {
    const { generate, post } = setup();
    expect((await (await generate({ return_full_text: true }, 'Hello ')).json()).generated_text).toBe('Hello A');
    expect((await (await generate({ return_full_text: false }, 'Hello ')).json()).generated_text).toBe('A');
    const evs = await events(await post('/generate_stream', { inputs: 'Hello ', parameters: { return_full_text: true } }));
    expect(evs.map((e) => (e.token as { text: string }).text).join('')).toBe('A');
    expect(evs.at(-1)!.generated_text).toBe('Hello A');
  });

  it('stream events: index from 1, token, generated_text and details null until the last; details with input_length', async () => {
    const { post } = setup();
    const evs = await events(await post('/generate_stream', { inputs: 'xy', parameters: { seed: 9, do_sample: true } }));
    expect(evs).toEqual([
      { index: 1, token: { id: 65, text: 'A', logprob: -0.5, special: false }, generated_text: null, details: null },
      {
        index: 2, token: { id: 257, text: '', logprob: -0.25, special: true }, generated_text: 'A',
        details: { finish_reason: 'eos_token', generated_tokens: 2, seed: 9, input_length: 3 },
      },
    ]);
  });

  it('stream events carry top_tokens for their position when top_n_tokens is set', async () => {
    const { post } = setup();
    const evs = await events(await post('/generate_stream', { inputs: 'xy', parameters: { top_n_tokens: 1 } }));
    expect(evs.map((e) => e.top_tokens)).toEqual([
      [{ id: 65, text: 't65', logprob: -1, special: false }],
      [{ id: 257, text: 't257', logprob: -1, special: false }],
    ]);
  });

  it('POST / (TGI compat_generate): an array of one GenerateResponse, or with stream: true the stream events', async () => {
    const { post } = setup();
    const plain = await post('/', { inputs: 'xy', parameters: { details: true } });
    expect(plain.status).toBe(200);
    const [only, ...rest] = await plain.json();
    expect(rest).toEqual([]);
    expect(only).toMatchObject({ generated_text: 'A', details: { finish_reason: 'eos_token', prefill: [] } });
    expect(await (await post('/', { inputs: 'xy', stream: false })).json()).toEqual([{ generated_text: 'A' }]);
    const streamed = await post('/', { inputs: 'xy', stream: true, parameters: { return_full_text: true } });
    expect(streamed.headers.get('content-type')).toMatch(/text\/event-stream/);
    const evs = await events(streamed);
    expect(evs.map((e) => e.index)).toEqual([1, 2]);
    expect(evs.at(-1)!.generated_text).toBe('xyA');
  });

  it('accepts the stream flag that matches the route and refuses the other', async () => {
    const { post } = setup();
    expect((await post('/generate', { inputs: 'xy', stream: false })).status).toBe(200);
    expect((await post('/generate_stream', { inputs: 'xy', stream: true })).status).toBe(200);
    await expect422(await post('/generate', { inputs: 'xy', stream: true }), /stream: true is not supported on POST \/generate; use POST \/generate_stream/);
    await expect422(await post('/generate_stream', { inputs: 'xy', stream: false }), /stream: false is not supported on POST \/generate_stream; use POST \/generate/);
  });

  it('refuses decoder_input_details on /generate_stream before the stream starts (TGI refuses it too)', async () => {
    const { post, service } = setup();
    await expect422(await post('/generate_stream', { inputs: 'xy', parameters: { decoder_input_details: true } }),
      /decoder_input_details: true is not supported when streaming tokens; use POST \/generate/);
    expect(service.calls).toHaveLength(0);
  });
});
