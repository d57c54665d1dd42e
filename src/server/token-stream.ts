/**
 * Bridges the engine's per-token callback to a server-sent-event stream: each event is written in order, the
 * client going away cancels the sequence, and a failure after the stream began becomes an error event.
 */
import type { Context } from 'hono';
import { sseResponse } from './sse.ts';
import type { GenerateOptions, GenerateRequest, GenerateResult, GenerationService, GeneratedToken } from '../engine/types.ts';
import { errorBodyFor } from './errors.ts';
import { traceHeaders } from './trace-headers.ts';

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
  const clientSignal = c.req.raw.signal;
  return sseResponse(c, async (stream) => {
    const cancel = new AbortController();
    const unlinkStream = forwardAbort(stream.signal, cancel);
    const unlink = forwardAbort(clientSignal, cancel);
    const send = (events: Array<unknown | string>) => {
      for (const e of events) stream.send(typeof e === 'string' ? e : JSON.stringify(e));
    };
    send(handlers.start?.() ?? []);
    try {
      const result = await service.generate(request, {
        ...options,
        signal: cancel.signal,
        label: { operation, stream: true },
        trace: traceHeaders(c),
        onToken: (token, finished) => send(handlers.token(token, finished)),
      });
      send(handlers.end?.(result) ?? []);
    } catch (error) {
      if (!cancel.signal.aborted) send([errorBodyFor(error as Error)]);
    } finally {
      unlink();
      unlinkStream();
    }
  });
}

/**
 * Aborts `target` when `source` aborts, until the returned function is called. The request's signal outlives the
 * request (undici keeps it in a FinalizationRegistry until its Request is collected, and a listener that reaches the
 * Hono context closes a cycle that is never collected), so the listener must go when the request ends. A module-level
 * function: the listener's closure holds only `target`, not the caller's scope.
 */
export function forwardAbort(source: AbortSignal, target: AbortController): () => void {
  if (source.aborted) {
    target.abort(source.reason);
    return () => {};
  }
  const onAbort = () => target.abort(source.reason);
  source.addEventListener('abort', onAbort, { once: true });
  return () => source.removeEventListener('abort', onAbort);
}
