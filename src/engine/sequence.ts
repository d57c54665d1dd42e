/** One request's generation state: prompt, KV cache, sampler, generated tokens and text, and how it ends. */
import { chooseToken, seededRandom } from './sampling.ts';
import { IncrementalDecoder, type TextCodec } from './tokenizer.ts';
import type { KvCache } from './kv-cache.ts';
import type { FinishReason, GenerateOptions, GenerateRequest, GenerateResult, GeneratedToken } from './types.ts';

export class Sequence {
  /** Tokens not yet run through the model: the prompt (possibly in chunks), then each sampled token. */
  pending: number[];
  readonly history: number[];
  readonly tokens: GeneratedToken[] = [];
  finishReason: FinishReason | null = null;
  private readonly decoder: IncrementalDecoder;
  private readonly random: () => number;
  private text = '';

  constructor(
    readonly id: number,
    readonly request: GenerateRequest,
    readonly promptIds: number[],
    readonly cache: KvCache,
    private readonly codec: TextCodec,
    private readonly eosId: number,
    private readonly contextLength: number,
    readonly seed: number | null,
    readonly options: GenerateOptions,
  ) {
    this.pending = [...promptIds];
    this.history = [...promptIds];
    this.decoder = new IncrementalDecoder(codec);
    this.random = seededRandom(seed ?? 0);
  }

  get prefilling(): boolean {
    return this.cache.length < this.promptIds.length;
  }

  /**
   * After the prefix cache has filled the (still untouched) KV cache with a prefix of the prompt: only the rest
   * of the prompt is pending. The cache must leave at least the last prompt token to run.
   */
  skipCachedPrompt(): void {
    if (this.tokens.length > 0 || this.pending.length !== this.promptIds.length || this.cache.length >= this.promptIds.length) {
      throw new Error(`sequence ${this.id}: a cached prefix must be attached before prefill and leave the last prompt token`);
    }
    this.pending = this.promptIds.slice(this.cache.length);
  }

  /** Takes the next model input: up to `budget` tokens of a prefill, or the one token to decode. */
  take(budget: number): number[] {
    const n = Math.max(1, Math.min(budget, this.pending.length));
    return this.pending.splice(0, n);
  }

  /** After a step that consumed all pending input: choose the next token from the logits and decide if done. */
  advance(logits: Float32Array): void {
    const choice = chooseToken(logits, this.request.sampling, this.history, this.random);
    const special = this.codec.specialIds.has(choice.id);
    let text = special ? '' : this.decoder.push(choice.id);
    this.history.push(choice.id);
    const searchFrom = Math.max(0, this.text.length - maxLength(this.request.stop));
    this.text += text;
    if (choice.id === this.eosId) this.finishReason = 'eos_token';
    else if (this.request.stop.some((s) => this.text.indexOf(s, searchFrom) >= 0)) this.finishReason = 'stop_sequence';
    else if (this.tokens.length + 1 >= this.request.maxNewTokens || this.history.length >= this.contextLength) this.finishReason = 'length';
    else this.pending = [choice.id];
    // The last token carries any text held back for an incomplete character, so token texts add up to the result.
    if (this.finishReason) text += this.decoder.flush();
    const token: GeneratedToken = { id: choice.id, text, logprob: choice.logprob, special };
    this.tokens.push(token);
    this.options.onToken?.(token, this.finishReason ? this.result() : null);
  }

  result(): GenerateResult {
    const generated = this.tokens.filter((t) => !t.special).map((t) => t.id);
    return {
      generatedText: this.codec.decode(generated),
      finishReason: this.finishReason ?? 'length',
      generatedTokens: this.tokens.length,
      promptTokens: this.promptIds.length,
      seed: this.seed,
      tokens: this.tokens,
    };
  }
}

function maxLength(strings: string[]): number {
  return strings.reduce((m, s) => Math.max(m, s.length), 0);
}
