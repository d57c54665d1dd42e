/** ChoiceText (one OpenAI choice's text, streamed or not) and the two logprobs shapes: pure logic. */
import { describe, expect, it } from 'vitest';
import type { GeneratedToken } from '../src/engine/types.ts';
import { ChoiceText, choiceOf, type ChoiceDelta } from '../src/server/openai/choice-text.ts';
import { chatLogprobs, CompletionLogprobsBuilder } from '../src/server/openai/logprobs.ts';

let nextId = 0;
const tok = (text: string, extra: Partial<GeneratedToken> = {}): GeneratedToken => ({ id: nextId++, text, logprob: -0.5, special: false, ...extra });
const EOS = tok('', { special: true, logprob: -0.1 });

/** Streams `tokens` through a ChoiceText: the deltas in order (as the stream sends them). */
function stream(tokens: GeneratedToken[], stops: string[]): ChoiceDelta[] {
  const choice = new ChoiceText(stops);
  return [...tokens.map((t) => choice.push(t)), choice.finish()];
}

const joined = (deltas: ChoiceDelta[]) => ({ text: deltas.map((d) => d.text).join(''), tokens: deltas.flatMap((d) => d.tokens) });

describe('ChoiceText', () => {
  it('passes the text through untouched without stop sequences (no trimming, no clean-up)', () => {
    const tokens = ['  A', ' ,', ' b ', '\n'].map((t) => tok(t));
    const out = choiceOf(tokens, []);
    expect(out.text).toBe('  A , b \n');
    expect(out.tokens.map((t) => t.text)).toEqual(['  A', ' ,', ' b ', '\n']);
  });

  it('a first token that is EOS gives an empty text and no tokens', () => {
    expect(choiceOf([EOS], [])).toEqual({ text: '', tokens: [] });
  });

  it('cuts before a stop sequence spread over several tokens, and holds back only what might start one', () => {
    const tokens = ['Hello', ' wor', 'ld\nQ', ':', ' more'].map((t) => tok(t));
    const deltas = stream(tokens, ['\nQ:']);
    expect(deltas.map((d) => d.text)).toEqual(['Hello', ' wor', 'ld', '', '', '']);
    expect(joined(deltas).text).toBe('Hello world');
    // The token that straddles the stop is out in part; the tokens of the stop sequence are not.
    expect(joined(deltas).tokens.map((t) => t.text)).toEqual(['Hello', ' wor', 'ld']);
  });

  it('releases a held-back token once the text after it shows no stop sequence', () => {
    const tokens = ['a\n', 'Qx', 'y'].map((t) => tok(t));
    const deltas = stream(tokens, ['\nQ:']);
    expect(deltas.map((d) => [d.text, d.tokens.map((t) => t.text)])).toEqual([
      ['a', []], ['\nQx', ['a\n', 'Qx']], ['y', ['y']], ['', []],
    ]);
  });

  it('flushes held-back text at the end when no stop sequence came', () => {
    const deltas = stream([tok('end\n'), tok('Q')], ['\nQ:']);
    expect(deltas.map((d) => d.text)).toEqual(['end', '', '\nQ']);
    expect(joined(deltas).tokens.map((t) => t.text)).toEqual(['end\n', 'Q']);
  });

  it('special tokens carry no text and are not output tokens; tokens that end inside a character have empty text', () => {
    const tokens = [tok('caf'), tok(''), tok('é'), EOS];
    const out = choiceOf(tokens, []);
    expect(out.text).toBe('café');
    expect(out.tokens.map((t) => t.text)).toEqual(['caf', '', 'é']);
  });

  it('streamed deltas add up to the whole choice for every split of a text into tokens', () => {
    const text = 'one\nQ two\nQ: three';
    for (let a = 1; a < text.length; a++) {
      for (let b = a + 1; b < text.length; b++) {
        const tokens = [text.slice(0, a), text.slice(a, b), text.slice(b)].map((t) => tok(t));
        const streamed = joined(stream(tokens, ['\nQ:', 'zz']));
        expect(streamed).toEqual(choiceOf(tokens, ['\nQ:', 'zz']));
        expect(streamed.text).toBe('one\nQ two');
        expect(streamed.tokens.map((t) => t.text).join('')).toBe('one\nQ two');
      }
    }
  });
});

describe('logprobs shapes', () => {
  const top = [{ id: 1, text: 'é', logprob: -0.2, special: false }, { id: 2, text: '\uFFFD', logprob: -1.5, special: false }, { id: 3, text: '\uFFFD', logprob: -2, special: false }];
  const tokens = [
    { token: tok('ab', { logprob: -0.25, top }), text: 'ab' },
    { token: tok('é', { logprob: -0.2, top }), text: 'é' },
    { token: tok('cd', { logprob: -3 }), text: 'c' },
  ];

  it('chat: token, logprob, UTF-8 bytes and the top alternatives', () => {
    const lp = chatLogprobs(tokens, 2);
    expect(lp.refusal).toBeNull();
    expect(lp.content[0]).toEqual({
      token: 'ab', logprob: -0.25, bytes: [97, 98],
      top_logprobs: [{ token: 'é', logprob: -0.2, bytes: [0xc3, 0xa9] }, { token: '\uFFFD', logprob: -1.5, bytes: [0xef, 0xbf, 0xbd] }],
    });
    expect(lp.content[1].bytes).toEqual([0xc3, 0xa9]);
    // A token cut at a stop sequence shows the part that is in the text.
    expect(lp.content[2]).toEqual({ token: 'c', logprob: -3, bytes: [99], top_logprobs: [] });
    expect(chatLogprobs(tokens, 0).content[0].top_logprobs).toEqual([]);
  });

  it('completions: tokens, token_logprobs, top_logprobs with the chosen token, text_offset in code points across chunks', () => {
    const builder = new CompletionLogprobsBuilder(2, 3);
    const first = builder.add(tokens.slice(0, 2));
    expect(first).toEqual({
      tokens: ['ab', 'é'],
      token_logprobs: [-0.25, -0.2],
      // Top 2 ("é" and one U+FFFD: alternatives sharing a text keep the likeliest), plus the chosen token.
      top_logprobs: [{ é: -0.2, '\uFFFD': -1.5, ab: -0.25 }, { é: -0.2, '\uFFFD': -1.5 }],
      text_offset: [3, 5],
    });
    expect(builder.add(tokens.slice(2)).text_offset).toEqual([6]);
  });
});
