/**
 * Property: for every request, the streamed text (chunks concatenated) equals the non-streamed text, character for
 * character — over well over 200 seeded sampled generations (temperature 1–4, varied prompts including multi-byte
 * characters, some with stop sequences, some with n = 2), on /v1/completions and /v1/chat/completions, through the
 * openai SDK against the real gateway. Every call sends Cache-Control: no-cache, so each one runs the model. The
 * completions are also checked against TGI's /generate (the engine's whole text, cut at the first stop sequence)
 * and the chat replies against their logprobs tokens' bytes.
 */
import path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seededRandom } from '../src/engine/sampling.ts';
import { createLogger } from '../src/log.ts';
import { startServer, type RunningServer } from '../src/serve.ts';
import { engineConfig } from './helpers.ts';

let server: RunningServer;
let client: OpenAI;
const noCache = { headers: { 'Cache-Control': 'no-cache' } };

beforeAll(async () => {
  server = await startServer(engineConfig(path.resolve('models/switchyard-moe'), { port: 0 }), { logger: createLogger({ level: 'silent' }) });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'not-checked', maxRetries: 0 });
});
afterAll(() => server.close());

const PROMPTS = [
  'Once upon a time', 'Call me Ishmael.', 'It was the best of times, it was the', 'Q: What is the sea?\nA:', 'café au lait — ',
  '日本語のテキスト', '   leading spaces', 'Tabs\tand\nnewlines\n', '🙂 emoji ', 'The quick brown fox', '"Quote," he said,', 'x',
];
const STOPS: Array<string | string[] | undefined> = [' the', 'e', '\n', ['a', 'o'], [', ', '.', '!'], 'th', ' '];


interface Case {
  prompt: string;
  temperature: number;
  seed: number;
  max_tokens: number;
  stop?: string | string[];
  n: number;
  top_p?: number;
}

function cases(count: number, seed: number): Case[] {
  const r = seededRandom(seed); // every run asks the same requests
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(r() * xs.length)];
  return Array.from({ length: count }, (_, i) => ({
    prompt: pick(PROMPTS),
    temperature: Math.round((1 + 3 * r()) * 100) / 100,
    seed: seed * 1000 + i,
    max_tokens: 8 + Math.floor(r() * 9),
    ...(r() < 0.45 ? { stop: pick(STOPS) } : {}),
    n: i % 7 === 3 ? 2 : 1,
    ...(r() < 0.2 ? { top_p: 0.95 } : {}),
  }));
}

/** Runs `fn` over `items`, `width` at a time (concurrent requests batch in the engine). */
async function inBatches<T>(items: T[], width: number, fn: (item: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += width) await Promise.all(items.slice(i, i + width).map(fn));
}

const cutAtStop = (text: string, stop: string | string[] | undefined) => {
  const hits = (stop === undefined ? [] : typeof stop === 'string' ? [stop] : stop).map((s) => text.indexOf(s)).filter((i) => i >= 0);
  return hits.length > 0 ? text.slice(0, Math.min(...hits)) : text;
};

describe('streamed text = non-streamed text over seeded sampled generations', () => {
  it('/v1/completions (and = TGI /generate cut at the stop sequence)', async () => {
    const all = cases(110, 1);
    let generations = 0;
    await inBatches(all, 16, async (c) => {
      const body = { model: 'switchyard-moe', ...c };
      const stop = c.stop === undefined ? [] : typeof c.stop === 'string' ? [c.stop] : c.stop;
      const [plain, stream, tgi] = await Promise.all([
        client.completions.create(body, noCache),
        client.completions.create({ ...body, stream: true }, noCache),
        // One choice: the engine's own whole text for the same seed, by another route.
        c.n === 1
          ? fetch(`${server.url}/generate`, {
            method: 'POST', headers: { 'content-type': 'application/json', 'cache-control': 'no-cache' },
            body: JSON.stringify({
              inputs: c.prompt,
              parameters: { do_sample: true, temperature: c.temperature, seed: c.seed, max_new_tokens: c.max_tokens, stop, ...(c.top_p ? { top_p: c.top_p } : {}) },
            }),
          }).then((r) => r.json() as Promise<{ generated_text: string }>)
          : null,
      ]);
      const streamed = new Map<number, string>();
      for await (const chunk of stream) for (const ch of chunk.choices) streamed.set(ch.index, (streamed.get(ch.index) ?? '') + ch.text);
      expect(plain.choices).toHaveLength(c.n);
      for (const choice of plain.choices) {
        expect(streamed.get(choice.index), JSON.stringify(c)).toBe(choice.text);
        generations++;
      }
      if (tgi) expect(cutAtStop(tgi.generated_text, c.stop), JSON.stringify(c)).toBe(plain.choices[0].text);
    });
    expect(generations).toBeGreaterThanOrEqual(120);
  });

  it('/v1/chat/completions (and = the bytes of its logprobs tokens)', async () => {
    const all = cases(95, 2);
    let generations = 0;
    await inBatches(all, 16, async (c) => {
      const { prompt, ...rest } = c;
      const body = { model: 'switchyard-moe', messages: [{ role: 'user' as const, content: prompt }], ...rest, logprobs: c.seed % 2 === 0 };
      const [plain, stream] = await Promise.all([
        client.chat.completions.create(body, noCache),
        client.chat.completions.create({ ...body, stream: true }, noCache),
      ]);
      const streamed = new Map<number, string>();
      for await (const chunk of stream) {
        for (const ch of chunk.choices) streamed.set(ch.index, (streamed.get(ch.index) ?? '') + (ch.delta.content ?? ''));
      }
      expect(plain.choices).toHaveLength(c.n);
      for (const choice of plain.choices) {
        const content = choice.message.content ?? '';
        expect(streamed.get(choice.index), JSON.stringify(c)).toBe(content);
        if (body.logprobs) expect(Buffer.from(choice.logprobs!.content!.flatMap((t) => t.bytes!))).toEqual(Buffer.from(content, 'utf8'));
        generations++;
      }
    });
    expect(generations).toBeGreaterThanOrEqual(100);
  });
});
