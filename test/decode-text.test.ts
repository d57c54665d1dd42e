/**
 * The text is exactly the model's bytes: decoding without clean-up, an incremental decoder whose increments add up
 * to the whole decode, and a Sequence whose token events carry text only on non-special tokens — including a first
 * token that is EOS and an incomplete UTF-8 character cut off by EOS.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { KvCache } from '../src/engine/kv-cache.ts';
import { seededRandom } from '../src/engine/sampling.ts';
import { Sequence } from '../src/engine/sequence.ts';
import { IncrementalDecoder, TextCodec } from '../src/engine/tokenizer.ts';
import type { GeneratedToken, GenerateResult } from '../src/engine/types.ts';
import { GREEDY, request } from './helpers.ts';

const dir = path.join(import.meta.dirname, '..', 'models', 'switchyard-moe');
const codec = new TextCodec(JSON.parse(readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')), JSON.parse(readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8')));
const BOS = 256;
const EOS = 257;
/** The bundled vocabulary is byte-level: id b < 256 is byte b. */
const utf8 = (ids: number[]) => new TextDecoder().decode(Uint8Array.from(ids.filter((id) => id < 256)));

/** Logits whose argmax is `id`. */
function pick(id: number): Float32Array {
  const logits = new Float32Array(258);
  logits[id] = 10;
  return logits;
}

/** Runs a greedy Sequence that produces exactly `ids`, collecting its token events. */
function generate(ids: number[], maxNewTokens = ids.length, stop: string[] = [], ignoreEos = false) {
  const events: Array<{ token: GeneratedToken; finished: GenerateResult | null }> = [];
  const seq = new Sequence(0, { ...request('x', maxNewTokens, GREEDY, stop), ignoreEos }, [BOS], { length: 1 } as KvCache, codec, EOS, 512, null, {
    onToken: (token, finished) => events.push({ token: { ...token }, finished }),
  });
  for (const id of ids) {
    if (seq.finishReason) break;
    seq.advance(pick(id));
  }
  return { seq, events, result: seq.result() };
}

describe('decoding', () => {
  it('keeps the model\'s bytes: no clean-up of spaces before punctuation or contractions', () => {
    const text = 'A , b don \'t ? x .';
    expect(codec.decode(codec.encode(text))).toBe(text);
  });

  it('decodes an empty list to the empty string', () => {
    expect(codec.decode([])).toBe('');
    expect(codec.decode([EOS])).toBe('');
  });

  it('incremental increments add up to the whole decode, over random bytes (invalid UTF-8 included)', () => {
    const random = seededRandom(11);
    for (let trial = 0; trial < 300; trial++) {
      const ids = Array.from({ length: 1 + Math.floor(random() * 40) }, () => {
        const r = random();
        // Mostly ASCII, with multi-byte lead and continuation bytes to split characters and break them.
        return r < 0.6 ? 32 + Math.floor(random() * 95) : r < 0.8 ? 0x80 + Math.floor(random() * 0x40) : 0xc2 + Math.floor(random() * 0x33);
      });
      const decoder = new IncrementalDecoder(codec);
      let text = '';
      for (const id of ids) {
        const delta = decoder.push(id);
        expect(delta.endsWith('\uFFFD') && delta.length > 0 && utf8(ids).indexOf(delta) < 0).toBe(false);
        text += delta;
      }
      text += decoder.flush();
      expect(text).toBe(codec.decode(ids));
      expect(text).toBe(utf8(ids));
    }
  });
});

describe('token events', () => {
  it('a first generated token that is EOS is a normal, empty answer', () => {
    const { result, events } = generate([EOS]);
    expect(result).toMatchObject({ generatedText: '', finishReason: 'eos_token', generatedTokens: 1 });
    expect(events).toHaveLength(1);
    expect(events[0].token).toMatchObject({ id: EOS, text: '', special: true });
    expect(events[0].finished?.generatedText).toBe('');
  });

  it('ignore_eos generates through EOS up to max_new_tokens; EOS carries no text', () => {
    const { result } = generate([0x41, EOS, 0x42, EOS], 4, [], true);
    expect(result).toMatchObject({ generatedText: 'AB', finishReason: 'length', generatedTokens: 4 });
    expect(generate([0x41, EOS, 0x42], 3).result).toMatchObject({ generatedText: 'A', finishReason: 'eos_token', generatedTokens: 2 });
  });

  it('an incomplete character cut off by EOS goes on the last non-special token, never on EOS', () => {
    // "é" is C3 A9: generation stops after C3.
    const { result, events } = generate([0x41, 0xc3, EOS]);
    expect(result.generatedText).toBe('A\uFFFD');
    expect(events.map((e) => e.token.text)).toEqual(['A', '\uFFFD', '']);
    expect(events[2].token.special).toBe(true);
    expect(events.filter((e) => e.finished !== null)).toHaveLength(1);
    expect(events[2].finished).not.toBeNull();
  });

  it('a character split over tokens is sent with the token that completes it; events stay in order', () => {
    const { result, events } = generate([0xe2, 0x82, 0xac, 0x21]); // "€!"
    expect(result.generatedText).toBe('€!');
    expect(events.map((e) => [e.token.id, e.token.text])).toEqual([[0xe2, ''], [0x82, ''], [0xac, '€'], [0x21, '!']]);
  });

  it('non-special token texts add up to generated_text, which is the decoded bytes, and stops match that text', () => {
    const random = seededRandom(3);
    for (let trial = 0; trial < 300; trial++) {
      const ids = Array.from({ length: 1 + Math.floor(random() * 30) }, () => {
        const r = random();
        return r < 0.05 ? EOS : r < 0.65 ? 32 + Math.floor(random() * 95) : r < 0.8 ? 0x80 + Math.floor(random() * 0x40) : 0xc2 + Math.floor(random() * 0x33);
      });
      const stop = trial % 3 === 0 ? ['e'] : [];
      const { result, events } = generate(ids, ids.length, stop); // always finishes: EOS, stop or length
      const sent = events.map((e) => e.token);
      expect(sent).toEqual(result.tokens);
      expect(sent.filter((t) => t.special).every((t) => t.text === '')).toBe(true);
      expect(sent.map((t) => t.text).join('')).toBe(result.generatedText);
      expect(result.generatedText).toBe(utf8(result.tokens.map((t) => t.id)));
      if (result.finishReason === 'stop_sequence') expect(result.generatedText).toContain('e');
      else if (stop.length > 0) expect(result.generatedText.includes('e')).toBe(false);
      expect(events.filter((e) => e.finished !== null)).toHaveLength(1);
      expect(events[events.length - 1].finished).not.toBeNull();
    }
  });
});
