/** One request's generation state: prompt, KV cache, sampler, generated tokens and text, and how it ends. */
import { chooseToken, logSoftmax, seededRandom } from './sampling.ts';
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
  /** The generated text so far: the concatenation of the tokens' texts, = codec.decode of the non-special ids. */
  private text = '';
  /** With request.promptLogprobs: log probability of each prompt token given those before it (index 0 unused). */
  private readonly promptLogprobs: number[] = [];
  /** Token events not sent yet (they wait for an incomplete character to be completed). */
  private readonly unsent: GeneratedToken[] = [];
  /** Token events ready to send (choose), with the result on the last one when the sequence has finished. */
  private readonly ready: Array<[GeneratedToken, GenerateResult | null]> = [];

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

  /**
   * After a step that consumed all pending input: choose the next token from the logits and decide if done.
   *
   * Token events carry text only on non-special tokens, and their texts add up to `result().generatedText`. A
   * token whose bytes end inside a UTF-8 character has no text yet; its event waits (with any others like it) until
   * a later token completes the character, so that if generation ends first — on EOS, say — the held-back bytes
   * (U+FFFD) go on the last non-special token, never on the special one.
   */
  advance(logits: Float32Array): void {
    this.choose(logits);
    this.flush();
  }

  /**
   * advance without sending: the token events it makes ready wait for flush(). The scheduler sends them while the
   * next step computes (their listeners write to the client); the sequence's state (tokens, text, finishReason,
   * pending) is final at once.
   */
  choose(logits: Float32Array): void {
    const choice = chooseToken(logits, this.request.sampling, this.history, this.random, this.request.topTokens ?? 0);
    const special = this.codec.specialIds.has(choice.id);
    const token: GeneratedToken = { id: choice.id, text: special ? '' : this.decoder.push(choice.id), logprob: choice.logprob, special };
    if (choice.top) token.top = choice.top.map(({ id, logprob }) => ({ ...this.codec.token(id), logprob }));
    this.history.push(choice.id);
    this.tokens.push(token);
    const searchFrom = Math.max(0, this.text.length - maxLength(this.request.stop));
    this.text += token.text;
    if (choice.id === this.eosId && !this.request.ignoreEos) this.finishReason = 'eos_token';
    else if (this.request.stop.some((s) => this.text.indexOf(s, searchFrom) >= 0)) this.finishReason = 'stop_sequence';
    else if (this.tokens.length >= this.request.maxNewTokens || this.history.length >= this.contextLength) this.finishReason = 'length';
    else this.pending = [choice.id];

    this.unsent.push(token);
    if (this.finishReason) {
      const rest = this.decoder.flush();
      if (rest) {
        // Held-back text came from a non-special token that is still unsent.
        for (let i = this.unsent.length - 1; i >= 0; i--) {
          if (this.unsent[i].special) continue;
          this.unsent[i].text += rest;
          break;
        }
        this.text += rest;
      }
    } else if (!special && token.text === '') {
      return; // an incomplete character: wait for the token that completes it
    }
    const result = this.finishReason ? this.result() : null;
    const events = this.unsent.splice(0);
    events.forEach((t, i) => this.ready.push([t, i === events.length - 1 ? result : null]));
  }

  /** Sends the token events choose() made ready, in order; an error thrown by a listener propagates. */
  flush(): void {
    for (const [token, result] of this.ready.splice(0)) this.options.onToken?.(token, result);
  }

  /**
   * After a prefill step, with request.promptLogprobs: `logits` [n · vocab] are the model's outputs at the prompt
   * positions start … start + n − 1; each predicts the prompt token after it.
   */
  observePromptLogits(start: number, n: number, logits: Float32Array): void {
    const vocab = logits.length / n;
    for (let j = 0; j < n; j++) {
      const next = start + j + 1;
      if (next >= this.promptIds.length) break;
      this.promptLogprobs[next] = logSoftmax(logits.subarray(j * vocab, (j + 1) * vocab))[this.promptIds[next]];
    }
  }

  result(): GenerateResult {
    const prefill = this.request.promptLogprobs
      ? { prefill: this.promptIds.map((id, i) => ({ ...this.codec.token(id), logprob: i === 0 ? null : this.promptLogprobs[i] ?? null })) }
      : {};
    return {
      ...prefill,
      generatedText: this.text,
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
