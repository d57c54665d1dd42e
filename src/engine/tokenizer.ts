/** Text ↔ token ids through the package's Hugging Face tokenizer.json (pure-JS tokenizers library). */
import { Tokenizer } from '@huggingface/tokenizers';

export class TextCodec {
  private readonly tokenizer: Tokenizer;
  readonly specialIds: Set<number>;

  constructor(tokenizerJson: object, tokenizerConfig: object) {
    this.tokenizer = new Tokenizer(tokenizerJson as never, tokenizerConfig as never);
    limitWordCache(this.tokenizer);
    const added = (tokenizerJson as { added_tokens?: Array<{ id: number; special?: boolean }> }).added_tokens ?? [];
    this.specialIds = new Set(added.filter((t) => t.special).map((t) => t.id));
  }

  /** Prompt ids, with the special tokens the tokenizer's post-processor adds (BOS). */
  encode(text: string): number[] {
    return this.tokenizer.encode(text).ids;
  }

  /** One token on its own, for log-probability listings: its text (a special token's content) and whether it is special. */
  token(id: number): { id: number; text: string; special: boolean } {
    const special = this.specialIds.has(id);
    return { id, text: special ? this.tokenizer.decode([id], { skip_special_tokens: false }) : this.decode([id]), special };
  }

  /**
   * The text of `ids` exactly as the model produced it: special tokens skipped, and no clean-up rules (the
   * tokenizer's `clean_up_tokenization_spaces` would turn "A , b" into "A, b"), as TGI decodes. An empty list is ''.
   */
  decode(ids: readonly number[]): string {
    if (ids.length === 0) return '';
    return this.tokenizer.decode(ids as number[], { skip_special_tokens: true, clean_up_tokenization_spaces: false });
  }
}

/**
 * The BPE model caches the pieces of every pre-tokenized word shorter than 256 characters, 10,000 words at most. The
 * byte-level pre-tokenizer here leaves a whole prompt as one word, so the cache kept the last 10,000 prompts (about
 * 3 KB each, some 33 MB) long after their requests. Words of up to 32 characters are still cached: that is where a
 * cache pays (tokenizers whose pre-tokenizer splits text into words); longer ones are rarely seen twice.
 */
function limitWordCache(tokenizer: Tokenizer): void {
  const model = (tokenizer as unknown as { model?: { max_length_to_cache?: unknown } }).model;
  if (typeof model?.max_length_to_cache === 'number') model.max_length_to_cache = Math.min(model.max_length_to_cache, 32);
}

/**
 * Turns a growing list of generated (non-special) ids into text increments whose concatenation is exactly
 * `codec.decode(ids)`. Byte-level tokens can split a UTF-8 character, so text ending in an incomplete character
 * (U+FFFD) is held back until a later token completes it or `flush()` ends the text. Decodes a window of recent
 * ids, not all of them, as TGI's and vLLM's incremental detokenizers do: `prefix` marks where the window starts
 * (context for decoders that treat the first token specially), `read` how far text has been emitted.
 */
export class IncrementalDecoder {
  private readonly ids: number[] = [];
  private prefix = 0;
  private read = 0;

  constructor(private readonly codec: TextCodec) {}

  /** Adds one id; returns the text it completes ('' while a character is incomplete). */
  push(id: number): string {
    this.ids.push(id);
    return this.next(false);
  }

  /** At the end of generation: whatever was held back (an incomplete character becomes U+FFFD, as decode gives). */
  flush(): string {
    return this.next(true);
  }

  private next(final: boolean): string {
    if (this.read === this.ids.length) return '';
    const before = this.codec.decode(this.ids.slice(this.prefix, this.read));
    const after = this.codec.decode(this.ids.slice(this.prefix));
    if (!final && (after.length <= before.length || after.endsWith('\uFFFD'))) return '';
    this.prefix = this.read;
    this.read = this.ids.length;
    return after.slice(before.length);
  }
}
