/** Text ↔ token ids through the package's Hugging Face tokenizer.json (pure-JS tokenizers library). */
import { Tokenizer } from '@huggingface/tokenizers';

export class TextCodec {
  private readonly tokenizer: Tokenizer;
  readonly specialIds: Set<number>;

  constructor(tokenizerJson: object, tokenizerConfig: object) {
    this.tokenizer = new Tokenizer(tokenizerJson as never, tokenizerConfig as never);
    const added = (tokenizerJson as { added_tokens?: Array<{ id: number; special?: boolean }> }).added_tokens ?? [];
    this.specialIds = new Set(added.filter((t) => t.special).map((t) => t.id));
  }

  /** Prompt ids, with the special tokens the tokenizer's post-processor adds (BOS). */
  encode(text: string): number[] {
    return this.tokenizer.encode(text).ids;
  }

  decode(ids: number[]): string {
    return this.tokenizer.decode(ids, { skip_special_tokens: true });
  }
}

/**
 * Turns a growing list of generated ids into text increments. Byte-level tokens can split a UTF-8 character,
 * so text ending in an incomplete character (U+FFFD) is held back until the next token completes it.
 */
export class IncrementalDecoder {
  private readonly ids: number[] = [];
  private emitted = '';

  constructor(private readonly codec: TextCodec) {}

  push(id: number): string {
    this.ids.push(id);
    const text = this.codec.decode(this.ids);
    if (text.endsWith('\uFFFD') || !text.startsWith(this.emitted)) return '';
    const delta = text.slice(this.emitted.length);
    this.emitted = text;
    return delta;
  }

  /** At the end of generation: whatever was held back (an incomplete character stays as U+FFFD). */
  flush(): string {
    const text = this.codec.decode(this.ids);
    const rest = text.startsWith(this.emitted) ? text.slice(this.emitted.length) : '';
    this.emitted = text;
    return rest;
  }
}
