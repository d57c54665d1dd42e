/**
 * OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, which the OpenAI clients parse (the
 * `openai` SDK exposes it as APIError.message/type/param/code). Every response on /v1/* that is an error uses it,
 * whoever produces it (routes, body limit, shutdown, not found); see README "API".
 *
 * No runtime import of ../errors.ts: that module imports this one.
 */
import type { ErrorType } from '../errors.ts';

export interface OpenAiErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** Paths that speak the OpenAI protocol (their errors take OpenAI's shape). */
export const isOpenAiPath = (path: string): boolean => path === '/v1' || path.startsWith('/v1/');

/**
 * OpenAI's error `type` for a status: `invalid_request_error` for the client's mistakes, `authentication_error`,
 * `permission_error`, `rate_limit_error` (429: our queue is full) and `server_error` (5xx), as OpenAI names them.
 */
export function openAiErrorType(status: number): string {
  if (status === 401) return 'authentication_error';
  if (status === 403) return 'permission_error';
  if (status === 429) return 'rate_limit_error';
  if (status >= 500) return 'server_error';
  return 'invalid_request_error';
}

/**
 * @param param the request field at fault (`max_tokens`, `messages[0].content`), or null.
 * @param code a machine-readable reason; default: our own error_type (`validation`, `overloaded`, …).
 */
export function openAiErrorBody(status: number, errorType: ErrorType, message: string, param: string | null = null, code: string | null = null): OpenAiErrorBody {
  return { error: { message, type: openAiErrorType(status), param, code: code ?? errorType } };
}
