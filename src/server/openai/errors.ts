/**
 * Errors of the OpenAI-compatible routes: a request error that names the offending field (OpenAI's `param`) and a
 * reason code, and the OpenAI-shaped answer for any error raised in those routes, before or after a stream began.
 */
import type { Context } from 'hono';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { HttpError, classifyError } from '../errors.ts';
import { openAiErrorBody, type OpenAiErrorBody } from './error-shape.ts';

/**
 * Codes this server puts in `error.code` for invalid requests: an unknown field, a value of a feature this server
 * does not have (OpenAI's own code for that), a value out of range or of the wrong type, or a prompt that does not
 * fit the model's context (OpenAI's code).
 */
export type RequestErrorCode = 'unknown_parameter' | 'unsupported_value' | 'invalid_value' | 'context_length_exceeded' | 'model_not_found';

/** A 422 (404 for model_not_found) on /v1/* naming the field at fault. */
export class OpenAiRequestError extends HttpError {
  constructor(message: string, readonly param: string | null, readonly code: RequestErrorCode, status: ContentfulStatusCode = 422) {
    super(status, status === 404 ? 'not_found' : 'validation', message);
  }
}

/** The OpenAI error body for an error; null for errors that are bugs (the app's error handler logs and answers those). */
export function openAiErrorOf(err: unknown): { status: ContentfulStatusCode; body: OpenAiErrorBody; headers: Record<string, string> } | null {
  if (err instanceof OpenAiRequestError) {
    return { status: err.status, body: openAiErrorBody(err.status, err.errorType, err.message, err.param, err.code), headers: err.headers };
  }
  const known = classifyError(err);
  return known ? { status: known.status, body: openAiErrorBody(known.status, known.errorType, known.message), headers: known.headers } : null;
}

/** Answers an OpenAiRequestError with its param and code; any other error goes on to the app's error handler. */
export function openAiErrorResponse(c: Context, err: unknown): Response {
  const known = err instanceof OpenAiRequestError ? openAiErrorOf(err) : null;
  if (!known) throw err;
  return c.json(known.body, known.status, known.headers);
}

/** The event that ends a stream that failed after it began (its status line is already sent). */
export function openAiStreamError(err: unknown): OpenAiErrorBody {
  return openAiErrorOf(err)?.body ?? openAiErrorBody(500, 'internal', 'internal error while generating');
}
