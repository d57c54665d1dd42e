/**
 * Bridges the engine's per-token callback to a server-sent-event stream: each event is written in order, the
 * client going away cancels the sequence, and a failure after the stream began becomes an error event.
 */
import type { Context } from 'hono';
import { streamSSE, type SSEStreamingApi } from 'hono/streaming';
import type { GenerateOptions, GenerateRequest, GenerateResult, GenerationService, GeneratedToken } from '../engine/types.ts';
import { errorBodyFor } from './errors.ts';

export interface TokenStreamHandlers {
  /** Events to send before the first token (e.g. the assistant role chunk). */
  start?(): unknown[];
  /** Events for one token; `finished` is the result when it is the last. */
  token(token: GeneratedToken, finished: GenerateResult | null): unknown[];
  /** Events after the last token (e.g. usage, or the literal [DONE]). */
  end?(result: GenerateResult): Array<unknown | string>;
}

export function streamTokens(
  c: Context, service: GenerationService, request: GenerateRequest, operation: 'text_completion' | 'chat', handlers: TokenStreamHandlers,
  options: Pick<GenerateOptions, 'cache'> = {},
): Response {
  // Validation and queue errors surface before the stream starts, so they still get a proper status code.
  service.admit(request);
  return streamSSE(c, async (stream: SSEStreamingApi) => {
    const cancel = new AbortController();
    stream.onAbort(() => cancel.abort());
    c.req.raw.signal.addEventListener('abort', () => cancel.abort(), { once: true });
    let writing = Promise.resolve();
    const send = (events: Array<unknown | string>) => {
      for (const e of events) {
        writing = writing.then(() => stream.writeSSE({ data: typeof e === 'string' ? e : JSON.stringify(e) }));
      }
    };
    send(handlers.start?.() ?? []);
    try {
      const result = await service.generate(request, {
        ...options,
        signal: cancel.signal,
        label: { operation, stream: true },
        onToken: (token, finished) => send(handlers.token(token, finished)),
      });
      send(handlers.end?.(result) ?? []);
    } catch (error) {
      if (!cancel.signal.aborted) send([errorBodyFor(error as Error)]);
    }
    await writing;
  });
}
