/**
 * One OpenAI choice's text, built token by token the same way whether it is streamed or not, so that both give
 * the same text character for character: the model's token texts, cut before the first stop sequence (OpenAI does
 * not return the stop sequence), with the tokens whose text made it out (for logprobs).
 */
import type { GeneratedToken } from '../../engine/types.ts';
import { StopTextFilter } from '../stop-text.ts';

/** A generated token as far as its text is in the output (the last one before a stop sequence may be cut short). */
export interface OutputToken {
  token: GeneratedToken;
  /** Its text in the output: token.text, or the part of it before the stop sequence. */
  text: string;
}

/** What became final with one token (or at the end): text to send and the tokens that text completed. */
export interface ChoiceDelta {
  text: string;
  tokens: OutputToken[];
}

export class ChoiceText {
  private readonly filter: StopTextFilter;
  /** Non-special tokens whose text is not all out yet, with their [start, end) in the text received so far. */
  private readonly pending: Array<{ token: GeneratedToken; start: number; end: number }> = [];
  private received = 0;
  private emitted = 0;

  constructor(stops: string[]) {
    this.filter = new StopTextFilter(stops);
  }

  /** Whether a stop sequence was seen: the rest of the generation is not part of the output. */
  get stopped(): boolean {
    return this.filter.stopped;
  }

  /** Special tokens (EOS) carry no text and are not part of the output. */
  push(token: GeneratedToken): ChoiceDelta {
    if (token.special || this.filter.stopped) return { text: '', tokens: [] };
    this.pending.push({ token, start: this.received, end: this.received + token.text.length });
    this.received += token.text.length;
    return this.take(this.filter.push(token.text));
  }

  /** At the end of the generation: text held back as a possible stop sequence that turned out not to be one. */
  finish(): ChoiceDelta {
    return this.take(this.filter.flush());
  }

  private take(text: string): ChoiceDelta {
    this.emitted += text.length;
    const tokens: OutputToken[] = [];
    if (this.filter.stopped) {
      // The text ends before the stop sequence: tokens that began before it are out (the last perhaps in part).
      for (const p of this.pending) {
        if (p.start < this.emitted) {
          tokens.push({ token: p.token, text: p.token.text.slice(0, this.emitted - p.start) });
        }
      }
      this.pending.length = 0;
    } else {
      while (this.pending.length > 0 && this.pending[0].end <= this.emitted) {
        const p = this.pending.shift()!;
        tokens.push({ token: p.token, text: p.token.text });
      }
    }
    return { text, tokens };
  }
}

/** The whole choice from a finished generation's tokens: exactly what the stream sends, concatenated. */
export function choiceOf(tokens: GeneratedToken[], stops: string[]): ChoiceDelta {
  const choice = new ChoiceText(stops);
  const out: ChoiceDelta = { text: '', tokens: [] };
  for (const delta of [...tokens.map((t) => choice.push(t)), choice.finish()]) {
    out.text += delta.text;
    out.tokens.push(...delta.tokens);
  }
  return out;
}
