/** The HTTP error shape {"error", "error_type"} and the app-wide error and not-found handlers. */
import { ExpertUnavailableError } from '../../experts/remote/errors.ts';
import type { Context, ErrorHandler, NotFoundHandler } from 'hono';
import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { randomUUID } from 'node:crypto';
import { InvalidRequestError, OverloadedError, RequestTimeoutError, ShuttingDownError } from '../engine/types.ts';
import type { Logger } from '../log.ts';
import { isOpenAiPath, openAiErrorBody } from './openai/error-shape.ts';

export type ErrorType = 'validation' | 'overloaded' | 'generation' | 'not_found' | 'unauthorized' | 'internal';

export interface ErrorBody {
  /** What is wrong and how to fix it. */
  error: string;
  error_type: ErrorType;
}

/** Throw from a handler to answer with the error shape. */
export class HttpError extends Error {
  override readonly name = 'HttpError';
  constructor(
    readonly status: ContentfulStatusCode,
    readonly errorType: ErrorType,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export function errorResponse(
  c: Context,
  status: ContentfulStatusCode,
  errorType: ErrorType,
  message: string,
  headers: Record<string, string> = {},
): Response {
  // OpenAI clients parse only OpenAI's error shape; this covers /v1/* errors raised outside its routes too (413, 503).
  if (isOpenAiPath(c.req.path)) return c.json(openAiErrorBody(status, errorType, message), status, headers);
  const body: ErrorBody = { error: message, error_type: errorType };
  return c.json(body, status, headers);
}

/** A known error's status, shape and headers; null for errors that are bugs (answered with 500 and logged). */
export function classifyError(err: unknown): HttpError | null {
  if (err instanceof HttpError) return err;
  if (err instanceof InvalidRequestError) return new HttpError(422, 'validation', err.message);
  if (err instanceof ShuttingDownError) {
    // 503, not 429: this instance is going away, so the client should go elsewhere (and not reuse the connection).
    const retryAfter = Math.max(1, Math.ceil(err.retryAfterSeconds));
    return new HttpError(503, 'overloaded', `${err.message}; retry after ${retryAfter} s (on another instance if there is one)`,
      { 'Retry-After': String(retryAfter), Connection: 'close' });
  }
  if (err instanceof OverloadedError) {
    const retryAfter = Math.max(1, Math.ceil(err.retryAfterSeconds));
    return new HttpError(429, 'overloaded', `${err.message}; retry after ${retryAfter} s`, { 'Retry-After': String(retryAfter) });
  }
  if (err instanceof HTTPException) {
    // Raised by hono itself or middleware (e.g. a malformed request); keep its status, use our shape.
    const status = err.status as ContentfulStatusCode;
    const type: ErrorType = status === 401 || status === 403 ? 'unauthorized' : status >= 500 ? 'internal' : 'validation';
    return new HttpError(status, type, err.message || `request failed with status ${status}`);
  }
  if (err instanceof ExpertUnavailableError) {
    // Scale-out: no expert host answered for an expert the step needed, and nats.localFallback is off.
    return new HttpError(503, 'generation', `${err.message}; retry later`, { 'Retry-After': '1' });
  }
  if (err instanceof RequestTimeoutError) {
    // The engine's scheduler cancels requests running longer than limits.requestTimeoutMs.
    return new HttpError(503, 'generation', `${err.message}; ask for fewer max_new_tokens or retry later`);
  }
  return null;
}

/** The error body for a failure after a stream has begun (its status line is already sent). */
export function errorBodyFor(err: Error): ErrorBody {
  const known = classifyError(err);
  return known ? { error: known.message, error_type: known.errorType } : { error: 'internal error while generating', error_type: 'internal' };
}

/** Maps thrown errors to the error shape. Unknown errors are logged and answered with 500; the server keeps serving. */
export function createErrorHandler(logger: Logger): ErrorHandler {
  return (err, c) => {
    const known = classifyError(err);
    if (known) return errorResponse(c, known.status, known.errorType, known.message, known.headers);
    if (c.req.raw.signal.aborted) {
      // The client went away; the engine cancelled its sequence. Nobody reads this answer.
      logger.debug('request aborted by client', { method: c.req.method, path: c.req.path });
      return errorResponse(c, 500, 'internal', 'request aborted by the client');
    }
    const errorId = randomUUID();
    logger.error('unhandled error', { error_id: errorId, method: c.req.method, path: c.req.path, err });
    return errorResponse(c, 500, 'internal', `internal server error (error id ${errorId}); the server log has the details`);
  };
}

export const notFoundHandler: NotFoundHandler = (c) =>
  errorResponse(
    c,
    404,
    'not_found',
    `no route for ${c.req.method} ${c.req.path}; available: POST /generate, POST /generate_stream, GET /v1/models, POST /v1/completions, POST /v1/chat/completions, GET /health, GET /info, GET /metrics`,
  );
