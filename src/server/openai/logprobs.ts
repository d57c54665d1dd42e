/**
 * Log probabilities in OpenAI's two shapes, from the engine's GeneratedToken.logprob and .top (request.topTokens).
 *
 * A token's `token` string is its text in the output, so the tokens of a choice add up to its text and their
 * `bytes` to its UTF-8 bytes. A byte-level token that ends inside a UTF-8 character has no text of its own (the
 * token that completes the character carries it), so its `token` is "" and its `bytes` []. The alternatives in
 * `top_logprobs` are tokens on their own: a lone byte of a multi-byte character reads U+FFFD there.
 */
import type { TokenLogprob } from '../../engine/types.ts';
import type { OutputToken } from './choice-text.ts';

const utf8 = (text: string): number[] => [...Buffer.from(text, 'utf8')];

/** Chat completions (`logprobs: true`, `top_logprobs: k`): one entry per output token. */
export interface ChatLogprobs {
  content: Array<{ token: string; logprob: number; bytes: number[]; top_logprobs: Array<{ token: string; logprob: number; bytes: number[] }> }>;
  refusal: null;
}

/** choices[].logprobs (or a chunk's) of a chat completion, with the `top` most likely alternatives per token. */
export function chatLogprobs(tokens: OutputToken[], top: number): ChatLogprobs {
  return {
    content: tokens.map(({ token, text }) => ({
      token: text,
      logprob: token.logprob,
      bytes: utf8(text),
      top_logprobs: (token.top ?? []).slice(0, top).map((t) => ({ token: t.text, logprob: t.logprob, bytes: utf8(t.text) })),
    })),
    refusal: null,
  };
}

/** Legacy completions (`logprobs: k`, 0–5). */
export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: number[];
  /** Per token: the k most likely tokens' texts and log probabilities, and the chosen token's (up to k + 1, as OpenAI). */
  top_logprobs: Array<Record<string, number>>;
  /** Each token's offset in the choice's text, in characters (Unicode code points, as OpenAI counts). */
  text_offset: number[];
}

/**
 * Builds the legacy shape chunk by chunk: text_offset keeps counting across a stream's chunks.
 * @param startOffset characters already in the choice's text before the first token (an echoed prompt).
 */
export class CompletionLogprobsBuilder {
  private offset: number;

  constructor(private readonly top: number, startOffset = 0) {
    this.offset = startOffset;
  }

  add(tokens: OutputToken[]): CompletionLogprobs {
    const out: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
    for (const { token, text } of tokens) {
      out.tokens.push(text);
      out.token_logprobs.push(token.logprob);
      out.top_logprobs.push(topRecord(token.top ?? [], this.top, text, token.logprob));
      out.text_offset.push(this.offset);
      this.offset += [...text].length;
    }
    return out;
  }
}

/** Alternatives that share a text (e.g. lone bytes, all U+FFFD) keep the most likely one's log probability. */
function topRecord(top: TokenLogprob[], k: number, chosen: string, chosenLogprob: number): Record<string, number> {
  const record: Record<string, number> = Object.create(null); // a token text may be "__proto__"
  for (const t of top.slice(0, k)) if (!(t.text in record)) record[t.text] = t.logprob;
  if (!(chosen in record)) record[chosen] = chosenLogprob;
  return record;
}
