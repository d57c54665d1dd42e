/**
 * TGI routes on the bundled model (models/switchyard-moe, byte-level: id < 256 is that byte, 256 BOS, 257 EOS):
 * a first token that is EOS is a normal answer, TGI's sampling decision and validation, tiny temperatures and
 * extreme penalties give finite logprobs, and top_n_tokens, decoder_input_details, truncate, return_full_text and
 * ignore_eos do what TGI's documentation says. Requests send Cache-Control: no-cache so each one runs the model.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../src/log.ts';
import { startServer, type RunningServer } from '../src/serve.ts';
import { engineConfig } from './helpers.ts';

const MODEL = path.join(import.meta.dirname, '..', 'models', 'switchyard-moe');
const BOS = 256;
const EOS = 257;
/** The greedy continuation of this prompt starts with EOS (the fortunes' attribution line ends a fortune). */
const ENDS_AT_ONCE = '\t\t-- Mark Twain\n';
let server: RunningServer;

interface Token { id: number; text: string; logprob: number; special: boolean }
interface Details { finish_reason: string; generated_tokens: number; seed: number | null; prompt_tokens: number; prefill: Array<{ id: number; text: string; logprob: number | null }>; tokens: Token[]; top_tokens?: Token[][] }
interface StreamEvent { index: number; token: Token; top_tokens?: Token[]; generated_text: string | null; details: { finish_reason: string; generated_tokens: number; seed: number | null; input_length: number } | null }

const post = (route: string, body: unknown) => fetch(server.url + route, {
  method: 'POST', headers: { 'content-type': 'application/json', 'cache-control': 'no-cache' }, body: typeof body === 'string' ? body : JSON.stringify(body),
});

async function generate(inputs: string, parameters: Record<string, unknown>): Promise<{ generated_text: string; details: Details }> {
  const res = await post('/generate', { inputs, parameters: { details: true, ...parameters } });
  expect(res.status, await res.clone().text()).toBe(200);
  return res.json();
}

async function stream(inputs: string, parameters: Record<string, unknown>): Promise<StreamEvent[]> {
  const res = await post('/generate_stream', { inputs, parameters });
  expect(res.status).toBe(200);
  const text = await res.text();
  return text.split('\n\n').map((b) => b.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join(''))
    .filter((d) => d !== '').map((d) => JSON.parse(d) as StreamEvent);
}

/** Every logprob in a /generate answer: generated tokens, top tokens, prefill (all but the first). */
function allLogprobs(details: Details): unknown[] {
  return [
    ...details.tokens.map((t) => t.logprob),
    ...(details.top_tokens ?? []).flat().map((t) => t.logprob),
    ...details.prefill.slice(1).map((t) => t.logprob),
  ];
}

beforeAll(async () => {
  // No prefix cache: reused prompt rows change logits in the last float bits, and these tests compare runs.
  server = await startServer(engineConfig(MODEL, { port: 0, limits: { maxNewTokens: 64 }, cache: { prefix: { maxBytes: 0 } } }),
    { logger: createLogger({ level: 'silent' }), closeGraceMs: 200 });
}, 120_000);
afterAll(() => server?.close());

describe('a first generated token that is EOS', () => {
  it('/generate answers 200 with empty text, finish_reason eos_token and the EOS token (special, no text)', async () => {
    const body = await generate(ENDS_AT_ONCE, { max_new_tokens: 20 });
    expect(body.generated_text).toBe('');
    expect(body.details).toMatchObject({ finish_reason: 'eos_token', generated_tokens: 1, seed: null });
    expect(body.details.tokens).toEqual([{ id: EOS, text: '', logprob: expect.any(Number), special: true }]);
  });

  it('/generate_stream sends one token event that is the final event, with generated_text "" and details', async () => {
    const events = await stream(ENDS_AT_ONCE, { max_new_tokens: 20 });
    expect(events).toEqual([{
      index: 1,
      token: { id: EOS, text: '', logprob: expect.any(Number), special: true },
      generated_text: '',
      details: { finish_reason: 'eos_token', generated_tokens: 1, seed: null, input_length: ENDS_AT_ONCE.length + 1 },
    }]);
  });

  it('a sampled first EOS is the same normal answer, streamed or not', async () => {
    const parameters = { do_sample: true, seed: 1, max_new_tokens: 20 };
    const whole = await generate(ENDS_AT_ONCE, parameters);
    expect(whole.generated_text).toBe('');
    expect(whole.details).toMatchObject({ finish_reason: 'eos_token', generated_tokens: 1, seed: 1 });
    const events = await stream(ENDS_AT_ONCE, parameters);
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ token: { id: EOS, text: '', special: true }, generated_text: '', details: { finish_reason: 'eos_token' } });
  });

  it('return_full_text answers the prompt itself', async () => {
    expect((await generate(ENDS_AT_ONCE, { return_full_text: true })).generated_text).toBe(ENDS_AT_ONCE);
  });

  it('ignore_eos keeps generating to max_new_tokens (vLLM\'s parameter, for equal token counts)', async () => {
    const body = await generate(ENDS_AT_ONCE, { ignore_eos: true, max_new_tokens: 6 });
    expect(body.details).toMatchObject({ finish_reason: 'length', generated_tokens: 6 });
    expect(body.details.tokens[0]).toMatchObject({ id: EOS, special: true, text: '' });
    expect(body.details.tokens.filter((t) => !t.special).map((t) => t.text).join('')).toBe(body.generated_text);
  });
});

describe('TGI sampling semantics on the model', () => {
  const prompt = 'The whale';
  const greedy = () => generate(prompt, { max_new_tokens: 12 });

  it('temperature alone samples (as with do_sample true); temperature exactly 1 alone stays greedy', async () => {
    const reference = (await greedy()).generated_text;
    const sampled: string[] = [];
    for (const seed of [1, 2, 3, 4]) {
      const implicit = await generate(prompt, { max_new_tokens: 12, temperature: 1.5, seed });
      const explicit = await generate(prompt, { max_new_tokens: 12, temperature: 1.5, seed, do_sample: true });
      expect(implicit.generated_text).toBe(explicit.generated_text);
      expect(implicit.details.seed).toBe(seed);
      sampled.push(implicit.generated_text);
    }
    expect(sampled.some((t) => t !== reference)).toBe(true);
    const one = await generate(prompt, { max_new_tokens: 12, temperature: 1, seed: 1 });
    expect(one.generated_text).toBe(reference);
    expect(one.details.seed).toBeNull();
  });

  it('top_k, top_p and typical_p alone sample too, and do_sample: false does not stop them (TGI promotes)', async () => {
    for (const warper of [{ top_k: 50 }, { top_p: 0.95 }, { typical_p: 0.9 }]) {
      const a = await generate(prompt, { max_new_tokens: 8, seed: 7, do_sample: false, ...warper });
      const b = await generate(prompt, { max_new_tokens: 8, seed: 7, do_sample: true, ...warper });
      expect(a.details.seed).toBe(7);
      expect(a.generated_text).toBe(b.generated_text);
    }
  });

  it('temperatures at or below 1e-5 behave as greedy, with finite logprobs', async () => {
    const reference = await greedy();
    for (const temperature of [1e-6, 1e-5, 1e-300]) {
      const body = await generate(prompt, { max_new_tokens: 12, temperature, seed: 3, top_n_tokens: 3 });
      expect(body.generated_text).toBe(reference.generated_text);
      for (const lp of allLogprobs(body.details)) expect(Number.isFinite(lp)).toBe(true);
    }
  });

  it('logprobs stay finite numbers under extreme repetition penalties and temperatures', async () => {
    for (const parameters of [
      { repetition_penalty: 1e30, temperature: 0.5 }, { repetition_penalty: 1e-30, temperature: 3 },
      { repetition_penalty: 3.4e38 }, { temperature: 2e-5 }, { temperature: 100, top_k: 3 },
    ]) {
      const res = await post('/generate', { inputs: 'Call me Ishmael.', parameters: { ...parameters, seed: 1, max_new_tokens: 8, details: true, top_n_tokens: 5, decoder_input_details: true } });
      const text = await res.text();
      expect(res.status).toBe(200);
      expect(text).not.toMatch(/NaN|Infinity/);
      expect(text.match(/"logprob":null/g)).toHaveLength(1); // the BOS prefill token only, as TGI
      for (const lp of allLogprobs(JSON.parse(text).details)) expect(Number.isFinite(lp), JSON.stringify(parameters)).toBe(true);
    }
  });

  it('refuses repetition_penalty 1e999 (Infinity) and 0 with 422', async () => {
    for (const raw of ['{"inputs": "x", "parameters": {"repetition_penalty": 1e999}}', '{"inputs": "x", "parameters": {"repetition_penalty": 0}}']) {
      const res = await post('/generate', raw);
      expect(res.status).toBe(422);
      expect((await res.json()).error).toMatch(/parameters\.repetition_penalty: must be a finite number greater than 0/);
    }
  });
});

describe('TGI parameters users rely on', () => {
  const prompt = 'Call me Ishmael.';

  it('top_n_tokens: the most likely tokens per position, most likely first; greedy picks the first', async () => {
    const body = await generate(prompt, { max_new_tokens: 10, top_n_tokens: 3 });
    const { tokens, top_tokens } = body.details;
    expect(top_tokens).toHaveLength(tokens.length);
    top_tokens!.forEach((top, i) => {
      expect(top).toHaveLength(3);
      expect(top[0].id).toBe(tokens[i].id);
      expect(top[0].logprob).toBeCloseTo(tokens[i].logprob, 9);
      for (let j = 1; j < top.length; j++) expect(top[j].logprob).toBeLessThanOrEqual(top[j - 1].logprob);
    });
    const events = await stream(prompt, { max_new_tokens: 10, top_n_tokens: 3 });
    expect(events.map((e) => e.top_tokens)).toEqual(top_tokens);
  });

  it('decoder_input_details: prefill lists every prompt token (BOS first, logprob null), the rest finite', async () => {
    const body = await generate(prompt, { max_new_tokens: 2, decoder_input_details: true, details: false });
    const { prefill } = body.details;
    expect(prefill.map((t) => t.id)).toEqual([BOS, ...Buffer.from(prompt)]);
    expect(prefill.slice(1).map((t) => t.text).join('')).toBe(prompt);
    expect(prefill[0].logprob).toBeNull();
    for (const t of prefill.slice(1)) {
      expect(Object.keys(t).sort()).toEqual(['id', 'logprob', 'text']);
      expect(t.logprob).toBeLessThanOrEqual(0);
      expect(Number.isFinite(t.logprob)).toBe(true);
    }
    expect(body.details.prompt_tokens).toBe(prompt.length + 1);
  });

  it('truncate keeps the prompt\'s last tokens (BOS stays first): same answer as sending only those', async () => {
    const long = 'It was the best of times, it was the worst of times. Call me Ishmael.';
    const cut = await generate(long, { max_new_tokens: 10, truncate: 9, decoder_input_details: true });
    expect(cut.details.prompt_tokens).toBe(9);
    expect(cut.details.prefill.map((t) => t.id)).toEqual([BOS, ...Buffer.from(long.slice(-8))]);
    const short = await generate(long.slice(-8), { max_new_tokens: 10 });
    expect(cut.generated_text).toBe(short.generated_text);
  });

  it('return_full_text prepends the prompt, streamed or not', async () => {
    const plain = await generate(prompt, { max_new_tokens: 8 });
    expect((await generate(prompt, { max_new_tokens: 8, return_full_text: true })).generated_text).toBe(prompt + plain.generated_text);
    const events = await stream(prompt, { max_new_tokens: 8, return_full_text: true });
    expect(events.at(-1)!.generated_text).toBe(prompt + plain.generated_text);
  });
});
